"""3-D convolution blocks for volumes ``(B, C, D, H, W)`` (EM stacks, whose
slices are much thinner than their in-plane resolution, hence anisotropic
kernels and strides such as ``(1, 3, 3)``, ``(1, 5, 5)`` and ``(1, 2, 2)``).

* :class:`ResBlock3d`: conv → InstanceNorm → ReLU, twice, plus a shortcut
  (the residual block of MONAI's UNETR / nnU-Net blocks).
* :class:`GSCBlock3d`: SegMamba's gated spatial convolution (Xing et al.
  2024, "SegMamba"), used by every stage of TokenUnify's encoder.
* :class:`Downsample3d`: strided conv (optionally after an InstanceNorm).
* :class:`Upsample3d`: transposed conv, or trilinear / nearest
  interpolation followed by a conv.

Kernel sizes, strides and scale factors are an int (isotropic) or one value
per axis ``(D, H, W)``. Plain modules, composed by the volumetric networks.
"""
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

Size3 = Union[int, Sequence[int]]

UPSAMPLE_MODES = ('transposed', 'trilinear', 'nearest')


def triple(value: Size3, name: str) -> Tuple[int, int, int]:
    """``value`` as one positive int per axis ``(D, H, W)``."""
    values = (value, ) * 3 if isinstance(value, int) else tuple(value)
    if len(values) != 3 or not all(
            isinstance(v, int) and v >= 1 for v in values):
        raise ValueError(f'{name} must be a positive int or three of them '
                         f'(D, H, W), got {value!r}')
    return values


def same_padding(kernel_size: Size3, name: str) -> Tuple[int, int, int]:
    """Padding that keeps the size of a stride-1 conv: ``k // 2`` per axis,
    which needs odd kernels."""
    kernel = triple(kernel_size, name)
    if any(k % 2 == 0 for k in kernel):
        raise ValueError(f'{name} must be odd along every axis to keep the '
                         f'volume size, got {kernel}')
    return tuple(k // 2 for k in kernel)


def check_volume(x: torch.Tensor, channels: int, owner: str) -> None:
    """``x`` must be ``(B, channels, D, H, W)``."""
    if x.dim() != 5 or x.shape[1] != channels:
        raise ValueError(f'{owner} expects a volume (B, {channels}, D, H, W), '
                         f'got shape {tuple(x.shape)}')


def _instance_norm(channels: int, affine: bool) -> nn.InstanceNorm3d:
    return nn.InstanceNorm3d(channels, affine=affine)


def _zero_init(norm: nn.InstanceNorm3d, owner: str) -> None:
    """Zero the scale of ``norm`` so that the branch it ends outputs 0."""
    if not norm.affine:
        raise ValueError(f'{owner}: zero_init_residual needs affine=True '
                         f'(the last InstanceNorm scale is set to zero)')
    nn.init.zeros_(norm.weight)


class ResBlock3d(nn.Module):
    """Residual block ``(B, C_in, D, H, W) -> (B, C_out, D', H', W')``.

    ``branch = act(IN(conv2(act(IN(conv1(x))))))`` and ``out = branch +
    shortcut(x)``; with ``act_after_sum`` the second activation moves after
    the sum, ``out = act(IN(conv2(...)) + shortcut(x))`` (He et al. 2016;
    MONAI's ``UnetResBlock`` with ``negative_slope=0.01``). ``conv1`` has
    ``stride`` (a down-sampling block, e.g. ``(1, 2, 2)``); the shortcut is
    the identity when the shape is kept, else a strided 1×1×1 conv + IN.
    Convs use "same" padding, so ``D' = ceil(D / s_d)`` etc.

    Args:
        in_channels, out_channels: channels.
        kernel_size: odd kernel, e.g. ``(1, 3, 3)`` (in-plane only),
            ``(1, 5, 5)`` or ``3``.
        stride: stride of ``conv1`` and of the shortcut.
        negative_slope: 0 for ReLU, else a LeakyReLU slope.
        act_after_sum: see above.
        affine: learnable InstanceNorm scale / shift.
        bias: conv biases (redundant before an InstanceNorm).
        zero_init_residual: zero the scale of the last InstanceNorm of the
            branch so that the block starts as ``shortcut(x)`` (the identity
            for equal shapes without ``act_after_sum``; Goyal et al. 2017).
            Needs ``affine``.
    """

    def __init__(self,
                 in_channels: int,
                 out_channels: int,
                 kernel_size: Size3 = (1, 3, 3),
                 stride: Size3 = 1,
                 negative_slope: float = 0.0,
                 act_after_sum: bool = False,
                 affine: bool = False,
                 bias: bool = False,
                 zero_init_residual: bool = False):
        super().__init__()
        padding = same_padding(kernel_size, 'kernel_size')
        stride = triple(stride, 'stride')
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.negative_slope = negative_slope
        self.act_after_sum = act_after_sum
        self.conv1 = nn.Conv3d(in_channels, out_channels, kernel_size,
                               stride=stride, padding=padding, bias=bias)
        self.norm1 = _instance_norm(out_channels, affine)
        self.conv2 = nn.Conv3d(out_channels, out_channels, kernel_size,
                               padding=padding, bias=bias)
        self.norm2 = _instance_norm(out_channels, affine)
        if in_channels == out_channels and stride == (1, 1, 1):
            self.shortcut = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                nn.Conv3d(in_channels, out_channels, 1, stride=stride,
                          bias=bias),
                _instance_norm(out_channels, affine))
        if zero_init_residual:
            _zero_init(self.norm2, type(self).__name__)

    def act(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x, self.negative_slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_volume(x, self.in_channels, type(self).__name__)
        h = self.act(self.norm1(self.conv1(x)))
        h = self.norm2(self.conv2(h))
        if self.act_after_sum:
            return self.act(h + self.shortcut(x))
        return self.act(h) + self.shortcut(x)


class GSCBlock3d(nn.Module):
    """Gated spatial convolution block of SegMamba / TokenUnify,
    ``(B, C, D, H, W) -> (B, C, D, H, W)``:

    ``x1 = ReLU(IN(proj2(ReLU(IN(proj(x))))))`` (``kernel_size`` convs),
    ``x2 = ReLU(IN(proj3(x)))`` (``point_kernel_size``),
    ``out = ReLU(IN(proj4(x1 + x2))) + x`` (``point_kernel_size``).

    The branches are summed (SegMamba's "gate" is additive). Module names
    follow SegMamba's ``GSC`` (``proj``, ``norm``, ``proj2``, ... ``norm4``),
    whose InstanceNorms have no affine parameters (``affine=False``) and
    whose convs have biases.

    Args:
        channels: channels ``C``.
        kernel_size: odd kernel of ``proj`` / ``proj2`` (3 in SegMamba).
        point_kernel_size: odd kernel of ``proj3`` / ``proj4`` (1).
        affine: learnable InstanceNorm scale / shift.
        zero_init_residual: zero the scale of ``norm4`` so that the block
            starts as the identity. Needs ``affine``.
    """

    def __init__(self,
                 channels: int,
                 kernel_size: Size3 = 3,
                 point_kernel_size: Size3 = 1,
                 affine: bool = False,
                 zero_init_residual: bool = False):
        super().__init__()
        padding = same_padding(kernel_size, 'kernel_size')
        point_padding = same_padding(point_kernel_size, 'point_kernel_size')
        self.channels = channels
        self.proj = nn.Conv3d(channels, channels, kernel_size, padding=padding)
        self.norm = _instance_norm(channels, affine)
        self.proj2 = nn.Conv3d(channels, channels, kernel_size,
                               padding=padding)
        self.norm2 = _instance_norm(channels, affine)
        self.proj3 = nn.Conv3d(channels, channels, point_kernel_size,
                               padding=point_padding)
        self.norm3 = _instance_norm(channels, affine)
        self.proj4 = nn.Conv3d(channels, channels, point_kernel_size,
                               padding=point_padding)
        self.norm4 = _instance_norm(channels, affine)
        if zero_init_residual:
            _zero_init(self.norm4, type(self).__name__)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_volume(x, self.channels, type(self).__name__)
        x1 = F.relu(self.norm(self.proj(x)))
        x1 = F.relu(self.norm2(self.proj2(x1)))
        x2 = F.relu(self.norm3(self.proj3(x)))
        return F.relu(self.norm4(self.proj4(x1 + x2))) + x


class Downsample3d(nn.Module):
    """Strided conv ``(B, C_in, D, H, W) -> (B, C_out, D', H', W')``,
    optionally after an InstanceNorm (``pre_norm``, TokenUnify's stage
    transitions).

    ``kernel_size`` defaults to ``stride`` (non-overlapping patches, e.g.
    ``(1, 2, 2)``). TokenUnify's stem is ``Downsample3d(1, C, stride=2,
    kernel_size=(1, 7, 7), padding=(0, 3, 3))`` and its transitions
    ``Downsample3d(C, 2C, stride=2, kernel_size=(1, 2, 2),
    pre_norm=True)``: both halve every axis. Every input size must be
    divisible by the stride along its axis.

    Args:
        in_channels, out_channels: channels.
        stride: per-axis down-sampling factor.
        kernel_size: conv kernel (default: ``stride``).
        padding: conv padding per axis.
        pre_norm: InstanceNorm the input first.
        affine: learnable scale / shift of that InstanceNorm.
        bias: conv bias.
    """

    def __init__(self,
                 in_channels: int,
                 out_channels: int,
                 stride: Size3 = (1, 2, 2),
                 kernel_size: Optional[Size3] = None,
                 padding: Union[int, Sequence[int]] = 0,
                 pre_norm: bool = False,
                 affine: bool = False,
                 bias: bool = True):
        super().__init__()
        self.stride = triple(stride, 'stride')
        kernel = self.stride if kernel_size is None else triple(
            kernel_size, 'kernel_size')
        self.in_channels = in_channels
        self.norm = (_instance_norm(in_channels, affine)
                     if pre_norm else nn.Identity())
        self.conv = nn.Conv3d(in_channels, out_channels, kernel,
                              stride=self.stride, padding=padding, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_volume(x, self.in_channels, type(self).__name__)
        if any(size % s for size, s in zip(x.shape[2:], self.stride)):
            raise ValueError(f'{type(self).__name__}: volume size '
                             f'{tuple(x.shape[2:])} (shape '
                             f'{tuple(x.shape)}) is not divisible by the '
                             f'stride {self.stride}')
        return self.conv(self.norm(x))


class Upsample3d(nn.Module):
    """``(B, C_in, D, H, W) -> (B, C_out, D·s_d, H·s_h, W·s_w)``.

    * ``mode='transposed'``: a transposed conv with kernel = stride =
      ``scale_factor`` (the up-blocks of UNETR / MONAI's ``UnetrUpBlock``);
      every input voxel becomes an ``s_d × s_h × s_w`` block.
    * ``mode='trilinear'`` or ``'nearest'``: interpolation by
      ``scale_factor`` (``align_corners=False``) then a "same" conv with
      ``kernel_size`` (avoids the checkerboard artefacts of transposed
      convs, Odena et al. 2016).

    Args:
        in_channels, out_channels: channels.
        scale_factor: per-axis up-sampling factor, e.g. ``(1, 2, 2)``.
        mode: one of ``'transposed'``, ``'trilinear'``, ``'nearest'``.
        kernel_size: odd kernel of the conv after interpolation.
        bias: conv bias.
    """

    def __init__(self,
                 in_channels: int,
                 out_channels: int,
                 scale_factor: Size3 = (1, 2, 2),
                 mode: str = 'transposed',
                 kernel_size: Size3 = (1, 3, 3),
                 bias: bool = True):
        super().__init__()
        if mode not in UPSAMPLE_MODES:
            raise ValueError(f'mode must be one of {UPSAMPLE_MODES}, got '
                             f'{mode!r}')
        self.scale_factor = triple(scale_factor, 'scale_factor')
        self.mode = mode
        self.in_channels = in_channels
        if mode == 'transposed':
            self.conv = nn.ConvTranspose3d(
                in_channels, out_channels, self.scale_factor,
                stride=self.scale_factor, bias=bias)
        else:
            self.conv = nn.Conv3d(
                in_channels, out_channels, kernel_size,
                padding=same_padding(kernel_size, 'kernel_size'), bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_volume(x, self.in_channels, type(self).__name__)
        if self.mode != 'transposed':
            x = F.interpolate(
                x, scale_factor=self.scale_factor, mode=self.mode,
                align_corners=False if self.mode == 'trilinear' else None)
        return self.conv(x)
