import math

import pytest
import torch
import torch.nn.functional as F

from vistok.models.segmentors.sliding_window import (
    num_windows,
    sliding_window_inference,
    window_starts,
)


def pointwise(x):
    """A translation-equivariant predictor: two channels per voxel."""
    return torch.cat([torch.sigmoid(3 * x), x**2], dim=1)


def test_window_starts_cover_and_end_at_border():
    assert window_starts(37, 16, 12) == [0, 12, 21]
    assert window_starts(16, 16, 12) == [0]
    assert window_starts(40, 16, 8) == [0, 8, 16, 24]
    assert window_starts(41, 16, 12) == [0, 12, 24, 25]
    assert num_windows((20, 37, 41), (8, 16, 16), 0.25) == 3 * 3 * 4


@pytest.mark.parametrize('overlap', [0.25, 0.5, (0.25, 0.25, 0.5), 0.0])
def test_pointwise_predictor_is_reproduced_exactly(overlap):
    torch.manual_seed(0)
    volume = torch.rand(1, 20, 37, 41)
    out = sliding_window_inference(
        volume, pointwise, (8, 16, 16), overlap=overlap, batch_size=3)
    assert out.shape == (2, 20, 37, 41) and out.dtype == torch.float32
    torch.testing.assert_close(out, pointwise(volume[None])[0])


def test_conv_predictor_with_one_window_equals_direct_prediction():
    torch.manual_seed(0)
    volume = torch.rand(2, 1, 8, 16, 16)
    weight = torch.randn(3, 1, 3, 3, 3)

    def conv(x):
        return F.conv3d(x, weight, padding=1)

    out = sliding_window_inference(volume, conv, (8, 16, 16))
    torch.testing.assert_close(out, conv(volume))


def test_blend_is_the_gaussian_weighted_mean_of_windows():
    # each window predicts its own start offset along x; the stitched value
    # at x must be Σ_k g(x - s_k) s_k / Σ_k g(x - s_k)
    length, window, sigma_scale = 30, 10, 0.125
    volume = torch.zeros(1, 1, 1, length)

    seen = []

    def predictor(windows):
        n = windows.shape[0]
        starts = torch.tensor(
            [window_starts(length, window, 6)[len(seen) + i]
             for i in range(n)], dtype=torch.float32)
        seen.extend(starts.tolist())
        return starts.view(n, 1, 1, 1, 1).expand(n, 1, 1, 1, window)

    out = sliding_window_inference(
        volume, predictor, (1, 1, window), overlap=(0, 0, 0.4), batch_size=2,
        sigma_scale=sigma_scale)
    assert seen == [0.0, 6.0, 12.0, 18.0, 20.0]
    sigma = sigma_scale * window
    for x in range(length):
        num = den = 0.0
        for s in seen:
            if s <= x < s + window:
                g = math.exp(-(x - s - (window - 1) / 2)**2 / (2 * sigma**2))
                num += g * s
                den += g
        assert out[0, 0, 0, x].item() == pytest.approx(num / den, rel=1e-5)


def test_constant_predictions_stay_constant_and_weights_are_normalised():
    ones = sliding_window_inference(
        torch.zeros(1, 13, 29, 31),
        lambda x: torch.ones(x.shape[0], 2, *x.shape[2:]), (4, 8, 8),
        overlap=0.5, weighting='constant')
    torch.testing.assert_close(ones, torch.ones(2, 13, 29, 31))
    gaussian = sliding_window_inference(
        torch.zeros(1, 13, 29, 31),
        lambda x: torch.full((x.shape[0], 1, *x.shape[2:]), 0.7), (4, 8, 8))
    torch.testing.assert_close(gaussian, torch.full((1, 13, 29, 31), 0.7))


def test_volume_smaller_than_window_is_padded_and_cropped_back():
    torch.manual_seed(0)
    small = torch.rand(2, 1, 5, 10, 40)
    out = sliding_window_inference(small, pointwise, (8, 16, 16))
    assert out.shape == (2, 2, 5, 10, 40)
    torch.testing.assert_close(out, pointwise(small))
    seen = []

    def record(x):
        seen.append(x.clone())
        return x

    sliding_window_inference(torch.ones(1, 2, 3, 3), record, (4, 5, 3),
                             pad_mode='constant', pad_value=-1.0)
    window = seen[0][0, 0]
    assert window.shape == (4, 5, 3)
    # symmetric padding with pad_value: 1 before and 1 after in z and y
    assert (window[1:3, 1:4] == 1).all()
    assert window[0].eq(-1).all() and window[:, 0].eq(-1).all()


def test_errors():
    volume = torch.zeros(1, 8, 8, 8)
    with pytest.raises(ValueError, match='overlap'):
        sliding_window_inference(volume, pointwise, (4, 4, 4), overlap=1.0)
    with pytest.raises(ValueError, match='one value per'):
        sliding_window_inference(volume, pointwise, (4, 4, 4),
                                 overlap=(0.5, 0.5))
    with pytest.raises(ValueError, match='weighting'):
        sliding_window_inference(volume, pointwise, (4, 4, 4),
                                 weighting='triangle')
    with pytest.raises(ValueError, match='spatial axes'):
        sliding_window_inference(torch.zeros(8, 8), pointwise, (4, 4, 4))
    with pytest.raises(ValueError, match='predictor must map'):
        sliding_window_inference(volume, lambda x: x[:, :, :2], (4, 4, 4))
