"""Images ↔ UniCode image ids (LLM vocabulary ids in the tokenizer's flat
token order), through a visual tokenizer whose quantizer took its codebook
from the LLM's embedding table.

    tokenizer = prepare_tokenizer(config, checkpoint, freeze=True)
    ids, layout = images_to_ids(tokenizer, images)   # (B, L) LLM ids
    images = ids_to_images(tokenizer, ids, layout)   # (B, 3, H, W) uint8

``layout`` is the per-sample index layout of the flat sequence (a token
export's ``manifest['sequence']``,
:func:`vistok.models.utils.token_ids.to_token_sequence`). LLM ids -> code
ids goes through the quantizer's ``selected_llm_indices`` (a persistent
buffer: no LLM file needed); an id outside that subset raises a
``ValueError`` naming it. The tokenizer is built and filled by
:func:`vistok.models.utils.prepare_tokenizer` (the frozen-tokenizer seam; a
plugin does not import ``vistok.apis``) and runs inside
:func:`vistok.models.utils.tokenizer_inference` (eval mode, no autograd,
its EMA copy when it validates with one), as ``vistok.apis.detokenize``
does.
"""
from typing import Optional, Tuple

import torch
import torch.nn as nn

from vistok.models.utils import encode_images, tokenizer_inference
from vistok.models.utils.token_ids import (
    LLM_TABLE_NAME,
    from_token_sequence,
    llm_id_table,
    llm_ids_to_codes,
    table_sha256,
    to_token_sequence,
)


def _quantizer(tokenizer: nn.Module) -> nn.Module:
    quantizer = getattr(tokenizer, 'quantizer', None)
    if quantizer is None:
        raise TypeError(f'the {type(tokenizer).__name__} has no quantizer: '
                        f'UniCode image ids need a tokenizer with one')
    return quantizer


def check_id_map(table: torch.Tensor, id_map: Optional[dict]) -> None:
    """``id_map`` (a token export manifest's) must describe ``table``."""
    if id_map is None:
        return
    if id_map.get('kind') != 'llm':
        raise ValueError(f'id_map {id_map!r} does not describe LLM ids '
                         f'(export with --llm-ids)')
    digest = table_sha256(table)
    if id_map.get('sha256') != digest:
        raise ValueError(
            f'the ids were exported through a {LLM_TABLE_NAME} of sha256 '
            f'{id_map.get("sha256")}, this tokenizer\'s is {digest}: they '
            f'come from another tokenizer / LLM subset')


def images_to_ids(tokenizer: nn.Module, images,
                  use_ema: Optional[bool] = None
                  ) -> Tuple[torch.Tensor, dict]:
    """``(ids (B, L), layout)``: the LLM ids of ``images`` (RGB in ``[0,
    255]``, ``(B, 3, H, W)`` or a list of ``(3, H, W)``) in the quantizer's
    token order, on the CPU."""
    quantizer = _quantizer(tokenizer)
    indices = encode_images(tokenizer, images, use_ema)
    sequence, layout = to_token_sequence(quantizer, indices)
    return llm_id_table(quantizer)[sequence.cpu()], layout


def ids_to_codes(tokenizer: nn.Module, ids: torch.Tensor, layout: dict,
                 id_map: Optional[dict] = None):
    """The quantizer's indices (its ``encode`` structure) of LLM ids
    ``(B, L)`` in its flat order. ``id_map`` (a manifest's) is checked
    against the quantizer's table when given.

    Raises:
        ValueError: an id outside the selected subset (named), a sequence
            that does not fit ``layout``, or another tokenizer's ids.
    """
    if ids.dim() != 2:
        raise ValueError(f'ids must be (B, L) sequences, got shape '
                         f'{tuple(ids.shape)}')
    quantizer = _quantizer(tokenizer)
    table = llm_id_table(quantizer)
    check_id_map(table, id_map)
    codes = llm_ids_to_codes(ids.cpu(), table,
                             f'the quantizer\'s {LLM_TABLE_NAME}')
    return from_token_sequence(quantizer, codes, layout)


def ids_to_images(tokenizer: nn.Module, ids: torch.Tensor, layout: dict,
                  id_map: Optional[dict] = None,
                  use_ema: Optional[bool] = None) -> torch.Tensor:
    """Images ``(B, 3, H, W)`` ``uint8`` (CPU) decoded from LLM ids ``(B,
    L)`` (see :func:`ids_to_codes`): the tokenizer's ``decode``, then its
    ``to_pixels``, rounded as ``vistok.apis.detokenize`` rounds."""
    indices = ids_to_codes(tokenizer, ids, layout, id_map)
    device = next(iter([*tokenizer.parameters(), *tokenizer.buffers()]),
                  torch.empty(0)).device
    with tokenizer_inference(tokenizer, use_ema):
        moved = (indices.to(device) if torch.is_tensor(indices) else
                 type(indices)(level.to(device) for level in indices))
        pixels = tokenizer.to_pixels(tokenizer.decode(moved))
    return pixels.round().to(torch.uint8).cpu()
