"""TokenUnify's Table 1 protocol in the VOI / ARAND metrics: scores against
boundary-widened ground truth, per named volume and their mean.

The reference widening below is written from the official definition,
``seg_widen_border(seg, tsz_h=1)`` in ``data/data_segmentation.py`` of
ydchen0806/TokenUnify@221674f4c9b87efc730370dcf0443cf0f334c928 (applied by
``Trainset.valid_provide`` with ``if_dilate: True``): per z-slice, the
slice is padded by numpy ``'reflect'``; for each voxel, ``p0`` is the max of
its 3 x 3 window and ``p1`` the min of the window after its zeros are
replaced by ``slice.max() + 1``; the voxel keeps its label iff ``p0 ==
p1``. The scores of the widened labels are then skimage's, with
``ignore_labels=[0]`` as the official evaluation calls it.
"""
import numpy as np
import pytest
import torch
from mmengine.evaluator import Evaluator
from skimage.metrics import adapted_rand_error as skimage_arand
from skimage.metrics import variation_of_information as skimage_voi

from vistok.evaluation.metrics.segmentation import VOI, AdaptedRandError
from vistok.registry import METRICS
from vistok.structures import DataSample


def widen_by_hand(seg, tsz_h=1):
    """The official ``seg_widen_border``, one voxel at a time."""
    out = seg.copy()
    size = 2 * tsz_h + 1
    for z in range(seg.shape[0]):
        padded = np.pad(seg[z], tsz_h, mode='reflect')
        top = seg[z].max()
        for y in range(seg.shape[1]):
            for x in range(seg.shape[2]):
                window = padded[y:y + size, x:x + size]
                p0 = window.max()
                p1 = np.where(window == 0, top + 1, window).min()
                if p0 != p1:
                    out[z, y, x] = 0
    return out


def hand_made_pair(seed):
    """Blocks of 3 x 3 voxels with ids 0..5 that change from slice to slice
    (so a 3-D window would widen differently), and a prediction that merges
    two ids and mislabels some voxels."""
    rng = np.random.default_rng(seed)
    gt = np.kron(rng.integers(0, 6, (4, 4, 5)), np.ones((1, 3, 3), np.int64))
    pred = np.where(gt == 2, 1, gt + 10)
    noise = rng.random(gt.shape) < 0.15
    pred[noise] = rng.integers(10, 13, noise.sum())
    return gt, pred


def run(metric, samples):
    metric.process(None, samples)
    return metric.compute_metrics(metric.results)


@pytest.mark.parametrize('seed', [0, 1])
def test_widened_scores_equal_skimage_on_hand_widened_labels(seed):
    gt, pred = hand_made_pair(seed)
    widened = widen_by_hand(gt)
    # the widening is not trivial on this volume
    assert 0 < (widened != gt).sum() < (gt != 0).sum()
    sample = dict(gt_label=torch.from_numpy(gt), pred_label=pred,
                  volume_name='v')
    voi = run(VOI(widen_gt_boundaries=True, report_unwidened=True), [sample])
    expected = skimage_voi(widened, pred, ignore_labels=[0])
    assert [voi['voi_split'], voi['voi_merge']] == pytest.approx(
        list(expected), rel=1e-10)
    assert voi['voi'] == pytest.approx(expected.sum(), rel=1e-10)
    unwidened = skimage_voi(gt, pred, ignore_labels=[0])
    assert [voi['voi_split_unwidened'], voi['voi_merge_unwidened']] == \
        pytest.approx(list(unwidened), rel=1e-10)
    assert abs(voi['voi'] - unwidened.sum()) > 1e-3  # the option matters
    arand = run(AdaptedRandError(widen_gt_boundaries=True), [sample])
    assert arand['arand'] == pytest.approx(
        skimage_arand(widened, pred, ignore_labels=[0])[0], rel=1e-10)
    # off by default: the stored labels are scored
    plain = run(VOI(), [sample])
    assert plain['voi'] == pytest.approx(unwidened.sum(), rel=1e-10)
    assert not any(key.endswith('_unwidened') for key in plain)


def test_per_volume_keys_through_the_evaluator():
    """Two named volumes through mmengine's Evaluator (which keeps only the
    first ``size`` results): a key per volume and the mean of the two."""
    volumes = {'wafer4': hand_made_pair(0), 'wafer36_2': hand_made_pair(1)}
    protocol = dict(widen_gt_boundaries=True, report_unwidened=True)
    evaluator = Evaluator([METRICS.build(dict(type='VOI', **protocol)),
                           METRICS.build(dict(type='AdaptedRandError',
                                              **protocol))])
    for name, (gt, pred) in volumes.items():
        sample = DataSample(metainfo=dict(volume_name=name))
        sample.gt_label = torch.from_numpy(gt)
        sample.pred_label = torch.from_numpy(pred)
        evaluator.process([sample])
    metrics = evaluator.evaluate(len(volumes))
    for suffix, widen in (('', widen_by_hand), ('_unwidened', lambda g: g)):
        per_volume = {}
        for name, (gt, pred) in volumes.items():
            split, merge = skimage_voi(widen(gt), pred, ignore_labels=[0])
            arand = skimage_arand(widen(gt), pred, ignore_labels=[0])[0]
            per_volume[name] = dict(voi_split=split, voi_merge=merge,
                                    voi=split + merge, arand=arand)
            for key, value in per_volume[name].items():
                assert metrics[f'{key}{suffix}/{name}'] == pytest.approx(
                    value, rel=1e-10), (key, suffix, name)
        for key in ('voi_split', 'voi_merge', 'voi', 'arand'):
            assert metrics[key + suffix] == pytest.approx(
                np.mean([s[key] for s in per_volume.values()]), rel=1e-10)
    assert metrics['voi/wafer4'] != pytest.approx(metrics['voi/wafer36_2'])
    # per_volume=False keeps the means only
    means = run(VOI(per_volume=False), [
        dict(gt_label=gt, pred_label=pred, volume_name=name)
        for name, (gt, pred) in volumes.items()])
    assert set(means) == {'voi_split', 'voi_merge', 'voi'}


def test_widening_options_are_checked():
    with pytest.raises(ValueError, match='ignore_labels'):
        VOI(widen_gt_boundaries=True, ignore_labels=())
    with pytest.raises(ValueError, match='widen_radius'):
        AdaptedRandError(widen_gt_boundaries=True, widen_radius=0)
    with pytest.raises(ValueError, match='report_unwidened'):
        VOI(report_unwidened=True)
    with pytest.raises(ValueError, match=r'\(D, H, W\)'):
        run(VOI(widen_gt_boundaries=True),
            [dict(gt_label=np.ones((4, 4), int),
                  pred_label=np.ones((4, 4), int))])
