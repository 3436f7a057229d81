"""An LLM's own tokenizer with UniCode's ``<vistok>`` / ``</vistok>``
markers added as special tokens.

The tokenizer is read with ``transformers.AutoTokenizer`` from a local
Hugging Face folder (nothing is downloaded) and the markers are added with
``add_tokens(..., special_tokens=True)`` — how LLaVA adds its
``<im_start>`` / ``<im_end>`` tokens (``initialize_vision_tokenizer`` in
``src/model/llava_arch.py`` of the official repository) — never by editing
the vocabulary files: each marker gets a new id past the vocabulary and is
never split by the tokenizer. A model reading these ids needs its embedding
table resized to ``len(tokenizer)`` (:class:`.bridge.UniCodeBridge` does).

transformers is the optional extra ``vistok[llm]``; it is imported inside
the functions, and a missing one raises an ``ImportError`` naming it.
"""
import os.path as osp
from typing import Tuple

from .token_text import VISTOK_END, VISTOK_START

INSTALL_HINT = 'pip install vistok[llm]'


def require_transformers():
    """The ``transformers`` module, or an ``ImportError`` naming the
    ``vistok[llm]`` extra."""
    try:
        import transformers
    except ImportError as err:
        raise ImportError(
            f'UniCode\'s LLM side needs the transformers library ({err}); '
            f'install it with `{INSTALL_HINT}`') from None
    return transformers


def add_vistok_tokens(tokenizer) -> Tuple[int, int]:
    """Add ``<vistok>`` and ``</vistok>`` to ``tokenizer`` as special tokens
    (no-op for markers it already has); returns their ids ``(start,
    end)``."""
    tokenizer.add_tokens([VISTOK_START, VISTOK_END], special_tokens=True)
    ids = tokenizer.convert_tokens_to_ids([VISTOK_START, VISTOK_END])
    unk = getattr(tokenizer, 'unk_token_id', None)
    if any(i is None or i == unk for i in ids):
        raise RuntimeError(f'{type(tokenizer).__name__} did not take '
                           f'{VISTOK_START} / {VISTOK_END} as tokens (ids '
                           f'{ids})')
    return int(ids[0]), int(ids[1])


def load_llm_tokenizer(folder: str, key: str = 'llm_path'):
    """``(tokenizer, (start_id, end_id))``: the tokenizer of the local
    Hugging Face folder ``folder`` (``AutoTokenizer.from_pretrained`` with
    ``local_files_only``) with the ``<vistok>`` markers added. ``key``
    names the argument / config key in errors."""
    transformers = require_transformers()
    if not osp.isdir(folder):
        raise FileNotFoundError(
            f'{key}={folder!r} is not a directory: give a local Hugging '
            f'Face model folder (tokenizer files and config.json, as '
            f'save_pretrained writes them)')
    tokenizer = transformers.AutoTokenizer.from_pretrained(
        folder, local_files_only=True)
    return tokenizer, add_vistok_tokens(tokenizer)
