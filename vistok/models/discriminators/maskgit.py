"""MaskGIT-VQGAN discriminator with blur-pool downsampling, as trained in
TiTok's stage 2 (Yu et al. 2024, "An Image is Worth 32 Tokens for
Reconstruction and Generation"; bytedance/1d-tokenizer
``modeling/modules/discriminator.py``) and MaskBit (Weber et al. 2024).
"""
import math
from typing import Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from vistok.registry import DISCRIMINATORS
from .patchgan import build_conv, build_norm


class BlurPool(nn.Module):
    """Anti-aliased downsampling (Zhang 2019, "Making Convolutional Networks
    Shift-Invariant Again", §3): a fixed low-pass filter applied depthwise,
    then subsampling by ``stride``.

    Layout: ``(B, C, *spatial)`` with ``spatial_dims`` axes. The filter is
    the outer product of ``kernel`` with itself over the axes, normalised to
    sum 1 (``(1, 3, 3, 1)``: the binomial "Tri-4" filter; ``(1, 1)``:
    2×2 average pooling). Padding is TensorFlow-"same" for the filter size
    and stride (``ceil(size / stride)`` outputs; TiTok's ``BlurBlock`` pads as
    for a 4-tap filter whatever the filter, which is the same for the default
    kernel), with ``F.pad`` mode ``pad_mode`` (zeros in TiTok; Zhang uses
    ``'reflect'``). The filter is a non-persistent buffer: not in the state
    dict.
    """

    def __init__(self, kernel: Sequence[float] = (1, 3, 3, 1), stride: int = 2,
                 spatial_dims: int = 2, pad_mode: str = 'constant'):
        super().__init__()
        if not kernel or sum(kernel) <= 0:
            raise ValueError(f'kernel must be a 1-D sequence of taps with a '
                             f'positive sum, got {kernel}')
        taps = torch.tensor(kernel, dtype=torch.float32)
        if spatial_dims not in (1, 2, 3):
            raise ValueError(
                f'spatial_dims must be 1, 2 or 3, got {spatial_dims}')
        filt = taps
        for _ in range(spatial_dims - 1):
            filt = filt[..., None] * taps
        self.register_buffer('kernel', (filt / filt.sum())[None, None],
                             persistent=False)
        self.stride, self.spatial_dims = stride, spatial_dims
        self.pad_mode = pad_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        taps, stride = self.kernel.shape[-1], self.stride
        pad = []
        for size in reversed(x.shape[2:]):  # F.pad lists the last axis first
            total = max(
                (math.ceil(size / stride) - 1) * stride + taps - size, 0)
            pad += [total // 2, total - total // 2]
        x = F.pad(x, pad, mode=self.pad_mode)
        weight = self.kernel.to(x.dtype).expand(
            x.shape[1], 1, *self.kernel.shape[2:])
        conv = getattr(F, f'conv{self.spatial_dims}d')
        return conv(x, weight, stride=self.stride, groups=x.shape[1])


@DISCRIMINATORS.register_module()
class MaskGITDiscriminator(nn.Module):
    """MaskGIT-style discriminator (TiTok's ``NLayerDiscriminator``).

    Layout: images ``(B, C, *spatial)`` in ``[-1, 1]`` → logits ``(B, 1,
    *pool_size)`` (16×16 by default, whatever the input size).

    ``conv(in_kernel_size) → LeakyReLU``; per stage ``i``:
    ``conv(stage_kernel_size) → BlurPool → GroupNorm(num_groups) →
    LeakyReLU`` to ``base_channels · channel_mults[i]`` channels; adaptive
    max-pool to ``pool_size``; ``conv(1×1) → LeakyReLU →
    conv(out_kernel_size)`` to one channel. All convs are stride 1 with
    "same" padding and a bias.
    Module names match TiTok's (``block_in``, ``blocks``, ``pool``,
    ``to_logits``): its discriminator weights load once their persistent
    blur-filter entries ``blocks.*.1.kernel`` (fixed; rebuilt here) are
    dropped.
    The default has 1,909,889 parameters.

    :meth:`init_weights` resets every layer to PyTorch's default
    initialisation, which is what TiTok trains from.

    Args:
        in_channels: image channels.
        base_channels: channels of the input conv (128).
        channel_mults: output-channel multipliers of the stages ((1, 2, 4):
            128 → 128 → 256 → 512).
        in_kernel_size, stage_kernel_size, out_kernel_size: conv sizes
            (5, 3, 5).
        blur_kernel: 1-D taps of the blur-pool filter; see :class:`BlurPool`.
        blur_pad_mode: ``F.pad`` mode of the blur-pool.
        num_groups, norm_eps: of the GroupNorms.
        negative_slope: of the LeakyReLUs (0.1).
        pool_size: output grid of the adaptive max-pool (int or per axis).
        spatial_dims: 2 for images, 3 for volumes.
    """

    def __init__(self,
                 in_channels: int = 3,
                 base_channels: int = 128,
                 channel_mults: Sequence[int] = (1, 2, 4),
                 in_kernel_size: int = 5,
                 stage_kernel_size: int = 3,
                 out_kernel_size: int = 5,
                 blur_kernel: Sequence[float] = (1, 3, 3, 1),
                 blur_pad_mode: str = 'constant',
                 num_groups: int = 32,
                 norm_eps: float = 1e-5,
                 negative_slope: float = 0.1,
                 pool_size: Union[int, Sequence[int]] = 16,
                 spatial_dims: int = 2):
        super().__init__()
        if not channel_mults:
            raise ValueError('channel_mults must name at least one stage')

        def conv(cin, cout, kernel_size):
            return build_conv(spatial_dims, cin, cout, kernel_size,
                              padding='same')

        self.block_in = nn.Sequential(
            conv(in_channels, base_channels, in_kernel_size),
            nn.LeakyReLU(negative_slope))
        blocks, channels = [], base_channels
        for mult in channel_mults:
            out = base_channels * mult
            blocks.append(nn.Sequential(
                conv(channels, out, stage_kernel_size),
                BlurPool(blur_kernel, 2, spatial_dims, blur_pad_mode),
                build_norm('group', out, spatial_dims=spatial_dims,
                           num_groups=num_groups, eps=norm_eps),
                nn.LeakyReLU(negative_slope)))
            channels = out
        self.blocks = nn.ModuleList(blocks)
        self.pool = getattr(nn, f'AdaptiveMaxPool{spatial_dims}d')(pool_size)
        self.to_logits = nn.Sequential(
            conv(channels, channels, 1), nn.LeakyReLU(negative_slope),
            conv(channels, 1, out_kernel_size))

    def init_weights(self) -> None:
        """PyTorch's default initialisation of every conv and norm (TiTok)."""
        for sub in self.modules():
            if isinstance(sub, (nn.modules.conv._ConvNd, nn.GroupNorm)):
                sub.reset_parameters()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C, *spatial)`` images → ``(B, 1, *pool_size)`` logits."""
        x = self.block_in(images)
        for block in self.blocks:
            x = block(x)
        return self.to_logits(self.pool(x))
