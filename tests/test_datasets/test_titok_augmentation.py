"""TiTok's training augmentation (configs/_base_/datasets/
imagenet_256_titok.py, inherited by every TiTok / MARVEL tokenizer config)
against the official transform re-built from torchvision: bytedance/
1d-tokenizer ``data/webdataset_reader.py`` ``ImageTransform`` (commit
942a96fbdd873780179d1b78d5462911528bf8c8) is ``Resize(256, BICUBIC,
antialias=True)`` on the PIL image -> ``RandomCrop(256)`` ->
``RandomHorizontalFlip()`` -> ``ToTensor``. The official crop offset and
flip come from torch's global RNG; vistok draws them from the sample's seed,
so the test reads vistok's draw (``crop_bbox``, ``flip``) and checks that
torchvision's resize, that crop and that flip give the same pixels."""
import os.path as osp

import numpy as np
import pytest
import torch
from mmengine.config import Config
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from _helpers import REPO_ROOT, seeded_draws
from vistok.datasets import ImageFolderDataset
from vistok.datasets.base import build_pipeline
from vistok.datasets.samplers import draw_seed
from vistok.utils.rng import seeded_rng

CONFIG = osp.join(REPO_ROOT,
                  'configs/titok/titok_vq-4k_l32_8xb32-1m_in1k-256.py')
SIZE = 256
#: (height, width): portrait, landscape, the output size itself, and
#: sizes whose long side torchvision truncates where rounding would not
#: (256 * 451 / 300 = 384.85 -> 384, 256 * 397 / 259 = 392.4 -> 392)
SHAPES = [(300, 451), (397, 259), (256, 256), (270, 300)]


def _image(shape, seed):
    return np.random.default_rng(seed).integers(0, 256, (*shape, 3),
                                                dtype=np.uint8)


def _official(img, x, y, flip):
    """torchvision's ops of ``ImageTransform.train_transform`` with the
    crop offset ``(x, y)`` and the flip given (uint8 ``(H, W, 3)``)."""
    out = TF.resize(Image.fromarray(img), SIZE,
                    interpolation=InterpolationMode.BICUBIC, antialias=True)
    out = TF.crop(out, y, x, SIZE, SIZE)
    if flip:
        out = TF.hflip(out)
    return np.asarray(out)


@pytest.fixture(scope='module')
def pipeline():
    """The config's training pipeline after ``LoadImageRGB``."""
    cfg = Config.fromfile(CONFIG)
    steps = cfg.train_dataloader.dataset.pipeline
    assert [t['type'] for t in steps] == [
        'LoadImageRGB', 'ResizeShortEdge', 'RandomCrop', 'RandomFlip',
        'PackInputs']
    return build_pipeline(steps[1:])


def test_resize_is_torchvisions(pipeline):
    resize = pipeline[0]
    for i, shape in enumerate(SHAPES):
        img = _image(shape, i)
        ref = np.asarray(TF.resize(Image.fromarray(img), SIZE,
                                   interpolation=InterpolationMode.BICUBIC,
                                   antialias=True))
        out = resize(dict(img=img))['img']
        assert out.shape == ref.shape and np.array_equal(out, ref), shape


def test_crop_and_flip_are_the_official_ops_drawn_per_sample(pipeline):
    """256 x 256 outputs equal to torchvision's resize / crop / flip at
    vistok's draw; over 100 seeds every offset is in range, the offsets
    cover the free axis and about half the draws are flipped."""
    img = _image((300, 451), 0)
    offsets, flips = set(), []
    for i in range(100):
        results = dict(img=img.copy())
        with seeded_rng(draw_seed(5, 0, i)):
            for transform in pipeline[:-1]:
                results = transform(results)
        x0, y0, x1, y1 = results['crop_bbox']
        assert (x1 - x0, y1 - y0) == (SIZE, SIZE)
        assert 0 <= x0 <= 384 - SIZE and y0 == 0  # resized to 256 x 384
        packed = pipeline[-1](results)['inputs']
        assert packed.shape == (3, SIZE, SIZE) and packed.dtype == torch.uint8
        if i < 10:
            ref = _official(img, x0, y0, results['flip'])
            assert np.array_equal(packed.permute(1, 2, 0).numpy(), ref)
        offsets.add(int(x0))
        flips.append(results['flip'])
    assert len(offsets) > 50  # 129 possible offsets, uniform
    assert 35 <= sum(flips) <= 65


def test_identical_with_0_or_2_workers(tmp_path):
    """The config's dataset pipeline over an image folder: 8 draws (two
    epochs of 4 images) are the same with 0 or 2 DataLoader workers, and
    the second draw of an image is a different crop / flip."""
    cfg = Config.fromfile(CONFIG)
    for i, shape in enumerate(SHAPES):
        folder = tmp_path / 'train' / f'class{i % 2}'
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_image(shape, 10 + i)).save(folder / f'{i}.png')
    dataset = ImageFolderDataset(
        data_root=str(tmp_path), data_prefix=dict(img_path='train'),
        pipeline=cfg.train_dataloader.dataset.pipeline)
    serial = seeded_draws(dataset, 0)
    parallel = seeded_draws(dataset, 2)
    assert serial.shape == (8, 3, SIZE, SIZE)
    assert torch.equal(serial, parallel)
    # every image appears once per epoch; its two draws differ (except the
    # 256 x 256 one, which has one crop and may draw the same flip)
    first, second = serial[:4], serial[4:]
    matched = [any(torch.equal(a, b) for b in second) for a in first]
    assert sum(matched) <= 1
