import itertools

import numpy as np
import pytest

from vistok.datasets.em.affinity import (
    GenerateAffinities,
    affinities_from_labels,
    widen_label_boundaries,
)
from vistok.registry import TRANSFORMS


def reference_affinities(labels, offsets, mask_background=False):
    """Voxel-by-voxel definition."""
    aff = np.zeros((len(offsets), *labels.shape), np.float32)
    mask = np.zeros_like(aff)
    for c, off in enumerate(offsets):
        for p in itertools.product(*map(range, labels.shape)):
            q = tuple(a + b for a, b in zip(p, off))
            if not all(0 <= i < n for i, n in zip(q, labels.shape)):
                continue
            a, b = labels[p], labels[q]
            aff[(c, *p)] = a == b and a != 0
            mask[(c, *p)] = (a != 0 and b != 0) if mask_background else 1
    return aff, mask


def reference_widen(labels, radius):
    """Kisuk Lee's rule with windows truncated at the slice border."""
    out = labels.copy()
    for z, y, x in itertools.product(*map(range, labels.shape)):
        window = labels[z, max(y - radius, 0):y + radius + 1,
                        max(x - radius, 0):x + radius + 1]
        if len(set(window[window != 0].tolist())) > 1:
            out[z, y, x] = 0
    return out


def test_hand_made_nearest_neighbour_affinities():
    labels = np.array([[[1, 1, 2],
                        [1, 0, 2]],
                       [[1, 3, 2],
                        [0, 0, 2]]])
    aff, mask = affinities_from_labels(labels)
    assert aff.shape == mask.shape == (3, 2, 2, 3)
    assert aff.dtype == mask.dtype == np.float32
    # z: no neighbour below z = 0; at z = 1 compare with z = 0
    np.testing.assert_array_equal(aff[0, 0], 0)
    np.testing.assert_array_equal(mask[0, 0], 0)
    np.testing.assert_array_equal(aff[0, 1], [[1, 0, 1], [0, 0, 1]])
    np.testing.assert_array_equal(mask[0, 1], 1)
    # y: row 0 has no neighbour; background never links
    np.testing.assert_array_equal(aff[1, :, 0], 0)
    np.testing.assert_array_equal(mask[1, :, 0], 0)
    np.testing.assert_array_equal(aff[1, :, 1], [[1, 0, 1], [0, 0, 1]])
    # x: column 0 has no neighbour
    np.testing.assert_array_equal(aff[2, :, :, 0], 0)
    np.testing.assert_array_equal(mask[2, :, :, 0], 0)
    np.testing.assert_array_equal(aff[2, :, :, 1:],
                                  [[[1, 0], [0, 0]], [[0, 0], [0, 0]]])
    np.testing.assert_array_equal(mask[2, :, :, 1:], 1)
    # masking the background: pairs touching label 0
    _, mask_bg = affinities_from_labels(labels, mask_background=True)
    np.testing.assert_array_equal(mask_bg[2, 0, 0], [0, 1, 1])
    np.testing.assert_array_equal(mask_bg[2, 1, 1], [0, 0, 0])
    np.testing.assert_array_equal(mask_bg[0, 1], [[1, 1, 1], [0, 0, 1]])


@pytest.mark.parametrize('mask_background', [False, True])
def test_matches_definition_for_any_offsets(mask_background):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, (3, 5, 4))
    offsets = [(-1, 0, 0), (0, -1, 0), (0, 0, -1), (0, 0, 2), (1, -2, 1),
               (0, 0, -4), (5, 0, 0)]
    aff, mask = affinities_from_labels(labels, offsets, mask_background)
    ref_aff, ref_mask = reference_affinities(labels, offsets,
                                             mask_background)
    np.testing.assert_array_equal(aff, ref_aff)
    np.testing.assert_array_equal(mask, ref_mask)
    assert not aff[-1].any() and not mask[-1].any()  # always outside


def test_widen_boundaries_hand_made():
    labels = np.array([[[1, 1, 2, 2],
                        [1, 1, 2, 2],
                        [0, 0, 0, 3]]])
    expected = [[[1, 0, 0, 2],
                 [1, 0, 0, 0],
                 [0, 0, 0, 0]]]
    out = widen_label_boundaries(labels)
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == labels.dtype
    np.testing.assert_array_equal(labels[0, 0], [1, 1, 2, 2])  # untouched


@pytest.mark.parametrize('radius', [1, 2])
def test_widen_boundaries_matches_rule_slice_by_slice(radius):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, (3, 7, 6)).repeat(2, axis=1)
    np.testing.assert_array_equal(widen_label_boundaries(labels, radius),
                                  reference_widen(labels, radius))


def test_widened_affinities_and_background_mask():
    labels = np.array([[[1, 1, 2, 2],
                        [1, 1, 2, 2],
                        [0, 0, 0, 3]]])
    aff, mask = affinities_from_labels(labels, widen_boundaries=True,
                                       mask_background=True)
    ref_aff, _ = reference_affinities(reference_widen(labels, 1),
                                      [(-1, 0, 0), (0, -1, 0), (0, 0, -1)])
    _, ref_mask = reference_affinities(labels, [(-1, 0, 0), (0, -1, 0),
                                                (0, 0, -1)], True)
    np.testing.assert_array_equal(aff, ref_aff)
    # the mask follows the original background, not the widened one
    np.testing.assert_array_equal(mask, ref_mask)


def test_generate_affinities_transform():
    transform = TRANSFORMS.build(
        dict(type='GenerateAffinities', widen_boundaries=True,
             offsets=[(0, -1, 0), (0, 0, -1)]))
    labels = np.array([[[1, 1, 2, 2], [1, 1, 2, 2], [0, 0, 0, 3]]])
    results = transform(dict(raw=np.zeros(labels.shape, np.float32),
                             labels=labels.copy()))
    assert results['gt_affinity'].shape == (2, 1, 3, 4)
    np.testing.assert_array_equal(results['labels'], labels)
    expected, _ = affinities_from_labels(labels, [(0, -1, 0), (0, 0, -1)],
                                         widen_boundaries=True)
    np.testing.assert_array_equal(results['gt_affinity'], expected)
    with pytest.raises(KeyError, match='label_key'):
        GenerateAffinities()(dict(raw=np.zeros((1, 2, 2), np.float32)))
