import itertools

import numpy as np
import pytest
import torch

from vistok.datasets.em.transforms import (
    EMCenterCrop,
    EMElasticDeform,
    EMIntensityJitter,
    EMMisalignment,
    EMMissingSection,
    EMMotionBlur,
    EMRandomFlip,
    EMRandomRotate90,
    PackEMInputs,
)
from vistok.registry import TRANSFORMS
from vistok.structures import DataSample
from vistok.utils.rng import seeded_rng

SHAPE = (6, 12, 10)


def _sample(shape=SHAPE, block=2, seed=0):
    """Blocky labels and raw = labels / 100 (so raw tells the label)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(1, 60, (shape[0], shape[1] // block,
                                  shape[2] // block))
    labels = coarse.repeat(block, 1).repeat(block, 2).astype(np.int64)
    return dict(raw=(labels / 100).astype(np.float32), labels=labels,
                crop_size=(shape[0], shape[1] - 2, shape[2] - 4),
                padding=(0, 1, 2))


def _dihedral_variants(volume):
    out = []
    for fz, fy, fx, tr in itertools.product([False, True], repeat=4):
        v = volume[::-1 if fz else 1, ::-1 if fy else 1, ::-1 if fx else 1]
        out.append(v.transpose(0, 2, 1) if tr else v)
    return out


def test_flip_moves_raw_and_labels_together():
    base = _sample()
    variants = _dihedral_variants(base['labels'])
    seen = set()
    for seed in range(40):
        with seeded_rng(seed):
            out = TRANSFORMS.build(dict(type='EMRandomFlip'))(_sample())
        np.testing.assert_array_equal(
            out['raw'], (out['labels'] / 100).astype(np.float32))
        match = [k for k, v in enumerate(variants)
                 if v.shape == out['labels'].shape
                 and np.array_equal(v, out['labels'])]
        assert match
        seen.add(match[0])
        transposed = out['labels'].shape[1:] != SHAPE[1:]
        assert out['crop_size'] == ((6, 6, 10) if transposed else (6, 10, 6))
        assert out['padding'] == ((0, 2, 1) if transposed else (0, 1, 2))
        assert out['raw'].flags.c_contiguous
    assert len(seen) >= 10
    with seeded_rng(0):
        only_z = EMRandomFlip(prob=1.0, flip_y=False, flip_x=False,
                              transpose_yx=False)(_sample())
    np.testing.assert_array_equal(only_z['labels'], base['labels'][::-1])


def test_rotate90():
    base = _sample()
    ks = set()
    for seed in range(20):
        with seeded_rng(seed):
            out = EMRandomRotate90(prob=0.75)(_sample())
        k = [k for k in range(4)
             if np.rot90(base['labels'], k, axes=(1, 2)).shape
             == out['labels'].shape and np.array_equal(
                 np.rot90(base['labels'], k, axes=(1, 2)), out['labels'])]
        assert len(k) == 1
        ks.add(k[0])
        np.testing.assert_array_equal(
            out['raw'], np.rot90(base['raw'], k[0], axes=(1, 2)))
        assert out['padding'] == ((0, 2, 1) if k[0] % 2 else (0, 1, 2))
    assert ks == {0, 1, 2, 3}


def test_elastic_identity_and_consistency():
    base = _sample((4, 32, 32), block=8)
    with seeded_rng(0):
        same = EMElasticDeform(alpha=0.0, prob=1.0)(
            _sample((4, 32, 32), block=8))
    np.testing.assert_array_equal(same['raw'], base['raw'])
    np.testing.assert_array_equal(same['labels'], base['labels'])
    with seeded_rng(0):
        out = EMElasticDeform(alpha=40.0, sigma=3.0, prob=1.0)(
            _sample((4, 32, 32), block=8))
    assert out['labels'].dtype == np.int64
    assert set(np.unique(out['labels'])) <= set(np.unique(base['labels']))
    assert not np.array_equal(out['labels'], base['labels'])
    # the same field moves both: inside objects raw still tells the label
    agree = np.isclose(out['raw'], out['labels'] / 100, atol=1e-6)
    assert agree.mean() > 0.6
    # one field for all sections
    moved = out['labels'] != base['labels']
    assert (moved[0] == moved[1]).mean() > 0.7


def test_misalignment_translation_and_slip():
    base = _sample()
    translation = EMMisalignment(max_shift=3, slip_prob=0.0, prob=1.0)
    slip = EMMisalignment(max_shift=3, slip_prob=1.0, prob=1.0)
    for transform, seed in itertools.product((translation, slip), range(6)):
        with seeded_rng(seed):
            start, stop, dy, dx = transform._draw(SHAPE[0])
        with seeded_rng(seed):
            out = transform(_sample())
        assert stop == (start + 1 if transform is slip else SHAPE[0])
        assert transform is slip or start >= 1
        for key in ('raw', 'labels'):
            v, ref = out[key], base[key]
            np.testing.assert_array_equal(v[:start], ref[:start])
            np.testing.assert_array_equal(v[stop:], ref[stop:])
            h, w = SHAPE[1:]
            np.testing.assert_array_equal(
                v[start:stop, max(dy, 0):h + min(dy, 0),
                  max(dx, 0):w + min(dx, 0)],
                ref[start:stop, max(-dy, 0):h + min(-dy, 0),
                    max(-dx, 0):w + min(-dx, 0)])
        if dy > 0:
            assert (out['labels'][start:stop, :dy] == 0).all()


def test_center_crop_removes_padding():
    base = _sample()
    out = EMCenterCrop()(_sample())
    np.testing.assert_array_equal(out['labels'], base['labels'][:, 1:11, 2:8])
    np.testing.assert_array_equal(out['raw'], base['raw'][:, 1:11, 2:8])
    assert out['padding'] == (0, 0, 0)
    aff = np.ones((3, *SHAPE), np.float32)
    out = EMCenterCrop(size=(4, 4, 4))(dict(_sample(), gt_affinity=aff))
    assert out['gt_affinity'].shape == (3, 4, 4, 4)
    with pytest.raises(ValueError, match='larger'):
        EMCenterCrop(size=(8, 4, 4))(_sample())


def test_geometric_transforms_refuse_affinities():
    for transform in (EMRandomFlip(), EMRandomRotate90(), EMElasticDeform(),
                      EMMisalignment()):
        with pytest.raises(RuntimeError, match='GenerateAffinities'):
            transform(dict(_sample(), gt_affinity=np.zeros(1)))


def test_intensity_jitter():
    base = _sample()
    with seeded_rng(0):
        ident = EMIntensityJitter(contrast=(1, 1), brightness=(0, 0),
                                  gamma=(1, 1), prob=1.0)(_sample())
    np.testing.assert_allclose(ident['raw'], base['raw'], atol=1e-6)
    transform = EMIntensityJitter(per_section=True, prob=1.0)
    with seeded_rng(1):
        contrast, brightness, gamma = transform._draw(SHAPE[0])
    with seeded_rng(1):
        out = transform(_sample())
    expected = np.clip((base['raw'] - 0.5) * contrast + 0.5 + brightness,
                       0, 1)**gamma
    np.testing.assert_allclose(out['raw'], expected, atol=1e-6)
    assert out['raw'].dtype == np.float32
    assert len(np.unique(contrast)) == SHAPE[0]
    np.testing.assert_array_equal(out['labels'], base['labels'])


def test_missing_section_and_motion_blur_touch_raw_only():
    base = _sample()
    with seeded_rng(2):
        out = EMMissingSection(num_sections=2, fill_value=0.0,
                               prob=1.0)(_sample())
    changed = [z for z in range(SHAPE[0])
               if not np.array_equal(out['raw'][z], base['raw'][z])]
    assert len(changed) == 2
    assert all((out['raw'][z] == 0).all() for z in changed)
    np.testing.assert_array_equal(out['labels'], base['labels'])
    with seeded_rng(2):
        out = EMMissingSection(mode='previous', prob=1.0)(_sample())
    z = [z for z in range(SHAPE[0])
         if not np.array_equal(out['raw'][z], base['raw'][z])][0]
    np.testing.assert_array_equal(out['raw'][z], base['raw'][max(z - 1, 0)]
                                  if z else base['raw'][1])
    with seeded_rng(3):
        out = EMMotionBlur(kernel_size=(5, 5), prob=1.0)(_sample())
    changed = [z for z in range(SHAPE[0])
               if not np.array_equal(out['raw'][z], base['raw'][z])]
    assert len(changed) == 1
    z = changed[0]
    candidates = [np.convolve(np.pad(row, 2, mode='reflect'),
                              np.ones(5) / 5, mode='valid')
                  for row in base['raw'][z]]
    along_x = np.allclose(out['raw'][z], np.stack(candidates), atol=1e-6)
    cols = [np.convolve(np.pad(col, 2, mode='reflect'), np.ones(5) / 5,
                        mode='valid') for col in base['raw'][z].T]
    along_y = np.allclose(out['raw'][z], np.stack(cols).T, atol=1e-6)
    assert along_x or along_y
    with seeded_rng(3):
        untouched = EMMotionBlur(prob=0.0)(_sample())
    np.testing.assert_array_equal(untouched['raw'], base['raw'])


def test_pack_em_inputs_contract():
    results = _sample()
    results.update(gt_affinity=np.ones((3, *SHAPE), np.float32),
                   affinity_mask=np.zeros((3, *SHAPE), np.float32),
                   sample_idx=4, volume_name='v', crop_origin=(1, 2, 3),
                   raw=results['raw'][:, ::-1])
    packed = PackEMInputs()(results)
    inputs, sample = packed['inputs'], packed['data_samples']
    assert inputs.shape == (1, *SHAPE) and inputs.dtype == torch.float32
    np.testing.assert_array_equal(inputs[0].numpy(), results['raw'])
    assert isinstance(sample, DataSample)
    assert sample.gt_affinity.shape == (3, *SHAPE)
    assert sample.affinity_mask.dtype == torch.float32
    assert sample.gt_label.dtype == torch.int64
    assert torch.equal(sample.gt_label, torch.from_numpy(results['labels']))
    assert (sample.sample_idx, sample.volume_name, sample.crop_origin) == (
        4, 'v', (1, 2, 3))
    assert 'gt_label' not in PackEMInputs()(
        dict(raw=np.zeros(SHAPE, np.float32)))['data_samples']
