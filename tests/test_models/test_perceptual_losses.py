import os.path as osp

import lpips
import pytest
import timm
import torch
import torch.nn.functional as F

from _helpers import lpips_package_model, save_random_vgg16
from vistok.models.losses import perceptual
from vistok.models.losses.perceptual import LPIPS, PerceptualFeatureLoss
from vistok.registry import LOSSES
from vistok.utils.weights import MissingWeightsError

TINY_TIMM = 'convnext_atto'


@pytest.fixture(scope='module')
def vgg_file(tmp_path_factory):
    return save_random_vgg16(tmp_path_factory.mktemp('vgg') / 'vgg16.pth')


@pytest.fixture(scope='module')
def ours(vgg_file):
    loss = LPIPS(trunk_path=vgg_file, reduction='none')
    loss.init_weights()
    return loss


@pytest.fixture(scope='module')
def reference(vgg_file):
    return lpips_package_model(vgg_file)


def image_pair(batch=3, size=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    target = torch.rand(batch, 3, size, size, generator=gen) * 2 - 1
    pred = (target + 0.3 * torch.randn(target.shape, generator=gen)).clamp(
        -1, 1)
    return pred, target


def test_lpips_equals_lpips_package(ours, reference):
    pred, target = image_pair()
    with torch.no_grad():
        expected = reference(pred, target).flatten()
        per_sample = ours(pred, target)
    assert per_sample.shape == (3, )
    assert expected.min() > 0
    torch.testing.assert_close(per_sample, expected, atol=1e-7, rtol=1e-5)


def test_lpips_reductions_and_registry(vgg_file, ours):
    pred, target = image_pair()
    with torch.no_grad():
        per_sample = ours(pred, target)
        mean = LOSSES.build(
            dict(type='LPIPS', trunk_path=vgg_file, loss_weight=2.0))
        mean.init_weights()
        assert isinstance(mean, LPIPS)
        torch.testing.assert_close(mean(pred, target),
                                   2 * per_sample.mean(),
                                   atol=1e-6,
                                   rtol=0)
        mean.reduction = 'sum'
        torch.testing.assert_close(mean(pred, target),
                                   2 * per_sample.sum(),
                                   atol=1e-6,
                                   rtol=0)
        assert ours(target, target).abs().max() == 0


def test_lpips_is_frozen_and_differentiable(ours):
    assert list(ours.parameters()) == []
    assert ours.state_dict() == {}
    ours.train()
    assert not ours.trunk.training and not ours.heads.training
    pred, target = image_pair(batch=2)
    pred.requires_grad_(True)
    ours(pred, target).sum().backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    assert torch.isfinite(pred.grad).all()


def test_lpips_under_bf16_autocast_is_fp32(ours):
    pred, target = image_pair(batch=2)
    with torch.no_grad():
        fp32 = ours(pred, target)
        rounded = ours(pred.bfloat16().float(), target.bfloat16().float())
        with torch.autocast(device_type='cpu', dtype=torch.bfloat16):
            mixed = ours(pred, target)
            bf16_inputs = ours(pred.bfloat16(), target.bfloat16())
    assert mixed.dtype == bf16_inputs.dtype == torch.float32
    torch.testing.assert_close(mixed, fp32, atol=0, rtol=0)
    torch.testing.assert_close(bf16_inputs, rounded, atol=0, rtol=0)


def test_lpips_rejects_non_rgb_batches(ours):
    with pytest.raises(ValueError, match=r'\(2, 1, 8, 8\)'):
        ours(torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 8, 8))


def test_lpips_missing_files(tmp_path, vgg_file, monkeypatch):
    missing = str(tmp_path / 'absent.pth')
    loss = LPIPS(trunk_path=missing)  # constructing reads no file
    with pytest.raises(MissingWeightsError, match='absent.pth') as err:
        loss.init_weights()
    assert err.value.key == 'trunk_path' and 'vgg16' in err.value.how_to_get
    with pytest.raises(MissingWeightsError, match='not set'):
        LPIPS().init_weights()

    loss = LPIPS(trunk_path=vgg_file, heads_path=missing)
    with pytest.raises(MissingWeightsError, match='absent.pth') as err:
        loss.init_weights()
    assert err.value.key == 'heads_path'

    assert LPIPS(trunk_path=vgg_file).weight_files()[1] == osp.join(
        osp.dirname(lpips.__file__), 'weights', 'v0.1', 'vgg.pth')
    monkeypatch.setattr(perceptual, 'lpips_package_heads_file', lambda: None)
    with pytest.raises(MissingWeightsError, match='pip install lpips') as err:
        LPIPS(trunk_path=vgg_file).init_weights()
    assert err.value.key == 'heads_path'


@pytest.fixture(scope='module')
def timm_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp('timm') / f'{TINY_TIMM}.pth'
    torch.save(timm.create_model(TINY_TIMM).state_dict(), path)
    return str(path)


def timm_reference(timm_file, **kwargs):
    """timm's own model loaded from the same file."""
    return timm.create_model(TINY_TIMM,
                             pretrained=True,
                             pretrained_cfg_overlay=dict(file=timm_file),
                             **kwargs).eval()


def reference_input(images, size):
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    x = F.interpolate((images + 1) / 2,
                      size=size,
                      mode='bilinear',
                      align_corners=False,
                      antialias=True)
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def feature_loss(timm_file, **kwargs):
    loss = LOSSES.build(
        dict(type='PerceptualFeatureLoss',
             model_name=TINY_TIMM,
             weights_path=timm_file,
             **kwargs))
    loss.init_weights()
    return loss


def test_logits_loss_equals_hand_computation(timm_file):
    loss = feature_loss(timm_file, resize=48, loss_weight=0.5)
    pred, target = image_pair(batch=2, size=40)
    model = timm_reference(timm_file)
    with torch.no_grad():
        expected = F.mse_loss(model(reference_input(pred, 48)),
                              model(reference_input(target, 48)))
        value = loss(pred, target)
        assert loss(target, target) == 0
    assert expected > 0
    torch.testing.assert_close(value, 0.5 * expected, atol=1e-7, rtol=1e-5)


def test_logits_loss_default_is_224_px(timm_file):
    loss = feature_loss(timm_file)
    assert loss.network_input(torch.zeros(1, 3, 32,
                                          32)).shape == (1, 3, 224, 224)


@pytest.mark.parametrize('distance', ['mse', 'l1'])
def test_features_loss_equals_hand_computation(timm_file, distance):
    loss = feature_loss(timm_file,
                        mode='features',
                        out_indices=(1, 2),
                        resize=64,
                        distance=distance)
    pred, target = image_pair(batch=2, size=32)
    model = timm_reference(timm_file, features_only=True, out_indices=(1, 2))
    penalty = F.mse_loss if distance == 'mse' else F.l1_loss

    def unit(f):
        return f / (f.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)

    with torch.no_grad():
        terms = [
            penalty(unit(p), unit(t))
            for p, t in zip(model(reference_input(pred, 64)),
                            model(reference_input(target, 64)))
        ]
        value = loss(pred, target)
        assert loss(target, target) == 0
    assert len(terms) == 2 and min(terms) > 0
    torch.testing.assert_close(value, sum(terms) / 2, atol=1e-7, rtol=1e-5)


def test_feature_loss_is_frozen_and_differentiable(timm_file):
    loss = feature_loss(timm_file, resize=32)
    assert list(loss.parameters()) == []
    assert loss.state_dict() == {}
    pred, target = image_pair(batch=2, size=32)
    pred.requires_grad_(True)
    target.requires_grad_(True)
    with torch.autocast(device_type='cpu', dtype=torch.bfloat16):
        value = loss(pred, target)
    assert value.dtype == torch.float32
    value.backward()
    assert pred.grad.abs().sum() > 0
    assert target.grad is None  # the target branch runs without gradient


def test_feature_loss_missing_weights_and_bad_args(tmp_path):
    missing = str(tmp_path / 'absent.pth')
    loss = PerceptualFeatureLoss(model_name=TINY_TIMM, weights_path=missing)
    with pytest.raises(MissingWeightsError, match='absent.pth') as err:
        loss.init_weights()
    assert err.value.key == 'weights_path'
    assert f"create_model('{TINY_TIMM}', pretrained=True)" in str(err.value)
    with pytest.raises(ValueError, match='mode'):
        PerceptualFeatureLoss(model_name=TINY_TIMM, mode='pixels')
    with pytest.raises(ValueError, match='distance'):
        PerceptualFeatureLoss(model_name=TINY_TIMM, distance='cosine')
