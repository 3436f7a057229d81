"""Residual quantization (RQ-VAE: Lee et al. 2022, "Autoregressive Image
Generation using Residual Quantization", §3.1) over any quantizer,
with MARVEL's per-depth scales (multi-depth lookup-free quantization) and
SoundStream's quantizer dropout (Zeghidour et al. 2021, §3.3).
"""
import copy
import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from vistok.registry import QUANTIZERS
from vistok.structures import QuantizerOutput
from .base import (
    BaseQuantizer,
    QuantizerCfg,
    check_indices,
    check_latent,
    check_option_types,
    flatten_channels_last,
    indices_level,
    merge_level_losses,
    merge_level_stats,
    run_quantizer,
    straight_through,
    token_levels,
)
from .lfq import LookupFreeQuantizer

#: index written for a depth that quantizer dropout removed; ``decode``
#: gives such a depth a zero contribution
DROPPED_INDEX = -1
DEPTH_LOSS_REDUCTIONS = ('sum', 'mean')
#: where the depths' loss terms are measured (``depth_loss_space``)
DEPTH_LOSS_SPACES = ('scaled', 'mdq')
#: MARVEL's official code (PadrickLeee/MDQ, the commit the docstring cites)
MDQ_COMMIT = '7816c37086502bfa50931734fbfa2995d5f78cff'


@QUANTIZERS.register_module()
class ResidualQuantizer(BaseQuantizer):
    """Quantize the running residual ``depth`` times (RQ-VAE §3.1).

    ``z`` ``(B, C, *spatial)`` (any spatial rank); with ``r_0 = z`` and
    output scales ``s_d`` (1 unless ``depth_scales`` is set), depth ``d``
    quantizes ``r_d / s_d`` with its sub-quantizer ``Q_d`` and

    ``c_d = s_d · Q_d(r_d / s_d)``,  ``r_{d+1} = r_d - c_d``,
    ``ẑ = Σ_d c_d`` (summed in depth order).

    ``quantized = sg[ẑ] + (z - sg[z])``: RQ-VAE's straight-through on the
    aggregated code (one straight-through, at the top level), so its value
    is bit-identical to ``decode(indices)``, which sums the same
    contributions in the same order, and the gradient w.r.t. ``z`` is the
    identity. The sub-quantizers' outputs enter as constants: parameters on
    their output side (e.g. a ``VectorQuantizer``'s ``project_out``) get no
    reconstruction gradient, so use sub-quantizers without internal
    projections (as RQ-VAE, MARVEL and UniCode do) and project around this
    module instead. Each depth is fed ``r_d / s_d`` with a gradient path to
    ``z`` (only earlier codes are constants), so depth ``d``'s commitment
    term is RQ-VAE's ``‖z - sg[ẑ_{≤d}]‖²`` divided by ``s_d²``.

    Loss terms of the sub-quantizers keep their names and are reduced over
    the depths (``depth_loss_reduction``: RQ-VAE's commitment sums, MARVEL and
    UniCode's RQ average). Stats: each depth's stats under ``'depth{d}.'``
    plus ``perplexity`` / ``usage`` averaged over depths and, when quantizer
    dropout drew, ``num_depths`` ``(B,)``.

    Indices are ``(B, *spatial, depth)``; a depth removed by quantizer
    dropout has index ``DROPPED_INDEX`` (-1) and contributes zero, in the
    forward and in ``decode``. The flat token sequence
    (:meth:`to_sequence` / :meth:`from_sequence`) is position-major: the
    positions in raster order, each position's ``D`` depth ids consecutive
    (coarse to fine), ``(B, prod(spatial)·D)`` — RQ-Transformer's order and
    UniCode's (``RQGenerator.encode`` in ``src/vae/models/stage1/
    generator.py`` stacks the depth codes of a position last), so UniCode's
    RQ-VAE (depth 4, shared codebook, 8×8 grid) gives 4 · 64 = 256 ids per
    image, all in one vocabulary of :attr:`codebook_size` ids.

    Args:
        quantizer: config (``QUANTIZERS``) or module of the sub-quantizer.
        depth: number of depths ``D``.
        shared_codebook: one sub-quantizer reused at every depth (RQ-VAE's
            shared codebook, UniCode's RQ); otherwise ``D`` independent ones
            (built from the config; a given module is deep-copied).
        depth_scales: output scale ``s_d`` of each depth: ``None`` (all 1),
            ``'pow2'`` for ``s_d = 2^-d`` (MARVEL: depth ``d`` quantizes
            ``r_d · 2^d`` and outputs ``× 2^-d``, so an LFQ's entropy and
            commitment terms see the ±1 codes it actually uses; those terms
            are then measured in the scaled space), or a list of ``D``
            positive floats.
        dropout_prob: quantizer dropout (SoundStream §3.3; "codebook drop"
            of ImageFolder): in training, each **sample** independently
            with this probability keeps only its first ``n`` depths, ``n``
            uniform in ``[dropout_min_depth, D]`` (SoundStream uses 1.0).
            The removed depths are excluded from the losses and stats
            (through the sub-quantizer's mask, so each depth's terms are
            means over the samples that keep it) and from ``quantized``;
            depths that no sample keeps are not run. Off in eval mode.
        dropout_min_depth: smallest number of kept depths.
        depth_loss_reduction: ``'sum'`` or ``'mean'`` of each loss term over
            the depths.
        per_depth_loss: report the loss terms per depth
            (``'depth{d}.loss_commitment'``, ...) instead of one reduced term
            per name; their sum is the same total.
        depth_loss_space: where the depths' loss terms are measured.
            ``'scaled'`` (default, vistok): each sub-quantizer's own terms
            on the input it sees, ``r_d / s_d``; with ``'pow2'`` depth
            ``d``'s commitment is ``4^d`` times the one on ``r_d``, and an
            LFQ's entropy is scored against the ±1 codes that depth uses.
            ``'mdq'``: MARVEL's official weighting (``LookupFreeQuantizer.
            forward`` in ``modeling/quantizer/quantizer.py`` and
            ``entropy_loss_fn`` in ``modeling/quantizer/quantizer_utils.py``
            of PadrickLeee/MDQ at commit :data:`MDQ_COMMIT`), for
            ``LookupFreeQuantizer`` sub-quantizers without projections or
            ``spherical``: depth ``d``'s commitment is measured on the
            unscaled residual, ``w_c · mean (s_d·sign(r_d) - r_d)²`` (the
            sub-quantizer's term × ``s_d²``; reduced over the depths by
            ``depth_loss_reduction``, MDQ's is ``'mean'``); the entropy is
            **one** term on the unscaled residuals of all depths pooled as
            samples, ``w_e · (mean_{d,n} H(p(·|r_{d,n})) - γ ·
            H(mean_{d,n} p(·|r_{d,n})))`` with ``p(c|r) ∝ exp(2 r·c / τ)``
            over the ±1 codes (weights, ``τ``, ``γ`` of depth 0's
            sub-quantizer), not reduced over the depths; it replaces the
            sub-quantizers' per-depth ``loss_entropy`` and is reported
            (``loss_entropy``, ``soft_sample_entropy``,
            ``soft_codebook_entropy``) at the top level also with
            ``per_depth_loss``. What remains different from MDQ: MDQ
            skips the entropy in eval mode (here it is reported in both;
            eval losses train nothing) and clamps ``log p`` at ``log
            1e-5`` (the entropy here is exact: equal wherever every code
            probability is at least 1e-5). The per-depth ``soft_*`` stats
            stay those of the scaled inputs.
    """

    def __init__(self,
                 quantizer: QuantizerCfg,
                 depth: int,
                 shared_codebook: bool = False,
                 depth_scales: Union[None, str, Sequence[float]] = None,
                 dropout_prob: float = 0.0,
                 dropout_min_depth: int = 1,
                 depth_loss_reduction: str = 'sum',
                 per_depth_loss: bool = False,
                 depth_loss_space: str = 'scaled'):
        check_option_types(
            quantizer=(quantizer, 'quantizer'),
            depth=(depth, 'int'),
            shared_codebook=(shared_codebook, 'bool'),
            depth_scales=(depth_scales, 'str|reals?'),
            dropout_prob=(dropout_prob, 'real'),
            dropout_min_depth=(dropout_min_depth, 'int'),
            depth_loss_reduction=(depth_loss_reduction, 'str'),
            per_depth_loss=(per_depth_loss, 'bool'),
            depth_loss_space=(depth_loss_space, 'str'))
        if not isinstance(depth, int) or depth < 1:
            raise ValueError(f'depth must be a positive int, got {depth!r}')
        if not 0.0 <= dropout_prob <= 1.0:
            raise ValueError(
                f'dropout_prob must be in [0, 1], got {dropout_prob!r}')
        if not 1 <= dropout_min_depth <= depth:
            raise ValueError(f'dropout_min_depth must be in [1, depth={depth}]'
                             f', got {dropout_min_depth!r}')
        if depth_loss_reduction not in DEPTH_LOSS_REDUCTIONS:
            raise ValueError(f'depth_loss_reduction must be one of '
                             f'{DEPTH_LOSS_REDUCTIONS}, got '
                             f'{depth_loss_reduction!r}')
        if depth_loss_space not in DEPTH_LOSS_SPACES:
            raise ValueError(f'depth_loss_space must be one of '
                             f'{DEPTH_LOSS_SPACES}, got '
                             f'{depth_loss_space!r}')
        first = QUANTIZERS.build_or_take(quantizer)
        if depth_loss_space == 'mdq':
            self._check_mdq_quantizer(first)
        super().__init__(first.in_channels)
        self.depth = depth
        self.shared_codebook = shared_codebook
        self.depth_scales = self._resolve_scales(depth_scales, depth)
        self.dropout_prob = dropout_prob
        self.dropout_min_depth = dropout_min_depth
        self.depth_loss_reduction = depth_loss_reduction
        self.per_depth_loss = per_depth_loss
        self.depth_loss_space = depth_loss_space
        quantizers = [first]
        if not shared_codebook:
            quantizers += [
                copy.deepcopy(first) if isinstance(quantizer, nn.Module) else
                QUANTIZERS.build_or_take(quantizer) for _ in range(depth - 1)
            ]
        self.quantizers = nn.ModuleList(quantizers)

    @staticmethod
    def _check_mdq_quantizer(quantizer: nn.Module) -> None:
        """``depth_loss_space='mdq'`` is MDQ's LFQ: a plain
        ``LookupFreeQuantizer`` whose code space is its input."""
        if (not isinstance(quantizer, LookupFreeQuantizer)
                or quantizer.spherical
                or quantizer.in_channels != quantizer.codebook_bits):
            raise ValueError(
                "depth_loss_space='mdq' (MARVEL's official loss weighting) "
                'needs a LookupFreeQuantizer sub-quantizer with in_channels '
                'equal to codebook_bits (no projections) and spherical='
                f'False, got {quantizer!r}')

    def _mdq_losses(self, losses: List[Dict[str, torch.Tensor]],
                    entropy_rows: List[torch.Tensor],
                    stats: Dict[str, torch.Tensor]):
        """``depth_loss_space='mdq'``: each depth's commitment × ``s_d²``
        (measured on ``r_d``), its ``loss_entropy`` dropped; returns the
        pooled entropy term of the unscaled residual rows (or ``{}``) and
        adds its unweighted parts to ``stats``."""
        for d, loss in enumerate(losses):
            loss.pop('loss_entropy', None)
            if 'loss_commitment' in loss:
                loss['loss_commitment'] = (loss['loss_commitment'] *
                                           self.depth_scales[d]**2)
        lfq = self.quantizers[0]
        if lfq.entropy_weight <= 0:
            return {}
        sample_entropy, codebook_entropy = lfq.entropy_terms(
            torch.cat(entropy_rows))
        stats.update(soft_sample_entropy=sample_entropy.detach(),
                     soft_codebook_entropy=codebook_entropy.detach())
        return dict(loss_entropy=lfq.entropy_weight *
                    (sample_entropy - lfq.diversity_gamma * codebook_entropy))

    @staticmethod
    def _resolve_scales(depth_scales, depth: int) -> List[float]:
        if depth_scales is None:
            return [1.0] * depth
        if depth_scales == 'pow2':
            return [2.0**-d for d in range(depth)]
        if isinstance(depth_scales, str) or len(depth_scales) != depth or any(
                not s > 0 for s in depth_scales):
            raise ValueError(f'depth_scales must be None, "pow2" or {depth} '
                             f'positive floats, got {depth_scales!r}')
        return [float(s) for s in depth_scales]

    @property
    def codebook_size(self) -> int:
        """Codes per depth ``K`` (the vocabulary of each index)."""
        return self.quantizers[0].codebook_size

    def quantizer_at(self, d: int) -> nn.Module:
        """The sub-quantizer of depth ``d``."""
        return self.quantizers[0 if self.shared_codebook else d]

    def _check(self, z: torch.Tensor, mask: Optional[torch.Tensor]):
        check_latent(z, self.in_channels, mask, min_spatial_dims=1)

    def _sample_num_depths(self, batch_size: int,
                           device: torch.device) -> torch.Tensor:
        """Kept depths per sample ``(B,)`` for quantizer dropout."""
        drawn = torch.randint(
            self.dropout_min_depth, self.depth + 1, (batch_size, ),
            device=device)
        dropped = torch.rand(batch_size, device=device) < self.dropout_prob
        return torch.where(dropped, drawn, self.depth)

    def _cap_latent_once(self, z: torch.Tensor,
                         mask: Optional[torch.Tensor]) -> torch.Tensor:
        """UniCode's RQ-VAE caps the latent's mean norm once, before the
        depths (``RQGenerator.encode`` in the official
        ``src/vae/models/stage1/generator.py``): with a sub-quantizer in
        ``mix_mode='unicode'`` built with ``cap_latent_norm=False``, its
        :meth:`~vistok.models.quantizers.VectorQuantizer.cap_latent` runs
        here (a quantizer that caps itself would re-cap every residual)."""
        first = self.quantizers[0]
        if (getattr(first, 'mix_mode', None) == 'unicode'
                and not first.cap_latent_norm):
            return first.cap_latent(z, mask)
        return z

    def forward(self,
                z: torch.Tensor,
                mask: Optional[torch.Tensor] = None) -> QuantizerOutput:
        """Quantize ``z`` ``(B, C, *spatial)``; ``mask`` ``(B, *spatial)``
        bool, True = real token (see the class docstring)."""
        self._check(z, mask)
        z = self._cap_latent_once(z, mask)
        num_depths = None
        if self.training and self.dropout_prob > 0:
            num_depths = self._sample_num_depths(z.shape[0], z.device)
        active = self.depth if num_depths is None else int(num_depths.max())
        residual, total = z, None
        indices, losses, stats, entropy_rows = [], [], [], []
        for d in range(active):
            kept = None
            if num_depths is not None:
                kept = (num_depths > d).view(-1, *[1] * (z.dim() - 2))
                kept = kept.expand(z.shape[0], *z.shape[2:])
            depth_mask = kept if mask is None else (
                mask if kept is None else mask & kept)
            if self.depth_loss_space == 'mdq':
                rows = flatten_channels_last(residual)[0]
                entropy_rows.append(rows if depth_mask is None else
                                    rows[depth_mask.reshape(-1)])
            out = run_quantizer(
                self.quantizer_at(d),
                residual / self.depth_scales[d],
                mask=depth_mask)
            contribution = out.quantized.detach() * self.depth_scales[d]
            depth_indices = out.indices
            if kept is not None:
                contribution = torch.where(kept.unsqueeze(1), contribution, 0)
                # an inner quantizer may add index axes (product branches)
                depth_indices = depth_indices.masked_fill(
                    ~kept.view(*kept.shape, *[1] * (depth_indices.dim() -
                                                   kept.dim())),
                    DROPPED_INDEX)
            residual = residual - contribution
            total = contribution if total is None else total + contribution
            indices.append(depth_indices)
            losses.append(dict(out.loss))
            stats.append(out.stats)

        # depths no sample kept are not run at all
        indices += [indices[0].new_full(indices[0].shape, DROPPED_INDEX)
                    ] * (self.depth - active)
        indices = torch.stack(indices, -1)
        if self.training and self.shared_codebook:
            # a later depth's codebook update (EMA, restart) can change codes
            # an earlier depth used: rebuild the output from the final codes
            total = self.decode(indices).detach()
        prefixes = [f'depth{d}.' for d in range(active)]
        stats = merge_level_stats(stats, prefixes)
        if num_depths is not None:
            stats['num_depths'] = num_depths
        pooled = {}
        if self.depth_loss_space == 'mdq':
            pooled = self._mdq_losses(losses, entropy_rows, stats)
        loss = merge_level_losses(
            losses, prefixes if self.per_depth_loss else None,
            self.depth_loss_reduction)
        loss.update(pooled)
        return QuantizerOutput(
            quantized=straight_through(z, total),
            indices=indices,
            loss=loss,
            stats=stats)

    @torch.no_grad()
    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """Indices ``(B, *spatial, D)`` of ``z`` ``(B, C, *spatial)`` (no
        dropout; equal to the eval-mode forward's)."""
        self._check(z, None)
        residual, indices = self._cap_latent_once(z, None), []
        for d in range(self.depth):
            quantizer, scale = self.quantizer_at(d), self.depth_scales[d]
            depth_indices = quantizer.encode(residual / scale)
            residual = residual - quantizer.decode(depth_indices) * scale
            indices.append(depth_indices)
        return torch.stack(indices, -1)

    def decode(self,
               indices: torch.Tensor,
               num_depths: Optional[int] = None) -> torch.Tensor:
        """``ẑ`` ``(B, C, *spatial)`` from indices ``(B, *spatial, D')``
        (``D' <= D``) summing only the first ``num_depths`` depths (default
        all given): a coarser reconstruction, as quantizer dropout trains
        for. ``DROPPED_INDEX`` entries contribute zero; any other id outside
        its depth's codebook raises
        :class:`~.base.InvalidIndicesError` naming the depth."""
        indices = check_indices(indices, None, lowest=DROPPED_INDEX)
        given = indices.shape[-1]
        num_depths = given if num_depths is None else num_depths
        if given > self.depth or not 1 <= num_depths <= given:
            raise ValueError(
                f'indices must be (B, *spatial, D\') with D\' <= depth='
                f'{self.depth} and num_depths in [1, D\'], got shape '
                f'{tuple(indices.shape)} and num_depths={num_depths}')
        total = None
        for d in range(num_depths):
            depth_indices = indices[..., d]
            with indices_level(f'depth {d}'):
                contribution = self.quantizer_at(d).decode(
                    depth_indices.clamp_min(0)) * self.depth_scales[d]
            # (B, *spatial[, inner index axes]) -> (B, *spatial)
            kept = (depth_indices != DROPPED_INDEX).reshape(
                *contribution.shape[:1], *contribution.shape[2:], -1).all(-1)
            contribution = torch.where(kept.unsqueeze(1), contribution, 0)
            total = contribution if total is None else total + contribution
        return total

    def to_sequence(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices ``(B, *spatial, D)`` -> the flat sequence ``(B,
        prod(spatial)·D)``: raster order of the positions, each position's
        depth ids consecutive (see the class docstring); dropped ids stay
        ``DROPPED_INDEX``. The sub-quantizer's indices must be
        ``(B, *spatial)`` (one id per position and depth)."""
        if indices.dim() < 3 or indices.shape[-1] != self.depth:
            raise ValueError(
                f'indices must be (B, *spatial, depth={self.depth}), got '
                f'shape {tuple(indices.shape)}')
        return indices.flatten(1)

    def from_sequence(self, sequence: torch.Tensor,
                      size: Sequence[int]) -> torch.Tensor:
        """Inverse of :meth:`to_sequence`: ``(B, prod(size)·D)`` -> indices
        ``(B, *size, D)``; ``size`` is the latent grid (e.g. ``(8, 8)``)."""
        size = tuple(int(s) for s in size)
        expected = self.depth * math.prod(size)
        if sequence.dim() != 2 or sequence.shape[1] != expected:
            raise ValueError(
                f'sequence must be (B, {expected}) (grid {size} x depth '
                f'{self.depth}), got shape {tuple(sequence.shape)}')
        return sequence.reshape(sequence.shape[0], *size, self.depth)

    def token_levels(
            self,
            indices: torch.Tensor) -> Dict[str, Tuple[torch.Tensor, int]]:
        """Tokens of each depth (see
        :func:`~vistok.models.quantizers.base.token_levels`): depth ``d``'s
        ids ``indices[..., d]`` ``(B, *spatial)`` under ``'depth{d}.'``
        (composed with its sub-quantizer's own levels, as the stats are);
        ``DROPPED_INDEX`` entries stay negative."""
        levels = {}
        for d in range(indices.shape[-1]):
            levels.update(
                token_levels(self.quantizer_at(d), indices[..., d],
                             f'depth{d}.'))
        return levels
