"""Convolutional encoder / decoder of the VQGAN family (Esser et al. 2021,
"Taming Transformers for High-Resolution Image Synthesis"; the architecture
follows the DDPM U-Net halves of Ho et al. 2020 without time embedding).

Layout: images ``(B, C, H, W)``. The encoder has ``len(ch_mult)`` resolution
levels; every level but the last halves the resolution, so the downsampling
factor is ``2 ** (len(ch_mult) - 1)``. A level runs ``num_res_blocks`` residual
blocks (the decoder ``num_res_blocks + 1`` by default), each followed by a
single-head self-attention block when the level's feature-map size is in
``attn_resolutions``; the middle block is res → attention → res.
Module names follow taming-transformers (``conv_in``, ``down[i].block[j]``,
``mid.block_1``, ``norm_out``, ``conv_out``, ...) except that a level's
down/up-sampler is called ``resample``.

The defaults build taming's networks. Keyword options build the VQGAN of
MaskGIT (Chang et al. 2022, "MaskGIT: Masked Generative Image Transformer";
the JAX ``vqgan_tokenizer.py``, ported to PyTorch by open-muse and TiTok as
``Pretrained_VQGAN``), which removes the attention ("non-local") blocks:
``attn_resolutions=()``, ``mid_attention=False``, ``resnet_bias=False``,
``resnet_shortcut='output'``, ``conv_in_bias=False`` (encoder),
``downsample='avgpool'``, ``conv_out_kernel_size=1`` (encoder) and
``num_up_blocks=num_res_blocks`` (decoder), and ``pixel_range=(0, 1)``
(its weights see images in ``[0, 1]``; vistok's tokenizers pass ``[-1, 1]``);
see ``configs/_base_/models/maskgit_vqgan_conv-f16.py``.
"""
from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from vistok.registry import BACKBONES

#: where a ResnetBlock's 1×1 shortcut conv reads from
SHORTCUTS = ('input', 'output')
#: the encoder's ``downsample`` options
DOWNSAMPLERS = ('conv', 'avgpool')


def _check_config(num_groups: int, ch: int, ch_mult: Sequence[int],
                  normalised: Sequence[int], num_res_blocks: int):
    """Fail early with the offending configuration: GroupNorm needs
    ``num_groups`` to divide every normalised channel count ``normalised``,
    and the ResnetBlocks (at least one per level) change the channel count
    between levels."""
    if num_res_blocks < 1:
        raise ValueError(f'num_res_blocks must be >= 1 (the first ResnetBlock '
                         f'of a level changes its channel count), got '
                         f'{num_res_blocks}')
    for channels in sorted(set(normalised)):
        if channels % num_groups:
            raise ValueError(
                f'num_groups={num_groups} must divide every feature-map '
                f'channel count, but ch={ch} with ch_mult={tuple(ch_mult)} '
                f'gives {channels} channels. Choose num_groups dividing '
                f'all of {sorted(set(normalised))}.')


def _check_odd(kernel_size: int, name: str):
    """A conv with ``padding=kernel_size // 2`` keeps the spatial size only
    for odd kernels."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f'{name} must be an odd positive kernel size (the '
                         f'conv keeps the spatial size), got {kernel_size}')


def _pixel_affine(pixel_range: Sequence[float]) -> Tuple[float, float]:
    """``(scale, shift)`` mapping vistok's image range ``[-1, 1]`` onto
    ``pixel_range = (low, high)``: ``x · scale + shift``."""
    low, high = (float(v) for v in pixel_range)
    if not high > low:
        raise ValueError(f'pixel_range must be (low, high) with high > low, '
                         f'got {tuple(pixel_range)}')
    return (high - low) / 2, (high + low) / 2


def _block_options(resnet_bias: bool, resnet_shortcut: str) -> dict:
    """ResnetBlock keyword arguments of an encoder / decoder."""
    if resnet_shortcut not in SHORTCUTS:
        raise ValueError(f'resnet_shortcut must be one of {SHORTCUTS}, got '
                         f'{resnet_shortcut!r}')
    return dict(bias=resnet_bias, shortcut=resnet_shortcut)


def _norm(channels: int, num_groups: int) -> nn.GroupNorm:
    """GroupNorm with taming's ``eps=1e-6``."""
    return nn.GroupNorm(num_groups, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """GroupNorm → SiLU → conv3×3 → GroupNorm → SiLU → dropout → conv3×3
    (``h``), plus a shortcut. ``(B, C_in, H, W) -> (B, C_out, H, W)``.

    Equal channel counts: ``x + h``. Otherwise a 1×1 conv ``W`` changes the
    channel count of the shortcut: ``W x + h`` with ``shortcut='input'``
    (taming, He et al. 2016), or ``W h + h`` with ``shortcut='output'``: the
    MaskGIT tokenizer's ``ResBlock`` applies its shortcut conv to the residual
    branch's output (the JAX code reassigns ``x`` before the shortcut), so
    ``W`` is ``C_out × C_out``. ``bias=False`` drops the conv biases
    (MaskGIT).
    """

    def __init__(self, in_channels: int, out_channels: int, dropout: float,
                 num_groups: int, bias: bool = True,
                 shortcut: str = 'input'):
        super().__init__()
        if shortcut not in SHORTCUTS:
            raise ValueError(f'shortcut must be one of {SHORTCUTS}, got '
                             f'{shortcut!r}')
        self.norm1 = _norm(in_channels, num_groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1,
                               bias=bias)
        self.norm2 = _norm(out_channels, num_groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1,
                               bias=bias)
        self.shortcut_from_output = (shortcut == 'output'
                                     and in_channels != out_channels)
        shortcut_in = (out_channels
                       if self.shortcut_from_output else in_channels)
        self.nin_shortcut = (
            nn.Conv2d(shortcut_in, out_channels, 1, bias=bias)
            if in_channels != out_channels else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.nin_shortcut(h if self.shortcut_from_output else x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the ``H·W`` positions of
    ``(B, C, H, W)``, with 1×1-conv q/k/v/output projections, a pre-GroupNorm
    and a residual connection: ``x + proj_out(softmax(q kᵀ / √C) v)``."""

    def __init__(self, channels: int, num_groups: int):
        super().__init__()
        self.norm = _norm(channels, num_groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        x_norm = self.norm(x)
        # (B, C, H, W) -> (B, 1, H*W, C): one head, positions as tokens
        q, k, v = (proj(x_norm).reshape(b, 1, c, h * w).transpose(-1, -2)
                   for proj in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Halve ``H`` and ``W`` with a stride-2 conv3×3 after padding one pixel on
    the right and bottom only (taming's asymmetric padding)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class AvgPoolDownsample(nn.AvgPool2d):
    """Halve ``H`` and ``W`` with a 2×2 average pool (MaskGIT's tokenizer; no
    parameters)."""

    def __init__(self):
        super().__init__(kernel_size=2, stride=2)



class Upsample(nn.Module):
    """Double ``H`` and ``W``: nearest-neighbour ×2 then conv3×3."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode='nearest'))


class ResolutionLevel(nn.Module):
    """``num_blocks`` ResnetBlocks at one resolution, each followed by an
    AttnBlock when ``with_attn``, then ``resample`` (Downsample, Upsample or
    identity). ``block_options`` go to every ResnetBlock."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int,
                 with_attn: bool, resample: nn.Module, dropout: float,
                 num_groups: int, **block_options):
        super().__init__()
        self.block = nn.ModuleList(
            ResnetBlock(in_channels if i == 0 else out_channels, out_channels,
                        dropout, num_groups, **block_options)
            for i in range(num_blocks))
        self.attn = nn.ModuleList(
            AttnBlock(out_channels, num_groups)
            for _ in range(num_blocks if with_attn else 0))
        self.resample = resample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            x = block(x)
            if len(self.attn):
                x = self.attn[i](x)
        return self.resample(x)


class MidBlock(nn.Module):
    """ResnetBlock → AttnBlock → ResnetBlock at the lowest resolution; without
    ``with_attn`` the two ResnetBlocks only (MaskGIT). ``block_options`` go
    to both ResnetBlocks."""

    def __init__(self, channels: int, dropout: float, num_groups: int,
                 with_attn: bool = True, **block_options):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout, num_groups,
                                   **block_options)
        self.attn_1 = (AttnBlock(channels, num_groups)
                       if with_attn else nn.Identity())
        self.block_2 = ResnetBlock(channels, channels, dropout, num_groups,
                                   **block_options)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


@BACKBONES.register_module()
class ConvEncoder(nn.Module):
    """VQGAN encoder: ``(B, in_channels, H, W) ->
    (B, out_channels, H / f, W / f)`` with ``f = 2 ** (len(ch_mult) - 1)``
    and ``out_channels = z_channels`` (``2 * z_channels`` with ``double_z``,
    the mean and log-variance of a KL autoencoder).

    Args:
        in_channels: image channels.
        ch: base channel count; level ``i`` has ``ch * ch_mult[i]`` channels.
        ch_mult: channel multipliers, one per resolution level.
        num_res_blocks: ResnetBlocks per level.
        attn_resolutions: feature-map sizes (with input size ``resolution``)
            at which an AttnBlock follows every ResnetBlock; may be empty.
        resolution: nominal input size, used only to place the attention.
        z_channels: latent channels.
        dropout: dropout probability inside the ResnetBlocks.
        num_groups: GroupNorm groups; must divide every channel count.
        double_z: output ``2 * z_channels`` channels.
        mid_attention: AttnBlock between the two middle ResnetBlocks
            (taming); MaskGIT has none.
        resnet_bias: biases in the ResnetBlock convs (MaskGIT: none).
        resnet_shortcut: ``'input'`` or ``'output'``, where the 1×1
            shortcut conv of a ResnetBlock reads (see
            :class:`ResnetBlock`; MaskGIT: ``'output'``).
        conv_in_bias: bias of ``conv_in`` (MaskGIT: none).
        downsample: ``'conv'`` (taming's stride-2 conv3×3) or ``'avgpool'``
            (MaskGIT's 2×2 average pool, no parameters).
        conv_out_kernel_size: kernel of ``conv_out`` (taming 3, MaskGIT 1).
        pixel_range: the image range the weights were trained on; inputs in
            vistok's ``[-1, 1]`` are mapped to it affinely before
            ``conv_in`` (MaskGIT's tokenizer: ``(0, 1)``).
    """

    def __init__(self,
                 in_channels: int,
                 ch: int,
                 ch_mult: Sequence[int],
                 num_res_blocks: int,
                 attn_resolutions: Sequence[int],
                 resolution: int,
                 z_channels: int,
                 dropout: float = 0.0,
                 num_groups: int = 32,
                 double_z: bool = False,
                 mid_attention: bool = True,
                 resnet_bias: bool = True,
                 resnet_shortcut: str = 'input',
                 conv_in_bias: bool = True,
                 downsample: str = 'conv',
                 conv_out_kernel_size: int = 3,
                 pixel_range: Sequence[float] = (-1.0, 1.0)):
        super().__init__()
        channels = [ch * m for m in (1, *ch_mult)]
        _check_config(num_groups, ch, ch_mult, channels, num_res_blocks)
        if downsample not in DOWNSAMPLERS:
            raise ValueError(f'downsample must be one of {DOWNSAMPLERS}, got '
                             f'{downsample!r}')
        _check_odd(conv_out_kernel_size, 'conv_out_kernel_size')
        self.pixel_scale, self.pixel_shift = _pixel_affine(pixel_range)
        self.in_channels = in_channels
        self.out_channels = 2 * z_channels if double_z else z_channels
        self.downsample_factor = 2**(len(ch_mult) - 1)
        block_options = _block_options(resnet_bias, resnet_shortcut)

        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1,
                                 bias=conv_in_bias)
        size = resolution
        self.down = nn.ModuleList()
        for i in range(len(ch_mult)):
            is_last = i == len(ch_mult) - 1
            if is_last:
                resample = nn.Identity()
            elif downsample == 'conv':
                resample = Downsample(channels[i + 1])
            else:
                resample = AvgPoolDownsample()
            self.down.append(
                ResolutionLevel(
                    channels[i],
                    channels[i + 1],
                    num_res_blocks,
                    with_attn=size in attn_resolutions,
                    resample=resample,
                    dropout=dropout,
                    num_groups=num_groups,
                    **block_options))
            if not is_last:
                size //= 2
        self.mid = MidBlock(channels[-1], dropout, num_groups,
                            with_attn=mid_attention, **block_options)
        self.norm_out = _norm(channels[-1], num_groups)
        self.conv_out = nn.Conv2d(
            channels[-1], self.out_channels, conv_out_kernel_size,
            padding=conv_out_kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.pixel_scale, self.pixel_shift) != (1.0, 0.0):
            x = x * self.pixel_scale + self.pixel_shift
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


@BACKBONES.register_module()
class ConvDecoder(nn.Module):
    """VQGAN decoder: ``(B, z_channels, h, w) -> (B, out_ch, h * f, w * f)``
    with ``f = 2 ** (len(ch_mult) - 1)``; the mirror of :class:`ConvEncoder`
    (levels run from ``ch_mult[-1]`` back to ``ch_mult[0]``, with
    ``num_res_blocks + 1`` ResnetBlocks each). ``up[i]`` is level ``i``, so
    ``up[0]`` works at full resolution. The last layer is ``conv_out``
    (used for VQGAN's adaptive GAN weight).

    Args:
        out_ch: output (image) channels.
        ch, ch_mult, num_res_blocks, attn_resolutions, resolution,
        z_channels, dropout, num_groups, mid_attention, resnet_bias,
        resnet_shortcut: as in :class:`ConvEncoder`; ``resolution`` is the
            nominal output size.
        num_up_blocks: ResnetBlocks per level; ``None`` means
            ``num_res_blocks + 1`` (taming); MaskGIT uses ``num_res_blocks``.
        pixel_range: the image range the weights were trained on; the
            output of ``conv_out`` is mapped from it to vistok's ``[-1, 1]``
            (MaskGIT's tokenizer: ``(0, 1)``).
    """

    def __init__(self,
                 out_ch: int,
                 ch: int,
                 ch_mult: Sequence[int],
                 num_res_blocks: int,
                 attn_resolutions: Sequence[int],
                 resolution: int,
                 z_channels: int,
                 dropout: float = 0.0,
                 num_groups: int = 32,
                 mid_attention: bool = True,
                 resnet_bias: bool = True,
                 resnet_shortcut: str = 'input',
                 num_up_blocks: Optional[int] = None,
                 pixel_range: Sequence[float] = (-1.0, 1.0)):
        super().__init__()
        channels = [ch * m for m in ch_mult]
        if num_up_blocks is None:
            num_up_blocks = num_res_blocks + 1
        _check_config(num_groups, ch, ch_mult, channels, num_res_blocks)
        if num_up_blocks < 1:
            raise ValueError(f'num_up_blocks must be >= 1 (the first '
                             f'ResnetBlock of a level changes its channel '
                             f'count), got {num_up_blocks}')
        self.pixel_scale, self.pixel_shift = _pixel_affine(pixel_range)
        self.in_channels = z_channels
        self.out_channels = out_ch
        self.upsample_factor = 2**(len(ch_mult) - 1)
        block_options = _block_options(resnet_bias, resnet_shortcut)

        self.conv_in = nn.Conv2d(z_channels, channels[-1], 3, padding=1)
        self.mid = MidBlock(channels[-1], dropout, num_groups,
                            with_attn=mid_attention, **block_options)
        size = resolution // self.upsample_factor
        levels = []
        block_in = channels[-1]
        for i in reversed(range(len(ch_mult))):
            levels.insert(
                0,
                ResolutionLevel(
                    block_in,
                    channels[i],
                    num_up_blocks,
                    with_attn=size in attn_resolutions,
                    resample=Upsample(channels[i]) if i else nn.Identity(),
                    dropout=dropout,
                    num_groups=num_groups,
                    **block_options))
            block_in = channels[i]
            if i:
                size *= 2
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(channels[0], num_groups)
        self.conv_out = nn.Conv2d(channels[0], out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        out = self.conv_out(F.silu(self.norm_out(h)))
        if (self.pixel_scale, self.pixel_shift) != (1.0, 0.0):
            out = (out - self.pixel_shift) / self.pixel_scale
        return out
