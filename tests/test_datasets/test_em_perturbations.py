"""TokenUnify's pre-training input perturbations (from dbMiM): each
transform's probability over 1,000 seeded draws, finite outputs, the blur
against OpenCV, and identical seeded draws with 0 or 2 DataLoader
workers."""
import cv2
import h5py
import numpy as np
import pytest
import torch

from _helpers import seeded_draws
from vistok.datasets.em import (
    EMCutout,
    EMGaussianBlur,
    EMGaussianNoise,
    EMRandomFlip,
    EMRandomPerturbation,
    EMVolumeDataset,
    PackEMInputs,
    gaussian_kernel_1d,
)
from vistok.datasets.samplers import draw_seed
from vistok.utils.rng import seeded_rng

DRAWS = 1000
SHAPE = (4, 12, 12)


def _volume():
    return np.random.default_rng(0).uniform(0.2, 0.8, SHAPE).astype(
        np.float32)


def _outcomes(transform):
    """Over 1,000 seeded draws, the fractions left unchanged and cut out
    (every voxel either unchanged or 0, some 0); outputs must be finite
    float32 in [0, 1]."""
    raw = _volume()
    unchanged = cut = 0
    for i in range(DRAWS):
        with seeded_rng(draw_seed(7, 0, i)):
            out = transform(dict(raw=raw.copy()))['raw']
        assert out.dtype == np.float32 and out.shape == SHAPE
        assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
        same = out == raw
        unchanged += bool(same.all())
        cut += bool(not same.all() and (same | (out == 0)).all())
    return unchanged / DRAWS, cut / DRAWS


@pytest.mark.parametrize('cls', [EMGaussianNoise, EMGaussianBlur, EMCutout])
def test_probability_and_finite(cls):
    unchanged, cut = _outcomes(cls(prob=0.5))
    assert abs((1 - unchanged) - 0.5) < 0.05
    assert cut == (1 - unchanged if cls is EMCutout else 0)


def test_random_perturbation_picks_one_of_three():
    """Official step: p = 0.5, then one of three uniformly: each 1/6,
    cutout recognised as "each voxel unchanged or 0"."""
    perturb = EMRandomPerturbation(
        [dict(type='EMGaussianNoise', prob=1.0),
         dict(type='EMGaussianBlur', prob=1.0),
         dict(type='EMCutout', prob=1.0)], prob=0.5)
    unchanged, cut = _outcomes(perturb)
    assert abs((1 - unchanged) - 0.5) < 0.05
    assert abs(cut - 1 / 6) < 0.05


def test_blur_matches_opencv():
    """dbMiM's ``add_gauss_blur`` is ``cv2.GaussianBlur`` per section
    (kernel k x k, sigma, BORDER_REFLECT_101) then a clip."""
    raw = _volume()
    for i in range(20):
        blur = EMGaussianBlur(prob=1.0)
        with seeded_rng(i):
            size, sigma = blur._draw()
        with seeded_rng(i):
            out = blur(dict(raw=raw.copy()))['raw']
        ref = np.stack([cv2.GaussianBlur(s, (size, size), sigma)
                        for s in raw])
        assert np.abs(out - np.clip(ref, 0, 1)).max() < 1e-5
    for size in (3, 5, 7, 9):  # sigma 0: OpenCV's defaults
        ref = cv2.getGaussianKernel(size, 0).ravel()
        assert np.allclose(gaussian_kernel_1d(size, 0.0), ref, atol=1e-7)


def test_noise_and_cutout_parameters():
    """Noise std inside dbMiM's 0.01-0.2; cutout boxes of dbMiM's sizes
    and counts (z 5-10, y = x 10-20, 60-100 boxes)."""
    raw = np.full((16, 64, 64), 0.5, np.float32)
    stds = []
    for i in range(30):
        with seeded_rng(i):
            out = EMGaussianNoise(prob=1.0)(dict(raw=raw.copy()))['raw']
        stds.append(float((out - raw).std()))
    assert 0.009 < min(stds) and max(stds) < 0.21
    cutout = EMCutout(prob=1.0)
    for i in range(30):
        with seeded_rng(i):
            boxes = cutout._draw(raw.shape)
        assert 60 <= len(boxes) <= 100
        assert len(np.unique(boxes[:, 3:], axis=0)) == 1
        dz, dy, dx = boxes[0, 3:]
        assert 5 <= dz <= 10 and 10 <= dy <= 20 and dy == dx
        assert (boxes[:, :3] + boxes[:, 3:] <= raw.shape).all()
    with seeded_rng(0):  # boxes larger than the volume: clipped to it
        out = cutout(dict(raw=np.ones((3, 8, 8), np.float32)))['raw']
    assert (out == 0).all()


def test_seeded_draws_identical_with_0_or_2_workers(tmp_path):
    path = tmp_path / 'vol.h5'
    with h5py.File(path, 'w') as f:
        f['main'] = np.random.default_rng(1).integers(
            0, 256, (12, 40, 40), dtype=np.uint8)
    perturb = dict(type='EMRandomPerturbation', prob=0.5,
                   transforms=[dict(type='EMGaussianNoise', prob=1.0),
                               dict(type='EMGaussianBlur', prob=1.0),
                               dict(type='EMCutout', prob=1.0)])
    dataset = EMVolumeDataset(
        volumes=[str(path)], raw_key='main', label_key=None,
        normalize='minmax', crop_size=(8, 24, 24), samples_per_epoch=50,
        pipeline=[perturb, dict(type='PackEMInputs')])
    serial = seeded_draws(dataset, 0)
    parallel = seeded_draws(dataset, 2)
    assert serial.shape == (8, 1, 8, 24, 24)
    assert torch.isfinite(serial).all()
    assert torch.equal(serial, parallel)
    # the perturbation did act on some of the 8 draws (not a no-op)
    clean = EMVolumeDataset(
        volumes=[str(path)], raw_key='main', label_key=None,
        normalize='minmax', crop_size=(8, 24, 24), samples_per_epoch=50,
        pipeline=[dict(type='PackEMInputs')])
    assert not torch.equal(serial, seeded_draws(clean, 0))


def test_the_target_stays_clean_and_moves_with_geometric_transforms():
    """Perturbations record the unperturbed raw as ``raw_target`` (packed
    as ``gt_volume``), also when they do not fire; a later flip moves both;
    the input is perturbed."""
    raw = np.random.default_rng(0).random((4, 8, 8), dtype=np.float32)
    pipeline = [EMGaussianNoise(prob=1.0), EMGaussianBlur(prob=0.0),
                EMRandomFlip(prob=1.0), PackEMInputs()]
    packed = dict(raw=raw.copy())
    with seeded_rng(0):
        for transform in pipeline:
            packed = transform(packed)
    target = packed['data_samples'].gt_volume[0].numpy()
    moved = [np.flip(raw, axes).transpose(0, *yx) if axes else
             raw.transpose(0, *yx)
             for axes in ((), (0, ), (1, ), (2, ), (0, 1), (0, 2), (1, 2),
                          (0, 1, 2))
             for yx in ((1, 2), (2, 1))]
    assert sum(np.array_equal(target, m) for m in moved) == 1
    assert not np.array_equal(target, raw)  # moved with the input
    assert not torch.equal(packed['inputs'], packed['data_samples'].gt_volume)
    # no perturbation in the pipeline: no target, the pre-trainer uses inputs
    plain = PackEMInputs()(dict(raw=raw.copy()))
    assert 'gt_volume' not in plain['data_samples']
