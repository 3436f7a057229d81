import pickle
from itertools import islice

import h5py
import numpy as np
import pytest
import torch
from mmengine.dataset import pseudo_collate
from torch.utils.data import DataLoader

from vistok.datasets.em.volume_dataset import CREMI_UNLABELLED, EMVolumeDataset
from vistok.datasets.samplers import ResumableInfiniteSampler, SeededIndex
from vistok.registry import DATASETS

SHAPE = (20, 48, 40)
CROP = (8, 16, 16)


def _volume(seed):
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, SHAPE, dtype=np.uint8)
    labels = rng.integers(1, 50, SHAPE).astype(np.uint64)
    labels[:, :3] = CREMI_UNLABELLED
    return raw, labels


def _f32(raw):
    """uint8 -> [0, 1] in float32, as the dataset computes it."""
    return raw.astype(np.float32) / np.float32(255)


def _clean(labels):
    out = labels.copy()
    out[out == CREMI_UNLABELLED] = 0
    return out.astype(np.int64)


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    """Two CREMI-layout files and one AC3/AC4-layout pair."""
    root = tmp_path_factory.mktemp('em')
    volumes = {}
    for i, name in enumerate(['sample_A', 'sample_B']):
        raw, labels = _volume(i)
        with h5py.File(root / f'{name}.h5', 'w') as f:
            f.create_dataset('volumes/raw', data=raw, chunks=(4, 16, 16))
            f.create_dataset('volumes/labels/neuron_ids', data=labels,
                             chunks=(4, 16, 16))
        volumes[name] = (raw, labels)
    raw, labels = _volume(2)
    with h5py.File(root / 'AC4_inputs.h5', 'w') as f:
        f.create_dataset('main', data=raw)
    with h5py.File(root / 'AC4_labels.h5', 'w') as f:
        f.create_dataset('main', data=labels.astype(np.uint32) % 7)
    volumes['AC4'] = (raw, labels.astype(np.uint32) % 7)
    return root, volumes


def _crop(volume, origin, size):
    return volume[tuple(slice(o, o + s) for o, s in zip(origin, size))]


def test_random_crops_read_the_right_window(files):
    root, volumes = files
    ds = DATASETS.build(dict(
        type='EMVolumeDataset', volumes=['sample_A.h5', 'sample_B.h5'],
        data_root=str(root), crop_size=CROP, samples_per_epoch=7))
    assert len(ds) == 7
    names = set()
    for i in range(12):
        item = ds[SeededIndex(i % 7, seed=100 + i)]
        raw, labels = volumes[item['volume_name']]
        origin = item['crop_origin']
        assert all(0 <= o <= s - c for o, s, c in zip(origin, SHAPE, CROP))
        assert item['raw'].dtype == np.float32
        np.testing.assert_array_equal(item['raw'],
                                      _f32(_crop(raw, origin, CROP)))
        assert item['labels'].dtype == np.int64
        np.testing.assert_array_equal(item['labels'],
                                      _clean(_crop(labels, origin, CROP)))
        assert item['sample_idx'] == i % 7
        assert item['volume_shape'] == SHAPE
        names.add(item['volume_name'])
    assert names == {'sample_A', 'sample_B'}


def test_crops_are_a_function_of_the_seed(files):
    root, _ = files
    ds = EMVolumeDataset([str(root / 'sample_A.h5')], crop_size=CROP)
    first = [ds[SeededIndex(0, seed)]['crop_origin'] for seed in range(6)]
    again = [ds[SeededIndex(3, seed)]['crop_origin'] for seed in range(6)]
    assert first == again
    assert len(set(first)) > 1


def test_reads_only_the_crop(files):
    root, _ = files
    ds = EMVolumeDataset([str(root / 'sample_A.h5')], crop_size=CROP,
                         padding=(1, 2, 2))
    read = ds._read_block
    sizes = []

    def counting(volume_idx, kind, slices):
        block = read(volume_idx, kind, slices)
        sizes.append(block.size)
        return block

    ds._read_block = counting
    for seed in range(5):
        item = ds[SeededIndex(0, seed)]
        assert item['raw'].shape == (10, 20, 20)
    # at most the padded window per array (less where mirrored)
    assert len(sizes) == 10 and max(sizes) <= 10 * 20 * 20


def test_valid_region_and_padding_mirror_the_region(files):
    root, volumes = files
    raw, labels = volumes['sample_A']
    ds = EMVolumeDataset([str(root / 'sample_A.h5')], crop_size=CROP,
                         valid_region=((0, 10), None, (None, -4)),
                         padding=(2, 4, 4), test_mode=True,
                         test_crops='grid', grid_stride=(8, 16, 12))
    # z: 0, 2 (last aligned to the end); y: 0, 16, 32; x: 0, 12, 20
    assert [s['crop_origin'] for s in ds.data_list] == [
        (z, y, x) for z in (0, 2) for y in (0, 16, 32) for x in (0, 12, 20)]
    padded_raw = np.pad(raw[:10, :, :36], ((2, 2), (4, 4), (4, 4)), 'reflect')
    padded_lab = np.pad(_clean(labels[:10, :, :36]),
                        ((2, 2), (4, 4), (4, 4)), 'reflect')
    for idx in (0, len(ds) - 1):
        item = ds[idx]
        origin = item['crop_origin']
        window = (12, 24, 24)
        np.testing.assert_array_equal(
            item['raw'], _f32(_crop(padded_raw, origin, window)))
        np.testing.assert_array_equal(item['labels'],
                                      _crop(padded_lab, origin, window))
        assert item['padding'] == (2, 4, 4)


def test_region_smaller_than_crop_is_mirrored(files):
    root, volumes = files
    ds = EMVolumeDataset([str(root / 'sample_A.h5')], crop_size=(8, 16, 16),
                         valid_region=((0, 5), None, None))
    item = ds[SeededIndex(0, 1)]
    assert item['crop_origin'][0] == -1  # centred: 1 voxel mirrored before
    expected = np.pad(volumes['sample_A'][0][:5], ((1, 2), (0, 0), (0, 0)),
                      'reflect')
    np.testing.assert_array_equal(
        item['raw'], _f32(_crop(expected, (0, *item['crop_origin'][1:]),
                                (8, 16, 16))))


def test_whole_volume_test_mode_and_separate_files(files):
    root, volumes = files
    ds = EMVolumeDataset(
        [dict(raw='AC4_inputs.h5', labels='AC4_labels.h5', name='ac4',
              raw_key='main', label_key='main',
              valid_region=((0, 12), None, None)), 'sample_B.h5'],
        data_root=str(root), test_mode=True, crop_size=CROP)
    assert len(ds) == 2
    ac4 = ds[0]
    assert ac4['volume_name'] == 'ac4' and ac4['crop_origin'] == (0, 0, 0)
    np.testing.assert_array_equal(ac4['raw'], _f32(volumes['AC4'][0][:12]))
    np.testing.assert_array_equal(ac4['labels'], volumes['AC4'][1][:12])
    assert ds[1]['raw'].shape == SHAPE


def test_glob_unlabelled_and_minmax(files, tmp_path):
    root, volumes = files
    ds = EMVolumeDataset([str(root / 'sample_*.h5')], label_key=None,
                         crop_size=CROP)
    assert [v['name'] for v in ds.volumes] == ['sample_A', 'sample_B']
    assert 'labels' not in ds[SeededIndex(0, 3)]
    raw = np.random.default_rng(0).integers(100, 1101, SHAPE).astype(
        np.uint16)
    raw[0, 0, 0], raw[-1, -1, -1] = 100, 1100
    with h5py.File(tmp_path / 'u16.h5', 'w') as f:
        f.create_dataset('main', data=raw)
    ds = EMVolumeDataset([str(tmp_path / 'u16.h5')], raw_key='main',
                         label_key=None, normalize='minmax', test_mode=True)
    assert ds.volumes[0]['raw_range'] == (100.0, 1100.0)
    np.testing.assert_allclose(ds[0]['raw'], (raw - 100) / 1000.0,
                               rtol=0, atol=1e-6)


def test_label_ids_beyond_uint32(tmp_path):
    labels = np.full((2, 4, 4), 5, np.uint64)
    labels[0] = 2**40
    labels[1, 0] = CREMI_UNLABELLED
    with h5py.File(tmp_path / 'big.h5', 'w') as f:
        f.create_dataset('raw', data=np.zeros((2, 4, 4), np.uint8))
        f.create_dataset('seg', data=labels)
    kwargs = dict(volumes=[str(tmp_path / 'big.h5')], raw_key='raw',
                  label_key='seg', test_mode=True)
    with pytest.raises(ValueError, match='big.h5:seg.*relabel_consecutive'):
        EMVolumeDataset(**kwargs)[0]
    out = EMVolumeDataset(relabel_consecutive=True, **kwargs)[0]['labels']
    expected = np.full((2, 4, 4), 1)
    expected[0] = 2
    expected[1, 0] = 0
    np.testing.assert_array_equal(out, expected)


def test_errors_name_file_and_key(files, tmp_path):
    root, _ = files
    with pytest.raises(KeyError, match=r"sample_A\.h5.*'volumes/nope'"):
        EMVolumeDataset([str(root / 'sample_A.h5')], raw_key='volumes/nope')
    with pytest.raises(KeyError, match=r"AC4_inputs\.h5.*'volumes/raw'"):
        EMVolumeDataset([str(root / 'AC4_inputs.h5')])
    corrupt = tmp_path / 'corrupt.h5'
    corrupt.write_bytes(b'not an hdf5 file' * 64)
    with pytest.raises(OSError, match='corrupt.h5'):
        EMVolumeDataset([str(corrupt)])
    with pytest.raises(FileNotFoundError, match='missing.h5'):
        EMVolumeDataset([str(tmp_path / 'missing.h5')])
    with pytest.raises(FileNotFoundError, match=r'nothing\*'):
        EMVolumeDataset([str(tmp_path / 'nothing*.h5')])


def test_handles_are_per_process_and_not_pickled(files):
    root, _ = files
    ds = EMVolumeDataset([str(root / 'sample_A.h5')], crop_size=CROP,
                         samples_per_epoch=16,
                         pipeline=[dict(type='PackEMInputs')])
    before = ds[SeededIndex(1, 7)]  # opens a handle in this process
    assert ds._files
    clone = pickle.loads(pickle.dumps(ds))
    assert not clone._files
    assert torch.equal(clone[SeededIndex(1, 7)]['inputs'], before['inputs'])

    def batches(num_workers):
        loader = DataLoader(ds, batch_size=4, num_workers=num_workers,
                            sampler=ResumableInfiniteSampler(ds, seed=0),
                            collate_fn=pseudo_collate)
        return [(torch.stack(b['inputs']),
                 [s.crop_origin for s in b['data_samples']])
                for b in islice(loader, 3)]

    for (x0, o0), (x2, o2) in zip(batches(0), batches(2)):
        assert o0 == o2
        assert torch.equal(x0, x2)
