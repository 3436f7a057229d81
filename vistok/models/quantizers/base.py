"""The quantizer interface (DESIGN §6) and the math every quantizer shares.

A quantizer maps a channel-first latent ``z`` of shape ``(B, C, *spatial)``
(any spatial rank: ``(B, C, H, W)`` images, ``(B, C, D, H, W)`` volumes,
``(B, C, N)`` token sequences) to discrete indices ``(B, *spatial)`` and back.
"""
import contextlib
import math
import os
from abc import ABCMeta, abstractmethod
from numbers import Integral, Real
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from vistok.structures import QuantizerOutput
from vistok.utils.weights import MissingWeightsError

#: a sub-quantizer given as a ``QUANTIZERS`` config or as a built module
QuantizerCfg = Union[dict, nn.Module]


def flatten_channels_last(z: torch.Tensor) -> Tuple[torch.Tensor, torch.Size]:
    """Move channels last and flatten every other axis.

    Args:
        z: ``(B, C, *spatial)``.

    Returns:
        ``(flat, index_shape)``: ``flat`` is ``(B * prod(spatial), C)`` and
        ``index_shape`` is ``(B, *spatial)``, the shape of the indices.
    """
    channels_last = z.movedim(1, -1)
    return channels_last.reshape(-1, z.shape[1]), channels_last.shape[:-1]


def unflatten_channels_first(flat: torch.Tensor,
                             index_shape: torch.Size) -> torch.Tensor:
    """Inverse of :func:`flatten_channels_last`: ``(N, C)`` vectors and the
    index shape ``(B, *spatial)`` give a contiguous ``(B, C, *spatial)``."""
    return flat.reshape(*index_shape, flat.shape[-1]).movedim(-1,
                                                              1).contiguous()


def straight_through(z: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Straight-through estimator of VQ-VAE (van den Oord et al. 2017, §3.1):
    ``sg[q] + (z - sg[z])``.

    The forward value is ``q`` bit for bit (``z - z.detach()`` is exactly
    zero, unlike ``z + (q - z).detach()``); the backward pass copies the
    gradient of the output to ``z`` only. ``q`` enters as a constant, so a
    codebook learns from its own loss term, not from the decoder.
    """
    return q.detach() + (z - z.detach())


def usage_stats(counts: torch.Tensor, prefix: str = '') -> dict:
    """The one place codebook usage statistics are computed.

    From a code histogram ``counts`` ``(K,)`` (fp32 math, detached):
    ``code_counts`` (the histogram), ``usage`` (fraction of the ``K`` codes
    used at least once), ``entropy`` (natural log, ``0 log 0 = 0``) and
    ``perplexity = exp(entropy)`` (``K`` for uniform use, 1 for a single
    code). Quantizers with several levels report each level under a prefix,
    e.g. ``'depth0.'``, ``'scale3.'``, ``'branch1.'``.
    """
    counts = counts.detach()
    probs = counts.float() / counts.sum().clamp_min(1)
    # p·log(max(p, tiny)): 0 for p = 0, and ~10x faster than xlogy on sparse
    # histograms (log(0) is slow)
    entropy = -(probs * probs.clamp_min(torch.finfo(probs.dtype).tiny).log()
                ).sum()
    stats = dict(code_counts=counts,
                 usage=(counts > 0).float().mean(),
                 entropy=entropy,
                 perplexity=entropy.exp())
    return {prefix + k: v for k, v in stats.items()}


def perplexity_from_counts(counts: torch.Tensor) -> torch.Tensor:
    """``exp(H(p))`` of the code histogram ``counts`` ``(K,)`` (see
    :func:`usage_stats`)."""
    return usage_stats(counts)['perplexity']


class BaseQuantizer(nn.Module, metaclass=ABCMeta):
    """Interface of every vistok quantizer.

    Contract (DESIGN §6):

    * ``forward(z) -> QuantizerOutput(quantized, indices, loss, stats)`` for
      ``z`` of shape ``(B, C, *spatial)`` with ``C == self.in_channels``.
      ``quantized`` is ``(B, self.out_channels, *spatial)`` — the shape of
      ``z`` unless the quantizer changes the channel count (see
      :attr:`out_channels`) — and is written as the
      straight-through ``q + (z - z.detach())`` (see :func:`straight_through`)
      so that its value is bit-identical to ``decode(indices)``. ``loss``
      holds named, already-weighted terms whose names contain ``'loss'``;
      ``stats`` holds detached usage material (e.g. ``code_counts`` ``(K,)``
      and a scalar ``perplexity``).
    * ``encode(z) -> indices`` of shape ``(B, *spatial)`` (integer codes).
    * ``decode(indices) -> z_q`` of shape ``(B, out_channels, *spatial)``;
      ``decode(encode(z))`` equals ``forward(z).quantized`` exactly.
    * Distance and entropy math runs in fp32 even under autocast.

    Args:
        in_channels: channel count ``C`` of the latents this quantizer takes.
    """

    def __init__(self, in_channels: int):
        super().__init__()
        self.in_channels = in_channels

    @property
    @abstractmethod
    def codebook_size(self) -> int:
        """Number of distinct codes ``K``."""

    @property
    def out_channels(self) -> int:
        """Channels of ``quantized`` and of ``decode``'s output, what a
        tokenizer's ``post_quant_conv`` takes: ``in_channels`` unless the
        quantizer changes them (``HierarchicalQuantizer(combine='concat')``
        outputs ``2 · in_channels``)."""
        return self.in_channels

    def sub_quantizers(self) -> List[Tuple[str, 'BaseQuantizer']]:
        """``(name, quantizer)`` of the quantizers this one is built from
        (a container's levels / depths / branches, also inside module
        lists), outermost only; none for a leaf."""
        found = []

        def visit(module: nn.Module, prefix: str) -> None:
            for name, child in module.named_children():
                if isinstance(child, BaseQuantizer):
                    found.append((prefix + name, child))
                else:
                    visit(child, f'{prefix}{name}.')

        visit(self, '')
        return found

    def init_weights(self) -> None:
        """Load what the sub-quantizers read from files (e.g. an external
        codebook), so a container passes its tokenizer's ``init_weights``
        on; a missing file names its full key (``top.external_...``)."""
        for name, quantizer in self.sub_quantizers():
            try:
                quantizer.init_weights()
            except MissingWeightsError as err:
                raise err.with_prefix(name) from None

    def init_inference_weights(self) -> None:
        """Fill the tables checkpoints do not hold (e.g. UniCode's LLM
        codebook with ``external_codebook_in_checkpoint=False``) in the
        sub-quantizers; leaves that need it override this."""
        for _, quantizer in self.sub_quantizers():
            quantizer.init_inference_weights()

    @abstractmethod
    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        """Quantize ``z`` ``(B, C, *spatial)``."""

    @abstractmethod
    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """Indices ``(B, *spatial)`` of ``z`` ``(B, C, *spatial)``."""

    @abstractmethod
    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """Quantized latents ``(B, C, *spatial)`` of ``indices``."""


# --- checks of user data: indices and config options ------------------------
class InvalidIndicesError(ValueError):
    """Indices given to ``decode`` that are not integer ids of the codebook
    (never wrapped or clamped: a negative id would silently index from the
    end of an embedding table). ``levels`` name where inside a multi-level
    quantizer they are, outermost first (``('depth 1', 'branch 0')``)."""

    def __init__(self, problem: str, levels: Sequence[str] = ()):
        self.problem, self.levels = problem, tuple(levels)
        where = f' of {" > ".join(self.levels)}' if self.levels else ''
        super().__init__(f'indices{where} {problem}')

    def within(self, level: str) -> 'InvalidIndicesError':
        """The same error, located inside ``level`` of a container."""
        return InvalidIndicesError(self.problem, (level, ) + self.levels)


def check_indices(indices: torch.Tensor,
                  codebook_size: Optional[int],
                  lowest: int = 0) -> torch.Tensor:
    """The one check of ``decode``'s input: ``indices`` as ``int64``,
    or :class:`InvalidIndicesError` naming the valid range unless it is an
    integer tensor (not bool) with every value in
    ``[lowest, codebook_size)``. ``lowest`` below 0 admits markers (a
    residual quantizer's dropped depths, -1); ``codebook_size=None`` checks
    the lower bound only (a container whose levels check their own
    codebooks). One host sync (the min and max)."""
    if not torch.is_tensor(indices):
        raise InvalidIndicesError(
            f'must be an integer tensor, got {type(indices).__name__}')
    if (indices.dtype == torch.bool or indices.is_floating_point()
            or indices.is_complex()):
        raise InvalidIndicesError(
            f'must be an integer tensor of code ids, got dtype '
            f'{indices.dtype}')
    indices = indices.long()
    if not indices.numel():
        return indices
    low, high = (int(v) for v in torch.aminmax(indices))
    if low < lowest or (codebook_size is not None and high >= codebook_size):
        valid = (f'be >= {lowest}' if codebook_size is None else
                 f'lie in [{lowest}, {codebook_size})')
        marker = f' ({lowest} marks a dropped id)' if lowest < 0 else ''
        raise InvalidIndicesError(
            f'must {valid}{marker}, got values in [{low}, {high}]')
    return indices


@contextlib.contextmanager
def indices_level(level: str) -> Iterator[None]:
    """Locate an :class:`InvalidIndicesError` raised inside the block (by a
    sub-quantizer's ``decode``) at ``level`` of this container."""
    try:
        yield
    except InvalidIndicesError as err:
        raise err.within(level) from None


def _kind_matches(value, kind: str) -> bool:
    if kind == 'int':
        return isinstance(value, Integral) and not isinstance(value, bool)
    if kind == 'real':
        return (isinstance(value, Real) and not isinstance(value, bool)
                and math.isfinite(value))
    if kind == 'bool':
        return isinstance(value, bool)
    if kind == 'str':
        return isinstance(value, str)
    if kind == 'path':
        return isinstance(value, (str, os.PathLike))
    if kind == 'config':  # a registry config
        return isinstance(value, dict) and 'type' in value
    if kind == 'quantizer':  # a QUANTIZERS config or a built module
        return isinstance(value, nn.Module) or _kind_matches(value, 'config')
    if kind in ('ints', 'reals', 'quantizers'):
        return isinstance(value, (list, tuple)) and all(
            _kind_matches(v, kind[:-1]) for v in value)
    raise ValueError(f'unknown option kind {kind!r}')


_KIND_NAMES = dict(int='an int', real='a finite real number',
                   bool='a bool (True / False)', str='a string',
                   path='a path (str)', ints='a list of ints',
                   reals='a list of real numbers',
                   config='a QUANTIZERS config dict (with `type`)',
                   quantizer='a QUANTIZERS config dict (with `type`) or a '
                   'quantizer module',
                   quantizers='a list of QUANTIZERS configs / quantizer '
                   'modules')


def check_option_types(**options: Tuple[object, str]) -> None:
    """The one type check of quantizer options, before any range check.

    Each keyword is a config key, its value ``(value, kind)``: ``kind`` is
    ``'int'`` (not bool), ``'real'`` (finite int or float, not bool),
    ``'bool'``, ``'str'``, ``'path'`` (str or ``os.PathLike``),
    ``'config'`` (a registry config: a dict with ``type``), ``'quantizer'``
    (such a config or a module), or a plural (``'ints'``, ``'reals'``,
    ``'quantizers'``: a list or tuple of them); ``'a|b'`` allows either and
    a trailing ``'?'`` allows ``None``.

    Raises:
        ValueError: naming the first key whose value has another type
            (e.g. ``codebook_size='4096'``, ``levels=8``, ``embed_dim=3.5``,
            ``None`` where an int is required).
    """
    for key, (value, kind) in options.items():
        optional = kind.endswith('?')
        kinds = kind.rstrip('?').split('|')
        if (optional and value is None) or any(
                _kind_matches(value, k) for k in kinds):
            continue
        wanted = ' or '.join(_KIND_NAMES[k] for k in kinds)
        raise ValueError(f'config key `{key}` must be {wanted}'
                         f'{" or None" if optional else ""}, got {value!r} '
                         f'({type(value).__name__})')


def check_latent(z: torch.Tensor, in_channels: int,
                 mask: Optional[torch.Tensor] = None,
                 min_spatial_dims: int = 0) -> None:
    """Raise ``ValueError`` naming the shapes unless ``z`` is
    ``(B, in_channels, *spatial)`` with at least ``min_spatial_dims`` spatial
    dims and ``mask`` (if given) is a bool ``(B, *spatial)`` tensor."""
    if z.dim() < 2 + min_spatial_dims or z.shape[1] != in_channels:
        spatial = ('with at least one spatial dim, '
                   if min_spatial_dims else '')
        raise ValueError(f'z must be (B, {in_channels}, *spatial) {spatial}'
                         f'got shape {tuple(z.shape)}')
    index_shape = (z.shape[0], *z.shape[2:])
    if mask is not None and (mask.dtype != torch.bool
                             or tuple(mask.shape) != index_shape):
        raise ValueError(f'mask must be a bool tensor of shape {index_shape} '
                         f'(B, *spatial), got {mask.dtype} of shape '
                         f'{tuple(mask.shape)}')


def code_space_projections(in_channels: int,
                           code_dim: int) -> Tuple[nn.Module, nn.Module]:
    """``(project_in, project_out)``: linear ``C -> D`` and ``D -> C`` maps on
    the channel dim for a low-dimensional code space (the "factorized codes"
    of ViT-VQGAN, Yu et al. 2022), identities when ``C == D``."""
    if in_channels == code_dim:
        return nn.Identity(), nn.Identity()
    return nn.Linear(in_channels, code_dim), nn.Linear(code_dim, in_channels)


# --- helpers of the multi-level wrappers (residual, product, hierarchical) ---
def run_quantizer(quantizer: nn.Module, z: torch.Tensor,
                  **options) -> QuantizerOutput:
    """``quantizer(z, **options)`` with only the options that are not
    ``None`` (e.g. ``mask``, ``num_scales``), so a quantizer that does not
    take an option works wherever the option is unused."""
    return quantizer(z, **{k: v for k, v in options.items() if v is not None})


def merge_level_losses(level_losses: Sequence[Dict[str, torch.Tensor]],
                       prefixes: Optional[Sequence[str]] = None,
                       reduction: str = 'sum') -> Dict[str, torch.Tensor]:
    """Combine the loss dicts of the levels (depths, branches, ...) of a
    multi-level quantizer.

    Without ``prefixes`` terms of the same name are reduced over the levels
    (``'sum'`` or ``'mean'`` over the levels that have the term). With
    ``prefixes`` every level's terms are kept under ``prefix + name``
    (already divided by the number of levels for ``'mean'``), so their sum,
    which mmengine takes over every key containing ``'loss'``, is the same.
    """
    merged: Dict[str, List[torch.Tensor]] = {}
    for i, losses in enumerate(level_losses):
        for name, value in losses.items():
            key = name if prefixes is None else prefixes[i] + name
            merged.setdefault(key, []).append(value)
    if prefixes is not None and reduction == 'mean':
        return {k: v[0] / len(level_losses) for k, v in merged.items()}
    reduce = torch.mean if reduction == 'mean' else torch.sum
    return {k: reduce(torch.stack(v)) for k, v in merged.items()}


def merge_level_stats(level_stats: Sequence[Dict[str, torch.Tensor]],
                      prefixes: Sequence[str]) -> Dict[str, torch.Tensor]:
    """Every level's stats under its prefix (e.g. ``'depth0.perplexity'``)
    plus top-level ``perplexity`` and ``usage``: the mean over the levels
    (when every level reports it)."""
    stats = {
        prefix + name: value
        for prefix, level in zip(prefixes, level_stats)
        for name, value in level.items()
    }
    for name in ('perplexity', 'usage'):
        if all(name in level for level in level_stats):
            stats[name] = torch.stack(
                [level[name].float() for level in level_stats]).mean()
    return stats


def flat_tokens(quantizer: nn.Module, indices) -> torch.Tensor:
    """A ``(B, L)`` token sequence in the quantizer's joint vocabulary (ids in
    ``[0, quantizer.codebook_size)``, negative for dropped positions) from
    whatever its ``indices`` are: the quantizer's own ``to_sequence``
    (multi-scale, hierarchical), branch offsets (product), or the index tensor
    flattened (raster order, trailing depth axis last)."""
    if hasattr(quantizer, 'to_sequence'):
        return quantizer.to_sequence(indices)
    if hasattr(quantizer, 'offset_indices'):
        indices = quantizer.offset_indices(indices)
    if torch.is_tensor(indices):
        return indices.flatten(1)
    return torch.cat([level.flatten(1) for level in indices], dim=1)


def token_levels(quantizer: nn.Module,
                 indices,
                 prefix: str = '') -> Dict[str, Tuple[torch.Tensor, int]]:
    """The tokens of every level of ``quantizer``, keyed by the level prefix
    its stats use (``'{prefix}code_counts'``).

    Maps each prefix to ``(tokens (B, ...) int64, K)``: the level's ids in
    its own codebook of ``K`` codes (not the joint vocabulary of
    :func:`flat_tokens`); negative ids mark dropped positions and are to be
    ignored by consumers. A multi-level quantizer answers through its own
    ``token_levels(indices)`` (prefixes ``'depth{d}.'``, ``'scale{i}.'``,
    ``'branch{p}.'``, ``'top.'`` / ``'bottom.'``, composed for nested
    quantizers, e.g. ``'branch1.scale0.'``); any other quantizer has the
    single level ``''``: ``{'': (indices, quantizer.codebook_size)}``.
    ``prefix`` is put in front of every key (how multi-level quantizers
    nest their sub-quantizers' levels).
    """
    if hasattr(quantizer, 'token_levels'):
        levels = quantizer.token_levels(indices)
    else:
        levels = {'': (indices.long(), quantizer.codebook_size)}
    return {prefix + name: level for name, level in levels.items()}
