"""NIfTI volumes in EMVolumeDataset: read lazily through nibabel's array
proxy, equal to the HDF5 copy of the same array; the pre-training glob
descends into ``*hdf/`` folders (TokenUnify's corpus layout)."""
import sys

import h5py
import nibabel
import numpy as np
import pytest
from nibabel.arrayproxy import ArrayProxy

from vistok.datasets.em import EMVolumeDataset
from vistok.datasets.samplers import SeededIndex

ZYX = np.random.default_rng(0).integers(0, 256, (6, 20, 24), dtype=np.uint8)
CROP = (4, 10, 12)


def _write(tmp_path, suffix, data):
    path = tmp_path / f'vol{suffix}'
    nibabel.save(nibabel.Nifti1Image(data, np.eye(4)), str(path))
    return str(path)


def _h5(path, data):
    with h5py.File(path, 'w') as f:
        f['main'] = data
    return str(path)


def _crops(path, normalize='minmax', **kwargs):
    dataset = EMVolumeDataset(volumes=[path], raw_key='main',
                              label_key=None, normalize=normalize,
                              crop_size=CROP, samples_per_epoch=5, **kwargs)
    return dataset, [dataset[SeededIndex(i, 100 + i)]['raw']
                     for i in range(5)]


@pytest.mark.parametrize('suffix', ['.nii', '.nii.gz'])
def test_nifti_lazy_and_equal_to_hdf5(tmp_path, suffix, monkeypatch):
    h5_path = _h5(tmp_path / 'vol.h5', ZYX)
    # NIfTI stores (x, y, z): the default reads it back as (z, y, x)
    nii = _write(tmp_path, suffix, np.ascontiguousarray(ZYX.transpose(2, 1,
                                                                      0)))
    blocks = []
    original = ArrayProxy.__getitem__

    def spy(self, slicer):
        out = original(self, slicer)
        blocks.append(np.shape(out))
        return out

    def refuse(*args, **kwargs):
        raise AssertionError('the NIfTI volume was loaded whole')

    monkeypatch.setattr(ArrayProxy, '__getitem__', spy)
    monkeypatch.setattr(ArrayProxy, '__array__', refuse)
    monkeypatch.setattr(nibabel.Nifti1Image, 'get_fdata', refuse)
    # 'dtype' normalisation: no min / max scan, only crop reads
    dataset, crops = _crops(nii, normalize='dtype')
    _, reference = _crops(h5_path, normalize='dtype')
    assert dataset.volumes[0]['shape'] == ZYX.shape
    assert dataset.volumes[0]['name'] == 'vol'
    for crop, ref in zip(crops, reference):
        assert np.array_equal(crop, ref)
    # a 1-voxel dtype probe per open, then crop-sized (x, y, z) blocks
    assert set(blocks) == {(1, 1, 1), CROP[::-1]}
    assert blocks.count(CROP[::-1]) == 5


def test_nifti_stored_order_option(tmp_path):
    """``nifti_axes=(0, 1, 2)``: TokenUnify's release (no transpose)."""
    nii = _write(tmp_path, '.nii.gz', ZYX)
    _, crops = _crops(nii, nifti_axes=(0, 1, 2))
    _, reference = _crops(_h5(tmp_path / 'vol.h5', ZYX))
    assert all(np.array_equal(c, r) for c, r in zip(crops, reference))


def test_missing_nibabel_names_file(tmp_path, monkeypatch):
    nii = _write(tmp_path, '.nii', ZYX)
    monkeypatch.setitem(sys.modules, 'nibabel', None)
    with pytest.raises(ImportError, match=r'vol\.nii.*pip install nibabel'):
        _crops(nii)


def test_corpus_glob_descends_into_hdf_folders(tmp_path):
    (tmp_path / 'FAFB_hdf').mkdir()
    (tmp_path / 'MSD_hdf').mkdir()
    _h5(tmp_path / 'FAFB_hdf' / 'a.h5', ZYX)
    _h5(tmp_path / 'top.h5', ZYX)  # outside a *hdf folder: not used
    nibabel.save(nibabel.Nifti1Image(ZYX.T.copy(), np.eye(4)),
                 str(tmp_path / 'MSD_hdf' / 'b.nii.gz'))
    dataset = EMVolumeDataset(
        volumes=[['*hdf/*.h5', '*hdf/*.nii', '*hdf/*.nii.gz']],
        data_root=str(tmp_path), raw_key='main', label_key=None,
        normalize='minmax', crop_size=CROP, samples_per_epoch=2)
    assert sorted(v['name'] for v in dataset.volumes) == ['a', 'b']
    with pytest.raises(FileNotFoundError, match=r'\*hdf/\*\.nii or'):
        EMVolumeDataset(volumes=[['*hdf/*.nii', '*hdf/*.tif']],
                        data_root=str(tmp_path), raw_key='main',
                        label_key=None, crop_size=CROP)
