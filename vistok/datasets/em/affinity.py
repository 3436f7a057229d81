"""Affinity targets of neuron segmentation from label volumes.

An affinity graph (Turaga et al., 2010, "Convolutional networks can learn to
generate affinity graphs for image segmentation") has one channel per offset
``(dz, dy, dx)``: channel ``c`` at voxel ``p`` is 1 when ``p`` and its
neighbour ``p + offsets[c]`` carry the same non-zero label, else 0. With the
default nearest-neighbour offsets ``(-1, 0, 0), (0, -1, 0), (0, 0, -1)``
channel ``c`` links each voxel to its predecessor along axis ``c``, the
convention of waterz and of TokenUnify's fine-tuning (z, y, x order).

Labels are ``(D, H, W)`` integer arrays, 0 = background / unlabelled.
"""
from typing import Sequence, Tuple

import numpy as np
from mmcv.transforms import BaseTransform
from scipy import ndimage

from vistok.registry import TRANSFORMS

NEAREST_NEIGHBOUR_OFFSETS = ((-1, 0, 0), (0, -1, 0), (0, 0, -1))


def widen_label_boundaries(labels: np.ndarray,
                           radius: int = 1) -> np.ndarray:
    """Kisuk Lee's boundary widening (Lee et al., 2017, "Superhuman accuracy
    on the SNEMI3D connectomics challenge", and his thesis A.1.4), slice by
    slice: a voxel whose ``(2 radius + 1)^2`` in-plane window holds more than
    one distinct non-zero label becomes 0. Touching objects are thereby
    separated by a gap, so the affinities across every in-plane boundary are
    0 on both sides. Windows are mirrored at the slice border (numpy's
    ``'reflect'`` padding, as in TokenUnify / pytorch_connectomics'
    ``seg_widen_border``).

    Args:
        labels: ``(D, H, W)`` integer labels, 0 = background.
        radius: half width of the in-plane window.

    Returns:
        A new ``(D, H, W)`` array of the same dtype.
    """
    if labels.ndim != 3:
        raise ValueError(f'widen_label_boundaries expects (D, H, W) '
                         f'labels, got shape {labels.shape}')
    size = (1, 2 * radius + 1, 2 * radius + 1)
    window_max = ndimage.maximum_filter(labels, size=size, mode='mirror')
    # zeros must not count in the minimum: lift them above every label
    lifted = np.where(labels == 0, labels.max() + 1, labels)
    window_min = ndimage.minimum_filter(lifted, size=size, mode='mirror')
    return np.where(window_max == window_min, labels, 0).astype(labels.dtype)


def _shifted_views(shape: Sequence[int], offset: Sequence[int]):
    """Slices ``(voxels, neighbours)`` such that ``a[voxels]`` and
    ``a[neighbours]`` pair each voxel having a neighbour at ``offset``
    inside the volume with that neighbour."""
    voxels, neighbours = [], []
    for size, step in zip(shape, offset):
        if abs(step) >= size:
            return None
        if step >= 0:
            voxels.append(slice(0, size - step))
            neighbours.append(slice(step, size))
        else:
            voxels.append(slice(-step, size))
            neighbours.append(slice(0, size + step))
    return tuple(voxels), tuple(neighbours)


def affinities_from_labels(
    labels: np.ndarray,
    offsets: Sequence[Sequence[int]] = NEAREST_NEIGHBOUR_OFFSETS,
    mask_background: bool = False,
    widen_boundaries: bool = False,
    widen_radius: int = 1,
) -> Tuple[np.ndarray, np.ndarray]:
    """Affinities and their validity mask from a label volume.

    ``aff[c, p] = 1`` iff ``labels[p] == labels[p + offsets[c]] != 0``.
    ``mask[c, p] = 0`` where ``p + offsets[c]`` lies outside the volume
    (``aff`` is 0 there too) and, with ``mask_background``, where either
    voxel is 0 (unlabelled: no target at all). Without it (TokenUnify's
    choice) background is a valid negative target.

    Args:
        labels: ``(D, H, W)`` integer labels, 0 = background / unlabelled.
        offsets: ``(C, 3)`` integer ``(dz, dy, dx)`` neighbour offsets.
        mask_background: also mask pairs touching label 0.
        widen_boundaries: apply :func:`widen_label_boundaries` to the
            labels first (the fine-tuning recipe of TokenUnify /
            Superhuman); the background it creates is a negative target
            even with ``mask_background``, which only looks at the original
            zeros.
        widen_radius: ``radius`` of :func:`widen_label_boundaries`.

    Returns:
        ``(aff, mask)``, both ``(C, D, H, W)`` float32 in {0, 1}.
    """
    if labels.ndim != 3:
        raise ValueError(f'affinities_from_labels expects (D, H, W) labels, '
                         f'got shape {labels.shape}')
    offsets = [tuple(int(s) for s in off) for off in offsets]
    if any(len(off) != 3 for off in offsets):
        raise ValueError(f'offsets must be (dz, dy, dx) triples, got '
                         f'{offsets}')
    target = (widen_label_boundaries(labels, widen_radius)
              if widen_boundaries else labels)
    aff = np.zeros((len(offsets), *labels.shape), np.float32)
    mask = np.zeros_like(aff)
    for c, off in enumerate(offsets):
        views = _shifted_views(labels.shape, off)
        if views is None:  # the neighbour is always outside
            continue
        here, there = views
        aff[c][here] = (target[here] == target[there]) & (target[here] != 0)
        if mask_background:
            mask[c][here] = (labels[here] != 0) & (labels[there] != 0)
        else:
            mask[c][here] = 1
    return aff, mask


@TRANSFORMS.register_module()
class GenerateAffinities(BaseTransform):
    """Add ``gt_affinity`` and ``affinity_mask`` (``(C, D, H, W)`` float32)
    computed by :func:`affinities_from_labels` from ``results['labels']``
    (``(D, H, W)`` int). ``labels`` itself is left as it is (the widened
    labels only define the affinity target; metrics use the original ones).
    Put it after the geometric augmentations: affinities do not follow a
    flip or a rotation.

    Args:
        offsets, mask_background, widen_boundaries, widen_radius: as in
            :func:`affinities_from_labels`.
    """

    def __init__(self,
                 offsets: Sequence[Sequence[int]] = NEAREST_NEIGHBOUR_OFFSETS,
                 mask_background: bool = False,
                 widen_boundaries: bool = False,
                 widen_radius: int = 1):
        self.offsets = tuple(tuple(int(s) for s in off) for off in offsets)
        self.mask_background = mask_background
        self.widen_boundaries = widen_boundaries
        self.widen_radius = widen_radius

    def transform(self, results: dict) -> dict:
        if 'labels' not in results:
            raise KeyError(
                f'GenerateAffinities needs `labels` in the results (volume '
                f'{results.get("volume_name")!r} was loaded without labels; '
                f'set the dataset\'s label_key)')
        results['gt_affinity'], results['affinity_mask'] = (
            affinities_from_labels(results['labels'], self.offsets,
                                   self.mask_background,
                                   self.widen_boundaries,
                                   self.widen_radius))
        return results

    def __repr__(self):
        return (f'{type(self).__name__}(offsets={self.offsets}, '
                f'mask_background={self.mask_background}, '
                f'widen_boundaries={self.widen_boundaries}, '
                f'widen_radius={self.widen_radius})')
