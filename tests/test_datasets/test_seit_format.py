import gzip
import io

import numpy as np
import pytest
import torch

from vistok.datasets.seit_format import (
    SeiTFormatError,
    SeiTTokenFile,
    decode_image,
    decode_stream,
    encode_codes,
    index_file_for,
    write_seit,
    write_seit_tokens,
)


def _tokens(seed=0, n=6, grid=(8, 8), high=510):
    rng = np.random.default_rng(seed)
    tokens = [rng.integers(0, high, size=grid) for _ in range(n)]
    tokens[0].flat[:4] = [0, 254, 255, 509]  # both edges of the escape
    return tokens


def _gunzip(path):
    with gzip.open(path, 'rb') as f:
        return f.read()


def _reference_stream(tokens):
    """The format rule with a plain per-code loop (independent of
    vistok's vectorised writer)."""
    stream, index = bytearray(), [0]
    for grid in tokens:
        for code in np.asarray(grid).reshape(-1).tolist():
            if code < 255:
                stream.append(code)
            else:
                stream.append(255)
                stream.append(code - 255)
        index.append(len(stream))
    return bytes(stream), np.array(index, dtype=np.int64)


def _reference_decode(data):
    """Per-byte reference decoder (the rule, strict on corruption)."""
    codes, pending = [], False
    for byte in bytes(data):
        if pending:
            assert byte != 255
            codes.append(255 + byte)
            pending = False
        elif byte == 255:
            pending = True
        else:
            codes.append(byte)
    assert not pending
    return codes


def _write_gz(path, payload):
    with open(path, 'wb') as raw:
        with gzip.GzipFile(filename='', mode='wb', fileobj=raw,
                           mtime=0) as gz:
            gz.write(payload)


def _write_raw(tmp_path, stream, index, name='t'):
    """Hand-made data + index files (no vistok writer)."""
    token_file = tmp_path / f'{name}-token.data.bin.gz'
    _write_gz(token_file, bytes(stream))
    buf = io.BytesIO()
    np.save(buf, np.asarray(index, dtype=np.int64))
    _write_gz(index_file_for(str(token_file)), buf.getvalue())
    return str(token_file)


def _write(tmp_path, tokens, name='split'):
    token_file = str(tmp_path / f'{name}-token.data.bin.gz')
    label_file = str(tmp_path / f'{name}-label.txt')
    codebook_file = str(tmp_path / f'{name}-codebook.ckpt')
    labels = list(range(len(tokens)))
    codebook = torch.arange(12 * 4, dtype=torch.float32).reshape(12, 4)
    write_seit(token_file, tokens, labels=labels, label_file=label_file,
               codebook=codebook, codebook_file=codebook_file)
    return token_file, label_file, codebook_file, labels, codebook


def test_round_trip_and_files(tmp_path):
    tokens = _tokens()
    token_file, label_file, codebook_file, labels, codebook = _write(
        tmp_path, tokens)
    ref_stream, ref_index = _reference_stream(tokens)
    # the files hold exactly the format: stream, .npy index, labels, tensor
    assert _gunzip(token_file) == ref_stream
    index = np.load(io.BytesIO(_gunzip(index_file_for(token_file))))
    np.testing.assert_array_equal(index, ref_index)
    with open(label_file) as f:
        assert [int(x.strip()) for x in f.readlines()] == labels
    assert torch.equal(torch.load(codebook_file, weights_only=True),
                       codebook)

    reader = SeiTTokenFile(token_file, label_file, codebook_file,
                           grid=(8, 8))
    assert len(reader) == len(tokens)
    assert reader.stream.tobytes() == ref_stream
    np.testing.assert_array_equal(reader.index, ref_index)
    np.testing.assert_array_equal(reader.labels, labels)
    assert torch.equal(reader.codebook, codebook)
    for i in (3, 0, len(tokens) - 1, -1):
        np.testing.assert_array_equal(reader[i], tokens[i])
    assert reader[0].dtype == np.int64 and reader[0].shape == (8, 8)
    codes, offsets = reader.decode_all()
    np.testing.assert_array_equal(
        codes, np.concatenate([t.reshape(-1) for t in tokens]))
    np.testing.assert_array_equal(offsets, np.arange(len(tokens) + 1) * 64)


def test_writes_are_deterministic(tmp_path):
    tokens = _tokens(seed=1)
    first = _write(tmp_path / 'a', tokens)[:3]
    second = _write(tmp_path / 'b', tokens)[:3]
    for a, b in zip(first + (index_file_for(first[0]),),
                    second + (index_file_for(second[0]),)):
        with open(a, 'rb') as fa, open(b, 'rb') as fb:
            assert fa.read() == fb.read(), a
    # gzip headers: no stored file name (FLG 0), mtime 0
    for path in (first[0], index_file_for(first[0])):
        with open(path, 'rb') as f:
            header = f.read(10)
        assert header[:4] == b'\x1f\x8b\x08\x00'
        assert header[4:8] == b'\x00\x00\x00\x00'
    # no temporary files left behind
    assert sorted(p.name for p in (tmp_path / 'a').iterdir()) == sorted(
        p.name for p in (tmp_path / 'b').iterdir())
    assert len(list((tmp_path / 'a').iterdir())) == 4
    # encoding a few images at a time writes the same bytes
    chunked = str(tmp_path / 'c-token.data.bin.gz')
    write_seit_tokens(chunked, tokens, images_per_chunk=2)
    for a, b in ((first[0], chunked),
                 (index_file_for(first[0]), index_file_for(chunked))):
        with open(a, 'rb') as fa, open(b, 'rb') as fb:
            assert fa.read() == fb.read(), b


def test_reads_an_independently_written_file(tmp_path):
    tokens = _tokens(seed=2, n=5, grid=(4, 6))
    tokens.append(np.zeros((4, 6), dtype=np.int64) + 300)
    stream, index = _reference_stream(tokens)
    token_file = _write_raw(tmp_path, stream, index)
    reader = SeiTTokenFile(token_file, grid=(4, 6))
    for i, grid in enumerate(tokens):
        np.testing.assert_array_equal(reader[i], grid)
    assert reader.labels is None and reader.codebook is None


def test_vectorised_decoder_equals_per_byte_reference():
    rng = np.random.default_rng(3)
    for _ in range(20):
        # random valid streams: random bytes < 255, some made escapes
        n = int(rng.integers(0, 400))
        payload = rng.integers(0, 255, size=n)
        escape = rng.random(n) < 0.3
        stream = bytearray()
        for byte, esc in zip(payload.tolist(), escape.tolist()):
            stream += bytes([255, byte]) if esc else bytes([byte])
        # cut into images at boundaries not right after an escape (some
        # images empty)
        data = np.frombuffer(bytes(stream), np.uint8)
        safe = np.flatnonzero(np.concatenate([[True], data != 255]))
        cuts = rng.choice(safe, size=int(rng.integers(0, 6)))
        index = np.sort(np.concatenate([[0, data.size], cuts]))
        codes, offsets = decode_stream(data, index)
        for i in range(index.size - 1):
            part = data[index[i]:index[i + 1]]
            expect = _reference_decode(part)
            assert decode_image(part).tolist() == expect
            assert codes[offsets[i]:offsets[i + 1]].tolist() == expect
        # and the vectorised encoder gives the per-code reference stream
        grids = [codes[offsets[i]:offsets[i + 1]]
                 for i in range(index.size - 1)]
        enc_stream, enc_index = encode_codes(grids)
        ref_stream, ref_index = _reference_stream(grids)
        assert enc_stream.tobytes() == ref_stream
        np.testing.assert_array_equal(enc_index, ref_index)


def test_unstorable_code_names_file_and_image(tmp_path):
    tokens = _tokens(seed=4, n=3)
    tokens[2][5, 1] = 510
    token_file = str(tmp_path / 'x-token.data.bin.gz')
    with pytest.raises(SeiTFormatError,
                       match=r'x-token\.data\.bin\.gz.*image 2.*code 510'):
        write_seit_tokens(token_file, tokens)
    for images_per_chunk in (1, 2):
        with pytest.raises(SeiTFormatError, match='image 2 has code 510'):
            write_seit_tokens(token_file, tokens,
                              images_per_chunk=images_per_chunk)
    tokens[2][5, 1] = -1
    with pytest.raises(SeiTFormatError, match='image 2 has code -1'):
        write_seit_tokens(token_file, tokens)
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize('bad, image, what', [
    ([[1, 2], [3, 255], [4]], 1, 'ends with the escape byte'),
    ([[1, 2], [3], [255, 255, 4]], 2, 'followed by another 255'),
    ([[1, 255, 255], [0]], 0, 'followed by another 255'),
    ([[7], [255]], 1, 'ends with the escape byte'),
])
def test_corrupt_escapes_name_file_and_image(tmp_path, bad, image, what):
    stream = [b for part in bad for b in part]
    index = np.cumsum([0] + [len(p) for p in bad])
    token_file = _write_raw(tmp_path, stream, index, name='bad')
    pattern = rf'bad-token\.data\.bin\.gz: image {image} .*{what}'
    with pytest.raises(SeiTFormatError, match=pattern):
        SeiTTokenFile(token_file)
    lazy = SeiTTokenFile(token_file, validate=False)
    with pytest.raises(SeiTFormatError, match=pattern):
        lazy[image]
    lazy[image - 1]  # a sound neighbour still reads
    for chunk_bytes in (1, 2, 3, 100):  # checked in runs of whole images
        with pytest.raises(SeiTFormatError, match=pattern):
            lazy.check(chunk_bytes=chunk_bytes)


def test_truncated_and_bad_index_files(tmp_path):
    tokens = [np.full(4000, i * 60 + 7) for i in range(4)]
    token_file, *_ = _write(tmp_path, tokens, name='tr')
    index_file = index_file_for(token_file)
    with open(token_file, 'rb') as f:
        full = f.read()
    # a truncated gzip: the images past what decompresses are named
    with open(token_file, 'wb') as f:
        f.write(full[:len(full) // 2])
    with pytest.raises(SeiTFormatError,
                       match=r'tr-token\.data\.bin\.gz is truncated.*image \d'
                       r' .*missing'):
        SeiTTokenFile(token_file)
    with open(token_file, 'wb') as f:
        f.write(full)

    def put_index(index):
        buf = io.BytesIO()
        np.save(buf, np.asarray(index))
        _write_gz(index_file, buf.getvalue())

    # an index reaching past the stream
    put_index([0, 4000, 8000, 12000, 16001])
    with pytest.raises(SeiTFormatError, match=r'image 3 .*missing'):
        SeiTTokenFile(token_file)
    # an index not covering the stream
    put_index([0, 4000, 8000, 12000])
    with pytest.raises(SeiTFormatError, match='indexes only 12000 bytes'):
        SeiTTokenFile(token_file)
    # not monotone
    put_index([0, 4000, 3000, 12000, 16000])
    with pytest.raises(SeiTFormatError,
                       match=r'index\.npy\.gz is not monotone: image 1'):
        SeiTTokenFile(token_file)
    # a truncated index file
    put_index([0, 4000, 8000, 12000, 16000])
    reader = SeiTTokenFile(token_file, grid=(4000,))
    with pytest.raises(IndexError, match=r'image index 4 out of range'):
        reader[4]
    with open(index_file, 'rb') as f:
        raw = f.read()
    with open(index_file, 'wb') as f:
        f.write(raw[:-6])
    with pytest.raises(SeiTFormatError,
                       match=r'tr-token\.index\.npy\.gz is truncated'):
        SeiTTokenFile(token_file)


def test_grid_and_label_mismatch(tmp_path):
    tokens = [np.arange(16), np.arange(15)]
    token_file = str(tmp_path / 'g-token.data.bin.gz')
    write_seit_tokens(token_file, tokens)
    with pytest.raises(SeiTFormatError, match=r'image 1 has 15 codes'):
        SeiTTokenFile(token_file, grid=(4, 4))
    lazy = SeiTTokenFile(token_file, grid=(4, 4), validate=False)
    lazy[0]
    for chunk_bytes in (1, 5, 1000):
        with pytest.raises(SeiTFormatError, match=r'image 1 has 15 codes'):
            lazy.check(chunk_bytes=chunk_bytes)
        with pytest.raises(SeiTFormatError, match=r'image 1 has 15 codes'):
            lazy.decode_all()
    label_file = tmp_path / 'g-label.txt'
    label_file.write_text('3\n4\n5\n')
    with pytest.raises(SeiTFormatError, match='3 labels but'):
        SeiTTokenFile(token_file, label_file=str(label_file))
