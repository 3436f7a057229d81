"""Damaged token stores are reported, never read as tokens (issue 17,
item 5): webdataset token shards (+ manifest), SeiT files and compact
files fed random bytes, truncated files and one flipped bit.

What each format guarantees, and what is asserted:

* **token shards** (``TokenShardDataset``): a damaged manifest raises a
  ``ValueError`` naming a file of the export, or reads the same samples
  (a flip in a provenance field); a damaged shard raises a ``ValueError``
  naming the shard, or (without ``verify``) gives samples of the
  manifest's structure, shapes, dtype and id range — a flipped id bit that
  stays in range is only caught by ``verify=True`` (each shard's sha256 in
  the manifest), which catches every change.
* **SeiT files**: the token and index files are gzip (CRC-32 of the
  content): any damage raises a ``SeiTFormatError`` naming the file or
  decodes to the same tokens (a flip in the gzip header's time stamp);
  the codebook is a torch file (record CRC-32s, see
  ``test_prop_checkpoint_loading``). The label file is plain text without
  a checksum: damage is an error naming it, or still one integer per image
  (a changed digit is a valid label).
* **compact files**: any damage raises a ``CompactFormatError`` naming the
  file, or reads the same codes (through every image and
  ``verify()``'s ``tokens_sha256``); a flipped bit inside image ``i``'s
  coded bytes is caught by its CRC-16 when image ``i`` is read (naming
  the image) while every other image still decodes exactly; a cut file
  names the first image it cuts. The labels / sample_idx sections have no
  checksum (not asserted).
"""
import io
import json
import os
import os.path as osp
import tarfile
import tempfile

import numpy as np
import torch
from _properties import examples, flip_bit
from hypothesis import given
from hypothesis import strategies as st

from vistok.datasets.compact_format import (
    MAGIC,
    CompactFormatError,
    CompactTokenFile,
    write_compact,
)
from vistok.datasets.seit_format import (
    SeiTFormatError,
    SeiTTokenFile,
    write_seit,
)
from vistok.datasets.token_files import SeiTTokenDataset
from vistok.datasets.token_shards import (
    TokenShardDataset,
    TokenShardWriter,
    index_dtype,
)

NUM_IMAGES = 5
CODEBOOK = 200  # ids fit uint8: a flip in a uint8 id can leave the range
SEIT_CODEBOOK = 400  # SeiT escapes codes >= 255: both byte forms occur
GRID = (2, 3)
RNG = np.random.default_rng(0)
#: list-structured tokens of two levels, as a multi-scale quantizer's
TOKENS = [[RNG.integers(0, CODEBOOK, (1, 1)),
           RNG.integers(0, CODEBOOK, (2, 2))] for _ in range(NUM_IMAGES)]
LABELS = [3, 1, 4, 1, 5]
SEIT_TOKENS = [RNG.integers(0, SEIT_CODEBOOK, GRID)
               for _ in range(NUM_IMAGES)]
COMPACT_TOKENS = RNG.integers(0, 16, (NUM_IMAGES, 6))
MODELS = ('order0', 'context')


def _read_dir(directory: str) -> dict:
    return {name: open(osp.join(directory, name), 'rb').read()
            for name in sorted(os.listdir(directory))}


def _write_dir(directory: str, files: dict) -> None:
    for name, data in files.items():
        with open(osp.join(directory, name), 'wb') as f:
            f.write(data)


def _make_stores() -> dict:
    """The bytes of every file of a valid store of each format."""
    stores = {}
    with tempfile.TemporaryDirectory() as tmp:
        wds = osp.join(tmp, 'wds')
        identity = dict(config_sha256='c' * 64, checkpoint_sha256='k' * 64,
                        dataset_sha256='d' * 64, data='train', seed=0,
                        num_samples=NUM_IMAGES, shard_size=3,
                        codebook_size=CODEBOOK,
                        dtype=index_dtype(CODEBOOK).name)
        writer = TokenShardWriter(wds, identity)
        for shard, start, stop in list(writer.pending_shards()):
            writer.write_shard(shard, 'list', [
                dict(levels=TOKENS[i], position=i, gt_label=LABELS[i],
                     sample_idx=100 + i) for i in range(start, stop)])
        stores['wds'] = _read_dir(wds)
        seit = osp.join(tmp, 'seit')
        os.makedirs(seit)
        write_seit(osp.join(seit, 'd-token.data.bin.gz'), SEIT_TOKENS,
                   labels=LABELS, label_file=osp.join(seit, 'd-label.txt'),
                   codebook=torch.arange(SEIT_CODEBOOK * 2.).reshape(-1, 2),
                   codebook_file=osp.join(seit, 'codebook.ckpt'))
        stores['seit'] = _read_dir(seit)
        for model in MODELS:
            path = osp.join(tmp, f'{model}.vtk')
            write_compact(path, COMPACT_TOKENS, 16, model=model,
                          levels=[dict(name='indices', shape=[2, 3])],
                          labels=LABELS)
            stores[model] = open(path, 'rb').read()
    return stores


STORES = _make_stores()
SHARD = 'tokens-000000.tar'
SEIT_FILES = sorted(STORES['seit'])


def _damage(draw_kind: str, data: bytes, draw) -> bytes:
    """Random bytes, a cut at any byte, or one flipped bit of ``data``."""
    if draw_kind == 'random':
        return draw(st.binary(max_size=2 * len(data)))
    if draw_kind == 'cut':
        return data[:draw(st.integers(0, len(data) - 1))]
    return flip_bit(data, draw(st.integers(0, len(data) - 1)),
                    draw(st.integers(0, 7)))


DAMAGES = st.sampled_from(['random', 'cut', 'flip'])


# --- webdataset token shards -----------------------------------------------
def _read_export(root: str, verify: bool) -> list:
    dataset = TokenShardDataset(root, verify=verify)
    return [dataset[i] for i in range(len(dataset))]


def _expected_samples() -> list:
    return [dict(indices=[torch.from_numpy(level.astype(np.int64))
                          for level in TOKENS[i]],
                 sample_idx=100 + i, gt_label=LABELS[i])
            for i in range(NUM_IMAGES)]


def _equal_samples(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        x.keys() == y.keys() and x['sample_idx'] == y['sample_idx']
        and x['gt_label'] == y['gt_label']
        and len(x['indices']) == len(y['indices'])
        and all(torch.equal(p, q) for p, q in zip(x['indices'],
                                                   y['indices']))
        for x, y in zip(a, b))


def _well_formed(samples: list) -> bool:
    """What a damaged shard may still give without ``verify``: the
    manifest's structure, shapes and id range, integer metadata."""
    return len(samples) == NUM_IMAGES and all(
        isinstance(s['indices'], list) and [tuple(t.shape) for t in
                                            s['indices']] == [(1, 1), (2, 2)]
        and all(t.dtype == torch.int64 and 0 <= int(t.min())
                and int(t.max()) < CODEBOOK for t in s['indices'])
        and isinstance(s['sample_idx'], int)
        and isinstance(s['gt_label'], int) for s in samples)


@examples(100)
@given(target=st.sampled_from([SHARD, 'manifest.json']), kind=DAMAGES,
       verify=st.booleans(), draw=st.data())
def test_damaged_token_shards_are_reported(target, kind, verify, draw):
    files = dict(STORES['wds'])
    files[target] = _damage(kind, files[target], draw.draw)
    with tempfile.TemporaryDirectory() as root:
        _write_dir(root, files)
        try:
            samples = _read_export(root, verify)
        except (ValueError, FileNotFoundError) as err:
            assert root in str(err) and ('manifest.json' in str(err)
                                         or 'tokens-0000' in str(err)), err
            return
    assert not (kind == 'random' or target == SHARD and verify
                and files[target] != STORES['wds'][target]), (
        'damage was read as tokens')
    if target == 'manifest.json':
        assert _equal_samples(samples, _expected_samples())
    elif kind == 'cut':  # only the tar's zero padding was cut
        assert _equal_samples(samples, _expected_samples())
    else:
        assert _well_formed(samples)


def _npy_bytes(shard: bytes) -> list:
    """``(byte offset in the shard, position, member, k)`` of every byte of
    the stored ``.npy`` arrays, located with :mod:`tarfile` and the ``.npy``
    v1 layout (magic, version, little-endian header length, header, data):
    ``k`` is the id's index in its level (row-major, uint8 ids), None for a
    byte of the ``.npy`` header."""
    out = []
    with tarfile.open(fileobj=io.BytesIO(shard)) as tar:
        for info in tar.getmembers():
            if not info.name.endswith('.npy'):
                continue
            member = shard[info.offset_data:info.offset_data + info.size]
            data_start = 10 + int.from_bytes(member[8:10], 'little')
            position = int(info.name.split('.')[0])
            out += [(info.offset_data + k, position, info.name,
                     None if k < data_start else k - data_start)
                    for k in range(info.size)]
    return out


NPY_BYTES = _npy_bytes(STORES['wds'][SHARD])
HEADER_BYTES = [where for where in NPY_BYTES if where[3] is None]
ID_BYTES = [where for where in NPY_BYTES if where[3] is not None]


def _read_damaged_shard(shard: bytes):
    """``(samples, None)`` or ``(None, error)`` of the export with
    ``shard`` as its first shard (no ``verify``), and the shard's path."""
    with tempfile.TemporaryDirectory() as root:
        _write_dir(root, dict(STORES['wds'], **{SHARD: shard}))
        try:
            return _read_export(root, verify=False), None, \
                osp.join(root, SHARD)
        except ValueError as err:
            return None, err, osp.join(root, SHARD)


@examples(60)
@given(where=st.sampled_from(HEADER_BYTES), bit=st.integers(0, 7))
def test_a_flip_in_an_npy_header_is_caught(where, bit):
    """A damaged ``.npy`` header raises naming the shard and the sample,
    or changes nothing (e.g. whitespace)."""
    offset, position, member, _ = where
    samples, err, path = _read_damaged_shard(
        flip_bit(STORES['wds'][SHARD], offset, bit))
    if err is not None:
        assert f'{path}: sample {position} ({member})' in str(err), err
    else:
        assert _equal_samples(samples, _expected_samples())


@examples(60)
@given(where=st.sampled_from(ID_BYTES), new_id=st.integers(0, 255))
def test_an_id_out_of_range_is_caught(where, new_id):
    """A stored id replaced by one outside the manifest's ``[0,
    codebook_size)`` raises naming the shard and the sample; one inside
    reads as the new id (only ``verify`` catches that)."""
    offset, position, member, k = where
    shard = bytearray(STORES['wds'][SHARD])
    shard[offset] = new_id
    samples, err, path = _read_damaged_shard(bytes(shard))
    if new_id >= CODEBOOK:
        assert err is not None, f'id {new_id} was read'
        assert f'{path}: sample {position} ({member}) has ids in' in str(
            err), err
        return
    assert err is None, err
    level = 0 if member.endswith('level0.npy') else 1
    assert int(samples[position]['indices'][level].reshape(-1)[k]) == new_id


def test_undamaged_token_shards_read_exactly():
    with tempfile.TemporaryDirectory() as root:
        _write_dir(root, STORES['wds'])
        for verify in (False, True):
            assert _equal_samples(_read_export(root, verify),
                                  _expected_samples())


# --- SeiT files ------------------------------------------------------------
def _read_seit(root: str):
    dataset = SeiTTokenDataset(osp.join(root, 'd-token.data.bin.gz'),
                               label_file=osp.join(root, 'd-label.txt'),
                               grid=GRID, validate=True)
    items = [dataset[i] for i in range(len(dataset))]
    codebook = SeiTTokenFile(osp.join(root, 'd-token.data.bin.gz'),
                             codebook_file=osp.join(root, 'codebook.ckpt'),
                             grid=GRID).codebook
    return items, codebook


@examples(100)
@given(target=st.sampled_from(SEIT_FILES), kind=DAMAGES, draw=st.data())
def test_damaged_seit_files_are_reported(target, kind, draw):
    files = dict(STORES['seit'])
    files[target] = _damage(kind, files[target], draw.draw)
    with tempfile.TemporaryDirectory() as root:
        _write_dir(root, files)
        try:
            items, codebook = _read_seit(root)
        except SeiTFormatError as err:
            assert osp.join(root, target) in str(err), err
            return
    assert len(items) == NUM_IMAGES
    if target == 'd-label.txt':  # text: a changed digit is a valid label
        assert all(isinstance(item['gt_label'], int) for item in items)
        labels_changed = True
    else:
        labels_changed = False
    for i, item in enumerate(items):
        assert torch.equal(item['indices'], torch.from_numpy(SEIT_TOKENS[i]))
        assert labels_changed or item['gt_label'] == LABELS[i]
    assert torch.equal(codebook,
                       torch.arange(SEIT_CODEBOOK * 2.).reshape(-1, 2))
    assert kind != 'random' or target == 'd-label.txt'


# --- compact files -----------------------------------------------------------
def _layout(data: bytes):
    """``(data section start, per-image word offsets)`` of a compact file,
    parsed from its documented layout without vistok."""
    size = int(np.frombuffer(data[8:16], '<u8')[0])
    header = json.loads(data[16:16 + size])
    payload = 16 + size
    spec = header['sections']['lengths']
    start = payload + spec['offset']
    lengths = np.frombuffer(data[start:], np.dtype(spec['dtype']),
                            count=spec['shape'][0])
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(int)
    return payload + header['sections']['data']['offset'], offsets


def _read_compact(path: str) -> np.ndarray:
    store = CompactTokenFile(path)
    codes = store.read_batch(range(len(store)))
    store.verify()
    return codes


@examples(100)
@given(model=st.sampled_from(MODELS), kind=DAMAGES, draw=st.data())
def test_damaged_compact_files_are_reported(model, kind, draw):
    valid = STORES[model]
    damaged = _damage(kind, valid, draw.draw)
    data_start, offsets = _layout(valid)
    with tempfile.TemporaryDirectory() as root:
        path = osp.join(root, 'tokens.vtk')
        _write_dir(root, {'tokens.vtk': damaged})
        try:
            codes = _read_compact(path)
        except CompactFormatError as err:
            assert path in str(err), err
            data_end = data_start + 4 * offsets[-1]
            if kind == 'cut' and data_start < len(damaged) < data_end:
                first_cut = int(np.searchsorted(
                    data_start + 4 * offsets[1:], len(damaged),
                    side='right'))
                assert f'image {first_cut} ' in str(err), err
            return
    assert kind != 'random' and damaged[:len(MAGIC)] == MAGIC
    np.testing.assert_array_equal(codes, COMPACT_TOKENS)


def test_every_flip_of_the_header_length_is_caught():
    """Exhaustive over the 64 bits of the header length (a huge length must
    not be read, nor a shifted one taken as the layout)."""
    for model in MODELS:
        for bit in range(64):
            damaged = flip_bit(STORES[model], len(MAGIC) + bit // 8, bit % 8)
            with tempfile.TemporaryDirectory() as root:
                path = osp.join(root, 'tokens.vtk')
                _write_dir(root, {'tokens.vtk': damaged})
                try:
                    codes = _read_compact(path)
                except CompactFormatError as err:
                    assert path in str(err), err
                    continue
            np.testing.assert_array_equal(codes, COMPACT_TOKENS)


@examples(60)
@given(model=st.sampled_from(MODELS), image=st.integers(0, NUM_IMAGES - 1),
       offset=st.integers(0, 1 << 16), bit=st.integers(0, 7))
def test_a_flip_in_an_image_is_caught_and_isolated(model, image, offset,
                                                   bit):
    """CRC-16 detects every single-bit error: reading the damaged image
    raises naming it; the other images never read its bytes."""
    valid = STORES[model]
    data_start, offsets = _layout(valid)
    first, stop = (data_start + 4 * offsets[image],
                   data_start + 4 * offsets[image + 1])
    damaged = flip_bit(valid, first + offset % (stop - first), bit)
    with tempfile.TemporaryDirectory() as root:
        path = osp.join(root, 'tokens.vtk')
        _write_dir(root, {'tokens.vtk': damaged})
        store = CompactTokenFile(path)
        for i in range(NUM_IMAGES):
            if i != image:
                np.testing.assert_array_equal(store[i], COMPACT_TOKENS[i])
                continue
            try:
                store[i]
            except CompactFormatError as err:
                assert f'{path}: image {image} is corrupt' in str(err), err
            else:
                raise AssertionError(f'damaged image {image} was decoded')


def test_undamaged_stores_read_exactly():
    with tempfile.TemporaryDirectory() as root:
        _write_dir(root, STORES['seit'])
        items, _ = _read_seit(root)
        assert [item['gt_label'] for item in items] == LABELS
        for model in MODELS:
            _write_dir(root, {'c.vtk': STORES[model]})
            np.testing.assert_array_equal(
                _read_compact(osp.join(root, 'c.vtk')), COMPACT_TOKENS)
