"""An LLM's input-embedding table as a visual codebook (UniCode).

UniCode (Zheng et al., "UniCode: Learning a Unified Codebook for Multimodal
Large Language Models", ECCV 2024, arXiv 2403.09072) makes the visual
codebook a set of rows of the LLM's token-embedding matrix (LLaMA-2 /
Vicuna-7B: 32,000 x 4,096), so image codes are LLM vocabulary ids. This
module is the *codebook source*:

* :func:`read_llm_embedding` reads that one ``(V, D)`` tensor from a local
  file or a local Hugging Face model folder, never the whole model;
* :func:`select_llm_rows` picks the vocabulary subset UniCode uses when the
  codebook is smaller than the vocabulary;
* :func:`table_sha256` identifies a table, so a checkpoint can record which
  table it was trained against without storing it.

Nothing here downloads: the official repository loads the table from an
untracked ``.pt`` file (``llmcodebook`` in
``src/vae/models/stage1/modules/quantizer.py``); here the path is a config key
and a missing file raises one error saying how to obtain it.
"""
import difflib
import hashlib
import json
import os.path as osp
from numbers import Integral
from typing import Dict, List, Optional

import numpy as np
import torch

from vistok.utils.checkpoint import load_checkpoint_file
from vistok.utils.weights import MissingWeightsError

#: Hugging Face model-folder layouts, in the order they are tried: a sharded
#: index names the one shard holding the key; a single file holds every key.
HF_SAFETENSORS_INDEX = 'model.safetensors.index.json'
HF_SAFETENSORS_FILE = 'model.safetensors'
HF_TORCH_INDEX = 'pytorch_model.bin.index.json'
HF_TORCH_FILE = 'pytorch_model.bin'
TORCH_SUFFIXES = ('.pt', '.pth', '.bin')
#: Wrappers a torch state dict may sit in (``{'state_dict': ...}``).
STATE_DICT_WRAPPERS = ('state_dict', 'model')
#: Rows whose norms are computed at once in float64 (bounds the memory of
#: the float64 copy; the result does not depend on it).
NORM_CHUNK_ROWS = 4096
#: At most this many similar keys are named in a missing-key error.
MAX_SIMILAR_KEYS = 10


def how_to_get_llm_embedding(config_key: str) -> str:
    """The advice of a missing-table error: how to obtain the table and
    which config key to point at it."""
    return ('Download the LLM on a machine with internet, e.g. `hf download '
            'lmsys/vicuna-7b-v1.5 --local-dir DIR` (older huggingface_hub: '
            '`huggingface-cli download ...`; UniCode used LLaMA-2 / '
            "Vicuna-7B's 32,000 x 4,096 input-embedding table), copy DIR "
            f'here and set `{config_key}` to DIR (a Hugging Face folder), to '
            'one of its .safetensors files, or to a .pt / .pth / .bin / '
            '.safetensors file holding the table or a state dict with it.')


# --- reading -----------------------------------------------------------------
def read_llm_embedding(
        path: str,
        embedding_key: str = 'model.embed_tokens.weight',
        config_key: str = 'external_codebook_path') -> torch.Tensor:
    """Read one LLM's ``(V, D)`` input-embedding table as fp32 on the CPU.

    Only the tensor ``embedding_key`` is read (a 7B model is ~13 GB; its
    table 0.5 GB):

    * a ``.safetensors`` file: ``safetensors.safe_open`` reads that tensor;
    * a local Hugging Face model folder: with ``model.safetensors.index.json``
      the key is looked up in its ``weight_map`` and only that shard is
      opened; else ``model.safetensors``; else the torch layouts
      ``pytorch_model.bin.index.json`` (only the named shard is loaded) /
      ``pytorch_model.bin``;
    * a ``.pt`` / ``.pth`` / ``.bin`` torch file, loaded safely
      (:func:`vistok.utils.checkpoint.load_checkpoint_file`, no pickled code
      runs): a bare tensor (the official ``llmcodebook`` file; the key is
      then not used) or a state dict holding ``embedding_key`` (also inside
      a ``state_dict`` / ``model`` wrapper). The torch format has no
      per-tensor access, so a torch file or shard is read whole and only the
      table is kept: prefer safetensors for large models.

    Args:
        path: the file or folder (``~`` is expanded).
        embedding_key: the tensor's name (Llama-family models in transformers:
            ``model.embed_tokens.weight``).
        config_key: the config key that set ``path``, named in errors.

    Returns:
        The table, ``torch.float32``, contiguous, on the CPU (an fp16 / bf16
        table is cast exactly).

    Raises:
        MissingWeightsError: (a ``FileNotFoundError``) ``path``, or the shard
            an index names, does not exist; names ``config_key`` and how to
            obtain the table.
        KeyError: ``embedding_key`` is not in the file / index; names the
            key, the file and the keys that look similar.
        ValueError: the tensor is not 2-D, the index is unreadable, or the
            file type is not supported.
    """
    if path is None:
        raise MissingWeightsError(None, config_key,
                                  how_to_get_llm_embedding(config_key))
    path = osp.expanduser(str(path))
    if osp.isdir(path):
        table, source = _read_from_folder(path, embedding_key, config_key)
    elif osp.isfile(path):
        table, source = _read_from_file(path, embedding_key), path
    else:
        raise MissingWeightsError(path, config_key,
                                  how_to_get_llm_embedding(config_key))
    if table.dim() != 2:
        raise ValueError(
            f'LLM embedding {embedding_key!r} in {source!r} (config key '
            f'`{config_key}`) must be a 2-D (vocabulary, hidden) table, got '
            f'shape {tuple(table.shape)}')
    return table.to('cpu', torch.float32).contiguous()


def _read_from_folder(folder: str, key: str, config_key: str):
    """``(table, file it came from)`` of a Hugging Face model folder."""
    for index_name, read in ((HF_SAFETENSORS_INDEX, _read_safetensors),
                             (HF_TORCH_INDEX, _read_torch)):
        index = osp.join(folder, index_name)
        if osp.isfile(index):
            weight_map = _weight_map(index)
            if key not in weight_map:
                raise _missing_key(key, index, weight_map)
            shard = osp.join(folder, weight_map[key])
            if not osp.isfile(shard):
                raise MissingWeightsError(
                    shard, config_key,
                    f'{index} names this shard for {key!r}; the download is '
                    'incomplete. ' + how_to_get_llm_embedding(config_key))
            return read(shard, key), shard
    for name in (HF_SAFETENSORS_FILE, HF_TORCH_FILE):
        single = osp.join(folder, name)
        if osp.isfile(single):
            return _read_from_file(single, key), single
    raise MissingWeightsError(
        osp.join(folder, HF_SAFETENSORS_INDEX), config_key,
        f'The folder exists but holds none of {HF_SAFETENSORS_INDEX}, '
        f'{HF_SAFETENSORS_FILE}, {HF_TORCH_INDEX}, {HF_TORCH_FILE}. '
        + how_to_get_llm_embedding(config_key))


def _read_from_file(path: str, key: str) -> torch.Tensor:
    if path.endswith('.safetensors'):
        return _read_safetensors(path, key)
    if path.endswith(TORCH_SUFFIXES):
        return _read_torch(path, key)
    raise ValueError(
        f'LLM embedding file {path!r} is neither .safetensors nor a torch '
        f'file ({", ".join(TORCH_SUFFIXES)}); pass one of those or a '
        'Hugging Face model folder')


def _read_safetensors(path: str, key: str) -> torch.Tensor:
    from safetensors import safe_open
    try:
        with safe_open(path, framework='pt', device='cpu') as f:
            keys = list(f.keys())
            if key in keys:
                return f.get_tensor(key)
    except Exception as err:  # safetensors' errors do not name the file
        raise ValueError(f'cannot read the safetensors file {path!r} '
                         f'({type(err).__name__}: {err})') from None
    raise _missing_key(key, path, keys)


def _read_torch(path: str, key: str) -> torch.Tensor:
    loaded = load_checkpoint_file(path, map_location='cpu')
    if isinstance(loaded, torch.Tensor):
        return loaded
    if not isinstance(loaded, dict):
        raise ValueError(f'LLM embedding file {path!r} holds a '
                         f'{type(loaded).__name__}; expected a tensor or a '
                         'state dict')
    state = loaded
    while key not in state:
        wrapped = [w for w in STATE_DICT_WRAPPERS
                   if isinstance(state.get(w), dict)]
        if not wrapped:
            raise _missing_key(key, path, _tensor_keys(loaded))
        state = state[wrapped[0]]
    value = state[key]
    if not isinstance(value, torch.Tensor):
        raise ValueError(f'{key!r} in {path!r} is a {type(value).__name__}, '
                         'not a tensor')
    return value


def _weight_map(index: str) -> Dict[str, str]:
    try:
        with open(index) as f:
            weight_map = json.load(f)['weight_map']
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f'cannot read the weight_map of the Hugging Face '
                         f'index {index!r}: {type(err).__name__}: {err}'
                         ) from None
    if not isinstance(weight_map, dict):
        raise ValueError(f'the weight_map of {index!r} is not a JSON object')
    return weight_map


def _tensor_keys(state, prefix: str = '') -> List[str]:
    """Every tensor's key in a (possibly wrapped) state dict."""
    keys = []
    for name, value in state.items():
        if isinstance(value, dict):
            keys += _tensor_keys(value, f'{prefix}{name}.')
        elif isinstance(value, torch.Tensor):
            keys.append(f'{prefix}{name}')
    return keys


def similar_keys(key: str, keys) -> List[str]:
    """Keys that look like ``key``: those ending in its last two dotted
    parts (``embed_tokens.weight``), then close spellings (difflib)."""
    keys = [str(k) for k in keys]
    tail = '.'.join(key.split('.')[-2:])
    same_tail = [k for k in keys if k.endswith(tail)]
    close = difflib.get_close_matches(key, keys, n=MAX_SIMILAR_KEYS)
    return list(dict.fromkeys(same_tail + close))[:MAX_SIMILAR_KEYS]


def _missing_key(key: str, source: str, keys) -> KeyError:
    keys = list(keys)
    similar = similar_keys(key, keys)
    hint = (f'similar keys: {similar}' if similar else
            f'no similar key; its first keys: {keys[:MAX_SIMILAR_KEYS]}')
    return KeyError(f'LLM embedding key {key!r} is not in {source!r} '
                    f'({len(keys)} keys; {hint}); set the embedding key to '
                    'the input-embedding table of this model')


# --- the vocabulary subset ---------------------------------------------------
def row_norms(table: torch.Tensor) -> torch.Tensor:
    """L2 norm of every row of a ``(V, D)`` table, in float64 (computed
    in chunks of :data:`NORM_CHUNK_ROWS` rows)."""
    return torch.cat([chunk.to(torch.float64).norm(dim=1)
                      for chunk in table.detach().cpu().split(
                          NORM_CHUNK_ROWS)])


def select_llm_rows(table: torch.Tensor,
                    num_codes: Optional[int],
                    min_norm: float = 1.0,
                    config_key: str = 'external_num_codes'
                    ) -> torch.LongTensor:
    """Token ids of the rows UniCode uses as the visual codebook.

    The official rule (``EMAVectorQuantizer.__init__`` in
    ``src/vae/models/stage1/modules/quantizer.py``; reference notes C.2):
    when the codebook is smaller than the vocabulary (``n_embed < 32000``),
    keep the rows whose L2 norm is ``>= min_norm`` (1), take the
    ``num_codes`` of them with the *smallest* norms and re-sort those by
    token id; otherwise the codebook is the *full* table — every row in
    token-id order, with no norm filter (the official
    ``torch.where(norm >= -1)`` keeps all). Here ``num_codes=None`` or
    ``num_codes == V`` is that full table.

    Norms are computed in float64 and ties are broken by the lower token id
    (a stable sort), so the subset is deterministic. The official code
    computes norms in the table's dtype and sorts with an unstable
    ``argsort``, so at the boundary (equal norms) its subset can differ.

    Args:
        table: the ``(V, D)`` LLM embedding table.
        num_codes: the codebook size ``n`` (``1 <= n <= V``) or ``None``.
        min_norm: the smallest norm a subset row may have.
        config_key: the config key that sets ``num_codes``, named in errors.

    Returns:
        ``(n,)`` int64 token ids, strictly increasing: code ``k`` is the LLM
        vocabulary id ``ids[k]`` and its vector ``table[ids[k]]``.

    Raises:
        ValueError: ``table`` is not 2-D or has non-finite rows;
            ``num_codes`` is not in ``[1, V]``; fewer than ``num_codes`` rows
            have a norm ``>= min_norm`` (names both numbers and
            ``config_key``).
    """
    if not isinstance(table, torch.Tensor) or table.dim() != 2:
        shape = (tuple(table.shape) if isinstance(table, torch.Tensor) else
                 type(table).__name__)
        raise ValueError('select_llm_rows needs a 2-D (vocabulary, hidden) '
                         f'LLM embedding table, got {shape}')
    vocab_size = table.shape[0]
    if num_codes is not None and (isinstance(num_codes, bool)
                                  or not isinstance(num_codes, Integral)
                                  or not 1 <= num_codes <= vocab_size):
        raise ValueError(
            f'`{config_key}` (the number of LLM rows used as codes) must be '
            f'None (the full table) or an int in [1, {vocab_size}] (the '
            f'vocabulary size of the table {tuple(table.shape)}), got '
            f'{num_codes!r}')
    norms = row_norms(table)
    finite = torch.isfinite(norms)
    if not finite.all():
        bad = torch.nonzero(~finite).flatten()
        raise ValueError(f'the LLM embedding table {tuple(table.shape)} has '
                         f'{bad.numel()} rows with non-finite values (token '
                         f'ids {bad[:MAX_SIMILAR_KEYS].tolist()}...)')
    if num_codes is None or num_codes == vocab_size:
        # The official `n_embed < 32000` test (32,000 = the vocabulary).
        return torch.arange(vocab_size, dtype=torch.long)
    eligible = torch.nonzero(norms >= min_norm).flatten()  # ascending ids
    if eligible.numel() < num_codes:
        raise ValueError(
            f'`{config_key}` = {num_codes} LLM rows requested, but only '
            f'{eligible.numel()} of the {vocab_size} rows have an L2 norm >= '
            f'{min_norm}: lower `{config_key}` (or use the full table: '
            f'None or {vocab_size})')
    # Stable: among equal norms the lower token id (earlier in `eligible`)
    # comes first.
    order = torch.sort(norms[eligible],
                       stable=True).indices[:int(num_codes)]
    return torch.sort(eligible[order]).values


# --- identity ----------------------------------------------------------------
def table_sha256(table: torch.Tensor) -> str:
    """Hex sha256 of a table: its shape, then its values as fp32
    little-endian C-contiguous bytes. Equal tables (in any dtype that casts
    to the same fp32 values, on any device) give equal hashes; a transposed
    or reshaped table, or one changed element, gives another."""
    if not isinstance(table, torch.Tensor):
        raise TypeError(f'table_sha256 needs a tensor, got '
                        f'{type(table).__name__}')
    values = table.detach().to('cpu', torch.float32).contiguous().numpy()
    values = np.ascontiguousarray(values, dtype='<f4')
    digest = hashlib.sha256()
    digest.update(('float32-le shape=' + ','.join(
        str(s) for s in table.shape) + ';').encode())
    digest.update(memoryview(values).cast('B'))
    return digest.hexdigest()
