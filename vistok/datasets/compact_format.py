"""Compact token storage: every image's codes entropy-coded on its own, in
one memory-mapped file with O(1) random access by image index.

The coder is `constriction <https://bamler-lab.github.io/constriction/>`_'s
range coder (``constriction.stream.queue``) with static categorical models
whose integer counts are stored in the file (so they count in its size):

* ``'order0'`` (default): one distribution over the ``K`` codes, the
  file's code frequencies. Decoding an image is one vectorised call.
* ``'context'``: a neighbour-context model in two stages. Each token first
  gets a match symbol: the first of its left, top, top-right and top-left
  neighbours (:data:`NEIGHBOURS`; previous positions along a level's last /
  second-to-last axis) that holds the same code, or :data:`NEW`; a ``NEW``
  token then codes its code with a distribution over the ``K`` codes of
  ``NEW`` tokens. The match symbol's distribution depends on one of
  :data:`NUM_CONTEXTS` contexts, four bits of the already decoded
  neighbours: left == top, top == top-right, left == top-left, and whether
  left or top is missing (first row / column, 1-D levels). The tables are
  ``16 x 5`` and ``K`` counts. Decoding is sequential (a Python loop over
  tokens, about 0.3 ms per 1,024-token image); it pays on tokenizer output,
  where neighbours repeat, and costs a little on i.i.d. tokens.

The count tables are stored zlib-compressed (level 9) and count in the
file size.

File layout (little endian)::

    MAGIC (8 bytes) | uint64 n | n bytes of JSON header (space-padded to
    a multiple of 8) | payload: the sections the header lists, each at an
    8-byte aligned offset from the start of the payload

Header fields: ``format``, ``format_version``, ``codebook_size`` (every
code lies in ``[0, codebook_size)``), ``structure`` / ``levels`` (as in a
token-shard manifest: ``'tensor'`` with one level ``indices`` or
``'list'`` / ``'tuple'`` of ``level0``, ``level1``, ... with their grid
shapes; an image's codes are its levels flattened row-major and
concatenated), ``num_images``, ``tokens_per_image``, ``model``, ``coder``
and ``coder_version``, ``coder_probe`` (CRC-32 of a fixed message coded
with the file's models: a coder whose model quantisation differs from the
writer's is refused rather than decoding wrong tokens), ``checksum``,
``tokens_sha256`` (:func:`tokens_sha256` of all images: the same codes
give the same hash in every storage format), ``metadata`` (free-form, e.g.
the export's provenance) and ``sections``: ``{name: {offset, dtype,
shape}}`` for ``model`` (the counts), ``lengths`` (each image's size in
32-bit words, the smallest unsigned dtype that holds the largest),
``checksums`` (``uint16``: CRC-16/CCITT, :func:`binascii.crc_hqx` with
initial value 0, of each image's coded bytes), ``data`` (the coded words)
and optionally ``labels`` (``int64``) and ``sample_idx`` (``int64``).

Integrity: an image whose checksum does not match, whose decoder fails, or
whose codes leave ``[0, codebook_size)`` is reported as corruption of that
image, naming the file; a CRC-16 detects every error burst of up to 16 bits
(any single damaged byte) and misses other random damage with probability
2^-16, so :meth:`CompactTokenFile.verify` also compares the whole file with
``tokens_sha256``. A truncated file is reported with the first image it
cuts. Other images' bytes are never read: image i decodes even if every
other image's data is damaged. The header is checked against what
:func:`write_compact` writes (:func:`header_problem`: field types, levels,
table shapes, section dtypes, shapes and offsets), so a damaged header
number is reported rather than read as a layout. Not covered by any
checksum: the ``labels`` and ``sample_idx`` sections and the free-form
header fields (``metadata``, level names, ``coder_version``).
"""
import binascii
import hashlib
import json
import os.path as osp
import zlib
from importlib import metadata as importlib_metadata
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np

from vistok.utils.checkpoint import write_file_atomic
from .token_arrays import iter_image_chunks, tokens_sha256

MAGIC = b'VTKTOKC\x00'
FORMAT = 'vistok-compact-tokens'
FORMAT_VERSION = 1
MODELS = ('order0', 'context')
CODER = 'constriction.stream.queue.RangeEncoder'
CHECKSUM = 'crc16-ccitt (binascii.crc_hqx, init 0) of the coded bytes'
#: neighbours the context model matches, in order
NEIGHBOURS = ('left', 'top', 'top_right', 'top_left')
#: match symbol of a code no neighbour holds
NEW = len(NEIGHBOURS)
NUM_CONTEXTS = 16
#: the count tables of each model (names; shapes depend on K)
MODEL_TABLES = dict(order0=('codes', ), context=('match', 'codes'))
#: the sections in the order :func:`write_compact` lays them out, with the
#: dtypes it writes (``lengths``: the smallest that holds the largest)
SECTION_DTYPES = dict(model=('|u1', ), lengths=('|u1', '<u2', '<u4', '<u8'),
                      checksums=('<u2', ), labels=('<i8', ),
                      sample_idx=('<i8', ), data=('<u4', ))
STRUCTURES = ('tensor', 'list', 'tuple')
_ALIGN = 8
_HEADER_LEN = np.dtype('<u8')


class CompactFormatError(ValueError):
    """A compact token file breaks the format or is damaged."""


def _constriction():
    try:
        import constriction
    except ImportError:
        raise ImportError(
            'the compact token format needs constriction (pip install '
            'constriction; it is in requirements/runtime.txt)') from None
    return constriction


def _coder_version() -> str:
    try:
        return importlib_metadata.version('constriction')
    except importlib_metadata.PackageNotFoundError:
        return 'unknown'


def level_slices(levels: Sequence[dict]) -> List[Tuple[int, int, tuple]]:
    """``(start, stop, shape)`` of each level inside an image's flat
    codes."""
    out, start = [], 0
    for level in levels:
        shape = tuple(int(s) for s in level['shape'])
        stop = start + int(np.prod(shape, dtype=np.int64))
        out.append((start, stop, shape))
        start = stop
    return out


def neighbour_indices(levels: Sequence[dict]) -> np.ndarray:
    """``(4, L)``: for each position of an image's flat codes, the flat
    position of its :data:`NEIGHBOURS` inside the same level, or -1. Left is
    the previous position along a level's last axis, top along its
    second-to-last axis (none for 1-D levels)."""
    parts = []
    for start, stop, shape in level_slices(levels):
        pos = np.arange(start, stop, dtype=np.int64).reshape(shape or (1, ))
        found = np.full((len(NEIGHBOURS), *pos.shape), -1, dtype=np.int64)
        found[0][..., 1:] = pos[..., :-1]
        if pos.ndim >= 2:
            found[1][..., 1:, :] = pos[..., :-1, :]
            found[2][..., 1:, :-1] = pos[..., :-1, 1:]
            found[3][..., 1:, 1:] = pos[..., :-1, :-1]
        parts.append(found.reshape(len(NEIGHBOURS), -1))
    return np.concatenate(parts, axis=1)


def context_of(left, top, top_right, top_left):
    """Context (0 .. 15) of the match symbol from the neighbours' codes
    (-1: missing); works on ints and arrays."""
    missing = (left < 0) | (top < 0)
    return ((left == top) * 1 + (top == top_right) * 2
            + (left == top_left) * 4 + missing * 8)


def context_symbols(codes: np.ndarray, neighbours: np.ndarray
                    ) -> Tuple[np.ndarray, np.ndarray]:
    """``(matches, contexts)`` of the context model for ``(n, L)`` codes
    (vectorised; see the module docstring)."""
    candidates = [np.where(nb >= 0, codes[:, np.maximum(nb, 0)], -1)
                  for nb in neighbours]
    matches = np.full(codes.shape, NEW, dtype=np.int32)
    for k in reversed(range(len(NEIGHBOURS))):
        matches = np.where(codes == candidates[k], k, matches)
    return matches.astype(np.int32), context_of(*candidates).astype(np.int64)


def _align(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


def _chunks(images, tokens_per_image: int, chunk: int,
            filename: str) -> Iterator[Tuple[int, np.ndarray]]:
    """``(first, (n, L) int64 codes)`` of ``images`` (see
    :func:`~.token_arrays.iter_image_chunks`), every image holding
    ``tokens_per_image`` codes."""
    for first, part in iter_image_chunks(images, chunk):
        if isinstance(part, list):
            bad = [i for i, p in enumerate(part)
                   if p.size != tokens_per_image]
            if bad:
                raise CompactFormatError(
                    f'{filename}: image {first + bad[0]} has '
                    f'{part[bad[0]].size} codes, the levels hold '
                    f'{tokens_per_image}')
            part = (np.stack([p.reshape(-1) for p in part]) if part else
                    np.zeros((0, tokens_per_image), np.int64))
        part = np.asarray(part).reshape(len(part), -1)
        if part.shape[1] != tokens_per_image:
            raise CompactFormatError(
                f'{filename}: images have {part.shape[1]} codes, the levels '
                f'hold {tokens_per_image}')
        if part.size and not np.issubdtype(part.dtype, np.integer):
            raise CompactFormatError(
                f'{filename}: image {first} has {part.dtype} codes, not '
                f'integers')
        yield first, part.astype(np.int64, copy=False)


class _Models:
    """The constriction models of a model's count tables."""

    def __init__(self, model: str, tables: dict):
        constriction = _constriction()
        self.model = model

        def categorical(counts):
            counts = counts.astype(np.float64)
            if counts.sum() == 0:  # never used: any valid model
                counts = np.ones_like(counts)
            return constriction.stream.model.Categorical(counts,
                                                         perfect=False)

        self.codes = categorical(tables['codes'])
        self.match = ([categorical(row) for row in tables['match']]
                      if model == 'context' else [])
        self.codebook_size = tables['codes'].size

    def probe(self) -> int:
        """CRC-32 of every symbol of each alphabet coded with each model:
        equal only if this coder quantises the counts as the writer's."""
        constriction = _constriction()
        crc = 0
        for model, size in [(self.codes, self.codebook_size),
                            *[(m, NEW + 1) for m in self.match]]:
            encoder = constriction.stream.queue.RangeEncoder()
            encoder.encode(np.arange(size, dtype=np.int32), model)
            crc = zlib.crc32(encoder.get_compressed().astype('<u4').tobytes(),
                             crc)
        return crc


def pack_tables(tables: dict) -> np.ndarray:
    """The model section: zlib of the tables as little-endian ``uint32``."""
    raw = b''.join(np.ascontiguousarray(t, dtype='<u4').tobytes()
                   for t in tables.values())
    return np.frombuffer(zlib.compress(raw, 9), dtype=np.uint8)


def unpack_tables(data: np.ndarray, specs: Sequence, filename: str) -> dict:
    try:
        raw = zlib.decompress(np.asarray(data).tobytes())
    except zlib.error as err:
        raise CompactFormatError(f'{filename}: damaged model tables '
                                 f'({err})') from None
    tables, offset = {}, 0
    for name, shape in specs:
        size = 4 * int(np.prod(shape, dtype=np.int64))
        if offset + size > len(raw):
            raise CompactFormatError(f'{filename}: damaged model tables')
        tables[name] = np.frombuffer(raw[offset:offset + size],
                                     '<u4').reshape(shape)
        offset += size
    return tables


def _count(chunks, model, codebook_size, neighbours, filename):
    """Count tables of the model, and tokens_sha256, over all images."""
    tables = dict(codes=np.zeros(codebook_size, dtype=np.int64))
    if model == 'context':
        tables = dict(match=np.zeros((NUM_CONTEXTS, NEW + 1), np.int64),
                      **tables)
    digest = hashlib.sha256()
    for first, codes in chunks:
        bad = np.flatnonzero((codes < 0) | (codes >= codebook_size))
        if bad.size:
            image, pos = divmod(int(bad[0]), codes.shape[1])
            raise CompactFormatError(
                f'{filename}: image {first + image} has code '
                f'{int(codes.flat[bad[0]])} (position {pos}), outside '
                f'[0, {codebook_size}) of codebook_size {codebook_size}')
        digest.update(codes.astype('<u4').tobytes())
        if model == 'order0':
            tables['codes'] += np.bincount(codes.reshape(-1),
                                           minlength=codebook_size)
            continue
        matches, contexts = context_symbols(codes, neighbours)
        tables['match'] += np.bincount(
            (contexts * (NEW + 1) + matches).reshape(-1),
            minlength=NUM_CONTEXTS * (NEW + 1)).reshape(NUM_CONTEXTS, NEW + 1)
        tables['codes'] += np.bincount(codes[matches == NEW],
                                       minlength=codebook_size)
    if max(t.max(initial=0) for t in tables.values()) >= 2**32:
        raise CompactFormatError(f'{filename}: a count exceeds uint32')
    return ({k: t.astype('<u4') for k, t in tables.items()},
            digest.hexdigest())


def _encode(codes, models: _Models, neighbours) -> List:
    """Coded ``uint32`` words of each image of ``(n, L)`` codes."""
    constriction = _constriction()
    out = []
    if models.model == 'order0':
        for image in codes.astype(np.int32):
            encoder = constriction.stream.queue.RangeEncoder()
            encoder.encode(image, models.codes)
            out.append(encoder.get_compressed())
        return out
    matches, contexts = context_symbols(codes, neighbours)
    for match, context, image in zip(matches.tolist(), contexts.tolist(),
                                     codes.tolist()):
        encoder = constriction.stream.queue.RangeEncoder()
        for m, c, code in zip(match, context, image):
            encoder.encode(m, models.match[c])
            if m == NEW:
                encoder.encode(code, models.codes)
        out.append(encoder.get_compressed())
    return out


def write_compact(filename: str, images, codebook_size: int,
                  levels: Optional[Sequence[dict]] = None,
                  structure: str = 'tensor', model: str = 'order0',
                  labels: Optional[Sequence[int]] = None,
                  sample_idx: Optional[Sequence[int]] = None,
                  metadata: Optional[dict] = None,
                  images_per_chunk: int = 4096) -> dict:
    """Write a compact token file (atomically) and return its header.

    Args:
        filename: the file to write.
        images: an ``(N, ...)`` integer array or a sequence of per-image
            integer arrays (read twice: counts, then coding).
        codebook_size: codes lie in ``[0, codebook_size)``.
        levels: ``[{'name', 'shape'}]``; default one level ``indices`` of
            the first image's shape.
        structure: ``'tensor'`` (one level), ``'list'`` or ``'tuple'``.
        model: ``'order0'`` or ``'context'``.
        labels / sample_idx: optional per-image integers.
        metadata: JSON-serialisable provenance kept in the header.
        images_per_chunk: images held in memory at a time.
    """
    filename = str(filename)
    if model not in MODELS:
        raise ValueError(f'model must be one of {MODELS}, got {model!r}')
    if not (isinstance(codebook_size, (int, np.integer))
            and codebook_size >= 1):
        raise ValueError(f'codebook_size must be a positive int, got '
                         f'{codebook_size!r}')
    codebook_size = int(codebook_size)
    num_images = len(images)
    if levels is None:
        if not num_images:
            raise ValueError('levels are needed to write zero images')
        levels = [dict(name='indices',
                       shape=list(np.asarray(images[0]).shape))]
    levels = [dict(name=str(lv['name']), shape=[int(s) for s in lv['shape']])
              for lv in levels]
    if structure == 'tensor' and len(levels) != 1:
        raise ValueError(f"structure 'tensor' has one level, got "
                         f'{len(levels)}')
    tokens_per_image = level_slices(levels)[-1][1]
    neighbours = neighbour_indices(levels)
    extras = {}
    for name, values in (('labels', labels), ('sample_idx', sample_idx)):
        if values is not None:
            values = np.asarray(values, dtype=np.int64).reshape(-1)
            if values.size != num_images:
                raise CompactFormatError(
                    f'{filename}: {values.size} {name} for {num_images} '
                    f'images')
            extras[name] = values.astype('<i8')

    def chunks():
        return _chunks(images, tokens_per_image, images_per_chunk, filename)

    tables, content_hash = _count(chunks(), model, codebook_size,
                                  neighbours, filename)
    models = _Models(model, tables)
    coded, lengths, checksums = [], [], []
    for _, codes in chunks():
        for words in _encode(codes, models, neighbours):
            words = words.astype('<u4')
            coded.append(words)
            lengths.append(words.size)
            checksums.append(binascii.crc_hqx(words.tobytes(), 0))
    max_len = max(lengths, default=0)
    length_dtype = next(np.dtype(d) for d in ('<u1', '<u2', '<u4', '<u8')
                        if max_len <= np.iinfo(d).max)
    arrays = dict(model=pack_tables(tables),
                  lengths=np.asarray(lengths, dtype=length_dtype),
                  checksums=np.asarray(checksums, dtype='<u2'), **extras,
                  data=(np.concatenate(coded) if coded else
                        np.zeros(0, dtype='<u4')))
    sections, offset = {}, 0
    for name, array in arrays.items():
        sections[name] = dict(offset=offset, dtype=array.dtype.str,
                              shape=list(array.shape))
        offset = _align(offset + array.nbytes)
    header = dict(format=FORMAT, format_version=FORMAT_VERSION,
                  codebook_size=codebook_size, structure=structure,
                  levels=levels, num_images=num_images,
                  tokens_per_image=tokens_per_image, model=model,
                  model_tables=[[name, list(table.shape)]
                                for name, table in tables.items()],
                  coder=CODER, coder_version=_coder_version(),
                  coder_probe=models.probe(), checksum=CHECKSUM,
                  tokens_sha256=content_hash, metadata=metadata or {},
                  sections=sections)
    text = json.dumps(header, sort_keys=True).encode()
    text += b' ' * (_align(len(text)) - len(text))

    def write(f):
        f.write(MAGIC)
        f.write(np.array(len(text), dtype=_HEADER_LEN).tobytes())
        f.write(text)
        position = 0
        for name, array in arrays.items():
            start = sections[name]['offset']
            f.write(b'\0' * (start - position))
            f.write(np.ascontiguousarray(array).tobytes())
            position = start + array.nbytes
        f.write(b'\0' * (_align(position) - position))

    write_file_atomic(filename, write)
    return header


def read_compact_header(filename: str) -> Tuple[dict, int]:
    """``(header, payload offset)`` of a compact token file."""
    filename = str(filename)
    if not osp.isfile(filename):
        raise CompactFormatError(f'compact token file {filename} does not '
                                 f'exist')
    prefix = len(MAGIC) + _HEADER_LEN.itemsize
    with open(filename, 'rb') as f:
        head = f.read(prefix)
        if len(head) < prefix or head[:len(MAGIC)] != MAGIC:
            raise CompactFormatError(
                f'{filename} is not a compact token file (no {MAGIC!r} '
                f'magic); write one with vistok.datasets.write_compact or '
                f'tools/convert_tokens.py')
        size = int(np.frombuffer(head[len(MAGIC):], dtype=_HEADER_LEN)[0])
        if size > osp.getsize(filename) - prefix:
            raise CompactFormatError(
                f'{filename} is truncated inside its header (or its header '
                f'length {size} is damaged): the file holds '
                f'{osp.getsize(filename)} bytes')
        text = f.read(size)
    if len(text) != size:
        raise CompactFormatError(f'{filename} is truncated inside its '
                                 f'header')
    try:
        header = json.loads(text.decode())
    except ValueError as err:
        raise CompactFormatError(f'{filename}: damaged header '
                                 f'({err})') from None
    if not isinstance(header, dict) or header.get('format') != FORMAT:
        raise CompactFormatError(f'{filename} is not a {FORMAT!r} file')
    if header.get('format_version') != FORMAT_VERSION:
        raise CompactFormatError(
            f'{filename} has format_version {header.get("format_version")!r}'
            f'; this vistok reads version {FORMAT_VERSION}')
    problem = header_problem(header)
    if problem:
        raise CompactFormatError(f'{filename}: damaged header ({problem})')
    return header, prefix + size


def _is_int(value, minimum: int = 0) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)
            and value >= minimum)


def _layout(names_and_sizes) -> dict:
    """Section offsets as :func:`write_compact` lays them out: in order,
    each at the next multiple of 8 after the previous one."""
    offsets, offset = {}, 0
    for name, nbytes in names_and_sizes:
        offsets[name] = offset
        offset = _align(offset + nbytes)
    return offsets


def header_problem(header: dict) -> Optional[str]:
    """What makes ``header`` (format and version already checked) differ
    from every header :func:`write_compact` writes, or None: the field
    types, levels and token count, the model's table shapes, and the
    sections' dtypes, shapes and offsets (their layout is fixed, so a
    damaged number in them is found here rather than read as data)."""
    fields = dict(codebook_size=int, num_images=int, tokens_per_image=int,
                  coder_probe=int, tokens_sha256=str, levels=list,
                  sections=dict, model_tables=list, metadata=dict)
    for name, kind in fields.items():
        if not isinstance(header.get(name), kind) or isinstance(
                header.get(name), bool):
            return f'{name}={header.get(name)!r} is not a {kind.__name__}'
    if header['codebook_size'] < 1 or header['num_images'] < 0:
        return (f'codebook_size={header["codebook_size"]} and num_images='
                f'{header["num_images"]} must be >= 1 and >= 0')
    levels = header['levels']
    if not levels or not all(
            isinstance(lv, dict) and isinstance(lv.get('name'), str)
            and isinstance(lv.get('shape'), list)
            and all(_is_int(s) for s in lv['shape']) for lv in levels):
        return f'levels={levels!r} are not [{{name, shape}}]'
    structures = ('list', 'tuple') if len(levels) > 1 else STRUCTURES
    if header.get('structure') not in structures:
        return (f'structure={header.get("structure")!r} does not fit '
                f'{len(levels)} level(s)')
    if header['tokens_per_image'] != level_slices(levels)[-1][1]:
        return (f'tokens_per_image={header["tokens_per_image"]} but the '
                f'levels hold {level_slices(levels)[-1][1]}')
    model = header.get('model')
    if model not in MODELS:
        return f'unknown model {model!r}'
    tables = dict(match=[NUM_CONTEXTS, NEW + 1],
                  codes=[header['codebook_size']])
    expected = [[name, tables[name]] for name in MODEL_TABLES[model]]
    if header['model_tables'] != expected:
        return (f'model_tables={header["model_tables"]!r}, expected '
                f'{expected} for model {model!r} and codebook_size '
                f'{header["codebook_size"]}')
    return _sections_problem(header['sections'], header['num_images'])


def _sections_problem(sections: dict, num_images: int) -> Optional[str]:
    """What makes ``sections`` differ from :func:`write_compact`'s layout
    for ``num_images`` images, or None."""
    optional = [name for name in SECTION_DTYPES if name not in sections]
    if set(optional) - {'labels', 'sample_idx'} or set(sections) - set(
            SECTION_DTYPES):
        return f'sections {sorted(sections)} are not the writer\'s'
    sizes = []
    for name, dtypes in SECTION_DTYPES.items():
        spec = sections.get(name)
        if spec is None:
            continue
        if not (isinstance(spec, dict) and spec.get('dtype') in dtypes
                and isinstance(spec.get('shape'), list)
                and len(spec['shape']) == 1 and _is_int(spec['shape'][0])
                and _is_int(spec.get('offset'))):
            return f'section {name!r} is {spec!r}'
        if name not in ('model', 'data') and spec['shape'] != [num_images]:
            return (f'section {name!r} has shape {spec["shape"]}, not '
                    f'[num_images] = [{num_images}]')
        sizes.append((name,
                      spec['shape'][0] * np.dtype(spec['dtype']).itemsize))
    offsets = _layout(sizes)
    moved = {name: sections[name]['offset'] for name in offsets
             if sections[name]['offset'] != offsets[name]}
    if moved:
        return (f'section offsets {moved} differ from the layout '
                f'{offsets}')
    return None


class CompactTokenFile:
    """Random access to a compact token file, memory-mapped.

    ``tokens[i]`` decodes image i to its flat ``int64`` codes (levels
    concatenated; :meth:`split_levels` gives the per-level grids);
    :meth:`read_batch` decodes several. ``labels`` / ``sample_idx`` are
    ``int64`` arrays or None. The file is opened lazily in each process, so
    the object can be sent to DataLoader workers; the image offsets (an
    ``int64`` array of N + 1) are computed once at open.

    Args:
        filename: the compact file.
    """

    def __init__(self, filename: str):
        self.filename = str(filename)
        self.header, self._payload = read_compact_header(self.filename)
        header = self.header
        self.codebook_size = int(header['codebook_size'])
        self.levels = header['levels']
        self.structure = header['structure']
        self.model = header['model']
        self.tokens_per_image = int(header['tokens_per_image'])
        if self.model not in MODELS:
            raise CompactFormatError(f'{self.filename}: unknown model '
                                     f'{self.model!r}')
        self._map = None
        self._open()

    def __getstate__(self):
        state = dict(self.__dict__)
        state['_map'] = None
        for name in ('_sections', '_models', 'offsets', 'labels',
                     'sample_idx'):
            state.pop(name, None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._open()

    def _section(self, name: str) -> Optional[np.ndarray]:
        spec = self.header['sections'].get(name)
        if spec is None:
            return None
        dtype = np.dtype(spec['dtype'])
        count = int(np.prod(spec['shape'], dtype=np.int64))
        start = self._payload + int(spec['offset'])
        stop = start + count * dtype.itemsize
        if stop > self._map.size:
            return None
        return self._map[start:stop].view(dtype).reshape(spec['shape'])

    def _open(self) -> None:
        size = osp.getsize(self.filename)
        self._map = (np.memmap(self.filename, dtype=np.uint8, mode='r')
                     if size else np.zeros(0, np.uint8))
        sections = {}
        for name in ('model', 'lengths', 'checksums', 'labels',
                     'sample_idx'):
            sections[name] = self._section(name)
            if sections[name] is None and name in self.header['sections']:
                raise CompactFormatError(
                    f'{self.filename} is truncated: its {name!r} section '
                    f'is cut')
        lengths = sections['lengths']
        self.offsets = np.zeros(lengths.size + 1, dtype=np.int64)
        np.cumsum(lengths, out=self.offsets[1:])
        data = self.header['sections']['data']
        if int(self.offsets[-1]) != data['shape'][0]:
            raise CompactFormatError(
                f'{self.filename}: damaged header or lengths section: the '
                f'images\' lengths sum to {int(self.offsets[-1])} words, '
                f'the data section holds {data["shape"][0]}')
        self._data_start = self._payload + int(data['offset'])
        available = max(self._map.size - self._data_start, 0) // 4
        if available < self.offsets[-1]:
            image = int(np.searchsorted(self.offsets[1:], available,
                                        side='right'))
            raise CompactFormatError(
                f'{self.filename} is truncated: image {image} (of '
                f'{len(self)}) and the images after it are cut')
        self._checksums = sections['checksums']
        self.labels = sections['labels']
        self.sample_idx = sections['sample_idx']
        self._models = _Models(self.model, unpack_tables(
            sections['model'], self.header['model_tables'], self.filename))
        if self._models.probe() != self.header['coder_probe']:
            raise CompactFormatError(
                f'{self.filename} was coded by constriction '
                f'{self.header["coder_version"]}, whose model quantisation '
                f'differs from the installed constriction '
                f'{_coder_version()}: decoding would give wrong tokens; '
                f'install constriction=={self.header["coder_version"]}')
        if self.model == 'context':
            self._neighbours = neighbour_indices(self.levels).T.tolist()

    def __len__(self) -> int:
        return int(self.header['num_images'])

    def _words(self, image: int) -> np.ndarray:
        start = self._data_start + 4 * int(self.offsets[image])
        stop = self._data_start + 4 * int(self.offsets[image + 1])
        return np.frombuffer(self._map[start:stop].tobytes(), dtype='<u4')

    def _corrupt(self, image: int, why: str):
        return CompactFormatError(
            f'{self.filename}: image {image} is corrupt ({why}); re-export '
            f'or re-convert this file')

    def __getitem__(self, image: int) -> np.ndarray:
        n = len(self)
        if not -n <= image < n:
            raise IndexError(f'{self.filename}: image index {image} out of '
                             f'range for {n} images')
        image = int(image) % n
        words = self._words(image)
        if binascii.crc_hqx(words.tobytes(), 0) != int(
                self._checksums[image]):
            raise self._corrupt(image, 'checksum mismatch')
        try:
            codes = self._decode(words)
        except (ValueError, RuntimeError, AssertionError) as err:
            raise self._corrupt(image, f'the decoder failed: {err}') from None
        if codes.size and (codes.min() < 0
                           or codes.max() >= self.codebook_size):
            raise self._corrupt(image, 'decoded a code outside the codebook')
        return codes

    def _decode(self, words: np.ndarray) -> np.ndarray:
        constriction = _constriction()
        decoder = constriction.stream.queue.RangeDecoder(
            words.astype(np.uint32))
        models = self._models
        if self.model == 'order0':
            return decoder.decode(models.codes,
                                  self.tokens_per_image).astype(np.int64)
        codes = [0] * self.tokens_per_image
        for t, positions in enumerate(self._neighbours):
            found = [codes[p] if p >= 0 else -1 for p in positions]
            match = decoder.decode(models.match[context_of(*found)])
            if match == NEW:
                codes[t] = decoder.decode(models.codes)
            elif found[match] < 0:
                raise ValueError(f'token {t} matches a missing '
                                 f'{NEIGHBOURS[match]} neighbour')
            else:
                codes[t] = found[match]
        return np.asarray(codes, dtype=np.int64)

    def read_batch(self, images: Sequence[int]) -> np.ndarray:
        """``(len(images), tokens_per_image)`` codes of several images."""
        out = np.empty((len(images), self.tokens_per_image), dtype=np.int64)
        for row, image in enumerate(images):
            out[row] = self[image]
        return out

    def split_levels(self, codes: np.ndarray):
        """Per-level grids of one image's flat codes, as the export's
        structure: an array (``'tensor'``), or a list / tuple of arrays."""
        levels = [codes[start:stop].reshape(shape)
                  for start, stop, shape in level_slices(self.levels)]
        if self.structure == 'tensor':
            return levels[0]
        return levels if self.structure == 'list' else tuple(levels)

    def iter_chunks(self, chunk: int = 4096
                    ) -> Iterator[Tuple[int, np.ndarray]]:
        """``(first, (n, tokens_per_image) codes)`` over all images."""
        for first in range(0, len(self), chunk):
            yield first, self.read_batch(
                range(first, min(first + chunk, len(self))))

    def verify(self) -> None:
        """Decode every image (checking each checksum) and compare the
        whole content with ``tokens_sha256``."""
        found = tokens_sha256(codes for _, codes in self.iter_chunks())
        if found != self.header['tokens_sha256']:
            raise CompactFormatError(
                f'{self.filename}: the decoded tokens do not match the '
                f'header\'s tokens_sha256 (corruption the per-image '
                f'checksums missed); re-export or re-convert this file')
