import math

import pytest
import torch

from vistok.models.losses import CharbonnierLoss, L1Loss, MSELoss
from vistok.registry import LOSSES

PRED = torch.tensor([[[[0.0, 1.0], [2.0, -1.0]]]])  # (B, C, H, W)
TARGET = torch.zeros_like(PRED)
EPS = 1e-3
ELEMENTWISE = {
    'L1Loss': torch.tensor([0.0, 1.0, 2.0, 1.0]),
    'MSELoss': torch.tensor([0.0, 1.0, 4.0, 1.0]),
    'CharbonnierLoss': torch.tensor(
        [math.sqrt(d**2 + EPS**2) for d in (0.0, 1.0, 2.0, -1.0)]),
}


@pytest.mark.parametrize('name', sorted(ELEMENTWISE))
def test_values_and_reductions(name):
    expected = ELEMENTWISE[name].reshape(PRED.shape)
    weight = 0.5
    for reduction, reduced in (('mean', expected.mean()),
                               ('sum', expected.sum()), ('none', expected)):
        loss = LOSSES.build(
            dict(type=name, loss_weight=weight, reduction=reduction))
        torch.testing.assert_close(loss(PRED, TARGET), weight * reduced)


def test_loss_names():
    assert L1Loss().loss_name == 'loss_l1'
    assert MSELoss().loss_name == 'loss_mse'
    assert CharbonnierLoss().loss_name == 'loss_charbonnier'
    assert L1Loss(loss_name='loss_pixel').loss_name == 'loss_pixel'


def test_invalid_arguments():
    with pytest.raises(ValueError, match='reduction'):
        L1Loss(reduction='avg')
    with pytest.raises(ValueError, match='loss_name'):
        MSELoss(loss_name='pixel')


def test_charbonnier_gradient_is_finite_at_zero():
    pred = torch.zeros(1, 1, 2, 2, requires_grad=True)
    CharbonnierLoss()(pred, torch.zeros_like(pred)).backward()
    assert torch.isfinite(pred.grad).all()
