import io
from collections import Counter
from itertools import islice

import numpy as np
import pytest
import torch
import webdataset
from PIL import Image
from torch.utils.data import DataLoader

import vistok.datasets.webdataset as wds_module
from vistok.datasets import WebDatasetShards

NUM_SHARDS, PER_SHARD = 4, 5
ALL_KEYS = {f'{s}_{i}' for s in range(NUM_SHARDS) for i in range(PER_SHARD)}


def _png(color):
    buf = io.BytesIO()
    Image.new('RGB', (16, 12), color).save(buf, format='PNG')
    return buf.getvalue()


@pytest.fixture(scope='module')
def urls(tmp_path_factory):
    root = tmp_path_factory.mktemp('shards')
    for s in range(NUM_SHARDS):
        with webdataset.TarWriter(str(root / f'shard-{s:06d}.tar')) as sink:
            for i in range(PER_SHARD):
                label = s * PER_SHARD + i
                sink.write({'__key__': f'{s}_{i}',
                            'png': _png((label, 255 - label, 7)),
                            'cls': str(label).encode()})
    return str(root / 'shard-{000000..000003}.tar')


def _keys(dataset, num_workers=0):
    loader = DataLoader(dataset, batch_size=None, num_workers=num_workers)
    return [s['sample_key'] for s in loader]


def test_decodes_rgb_and_labels(urls):
    samples = list(WebDatasetShards(urls, shuffle=False))
    assert {s['sample_key'] for s in samples} == ALL_KEYS
    for s in samples:
        assert s['img'].shape == (12, 16, 3) and s['img'].dtype == np.uint8
        assert tuple(s['img'][0, 0]) == (s['gt_label'], 255 - s['gt_label'], 7)


@pytest.mark.parametrize('num_workers', [0, 2])
def test_every_sample_once(urls, num_workers):
    keys = _keys(WebDatasetShards(urls, shuffle_buffer_size=4), num_workers)
    assert Counter(keys) == Counter(ALL_KEYS)


@pytest.mark.parametrize('num_workers', [0, 2])
def test_two_ranks_partition(monkeypatch, urls, num_workers):
    per_rank = []
    for rank in range(2):
        monkeypatch.setattr(wds_module, 'get_dist_info',
                            lambda rank=rank: (rank, 2))
        per_rank.append(_keys(WebDatasetShards(urls), num_workers))
    assert not set(per_rank[0]) & set(per_rank[1])
    assert Counter(per_rank[0] + per_rank[1]) == Counter(ALL_KEYS)


def test_order_is_seeded_and_changes_with_epoch(urls):
    cfg = dict(seed=3, shuffle_buffer_size=6)
    ds = WebDatasetShards(urls, **cfg)
    first = _keys(ds)
    assert _keys(WebDatasetShards(urls, **cfg)) == first
    ds.set_epoch(1)
    second = _keys(ds)
    assert second != first and set(second) == set(first)


def test_augmentation_independent_of_workers(urls):
    pipeline = [dict(type='RandomCrop', size=8),
                dict(type='RandomFlip', prob=0.5),
                dict(type='PackInputs', meta_keys=('sample_key', ))]
    crops = []
    for num_workers in (0, 2):
        loader = DataLoader(WebDatasetShards(urls, pipeline=pipeline),
                            batch_size=None, num_workers=num_workers)
        crops.append({s['data_samples'].sample_key: s['inputs']
                      for s in loader})
    assert crops[0].keys() == crops[1].keys() == ALL_KEYS
    for key in ALL_KEYS:
        assert torch.equal(crops[0][key], crops[1][key])
    assert len({c.numpy().tobytes() for c in crops[0].values()}) > 1


def test_repeat_streams_several_epochs(urls):
    stream = [s['sample_key'] for s in
              islice(WebDatasetShards(urls, repeat=True), 3 * len(ALL_KEYS))]
    epochs = [stream[i * 20:(i + 1) * 20] for i in range(3)]
    assert all(set(e) == ALL_KEYS for e in epochs)
    assert epochs[0] != epochs[1]


def test_length_and_errors(urls):
    assert len(WebDatasetShards(urls, num_samples=20)) == 20
    with pytest.raises(TypeError, match='num_samples'):
        len(WebDatasetShards(urls))
    with pytest.raises(KeyError, match='jpg'):
        next(iter(WebDatasetShards(urls, image_keys='jpg')))


@pytest.mark.parametrize('num_workers', [0, 1])
def test_resume_restarts_the_stream_at_its_epoch(urls, num_workers):
    """A resumed run does not read and discard the batches it had drawn: the
    stream restarts at the beginning of the epoch it was in (persistent
    workers are replaced, they hold stale dataset copies)."""
    from vistok.engine.loops import restart_stream

    def loader(dataset):
        return DataLoader(dataset, batch_size=4, num_workers=num_workers,
                          persistent_workers=num_workers > 0,
                          collate_fn=lambda batch: [s['sample_key']
                                                    for s in batch])

    total = NUM_SHARDS * PER_SHARD
    running = loader(WebDatasetShards(urls, repeat=True, num_samples=total))
    next(iter(running))  # workers started with epoch 0
    # 7 batches of 4 = 28 samples drawn: epoch 1 of 20-sample epochs
    assert restart_stream(running, 7) == 1
    resumed = list(islice(iter(running), 5))
    fresh = WebDatasetShards(urls, repeat=True, num_samples=total)
    fresh.set_epoch(1)
    assert resumed == list(islice(iter(loader(fresh)), 5))
    epoch0 = list(islice(iter(loader(
        WebDatasetShards(urls, repeat=True, num_samples=total))), 5))
    assert resumed != epoch0
    # a map-style dataset or an unsized stream is not restarted here
    assert restart_stream(loader(WebDatasetShards(urls, repeat=True)),
                          7) is None
