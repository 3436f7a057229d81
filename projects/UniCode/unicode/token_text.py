"""UniCode's image-token text ``<vistok>id-id-…</vistok>`` and the input
ids of a text that holds it.

**Text format** (official ``data/process.py``, ``get_t2v_anno``, of
zhengsipeng/UniCode-ECCV24): an image is written as ``'<vistok>' +
'-'.join(str(id) for id in ids) + '</vistok>'``: decimal ids, ``-`` between
them, no spaces, nothing else inside the markers; ``<vistok></vistok>``
holds no ids (the official partial-generation prompts write one when the
given part is empty). The ids are **LLM vocabulary ids**, not code ids:
the official exporter maps every code through the quantizer's
``selected_llm_indices`` (``src/eval/vae/generate_img_token_ids.py``), in
the tokenizer's flat token order (HQ-VAE: each of the 64 top ids followed
by 4 bottom ids, ``cat([codes_t[:, None], codes_b.reshape(64, 4)],
-1).flatten()`` in ``process.py``; export them with ``tools/
export_tokens.py --flat-sequence --llm-ids``).

**Input ids** (official ``tokenizer_image_token_gen``, ``src/utils/
mm_utils.py``): the text outside the markers is tokenized, the ids inside
are inserted as they are (they already are vocabulary ids). The official
parser drops the markers; :func:`text_to_input_ids` does the same without
``marker_ids`` and, with them, puts the markers in as the LLM tokenizer's
added tokens (:func:`.llm_tokenizer.add_vistok_tokens`), so that
:func:`input_ids_to_text` can find the image spans again and generation
can stop at ``</vistok>``.
"""
import re
from typing import List, Optional, Sequence, Tuple, Union

import torch

VISTOK_START = '<vistok>'
VISTOK_END = '</vistok>'
ID_SEPARATOR = '-'
_SPAN = re.compile(re.escape(VISTOK_START) + '(.*?)' + re.escape(VISTOK_END),
                   re.S)
_IDS = re.compile(r'(?:\d+(?:-\d+)*)?')

Segment = Union[str, List[int]]


def format_image_ids(ids: Union[Sequence[int], torch.Tensor]) -> str:
    """``<vistok>id-id-…</vistok>`` of one image's 1-D ``ids`` (LLM
    vocabulary ids, non-negative ints)."""
    if torch.is_tensor(ids):
        if ids.dim() != 1 or ids.is_floating_point():
            raise ValueError(f'ids must be a 1-D integer tensor (one image), '
                             f'got {ids.dtype} of shape {tuple(ids.shape)}')
        ids = ids.tolist()
    ids = list(ids)
    bad = [i for i in ids if isinstance(i, bool) or not isinstance(i, int)
           or i < 0]
    if bad:
        raise ValueError(f'ids must be non-negative ints, got {bad[:4]}')
    return VISTOK_START + ID_SEPARATOR.join(map(str, ids)) + VISTOK_END


def split_image_spans(text: str) -> List[Segment]:
    """``text`` as alternating segments: strings (the text between image
    spans, possibly empty) and lists of ints (the ids of each
    ``<vistok>…</vistok>`` span), starting and ending with a string.

    Raises:
        ValueError: a marker without its partner, a span inside a span, or
            a span holding anything but ``-``-separated decimal ids; the
            message quotes the offending part.
    """
    if not isinstance(text, str):
        raise TypeError(f'text must be a str, got {type(text).__name__}')
    segments: List[Segment] = []
    position = 0
    for match in _SPAN.finditer(text):
        segments.append(text[position:match.start()])
        body = match.group(1)
        if not _IDS.fullmatch(body):
            raise ValueError(
                f'{VISTOK_START}…{VISTOK_END} must hold {ID_SEPARATOR!r}-'
                f'separated decimal ids, got {body[:60]!r} (at character '
                f'{match.start()})')
        segments.append([int(i) for i in body.split(ID_SEPARATOR)]
                        if body else [])
        position = match.end()
    segments.append(text[position:])
    for part in segments[::2]:
        for marker in (VISTOK_START, VISTOK_END):
            if marker in part:
                raise ValueError(f'unbalanced {marker} in {part[:60]!r}: '
                                 f'every {VISTOK_START} needs its '
                                 f'{VISTOK_END}, without nesting')
    return segments


def parse_image_ids(text: str) -> List[List[int]]:
    """The ids of every ``<vistok>…</vistok>`` span of ``text``, in order
    (the inverse of :func:`format_image_ids`)."""
    return split_image_spans(text)[1::2]


def _text_ids(tokenizer, text: str) -> List[int]:
    if not text:
        return []
    return list(tokenizer(text, add_special_tokens=False)['input_ids'])


def check_marker_ids(marker_ids) -> Optional[Tuple[int, int]]:
    """``marker_ids`` as ``(start, end)`` ints (or None); two distinct ids."""
    if marker_ids is None:
        return None
    start, end = (int(i) for i in marker_ids)
    if start == end:
        raise ValueError(f'marker_ids must be two distinct ids (<vistok>, '
                         f'</vistok>), got {marker_ids!r}')
    return start, end


def segment_input_ids(segments: Sequence[Segment], tokenizer,
                      marker_ids=None) -> Tuple[List[int], List[bool]]:
    """``(input_ids, is_image)`` of :func:`split_image_spans` segments:
    text tokenized without special tokens, each span's ids as they are
    (wrapped in ``marker_ids`` when given; markers count as text in
    ``is_image``)."""
    markers = check_marker_ids(marker_ids)
    ids: List[int] = []
    is_image: List[bool] = []
    for k, segment in enumerate(segments):
        if k % 2 == 0:
            text = _text_ids(tokenizer, segment)
            ids += text
            is_image += [False] * len(text)
            continue
        if markers:
            ids.append(markers[0])
            is_image.append(False)
        ids += segment
        is_image += [True] * len(segment)
        if markers:
            ids.append(markers[1])
            is_image.append(False)
    return ids, is_image


def text_to_input_ids(text: str, tokenizer, marker_ids=None,
                      add_bos: bool = False) -> List[int]:
    """Input ids of ``text`` with ``<vistok>`` spans (see the module
    docstring): ``add_bos`` prepends the tokenizer's BOS id, as
    ``tokenizer(pre_seq).input_ids`` does for a Llama tokenizer in the
    official parser."""
    ids, _ = segment_input_ids(split_image_spans(text), tokenizer,
                               marker_ids)
    if add_bos:
        if tokenizer.bos_token_id is None:
            raise ValueError('add_bos=True, but the tokenizer has no '
                             'bos_token')
        ids = [tokenizer.bos_token_id] + ids
    return ids


def input_ids_to_text(input_ids: Union[Sequence[int], torch.Tensor],
                      tokenizer, marker_ids) -> str:
    """Text of ``input_ids`` made by :func:`text_to_input_ids` with
    ``marker_ids``: the ids between a ``<vistok>`` and the next
    ``</vistok>`` id are written back as ``<vistok>id-…</vistok>``, the rest
    is decoded by the tokenizer (so the text round-trips up to the
    tokenizer's own normalisation of whitespace)."""
    start, end = check_marker_ids(marker_ids)
    ids = (input_ids.tolist() if torch.is_tensor(input_ids) else
           list(input_ids))
    pieces, text, k = [], [], 0
    while k < len(ids):
        if ids[k] == end:
            raise ValueError(f'</vistok> id {end} at position {k} has no '
                             f'<vistok> id {start} before it')
        if ids[k] != start:
            text.append(ids[k])
            k += 1
            continue
        try:
            stop = ids.index(end, k + 1)
        except ValueError:
            raise ValueError(f'<vistok> id {start} at position {k} has no '
                             f'</vistok> id {end} after it') from None
        if start in ids[k + 1:stop]:
            raise ValueError(f'<vistok> id {start} inside the image span '
                             f'opened at position {k}')
        pieces.append(tokenizer.decode(text) if text else '')
        pieces.append(format_image_ids(ids[k + 1:stop]))
        text, k = [], stop + 1
    pieces.append(tokenizer.decode(text) if text else '')
    return ''.join(pieces)
