"""vistok's sliding window on MONAI against the hand-written implementation
it replaced, written out below as the reference (window starts, symmetric
zero padding, Gaussian importance map with peak 1 floored at ``min_weight``,
weighted mean). The one difference is MONAI's importance map: not
normalised to peak 1 before the 1e-3 floor. With an odd window the peak is
1 and the outputs agree to 1e-5; with an even window they agree once the
reference leaves the peak unnormalised (``normalise_peak=False``), and the
difference it makes is measured."""
import itertools

import pytest
import torch
import torch.nn.functional as F

from vistok.models.segmentors.affinity_segmentor import DEFAULT_INFERENCE
from vistok.models.segmentors.sliding_window import (
    num_windows,
    sliding_window_inference,
)


def reference_gaussian(window, sigma_scale, min_weight, normalise_peak):
    axes = []
    for n in window:
        coords = torch.arange(n, dtype=torch.float64)
        axes.append(torch.exp(-(coords - (n - 1) / 2)**2 /
                              (2 * (sigma_scale * n)**2)))
    weights = axes[0]
    for axis in axes[1:]:
        weights = weights[..., None] * axis
    if normalise_peak:
        return (weights / weights.max()).clamp(min=min_weight)
    return weights.clamp(min=max(weights.min().item(), min_weight))


def reference_starts(size, window, step):
    starts = list(range(0, size - window + 1, step))
    if starts[-1] != size - window:
        starts.append(size - window)
    return starts


def reference_sliding_window(volume, predictor, window, overlap,
                             sigma_scale=0.125, min_weight=1e-3,
                             normalise_peak=True):
    """vistok's previous implementation, one (B, C, *spatial) volume."""
    steps = [max(int(n * (1 - overlap)), 1) for n in window]
    pad, crop = [], []
    for size, n in zip(volume.shape[2:], window):
        total = max(n - size, 0)
        pad.append((total // 2, total - total // 2))
        crop.append(slice(total // 2, total // 2 + size))
    volume = F.pad(volume, [v for p in reversed(pad) for v in p])
    spatial = volume.shape[2:]
    weight = reference_gaussian(window, sigma_scale, min_weight,
                                normalise_peak)
    out = weight_sum = 0
    for corner in itertools.product(*[
            reference_starts(s, n, st)
            for s, n, st in zip(spatial, window, steps)]):
        region = tuple(slice(c, c + n) for c, n in zip(corner, window))
        prediction = predictor(volume[(slice(None), slice(None)) + region])
        canvas = torch.zeros(prediction.shape[:2] + spatial,
                             dtype=torch.float64)
        canvas[(slice(None), slice(None)) + region] = prediction * weight
        count = torch.zeros(spatial, dtype=torch.float64)
        count[region] = weight
        out, weight_sum = out + canvas, weight_sum + count
    return (out / weight_sum)[(slice(None), slice(None)) + tuple(crop)]


def conv_predictor():
    """A non-pointwise predictor (windows disagree near their borders)."""
    torch.manual_seed(1)
    weight = torch.randn(3, 1, 3, 3, 3)
    return lambda x: torch.sigmoid(F.conv3d(x.double(), weight.double(),
                                            padding=1))


# (volume, window): odd window (peak exactly 1), even window as the
# official 16x160x160 crop scaled down, one axis shorter than its window
@pytest.mark.parametrize('shape,window', [((9, 29, 31), (5, 9, 11)),
                                          ((12, 40, 36), (4, 16, 16)),
                                          ((3, 20, 23), (5, 9, 9))])
def test_monai_equals_the_previous_implementation(shape, window):
    torch.manual_seed(0)
    volume = torch.rand(1, 1, *shape)
    predictor = conv_predictor()
    out = sliding_window_inference(volume[0], predictor, window,
                                   overlap=0.25, batch_size=3)
    assert out.shape == (3, ) + shape and out.dtype == torch.float32
    monai_weights = reference_sliding_window(volume, predictor, window,
                                             0.25, normalise_peak=False)[0]
    torch.testing.assert_close(out.double(), monai_weights, rtol=0,
                               atol=1e-5)
    previous = reference_sliding_window(volume, predictor, window, 0.25)[0]
    difference = (out.double() - previous).abs().max().item()
    if all(n % 2 for n in window):
        assert difference < 1e-5
    else:
        # even window: the peak is below 1 (0.57 for 4x16x16, 0.97 for the
        # official 16x160x160), so MONAI's 1e-3 floor is relatively higher
        # and floored window borders weigh more: measured 0.12 here, with
        # a random conv whose windows disagree strongly at their borders
        assert difference > 1e-3


def test_official_call_is_the_default_and_window_count():
    # src/inference_monai.py: sliding_window_inference(data, (16, 160, 160),
    # 20, model, overlap=0.25, mode="gaussian"); MONAI defaults otherwise
    assert DEFAULT_INFERENCE == dict(
        window=None, overlap=0.25, batch_size=1, weighting='gaussian',
        sigma_scale=0.125, pad_mode='constant', pad_value=0.0)
    # a MEC test volume: z step 12 over 125 -> 0, 12, ..., 108, 109: 11
    # windows; y/x step 120 over 1250 -> 0, 120, ..., 1080, 1090: 11
    assert num_windows((125, 1250, 1250), (16, 160, 160)) == 11**3


def test_the_input_volume_is_left_unchanged():
    # MONAI scales the predictor's output in place; an identity predictor
    # returns a view of the input, which must not be scaled
    volume = torch.rand(1, 6, 6, 6)
    before = volume.clone()
    out = sliding_window_inference(volume, lambda x: x, (4, 4, 4),
                                   overlap=0.5)
    assert torch.equal(volume, before)
    torch.testing.assert_close(out, before)
