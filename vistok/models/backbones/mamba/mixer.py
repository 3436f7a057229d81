"""Mamba mixer: the Mamba block of Gu & Dao 2023 ("Mamba: Linear-Time
Sequence Modeling with Selective State Spaces", Fig. 3, Alg. 2) with
optional extra scan directions:

* ``'forward'``: the standard causal scan;
* ``'backward'``: the same on the flipped sequence, flipped back (Vision
  Mamba's "bimamba v2", Zhu et al. 2024);
* ``'inter_slice'``: the sequence cut into ``num_slices`` equal chunks that
  are interleaved (token ``i`` of every chunk, then token ``i + 1``, ...),
  scanned and de-interleaved (SegMamba's tri-oriented Mamba, "bimamba v3",
  Xing et al. 2024; the EMmamba backbone of TokenUnify).

All directions share ``in_proj`` and ``out_proj``; each has its own causal
conv, ``x_proj``, ``dt_proj``, ``A_log`` and ``D``, named like SegMamba's
(``conv1d``, ``conv1d_b``, ``conv1d_s``, ``A_log``, ``A_b_log``, ``A_s_log``,
``D``, ``D_b``, ``D_s``, ...), so its checkpoints load by name. The gated
direction outputs are summed before ``out_proj``.

Layout: channel-first ``(B, C, *spatial)`` (DESIGN §6); the spatial axes are
flattened row-major (the first one slowest) into the scanned sequence and
restored at the output.
"""
import math
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn

from vistok.registry import BACKBONES
from .causal_conv1d import causal_conv1d
from .selective_scan import IMPLS, selective_scan

DIRECTIONS = ('forward', 'backward', 'inter_slice')
#: parameter-name suffix of each direction (SegMamba "bimamba v3")
SUFFIXES = {'forward': '', 'backward': '_b', 'inter_slice': '_s'}


def interleave(x: torch.Tensor, num_slices: int) -> torch.Tensor:
    """``(B, C, L)`` → ``(B, C, L)``: cut ``L`` into ``num_slices`` chunks and
    take token ``i`` of each chunk in turn (``out[..., i * num_slices + s] =
    x[..., s * L / num_slices + i]``)."""
    return x.unflatten(-1, (num_slices, -1)).transpose(-1, -2).flatten(-2)


def deinterleave(x: torch.Tensor, num_slices: int) -> torch.Tensor:
    """Inverse of :func:`interleave`."""
    return x.unflatten(-1, (-1, num_slices)).transpose(-1, -2).flatten(-2)


@BACKBONES.register_module()
class MambaMixer(nn.Module):
    """Mamba mixer over the flattened positions of ``(B, C, *spatial)``.

    Per direction (the sequence transformed as in the module docstring):
    ``x, z = in_proj(seq)``; ``x = silu(causal_conv1d(x))``;
    ``Δ, B, C = x_proj(x)`` (``Δ`` of rank ``dt_rank``, then ``dt_proj``);
    ``y = selective_scan(x, Δ, -exp(A_log), B, C, D, z, softplus)``; the
    directions' ``y`` (transformed back) are summed and ``out_proj``-ed.

    Args:
        d_model: channels ``C`` of the input and output.
        d_state: state size ``N`` per channel.
        d_conv: kernel size of the causal depthwise convolution.
        expand: ``d_inner = expand * d_model`` channels inside the block.
        dt_rank: rank of the ``Δ`` projection; ``'auto'`` =
            ``ceil(d_model / 16)``.
        dt_min, dt_max: range of the initial step sizes ``Δ`` (log-uniform),
            floored at ``dt_init_floor``; ``dt_proj.bias`` holds their inverse
            softplus.
        dt_scale: ``dt_proj.weight`` initial std is ``dt_scale / √dt_rank``.
        dt_init: ``'random'`` (uniform within ± that std) or ``'constant'``.
        conv_bias: bias of the causal convolutions.
        bias: bias of ``in_proj`` and ``out_proj``.
        directions: a non-empty subset of ``('forward', 'backward',
            'inter_slice')``.
        num_slices: chunks of the inter-slice scan. ``None`` takes the size
            of the first spatial axis (the z-depth of a volume ``(B, C, D, H,
            W)``, so the inter-slice scan runs along z at every in-plane
            position); SegMamba / TokenUnify as released use a fixed 5.
        impl: ``'auto' | 'torch' | 'cuda'`` for the scan and the convolution
            (see :func:`selective_scan`).
        chunk_size: chunk length of the torch scan.

    Initialisation follows mamba-ssm's ``Mamba``: ``A_log = log(1..N)``, ``D =
    1``, ``dt_proj`` as above, PyTorch defaults elsewhere. The extra
    directions get the same ``dt_proj`` initialisation as the forward one
    (SegMamba leaves theirs at ``nn.Linear``'s default, which starts ``Δ``
    around 0.5-1 instead of in ``[dt_min, dt_max]``).
    """

    def __init__(self,
                 d_model: int,
                 d_state: int = 16,
                 d_conv: int = 4,
                 expand: int = 2,
                 dt_rank: Union[int, str] = 'auto',
                 dt_min: float = 0.001,
                 dt_max: float = 0.1,
                 dt_init_floor: float = 1e-4,
                 dt_scale: float = 1.0,
                 dt_init: str = 'random',
                 conv_bias: bool = True,
                 bias: bool = False,
                 directions: Sequence[str] = ('forward', ),
                 num_slices: Optional[int] = None,
                 impl: str = 'auto',
                 chunk_size: int = 64):
        super().__init__()
        directions = tuple(directions)
        if (not directions or len(set(directions)) != len(directions)
                or not set(directions) <= set(DIRECTIONS)):
            raise ValueError(f'directions must be a non-empty subset of '
                             f'{DIRECTIONS} without repeats, got '
                             f'{directions!r}')
        if num_slices is not None and 'inter_slice' not in directions:
            raise ValueError(f"num_slices={num_slices} needs the "
                             f"'inter_slice' direction, got directions="
                             f'{directions!r}')
        if num_slices is not None and num_slices < 1:
            raise ValueError(f'num_slices must be >= 1, got {num_slices}')
        if impl not in IMPLS:
            raise ValueError(f'impl must be one of {IMPLS}, got {impl!r}')
        if dt_init not in ('random', 'constant'):
            raise ValueError(f"dt_init must be 'random' or 'constant', got "
                             f'{dt_init!r}')
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = expand * d_model
        self.dt_rank = (math.ceil(d_model / 16)
                        if dt_rank == 'auto' else dt_rank)
        self.directions, self.num_slices = directions, num_slices
        self.impl, self.chunk_size = impl, chunk_size
        self.dt_init_kwargs = dict(
            dt_min=dt_min,
            dt_max=dt_max,
            dt_init_floor=dt_init_floor,
            dt_scale=dt_scale,
            dt_init=dt_init)

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        for direction in directions:
            suffix = SUFFIXES[direction]
            setattr(
                self, f'conv1d{suffix}',
                nn.Conv1d(
                    self.d_inner,
                    self.d_inner,
                    d_conv,
                    groups=self.d_inner,
                    padding=d_conv - 1,
                    bias=conv_bias))
            setattr(self, f'x_proj{suffix}',
                    nn.Linear(
                        self.d_inner, self.dt_rank + 2 * d_state, bias=False))
            setattr(self, f'dt_proj{suffix}',
                    nn.Linear(self.dt_rank, self.d_inner, bias=True))
            A_log = nn.Parameter(torch.empty(self.d_inner, d_state))
            D = nn.Parameter(torch.empty(self.d_inner))
            A_log._no_weight_decay = D._no_weight_decay = True
            setattr(self, f'A{suffix}_log', A_log)
            setattr(self, f'D{suffix}', D)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self):
        """mamba-ssm's initialisation of ``dt_proj``, ``A_log`` and ``D`` for
        every direction (called by the constructor)."""
        kw = self.dt_init_kwargs
        std = self.dt_rank**-0.5 * kw['dt_scale']
        for direction in self.directions:
            suffix = SUFFIXES[direction]
            dt_proj = getattr(self, f'dt_proj{suffix}')
            if kw['dt_init'] == 'constant':
                nn.init.constant_(dt_proj.weight, std)
            else:
                nn.init.uniform_(dt_proj.weight, -std, std)
            log_min, log_max = math.log(kw['dt_min']), math.log(kw['dt_max'])
            dt = torch.exp(
                torch.rand_like(dt_proj.bias) * (log_max - log_min) +
                log_min).clamp(min=kw['dt_init_floor'])
            dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
            A_log = getattr(self, f'A{suffix}_log')
            A_log.copy_(
                torch.arange(
                    1, self.d_state + 1, dtype=A_log.dtype,
                    device=A_log.device).log().expand_as(A_log))
            getattr(self, f'D{suffix}').fill_(1.)

    def _slices(self, x: torch.Tensor) -> int:
        """Number of inter-slice chunks for input ``x`` ``(B, C, *spatial)``;
        raises if the flattened length is not divisible by it."""
        num_slices = self.num_slices
        if num_slices is None:
            if x.dim() < 4:
                raise ValueError(
                    f'num_slices=None takes the first spatial axis as the '
                    f'slice axis, which needs at least 2 spatial axes; got '
                    f'input shape {tuple(x.shape)}. Set num_slices.')
            num_slices = x.shape[2]
        length = x.shape[2:].numel()
        if length % num_slices:
            raise ValueError(
                f'The inter-slice scan cuts the sequence into num_slices='
                f'{num_slices} equal chunks, but its length {length} (input '
                f'shape {tuple(x.shape)}) is not divisible by it')
        return num_slices

    def _scan(self, xz: torch.Tensor, suffix: str) -> torch.Tensor:
        """One direction on an already transformed ``xz`` ``(B, 2 d_inner,
        L)``: conv → x_proj → dt_proj → gated selective scan; ``(B, d_inner,
        L)``."""
        x, z = xz.chunk(2, dim=1)
        conv = getattr(self, f'conv1d{suffix}')
        x = causal_conv1d(
            x, conv.weight.squeeze(1), conv.bias, 'silu', impl=self.impl)
        x_dbl = torch.matmul(getattr(self, f'x_proj{suffix}').weight, x)
        dt, B, C = x_dbl.split([self.dt_rank, self.d_state, self.d_state],
                               dim=1)
        dt_proj = getattr(self, f'dt_proj{suffix}')
        dt = torch.matmul(dt_proj.weight, dt)
        A = -torch.exp(getattr(self, f'A{suffix}_log').float())
        return selective_scan(
            x,
            dt,
            A,
            B,
            C,
            getattr(self, f'D{suffix}').float(),
            z=z,
            delta_bias=dt_proj.bias.float(),
            delta_softplus=True,
            impl=self.impl,
            chunk_size=self.chunk_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, d_model, *spatial)`` → ``(B, d_model, *spatial)``."""
        if x.dim() < 3 or x.shape[1] != self.d_model:
            raise ValueError(f'MambaMixer expects (B, d_model={self.d_model}, '
                             f'*spatial), got shape {tuple(x.shape)}')
        num_slices = (
            self._slices(x) if 'inter_slice' in self.directions else None)
        seq = x.flatten(2)
        xz = torch.matmul(self.in_proj.weight, seq)
        if self.in_proj.bias is not None:
            xz = xz + self.in_proj.bias.unsqueeze(-1)
        out = 0
        if 'forward' in self.directions:
            out = out + self._scan(xz, SUFFIXES['forward'])
        if 'backward' in self.directions:
            out = out + self._scan(xz.flip(-1), SUFFIXES['backward']).flip(-1)
        if num_slices is not None:
            scanned = self._scan(
                interleave(xz, num_slices), SUFFIXES['inter_slice'])
            out = out + deinterleave(scanned, num_slices)
        out = torch.matmul(self.out_proj.weight, out)
        if self.out_proj.bias is not None:
            out = out + self.out_proj.bias.unsqueeze(-1)
        return out.unflatten(2, x.shape[2:])
