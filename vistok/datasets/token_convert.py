"""Lossless conversion between the token storage formats:

* ``'wds'``: webdataset token shards + manifest (:mod:`.token_shards`),
* ``'seit'``: the SeiT files (:mod:`.seit_format`),
* ``'compact'``: the entropy-coded file (:mod:`.compact_format`).

:func:`open_token_source` reads any of them as a :class:`TokenSource`;
:func:`write_token_source` writes one; :func:`convert_tokens` does both and
then re-reads the result and compares it with the source (codes through
:func:`~.token_arrays.tokens_sha256`, labels and ``sample_idx`` exactly),
so a conversion that would lose anything fails instead.

What each format keeps: codes, labels and the grid (``structure`` /
``levels``) in all three except that SeiT stores flat codes only (the grid
is given back with ``grid`` when reading; multi-level exports become one
flat level). ``sample_idx`` is kept by wds and compact; SeiT has no place
for it, so converting an export whose ``sample_idx`` is not ``0 .. N - 1``
to SeiT needs ``drop_sample_idx=True``. The codebook size is stored by wds
and compact; reading SeiT takes it from ``codebook_size`` or the codebook
file (``K``). The export's provenance (model / checkpoint / dataset hashes,
``data``, ``seed``) travels in a compact file's ``metadata`` and a wds
manifest; SeiT has none. Destinations are never overwritten unless
``overwrite=True``.
"""
import os
import os.path as osp
import shutil
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .compact_format import (
    MAGIC,
    CompactTokenFile,
    level_slices,
    write_compact,
)
from .seit_format import (
    DATA_MARKER,
    SeiTFormatError,
    SeiTTokenFile,
    index_file_for,
    label_file_for,
    read_seit_codebook,
    write_seit,
)
from .token_arrays import tokens_sha256
from .token_shards import (
    IDENTITY_KEYS,
    MANIFEST_NAME,
    OPTIONAL_IDENTITY_KEYS,
    TokenShardDataset,
    TokenShardWriter,
    index_dtype,
)

FORMATS = ('wds', 'seit', 'compact')
CODEBOOK_NAME = 'codebook.ckpt'
#: the provenance fields a wds manifest and a compact file's metadata share
PROVENANCE_KEYS = ('config_sha256', 'checkpoint_sha256', 'dataset_sha256',
                   'data', 'seed')


class TokenSource:
    """Tokens read from one of the formats.

    Attributes:
        path, format: where they come from.
        codebook_size: codes lie in ``[0, codebook_size)``.
        structure, levels: as in a token-shard manifest.
        tokens_per_image: codes per image (levels concatenated).
        labels, sample_idx: ``int64`` arrays of N, or None.
        metadata: provenance (:data:`PROVENANCE_KEYS` when known).

    ``iter_chunks(chunk)`` yields ``(first, (n, tokens_per_image) int64)``
    in image order (chunks of about ``chunk`` images).
    """

    def __init__(self, path: str, format: str, num_images: int,
                 codebook_size: int, structure: str, levels: List[dict],
                 chunks: Callable[[int], Iterator[Tuple[int, np.ndarray]]],
                 labels: Optional[np.ndarray] = None,
                 sample_idx: Optional[np.ndarray] = None,
                 metadata: Optional[dict] = None):
        self.path, self.format = path, format
        self.num_images = num_images
        self.codebook_size = int(codebook_size)
        self.structure, self.levels = structure, levels
        self.tokens_per_image = level_slices(levels)[-1][1] if levels else 0
        self._chunks = chunks
        self.labels, self.sample_idx = labels, sample_idx
        self.metadata = dict(metadata or {})

    def __len__(self) -> int:
        return self.num_images

    def iter_chunks(self, chunk: int = 4096):
        return self._chunks(chunk)

    def tokens_sha256(self) -> str:
        return tokens_sha256(codes for _, codes in self.iter_chunks())


def detect_format(path: str) -> str:
    """``'wds'`` for a directory with a manifest, ``'compact'`` for a file
    starting with the compact magic, ``'seit'`` for a ``*data.bin*``
    file."""
    path = str(path)
    if osp.isdir(path):
        if osp.isfile(osp.join(path, MANIFEST_NAME)):
            return 'wds'
        raise ValueError(f'{path} is a directory without {MANIFEST_NAME}: '
                         f'not a token-shard export')
    if not osp.isfile(path):
        raise FileNotFoundError(f'token data {path} does not exist')
    with open(path, 'rb') as f:
        if f.read(len(MAGIC)) == MAGIC:
            return 'compact'
    if DATA_MARKER in osp.basename(path):
        return 'seit'
    raise ValueError(f'cannot tell the token format of {path}: give the '
                     f'format ({FORMATS})')


def _open_wds(path: str) -> TokenSource:
    dataset = TokenShardDataset(path, verify=True)
    manifest = dataset.manifest
    special = [k for k in OPTIONAL_IDENTITY_KEYS
               if manifest.get(k) is not None]
    if special:
        raise ValueError(
            f'{path} is a {" / ".join(special)} export (flat sequences or '
            f'LLM ids, export_tokens --flat-sequence / --llm-ids); the other '
            f'formats cannot record that yet, so it is not converted: '
            f'convert the code-id export instead')
    labels, sample_idx = [], []
    for shard_id in range(len(dataset.shards)):
        for k, sample in enumerate(dataset.read_shard(shard_id)):
            labels.append(sample.get('gt_label'))
            sample_idx.append(sample.get('sample_idx',
                                         dataset.shards[shard_id]['start']
                                         + k))
    if any(label is None for label in labels):
        if any(label is not None for label in labels):
            raise ValueError(f'{path}: some samples have a label and others '
                             f'do not')
        labels = None

    def chunks(_chunk):
        for shard_id, shard in enumerate(dataset.shards):
            samples = dataset.read_shard(shard_id)
            yield shard['start'], np.stack([
                np.concatenate([level.reshape(-1).astype(np.int64)
                                for level in sample['levels']])
                for sample in samples])

    return TokenSource(
        path, 'wds', len(dataset), manifest['codebook_size'],
        manifest['structure'], manifest['levels'], chunks,
        labels=None if labels is None else np.asarray(labels, np.int64),
        sample_idx=np.asarray(sample_idx, np.int64),
        metadata={k: manifest[k] for k in PROVENANCE_KEYS})


def _open_seit(path: str, grid: Optional[Sequence[int]],
               codebook_size: Optional[int], label_file: Optional[str],
               codebook_file: Optional[str]) -> TokenSource:
    if label_file is None:
        try:
            derived = label_file_for(path)
        except SeiTFormatError:
            derived = None
        label_file = derived if derived and osp.isfile(derived) else None
    seit = SeiTTokenFile(path, label_file=label_file,
                         codebook_file=codebook_file, grid=grid)
    codes, offsets = seit.decode_all()
    counts = np.diff(offsets)
    if counts.size and (counts != counts[0]).any():
        bad = int(np.flatnonzero(counts != counts[0])[0])
        raise SeiTFormatError(
            f'{path}: image {bad} has {int(counts[bad])} codes, image 0 has '
            f'{int(counts[0])}: only files with one token count per image '
            f'convert')
    per_image = int(counts[0]) if counts.size else int(np.prod(grid or [0]))
    if codebook_size is None:
        if seit.codebook is None:
            raise ValueError(
                f'{path}: the SeiT format does not store the codebook size; '
                f'pass codebook_size (--codebook-size) or the codebook file')
        codebook_size = int(seit.codebook.shape[0])
    shape = list(grid) if grid else [per_image]
    codes = codes.reshape(len(seit), per_image)

    def chunks(chunk):
        for first in range(0, len(seit), chunk):
            yield first, codes[first:first + chunk]

    return TokenSource(path, 'seit', len(seit), codebook_size, 'tensor',
                       [dict(name='indices', shape=shape)], chunks,
                       labels=seit.labels)


def _open_compact(path: str) -> TokenSource:
    compact = CompactTokenFile(path)
    return TokenSource(
        path, 'compact', len(compact), compact.codebook_size,
        compact.structure, compact.levels, compact.iter_chunks,
        labels=None if compact.labels is None else np.array(compact.labels),
        sample_idx=(None if compact.sample_idx is None else np.array(
            compact.sample_idx)),
        metadata=compact.header['metadata'])


def open_token_source(path: str, format: Optional[str] = None,
                      grid: Optional[Sequence[int]] = None,
                      codebook_size: Optional[int] = None,
                      label_file: Optional[str] = None,
                      codebook_file: Optional[str] = None) -> TokenSource:
    """Open tokens in any format (default: :func:`detect_format`).

    ``grid`` / ``codebook_size`` / ``label_file`` / ``codebook_file`` are
    for SeiT (which stores none of them; the label file defaults to
    ``<name>-label.txt`` next to the data file when it exists)."""
    path = str(path)
    format = format or detect_format(path)
    if format == 'wds':
        return _open_wds(path)
    if format == 'seit':
        return _open_seit(path, grid, codebook_size, label_file,
                          codebook_file)
    if format == 'compact':
        return _open_compact(path)
    raise ValueError(f'format must be one of {FORMATS}, got {format!r}')


def _identity_sample_idx(source: TokenSource) -> bool:
    return source.sample_idx is None or np.array_equal(
        source.sample_idx, np.arange(len(source)))


def _split(source: TokenSource, codes: np.ndarray) -> list:
    return [codes[start:stop].reshape(shape)
            for start, stop, shape in level_slices(source.levels)]


def _write_wds(source: TokenSource, dst: str, shard_size: int) -> None:
    dtype = index_dtype(source.codebook_size)
    identity = {k: source.metadata.get(k) for k in IDENTITY_KEYS}
    identity.update(num_samples=len(source), shard_size=shard_size,
                    codebook_size=source.codebook_size, dtype=dtype.name)
    writer = TokenShardWriter(dst, identity)
    shards = list(writer.pending_shards())
    buffer = []
    for first, codes in source.iter_chunks(shard_size):
        for k, image in enumerate(codes):
            position = first + k
            sample = dict(position=position, levels=_split(source, image))
            if source.sample_idx is not None:
                sample['sample_idx'] = int(source.sample_idx[position])
            if source.labels is not None:
                sample['gt_label'] = int(source.labels[position])
            buffer.append(sample)
        while shards and len(buffer) >= shards[0][2] - shards[0][1]:
            shard_id, start, stop = shards.pop(0)
            writer.write_shard(shard_id, source.structure,
                               buffer[:stop - start])
            buffer = buffer[stop - start:]


def write_token_source(source: TokenSource, dst: str, format: str, *,
                       model: str = 'order0', shard_size: int = 1000,
                       label_file: Optional[str] = None,
                       codebook=None, codebook_file: Optional[str] = None,
                       drop_sample_idx: bool = False) -> None:
    """Write ``source`` to ``dst`` in ``format`` (``dst`` must not exist).

    Args:
        model: compact only, ``'order0'`` or ``'context'``.
        shard_size: wds only.
        label_file: SeiT only (default ``<name>-label.txt``).
        codebook, codebook_file: SeiT only, the codebook to store.
        drop_sample_idx: allow SeiT to drop a ``sample_idx`` that is not
            ``0 .. N - 1``.
    """
    dst = str(dst)
    if format == 'compact':
        write_compact(dst, source, source.codebook_size,
                      levels=source.levels, structure=source.structure,
                      model=model, labels=source.labels,
                      sample_idx=(None if _identity_sample_idx(source) else
                                  source.sample_idx),
                      metadata=source.metadata)
    elif format == 'seit':
        if not (drop_sample_idx or _identity_sample_idx(source)):
            raise ValueError(
                f'{source.path}: its sample_idx is not 0 .. N - 1 and the '
                f'SeiT format cannot store it; pass drop_sample_idx=True '
                f'(--drop-sample-idx) to convert anyway')
        if source.labels is not None and label_file is None:
            label_file = label_file_for(dst)
        write_seit(dst, source,
                   labels=source.labels,
                   label_file=label_file if source.labels is not None
                   else None,
                   codebook=codebook, codebook_file=codebook_file)
    elif format == 'wds':
        _write_wds(source, dst, shard_size)
    else:
        raise ValueError(f'format must be one of {FORMATS}, got {format!r}')


def output_files(dst: str, format: str,
                 label_file: Optional[str] = None) -> List[str]:
    """The files a conversion to ``dst`` creates (a wds export is its
    directory)."""
    if format == 'seit':
        files = [dst, index_file_for(dst)]
        try:
            files.append(label_file or label_file_for(dst))
        except SeiTFormatError:
            pass
        return files
    return [dst]


def _remove(paths: Sequence[str]) -> None:
    for path in paths:
        if osp.isdir(path):
            shutil.rmtree(path)
        elif osp.exists(path):
            os.remove(path)


def convert_tokens(src: str, dst: str, format: str,
                   src_format: Optional[str] = None, *,
                   grid: Optional[Sequence[int]] = None,
                   codebook_size: Optional[int] = None,
                   src_label_file: Optional[str] = None,
                   src_codebook_file: Optional[str] = None,
                   model: str = 'order0', shard_size: int = 1000,
                   label_file: Optional[str] = None,
                   codebook_file: Optional[str] = None,
                   drop_sample_idx: bool = False,
                   overwrite: bool = False) -> dict:
    """Convert ``src`` to ``dst`` in ``format`` and check the result.

    Returns ``dict(num_images, tokens_sha256, bytes)`` (bytes: the files
    written). Raises if ``dst`` exists (unless ``overwrite``), and if the
    re-read result differs from the source in codes, labels or kept
    ``sample_idx`` (the result is then removed). SeiT-only arguments: see
    :func:`open_token_source` (``src_*``, ``grid``, ``codebook_size``) and
    :func:`write_token_source`; with ``src_codebook_file`` a SeiT output
    gets the codebook too (``codebook_file``, default ``codebook.ckpt``
    beside ``dst``).
    """
    src, dst = str(src), str(dst)
    if format not in FORMATS:
        raise ValueError(f'format must be one of {FORMATS}, got {format!r}')
    source = open_token_source(src, src_format, grid=grid,
                               codebook_size=codebook_size,
                               label_file=src_label_file,
                               codebook_file=src_codebook_file)
    outputs = output_files(dst, format, label_file)
    existing = [p for p in outputs if osp.exists(p)]
    if existing and not overwrite:
        raise FileExistsError(f'{existing[0]} exists: choose another '
                              f'destination or pass overwrite=True '
                              f'(--overwrite)')
    _remove(existing)
    codebook = (read_seit_codebook(src_codebook_file)
                if src_codebook_file and format == 'seit' else None)
    if codebook is not None:
        codebook_file = codebook_file or osp.join(osp.dirname(dst),
                                                  CODEBOOK_NAME)
        if osp.exists(codebook_file) and not overwrite:
            raise FileExistsError(f'{codebook_file} exists: pass '
                                  f'overwrite=True (--overwrite)')
    write_token_source(source, dst, format, model=model,
                       shard_size=shard_size, label_file=label_file,
                       codebook=codebook,
                       codebook_file=codebook_file if codebook is not None
                       else None, drop_sample_idx=drop_sample_idx)
    written = open_token_source(
        dst, format, grid=(source.levels[0]['shape']
                           if source.structure == 'tensor' else None),
        codebook_size=source.codebook_size,
        label_file=label_file if format == 'seit' else None)
    expected = source.tokens_sha256()
    problems = []
    if written.tokens_sha256() != expected:
        problems.append('codes')
    if not _same(written.labels, source.labels):
        problems.append('labels')
    if format != 'seit' and not _same(
            _positions_or(written), _positions_or(source)):
        problems.append('sample_idx')
    if problems:
        _remove(outputs)
        raise RuntimeError(f'converting {src} to {dst} changed the '
                           f'{", ".join(problems)}; nothing was kept')
    size = sum(_size(p) for p in outputs if osp.exists(p))
    return dict(num_images=len(source), tokens_sha256=expected, bytes=size)


def _positions_or(source: TokenSource) -> np.ndarray:
    return (np.arange(len(source)) if source.sample_idx is None else
            source.sample_idx)


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return np.array_equal(a, b)


def _size(path: str) -> int:
    if osp.isdir(path):
        return sum(osp.getsize(osp.join(path, name))
                   for name in os.listdir(path))
    return osp.getsize(path)
