"""LayerDecayOptimWrapperConstructor: parameter groups, learning rates and
weight decay equal the BEiT / MAE rule written out here independently, for
both placements of the learned token embedding; built through mmengine's
``build_optim_wrapper`` from a config dict."""
import pytest
import torch
import torch.nn as nn
from mmengine.optim import build_optim_wrapper
from mmengine.registry import DefaultScope

import vistok.engine  # noqa: F401  (registers the constructor)
from vistok.registry import PARAM_SCHEDULERS

DEPTH, LR, WD, DECAY = 3, 4e-3, 0.05, 0.65


class TinyTokenViT(nn.Module):
    """The names of a token ViT: token embedding, patch embedding, class
    token, position embedding, 3 blocks, final norm, head; plus a frozen
    part (as TokenAdapt's f / g) that must not be optimised."""

    def __init__(self):
        super().__init__()
        self.token_embed = nn.Embedding(11, 4)
        self.patch_embed = nn.Conv2d(4, 8, 2, 2)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 8))
        self.pos_embed = nn.Parameter(torch.zeros(1, 5, 8))
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 8))
            for _ in range(DEPTH))
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 3)
        self.frozen = nn.Linear(8, 8)
        self.frozen.requires_grad_(False)


def beit_layer(name, token_layer):
    """BEiT's ``get_layer_id_for_vit`` (cls / pos / patch embedding 0,
    ``blocks.i`` i + 1, the rest depth + 1) with the token embedding at
    ``token_layer``."""
    if name.startswith('token_embed'):
        return token_layer
    if name in ('cls_token', 'pos_embed') or name.startswith('patch_embed'):
        return 0
    if name.startswith('blocks.'):
        return int(name.split('.')[1]) + 1
    return DEPTH + 1


def build(model, decay=DECAY, **paramwise):
    cfg = dict(constructor='LayerDecayOptimWrapperConstructor',
               optimizer=dict(type='AdamW', lr=LR, weight_decay=WD),
               paramwise_cfg=dict(layer_decay_rate=decay, **paramwise))
    with DefaultScope.overwrite_default_scope('vistok'):
        return build_optim_wrapper(model, cfg)


@pytest.mark.parametrize('placement', [0, 'top'])
def test_groups_follow_the_beit_rule(placement):
    model = TinyTokenViT()
    wrapper = build(model, token_embedding_layer=placement)
    groups = wrapper.optimizer.param_groups
    token_layer = 0 if placement == 0 else DEPTH + 1
    group_of = {id(p): g for g in groups for p in g['params']}
    trainable = [(n, p) for n, p in model.named_parameters()
                 if p.requires_grad]
    # every trainable parameter exactly once, the frozen ones never
    assert sorted(map(id, (p for g in groups for p in g['params']))) == \
        sorted(id(p) for _, p in trainable)
    for name, param in trainable:
        layer = beit_layer(name, token_layer)
        group = group_of[id(param)]
        assert group['layer_id'] == layer, name
        assert group['lr'] == pytest.approx(
            LR * DECAY**(DEPTH + 1 - layer), rel=1e-12), name
        no_decay = param.ndim == 1 or name in ('cls_token', 'pos_embed')
        assert group['weight_decay'] == (0.0 if no_decay else WD), name
    # one group per (layer, decay): 5 layers with and without decay
    assert len(groups) == len({(g['layer_id'], g['weight_decay'] > 0)
                               for g in groups}) == 10
    # the token embedding's lr: full in 'top', the stem's in 0
    token_lr = group_of[id(model.token_embed.weight)]['lr']
    head_lr = group_of[id(model.head.weight)]['lr']
    stem_lr = group_of[id(model.patch_embed.weight)]['lr']
    assert token_lr == (head_lr if placement == 'top' else stem_lr)
    assert head_lr == LR and stem_lr == pytest.approx(LR * DECAY**4)
    # the first group (the lr mmengine logs) is the top layer's
    assert groups[0]['lr'] == LR


def test_schedulers_keep_the_layer_ratios():
    model = TinyTokenViT()
    wrapper = build(model)
    before = [g['lr'] for g in wrapper.optimizer.param_groups]
    with DefaultScope.overwrite_default_scope('vistok'):
        scheduler = PARAM_SCHEDULERS.build(
            dict(type='CosineAnnealingLR', T_max=10, eta_min_ratio=0.01,
                 by_epoch=False), default_args=dict(optimizer=wrapper))
    for _ in range(4):
        wrapper.step()
        scheduler.step()
    after = [g['lr'] for g in wrapper.optimizer.param_groups]
    ratio = after[0] / before[0]
    assert 0.01 < ratio < 1
    assert after == pytest.approx([lr * ratio for lr in before], rel=1e-9)


def test_prefix_and_bad_configs():
    outer = nn.Module()
    outer.backbone = TinyTokenViT()
    outer.classifier = nn.Linear(3, 2)
    groups = build(outer, prefix='backbone.').optimizer.param_groups
    layer_of = {id(p): g['layer_id'] for g in groups for p in g['params']}
    assert layer_of[id(outer.backbone.blocks[1][1].weight)] == 2
    assert layer_of[id(outer.backbone.cls_token)] == 0
    assert layer_of[id(outer.classifier.weight)] == DEPTH + 1
    with pytest.raises(ValueError, match='token_embedding_layer'):
        build(TinyTokenViT(), token_embedding_layer=1)
    with pytest.raises(ValueError, match="prefix='vit.'"):
        build(outer, prefix='vit.')
    with pytest.raises(KeyError, match='unknown paramwise_cfg'):
        build(TinyTokenViT(), decay_rate=0.5)
    with pytest.raises(ValueError, match='layer_decay_rate'):
        build(TinyTokenViT(), decay=1.5)
