"""SeiT token storage: the byte format of SeiT / SeiT++ token files, read
and written exactly (Park et al., "Storage-Efficient Vision Training with
Tokens Using 1% of Pixel Storage", ICCV 2023; Lee et al., "Masked Token
Modeling Improves Storage-efficient Training", ECCV 2024).

A split of ``N`` images is four files (names as in the released ImageNet-1k
tokens, e.g. ``imagenet1k-train-token.data.bin.gz``)::

    <name>-token.data.bin.gz   gzip of one byte stream: every image's codes,
                               escape-coded (below), images concatenated
    <name>-token.index.npy.gz  gzip of a ``.npy`` 1-D integer array ``idx``
                               of N + 1 byte offsets into that stream: image
                               i is ``stream[idx[i]:idx[i + 1]]``; its name
                               is the data file's with ``data.bin``
                               replaced by ``index.npy``
    <name>-label.txt           one integer class id per line, image order
    codebook.ckpt              the codebook, a bare ``(K, D)`` torch tensor
                               saved with ``torch.save`` (K = 391, D = 32
                               for the released ViT-VQGAN tokens)

Escape coding: a code ``c < 255`` is the single byte ``c``; a code
``255 <= c <= 509`` is the two bytes ``255, c - 255``. Codes of 510 or more
cannot be stored. Every byte 255 is an escape, so a 255 as the last byte of
an image, or a 255 followed by another 255, is corruption. An image's codes
are its flattened token grid in row-major order (the released files hold
32 x 32 grids; SeiT reshapes to a square).

Files are written deterministically (gzip header with mtime 0 and no file
name, ``compresslevel`` 9) and atomically (a temporary file in the target
directory, then a rename). Encoding and decoding are vectorised numpy.
Every format error is a :class:`SeiTFormatError` naming the file and, where
one is concerned, the image index.
"""
import gzip
import io
import os.path as osp
import zlib
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from vistok.utils.checkpoint import (
    CheckpointLoadError,
    load_checkpoint_file,
    save_checkpoint_atomic,
    write_file_atomic,
)
from .token_arrays import iter_image_chunks

ESCAPE = 255
NUM_STORABLE_CODES = 2 * ESCAPE  # codes 0 .. 509
DATA_MARKER = 'data.bin'
INDEX_MARKER = 'index.npy'
_CHUNK = 1 << 24


class SeiTFormatError(ValueError):
    """A SeiT token, index, label or codebook file breaks the format."""


# --- naming -----------------------------------------------------------------
def index_file_for(token_file: str) -> str:
    """The index file of ``token_file``: ``data.bin`` replaced by
    ``index.npy`` in its name (SeiT's rule)."""
    token_file = str(token_file)
    head, name = osp.split(token_file)
    if DATA_MARKER not in name:
        raise SeiTFormatError(
            f'SeiT token file {token_file}: its name must contain '
            f"'{DATA_MARKER}' (the index file's name replaces it by "
            f"'{INDEX_MARKER}'); pass index_file explicitly otherwise")
    return osp.join(head, name.replace(DATA_MARKER, INDEX_MARKER))


def label_file_for(token_file: str) -> str:
    """The label file of ``<name>-token.data.bin.gz``:
    ``<name>-label.txt`` (the released files' naming)."""
    token_file = str(token_file)
    suffix = f'-token.{DATA_MARKER}.gz'
    if not token_file.endswith(suffix):
        raise SeiTFormatError(
            f'SeiT token file {token_file}: cannot derive its label file '
            f'(the name does not end with {suffix!r}); pass label_file '
            f'explicitly')
    return token_file[:-len(suffix)] + '-label.txt'


# --- escape coding (vectorised) ----------------------------------------------
def encode_codes(tokens: Sequence, filename: str = '<memory>',
                 first_image: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """Escape-code the images' codes into one byte stream.

    Args:
        tokens: one integer array per image (any shape, e.g. an ``(h, w)``
            grid; flattened in row-major order).
        filename, first_image: named in errors (``tokens[0]`` is image
            ``first_image``).

    Returns:
        ``(stream, index)``: the ``uint8`` stream and the ``int64`` array of
        N + 1 byte offsets.
    """
    arrays = [np.asarray(t) for t in tokens]
    for i, a in enumerate(arrays):
        if a.size and not np.issubdtype(a.dtype, np.integer):
            raise SeiTFormatError(
                f'{filename}: image {first_image + i} has {a.dtype} codes, '
                'not integers')
    counts = np.array([a.size for a in arrays], dtype=np.int64)
    code_offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
    np.cumsum(counts, out=code_offsets[1:])
    codes = (np.concatenate([a.reshape(-1).astype(np.int64)
                             for a in arrays])
             if arrays else np.zeros(0, np.int64))
    bad = np.flatnonzero((codes < 0) | (codes >= NUM_STORABLE_CODES))
    if bad.size:
        pos = int(bad[0])
        image = int(np.searchsorted(code_offsets, pos, side='right')) - 1
        raise SeiTFormatError(
            f'{filename}: image {first_image + image} has code '
            f'{int(codes[pos])} (position '
            f'{pos - int(code_offsets[image])}); the SeiT format stores only '
            f'codes 0..{NUM_STORABLE_CODES - 1}')
    big = codes >= ESCAPE
    # exclusive running count of escapes: where each code's first byte goes
    shift = np.zeros(codes.size + 1, dtype=np.int64)
    np.cumsum(big, out=shift[1:])
    pos = np.arange(codes.size, dtype=np.int64) + shift[:-1]
    stream = np.empty(codes.size + int(shift[-1]), dtype=np.uint8)
    stream[pos] = np.where(big, ESCAPE, codes)
    stream[pos[big] + 1] = codes[big] - ESCAPE
    index = code_offsets + shift[code_offsets]
    return stream, index


def _escape_errors_exist(stream: np.ndarray, index: np.ndarray,
                         esc: np.ndarray) -> bool:
    """Fast test for any escape error (the slow path locates it): a 255
    followed by a 255 is always corrupt (an escape's second byte is at most
    254, and images never end inside an escape), and so is a 255 as the
    last byte of an image."""
    if stream.size and (esc[:-1] & esc[1:]).any():
        return True
    ends = index[1:][index[1:] > index[:-1]] - 1
    return bool(ends.size and esc[ends].any())


def _position_errors(stream: np.ndarray, index: np.ndarray):
    """``(image, kind, byte position)`` of the first escape error of the
    stream split by ``index``, or None."""
    esc = stream == ESCAPE
    ends = index[1:]
    # a 255 that is the last byte of its image (images never share escapes)
    trailing = np.zeros(stream.size, dtype=bool)
    last = ends[ends > index[:-1]] - 1
    trailing[last] = esc[last]
    double = np.zeros(stream.size, dtype=bool)
    double[:-1] = esc[:-1] & esc[1:] & ~trailing[:-1]
    found = []
    for kind, mask in (('trailing', trailing), ('double', double)):
        hit = np.flatnonzero(mask)
        if hit.size:
            found.append((int(hit[0]), kind))
    if not found:
        return None
    pos, kind = min(found)
    image = int(np.searchsorted(index, pos, side='right')) - 1
    return image, kind, pos


def _raise_escape_error(filename, image, kind, pos, start):
    where = f'byte {pos - start} of the image, stream offset {pos}'
    if kind == 'trailing':
        raise SeiTFormatError(
            f'{filename}: image {image} is corrupt: it ends with the escape '
            f'byte 255 ({where})')
    raise SeiTFormatError(
        f'{filename}: image {image} is corrupt: escape byte 255 followed by '
        f'another 255 ({where})')


def decode_stream(stream: np.ndarray, index: np.ndarray,
                  filename: str = '<memory>'
                  ) -> Tuple[np.ndarray, np.ndarray]:
    """Decode a whole escape-coded stream.

    Returns:
        ``(codes, code_offsets)``: every image's codes (``int64``)
        concatenated, and N + 1 offsets into them (image i is
        ``codes[code_offsets[i]:code_offsets[i + 1]]``).
    """
    stream = np.asarray(stream, dtype=np.uint8)
    index = np.asarray(index, dtype=np.int64)
    esc = stream == ESCAPE
    if _escape_errors_exist(stream, index, esc):
        image, kind, pos = _position_errors(stream, index)
        _raise_escape_error(filename, image, kind, pos, int(index[image]))
    escapes = np.flatnonzero(esc)
    codes = stream.astype(np.int16)  # codes fit: 0 .. 509
    codes[escapes + 1] += ESCAPE
    # escapes before each image start: the code offsets
    offsets = index - np.searchsorted(escapes, index)
    return codes[~esc].astype(np.int64), offsets


def decode_image(data: np.ndarray, image: int = 0,
                 filename: str = '<memory>', start: int = 0) -> np.ndarray:
    """Decode one image's bytes ``data`` (``image`` / ``start``: its index
    and stream offset, for errors) to its ``int64`` codes."""
    data = np.asarray(data, dtype=np.uint8)
    bounds = np.array([0, data.size], dtype=np.int64)
    esc = data == ESCAPE
    if _escape_errors_exist(data, bounds, esc):
        _, kind, pos = _position_errors(data, bounds)
        _raise_escape_error(filename, image, kind, start + pos, start)
    codes = data.astype(np.int64)
    codes[np.flatnonzero(esc) + 1] += ESCAPE
    return codes[~esc]


# --- files ------------------------------------------------------------------
def _gzip_writer(payload: Callable) -> Callable:
    def write(f):
        with gzip.GzipFile(filename='', mode='wb', fileobj=f, mtime=0,
                           compresslevel=9) as gz:
            payload(gz)
    return write


def write_seit_tokens(token_file: str, tokens: Sequence,
                      index_file: Optional[str] = None,
                      images_per_chunk: int = 4096) -> np.ndarray:
    """Write the data and index files of ``tokens`` (one integer array per
    image, an ``(N, ...)`` array, or a token file / conversion source: see
    :func:`~.token_arrays.iter_image_chunks`), encoding
    ``images_per_chunk`` images at a time. Returns the
    index (N + 1 byte offsets). Nothing is written if a code cannot be
    stored."""
    token_file = str(token_file)
    index_file = str(index_file or index_file_for(token_file))
    index = [np.zeros(1, dtype=np.int64)]

    def write_stream(gz):
        end = 0
        for first, images in iter_image_chunks(tokens, images_per_chunk):
            stream, part = encode_codes(images, token_file, first)
            gz.write(stream.tobytes())
            index.append(part[1:] + end)
            end += int(part[-1])

    def write_index(gz):
        np.save(gz, np.concatenate(index), allow_pickle=False)

    write_file_atomic(token_file, _gzip_writer(write_stream))
    write_file_atomic(index_file, _gzip_writer(write_index))
    return np.concatenate(index)


def write_seit_labels(label_file: str, labels: Sequence[int]) -> None:
    """Write one integer class id per line."""
    text = ''.join(f'{int(label)}\n' for label in labels)
    write_file_atomic(str(label_file), lambda f: f.write(text.encode('ascii')))


def write_seit_codebook(codebook_file: str, codebook) -> None:
    """Save the ``(K, D)`` codebook as a bare tensor (``torch.load`` gives
    it back, as SeiT loads it)."""
    codebook = torch.as_tensor(codebook).detach().cpu()
    if codebook.dim() != 2:
        raise SeiTFormatError(
            f'{codebook_file}: the codebook must be (K, D), got shape '
            f'{tuple(codebook.shape)}')
    save_checkpoint_atomic(codebook.contiguous().clone(), codebook_file)


def write_seit(token_file: str, tokens: Sequence,
               labels: Optional[Sequence[int]] = None,
               label_file: Optional[str] = None, codebook=None,
               codebook_file: Optional[str] = None,
               index_file: Optional[str] = None) -> np.ndarray:
    """Write a split: data + index files, and the label file / codebook
    when given. Returns the index."""
    if (labels is None) != (label_file is None):
        raise ValueError('give both labels and label_file, or neither')
    if (codebook is None) != (codebook_file is None):
        raise ValueError('give both codebook and codebook_file, or neither')
    if labels is not None and len(labels) != len(tokens):
        raise SeiTFormatError(
            f'{label_file}: {len(labels)} labels for {len(tokens)} images')
    index = write_seit_tokens(token_file, tokens, index_file)
    if labels is not None:
        write_seit_labels(label_file, labels)
    if codebook is not None:
        write_seit_codebook(codebook_file, codebook)
    return index


def _read_gzip(filename: str) -> Tuple[bytes, Optional[str]]:
    """``(bytes, problem)``: what decompresses, and why it stopped early
    (None when the gzip stream is complete)."""
    if not osp.isfile(filename):
        raise SeiTFormatError(f'SeiT file {filename} does not exist')
    chunks: List[bytes] = []
    problem = None
    with open(filename, 'rb') as raw:
        try:
            with gzip.GzipFile(fileobj=raw, mode='rb') as gz:
                while True:
                    chunk = gz.read(_CHUNK)
                    if not chunk:
                        break
                    chunks.append(chunk)
        except EOFError as err:
            problem = f'truncated ({err})'
        except (OSError, zlib.error) as err:
            problem = f'not a valid gzip file ({type(err).__name__}: {err})'
    return b''.join(chunks), problem


def read_seit_index(index_file: str) -> np.ndarray:
    """Load and check an index file: a 1-D integer array of at least one
    offset, starting at 0 and never decreasing."""
    index_file = str(index_file)
    raw, problem = _read_gzip(index_file)
    if problem:
        raise SeiTFormatError(f'SeiT index file {index_file} is {problem}')
    try:
        index = np.load(io.BytesIO(raw), allow_pickle=False)
    except Exception as err:  # a damaged .npy surfaces as many types
        raise SeiTFormatError(
            f'SeiT index file {index_file} does not hold a readable .npy '
            f'array ({type(err).__name__}: {err})') from None
    if index.ndim != 1 or index.size < 1 or not np.issubdtype(
            index.dtype, np.integer):
        raise SeiTFormatError(
            f'SeiT index file {index_file}: expected a 1-D integer array of '
            f'N + 1 offsets, got {index.dtype} of shape {index.shape}')
    index = index.astype(np.int64)
    if index[0] != 0:
        raise SeiTFormatError(
            f'SeiT index file {index_file}: image 0 starts at offset '
            f'{int(index[0])}, not 0')
    down = np.flatnonzero(np.diff(index) < 0)
    if down.size:
        i = int(down[0])
        raise SeiTFormatError(
            f'SeiT index file {index_file} is not monotone: image {i} spans '
            f'[{int(index[i])}, {int(index[i + 1])})')
    return index


def read_seit_labels(label_file: str) -> np.ndarray:
    """One integer class id per line (surrounding whitespace ignored)."""
    label_file = str(label_file)
    if not osp.isfile(label_file):
        raise SeiTFormatError(f'SeiT label file {label_file} does not exist')
    with open(label_file, 'rb') as f:
        raw = f.read()
    try:
        lines = raw.decode('utf-8').splitlines()
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b'\n') + 1
        raise SeiTFormatError(
            f'SeiT label file {label_file}: line {line} (image {line - 1}) '
            f'is not text (byte {raw[err.start]:#04x} at offset '
            f'{err.start})') from None
    labels = np.empty(len(lines), dtype=np.int64)
    for i, line in enumerate(lines):
        try:
            labels[i] = int(line.strip())
        except ValueError:
            raise SeiTFormatError(
                f'SeiT label file {label_file}: line {i + 1} (image {i}) is '
                f'not an integer: {line!r}') from None
    return labels


def read_seit_codebook(codebook_file: str) -> torch.Tensor:
    """Load the ``(K, D)`` codebook tensor safely."""
    try:
        codebook = load_checkpoint_file(codebook_file, map_location='cpu')
    except CheckpointLoadError as err:
        raise SeiTFormatError(f'SeiT codebook: {err}') from None
    if not isinstance(codebook, torch.Tensor) or codebook.dim() != 2:
        raise SeiTFormatError(
            f'SeiT codebook {codebook_file}: expected a bare (K, D) tensor')
    return codebook


class SeiTTokenFile:
    """Random access to a SeiT split held in memory (as SeiT does).

    ``tokens[i]`` decodes image i to its ``int64`` codes (flat, or
    ``grid``-shaped when ``grid`` is given). Attributes: ``stream`` (the
    decompressed bytes as ``uint8``), ``index`` (N + 1 byte offsets),
    ``labels`` (``int64`` array or None), ``codebook`` (tensor or None).

    Args:
        token_file: the ``*.data.bin.gz`` file.
        label_file / codebook_file: optional.
        index_file: default :func:`index_file_for`.
        grid: e.g. ``(32, 32)``: every image must have that many codes.
        validate: run :meth:`check` at load, so a corrupt file fails at
            once rather than on access.
    """

    def __init__(self, token_file: str, label_file: Optional[str] = None,
                 codebook_file: Optional[str] = None,
                 index_file: Optional[str] = None,
                 grid: Optional[Sequence[int]] = None,
                 validate: bool = True):
        self.token_file = str(token_file)
        self.index_file = str(index_file or index_file_for(token_file))
        self.grid = tuple(int(g) for g in grid) if grid else None
        self.index = read_seit_index(self.index_file)
        raw, problem = _read_gzip(self.token_file)
        self.stream = np.frombuffer(raw, dtype=np.uint8)
        total = int(self.index[-1])
        if problem or self.stream.size != total:
            self._raise_length_error(problem)
        self.labels = (read_seit_labels(label_file)
                       if label_file is not None else None)
        if self.labels is not None and self.labels.size != len(self):
            raise SeiTFormatError(
                f'SeiT label file {label_file} has {self.labels.size} labels '
                f'but {self.index_file} indexes {len(self)} images')
        self.codebook = (read_seit_codebook(codebook_file)
                         if codebook_file is not None else None)
        if validate:
            self.check()

    def _raise_length_error(self, problem):
        size = self.stream.size
        what = (f'SeiT token file {self.token_file} is {problem}' if problem
                else f'SeiT token file {self.token_file} holds {size} bytes')
        if size < self.index[-1]:
            image = int(np.searchsorted(self.index[1:], size, side='right'))
            raise SeiTFormatError(
                f'{what}: image {image} (offsets [{int(self.index[image])}, '
                f'{int(self.index[image + 1])})) and later ones are missing; '
                f'{self.index_file} indexes {int(self.index[-1])} bytes')
        if problem:
            raise SeiTFormatError(what)
        raise SeiTFormatError(
            f'{what}, but {self.index_file} indexes only '
            f'{int(self.index[-1])} bytes (after image {len(self) - 1})')

    def __len__(self) -> int:
        return self.index.size - 1

    def _shape(self, codes: np.ndarray, image: int) -> np.ndarray:
        if self.grid is None:
            return codes
        if codes.size != int(np.prod(self.grid)):
            raise SeiTFormatError(
                f'{self.token_file}: image {image} has {codes.size} codes, '
                f'expected a {self.grid} grid')
        return codes.reshape(self.grid)

    def __getitem__(self, image: int) -> np.ndarray:
        n = len(self)
        if not -n <= image < n:
            raise IndexError(
                f'{self.token_file}: image index {image} out of range for '
                f'{n} images')
        image = int(image) % n
        start, stop = int(self.index[image]), int(self.index[image + 1])
        codes = decode_image(self.stream[start:stop], image,
                             self.token_file, start)
        return self._shape(codes, image)

    def check(self, chunk_bytes: int = _CHUNK) -> None:
        """Check every image's escapes (and code count, when ``grid`` is
        set), vectorised over runs of whole images of about
        ``chunk_bytes`` bytes so memory stays bounded on large files."""
        n = len(self)
        total = int(self.index[-1])
        cuts = np.searchsorted(self.index,
                               np.arange(chunk_bytes, total, chunk_bytes))
        cuts = np.unique(np.concatenate([[0], np.clip(cuts, 0, n), [n]]))
        for first, stop in zip(cuts[:-1].tolist(), cuts[1:].tolist()):
            start = int(self.index[first])
            local = self.index[first:stop + 1] - start
            part = self.stream[start:start + int(local[-1])]
            err = _position_errors(part, local)
            if err is not None:
                image, kind, pos = err
                _raise_escape_error(self.token_file, first + image, kind,
                                    start + pos, start + int(local[image]))
            if self.grid is None:
                continue
            escapes = np.diff(np.searchsorted(
                np.flatnonzero(part == ESCAPE), local))
            counts = np.diff(local) - escapes
            bad = np.flatnonzero(counts != int(np.prod(self.grid)))
            if bad.size:
                self[first + int(bad[0])]  # raises, naming the image

    def decode_all(self) -> Tuple[np.ndarray, np.ndarray]:
        """``(codes, code_offsets)`` of every image (see
        :func:`decode_stream`); checks grids when ``grid`` is set."""
        codes, offsets = decode_stream(self.stream, self.index,
                                       self.token_file)
        if self.grid is not None:
            bad = np.flatnonzero(np.diff(offsets) != int(np.prod(self.grid)))
            if bad.size:
                i = int(bad[0])
                self._shape(codes[offsets[i]:offsets[i + 1]], i)
        return codes, offsets
