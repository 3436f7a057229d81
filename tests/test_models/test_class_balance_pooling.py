"""Class-balance weights pooled over the affinity channels, as the official
TokenUnify fine-tuning (issue 18, item 2).

Reference: ``weight_binary_ratio`` of ``data/data_segmentation.py`` in
ydchen0806/TokenUnify (commit 221674f4), called once per crop on the whole
``(3, D, H, W)`` affinity block by ``src/data_provider_labeled.py``
(``weightmap = weight_binary_ratio(lb_affs)``), and once per channel with
the ``separate_weight`` flag of ``dataloader/data_provider_labeled.py``;
the loss is ``WeightedMSE`` of ``loss/loss.py``. Both are re-written below
from those definitions in NumPy.
"""
import numpy as np
import pytest
import torch

from vistok.models.losses.class_balanced_mse import (
    ClassBalancedMSELoss,
    binary_ratio_weights,
)


def official_weight_binary_ratio(label, mask=None, alpha=1.0):
    """``data/data_segmentation.py::weight_binary_ratio``, re-written."""
    if label.max() == label.min():
        return np.ones_like(label, np.float32)
    label = (label != 0).astype(int)
    if mask is None:
        factor = float(label.sum()) / np.prod(label.shape)
    else:
        factor = float((label * mask).sum()) / mask.sum()
    factor = np.clip(factor, a_min=5e-2, a_max=0.99)
    if factor > 0.5:
        weight = label + alpha * factor / (1 - factor) * (1 - label)
    else:
        weight = alpha * (1 - factor) / factor * label + (1 - label)
    if mask is not None:
        weight = weight * mask
    return weight.astype(np.float32)


def official_weights(target, mask=None, separate_weight=False):
    """The provider's weight map of each crop of a ``(B, 3, D, H, W)``
    batch: pooled over the channels, or per channel (``separate_weight``)."""
    target = target.numpy()
    mask = None if mask is None else mask.numpy()
    out = np.zeros_like(target, np.float32)
    for b in range(target.shape[0]):
        if separate_weight:
            for c in range(target.shape[1]):
                out[b, c] = official_weight_binary_ratio(
                    target[b, c], None if mask is None else mask[b, c])
        else:
            out[b] = official_weight_binary_ratio(
                target[b], None if mask is None else mask[b])
    return torch.from_numpy(out)


def official_weighted_mse(pred, target, weight):
    """``loss/loss.py::WeightedMSE``: ``Σ w (p - y)² / (B · D · H · W)``."""
    pred, target = pred.double(), target.double()
    norm = np.prod(pred.shape[2:]) * pred.shape[0]
    return (weight.double() * (pred - target)**2).sum().item() / norm


def hand_made_target():
    """One crop of 3 channels x 8 voxels: z none positive, y 2 of 8, x 4 of
    8; a second crop with 20 of 24 positive (majority positive)."""
    z = [0, 0, 0, 0, 0, 0, 0, 0]
    y = [1, 1, 0, 0, 0, 0, 0, 0]
    x = [1, 1, 1, 1, 0, 0, 0, 0]
    first = torch.tensor([z, y, x], dtype=torch.float32)
    second = torch.ones(3, 8)
    second[0, :4] = 0  # 4 negatives among 24
    return torch.stack([first, second]).view(2, 3, 2, 2, 2)


def test_pooled_weights_of_a_hand_made_target():
    target = hand_made_target()
    weights = binary_ratio_weights(target)
    # crop 0: f = 6 / 24 = 1/4 over the 3 channels -> every positive gets
    # (1 - f) / f = 3, every negative 1 (also the y and x positives, whose
    # own channels have f = 1/4 and 1/2)
    expected0 = torch.where(target[0] > 0.5, 3.0, 1.0)
    # crop 1: f = 20 / 24 = 5/6 > 0.5 -> negatives f / (1 - f) = 5
    expected1 = torch.where(target[1] > 0.5, 1.0, 5.0)
    torch.testing.assert_close(weights, torch.stack([expected0, expected1]))
    torch.testing.assert_close(weights, official_weights(target))


def test_per_channel_weights_of_a_hand_made_target():
    target = hand_made_target()
    weights = binary_ratio_weights(target, per_channel=True)
    # crop 0: z uniform -> 1; y f = 1/4 -> positives 3; x f = 1/2 -> all 1
    expected0 = torch.ones(3, 2, 2, 2)
    expected0[1] = torch.where(target[0, 1] > 0.5, 3.0, 1.0)
    # crop 1: z f = 1/2 -> all 1; y and x uniform positive -> 1
    expected1 = torch.ones(3, 2, 2, 2)
    torch.testing.assert_close(weights, torch.stack([expected0, expected1]))
    torch.testing.assert_close(
        weights, official_weights(target, separate_weight=True))


def test_clipping_of_the_pooled_fraction():
    # one positive among 3 x 8 = 24: f = 1/24 < 0.05 -> clipped -> 19
    sparse = torch.zeros(1, 3, 8)
    sparse[0, 2, 5] = 1
    assert binary_ratio_weights(sparse)[0, 2, 5].item() == pytest.approx(19)
    # one negative among 3 x 40 = 120: f = 119/120 > 0.99 -> 0.99 / 0.01
    dense = torch.ones(1, 3, 40)
    dense[0, 1, 7] = 0
    assert binary_ratio_weights(dense)[0, 1, 7].item() == pytest.approx(
        99, rel=1e-5)  # float32 0.99 / 0.01
    # an empty crop (all background) and a full one: uniform weights
    for uniform in (torch.zeros(1, 3, 8), torch.ones(1, 3, 8)):
        assert (binary_ratio_weights(uniform) == 1).all()


@pytest.mark.parametrize('with_mask', [False, True])
@pytest.mark.parametrize('per_channel', [False, True])
def test_loss_equals_the_official_weighted_mse(per_channel, with_mask):
    generator = torch.Generator().manual_seed(0)
    shape = (4, 3, 3, 5, 5)
    pred = torch.rand(shape, generator=generator)
    # channel-dependent positive rates, one empty and one full crop
    target = (torch.rand(shape, generator=generator) < torch.tensor(
        [0.9, 0.3, 0.6]).view(1, 3, 1, 1, 1)).float()
    target[2] = 0
    target[3] = 1
    mask = ((torch.rand(shape, generator=generator) > 0.2).float()
            if with_mask else None)
    loss = ClassBalancedMSELoss(per_channel=per_channel)
    weight = official_weights(target, mask, separate_weight=per_channel)
    if mask is not None:  # the uniform crops' all-ones weights
        weight = weight * mask
    assert loss(pred, target, mask).item() == pytest.approx(
        official_weighted_mse(pred, target, weight), rel=1e-6)


def test_default_is_pooled_and_the_two_differ():
    target = hand_made_target()
    pred = torch.full_like(target, 0.5)
    assert ClassBalancedMSELoss().per_channel is False
    pooled = ClassBalancedMSELoss()(pred, target)
    separate = ClassBalancedMSELoss(per_channel=True)(pred, target)
    # crop 0: 6 positives x 3 + 18 negatives; crop 1: 20 + 4 x 5 (pooled)
    # against 2 x 3 + 22 and 24 (per channel), each times 0.25 / (2 x 8)
    assert pooled.item() == pytest.approx((6 * 3 + 18 + 20 + 4 * 5) / 64)
    assert separate.item() == pytest.approx((2 * 3 + 22 + 24) / 64)


def test_weights_need_a_channel_axis():
    with pytest.raises(ValueError, match='B, C'):
        binary_ratio_weights(torch.zeros(3, 8))
