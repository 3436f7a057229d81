"""Convolutional encoder / decoder of the VQGAN family (Esser et al. 2021,
"Taming Transformers for High-Resolution Image Synthesis"; the architecture
follows the DDPM U-Net halves of Ho et al. 2020 without time embedding).

Layout: images ``(B, C, H, W)``. The encoder has ``len(ch_mult)`` resolution
levels; every level but the last halves the resolution, so the downsampling
factor is ``2 ** (len(ch_mult) - 1)``. A level runs ``num_res_blocks`` residual
blocks (the decoder ``num_res_blocks + 1``), each followed by a single-head
self-attention block when the level's feature-map size is in
``attn_resolutions``; the middle block is always res → attention → res.
Module names follow taming-transformers (``conv_in``, ``down[i].block[j]``,
``mid.block_1``, ``norm_out``, ``conv_out``, ...) except that a level's
down/up-sampler is called ``resample``.
"""
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from vistok.registry import BACKBONES


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


def _norm(channels: int, num_groups: int) -> nn.GroupNorm:
    """GroupNorm with taming's ``eps=1e-6``."""
    return nn.GroupNorm(num_groups, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """GroupNorm → SiLU → conv3×3 → GroupNorm → SiLU → dropout → conv3×3,
    plus the input (through a 1×1 conv when the channel count changes).
    ``(B, C_in, H, W) -> (B, C_out, H, W)``."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float,
                 num_groups: int):
        super().__init__()
        self.norm1 = _norm(in_channels, num_groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels, num_groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = (
            nn.Conv2d(in_channels, out_channels, 1)
            if in_channels != out_channels else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.nin_shortcut(x) + h


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
    identity)."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int,
                 with_attn: bool, resample: nn.Module, dropout: float,
                 num_groups: int):
        super().__init__()
        self.block = nn.ModuleList(
            ResnetBlock(in_channels if i == 0 else out_channels, out_channels,
                        dropout, num_groups) for i in range(num_blocks))
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
    """ResnetBlock → AttnBlock → ResnetBlock at the lowest resolution."""

    def __init__(self, channels: int, dropout: float, num_groups: int):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout, num_groups)
        self.attn_1 = AttnBlock(channels, num_groups)
        self.block_2 = ResnetBlock(channels, channels, dropout, num_groups)

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
                 double_z: bool = False):
        super().__init__()
        channels = [ch * m for m in (1, *ch_mult)]
        _check_config(num_groups, ch, ch_mult, channels, num_res_blocks)
        self.in_channels = in_channels
        self.out_channels = 2 * z_channels if double_z else z_channels
        self.downsample_factor = 2**(len(ch_mult) - 1)

        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        size = resolution
        self.down = nn.ModuleList()
        for i in range(len(ch_mult)):
            is_last = i == len(ch_mult) - 1
            self.down.append(
                ResolutionLevel(
                    channels[i],
                    channels[i + 1],
                    num_res_blocks,
                    with_attn=size in attn_resolutions,
                    resample=(nn.Identity()
                              if is_last else Downsample(channels[i + 1])),
                    dropout=dropout,
                    num_groups=num_groups))
            if not is_last:
                size //= 2
        self.mid = MidBlock(channels[-1], dropout, num_groups)
        self.norm_out = _norm(channels[-1], num_groups)
        self.conv_out = nn.Conv2d(
            channels[-1], self.out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
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
        z_channels, dropout, num_groups: as in :class:`ConvEncoder`;
            ``resolution`` is the nominal output size.
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
                 num_groups: int = 32):
        super().__init__()
        channels = [ch * m for m in ch_mult]
        _check_config(num_groups, ch, ch_mult, channels, num_res_blocks)
        self.in_channels = z_channels
        self.out_channels = out_ch
        self.upsample_factor = 2**(len(ch_mult) - 1)

        self.conv_in = nn.Conv2d(z_channels, channels[-1], 3, padding=1)
        self.mid = MidBlock(channels[-1], dropout, num_groups)
        size = resolution // self.upsample_factor
        levels = []
        block_in = channels[-1]
        for i in reversed(range(len(ch_mult))):
            levels.insert(
                0,
                ResolutionLevel(
                    block_in,
                    channels[i],
                    num_res_blocks + 1,
                    with_attn=size in attn_resolutions,
                    resample=Upsample(channels[i]) if i else nn.Identity(),
                    dropout=dropout,
                    num_groups=num_groups))
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
        return self.conv_out(F.silu(self.norm_out(h)))
