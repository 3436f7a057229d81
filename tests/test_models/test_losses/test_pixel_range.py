"""``pixel_range``: every image loss term maps its [-1, 1] inputs onto the
range it declares (DESIGN.md §6), once, with
:func:`~vistok.models.losses.reconstruction.to_pixel_range`; the default
keeps each term's former behaviour bit for bit."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from vistok.models.losses import (
    LPIPS,
    AdversarialLoss,
    CharbonnierLoss,
    L1Loss,
    MSELoss,
    PerceptualFeatureLoss,
)
from vistok.models.losses.reconstruction import (
    check_pixel_range,
    to_pixel_range,
)


def pair(shape=(2, 3, 8, 8), seed=0):
    gen = torch.Generator().manual_seed(seed)
    target = torch.rand(shape, generator=gen) * 2 - 1
    pred = target + 0.3 * torch.randn(shape, generator=gen)
    return pred, target


def test_to_pixel_range_is_the_affine_map_from_minus_one_one():
    x = torch.tensor([-1.0, -0.5, 0.0, 1.0])
    assert torch.equal(to_pixel_range(x, (0.0, 1.0)),
                       torch.tensor([0.0, 0.25, 0.5, 1.0]))
    assert torch.equal(to_pixel_range(x, (0.0, 255.0)),
                       torch.tensor([0.0, 63.75, 127.5, 255.0]))
    assert to_pixel_range(x, (-1.0, 1.0)) is x  # the default: untouched
    with pytest.raises(ValueError, match='my_key.*high > low'):
        check_pixel_range((1, 0), 'my_key')
    with pytest.raises(ValueError, match='pixel_range must be a pair'):
        check_pixel_range((0, 1, 2))
    with pytest.raises(ValueError, match='high > low'):
        MSELoss(pixel_range=(1, 1))


@pytest.mark.parametrize('cls, penalty', [
    (MSELoss, lambda d: d.pow(2)),
    (L1Loss, lambda d: d.abs()),
    (CharbonnierLoss, lambda d: torch.sqrt(d.pow(2) + 1e-6)),
])
def test_pixel_losses_compute_on_their_range(cls, penalty):
    pred, target = pair()
    # default: the [-1, 1] values themselves, exactly as before
    assert torch.equal(cls()(pred, target), penalty(pred - target).mean())
    # TiTok: the same formula on [0, 1] images
    value = cls(pixel_range=(0, 1), loss_weight=2.0)(pred, target)
    pred01, target01 = (pred + 1) / 2, (target + 1) / 2
    torch.testing.assert_close(value,
                               2.0 * penalty(pred01 - target01).mean(),
                               rtol=1e-6, atol=0)


def test_l2_on_zero_one_is_a_quarter_of_l2_on_minus_one_one():
    pred, target = pair()
    torch.testing.assert_close(
        MSELoss(pixel_range=(0, 1))(pred, target),
        MSELoss()(pred, target) / 4, rtol=1e-6, atol=0)
    torch.testing.assert_close(
        L1Loss(pixel_range=(0, 1), reduction='sum')(pred, target),
        L1Loss(reduction='sum')(pred, target) / 2, rtol=1e-6, atol=0)


def test_lpips_trunk_sees_its_range():
    """LPIPS on [0, 1] with (shift, scale) equals LPIPS on [-1, 1] with
    (2·shift - 1, 2·scale): ((x+1)/2 - s)/c = (x - (2s-1)) / (2c)."""
    shift, scale = (-0.030, -0.088, -0.188), (0.458, 0.448, 0.450)
    small = dict(taps=(3, 8), channels=(64, 128), reduction='none')
    torch.manual_seed(0)
    on01 = LPIPS(shift=shift, scale=scale, pixel_range=(0, 1), **small)
    torch.manual_seed(0)  # the same random trunk and heads
    on11 = LPIPS(shift=tuple(2 * s - 1 for s in shift),
                 scale=tuple(2 * c for c in scale), **small)
    pred, target = pair((2, 3, 16, 16))
    with torch.no_grad():
        expected = on11.distance(pred, target)
        torch.testing.assert_close(on01.distance(pred, target), expected,
                                   rtol=1e-4, atol=1e-9)
        # and a different range changes the value
        on11.shift.copy_(torch.tensor(shift).view(1, 3, 1, 1))
        on11.scale.copy_(torch.tensor(scale).view(1, 3, 1, 1))
        assert not torch.allclose(on11.distance(pred, target), expected)


def test_perceptual_feature_loss_input_range():
    """Default [0, 1] (ImageNet classifiers), or any declared range,
    before the mean / std normalisation."""
    loss = PerceptualFeatureLoss(model_name='convnext_atto', resize=None)
    assert loss.pixel_range == (0.0, 1.0)
    images, _ = pair()
    mean = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
    for low, high in ((0.0, 1.0), (-1.0, 1.0), (0.0, 255.0)):
        loss.pixel_range = check_pixel_range((low, high))
        expected = ((images + 1) / 2 * (high - low) + low - mean) / std
        torch.testing.assert_close(loss.network_input(images), expected,
                                   rtol=1e-6, atol=1e-5)


class SquareDisc(nn.Module):
    """``D(x) = Σ x²`` per sample; records what it sees."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return x.pow(2).flatten(1).sum(1)


def test_discriminator_sees_the_declared_range():
    real, fake = pair()
    loss = AdversarialLoss(pixel_range=(0, 1), r1_weight=2.0,
                           lecam_weight=0.0)
    disc = SquareDisc()
    terms = loss.discriminator_losses(disc, real, fake)
    real01, fake01 = (real + 1) / 2, (fake + 1) / 2
    torch.testing.assert_close(disc.seen[0], real01, rtol=0, atol=1e-7)
    torch.testing.assert_close(disc.seen[1], fake01, rtol=0, atol=1e-7)
    # hinge on the logits of [0, 1] images
    d_real, d_fake = real01.pow(2).flatten(1).sum(1), \
        fake01.pow(2).flatten(1).sum(1)
    hinge = 0.5 * (F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean())
    torch.testing.assert_close(terms['loss_disc'], hinge)
    # R1 with respect to the discriminator's input: ∇ = 2·x01
    r1 = (2 * real01).pow(2).flatten(1).sum(1).mean()
    torch.testing.assert_close(terms['loss_r1'], 0.5 * 2.0 * r1)
    # the generator side goes through the same map
    disc.seen.clear()
    logits = loss.logits(disc, fake)
    torch.testing.assert_close(disc.seen[0], fake01, rtol=0, atol=1e-7)
    torch.testing.assert_close(logits, d_fake)


def test_adversarial_default_range_is_untouched():
    real, fake = pair()
    disc = SquareDisc()
    AdversarialLoss().discriminator_losses(disc, real, fake)
    assert torch.equal(disc.seen[0], real) and torch.equal(disc.seen[1], fake)
