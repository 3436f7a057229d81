import numpy as np
import pytest
import torch

from vistok.models.losses.class_balanced_mse import (
    ClassBalancedMSELoss,
    binary_ratio_weights,
)
from vistok.registry import LOSSES


def reference_loss(pred, target, mask, min_ratio=0.05, max_ratio=0.99,
                   channels_in_divisor=False):
    """Official WeightedMSE with weight_binary_ratio per channel (the
    ``separate_weight`` option), written with loops; the pooled default is
    tested in test_class_balance_pooling.py."""
    pred, target = pred.numpy().astype(np.float64), target.numpy()
    mask = np.ones_like(target) if mask is None else mask.numpy()
    total = 0.0
    for b in range(pred.shape[0]):
        for c in range(pred.shape[1]):
            y, m = target[b, c], mask[b, c]
            f = (y * m).sum() / m.sum() if m.sum() else min_ratio
            f = min(max(f, min_ratio), max_ratio)
            if f > 0.5:
                w = np.where(y > 0.5, 1.0, f / (1 - f))
            else:
                w = np.where(y > 0.5, (1 - f) / f, 1.0)
            total += (w * m * (pred[b, c] - y)**2).sum()
    count = pred.size if channels_in_divisor else pred.size // pred.shape[1]
    return total / count


def test_weights_of_a_hand_made_map():
    target = torch.tensor([1., 0, 0, 0, 1, 1, 1, 0]).view(1, 2, 4)
    weights = binary_ratio_weights(target, per_channel=True)
    # channel 0: f = 1/4 -> positives (1 - f) / f = 3; channel 1: f = 3/4
    # -> negatives f / (1 - f) = 3
    torch.testing.assert_close(
        weights, torch.tensor([3., 1, 1, 1, 1, 1, 1, 3]).view(1, 2, 4))
    # all positive: f clipped to 0.99, no negative to up-weight
    assert (binary_ratio_weights(torch.ones(1, 1, 5)) == 1).all()
    # one positive among 100: f = 0.01 clipped to 0.05 -> weight 19
    sparse = torch.zeros(1, 1, 100)
    sparse[0, 0, 3] = 1
    assert binary_ratio_weights(sparse)[0, 0, 3].item() == pytest.approx(19)


@pytest.mark.parametrize('with_mask', [False, True])
@pytest.mark.parametrize('divide_by_channels', [False, True])
def test_loss_matches_the_official_formula(with_mask, divide_by_channels):
    torch.manual_seed(0)
    pred = torch.rand(2, 3, 4, 6, 6)
    target = (torch.rand(2, 3, 4, 6, 6) < torch.tensor(
        [0.9, 0.3, 0.5]).view(1, 3, 1, 1, 1)).float()
    mask = (torch.rand(2, 3, 4, 6, 6) > 0.2).float() if with_mask else None
    loss = ClassBalancedMSELoss(per_channel=True,
                                divide_by_channels=divide_by_channels)
    value = loss(pred, target, mask)
    assert value.dtype == torch.float32 and value.ndim == 0
    assert value.item() == pytest.approx(
        reference_loss(pred, target, mask,
                       channels_in_divisor=divide_by_channels), rel=1e-5)


def test_gradient_loss_weight_registry_and_autocast():
    torch.manual_seed(0)
    pred = torch.rand(1, 3, 2, 4, 4, requires_grad=True)
    target = (torch.rand(1, 3, 2, 4, 4) > 0.5).float()
    loss = LOSSES.build(dict(type='ClassBalancedMSELoss', loss_weight=2.0))
    assert loss.loss_name == 'loss_affinity'
    value = loss(pred, target)
    value.backward()
    weights = binary_ratio_weights(target)
    expected = 2.0 * 2 * weights * (pred.detach() - target) / (2 * 4 * 4)
    torch.testing.assert_close(pred.grad, expected)
    with torch.autocast(device_type='cpu', dtype=torch.bfloat16):
        low = loss(pred.detach().bfloat16(), target.bfloat16())
    assert low.dtype == torch.float32


def test_errors():
    loss = ClassBalancedMSELoss()
    with pytest.raises(ValueError, match='same shape'):
        loss(torch.zeros(1, 3, 4), torch.zeros(1, 3, 5))
    with pytest.raises(ValueError, match='mask'):
        loss(torch.zeros(1, 3, 4), torch.zeros(1, 3, 4), torch.ones(1, 1, 4))
    with pytest.raises(ValueError, match='min_ratio'):
        ClassBalancedMSELoss(min_ratio=0.6, max_ratio=0.5)
    with pytest.raises(ValueError, match='loss_name'):
        ClassBalancedMSELoss(loss_name='affinity')
