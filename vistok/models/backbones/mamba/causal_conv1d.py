"""Depthwise causal 1-D convolution, the short convolution of a Mamba block
(Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State
Spaces", Fig. 3 / Alg. 2, ``x = SiLU(Conv1d(x))``):

    out[b, d, t] = act(bias[d] + sum_k weight[d, k] * x[b, d, t - (K-1) + k])

with ``x`` zero for ``t < 0``, so the output at ``t`` depends only on inputs at
positions ``<= t``. Layout: channel-first sequences ``(B, D, L)``, weight
``(D, K)`` (an ``nn.Conv1d(D, D, K, groups=D)`` weight ``(D, 1, K)`` squeezed),
the layout of the ``causal_conv1d`` package, which is used on CUDA when it is
importable.
"""
from typing import Optional

import torch
import torch.nn.functional as F

IMPLS = ('auto', 'torch', 'cuda')
ACTIVATIONS = (None, 'silu', 'swish')

_CUDA_KERNEL = {}


def _cuda_kernel():
    """``causal_conv1d.causal_conv1d_fn``, or the import error (cached)."""
    if not _CUDA_KERNEL:
        try:
            from causal_conv1d import causal_conv1d_fn
            _CUDA_KERNEL['fn'], _CUDA_KERNEL['error'] = causal_conv1d_fn, None
        except Exception as error:  # ImportError or a broken CUDA build
            _CUDA_KERNEL['fn'], _CUDA_KERNEL['error'] = None, error
    return _CUDA_KERNEL['fn'], _CUDA_KERNEL['error']


def _check(x, weight, bias, activation, impl):
    if impl not in IMPLS:
        raise ValueError(f'impl must be one of {IMPLS}, got {impl!r}')
    if activation not in ACTIVATIONS:
        raise ValueError(
            f'activation must be one of {ACTIVATIONS}, got {activation!r}')
    if x.dim() != 3:
        raise ValueError(f'x must be (batch, dim, length), got shape '
                         f'{tuple(x.shape)}')
    if weight.dim() != 2 or weight.shape[0] != x.shape[1]:
        raise ValueError(
            f'weight must be (dim, kernel_size) with dim={x.shape[1]} (the '
            f'channels of x {tuple(x.shape)}), got shape '
            f'{tuple(weight.shape)}')
    if bias is not None and tuple(bias.shape) != (x.shape[1], ):
        raise ValueError(f'bias must be (dim,) = ({x.shape[1]},), got shape '
                         f'{tuple(bias.shape)}')


def causal_conv1d(x: torch.Tensor,
                  weight: torch.Tensor,
                  bias: Optional[torch.Tensor] = None,
                  activation: Optional[str] = None,
                  impl: str = 'auto') -> torch.Tensor:
    """Depthwise causal convolution of ``x`` ``(B, D, L)`` with ``weight``
    ``(D, K)`` and ``bias`` ``(D,)``, followed by ``activation`` (``None``,
    ``'silu'`` or its alias ``'swish'``); returns ``(B, D, L)``.

    ``impl``: ``'torch'`` (``F.conv1d`` on the input left-padded with
    ``K - 1`` zeros), ``'cuda'`` (the ``causal_conv1d`` package; CUDA tensors
    only) or ``'auto'`` (``'cuda'`` when the package imports and ``x`` is on
    a CUDA device, else ``'torch'``).
    """
    _check(x, weight, bias, activation, impl)
    if impl == 'auto':
        impl = 'cuda' if x.is_cuda and _cuda_kernel()[0] else 'torch'
    if impl == 'cuda':
        kernel, error = _cuda_kernel()
        if kernel is None:
            raise ImportError(
                "impl='cuda' needs the causal_conv1d package (pip install -e "
                f".[mamba] on a CUDA machine); importing it failed: {error}")
        if not x.is_cuda:
            raise ValueError(f"impl='cuda' needs CUDA tensors, got x on "
                             f'{x.device}')
        return kernel(x, weight, bias, activation=activation)
    kernel_size = weight.shape[1]
    out = F.conv1d(
        F.pad(x, (kernel_size - 1, 0)),
        weight.unsqueeze(1),
        bias,
        groups=x.shape[1])
    return F.silu(out) if activation is not None else out
