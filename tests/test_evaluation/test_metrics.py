import math

import numpy as np
import pytest
import torch
from mmengine.evaluator import Evaluator
from skimage.metrics import peak_signal_noise_ratio

from vistok.evaluation import PSNR, CodebookUsage
from vistok.registry import METRICS
from vistok.structures import DataSample


def random_pairs(num, seed=0):
    rng = np.random.default_rng(seed)
    gt = rng.uniform(0, 255, size=(num, 3, 8, 8))
    pred = np.clip(gt + rng.normal(0, 10, size=gt.shape), 0, 255)
    return gt, pred


def test_registered():
    assert isinstance(METRICS.build(dict(type='PSNR')), PSNR)
    assert isinstance(METRICS.build(dict(type='CodebookUsage')), CodebookUsage)


def test_psnr_matches_skimage():
    gt, pred = random_pairs(5)
    metric = PSNR()
    metric.process(None, [
        dict(pred_img=torch.from_numpy(p), gt_img=torch.from_numpy(g))
        for p, g in zip(pred, gt)
    ])
    expected = [
        peak_signal_noise_ratio(g, p, data_range=255) for p, g in zip(pred, gt)
    ]
    np.testing.assert_allclose(metric.results, expected, atol=1e-4, rtol=0)
    result = metric.evaluate(size=5)
    assert result['psnr'] == pytest.approx(np.mean(expected), abs=1e-4)


def test_psnr_clamps_to_data_range():
    gt = torch.full((1, 2, 2), 255.0)
    assert PSNR().image_psnr(gt + 10, gt) == PSNR().max_psnr
    assert PSNR().image_psnr(torch.zeros(1, 2, 2), gt - 300) == 100.0


def test_psnr_of_identical_images_is_capped():
    gt, pred = random_pairs(1)
    image = torch.from_numpy(gt[0])
    metric = PSNR(max_psnr=80.0)
    metric.process(None, [
        dict(pred_img=image.clone(), gt_img=image),
        dict(pred_img=torch.from_numpy(pred[0]), gt_img=image),
    ])
    assert metric.results[0] == 80.0
    noisy = peak_signal_noise_ratio(gt[0], pred[0], data_range=255)
    result = metric.evaluate(size=2)
    assert math.isfinite(result['psnr'])
    assert result['psnr'] == pytest.approx((80.0 + noisy) / 2, abs=1e-4)


def test_codebook_usage_on_known_histogram():
    metric = CodebookUsage()
    metric.process(None, [
        dict(tokens=torch.tensor([[0, 0], [1, 1]]), codebook_size=8),
        dict(tokens=torch.tensor([[2, 2], [2, 2]]), codebook_size=8),
    ])
    result = metric.evaluate(size=2)
    # histogram (2, 2, 4, 0, ...): p = (1/4, 1/4, 1/2), H = 1.5 ln 2
    assert result['usage'] == 3 / 8
    assert result['perplexity'] == pytest.approx(2 * math.sqrt(2), rel=1e-6)


def test_codebook_usage_rejects_mixed_codebook_sizes():
    metric = CodebookUsage()
    metric.process(None, [
        dict(tokens=torch.tensor([0]), codebook_size=8),
        dict(tokens=torch.tensor([0]), codebook_size=16),
    ])
    with pytest.raises(ValueError, match='codebook_size'):
        metric.evaluate(size=2)


def test_evaluator_with_data_samples():
    """The Evaluator converts DataSample to dicts before process()."""
    gt, pred = random_pairs(3, seed=1)
    samples = []
    for i in range(3):
        sample = DataSample(metainfo=dict(codebook_size=4, sample_idx=i))
        sample.pred_img = torch.from_numpy(pred[i]).float()
        sample.gt_img = torch.from_numpy(gt[i]).float()
        sample.tokens = torch.full((2, 2), i)
        samples.append(sample)
    evaluator = Evaluator([PSNR(), CodebookUsage()])
    evaluator.process(samples)
    result = evaluator.evaluate(3)
    assert set(result) == {'psnr', 'usage', 'perplexity', 'entropy'}
    assert result['usage'] == 3 / 4
    assert result['perplexity'] == pytest.approx(3.0, rel=1e-6)
