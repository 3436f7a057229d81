"""ImageFolderTokenizer on tiny random ViTs: the token round trip, the
semantic term in the generator step (its projector trained but outside the
EMA copy; the official shared projection), the adaptive GAN weight's layer
and missing weight files named by their config keys."""
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope

from _helpers import REPO_ROOT

CONFIG = osp.join(REPO_ROOT, 'projects/ImageFolder/configs/'
                  'imagefolder_msvr3p2-64_vit-tiny_1xb8-300_skimage-64.py')


def build(teacher, **semantic):
    from vistok.registry import MODELS
    cfg = Config.fromfile(CONFIG)
    cfg.model.semantic_loss.update(teacher_weights_path=teacher, **semantic)
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope('vistok'):
        model = MODELS.build(cfg.model)
    model.init_weights()
    return model


def test_round_trip_parts_and_last_layer(imagefolder_teacher):
    model = build(imagefolder_teacher).eval()
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        tokens = model.encode(images)
        out = model.reconstruct(images)
    assert [tuple(t.shape) for t in tokens] == [(2, 1, 1, 2), (2, 2, 2, 2),
                                                (2, 4, 4, 2)]
    assert torch.equal(model.decode(tokens), out.reconstruction)
    assert model.last_layer == 'decoder.head.proj.weight'
    assert 'semantic_loss' in model.optim_parts()['generator']
    assert 'semantic_loss' not in model.ema  # trained, not averaged
    assert {'encoder', 'quantizer', 'decoder'} <= set(model.ema)


@pytest.mark.parametrize('projector', ['separate', 'shared_quant_conv'])
def test_semantic_term_trains_its_projection(imagefolder_teacher, projector):
    model = build(imagefolder_teacher, projector=projector).train()
    images = torch.rand(4, 3, 64, 64) * 2 - 1
    losses = model.loss(images, iteration=0)
    assert torch.isfinite(losses['loss_semantic'])
    losses['loss_semantic'].backward()
    if projector == 'separate':
        grad = model.semantic_loss.projector.weight.grad
    else:  # the official target projection: the encoder's quant_proj
        assert model.semantic_loss.projector is None
        grad = model.encoder.quant_proj.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_missing_encoder_weights_name_the_config_key(imagefolder_teacher,
                                                    tmp_path):
    from vistok.registry import MODELS
    from vistok.utils.weights import MissingWeightsError
    cfg = Config.fromfile(CONFIG)
    cfg.model.semantic_loss.teacher_weights_path = imagefolder_teacher
    cfg.model.encoder.weights_path = str(tmp_path / 'missing.pth')
    with DefaultScope.overwrite_default_scope('vistok'):
        model = MODELS.build(cfg.model)  # constructors read no files
    with pytest.raises(MissingWeightsError,
                       match='model.encoder.weights_path'):
        model.init_weights()
    cfg.model.encoder.weights_path = None
    cfg.model.semantic_loss.teacher_weights_path = str(tmp_path / 'no.pth')
    with DefaultScope.overwrite_default_scope('vistok'):
        model = MODELS.build(cfg.model)
    with pytest.raises(MissingWeightsError,
                       match='model.semantic_loss.teacher_weights_path'):
        model.init_weights()
