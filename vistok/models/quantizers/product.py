"""Product quantization (PQ: Jégou et al. 2011, "Product Quantization for
Nearest Neighbor Search", §II.B) over channel groups, each group quantized by
its own quantizer, as the branches of ImageFolder (Li et al. 2025,
"ImageFolder: Autoregressive Image Generation with Folded Tokens").
"""
import copy
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from vistok.registry import QUANTIZERS
from vistok.structures import QuantizerOutput
from .base import (
    BaseQuantizer,
    QuantizerCfg,
    check_option_types,
    indices_level,
    merge_level_losses,
    merge_level_stats,
    run_quantizer,
    token_levels,
)

#: per-branch indices: a tensor, or a list of tensors (e.g. the per-scale
#: maps of a multi-scale quantizer)
Indices = Union[torch.Tensor, List[torch.Tensor]]


def stack_branches(branch_indices: Sequence[Indices]) -> Indices:
    """Per-branch indices -> one structure with a trailing branch axis:
    tensors ``(B, *spatial)`` -> ``(B, *spatial, P)``; lists of tensors
    (same length in every branch) -> a list of stacked tensors."""
    if isinstance(branch_indices[0], torch.Tensor):
        return torch.stack(list(branch_indices), -1)
    return [stack_branches(level) for level in zip(*branch_indices)]


def unstack_branches(indices: Indices) -> List[Indices]:
    """Inverse of :func:`stack_branches`: one entry per branch."""
    if isinstance(indices, torch.Tensor):
        return list(indices.unbind(-1))
    per_level = [unstack_branches(level) for level in indices]
    return [list(branch) for branch in zip(*per_level)]


@QUANTIZERS.register_module()
class ProductQuantizer(BaseQuantizer):
    """Split the channels into groups and quantize each with its own branch.

    ``z`` ``(B, C, *spatial)`` (any spatial rank the branches accept) is
    split along the channels into ``P`` groups of ``C_p`` = the branch's
    ``in_channels`` (``C = Σ_p C_p``; equal groups when one config is
    replicated); branch ``p`` quantizes group ``p`` and the outputs are
    concatenated along the channels again. Each branch applies its own
    straight-through, so ``quantized`` is bit-identical to
    ``decode(indices)`` and the gradient w.r.t. ``z`` is whatever each branch
    defines (the identity for the usual ones).

    ImageFolder splits tokens, not channels: its encoder emits ``P`` groups
    of tokens that share a grid. Arrange those as channels
    ``(B, P·C_p, h, w)`` to get the same quantizer; a token split in this
    module is not implemented.

    Indices carry a trailing branch axis: ``(B, *spatial, P)`` (a list of
    such maps when the branches return lists, e.g. per-scale maps). For an
    autoregressive model that predicts all branches of a position in
    parallel, :meth:`offset_indices` maps them into one joint vocabulary of
    ``codebook_size = Σ_p K_p`` ids (branch ``p`` owns
    ``[Σ_{q<p} K_q, Σ_{q≤p} K_q)``) and :meth:`remove_offsets` maps back.

    Shared quantizer dropout (ImageFolder: one draw per sample for both
    branches): when every branch implements
    ``sample_num_scales(batch_size, device) -> LongTensor (B,)`` and
    ``forward(z, mask=None, num_scales=None)`` (the multi-scale residual
    quantizer does) and ``share_dropout`` is on, the draw is taken once from
    branch 0 in training, passed to every branch and returned as
    ``stats['num_scales']``. Otherwise each branch draws on its own.

    Loss terms of the same name are summed over branches; stats are
    reported per branch under ``'branch{p}.'`` plus ``perplexity`` /
    ``usage`` averaged over branches.

    Args:
        quantizer: config / module of the branch quantizer, replicated
            ``num_branches`` times (a module is deep-copied), or a list of
            configs / modules, one per branch.
        num_branches: number of branches ``P`` (required with a single
            config; must match the list length otherwise).
        in_channels: optional check: must equal ``Σ_p C_p``.
        share_dropout: share one quantizer-dropout draw across branches
            (see above).
    """

    def __init__(self,
                 quantizer: Union[QuantizerCfg, Sequence[QuantizerCfg]],
                 num_branches: Optional[int] = None,
                 in_channels: Optional[int] = None,
                 share_dropout: bool = True):
        check_option_types(quantizer=(quantizer, 'quantizer|quantizers'),
                           num_branches=(num_branches, 'int?'),
                           in_channels=(in_channels, 'int?'),
                           share_dropout=(share_dropout, 'bool'))
        if isinstance(quantizer, (list, tuple)):
            if num_branches not in (None, len(quantizer)):
                raise ValueError(
                    f'num_branches={num_branches} does not match the '
                    f'{len(quantizer)} quantizer configs given')
            branches = [QUANTIZERS.build_or_take(cfg) for cfg in quantizer]
        else:
            if not isinstance(num_branches, int) or num_branches < 1:
                raise ValueError(f'num_branches must be a positive int with '
                                 f'one quantizer config, got {num_branches!r}')
            first = QUANTIZERS.build_or_take(quantizer)
            branches = [first] + [
                copy.deepcopy(first) if isinstance(quantizer, nn.Module) else
                QUANTIZERS.build_or_take(quantizer)
                for _ in range(num_branches - 1)
            ]
        if not branches:
            raise ValueError('quantizer must hold at least one branch config')
        branch_channels = [branch.in_channels for branch in branches]
        if in_channels is not None and in_channels != sum(branch_channels):
            raise ValueError(
                f'in_channels={in_channels} cannot be split into the branch '
                f'channel groups {branch_channels} (sum '
                f'{sum(branch_channels)})')
        super().__init__(sum(branch_channels))
        self.branches = nn.ModuleList(branches)
        self.branch_channels = branch_channels
        self.share_dropout = share_dropout
        sizes = torch.tensor([b.codebook_size for b in branches])
        self.register_buffer(
            'branch_offsets', sizes.cumsum(0) - sizes, persistent=False)

    @property
    def num_branches(self) -> int:
        return len(self.branches)

    @property
    def branch_codebook_sizes(self) -> List[int]:
        return [branch.codebook_size for branch in self.branches]

    @property
    def codebook_size(self) -> int:
        """Size of the joint vocabulary ``Σ_p K_p`` of
        :meth:`offset_indices`."""
        return sum(self.branch_codebook_sizes)

    def _check(self, z: torch.Tensor):
        if z.dim() < 3 or z.shape[1] != self.in_channels:
            raise ValueError(
                f'z must be (B, {self.in_channels}, *spatial) (branch channel'
                f' groups {self.branch_channels}), got shape '
                f'{tuple(z.shape)}')

    def _shares_dropout(self) -> bool:
        return self.share_dropout and self.training and all(
            hasattr(branch, 'sample_num_scales') for branch in self.branches)

    def forward(self,
                z: torch.Tensor,
                mask: Optional[torch.Tensor] = None) -> QuantizerOutput:
        """Quantize ``z`` ``(B, C, *spatial)``; ``mask`` ``(B, *spatial)``
        bool, True = real token, is passed to every branch."""
        self._check(z)
        num_scales = None
        if self._shares_dropout():
            num_scales = self.branches[0].sample_num_scales(
                z.shape[0], z.device)
        outs = [
            run_quantizer(branch, part, mask=mask, num_scales=num_scales)
            for branch, part in zip(self.branches,
                                    z.split(self.branch_channels, dim=1))
        ]
        stats = merge_level_stats(
            [out.stats for out in outs],
            [f'branch{p}.' for p in range(self.num_branches)])
        if num_scales is not None:
            stats['num_scales'] = num_scales
        return QuantizerOutput(
            quantized=torch.cat([out.quantized for out in outs], 1),
            indices=stack_branches([out.indices for out in outs]),
            loss=merge_level_losses([out.loss for out in outs]),
            stats=stats)

    def encode(self, z: torch.Tensor) -> Indices:
        """Indices ``(B, *spatial, P)`` of ``z`` ``(B, C, *spatial)``."""
        self._check(z)
        return stack_branches([
            branch.encode(part) for branch, part in zip(
                self.branches, z.split(self.branch_channels, dim=1))
        ])

    def decode(self,
               indices: Indices,
               num_scales: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``(B, C, *spatial)`` from indices with a trailing branch axis of
        length ``P`` (branch-local ids, not offset). ``num_scales`` (e.g. a
        training forward's ``stats['num_scales']``) is passed to every
        branch's ``decode`` when given."""
        branch_indices = unstack_branches(indices)
        if len(branch_indices) != self.num_branches:
            raise ValueError(
                f'indices must have a trailing branch axis of length '
                f'{self.num_branches}, got {len(branch_indices)}')
        options = {} if num_scales is None else dict(num_scales=num_scales)
        decoded = []
        for p, (branch, ids) in enumerate(zip(self.branches, branch_indices)):
            with indices_level(f'branch {p}'):
                decoded.append(branch.decode(ids, **options))
        return torch.cat(decoded, 1)

    def offset_indices(self, indices: Indices) -> Indices:
        """Branch-local ids ``(..., P)`` -> joint-vocabulary ids: branch
        ``p``'s ids shifted by ``Σ_{q<p} K_q``. Negative ids (dropped
        positions) are left as they are."""
        if not isinstance(indices, torch.Tensor):
            return [self.offset_indices(level) for level in indices]
        return torch.where(indices >= 0, indices + self.branch_offsets,
                           indices)

    def remove_offsets(self, indices: Indices) -> Indices:
        """Inverse of :meth:`offset_indices`; raises ``ValueError`` when an
        id lies outside its branch's range of the joint vocabulary."""
        if not isinstance(indices, torch.Tensor):
            return [self.remove_offsets(level) for level in indices]
        local = indices - self.branch_offsets
        sizes = self.branch_offsets.new_tensor(self.branch_codebook_sizes)
        outside = (indices >= 0) & ((local < 0) | (local >= sizes))
        if outside.any():
            raise ValueError(
                f'indices hold ids outside their branch range of the joint '
                f'vocabulary (branch offsets {self.branch_offsets.tolist()},'
                f' sizes {sizes.tolist()})')
        return torch.where(indices >= 0, local, indices)

    def token_levels(self,
                     indices: Indices) -> Dict[str, Tuple[torch.Tensor, int]]:
        """Tokens of each branch (see
        :func:`~vistok.models.quantizers.base.token_levels`): branch ``p``'s
        local ids (no offsets) under ``'branch{p}.'``, composed with the
        branch's own levels (e.g. ``'branch1.scale0.'``) as the stats are."""
        branch_indices = unstack_branches(indices)
        if len(branch_indices) != self.num_branches:
            raise ValueError(
                f'indices must have a trailing branch axis of length '
                f'{self.num_branches}, got {len(branch_indices)}')
        levels = {}
        for p, (branch, ids) in enumerate(zip(self.branches, branch_indices)):
            levels.update(token_levels(branch, ids, f'branch{p}.'))
        return levels
