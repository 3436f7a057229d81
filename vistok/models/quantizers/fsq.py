"""Finite scalar quantization (FSQ, Mentzer et al. 2023, "Finite Scalar
Quantization: VQ-VAE Made Simple").

Each code channel is bounded and rounded to one of a few integer levels; the
codebook is the implicit grid of ``prod(levels)`` points and is never stored.
"""
import math
from numbers import Integral
from typing import Optional, Sequence

import torch

from vistok.registry import QUANTIZERS
from vistok.structures import QuantizerOutput
from .base import (
    BaseQuantizer,
    check_indices,
    check_latent,
    check_option_types,
    code_space_projections,
    straight_through,
    usage_stats,
)


@QUANTIZERS.register_module()
class FiniteScalarQuantizer(BaseQuantizer):
    """Finite scalar quantizer (FSQ).

    Layout: ``z`` is channel-first ``(B, C, *spatial)`` of any spatial rank
    (images, volumes, ``(B, C, N)`` sequences); indices are ``(B, *spatial)``
    int64 in ``[0, prod(levels))``.

    **Bounding** (FSQ §3.1 and the reference code of its appendix A.1).
    Channel ``i`` of the code-space vector ``u`` (``z`` itself, or its
    in-projection) with ``L = levels[i]`` is squashed to

    ``b = h · tanh(u + shift) - offset``, ``h = (L - 1)(1 + ε) / 2``,

    with ``offset = 1/2`` for even ``L`` (0 for odd ``L``) and ``shift =
    atanh(offset / h)`` so that ``b(0) = 0``. Then ``round(b)`` takes
    exactly ``L`` integer values, ``-⌊L/2⌋ … L - 1 - ⌊L/2⌋`` (the half-integer
    offset is what makes an even ``L`` give ``L`` values rather than
    ``L ± 1``). The appendix writes ``tan`` for the shift and ``(1 - ε)``;
    ``atanh`` is the function that makes ``b(0) = 0``, and with it
    ``(1 - ε)`` leaves no shift for ``L = 2`` (``offset > h``), so ``ε``
    enlarges ``h`` instead, as in vector-quantize-pytorch.

    **Codes** are the rounded values normalised by ``⌊L/2⌋``, so they lie in
    ``[-1, 1]``: ``{-1, …, 1}`` for odd ``L``, ``{-1, …, 1 - 2/L}`` for even
    ``L`` (e.g. ``L = 4``: ``-1, -0.5, 0, 0.5``). Rounding uses the
    straight-through estimator (FSQ §3.1): the gradient of the code w.r.t.
    the bounded value ``b / ⌊L/2⌋`` is the identity; the gradient w.r.t.
    ``u`` is that of the bound.

    **Indices** are mixed-radix numbers of the per-channel level digits
    ``k_i = round(b_i) + ⌊L_i/2⌋ ∈ [0, L_i)``, **channel 0 least
    significant** (as the FSQ reference code): ``index = Σ_i k_i ·
    Π_{j<i} L_j``. The index is computed with integer math and returned as
    int64 (a bf16 cannot represent every integer above 256); the bounding
    and rounding run in fp32 even under autocast.

    FSQ has no auxiliary loss: ``loss`` is an empty dict. Stats:
    :func:`usage_stats` of the indices of the real (mask True) tokens.

    Args:
        levels: number of levels ``L_i >= 2`` per code channel, e.g.
            ``[8, 5, 5, 5]`` (FSQ Table 1: 1000 codes) or Cosmos'
            ``[8, 8, 8, 5, 5, 5]`` (64000 codes).
        in_channels: channels ``C`` of the input. ``None`` means
            ``len(levels)``; otherwise linear projections
            ``C -> len(levels)`` before quantization and back after it
            (FSQ §3.1 projects to the few FSQ channels).
        bound_eps: ``ε`` of the bound (the reference code's ``1e-3``), in
            ``(0, 1 / (max(levels) - 1))``: positive so that ``L = 2`` has
            a shift, small enough that ``round(b)`` never reaches an
            ``(L+1)``-th value.
    """

    def __init__(self,
                 levels: Sequence[int],
                 in_channels: Optional[int] = None,
                 bound_eps: float = 1e-3):
        # levels: type and range in one message below
        check_option_types(in_channels=(in_channels, 'int?'),
                           bound_eps=(bound_eps, 'real'))
        if (not isinstance(levels, (list, tuple)) or not levels
                or any(not isinstance(level, Integral)
                       or isinstance(level, bool) or level < 2
                       for level in levels)):
            raise ValueError(f'levels must be a non-empty list of ints >= 2, '
                             f'got {levels!r}')
        if in_channels is not None and (not isinstance(in_channels, Integral)
                                        or in_channels < 1):
            raise ValueError(f'in_channels must be None or a positive int, '
                             f'got {in_channels!r}')
        # eps > 0 gives L = 2 a finite shift; eps >= 1 / (L - 1) would let
        # round(b) reach an (L + 1)-th value
        if not 0 < bound_eps < 1 / (max(levels) - 1):
            raise ValueError(
                f'bound_eps must be in (0, 1 / (max(levels) - 1)) = (0, '
                f'{1 / (max(levels) - 1):g}) so that round(b) takes exactly '
                f'L values, got {bound_eps!r}')
        super().__init__(
            len(levels) if in_channels is None else int(in_channels))
        self.levels = [int(level) for level in levels]
        self.bound_eps = bound_eps

        # integer buffers only: module.to(dtype) must not touch them
        levels_long = torch.tensor(self.levels, dtype=torch.long)
        self.register_buffer('levels_long', levels_long, persistent=False)
        self.register_buffer('half_width', levels_long // 2, persistent=False)
        self.register_buffer('basis',
                             torch.cumprod(
                                 torch.tensor([1] + self.levels[:-1],
                                              dtype=torch.long), 0),
                             persistent=False)

        # the index of the all-zero levels: Σ_i ⌊L_i/2⌋·basis_i (Python
        # ints, so the module also builds on the meta device)
        basis = [math.prod(self.levels[:i]) for i in range(len(self.levels))]
        self.index_offset = sum(
            (level // 2) * b for level, b in zip(self.levels, basis))

        code_dim = len(self.levels)
        self.project_in, self.project_out = code_space_projections(
            self.in_channels, code_dim)

    @property
    def codebook_size(self) -> int:
        return math.prod(self.levels)

    def _per_channel(self, values: torch.Tensor, ndim: int) -> torch.Tensor:
        """Per-channel ``(d,)`` values shaped to broadcast against a
        channel-first tensor ``(B, d, ...)`` of rank ``ndim``."""
        return values.reshape(-1, *([1] * (ndim - 2)))

    def bound(self, u: torch.Tensor) -> torch.Tensor:
        """``h · tanh(u + shift) - offset`` per channel of a channel-first
        fp32 ``u`` ``(B, d, *spatial)`` (see the class docstring)."""
        levels = self._per_channel(self.levels_long, u.dim())
        half_range = (levels.float() - 1) * (1 + self.bound_eps) / 2
        offset = (levels % 2 == 0).float() / 2
        shift = torch.atanh(offset / half_range)
        return torch.addcmul(-offset, torch.tanh(u + shift), half_range)

    def _levels_to_codes(self, levels: torch.Tensor) -> torch.Tensor:
        """Integer-valued fp32 levels ``round(b)`` ``(B, d, S)`` -> codes in
        ``[-1, 1]``; the one place codes are made (forward and decode)."""
        return levels / self._per_channel(self.half_width, 3)

    def _levels_to_indices(self, levels: torch.Tensor) -> torch.Tensor:
        """Integer-valued fp32 levels ``(B, d, S)`` -> int64 indices
        ``(B, S)``: mixed radix of the digits ``round(b) + ⌊L/2⌋``, i.e.
        ``Σ_i round(b_i)·basis_i + Σ_i ⌊L_i/2⌋·basis_i``. Each product is
        below the codebook size, so it is formed in int32 when that fits
        (half the memory traffic of int64) and summed in int64."""
        dtype = (torch.int32 if self.codebook_size <= torch.iinfo(
            torch.int32).max else torch.long)
        basis = self._per_channel(self.basis.to(dtype), 3)
        return (levels.to(dtype) * basis).sum(
            1, dtype=torch.long) + self.index_offset

    def _indices_to_levels(self, indices: torch.Tensor) -> torch.Tensor:
        """Int indices ``(B, S)`` -> integer-valued fp32 levels
        ``(B, d, S)``."""
        indices = check_indices(indices, self.codebook_size)
        digits = (indices.unsqueeze(1) // self._per_channel(
            self.basis, 3)) % self._per_channel(self.levels_long, 3)
        return (digits - self._per_channel(self.half_width, 3)).float()

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """Int indices ``(...)`` -> codes ``(..., len(levels))`` in
        ``[-1, 1]`` (fp32, code space: before the out-projection, channel
        last)."""
        levels = self._indices_to_levels(indices.reshape(1, -1))  # (1, K)
        return self._levels_to_codes(levels)[0].t().reshape(
            *indices.shape, len(self.levels))

    def codes_to_indices(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``(..., len(levels))`` (channel last, code space) -> int64
        indices ``(...)``; inverse of :meth:`indices_to_codes`. Codes are
        rounded to the nearest level."""
        if codes.shape[-1:] != (len(self.levels), ):
            raise ValueError(f'codes must be (..., {len(self.levels)}), got '
                             f'shape {tuple(codes.shape)}')
        with torch.autocast(codes.device.type, enabled=False):
            scaled = codes.reshape(-1, len(self.levels)).t()[None].float()
            levels = torch.round(scaled *
                                 self._per_channel(self.half_width, 3))
        return self._levels_to_indices(levels).reshape(codes.shape[:-1])

    def _to_code_space(self, z: torch.Tensor):
        """``(B, C, *spatial)`` -> fp32 code-space ``u`` ``(B, d, S)`` with
        ``S = prod(spatial)``, and the index shape ``(B, *spatial)``. The
        in-projection runs in fp32 too, so autocast cannot change the
        indices. Channel-first throughout: no layout copies."""
        check_latent(z, self.in_channels)
        grid = z.reshape(z.shape[0], z.shape[1], -1)
        with torch.autocast(z.device.type, enabled=False):
            u = self.project_in(grid.float().transpose(1, 2)).transpose(1, 2)
        return u, (z.shape[0], *z.shape[2:])

    def _from_code_space(self, codes: torch.Tensor,
                         index_shape) -> torch.Tensor:
        """Code-space ``(B, d, S)`` -> contiguous ``(B, C, *spatial)``
        (a copy only with the out-projection)."""
        out = self.project_out(codes.transpose(1, 2)).transpose(1, 2)
        return out.reshape(out.shape[0], out.shape[1],
                           *index_shape[1:]).contiguous()

    def _quantize(self, u: torch.Tensor):
        """fp32 ``u`` ``(B, d, S)`` -> (bounded ``u``, its integer-valued
        fp32 rounding)."""
        with torch.autocast(u.device.type, enabled=False):
            bounded = self.bound(u)
            return bounded, torch.round(bounded)

    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """Indices ``(B, *spatial)`` of ``z`` ``(B, C, *spatial)``."""
        u, index_shape = self._to_code_space(z)
        _, levels = self._quantize(u)
        return self._levels_to_indices(levels).reshape(index_shape)

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """Quantized latents ``(B, C, *spatial)`` of ``indices``
        ``(B, *spatial)``."""
        if indices.dim() < 1:
            raise ValueError(f'indices must be (B, *spatial), got shape '
                             f'{tuple(indices.shape)}')
        levels = self._indices_to_levels(indices.reshape(indices.shape[0], -1))
        return self._from_code_space(self._levels_to_codes(levels),
                                     indices.shape)

    def forward(self,
                z: torch.Tensor,
                mask: Optional[torch.Tensor] = None) -> QuantizerOutput:
        """Quantize ``z`` ``(B, C, *spatial)``; see the class docstring.

        Args:
            z: latents ``(B, C, *spatial)``.
            mask: optional bool ``(B, *spatial)``, True for real tokens.
                Padded positions get indices and quantized values but are
                left out of the stats.
        """
        check_latent(z, self.in_channels, mask)
        u, index_shape = self._to_code_space(z)
        bounded, levels = self._quantize(u)
        indices = self._levels_to_indices(levels)
        codes = self._levels_to_codes(levels)

        indices_real = indices
        if mask is not None:
            indices_real = indices[mask.reshape(indices.shape)]

        normalised = bounded / self._per_channel(self.half_width, 3)
        quantized = self._from_code_space(straight_through(normalised, codes),
                                          index_shape)
        return QuantizerOutput(quantized=quantized,
                               indices=indices.reshape(index_shape),
                               loss={},
                               stats=usage_stats(
                                   torch.bincount(
                                       indices_real.reshape(-1),
                                       minlength=self.codebook_size)))
