"""vistok.datasets.compact_format: exact round trips, the documented layout
read by an independent parser, compression close to the entropy, and
corruption reported per image."""
import binascii
import json
import pickle
import zlib

import constriction
import numpy as np
import pytest

from vistok.datasets.compact_format import (
    MAGIC,
    CompactFormatError,
    CompactTokenFile,
    tokens_sha256,
    write_compact,
)

K = 391
LEVELS = [dict(name='level0', shape=[1, 1]), dict(name='level1',
                                                    shape=[2, 3]),
          dict(name='level2', shape=[5]), dict(name='level3',
                                                shape=[2, 4, 4])]
PER_IMAGE = 1 + 6 + 5 + 32


def zipf(n, length, seed=0, size=K):
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, size + 1)
    return rng.choice(size, size=(n, length), p=p / p.sum())


def entropy_bytes(codes):
    counts = np.bincount(codes.reshape(-1))
    p = counts[counts > 0] / codes.size
    return -(p * np.log2(p)).sum() * codes.size / 8


def parse(path):
    """The layout of the module docstring, read without vistok."""
    raw = open(path, 'rb').read()
    assert raw[:8] == MAGIC
    size = int(np.frombuffer(raw[8:16], '<u8')[0])
    header = json.loads(raw[16:16 + size])
    payload = 16 + size

    def section(name):
        spec = header['sections'][name]
        dtype = np.dtype(spec['dtype'])
        start = payload + spec['offset']
        count = int(np.prod(spec['shape']))
        return np.frombuffer(raw[start:start + count * dtype.itemsize],
                             dtype).reshape(spec['shape'])

    return header, section, payload


@pytest.mark.parametrize('model', ['order0', 'context'])
def test_round_trip_of_multi_level_images_with_labels(tmp_path, model):
    codes = zipf(40, PER_IMAGE, size=37)
    codes[3] = 36  # constant image: every neighbour symbol is used
    labels = np.arange(40) % 7
    sample_idx = np.arange(40)[::-1] * 10
    path = tmp_path / 'a.vtok'
    header = write_compact(path, list(codes), 37, levels=LEVELS,
                           structure='list', model=model, labels=labels,
                           sample_idx=sample_idx, metadata=dict(seed=3))
    tokens = CompactTokenFile(path)
    assert len(tokens) == 40 and tokens.structure == 'list'
    np.testing.assert_array_equal(tokens.read_batch(range(40)), codes)
    np.testing.assert_array_equal(tokens[-1], codes[39])
    np.testing.assert_array_equal(tokens.labels, labels)
    np.testing.assert_array_equal(tokens.sample_idx, sample_idx)
    assert header['metadata'] == dict(seed=3)
    levels = tokens.split_levels(tokens[5])
    assert [lv.shape for lv in levels] == [(1, 1), (2, 3), (5, ), (2, 4, 4)]
    np.testing.assert_array_equal(levels[3].reshape(-1), codes[5, 12:])
    assert header['tokens_sha256'] == tokens_sha256([codes])
    tokens.verify()
    clone = pickle.loads(pickle.dumps(tokens))
    np.testing.assert_array_equal(clone[7], codes[7])
    # deterministic: the same data gives the same bytes
    write_compact(tmp_path / 'b.vtok', codes, 37, levels=LEVELS,
                  structure='list', model=model, labels=labels,
                  sample_idx=sample_idx, metadata=dict(seed=3))
    assert (tmp_path / 'b.vtok').read_bytes() == path.read_bytes()


def test_layout_decodes_with_constriction_alone(tmp_path):
    codes = zipf(12, 64)
    path = tmp_path / 'z.vtok'
    write_compact(path, codes.reshape(12, 8, 8), K)
    header, section, _ = parse(path)
    assert header['levels'] == [dict(name='indices', shape=[8, 8])]
    assert header['model_tables'] == [['codes', [K]]]
    counts = np.frombuffer(zlib.decompress(section('model').tobytes()),
                           '<u4')
    np.testing.assert_array_equal(counts, np.bincount(codes.reshape(-1),
                                                      minlength=K))
    model = constriction.stream.model.Categorical(
        counts.astype(np.float64), perfect=False)
    offsets = np.concatenate([[0], np.cumsum(section('lengths'))]).astype(int)
    data = section('data')
    for i in range(12):
        words = data[offsets[i]:offsets[i + 1]]
        assert binascii.crc_hqx(words.tobytes(), 0) == section(
            'checksums')[i]
        decoder = constriction.stream.queue.RangeDecoder(
            words.astype(np.uint32))
        np.testing.assert_array_equal(decoder.decode(model, 64), codes[i])


def test_order0_is_within_one_percent_of_the_entropy_and_context_pays(
        tmp_path):
    codes = zipf(2000, 1024)  # the benchmark (a)
    path = tmp_path / 'z.vtok'
    write_compact(path, codes, K)
    size = path.stat().st_size  # header, model table, lengths, checksums
    assert size <= 1.01 * entropy_bytes(codes)
    # tokens with large flat regions (as a tokenizer gives on background):
    # the neighbour context codes them far below their order-0 entropy
    rng = np.random.default_rng(1)
    blocks = rng.integers(0, K, size=(300, 4, 4))
    flat = np.repeat(np.repeat(blocks, 8, 1), 8, 2).reshape(300, 1024)
    write_compact(tmp_path / 'o.vtok', flat.reshape(300, 32, 32), K)
    write_compact(tmp_path / 'c.vtok', flat.reshape(300, 32, 32), K,
                  model='context')
    order0 = (tmp_path / 'o.vtok').stat().st_size
    context = (tmp_path / 'c.vtok').stat().st_size
    assert order0 >= 0.99 * entropy_bytes(flat)
    assert context < 0.2 * order0
    np.testing.assert_array_equal(
        CompactTokenFile(tmp_path / 'c.vtok').read_batch([0, 299]),
        flat[[0, 299]])


def _image_bytes(path, image):
    """Byte range of one image's coded words in the file."""
    header, section, payload = parse(path)
    offsets = np.concatenate([[0], np.cumsum(section('lengths'))]).astype(int)
    start = payload + header['sections']['data']['offset']
    return (int(start + 4 * offsets[image]),
            int(start + 4 * offsets[image + 1]))


@pytest.mark.parametrize('model', ['order0', 'context'])
def test_images_decode_alone_and_damage_is_named(tmp_path, model):
    codes = zipf(9, 100, size=20)
    path = tmp_path / 'd.vtok'
    write_compact(path, codes.reshape(9, 10, 10), 20, model=model)
    clean = path.read_bytes()
    # every other image's bytes overwritten: image 4 still decodes
    raw = bytearray(clean)
    for i in range(9):
        if i != 4:
            start, stop = _image_bytes(path, i)
            raw[start:stop] = b'\xa5' * (stop - start)
    path.write_bytes(bytes(raw))
    tokens = CompactTokenFile(path)
    np.testing.assert_array_equal(tokens[4], codes[4])
    with pytest.raises(CompactFormatError, match=r'd\.vtok: image 3 is '
                       'corrupt'):
        tokens[3]
    # one flipped byte inside image 6 is reported as image 6
    raw = bytearray(clean)
    start, stop = _image_bytes(path, 6)
    raw[(start + stop) // 2] ^= 0x10
    path.write_bytes(bytes(raw))
    tokens = CompactTokenFile(path)
    with pytest.raises(CompactFormatError, match='image 6 is corrupt'):
        tokens[6]
    np.testing.assert_array_equal(tokens[5], codes[5])
    with pytest.raises(CompactFormatError, match='image 6 is corrupt'):
        tokens.verify()


def test_truncation_probe_and_missed_corruption_are_errors(tmp_path):
    codes = zipf(10, 64, size=30)
    path = tmp_path / 't.vtok'
    write_compact(path, codes, 30)
    clean = path.read_bytes()
    start, _ = _image_bytes(path, 7)
    path.write_bytes(clean[:start + 2])
    with pytest.raises(CompactFormatError, match=r'truncated: image 7 \(of '
                       r'10\)'):
        CompactTokenFile(path)
    path.write_bytes(clean[:20])
    with pytest.raises(CompactFormatError, match='truncated inside its '
                       'header'):
        CompactTokenFile(path)
    path.write_bytes(b'not a token file')
    with pytest.raises(CompactFormatError, match='not a compact token file'):
        CompactTokenFile(path)
    # a coder that quantises the counts differently is refused
    size = int(np.frombuffer(clean[8:16], '<u8')[0])
    header = json.loads(clean[16:16 + size])
    header['coder_probe'] ^= 1
    text = json.dumps(header, sort_keys=True).encode()
    text += b' ' * (size - len(text))
    path.write_bytes(clean[:16] + text + clean[16 + size:])
    with pytest.raises(CompactFormatError, match='model quantisation'):
        CompactTokenFile(path)
    # damage whose checksum was forged decodes, but verify() catches it
    path.write_bytes(clean)
    start, stop = _image_bytes(path, 2)
    header, _, payload = parse(path)
    raw = bytearray(clean)
    raw[start] ^= 0x01
    forged = binascii.crc_hqx(bytes(raw[start:stop]), 0)
    position = payload + header['sections']['checksums']['offset'] + 2 * 2
    raw[position:position + 2] = np.array(forged, '<u2').tobytes()
    path.write_bytes(bytes(raw))
    tokens = CompactTokenFile(path)
    assert not np.array_equal(tokens[2], codes[2])
    with pytest.raises(CompactFormatError, match='tokens_sha256'):
        tokens.verify()


def test_bad_input_is_refused_naming_the_image(tmp_path):
    codes = zipf(5, 16, size=10)
    codes[3, 4] = 10
    with pytest.raises(CompactFormatError, match=r'image 3 has code 10 '
                       r'\(position 4\), outside \[0, 10\)'):
        write_compact(tmp_path / 'x.vtok', codes, 10)
    assert not (tmp_path / 'x.vtok').exists()
    with pytest.raises(CompactFormatError, match='image 1 has 15 codes'):
        write_compact(tmp_path / 'x.vtok', [codes[0], codes[1, :15]], 11,
                      levels=[dict(name='indices', shape=[16])])
    with pytest.raises(ValueError, match='model must be one of'):
        write_compact(tmp_path / 'x.vtok', codes, 11, model='order2')
    with pytest.raises(CompactFormatError, match='3 labels for 5 images'):
        write_compact(tmp_path / 'x.vtok', codes, 11, labels=[1, 2, 3])
