"""TiTok's weight-decay exemptions (configs/_base_/schedules/
titok_weight_decay.py) as the TiTok / MARVEL tokenizer configs and the
generator recipe build them, against the official rule written out from
bytedance/1d-tokenizer ``utils/train_utils.py`` ``create_optimizer``
(commit 942a96fbdd873780179d1b78d5462911528bf8c8)::

    exclude = (lambda n, p: p.ndim < 2 or "ln" in n or "bias" in n
               or 'latent_tokens' in n or 'mask_token' in n
               or 'embedding' in n or 'norm' in n or 'gamma' in n
               or 'embed' in n)

applied to the OFFICIAL name and tensor of each parameter: the tokenizer's
official names come from the converter's key mapping of a tiny
official-layout TiTok (tests/reference/titok_official.py), the
discriminator's are vistok's (the same module names as the official
``NLayerDiscriminator``, under ``discriminator.`` in the official loss
module)."""
import os.path as osp

import pytest
from mmengine.config import Config
from mmengine.optim import DefaultOptimWrapperConstructor
from mmengine.registry import DefaultScope
from test_tools_titok_converter import TINY_CONFIG, official_checkpoint

from _helpers import REPO_ROOT
from vistok.apis.converters import titok
from vistok.engine.optimizers import MultiPartOptimWrapperConstructor
from vistok.utils.convert import convert_state_dict

TITOK = osp.join(REPO_ROOT, 'configs/titok')
STAGE1 = osp.join(TITOK, 'titok_vq-4k_l32_8xb32-1m_in1k-256.py')
STAGE2 = osp.join(TITOK, 'titok_vq-4k_l32-stage2_8xb32-500k_in1k-256.py')
GENERATOR = osp.join(REPO_ROOT, 'configs/_base_/recipes/titok_generator.py')


def official_exclude(name, tensor):
    """``create_optimizer``'s rule, verbatim."""
    return (tensor.ndim < 2 or 'ln' in name or 'bias' in name
            or 'latent_tokens' in name or 'mask_token' in name
            or 'embedding' in name or 'norm' in name or 'gamma' in name
            or 'embed' in name)


def decays(optim_wrapper, module):
    """``{parameter name: weight decay of its group}``."""
    group_of = {id(p): g['weight_decay']
                for g in optim_wrapper.optimizer.param_groups
                for p in g['params']}
    return {n: group_of[id(p)] for n, p in module.named_parameters()
            if p.requires_grad}


def plain(wrapper_cfg):
    """A part's wrapper config on CPU (fp16 / bf16 wrappers need CUDA or
    change nothing about the groups)."""
    return dict(type='OptimWrapper', optimizer=wrapper_cfg['optimizer'])


def tiny_titok(**overrides):
    import vistok.models  # noqa: F401
    from vistok.registry import MODELS
    cfg = Config.fromstring(TINY_CONFIG, '.py')
    cfg.model.update(frozen_parts=(), **overrides)
    with DefaultScope.overwrite_default_scope('vistok'):
        return MODELS.build(cfg.model)


def official_names(model):
    """vistok parameter name -> (official name, official tensor)."""
    official, _ = official_checkpoint()
    _, report = convert_state_dict(official, titok.rules_for(model), model,
                                   allow_missing=titok.ALLOW_MISSING)
    return {targets[0]: (name, official[name])
            for name, targets in report.mapping.items()}


@pytest.mark.parametrize('config', [STAGE1, STAGE2])
def test_tokenizer_groups_are_the_official_ones(config):
    cfg = Config.fromfile(config)
    weight_decay = 1e-4
    model = tiny_titok()
    if config == STAGE1:  # one optimizer over the whole model
        wrapper_cfg = cfg.optim_wrapper
        assert wrapper_cfg.optimizer.weight_decay == weight_decay
        wrapper = DefaultOptimWrapperConstructor(
            plain(wrapper_cfg), wrapper_cfg.paramwise_cfg)(model)
        got = decays(wrapper, model)
    else:  # per part: every trainable part of the stage-2 model
        wrappers = MultiPartOptimWrapperConstructor(
            dict(generator=dict(plain(cfg.optim_wrapper.generator),
                                paramwise_cfg=cfg.optim_wrapper.generator
                                .paramwise_cfg)))(model)
        assert cfg.optim_wrapper.generator.optimizer.weight_decay == (
            weight_decay)
        got = decays(wrappers['generator'],
                     model.optim_parts()['generator'])
    names = official_names(model)
    trained = {n for n in got if not n.startswith('ema.')}
    # every trained parameter has an official counterpart
    assert trained == set(names)
    expected = {n: 0.0 if official_exclude(*names[n]) else weight_decay
                for n in trained}
    assert {n: got[n] for n in trained} == expected
    # what that is, listed: the only decayed tensors are the linear / conv
    # weights of the transformers, the heads and the pixel decoder
    decayed = sorted(n for n, d in expected.items() if d)
    assert all(n.endswith('.weight') for n in decayed)
    for name in ('encoder.latent_tokens', 'encoder.class_embedding',
                 'encoder.positional_embedding', 'decoder.mask_token',
                 'encoder.patch_embed.proj.weight', 'decoder.embed.weight',
                 'quantizer.codebook', 'pixel_codebook.weight',
                 'encoder.blocks.0.attn.qkv.bias',
                 'encoder.blocks.0.attn_norm.weight'):
        assert expected[name] == 0.0, name
    for name in ('encoder.blocks.0.attn.qkv.weight',
                 'encoder.blocks.1.ffn.fc2.weight',
                 'encoder.proj_out.weight', 'head.mlp.0.weight',
                 'pixel_decoder.conv_in.weight'):
        assert expected[name] == weight_decay, name
    # 2 blocks x (qkv, proj, fc1, fc2) in encoder and decoder, proj_out,
    # the proxy head's two linears; the pixel decoder's 32 conv weights;
    # the other 113 tensors are exempt
    transformer = [n for n in decayed if not n.startswith('pixel_')]
    assert len(transformer) == 2 * 4 + 1 + 2 * 4 + 2
    assert len(decayed) - len(transformer) == 32
    assert len(expected) - len(decayed) == 113


def test_discriminator_groups_are_the_official_ones():
    import vistok.models  # noqa: F401
    from vistok.registry import DISCRIMINATORS
    cfg = Config.fromfile(STAGE2)
    wrapper_cfg = cfg.optim_wrapper.discriminator
    discriminator = DISCRIMINATORS.build(cfg.model.discriminator)
    got = decays(DefaultOptimWrapperConstructor(
        plain(wrapper_cfg), wrapper_cfg.paramwise_cfg)(discriminator),
        discriminator)
    weight_decay = wrapper_cfg.optimizer.weight_decay
    expected = {
        n: 0.0 if official_exclude(f'discriminator.{n}', p) else weight_decay
        for n, p in discriminator.named_parameters()}
    assert got == expected
    assert sorted(n for n, d in got.items() if d) == [
        'block_in.0.weight', 'blocks.0.0.weight', 'blocks.1.0.weight',
        'blocks.2.0.weight', 'to_logits.0.weight', 'to_logits.2.weight']


@pytest.mark.parametrize('arch', [
    dict(dim=32, depth=2, num_heads=2, ffn_dim=64, qkv_bias=True,
         long_skip=False),
    dict(dim=32, depth=2, num_heads=2, ffn_dim=64, qkv_bias=False,
         long_skip=True)])
def test_generator_groups_are_the_official_ones(arch):
    """A tiny BERT-style and a tiny U-ViT MaskGIT: the official rule on
    the names (the official ImageBert / UViTBert exempt their
    embeddings, LayerNorms and biases alike) and the decayed set listed."""
    import vistok.models  # noqa: F401
    from vistok.registry import MODELS
    cfg = Config.fromfile(GENERATOR)
    cfg.model.update(arch=arch, vocab_size=16, token_shape=(4, ),
                     num_classes=3)
    with DefaultScope.overwrite_default_scope('vistok'):
        model = MODELS.build(cfg.model)
    wrapper_cfg = cfg.optim_wrapper
    weight_decay = wrapper_cfg.optimizer.weight_decay
    assert weight_decay == 0.03
    got = decays(DefaultOptimWrapperConstructor(
        plain(wrapper_cfg), wrapper_cfg.paramwise_cfg)(model), model)
    expected = {n: 0.0 if official_exclude(n, p) else weight_decay
                for n, p in model.named_parameters()}
    assert got == expected
    decayed = sorted(n for n, d in got.items() if d)
    block = ['attn.proj.weight', 'attn.qkv.weight', 'ffn.fc1.weight',
             'ffn.fc2.weight']
    if arch['long_skip']:
        listed = (['head.weight'] + [f'in_blocks.0.{w}' for w in block]
                  + [f'mid_block.{w}' for w in block]
                  + [f'out_blocks.0.{w}' for w in block]
                  + ['out_blocks.0.skip_linear.weight'])
    else:
        listed = (['blocks.0.' + w for w in block]
                  + ['blocks.1.' + w for w in block] + ['head.weight'])
    assert decayed == sorted(listed)
    assert not any(p.ndim == 0 for p in model.parameters())
