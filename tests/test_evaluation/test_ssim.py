import numpy as np
import pytest
import torch
from skimage import data
from skimage.color import rgb2gray, rgb2ycbcr
from skimage.metrics import structural_similarity

from vistok.evaluation.metrics.ssim import SSIM, rgb_to_luma, ssim
from vistok.registry import METRICS


def skimage_ssim(pred, gt, channel_axis=0):
    """skimage's SSIM with Wang et al.'s settings, channel-first input."""
    return structural_similarity(
        pred, gt, gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False, data_range=255,
        channel_axis=channel_axis)


def noisy(image, sigma, seed):
    rng = np.random.default_rng(seed)
    return np.clip(image + rng.normal(0, sigma, image.shape), 0, 255)


def astronaut_crops():
    """Three 48x56 crops of skimage's astronaut, (3, H, W) float64."""
    image = data.astronaut().astype(np.float64).transpose(2, 0, 1)
    return [image[:, y:y + 48, x:x + 56]
            for y, x in ((40, 160), (200, 220), (380, 60))]


def test_matches_skimage_on_random_rgb_and_gray():
    rng = np.random.default_rng(0)
    gt = rng.uniform(0, 255, size=(3, 3, 20, 23))
    pred = noisy(gt, 30, 1)
    got = ssim(torch.from_numpy(pred), torch.from_numpy(gt)).numpy()
    expected = [skimage_ssim(p, g) for p, g in zip(pred, gt)]
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    got = ssim(torch.from_numpy(pred[:, :1]), torch.from_numpy(gt[:, :1]))
    expected = [skimage_ssim(p[0], g[0], None) for p, g in zip(pred, gt)]
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize('sigma', [3.0, 25.0])
def test_matches_skimage_on_natural_images(sigma):
    crops = astronaut_crops()
    gt = np.stack(crops)
    pred = np.stack([noisy(c, sigma, i) for i, c in enumerate(crops)])
    got = ssim(torch.from_numpy(pred), torch.from_numpy(gt)).numpy()
    expected = [skimage_ssim(p, g) for p, g in zip(pred, gt)]
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    assert len(set(np.round(expected, 3))) == 3  # distinct, informative cases
    gray_gt = np.stack([rgb2gray(c.transpose(1, 2, 0) / 255) * 255
                        for c in crops])[:, None]
    gray_pred = np.clip(gray_gt + np.random.default_rng(7).normal(
        0, sigma, gray_gt.shape), 0, 255)
    got = ssim(torch.from_numpy(gray_pred), torch.from_numpy(gray_gt))
    expected = [skimage_ssim(p[0], g[0], None)
                for p, g in zip(gray_pred, gray_gt)]
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-4, rtol=0)


def test_volume_matches_skimage():
    rng = np.random.default_rng(3)
    gt = rng.uniform(0, 255, size=(1, 1, 12, 13, 14))
    pred = noisy(gt, 40, 4)
    got = ssim(torch.from_numpy(pred), torch.from_numpy(gt)).item()
    assert got == pytest.approx(skimage_ssim(pred[0, 0], gt[0, 0], None),
                                abs=1e-4)


def test_identical_images_and_precision():
    gt = torch.from_numpy(np.stack(astronaut_crops()))
    np.testing.assert_allclose(ssim(gt, gt).numpy(), 1.0, atol=1e-12)
    pred = torch.from_numpy(np.stack(
        [noisy(c, 10, i) for i, c in enumerate(astronaut_crops())]))
    fp64 = ssim(pred, gt)
    fp32 = ssim(pred.float(), gt.float())
    assert fp64.dtype == torch.float64 and fp32.dtype == torch.float32
    np.testing.assert_allclose(fp32.double().numpy(), fp64.numpy(),
                               atol=1e-5, rtol=0)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        autocast = ssim(pred.float(), gt.float())
    np.testing.assert_allclose(autocast.double().numpy(), fp64.numpy(),
                               atol=1e-5, rtol=0)


def test_shape_errors():
    with pytest.raises(ValueError, match='window size 11'):
        ssim(torch.zeros(1, 3, 10, 30), torch.zeros(1, 3, 10, 30))
    with pytest.raises(ValueError, match='differs'):
        ssim(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 17))


def test_luma_matches_skimage():
    crop = astronaut_crops()[0]
    y = rgb_to_luma(torch.from_numpy(crop)[None])[0, 0].numpy()
    expected = rgb2ycbcr(crop.transpose(1, 2, 0) / 255)[..., 0]
    np.testing.assert_allclose(y, expected, atol=1e-9)


def test_metric_rgb_and_luma():
    crops = astronaut_crops()
    preds = [noisy(c, 12, i) for i, c in enumerate(crops)]
    samples = [dict(pred_img=torch.from_numpy(p).float(),
                    gt_img=torch.from_numpy(g).float())
               for p, g in zip(preds, crops)]
    metric = METRICS.build(dict(type='SSIM'))
    assert isinstance(metric, SSIM)
    metric.process(None, samples)
    expected = np.mean([skimage_ssim(p.astype(np.float32).astype(np.float64),
                                     g) for p, g in zip(preds, crops)])
    assert metric.evaluate(size=3)['ssim'] == pytest.approx(expected,
                                                            abs=1e-4)
    luma = SSIM(convert_to='y')
    luma.process(None, samples)

    def y_of(image):
        return rgb2ycbcr(image.transpose(1, 2, 0) / 255)[..., 0]

    expected = np.mean([
        skimage_ssim(y_of(p.astype(np.float32).astype(np.float64)), y_of(g),
                     None) for p, g in zip(preds, crops)])
    assert luma.evaluate(size=3)['ssim'] == pytest.approx(expected, abs=1e-4)
    with pytest.raises(ValueError, match='convert_to'):
        SSIM(convert_to='ycbcr')
