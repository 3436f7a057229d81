import math

import numpy as np
import pytest
import torch
from skimage.metrics import adapted_rand_error as skimage_arand
from skimage.metrics import variation_of_information as skimage_voi

from vistok.evaluation.metrics.segmentation import (
    VOI,
    AdaptedRandError,
    adapted_rand_error,
    contingency_table,
    variation_of_information,
)
from vistok.registry import METRICS


def random_pair(seed, shape=(6, 12, 12), gt_labels=6, pred_labels=9):
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, gt_labels, shape)
    # a prediction correlated with the ground truth, 0 is a normal label
    pred = np.where(rng.random(shape) < 0.7, gt * 3 % pred_labels,
                    rng.integers(0, pred_labels, shape))
    return gt, pred.astype(np.uint32)


def run_metric(metric, samples):
    metric.process(None, samples)
    return metric.compute_metrics(metric.results)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_functions_equal_skimage(seed):
    gt, pred = random_pair(seed)
    table = contingency_table(gt, pred)
    split, merge = variation_of_information(table)
    np.testing.assert_allclose([split, merge],
                               skimage_voi(gt, pred, ignore_labels=[0]),
                               rtol=1e-10, atol=1e-12)
    nats = variation_of_information(table, log_base=math.e)
    np.testing.assert_allclose(nats, np.array([split, merge]) * math.log(2),
                               rtol=1e-10)
    np.testing.assert_allclose(adapted_rand_error(table),
                               skimage_arand(gt, pred), rtol=1e-10)
    np.testing.assert_allclose(adapted_rand_error(table, alpha=0.3),
                               skimage_arand(gt, pred, alpha=0.3), rtol=1e-10)


def test_hand_made_values_and_background_handling():
    gt = np.array([[[0, 1, 1, 2, 2]]])
    merged = np.array([[[7, 1, 1, 1, 1]]])
    split, merge = variation_of_information(contingency_table(gt, merged))
    # one bit of merge error; the gt-0 voxel (labelled 7) is ignored
    assert (split, merge) == (pytest.approx(0.0), pytest.approx(1.0))
    # predicted 0 is a label like any other
    zeros = np.array([[[5, 0, 0, 2, 2]]])
    assert variation_of_information(contingency_table(gt, zeros)) == (
        pytest.approx(0.0), pytest.approx(0.0))
    with pytest.raises(ValueError, match='empty'):
        variation_of_information(contingency_table(np.zeros((2, 2), int),
                                                   np.ones((2, 2), int)))


def test_metrics_average_whole_volumes():
    volumes = [random_pair(seed) for seed in range(3)]
    samples = [
        dict(gt_label=torch.from_numpy(gt), pred_label=pred,
             volume_name=f'v{i}') for i, (gt, pred) in enumerate(volumes)
    ]
    voi = run_metric(METRICS.build(dict(type='VOI')), samples)
    expected = np.mean(
        [skimage_voi(gt, pred, ignore_labels=[0]) for gt, pred in volumes],
        axis=0)
    assert voi['voi_split'] == pytest.approx(expected[0], rel=1e-10)
    assert voi['voi_merge'] == pytest.approx(expected[1], rel=1e-10)
    assert voi['voi'] == pytest.approx(expected.sum(), rel=1e-10)
    arand = run_metric(AdaptedRandError(), samples)
    expected = np.mean([skimage_arand(gt, pred) for gt, pred in volumes],
                       axis=0)
    assert [arand['arand'], arand['arand_precision'],
            arand['arand_recall']] == pytest.approx(list(expected), rel=1e-10)


def test_parts_of_one_volume_are_scored_as_one_volume():
    gt, pred = random_pair(5, shape=(8, 10, 10))
    halves = [
        dict(gt_label=gt[:4], pred_label=torch.from_numpy(pred[:4].astype(
            np.int64)), volume_name='a'),
        dict(gt_label=gt[4:], pred_label=pred[4:], volume_name='a'),
    ]
    whole = skimage_voi(gt, pred, ignore_labels=[0])
    voi = run_metric(VOI(), halves)
    assert [voi['voi_split'], voi['voi_merge']] == pytest.approx(
        list(whole), rel=1e-10)
    arand = run_metric(AdaptedRandError(), halves)
    assert arand['arand'] == pytest.approx(skimage_arand(gt, pred)[0],
                                           rel=1e-10)
    # without grouping each half is its own volume
    separate = run_metric(VOI(group_key=None), halves)
    per_half = np.mean([
        skimage_voi(gt[:4], pred[:4], ignore_labels=[0]),
        skimage_voi(gt[4:], pred[4:], ignore_labels=[0])
    ], axis=0)
    assert separate['voi_split'] == pytest.approx(per_half[0], rel=1e-10)


def test_errors():
    with pytest.raises(KeyError, match='pred_label'):
        run_metric(VOI(), [dict(gt_label=np.zeros((2, 2), int))])
    with pytest.raises(ValueError, match='same shape'):
        contingency_table(np.zeros((2, 2), int), np.zeros((2, 3), int))
    with pytest.raises(TypeError, match='integer'):
        contingency_table(np.zeros((2, 2)), np.zeros((2, 2), int))
    with pytest.raises(ValueError, match='log_base'):
        VOI(log_base=1)
