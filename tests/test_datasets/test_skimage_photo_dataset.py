import numpy as np
import pytest

from vistok.datasets import SkimagePhotoDataset
from vistok.datasets.skimage_photos import PHOTOS


def test_all_photos_load_offline_as_rgb():
    ds = SkimagePhotoDataset()
    assert len(ds) == len(PHOTOS)
    for i in range(len(ds)):
        item = ds[i]
        img = item['img']
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
        assert item['img_shape'] == img.shape[:2]
        assert item['gt_label'] == i
        assert item['photo_name'] == PHOTOS[i]


def test_gray_photo_is_repeated_and_copies_are_fresh():
    ds = SkimagePhotoDataset(names=['camera'])
    img = ds[0]['img']
    assert np.array_equal(img[..., 0], img[..., 1])
    img[:] = 0
    assert ds[0]['img'].any()


def test_names_repeat_and_pipeline():
    ds = SkimagePhotoDataset(
        names=['coffee', 'rocket'], repeat=3,
        pipeline=[dict(type='RandomResizedCrop', size=32),
                  dict(type='PackInputs')])
    assert len(ds) == 6
    assert ds.metainfo['classes'] == ('coffee', 'rocket')
    labels = [ds[i]['data_samples'].gt_label.item() for i in range(6)]
    assert labels == [0, 1, 0, 1, 0, 1]
    assert ds[0]['inputs'].shape == (3, 32, 32)


def test_unknown_name():
    with pytest.raises(ValueError, match='brain'):
        SkimagePhotoDataset(names=['brain'])
