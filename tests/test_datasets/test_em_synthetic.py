import h5py
import numpy as np
import pytest
import torch

from vistok.datasets.em.synthetic import (
    SyntheticEMDataset,
    SyntheticEMVolume,
    write_synthetic_h5,
)
from vistok.datasets.em.volume_dataset import CREMI_UNLABELLED, EMVolumeDataset
from vistok.datasets.samplers import SeededIndex
from vistok.registry import DATASETS

SHAPE = (16, 64, 64)


@pytest.fixture(scope='module')
def volume():
    return SyntheticEMVolume()(SHAPE, seed=3)


def _in_plane_boundary(labels):
    """Voxels whose y or x successor has another label."""
    edge = np.zeros(labels.shape, bool)
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:, :, :-1] |= labels[:, :, :-1] != labels[:, :, 1:]
    return edge


def test_seeded_and_typed(volume):
    raw, labels = volume
    assert raw.shape == labels.shape == SHAPE
    assert raw.dtype == np.uint8 and labels.dtype == np.uint32
    again = SyntheticEMVolume()(SHAPE, seed=3)
    np.testing.assert_array_equal(raw, again[0])
    np.testing.assert_array_equal(labels, again[1])
    other = SyntheticEMVolume()(SHAPE, seed=4)
    assert not np.array_equal(raw, other[0])
    # 'assign' (default): every voxel belongs to a cell, CREMI-like
    assert labels.min() >= 1


def test_cells_membranes_and_anisotropy(volume):
    raw, labels = volume
    spacing = SyntheticEMVolume().cell_spacing
    expected_cells = np.prod(np.array(SHAPE) / spacing)
    assert 0.5 * expected_cells < len(np.unique(labels)) <= expected_cells
    # membranes (in-plane boundaries) are dark, cytoplasm is bright
    edge = _in_plane_boundary(labels)
    assert raw[edge].mean() < raw[~edge].mean() - 40
    # coarse z: labels change more often between sections than in-plane
    change_z = (labels[1:] != labels[:-1]).mean()
    change_y = (labels[:, 1:] != labels[:, :-1]).mean()
    assert change_z > 1.5 * change_y


def test_membrane_label_zero():
    options = dict(membrane_width=3, membrane_label='zero')
    raw, labels = SyntheticEMVolume(**options)(SHAPE, seed=3)
    assigned = SyntheticEMVolume(membrane_width=3)(SHAPE, seed=3)[1]
    gaps = labels == 0
    np.testing.assert_array_equal(labels[~gaps], assigned[~gaps])
    # the gaps cover every in-plane boundary of the assigned labels
    assert gaps[_in_plane_boundary(assigned)].all()
    assert 0.05 < gaps.mean() < 0.5
    with pytest.raises(ValueError, match='membrane_label'):
        SyntheticEMVolume(membrane_label='gap')


def test_write_h5_in_cremi_layout(tmp_path):
    path = write_synthetic_h5(str(tmp_path / 'syn.h5'), shape=SHAPE, seed=3,
                              chunks=(4, 32, 32), unlabelled_border=2)
    raw, labels = SyntheticEMVolume()(SHAPE, seed=3)
    with h5py.File(path, 'r') as f:
        np.testing.assert_array_equal(f['volumes/raw'][:], raw)
        stored = f['volumes/labels/neuron_ids'][:]
        assert stored.dtype == np.uint64
        assert f['volumes/raw'].chunks == (4, 32, 32)
        assert tuple(f['volumes/raw'].attrs['resolution']) == (40, 4, 4)
    assert (stored[:, :2] == CREMI_UNLABELLED).all()
    np.testing.assert_array_equal(stored[:, 2:-2, 2:-2],
                                  labels[:, 2:-2, 2:-2])
    ds = EMVolumeDataset([path], test_mode=True)
    item = ds[0]
    np.testing.assert_array_equal(item['labels'][:, :2], 0)
    np.testing.assert_array_equal(item['labels'][:, 2:-2, 2:-2],
                                  labels[:, 2:-2, 2:-2])


def test_synthetic_dataset_shares_the_crop_logic():
    pipeline = [
        dict(type='EMRandomFlip'),
        dict(type='EMElasticDeform', prob=1.0),
        dict(type='EMMisalignment', max_shift=4, prob=1.0),
        dict(type='EMCenterCrop'),
        dict(type='EMIntensityJitter'),
        dict(type='GenerateAffinities', widen_boundaries=True),
        dict(type='PackEMInputs'),
    ]
    ds = DATASETS.build(dict(
        type='SyntheticEMDataset', volume_shape=SHAPE, num_volumes=2,
        seed=5, crop_size=(8, 32, 32), padding=(0, 4, 4),
        samples_per_epoch=10, pipeline=pipeline))
    assert isinstance(ds, EMVolumeDataset) and len(ds) == 10
    item = ds[SeededIndex(2, 11)]
    assert item['inputs'].shape == (1, 8, 32, 32)
    assert item['inputs'].dtype == torch.float32
    assert 0 <= item['inputs'].min() and item['inputs'].max() <= 1
    sample = item['data_samples']
    assert sample.gt_affinity.shape == sample.affinity_mask.shape == (
        3, 8, 32, 32)
    assert sample.gt_label.shape == (8, 32, 32)
    assert sample.gt_label.dtype == torch.int64
    assert sample.volume_name in ('synthetic_0', 'synthetic_1')
    assert torch.equal(ds[SeededIndex(2, 11)]['inputs'], item['inputs'])
    # without a pipeline: the raw crop of the generated volume
    plain = SyntheticEMDataset(volume_shape=SHAPE, num_volumes=2, seed=5,
                               crop_size=(8, 32, 32), with_labels=False)
    raw, _ = SyntheticEMVolume()(SHAPE, seed=(5, 1))
    checked = 0
    for seed in range(4):
        crop = plain[SeededIndex(0, seed)]
        if crop['volume_name'] == 'synthetic_1':
            checked += 1
            z, y, x = crop['crop_origin']
            np.testing.assert_array_equal(
                crop['raw'],
                raw[z:z + 8, y:y + 32, x:x + 32].astype(np.float32)
                / np.float32(255))
        assert 'labels' not in crop
    assert checked
