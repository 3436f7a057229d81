"""vistok.datasets.token_convert and tools/convert_tokens.py: lossless
conversion between wds shards, SeiT and compact files."""
import os.path as osp

import numpy as np
import pytest
import torch

from _helpers import REPO_ROOT
from vistok.datasets.compact_format import CompactTokenFile
from vistok.datasets.seit_format import SeiTTokenFile, write_seit
from vistok.datasets.token_convert import convert_tokens, open_token_source
from vistok.datasets.token_shards import TokenShardDataset, TokenShardWriter

N = 23
GRID = (6, 6)
IDENTITY = dict(config_sha256='c' * 64, checkpoint_sha256='k' * 64,
                dataset_sha256='d' * 64, data='val', seed=5, num_samples=N,
                shard_size=10, codebook_size=300, dtype='uint16')


def _tokens(seed=0, high=510):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, high, size=(N, *GRID))
    tokens[0].flat[:3] = [254, 255, high - 1]
    tokens[1] = 7  # flat image: the context model's same-as symbols
    return tokens, rng.integers(0, 100, size=N)


def _write_wds(root, levels, labels, sample_idx, structure):
    writer = TokenShardWriter(str(root), IDENTITY)
    for shard_id, start, stop in list(writer.pending_shards()):
        writer.write_shard(shard_id, structure, [
            dict(position=i, levels=[lv[i] for lv in levels],
                 gt_label=int(labels[i]), sample_idx=int(sample_idx[i]))
            for i in range(start, stop)])


def _samples(dataset):
    return [dataset[i] for i in range(len(dataset))]


def _assert_same_samples(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        assert x['sample_idx'] == y['sample_idx']
        assert x.get('gt_label') == y.get('gt_label')
        xs = [x['indices']] if torch.is_tensor(x['indices']) else x['indices']
        ys = [y['indices']] if torch.is_tensor(y['indices']) else y['indices']
        assert type(x['indices']) is type(y['indices'])
        assert all(torch.equal(p, q) for p, q in zip(xs, ys))


@pytest.mark.parametrize('model', ['order0', 'context'])
def test_seit_compact_wds_round_trip_is_exact(tmp_path, model):
    tokens, labels = _tokens()
    seit = str(tmp_path / 'in-token.data.bin.gz')
    write_seit(seit, tokens, labels=labels,
               label_file=str(tmp_path / 'in-label.txt'))
    compact = tmp_path / 'a.vtok'
    result = convert_tokens(seit, compact, 'compact', grid=GRID,
                            codebook_size=510, model=model)
    assert result['num_images'] == N
    read = CompactTokenFile(compact)
    np.testing.assert_array_equal(read.read_batch(range(N)),
                                  tokens.reshape(N, -1))
    np.testing.assert_array_equal(read.labels, labels)
    assert read.header['levels'] == [dict(name='indices', shape=[6, 6])]
    assert read.sample_idx is None  # 0 .. N - 1 is not stored
    convert_tokens(compact, tmp_path / 'wds', 'wds', shard_size=10)
    wds = TokenShardDataset(str(tmp_path / 'wds'), verify=True)
    assert [s['stop'] for s in wds.shards] == [10, 20, 23]
    for i in (0, 1, 22):
        assert torch.equal(wds[i]['indices'], torch.from_numpy(tokens[i]))
        assert wds[i]['gt_label'] == labels[i] and wds[i]['sample_idx'] == i
    back = str(tmp_path / 'out-token.data.bin.gz')
    convert_tokens(tmp_path / 'wds', back, 'seit')
    for suffix in ('-token.data.bin.gz', '-token.index.npy.gz',
                   '-label.txt'):
        assert (tmp_path / f'out{suffix}').read_bytes() == (
            tmp_path / f'in{suffix}').read_bytes()
    assert SeiTTokenFile(back, grid=GRID)[0].tolist() == tokens[0].tolist()


def test_multi_level_export_with_sample_idx_survives_compact(tmp_path):
    rng = np.random.default_rng(1)
    levels = [rng.integers(0, 300, size=(N, 1, 1)),
              rng.integers(0, 300, size=(N, 2, 2)),
              rng.integers(0, 300, size=(N, 4, 4))]
    labels = rng.integers(0, 9, size=N)
    sample_idx = 1000 + 3 * np.arange(N)
    _write_wds(tmp_path / 'src', levels, labels, sample_idx, 'tuple')
    for model in ('order0', 'context'):
        compact = tmp_path / f'{model}.vtok'
        convert_tokens(tmp_path / 'src', compact, 'compact', model=model)
        header = CompactTokenFile(compact).header
        assert header['metadata'] == {k: IDENTITY[k] for k in (
            'config_sha256', 'checkpoint_sha256', 'dataset_sha256', 'data',
            'seed')}
        convert_tokens(compact, tmp_path / f'{model}-wds', 'wds',
                       shard_size=10)
        back = TokenShardDataset(str(tmp_path / f'{model}-wds'))
        _assert_same_samples(_samples(back),
                             _samples(TokenShardDataset(str(tmp_path /
                                                            'src'))))
        for key in ('config_sha256', 'checkpoint_sha256', 'seed'):
            assert back.manifest[key] == IDENTITY[key]
    # SeiT cannot keep this sample_idx: refused unless dropped explicitly
    with pytest.raises(ValueError, match='sample_idx is not 0 .. N - 1'):
        convert_tokens(tmp_path / 'src', tmp_path / 'x-token.data.bin.gz',
                       'seit')
    convert_tokens(tmp_path / 'src', tmp_path / 'x-token.data.bin.gz',
                   'seit', drop_sample_idx=True)
    flat = SeiTTokenFile(str(tmp_path / 'x-token.data.bin.gz'))
    np.testing.assert_array_equal(
        flat[4], np.concatenate([lv[4].reshape(-1) for lv in levels]))


def test_conversion_refuses_to_overwrite_and_needs_the_codebook_size(
        tmp_path):
    tokens, _ = _tokens(high=300)
    seit = str(tmp_path / 'a-token.data.bin.gz')
    write_seit(seit, tokens)
    with pytest.raises(ValueError, match='codebook_size'):
        open_token_source(seit)
    target = tmp_path / 'b.vtok'
    target.write_bytes(b'user data')
    with pytest.raises(FileExistsError, match=r'b\.vtok exists'):
        convert_tokens(seit, target, 'compact', codebook_size=300)
    assert target.read_bytes() == b'user data'
    convert_tokens(seit, target, 'compact', codebook_size=300,
                   overwrite=True)
    assert len(CompactTokenFile(target)) == N
    with pytest.raises(ValueError, match=r'outside \[0, 200\)'):
        convert_tokens(seit, tmp_path / 'c.vtok', 'compact',
                       codebook_size=200)


def test_cli_converts(tmp_path):
    import runpy
    tool = runpy.run_path(osp.join(REPO_ROOT, 'tools/convert_tokens.py'))
    tokens, labels = _tokens()
    seit = str(tmp_path / 'a-token.data.bin.gz')
    write_seit(seit, tokens, labels=labels,
               label_file=str(tmp_path / 'a-label.txt'))
    out = str(tmp_path / 'a.vtok')
    result = tool['main']([seit, out, '--to', 'compact', '--grid', '6', '6',
                           '--codebook-size', '510', '--model', 'context'])
    assert result['bytes'] == osp.getsize(out)
    np.testing.assert_array_equal(CompactTokenFile(out)[3],
                                  tokens[3].reshape(-1))
