"""PatchGAN discriminator (Isola et al. 2017, "Image-to-Image Translation
with Conditional Adversarial Networks", §3.2.2) in the layout of
taming-transformers' ``NLayerDiscriminator`` (Esser et al. 2021), plus the
small building blocks the other discriminators share: the norm-layer
factory :func:`build_norm` (with StyleGAN-T's :class:`LocalBatchNorm`) and
the convolution factory :func:`build_conv` (optional spectral norm).
"""
import math

import torch
import torch.nn as nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from vistok.registry import DISCRIMINATORS

NORM_TYPES = ('batch', 'group', 'local_batch', 'none')
#: norms whose per-channel batch statistics cancel a per-channel conv bias
BATCH_STAT_NORMS = ('batch', 'local_batch')


class LocalBatchNorm(nn.Module):
    """Batch normalisation over "virtual" sub-batches (StyleGAN-T's
    ``BatchNormLocal``, Sauer et al. 2023 §3.2; ImageFolder's ``DinoDisc``).

    Layout: ``(B, C, *spatial)``. The batch is split into
    ``ceil(B / virtual_batch_size)`` near-equal groups (as the reference,
    which needs ``B`` divisible by the group count; uneven splits are allowed
    here); each group is normalised with its own per-channel mean and biased
    variance over (samples, positions), in fp32. There are no running
    statistics: training and eval behave the same.

    Args:
        num_features: channels ``C``.
        virtual_batch_size: target samples per group (8 in StyleGAN-T).
        eps: added to the variance (1e-6 in StyleGAN-T).
        affine: learn a per-channel scale (init 1) and shift (init 0).
    """

    def __init__(self, num_features: int, virtual_batch_size: int = 8,
                 eps: float = 1e-6, affine: bool = True):
        super().__init__()
        if virtual_batch_size < 1:
            raise ValueError(f'virtual_batch_size must be >= 1, got '
                             f'{virtual_batch_size}')
        self.virtual_batch_size, self.eps = virtual_batch_size, eps
        self.weight = (nn.Parameter(torch.ones(num_features))
                       if affine else None)
        self.bias = nn.Parameter(torch.zeros(num_features)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        num_groups = math.ceil(x.shape[0] / self.virtual_batch_size)
        flat = x.float().flatten(2)
        out = []
        for group in torch.tensor_split(flat, num_groups, dim=0):
            mean = group.mean(dim=(0, 2), keepdim=True)
            var = group.var(dim=(0, 2), unbiased=False, keepdim=True)
            out.append((group - mean) * torch.rsqrt(var + self.eps))
        out = torch.cat(out).view(x.shape)
        if self.weight is not None:
            shape = (1, -1) + (1, ) * (x.dim() - 2)
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(x.dtype)


def build_norm(norm: str, num_channels: int, *, spatial_dims: int = 2,
               num_groups: int = 32, eps: float = 1e-5,
               virtual_batch_size: int = 8) -> nn.Module:
    """Normalisation layer for ``(B, C, *spatial)`` tensors.

    ``norm``: ``'batch'`` (``nn.BatchNorm{spatial_dims}d``), ``'group'``
    (``nn.GroupNorm(num_groups)``), ``'local_batch'``
    (:class:`LocalBatchNorm`) or ``'none'`` (identity).
    """
    if norm == 'batch':
        if spatial_dims not in (1, 2, 3):
            raise ValueError(f"norm='batch' needs spatial_dims 1, 2 or 3, "
                             f'got {spatial_dims}')
        return getattr(nn, f'BatchNorm{spatial_dims}d')(num_channels, eps=eps)
    if norm == 'group':
        if num_channels % num_groups:
            raise ValueError(f'num_groups={num_groups} does not divide the '
                             f'{num_channels} channels of a GroupNorm')
        return nn.GroupNorm(num_groups, num_channels, eps=eps)
    if norm == 'local_batch':
        return LocalBatchNorm(num_channels, virtual_batch_size, eps=eps)
    if norm == 'none':
        return nn.Identity()
    raise ValueError(f'norm must be one of {NORM_TYPES}, got {norm!r}')


def build_conv(spatial_dims: int, in_channels: int, out_channels: int,
               kernel_size: int, *, stride: int = 1, padding=0,
               bias: bool = True, spectral_norm: bool = False,
               padding_mode: str = 'zeros') -> nn.Module:
    """``nn.Conv{spatial_dims}d``, optionally with spectral normalisation
    (Miyato et al. 2018; ``torch.nn.utils.parametrizations.spectral_norm``,
    one power iteration per training forward)."""
    if spatial_dims not in (1, 2, 3):
        raise ValueError(f'spatial_dims must be 1, 2 or 3, got {spatial_dims}')
    conv = getattr(nn, f'Conv{spatial_dims}d')(
        in_channels, out_channels, kernel_size, stride=stride,
        padding=padding, bias=bias, padding_mode=padding_mode)
    return _spectral_norm(conv) if spectral_norm else conv


@torch.no_grad()
def normal_init_(module: nn.Module, conv_std: float = 0.02,
                 norm_std: float = 0.02) -> None:
    """taming's ``weights_init`` over ``module`` (in place): conv weights
    ``N(0, conv_std)`` (conv biases keep PyTorch's default init, as in
    taming), norm weights ``N(1, norm_std)`` and biases 0.

    A spectrally normalised conv has its *unnormalised* weight re-drawn;
    its power-iteration vectors are then re-estimated (the parametrisation
    is removed and re-applied, which keeps the same ``Parameter`` objects, so
    an optimizer built before ``init_weights()`` still holds them).
    """
    for sub in module.modules():
        if isinstance(sub, nn.modules.conv._ConvNd):
            spectral = parametrize.is_parametrized(sub, 'weight')
            if spectral:
                parametrize.remove_parametrizations(
                    sub, 'weight', leave_parametrized=False)
            nn.init.normal_(sub.weight, 0.0, conv_std)
            if spectral:
                _spectral_norm(sub)
        elif isinstance(sub, (nn.modules.batchnorm._NormBase, nn.GroupNorm,
                              LocalBatchNorm)) and sub.weight is not None:
            nn.init.normal_(sub.weight, 1.0, norm_std)
            nn.init.zeros_(sub.bias)


@DISCRIMINATORS.register_module()
class PatchGANDiscriminator(nn.Module):
    """PatchGAN ("N-layer") discriminator: one logit per overlapping patch.

    Layout: images ``(B, C, *spatial)`` in ``[-1, 1]`` (``spatial_dims``
    axes; 2 for images) → logits ``(B, 1, *spatial')``; a 256² image gives
    30² logits, each seeing a 70² receptive field (pix2pix §3.2.2).

    Layer layout of taming-transformers' ``NLayerDiscriminator``:
    ``conv(k4, s2) → LeakyReLU``, then ``num_layers - 1`` blocks
    ``conv(k4, s2) → norm → LeakyReLU``, one ``conv(k4, s1) → norm →
    LeakyReLU`` and a final ``conv(k4, s1)`` to one channel; all with
    padding 1. Block ``n`` has ``base_channels · min(2ⁿ, max_channel_mult)``
    channels. The first and last convs always have a bias; the others only
    when ``norm`` does not subtract per-channel batch statistics (taming:
    ``use_bias = norm_layer != BatchNorm2d``). Taming's default (3 layers,
    64 channels, BatchNorm) has 2,765,633 parameters.

    :meth:`init_weights` (also run at construction) is taming's
    ``weights_init``: see :func:`normal_init_`.

    Args:
        in_channels: image channels.
        base_channels: channels of the first conv (``ndf``).
        num_layers: stride-2 convs (``n_layers``).
        norm: ``'batch'`` (taming), ``'group'``, ``'local_batch'`` or
            ``'none'``; see :func:`build_norm`.
        spectral_norm: spectral normalisation on every conv.
        num_groups: groups of ``norm='group'``.
        norm_eps: epsilon of the norm layers.
        kernel_size, padding: of every conv (4 and 1 in pix2pix).
        negative_slope: of the LeakyReLUs.
        max_channel_mult: cap on the channel multiplier.
        init_std: standard deviation of the conv-weight and norm-weight
            initialisation.
        spatial_dims: 2 for images, 3 for volumes, 1 for sequences.
    """

    def __init__(self,
                 in_channels: int = 3,
                 base_channels: int = 64,
                 num_layers: int = 3,
                 norm: str = 'batch',
                 spectral_norm: bool = False,
                 num_groups: int = 32,
                 norm_eps: float = 1e-5,
                 kernel_size: int = 4,
                 padding: int = 1,
                 negative_slope: float = 0.2,
                 max_channel_mult: int = 8,
                 init_std: float = 0.02,
                 spatial_dims: int = 2):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f'num_layers must be >= 1, got {num_layers}')
        self.init_std = init_std
        use_bias = norm not in BATCH_STAT_NORMS

        def conv(cin, cout, stride, bias):
            return build_conv(spatial_dims, cin, cout, kernel_size,
                              stride=stride, padding=padding, bias=bias,
                              spectral_norm=spectral_norm)

        def block(cin, cout, stride):
            return [
                conv(cin, cout, stride, use_bias),
                build_norm(norm, cout, spatial_dims=spatial_dims,
                           num_groups=num_groups, eps=norm_eps),
                nn.LeakyReLU(negative_slope, inplace=True)
            ]

        layers = [conv(in_channels, base_channels, 2, True),
                  nn.LeakyReLU(negative_slope, inplace=True)]
        mult = 1
        for n in range(1, num_layers + 1):
            prev, mult = mult, min(2**n, max_channel_mult)
            stride = 2 if n < num_layers else 1
            layers += block(base_channels * prev, base_channels * mult, stride)
        layers.append(conv(base_channels * mult, 1, 1, True))
        self.main = nn.Sequential(*layers)
        self.init_weights()

    def init_weights(self) -> None:
        """taming's ``weights_init`` (no pretrained part)."""
        normal_init_(self, self.init_std, self.init_std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C, *spatial)`` images → ``(B, 1, *spatial')`` patch logits."""
        return self.main(images)

