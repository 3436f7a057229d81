import pytest
import torch
from mmengine.dataset import pseudo_collate

from vistok.models.data_preprocessors.volume import VolumeDataPreprocessor
from vistok.registry import MODELS
from vistok.structures import DataSample


def _samples(n, shape=(1, 4, 8, 8)):
    out = []
    for i in range(n):
        sample = DataSample(metainfo=dict(sample_idx=i))
        sample.gt_affinity = torch.full((3, *shape[1:]), float(i))
        out.append(dict(inputs=torch.rand(shape), data_samples=sample))
    return out


def test_stacks_and_keeps_samples():
    pre = MODELS.build(dict(type='VolumeDataPreprocessor'))
    samples = _samples(3)
    batch = pre(pseudo_collate(samples), training=True)
    assert batch['inputs'].shape == (3, 1, 4, 8, 8)
    assert batch['inputs'].dtype == torch.float32
    for k, sample in enumerate(samples):
        assert torch.equal(batch['inputs'][k], sample['inputs'])
    assert isinstance(batch['data_samples'], list)
    assert [s.sample_idx for s in batch['data_samples']] == [0, 1, 2]
    assert torch.equal(batch['data_samples'][2].gt_affinity,
                       samples[2]['data_samples'].gt_affinity)


def test_stacked_input_dtype_and_errors():
    pre = VolumeDataPreprocessor(dtype='float64')
    batch = pre(dict(inputs=torch.rand(2, 1, 4, 8, 8)))
    assert batch['inputs'].dtype == torch.float64
    assert batch['data_samples'] is None
    whole = pseudo_collate(_samples(1, (1, 4, 8, 8)) +
                           _samples(1, (1, 6, 8, 8)))
    with pytest.raises(ValueError, match='batch_size=1'):
        pre(whole)
    with pytest.raises(ValueError, match=r'\(C, D, H, W\)'):
        pre(dict(inputs=[torch.rand(4, 8, 8)]))
    with pytest.raises(ValueError, match='floating'):
        VolumeDataPreprocessor(dtype=torch.int64)
