import random
from itertools import islice

import numpy as np
import pytest
import torch
from mmengine.dataset import pseudo_collate
from torch.utils.data import DataLoader

from vistok.datasets import (
    ProceduralShapesDataset,
    ResumableInfiniteSampler,
    SeededIndex,
)

PIPELINE = [
    dict(type='RandomResizedCrop', size=32, scale=(0.3, 1.0)),
    dict(type='RandomFlip', prob=0.5),
    dict(type='RandomCrop', size=24),
    dict(type='PackInputs'),
]


@pytest.fixture(scope='module')
def dataset():
    return ProceduralShapesDataset(num_samples=32, pipeline=PIPELINE)


def test_same_seed_same_augmentation(dataset):
    for i in range(8):
        a = dataset[SeededIndex(i, 1234 + i)]['inputs']
        b = dataset[SeededIndex(i, 1234 + i)]['inputs']
        assert a.shape == (3, 24, 24)
        assert torch.equal(a, b)


def test_other_seed_other_augmentation(dataset):
    differ = [not torch.equal(dataset[SeededIndex(i, 1)]['inputs'],
                              dataset[SeededIndex(i, 2)]['inputs'])
              for i in range(8)]
    assert any(differ)


def test_global_rng_untouched(dataset):
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    before = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    dataset[SeededIndex(3, 99)]
    after = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    assert before[0] == after[0]
    assert all(np.array_equal(x, y) for x, y in zip(before[1], after[1]))
    assert torch.equal(before[2], after[2])


def test_plain_int_index_is_mmengine_behaviour(dataset):
    item = dataset[3]
    assert item['data_samples'].sample_idx == 3
    assert type(item['data_samples'].sample_idx) is int


def _batches(dataset, num_workers, n=4):
    sampler = ResumableInfiniteSampler(dataset, seed=0)
    loader = DataLoader(dataset, batch_size=4, sampler=sampler,
                        num_workers=num_workers, collate_fn=pseudo_collate)
    return [(torch.stack(b['inputs']),
             [s.sample_idx for s in b['data_samples']])
            for b in islice(loader, n)]


def test_workers_give_identical_batches(dataset):
    single = _batches(dataset, 0)
    workers = _batches(dataset, 2)
    for (x0, idx0), (x2, idx2) in zip(single, workers):
        assert idx0 == idx2
        assert torch.equal(x0, x2)
