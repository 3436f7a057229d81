"""A quantizer's token ids as one flat sequence and as a language model's
vocabulary ids (UniCode, Zheng et al., ECCV 2024, "UniCode: Learning a
Unified Codebook for Multimodal Large Language Models": the visual codebook
is (a subset of) an LLM's token-embedding table, so an image becomes LLM
token ids).

**Flat sequences.** :func:`to_token_sequence` turns a batch of indices
(whatever the quantizer's ``encode`` returns) into ``(B, L)`` ids in the
quantizer's token order:

* a quantizer with ``to_sequence`` (hierarchical: its ``token_order``;
  multi-scale: scale-major; residual: raster, the depth ids of a position
  consecutive) uses it; its sequence is in the quantizer's
  joint vocabulary (``codebook_size`` ids, e.g. a hierarchical quantizer
  with separate codebooks shifts bottom ids by ``bottom_offset``);
* a single index tensor without one is flattened row-major
  (``'raster'``): ``(B, h, w[, D])`` -> ``(B, h·w·D)``, a trailing axis
  innermost.

It also returns the per-sample *layout* (``structure`` and the per-level
``shapes``), which :func:`from_token_sequence` needs to undo it.

**LLM ids.** :func:`llm_id_table` is the LLM vocabulary id of every id of
the quantizer's joint vocabulary, read from the ``selected_llm_indices``
buffer of its LLM-codebook vector quantizer(s) (the official exporter maps
``quantize_t.selected_llm_indices[code]``, ``src/eval/vae/
generate_img_token_ids.py`` of zhengsipeng/UniCode-ECCV24).
:func:`codes_to_llm_ids` maps indices of any structure,
:func:`llm_ids_to_codes` maps back and names any id outside the selected
subset.
"""
import hashlib
import inspect
import math
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

#: the buffer of a vector quantizer holding each code's LLM vocabulary id
LLM_TABLE_NAME = 'selected_llm_indices'
#: the order of a single index tensor without ``to_sequence``
RASTER_ORDER = 'raster'
STRUCTURES = ('tensor', 'list', 'tuple')

Indices = Union[torch.Tensor, Sequence[torch.Tensor]]


def _levels(indices: Indices) -> Tuple[str, List[torch.Tensor]]:
    if torch.is_tensor(indices):
        return 'tensor', [indices]
    if isinstance(indices, (list, tuple)) and indices and all(
            torch.is_tensor(level) for level in indices):
        return type(indices).__name__, list(indices)
    raise TypeError(f'indices must be a tensor or a non-empty list / tuple '
                    f'of tensors, got {type(indices).__name__}')


def _restructure(structure: str, levels: List[torch.Tensor]) -> Indices:
    if structure == 'tensor':
        return levels[0]
    return list(levels) if structure == 'list' else tuple(levels)


def sequence_order(quantizer: nn.Module) -> str:
    """Name of the order :func:`to_token_sequence` gives ``quantizer``'s
    tokens: its ``token_order`` when it has one, ``'<Type>.to_sequence'``
    for another ``to_sequence``, else ``'raster'``."""
    order = getattr(quantizer, 'token_order', None)
    if isinstance(order, str):
        return order
    if callable(getattr(quantizer, 'to_sequence', None)):
        return f'{type(quantizer).__name__}.to_sequence'
    return RASTER_ORDER


def to_token_sequence(quantizer: nn.Module,
                      indices: Indices) -> Tuple[torch.Tensor, dict]:
    """``(sequence (B, L), layout)`` of a batch of ``quantizer``'s indices
    (see the module docstring). ``layout`` is ``dict(structure, shapes)``:
    the indices' structure (``'tensor'``, ``'list'``, ``'tuple'``) and each
    level's per-sample shape (no batch axis), JSON-serialisable."""
    structure, levels = _levels(indices)
    layout = dict(structure=structure,
                  shapes=[list(level.shape[1:]) for level in levels])
    if callable(getattr(quantizer, 'to_sequence', None)):
        sequence = quantizer.to_sequence(indices)
    elif structure == 'tensor':
        sequence = indices.reshape(indices.shape[0], -1)
    else:
        raise TypeError(
            f'{type(quantizer).__name__} gives {structure} indices of '
            f'{len(levels)} levels but has no to_sequence(): no flat order')
    length = sum(math.prod(shape) for shape in layout['shapes'])
    if sequence.dim() != 2 or sequence.shape != (levels[0].shape[0],
                                                 length):
        raise ValueError(
            f'{type(quantizer).__name__}.to_sequence gave shape '
            f'{tuple(sequence.shape)}, expected (B, {length}): one id per '
            f'index of levels {layout["shapes"]}')
    return sequence, layout


def from_token_sequence(quantizer: nn.Module, sequence: torch.Tensor,
                        layout: dict) -> Indices:
    """Inverse of :func:`to_token_sequence`: ``sequence`` ``(B, L)`` and
    its ``layout`` (e.g. a token export manifest's ``sequence`` field) ->
    the quantizer's indices. A ``from_sequence`` with a ``size`` argument
    gets the 2-D grid of the last level (its first two axes: a
    hierarchical quantizer's bottom grid, a residual quantizer's latent
    grid)."""
    if not isinstance(layout, dict) or layout.get(
            'structure') not in STRUCTURES or not layout.get('shapes'):
        raise ValueError(f'layout must be dict(structure=one of '
                         f'{STRUCTURES}, shapes=[per-level shapes]), got '
                         f'{layout!r}')
    shapes = [tuple(shape) for shape in layout['shapes']]
    length = sum(math.prod(shape) for shape in shapes)
    if sequence.dim() != 2 or sequence.shape[1] != length:
        raise ValueError(
            f'sequence must be (B, {length}) for levels {list(shapes)}, got '
            f'shape {tuple(sequence.shape)}')
    from_sequence = getattr(quantizer, 'from_sequence', None)
    if callable(from_sequence):
        if 'size' in inspect.signature(from_sequence).parameters:
            indices = from_sequence(sequence, size=shapes[-1][:2])
        else:
            indices = from_sequence(sequence)
        _, levels = _levels(indices)
    elif layout['structure'] == 'tensor':
        levels = [sequence.reshape(sequence.shape[0], *shapes[0])]
    else:
        raise TypeError(f'{type(quantizer).__name__} has no from_sequence()'
                        f' to rebuild {layout["structure"]} indices')
    got = [tuple(level.shape[1:]) for level in levels]
    if got != shapes:
        raise ValueError(f'{type(quantizer).__name__}.from_sequence gave '
                         f'levels of shapes {got}, the layout records '
                         f'{shapes}')
    return _restructure(layout['structure'], levels)


def _own_table(module: nn.Module, where: str) -> Optional[torch.Tensor]:
    table = getattr(module, LLM_TABLE_NAME, None)
    if table is None or (torch.is_tensor(table) and table.numel() == 0):
        return None
    if not torch.is_tensor(table) or table.dim() != 1 or (
            table.is_floating_point()):
        raise ValueError(f'{where}.{LLM_TABLE_NAME} must be a 1-D integer '
                         f'tensor, got {table!r}')
    return table.detach().long().cpu()


def llm_codebook_parts(quantizer: nn.Module, where: str = 'quantizer'
                       ) -> List[Tuple[str, nn.Module]]:
    """``(name, module)`` of the vector quantizers whose
    ``selected_llm_indices`` make up ``quantizer``'s joint vocabulary, in
    its order: the quantizer itself when it has the buffer; else a
    hierarchical quantizer's top (shared codebook) or top then bottom
    (separate codebooks, the order of ``bottom_offset``); a residual
    quantizer's one shared sub-quantizer; a multi-scale quantizer's
    ``quantizer``. ``name`` is its path (e.g. ``quantizer.top``).

    Raises:
        ValueError: no part has the buffer (naming the part), or a residual
            quantizer has one codebook per depth (no joint vocabulary).
    """
    if getattr(quantizer, LLM_TABLE_NAME, None) is not None:
        return [(where, quantizer)]
    name = type(quantizer).__name__
    if hasattr(quantizer, 'top') and hasattr(quantizer, 'bottom_offset'):
        parts = llm_codebook_parts(quantizer.top, f'{where}.top')
        if not quantizer.shared_codebook:
            parts += llm_codebook_parts(quantizer.bottom, f'{where}.bottom')
        return parts
    if isinstance(getattr(quantizer, 'quantizers', None), nn.ModuleList):
        if not getattr(quantizer, 'shared_codebook', False):
            raise ValueError(
                f'{where} ({name}) has one codebook per depth: its ids have '
                f'no joint LLM vocabulary; use shared_codebook=True '
                f'(UniCode\'s RQ-VAE)')
        return llm_codebook_parts(quantizer.quantizers[0],
                                  f'{where}.quantizers.0')
    if isinstance(getattr(quantizer, 'quantizer', None), nn.Module):
        return llm_codebook_parts(quantizer.quantizer, f'{where}.quantizer')
    raise ValueError(
        f'{where} ({name}) has no {LLM_TABLE_NAME}: its codes are not LLM '
        f'vocabulary ids (the vector quantizer must take its codebook from '
        f'an LLM embedding table)')


def llm_id_table(quantizer: nn.Module,
                 where: str = 'quantizer') -> torch.Tensor:
    """``(codebook_size,)`` int64: the LLM vocabulary id of each id of
    ``quantizer``'s joint vocabulary (the ids of its flat sequence): the
    ``selected_llm_indices`` of its :func:`llm_codebook_parts`, in order.

    Raises:
        ValueError: as :func:`llm_codebook_parts`; or a table that is not
            1-D integer, is empty, does not hold ``codebook_size`` ids
            or is not set yet (negative ids).
    """
    tables = []
    for name, part in llm_codebook_parts(quantizer, where):
        table = _own_table(part, name)
        if table is None:
            raise ValueError(f'{name}.{LLM_TABLE_NAME} is empty: the '
                             f'quantizer has no LLM codebook')
        if int(table.min()) < 0:
            raise ValueError(
                f'{name}.{LLM_TABLE_NAME} is not set '
                f'({int((table < 0).sum())} negative ids): load the LLM '
                f'table (init_weights) or a checkpoint of the quantizer '
                f'first')
        tables.append(table)
    table = torch.cat(tables)
    size = int(quantizer.codebook_size)
    if table.numel() != size:
        raise ValueError(f'{where}.{LLM_TABLE_NAME} holds {table.numel()} '
                         f'LLM ids for codebook_size={size} codes')
    return table


def table_sha256(table: torch.Tensor) -> str:
    """sha256 of an LLM id table as little-endian int64 (recorded in token
    exports to match ids with the tokenizer that made them)."""
    array = np.ascontiguousarray(table.detach().cpu().numpy(), dtype='<i8')
    return hashlib.sha256(array.tobytes()).hexdigest()


def level_offsets(quantizer: nn.Module, num_levels: int) -> List[int]:
    """Shift of each level's ids in the joint vocabulary: ``(0,
    bottom_offset)`` for a hierarchical quantizer, zeros otherwise."""
    if num_levels == 2 and hasattr(quantizer, 'bottom_offset'):
        return [0, int(quantizer.bottom_offset)]
    return [0] * num_levels


def codes_to_llm_ids(indices: Indices, quantizer: nn.Module,
                     table: Optional[torch.Tensor] = None) -> Indices:
    """``indices`` of ``quantizer`` (its ``encode`` structure, level-local
    ids) as LLM vocabulary ids, same structure; ``table`` defaults to
    :func:`llm_id_table`. Negative (dropped) ids raise ``ValueError``."""
    table = llm_id_table(quantizer) if table is None else table
    structure, levels = _levels(indices)
    mapped = []
    for level, offset in zip(levels, level_offsets(quantizer, len(levels))):
        joint = level.long() + offset
        if joint.numel() and (int(joint.min()) < 0
                              or int(joint.max()) >= table.numel()):
            raise ValueError(
                f'indices hold ids in [{int(level.min())}, '
                f'{int(level.max())}] (level offset {offset}), outside the '
                f'{table.numel()} codes of the LLM id table')
        mapped.append(table.to(level.device)[joint])
    return _restructure(structure, mapped)


def llm_ids_to_codes(llm_ids: torch.Tensor, table: torch.Tensor,
                     where: str = LLM_TABLE_NAME) -> torch.Tensor:
    """Joint code ids of ``llm_ids`` (any shape): the position of each id
    in ``table`` (:func:`llm_id_table`).

    Raises:
        ValueError: an id is not in the selected subset (the message names
            the first such id, its position and how many there are), or
            ``table`` maps two codes to one LLM id (ambiguous).
    """
    table = table.long().cpu()
    if table.unique().numel() != table.numel():
        raise ValueError(f'{where} maps several codes to one LLM id: LLM '
                         f'ids -> codes is ambiguous (use a shared codebook '
                         f'or disjoint subsets)')
    ids = llm_ids.long()
    bound = int(table.max()) + 1 if table.numel() else 0
    inverse = torch.full((bound, ), -1, dtype=torch.long)
    inverse[table] = torch.arange(table.numel())
    flat = ids.reshape(-1).cpu()
    inside = (flat >= 0) & (flat < bound)
    codes = torch.full_like(flat, -1)
    codes[inside] = inverse[flat[inside]]
    outside = codes < 0
    if outside.any():
        position = int(outside.nonzero()[0, 0])
        unique = flat[outside].unique().tolist()
        raise ValueError(
            f'LLM id {int(flat[position])} (flat position {position} of '
            f'ids of shape {tuple(ids.shape)}) is not in the selected '
            f'vocabulary subset ({table.numel()} ids of {where}); '
            f'{len(unique)} such ids: {unique[:8]}')
    return codes.reshape(ids.shape).to(llm_ids.device)
