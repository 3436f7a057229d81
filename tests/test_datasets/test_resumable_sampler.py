from itertools import islice

import pytest

import vistok.datasets.samplers as samplers_module
from vistok.datasets import ResumableInfiniteSampler


def draws(sampler, n):
    return [(int(i), i.seed) for i in islice(iter(sampler), n)]


@pytest.mark.parametrize('skip', [0, 3, 10, 13, 27])
def test_skip_resumes_the_stream(skip):
    data = list(range(10))
    reference = draws(ResumableInfiniteSampler(data, seed=3), skip + 25)
    resumed = ResumableInfiniteSampler(data, seed=3)
    resumed.skip(skip)
    assert draws(resumed, 25) == reference[skip:]


def test_epochs_are_permutations_with_distinct_seeds():
    stream = draws(ResumableInfiniteSampler(list(range(10)), seed=0), 30)
    epochs = [[i for i, _ in stream[e * 10:(e + 1) * 10]] for e in range(3)]
    assert all(sorted(e) == list(range(10)) for e in epochs)
    assert epochs[0] != epochs[1]
    assert len({seed for _, seed in stream}) == 30


@pytest.mark.parametrize('size', [10, 11])
def test_two_ranks_partition_each_epoch(monkeypatch, size):
    data = list(range(size))
    per_rank = {}
    for rank in range(2):
        monkeypatch.setattr(samplers_module, 'get_dist_info',
                            lambda rank=rank: (rank, 2))
        sampler = ResumableInfiniteSampler(data, seed=1)
        per_rank[rank] = draws(sampler, 2 * len(sampler))
    for epoch in range(2):
        chunk = [per_rank[r][epoch * len(sampler):(epoch + 1) * len(sampler)]
                 for r in range(2)]
        indices = [i for c in chunk for i, _ in c]
        assert set(indices) == set(data)
        assert len(indices) == size + size % 2  # padded by wrapping
        seeds = [s for c in chunk for _, s in c]
        assert len(set(seeds)) == len(seeds)
