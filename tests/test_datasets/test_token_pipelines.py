"""Per-sample pipelines of the token datasets (SeiTTokenDataset,
CompactTokenDataset, TokenShardDataset): a SeededIndex makes the augmented
sample a function of the draw — the same again, the same in DataLoader
workers and after a sampler resume, different for another seed — and the
sample keeps its keys and dtypes."""
import random
from itertools import islice

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from vistok.datasets import (
    CompactTokenDataset,
    ResumableInfiniteSampler,
    SeededIndex,
    SeiTTokenDataset,
    TokenShardDataset,
    write_compact,
    write_seit,
)
from vistok.datasets.token_shards import TokenShardWriter, index_dtype

CODEBOOK = 300
GRID = (4, 4)
NUM = 10
LABELS = [k % 3 for k in range(NUM)]


class ShiftCodes:
    """A random transform drawing from all three global RNGs (python,
    numpy, torch), as transforms in a vistok pipeline may: adds a random
    non-zero offset to one random row, modulo the codebook. Keeps type and
    dtype."""

    def __call__(self, results):
        codes = results['indices'].clone()
        row = np.random.randint(codes.shape[0])
        shift = 1 + (random.randrange(CODEBOOK) + int(
            torch.randint(CODEBOOK, ()))) % (CODEBOOK - 1)
        codes[row] = (codes[row] + shift) % CODEBOOK
        results['indices'] = codes
        return results


def _grids():
    rng = np.random.default_rng(0)
    return [rng.integers(0, CODEBOOK, size=GRID) for _ in range(NUM)]


def _make(kind, tmp_path, pipeline):
    grids = _grids()
    if kind == 'seit':
        token_file = str(tmp_path / 'd-token.data.bin.gz')
        label_file = str(tmp_path / 'd-label.txt')
        write_seit(token_file, grids, labels=LABELS, label_file=label_file)
        return SeiTTokenDataset(token_file, label_file=label_file, grid=GRID,
                                pipeline=pipeline)
    if kind == 'compact':
        path = str(tmp_path / 'd.vtk')
        write_compact(path, np.stack([g.reshape(-1) for g in grids]),
                      CODEBOOK, levels=[dict(name='indices',
                                             shape=list(GRID))],
                      labels=LABELS)
        return CompactTokenDataset(path, pipeline=pipeline)
    identity = dict(config_sha256='c' * 64, checkpoint_sha256='k' * 64,
                    dataset_sha256='d' * 64, data='train', seed=0,
                    num_samples=NUM, shard_size=4, codebook_size=CODEBOOK,
                    dtype=index_dtype(CODEBOOK).name)
    writer = TokenShardWriter(str(tmp_path / 'wds'), identity)
    for shard_id, start, stop in list(writer.pending_shards()):
        writer.write_shard(shard_id, 'tensor', [
            dict(levels=[grids[i]], position=i, gt_label=LABELS[i])
            for i in range(start, stop)])
    return TokenShardDataset(str(tmp_path / 'wds'), pipeline=pipeline)


KINDS = ['seit', 'compact', 'wds']


@pytest.mark.parametrize('kind', KINDS)
def test_pipeline_keeps_keys_and_dtypes(tmp_path, kind):
    plain = _make(kind, tmp_path, None)
    augmented = _make(kind, tmp_path, [ShiftCodes()])
    for i in range(NUM):
        a, b = plain[i], augmented[SeededIndex(i, 7 + i)]
        assert set(a) == set(b) == {'indices', 'sample_idx', 'gt_label'}
        assert b['indices'].dtype == torch.int64
        assert b['indices'].shape == GRID
        assert type(b['sample_idx']) is type(a['sample_idx']) is int
        assert b['sample_idx'] == a['sample_idx']
        assert b['gt_label'] == a['gt_label'] == LABELS[i]
        # exactly one row moved: the pipeline ran once
        changed = (a['indices'] != b['indices']).any(dim=1)
        assert int(changed.sum()) == 1


@pytest.mark.parametrize('kind', KINDS)
def test_same_draw_same_sample_other_seed_differs(tmp_path, kind):
    dataset = _make(kind, tmp_path, [ShiftCodes()])
    for i in range(NUM):
        first = dataset[SeededIndex(i, 1000 + i)]['indices']
        dataset[SeededIndex(i, 5)]  # other draws in between change nothing
        assert torch.equal(dataset[SeededIndex(i, 1000 + i)]['indices'],
                           first)
    differ = [not torch.equal(dataset[SeededIndex(i, 1)]['indices'],
                              dataset[SeededIndex(i, 2)]['indices'])
              for i in range(NUM)]
    assert sum(differ) >= NUM - 1
    # the dataset leaves the caller's random state alone
    np.random.seed(3)
    before = np.random.get_state()[1].copy()
    dataset[SeededIndex(0, 9)]
    assert np.array_equal(np.random.get_state()[1], before)


def _draws(dataset, num_workers, skip=0, n=12):
    sampler = ResumableInfiniteSampler(dataset, seed=4)
    sampler.skip(skip)
    loader = DataLoader(dataset, batch_size=3, sampler=sampler,
                        num_workers=num_workers)
    return [(batch['sample_idx'].tolist(), batch['indices'])
            for batch in islice(loader, n // 3)]


@pytest.mark.parametrize('kind', KINDS)
def test_workers_and_resume_give_identical_samples(tmp_path, kind):
    dataset = _make(kind, tmp_path, [ShiftCodes()])
    single = _draws(dataset, 0)
    workers = _draws(dataset, 2)
    resumed = _draws(dataset, 0, skip=6, n=6)
    assert len(single) == len(workers) == 4
    for (idx0, x0), (idx2, x2) in zip(single, workers):
        assert idx0 == idx2
        assert torch.equal(x0, x2)
    for (idx0, x0), (idx_r, x_r) in zip(single[2:], resumed):
        assert idx0 == idx_r
        assert torch.equal(x0, x_r)
    # the samples were augmented: not the stored tokens
    grids = _grids()
    stored = torch.stack([torch.from_numpy(grids[i]) for i in single[0][0]])
    assert not torch.equal(single[0][1], stored)


def test_transform_returning_none_is_an_error(tmp_path):
    dataset = _make('seit', tmp_path, [lambda results: None])
    with pytest.raises(ValueError, match='returned None for index 2'):
        dataset[SeededIndex(2, 0)]
