import numpy as np
import pytest
import torch
from mmengine.dataset import pseudo_collate
from mmengine.model import ImgDataPreprocessor

from vistok.datasets.transforms import (
    PackInputs,
    RandomCrop,
    RandomResizedCrop,
)
from vistok.registry import TRANSFORMS
from vistok.structures import DataSample


def _results(shape=(20, 30, 3), **extra):
    img = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    return dict(img=img, img_shape=shape[:2], ori_shape=shape[:2], **extra)


def test_pack_inputs():
    results = _results(gt_label=3, sample_idx=7, img_path='a.png')
    img = results['img']
    packed = PackInputs()(results)
    assert set(packed) == {'inputs', 'data_samples'}
    inputs, sample = packed['inputs'], packed['data_samples']
    assert inputs.dtype == torch.uint8 and inputs.shape == (3, 20, 30)
    assert torch.equal(inputs, torch.from_numpy(img).permute(2, 0, 1))
    assert isinstance(sample, DataSample)
    assert sample.gt_label.dtype == torch.long and sample.gt_label.item() == 3
    assert set(sample.metainfo) == {'sample_idx', 'img_path', 'ori_shape',
                                    'img_shape'}


def test_pack_inputs_gray_without_label():
    packed = PackInputs()(_results(shape=(8, 9)))
    assert packed['inputs'].shape == (1, 8, 9)
    assert 'gt_label' not in packed['data_samples']


def test_preprocessor_maps_to_unit_range():
    batch = pseudo_collate([PackInputs()(_results()) for _ in range(2)])
    pre = ImgDataPreprocessor(mean=[127.5] * 3, std=[127.5] * 3)
    out = pre(batch)
    assert out['inputs'].shape == (2, 3, 20, 30)
    assert out['inputs'].min() >= -1 and out['inputs'].max() <= 1


def test_random_crops():
    crop = RandomCrop(size=16)(_results())
    assert crop['img'].shape == (16, 16, 3) and crop['img_shape'] == (16, 16)
    x0, y0, x1, y1 = crop['crop_bbox']
    np.testing.assert_array_equal(crop['img'], _results()['img'][y0:y1, x0:x1])
    with pytest.raises(ValueError, match='resize it first'):
        RandomCrop(size=64)(_results())
    resized = RandomResizedCrop(size=12)(_results())
    assert resized['img'].shape == (12, 12, 3)
    assert resized['img'].dtype == np.uint8


def test_random_resized_crop_fallback_is_central():
    # an impossible area range forces the central-crop fallback
    out = RandomResizedCrop(size=8, scale=(2.0, 3.0), ratio=(1.0, 1.0))(
        _results(shape=(20, 30, 3)))
    assert out['crop_bbox'].tolist() == [5, 0, 25, 20]


def test_crops_follow_numpy_seed():
    np.random.seed(0)
    a = RandomResizedCrop(size=8)(_results())['crop_bbox']
    np.random.seed(0)
    b = RandomResizedCrop(size=8)(_results())['crop_bbox']
    np.testing.assert_array_equal(a, b)


def test_registry_finds_vistok_and_mmcv_transforms():
    for name in ('LoadImageRGB', 'PackInputs', 'RandomCrop',
                 'RandomResizedCrop', 'RandomFlip', 'Resize'):
        assert name in TRANSFORMS


def adm_random_crop_arr(pil_image, image_size, min_crop_frac=0.8,
                        max_crop_frac=1.0):
    """guided-diffusion's ``random_crop_arr`` written out with PIL (the
    reference), drawing from ``np.random`` in ADM's order."""
    import math

    from PIL import Image
    low = math.ceil(image_size / max_crop_frac)
    high = math.ceil(image_size / min_crop_frac)
    smaller = np.random.randint(low, high + 1)
    while min(*pil_image.size) >= 2 * smaller:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size),
                                     resample=Image.BOX)
    scale = smaller / min(*pil_image.size)
    pil_image = pil_image.resize(
        tuple(round(x * scale) for x in pil_image.size),
        resample=Image.BICUBIC)
    arr = np.array(pil_image)
    crop_y = np.random.randint(arr.shape[0] - image_size + 1)
    crop_x = np.random.randint(arr.shape[1] - image_size + 1)
    return arr[crop_y:crop_y + image_size, crop_x:crop_x + image_size]


@pytest.mark.parametrize('shape', [(90, 70, 3), (40, 50, 3), (33, 120, 3)])
def test_adm_random_crop_equals_guided_diffusion(shape):
    from PIL import Image

    from vistok.datasets.transforms import ADMRandomCrop
    img = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    transform = ADMRandomCrop(size=16)  # short side U{16..20}
    for seed in range(6):
        np.random.seed(seed)
        out = transform(dict(img=img.copy(), img_shape=shape[:2]))
        np.random.seed(seed)
        expected = adm_random_crop_arr(Image.fromarray(img), 16)
        assert np.array_equal(out['img'], expected)
        assert out['img_shape'] == (16, 16)


def test_adm_random_crop_short_side_range():
    from vistok.datasets.transforms import ADMRandomCrop
    transform = ADMRandomCrop(size=256)
    assert transform.short_side_range == (256, 320)
    np.random.seed(0)
    sides = {transform._short_side() for _ in range(2000)}
    assert sides == set(range(256, 321))
    with pytest.raises(ValueError, match='min_crop_frac'):
        ADMRandomCrop(size=256, min_crop_frac=0.0)
