"""TiTok's perceptual network: torchvision's ``convnext_small`` (bytedance/
1d-tokenizer ``modeling/modules/perceptual_loss.py`` at commit
942a96fbdd873780179d1b78d5462911528bf8c8: ``models.convnext_small(weights=
ConvNeXt_Small_Weights.IMAGENET1K_V1)``, inputs in [0, 1] resized to 224
(bilinear, ``align_corners=False``, antialias) and normalised with the
ImageNet mean / std, ``mse_loss`` of the logits), loaded from a
torchvision-layout file written here with random weights."""
import hashlib
import os.path as osp

import pytest
import torch
import torch.nn.functional as F
import torchvision
from mmengine.config import Config
from torchvision.models.convnext import CNBlock

from _helpers import REPO_ROOT
from vistok.models.losses import PerceptualFeatureLoss
from vistok.models.losses.perceptual import check_sha256
from vistok.registry import LOSSES
from vistok.utils.weights import MissingWeightsError

TITOK_PIXEL = osp.join(REPO_ROOT, 'configs/_base_/losses/titok_pixel.py')
#: perceptual_loss.py's _IMAGENET_MEAN / _IMAGENET_STD
OFFICIAL_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
OFFICIAL_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def official_input(images01, size):
    """``PerceptualLoss.forward``'s ConvNeXt input (``size`` 224 there)."""
    x = F.interpolate(images01, size=size, mode='bilinear',
                      align_corners=False, antialias=True)
    return (x - OFFICIAL_MEAN) / OFFICIAL_STD


def fast_trunc_normal_(tensor, mean=0.0, std=1.0, a=-2.0, b=2.0):
    """A plain normal fill: torch's ``trunc_normal_`` (torchvision's
    ConvNeXt init) takes seconds for 50M weights on a loaded CPU, and any
    random weights do here."""
    with torch.no_grad():
        return tensor.normal_(mean, std)


def test_torchvision_file_gives_torchvision_logits(tmp_path, monkeypatch):
    """The config's perceptual term, with its network loaded from a
    torchvision state-dict file, gives torchvision's logits and
    0.1 x TiTok's loss. The network runs at 32 px instead of 224 to keep
    the test fast on a CPU (the size is a config key, checked below)."""
    monkeypatch.setattr(torch.nn.init, 'trunc_normal_', fast_trunc_normal_)
    torch.manual_seed(0)
    reference = torchvision.models.convnext_small(weights=None).eval()
    for block in reference.modules():  # 1e-6 at init: let every block count
        if isinstance(block, CNBlock):
            block.layer_scale.data.uniform_(0.1, 0.5)
    path = str(tmp_path / 'convnext_small-random.pth')
    torch.save(reference.state_dict(), path)
    digest = hashlib.sha256(open(path, 'rb').read()).hexdigest()

    cfg = Config.fromfile(TITOK_PIXEL).titok_perceptual_loss
    assert cfg.resize == 224
    cfg.update(weights_path=path, weights_sha256=digest[:8], resize=32)
    torch.manual_seed(1)  # a different random init, overwritten by the file
    loss = LOSSES.build(cfg)
    assert isinstance(loss.model, torchvision.models.ConvNeXt)
    loss.init_weights()

    gen = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 48, 48, generator=gen) * 2 - 1  # [-1, 1]
    x = official_input((images + 1) / 2, 32)
    with torch.no_grad():
        expected = reference(x)
        torch.testing.assert_close(loss.network_input(images), x,
                                   rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(loss.model(x), expected, rtol=1e-5,
                                   atol=1e-5)
        # the whole term: 0.1 x MSE of the logits of [0, 1] images
        value = loss(images[:2], images[2:])
    assert expected.abs().mean() > 0.1  # 1e-5 is a real tolerance
    official = F.mse_loss(expected[:2], expected[2:])
    assert official > 0
    torch.testing.assert_close(value, 0.1 * official, rtol=1e-5, atol=0)


def test_config_names_torchvisions_file_and_hash():
    """The config's file and sha256 prefix are torchvision's own (the
    ``-<8 hex>`` of the URL, which torchvision checks on download with
    ``check_hash=True``)."""
    cfg = Config.fromfile(TITOK_PIXEL)
    url = torchvision.models.ConvNeXt_Small_Weights.IMAGENET1K_V1.url
    assert osp.basename(cfg.perceptual_weights_path) == osp.basename(url)
    prefix = cfg.titok_perceptual_loss.weights_sha256
    assert osp.basename(url) == f'convnext_small-{prefix}.pth'
    assert cfg.titok_perceptual_loss.library == 'torchvision'
    assert cfg.titok_perceptual_loss.model_name == 'convnext_small'
    assert cfg.titok_perceptual_loss.pixel_range == (0.0, 1.0)


def test_sha256_check(tmp_path):
    path = str(tmp_path / 'f.bin')
    with open(path, 'wb') as f:
        f.write(b'vistok')
    digest = hashlib.sha256(b'vistok').hexdigest()
    check_sha256(path, digest, 'weights_sha256')
    check_sha256(path, digest[:8].upper(), 'weights_sha256')
    check_sha256(path, None, 'weights_sha256')
    wrong = ('0' if digest[0] != '0' else '1') + digest[1:8]
    with pytest.raises(ValueError, match=f'weights_sha256.*{digest}|'
                       f'{digest}.*weights_sha256'):
        check_sha256(path, wrong, 'weights_sha256')
    for bad in (digest[:7], 'xyz12345', digest + '0'):
        with pytest.raises(ValueError, match='at least 8 hex digits'):
            check_sha256(path, bad, 'weights_sha256')


def test_torchvision_errors(tmp_path):
    missing = str(tmp_path / 'convnext_small-0c510722.pth')
    loss = PerceptualFeatureLoss(library='torchvision',
                                 model_name='mobilenet_v3_small',
                                 weights_path=missing)
    with pytest.raises(MissingWeightsError, match='0c510722') as err:
        loss.init_weights()
    assert err.value.key == 'weights_path'
    assert 'get_model_weights' in err.value.how_to_get
    with pytest.raises(ValueError, match='library="timm"'):
        PerceptualFeatureLoss(library='torchvision',
                              model_name='mobilenet_v3_small',
                              mode='features')
    with pytest.raises(ValueError, match='library must be one of'):
        PerceptualFeatureLoss(library='keras')
