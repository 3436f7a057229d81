"""The token synonym dictionary of SeiT's Token-EDA (Park et al., ICCV 2023,
arXiv 2303.11114, Sec. 3.2 "Token augmentation"): for each code of a
tokenizer's codebook, the codes whose vectors are most similar to it.

The official code ships the dictionary (``codebook-synonyms.json`` in the
naver-ai/seit release tarball) but not how it was built. What its reader
fixes (naver-ai/seit ``token_transform.py`` ``ReplaceSynonym``,
``main_seit.py`` / ``main_mtm_finetune.py`` ``--token-synonym-thres``):
a JSON object mapping each code id **as a string** to a list of code ids
ordered by similarity, of which augmentation uses the first ``thres = 5``.
The released file itself is not available here, so whether it lists more
than 5 entries per code, or the code itself at rank 0, is unknown.

This module's rule (deterministic, so a rebuilt file is byte-identical):

* similarity = cosine between codebook vectors, computed in float64
  (vectors l2-normalised, then each dot product a numpy sum over the
  vector, whose order does not depend on threads or chunking as a BLAS
  product's may). A zero vector has similarity 0 with every code, as in
  ``torch.nn.functional.cosine_similarity``;
* the code itself is excluded;
* the ``top_k`` most similar codes, descending, **ties to the lower index**
  (a stable sort of the negated similarities);
* JSON ``{"0": [..], "1": [..], ...}``: keys sorted (as strings, the
  ``json.dumps(sort_keys=True)`` order), separators ``(',', ':')``, ASCII,
  one trailing newline, written atomically
  (:func:`vistok.utils.checkpoint.write_file_atomic`).

The default ``top_k`` is SeiT's ``thres`` (:data:`SEIT_SYNONYM_TOP_K`).
"""
import json
import os
import os.path as osp
from typing import Mapping, Optional, Union

import numpy as np
import torch

from vistok.utils.checkpoint import load_checkpoint_file, write_file_atomic

#: synonyms per code used by SeiT's ReplaceSynonym (``--token-synonym-thres``
#: default in naver-ai/seit ``main_seit.py``)
SEIT_SYNONYM_TOP_K = 5
#: bytes of float64 products held at once while computing similarities
_CHUNK_BYTES = 64 * 2**20
_SEPARATORS = (',', ':')

SynonymSpec = Union[str, os.PathLike, Mapping]


def _check_codebook(codebook) -> np.ndarray:
    if torch.is_tensor(codebook):
        codebook = codebook.detach().cpu().double().numpy()
    codebook = np.asarray(codebook)
    if codebook.ndim != 2 or codebook.shape[0] < 2:
        raise ValueError(f'codebook must be a (num_codes, dim) array with at '
                         f'least 2 codes, got shape {codebook.shape}')
    if not (np.issubdtype(codebook.dtype, np.floating)
            or np.issubdtype(codebook.dtype, np.integer)):
        raise ValueError(f'codebook must hold numbers, got {codebook.dtype}')
    codebook = codebook.astype(np.float64)
    if not np.isfinite(codebook).all():
        bad = np.flatnonzero(~np.isfinite(codebook).all(axis=1))
        raise ValueError(f'codebook rows {bad[:5].tolist()} are not finite')
    return codebook


def _unit_rows(codebook: np.ndarray) -> np.ndarray:
    norms = np.sqrt((codebook * codebook).sum(axis=1))
    return codebook / np.where(norms > 0, norms, 1.0)[:, None]


def _cosine(unit: np.ndarray, rows: slice) -> np.ndarray:
    return (unit[rows, None, :] * unit[None, :, :]).sum(axis=-1)


def cosine_similarity_matrix(codebook) -> np.ndarray:
    """The float64 ``(num_codes, num_codes)`` cosine similarities of a
    ``(num_codes, dim)`` codebook (zero vectors give 0), as
    :func:`build_synonyms` computes them."""
    unit = _unit_rows(_check_codebook(codebook))
    return _cosine(unit, slice(None))


def build_synonyms(codebook, top_k: int = SEIT_SYNONYM_TOP_K) -> np.ndarray:
    """Each code's ``top_k`` synonyms (rule in the module docstring).

    Args:
        codebook: ``(num_codes, dim)`` code vectors (array or tensor).
        top_k: synonyms per code, ``1 <= top_k <= num_codes - 1``.

    Returns:
        ``(num_codes, top_k)`` ``int64``; row ``c`` lists code ``c``'s
        synonyms, most similar first.
    """
    codebook = _check_codebook(codebook)
    num_codes, dim = codebook.shape
    if not (isinstance(top_k, (int, np.integer))
            and 1 <= top_k <= num_codes - 1):
        raise ValueError(f'top_k must be an int in [1, {num_codes - 1}] '
                         f'(num_codes - 1 for a codebook of shape '
                         f'{codebook.shape}), got {top_k!r}')
    unit = _unit_rows(codebook)
    step = max(1, _CHUNK_BYTES // (8 * num_codes * dim))
    table = np.empty((num_codes, top_k), dtype=np.int64)
    for start in range(0, num_codes, step):
        stop = min(start + step, num_codes)
        sim = _cosine(unit, slice(start, stop))
        sim[np.arange(stop - start), np.arange(start, stop)] = -np.inf
        # stable: equal similarities keep ascending code order
        order = np.argsort(-sim, axis=1, kind='stable')
        table[start:stop] = order[:, :top_k]
    return table


def synonyms_to_json(table) -> str:
    """The JSON text of a synonym table (``table[c]`` = code ``c``'s list):
    string keys, sorted keys, fixed separators, trailing newline."""
    table = np.asarray(table)
    if table.ndim != 2 or not np.issubdtype(table.dtype, np.integer):
        raise ValueError(f'table must be a 2-D integer array, got '
                         f'{table.dtype} of shape {table.shape}')
    mapping = {str(code): [int(s) for s in row]
               for code, row in enumerate(table.tolist())}
    return json.dumps(mapping, sort_keys=True, separators=_SEPARATORS,
                      ensure_ascii=True) + '\n'


def write_synonyms(table, filename) -> None:
    """Write :func:`synonyms_to_json` of ``table`` to ``filename``
    atomically (a reader sees the old file or the complete new one)."""
    data = synonyms_to_json(table).encode('ascii')
    write_file_atomic(filename, lambda f: f.write(data))


def load_synonyms(synonyms: SynonymSpec,
                  top_k: int = SEIT_SYNONYM_TOP_K) -> np.ndarray:
    """A synonym dictionary (a JSON file such as SeiT's released
    ``codebook-synonyms.json``, or the loaded mapping) as an ``int64``
    ``(num_codes, top_k)`` table of each code's first ``top_k`` synonyms.

    The keys must be exactly ``"0" .. str(num_codes - 1)`` (ints are
    accepted in a mapping) and every list must hold at least ``top_k``
    codes in ``[0, num_codes)``; anything else is a ``ValueError`` naming
    the code.
    """
    source = 'synonyms'
    if isinstance(synonyms, (str, os.PathLike)):
        path = os.fspath(synonyms)
        if not osp.isfile(path):
            raise FileNotFoundError(
                f'synonyms={path!r} does not exist: build it with '
                f'projects/SeiTpp/tools/build_synonyms.py or use SeiT\'s '
                f'released codebook-synonyms.json')
        with open(path) as f:
            synonyms = json.load(f)
        source = f'synonyms file {path}'
    if not isinstance(synonyms, Mapping):
        raise TypeError(f'{source} must be a JSON object / mapping from code '
                        f'id to a list of codes, got '
                        f'{type(synonyms).__name__}')
    if not (isinstance(top_k, (int, np.integer)) and top_k >= 1):
        raise ValueError(f'top_k must be a positive int, got {top_k!r}')
    num_codes = len(synonyms)
    rows = {}
    for key, codes in synonyms.items():
        try:
            code = int(key)
        except (TypeError, ValueError):
            raise ValueError(f'{source}: key {key!r} is not a code id') \
                from None
        rows[code] = codes
    if sorted(rows) != list(range(num_codes)):
        missing = sorted(set(range(num_codes)) - set(rows))
        raise ValueError(f'{source}: keys must be the code ids 0 .. '
                         f'{num_codes - 1} (one per code), missing '
                         f'{missing[:5]}')
    table = np.empty((num_codes, top_k), dtype=np.int64)
    for code in range(num_codes):
        codes = rows[code]
        if not isinstance(codes, (list, tuple)) or len(codes) < top_k:
            raise ValueError(f'{source}: code {code} lists {codes!r}, '
                             f'top_k={top_k} needs a list of at least '
                             f'{top_k} codes')
        table[code] = codes[:top_k]
    bad = (table < 0) | (table >= num_codes)
    if bad.any():
        code = int(np.flatnonzero(bad.any(axis=1))[0])
        raise ValueError(f'{source}: code {code} lists {table[code].tolist()}'
                         f', outside the {num_codes} codes [0, '
                         f'{num_codes - 1}]')
    return table


def load_codebook(filename: str, key: Optional[str] = None) -> np.ndarray:
    """Code vectors ``(num_codes, dim)`` from a file: ``.npy``,
    ``.safetensors``, or a torch file (loaded safely) holding a tensor —
    SeiT's ``codebook.ckpt`` is a ``391 x 32`` tensor — or a state dict,
    from which ``key`` picks the tensor (e.g.
    ``quantizer.embedding.weight``; without ``key`` a dict must hold
    exactly one tensor)."""
    filename = os.fspath(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'codebook file {filename!r} does not exist')
    if filename.endswith('.npy'):
        value = np.load(filename, allow_pickle=False)
    elif filename.endswith('.safetensors'):
        from safetensors.numpy import load_file
        value = load_file(filename)
    else:
        value = load_checkpoint_file(filename, map_location='cpu')
    if isinstance(value, Mapping):
        tensors = {k: v for k, v in value.items()
                   if torch.is_tensor(v) or isinstance(v, np.ndarray)}
        if key is None and len(tensors) != 1:
            raise ValueError(f'{filename} holds {len(tensors)} tensors '
                             f'({sorted(tensors)[:10]}...): pass key= (--key)'
                             f' naming the codebook')
        key = key if key is not None else next(iter(tensors))
        if key not in tensors:
            raise KeyError(f'key {key!r} is not a tensor in {filename}; it '
                           f'holds {sorted(tensors)[:10]}')
        value = tensors[key]
    if torch.is_tensor(value):
        value = value.detach().cpu().double().numpy()
    return _check_codebook(value)
