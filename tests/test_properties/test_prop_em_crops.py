"""The EM volume dataset's crop arithmetic for any volume, region, crop and
padding (issue 17, item 5): every window lies on the (mirrored) region and
has the requested shape, or the dataset refuses with a clear error.

The reference is written from the dataset's documented semantics, not
from its code: ``valid_region`` pairs are Python slices of each axis;
voxels outside the region are mirrored from the inside (numpy's
``'reflect'``: coordinate ``r0 + k`` reads ``r0 + m(k)`` with ``m`` the
reflection of period ``2 (n - 1)`` of a region of ``n`` voxels, ``m = 0``
for ``n = 1``); a training crop lies inside the region along every axis
where the region holds it, else it is centred on the region
(``origin = r0 - (crop - n) // 2``); a test grid covers the region with
crops inside it (first at ``r0``, last ending at ``r1``, steps of at most
``grid_stride``); ``'whole'`` reads the region. Each item's ``raw`` is the
window ``crop + 2 * padding`` around the crop, and
``EMCenterCrop`` cuts the crop itself out of it.
"""
import os.path as osp
import tempfile

import h5py
import numpy as np
import pytest
from _properties import examples
from hypothesis import given
from hypothesis import strategies as st

from vistok.datasets.em.transforms import EMCenterCrop
from vistok.datasets.em.volume_dataset import EMVolumeDataset
from vistok.datasets.samplers import SeededIndex

#: raw intensities are uint16 (distinct for every voxel of these volumes)
RAW_MAX = 65535
DRAWS = 3  # training draws per example

sides = st.integers(1, 7)
triples = st.tuples(sides, sides, sides)
bounds = st.one_of(st.none(), st.integers(-9, 9))
regions = st.one_of(st.none(), st.tuples(*[st.one_of(
    st.none(), st.tuples(bounds, bounds))] * 3))


def mirror(k: np.ndarray, n: int) -> np.ndarray:
    """Offsets into a region of ``n`` voxels of the offsets ``k`` from its
    start, mirrored as numpy's ``'reflect'`` padding (no edge repeat)."""
    if n == 1:
        return np.zeros_like(k)
    period = 2 * (n - 1)
    k = np.mod(k, period)
    return np.where(k < n, k, period - k)


def expected_window(volume: np.ndarray, region, origin, size) -> np.ndarray:
    axes = [r0 + mirror(np.arange(o, o + s) - r0, r1 - r0)
            for (r0, r1), o, s in zip(region, origin, size)]
    return volume[np.ix_(*axes)]


def python_region(shape, valid_region):
    """``(start, stop)`` per axis by Python slicing, None when empty."""
    pairs = valid_region or (None, None, None)
    out = []
    for size, pair in zip(shape, pairs):
        picked = range(size)[slice(*(pair or (None, None)))]
        if not len(picked):
            return None
        out.append((picked.start, picked.stop))
    return out


def make_volume(root: str, shape) -> tuple:
    raw = np.arange(int(np.prod(shape)), dtype=np.uint16).reshape(shape)
    labels = (raw.astype(np.uint32) + 1) * 3
    with h5py.File(osp.join(root, 'vol.h5'), 'w') as f:
        f.create_dataset('volumes/raw', data=raw)
        f.create_dataset('volumes/labels/neuron_ids', data=labels)
    return raw, labels


def check_item(item, raw, labels, region, crop, padding) -> None:
    """``item``'s window is the mirrored region around its crop."""
    origin = item['crop_origin']
    window = [c + 2 * p for c, p in zip(crop, padding)]
    start = [o - p for o, p in zip(origin, padding)]
    assert item['raw'].shape == tuple(window)
    assert tuple(item['crop_size']) == tuple(crop)
    assert tuple(item['padding']) == tuple(padding)
    np.testing.assert_array_equal(
        item['raw'], expected_window(raw, region, start, window).astype(
            np.float32) / np.float32(RAW_MAX))
    np.testing.assert_array_equal(
        item['labels'], expected_window(labels, region, start, window))
    cropped = EMCenterCrop().transform(dict(item))
    np.testing.assert_array_equal(
        cropped['labels'], expected_window(labels, region, origin, crop))


def build(root, mode, crop, padding, valid_region, grid_stride):
    return EMVolumeDataset(
        [osp.join(root, 'vol.h5')], crop_size=crop, padding=padding,
        valid_region=valid_region, samples_per_epoch=DRAWS,
        test_mode=mode != 'train',
        test_crops='whole' if mode == 'train' else mode,
        grid_stride=grid_stride)


@examples(100)
@given(shape=triples, crop=st.tuples(*[st.integers(1, 9)] * 3),
       padding=st.tuples(*[st.integers(0, 3)] * 3), valid_region=regions,
       mode=st.sampled_from(['train', 'grid', 'grid', 'whole']),
       grid_stride=st.one_of(st.none(), triples), seed=st.integers(0, 99))
def test_every_window_lies_on_the_mirrored_region(shape, crop, padding,
                                                  valid_region, mode,
                                                  grid_stride, seed):
    region = python_region(shape, valid_region)
    with tempfile.TemporaryDirectory() as root:
        raw, labels = make_volume(root, shape)
        if region is None:  # empty along an axis: refused, naming both
            with pytest.raises(ValueError) as err:
                build(root, mode, crop, padding, valid_region, grid_stride)
            assert (f'valid_region {valid_region!r} is empty' in str(err.value)
                    and str(tuple(shape)) in str(err.value)), err.value
            return
        dataset = build(root, mode, crop, padding, valid_region, grid_stride)
        if mode == 'train':
            items = [dataset[SeededIndex(i, seed + i)] for i in range(DRAWS)]
        else:
            items = [dataset[i] for i in range(len(dataset))]
    sizes = [r1 - r0 for r0, r1 in region]
    if mode == 'whole':
        assert len(items) == 1
        assert tuple(items[0]['crop_origin']) == tuple(r0 for r0, _ in region)
        check_item(items[0], raw, labels, region, sizes, padding)
        return
    for item in items:
        check_item(item, raw, labels, region, crop, padding)
        for o, c, n, (r0, r1) in zip(item['crop_origin'], crop, sizes,
                                     region):
            if n >= c:
                assert r0 <= o <= r1 - c, (o, c, (r0, r1))
            else:
                assert o == r0 - (c - n) // 2, (o, c, (r0, r1))
    if mode == 'grid':
        stride = grid_stride or crop
        origins = {tuple(item['crop_origin']) for item in items}
        assert len(origins) == len(items)
        for axis, ((r0, r1), c, s) in enumerate(zip(region, crop, stride)):
            starts = sorted({o[axis] for o in origins})
            if r1 - r0 <= c:
                assert starts == [r0 - (c - (r1 - r0)) // 2]
                continue
            assert starts[0] == r0 and starts[-1] == r1 - c
            assert all(0 < b - a <= s for a, b in zip(starts, starts[1:]))
        per_axis = [len({o[axis] for o in origins}) for axis in range(3)]
        assert len(items) == int(np.prod(per_axis))  # the full grid


BAD_TRIPLES = [3.5, '16', None, 16, (16, 16), (4, 4.5, 4), ('4', 4, 4),
               (4, True, 4), (0, 4, 4), (4, -1, 4)]


@examples(20)
@given(key=st.sampled_from(['crop_size', 'padding', 'grid_stride']),
       value=st.sampled_from(BAD_TRIPLES))
def test_malformed_shapes_are_refused_naming_the_key(key, value):
    if key == 'padding' and value in ((0, 4, 4), ):
        return  # a zero padding is valid
    if key == 'grid_stride' and value is None:
        return  # None: the crop size
    options = dict(crop_size=(2, 2, 2), padding=(0, 0, 0), grid_stride=None)
    options[key] = value
    with tempfile.TemporaryDirectory() as root:
        make_volume(root, (4, 4, 4))
        with pytest.raises(ValueError, match=f'{key} must be three'):
            EMVolumeDataset([osp.join(root, 'vol.h5')], test_mode=True,
                            test_crops='grid', **options)
