"""TokenUnify next-token heads (projects/TokenUnify/tokenunify/heads.py) and
the pre-train → fine-tune transfer that drops them (and the learned fill
``mask_token``) by name."""
import copy
import os.path as osp

import pytest
import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.registry import DefaultScope

import projects.TokenUnify.tokenunify  # noqa: F401  (registers the heads)
from _helpers import REPO_ROOT
from projects.TokenUnify.tokenunify.heads import (
    TokenUnifyPerceiverHead,
    TokenUnifyPreceiverHead,
)
from projects.TokenUnify.tokenunify.pretrainer import TokenUnifyPretrainer
from projects.TokenUnify.tokenunify.tokens import gather_tokens
from vistok.registry import HEADS, MODELS
from vistok.utils.partial_load import PartialLoadError

TOKEN = (4, 16, 16)
CONFIGS = osp.join(REPO_ROOT, 'projects/TokenUnify/configs')
PRETRAIN = ('tokenunify-curriculum_voxel-4x16x16_emmamba-tiny_1xb4-150_'
            'synthetic-16x32x32.py')
FINETUNE = ('emmamba-seg_affinity-3_emmamba-tiny_1xb4-300_synthetic-'
            '16x32x32_tokenunify.py')


class OfficialPreciever(nn.Module):
    """``Preciever`` of ydchen0806/TokenUnify ``src/segmamba_ar.py``
    (commit 221674f4), re-written from its module definitions; the sigmoid
    is the one ``SegMamba.forward`` applies after it."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv3d(1, 12, kernel_size=3, stride=2, padding=1)
        self.conv2 = nn.Conv3d(12, 12, kernel_size=3, stride=2, padding=1)
        self.conv3 = nn.Conv3d(12, 1, kernel_size=3, stride=2, padding=1)
        self.mlp = nn.Linear(2 * 20 * 20, 4 * 16 * 16)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        x = self.conv3(x)
        x = x.view(x.shape[0], 1, -1)
        x = self.mlp(x)
        return torch.sigmoid(x.view(x.shape[0], 1, 4, 16, 16))


class TinyNet(nn.Module):
    """``(B, 1, D, H, W)`` → logits ``(B, 1, D, H, W)``."""
    out_channels = 1

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(),
                                  nn.Conv3d(4, 1, 1))
        self.outputs = []

    def forward(self, x):
        out = self.body(x)
        self.outputs.append(out)
        return out


def randomise_readout(head):
    with torch.no_grad():  # the Perceiver read-out starts at 0
        head.out.weight.normal_(0, 0.1)
        head.out.bias.normal_(0, 0.1)
    return head


# ------------------------------------------------------------ official head
def test_official_head_is_the_released_preciever_on_16x160x160():
    torch.manual_seed(0)
    head = HEADS.build(dict(type='TokenUnifyPreceiverHead'))
    reference = OfficialPreciever()
    # same parameter names and shapes as the official module
    head.load_state_dict(reference.state_dict(), strict=True)
    assert head.conv_output_size == (2, 20, 20)
    assert (head.mlp.in_features, head.mlp.out_features) == (800, 1024)
    features = torch.randn(2, 1, 16, 160, 160)
    with torch.no_grad():
        ours = torch.sigmoid(head(features, torch.tensor([1, 399])))
        expected = reference(features)
    assert ours.shape == (2, 1, 4, 16, 16)
    assert torch.allclose(ours, expected, atol=1e-6)
    with pytest.raises(ValueError, match='head.input_size'):
        head(torch.randn(1, 1, 16, 32, 32), torch.tensor([1]))


def test_pretrainer_with_official_head_on_a_16x160x160_crop():
    torch.manual_seed(0)
    model = TokenUnifyPretrainer(
        backbone=TinyNet(), tasks=dict(next_token=dict()), head='official',
        data_preprocessor=dict(type='BaseDataPreprocessor'))
    assert isinstance(model.next_token_head, TokenUnifyPreceiverHead)
    clean = torch.rand(1, 1, 16, 160, 160)
    torch.manual_seed(1)
    losses = model.loss(clean)
    logits, = model.backbone.outputs
    torch.manual_seed(1)  # the same prefix draw
    n = torch.randint(1, 400, (1, ))
    with torch.no_grad():
        pred = torch.sigmoid(model.next_token_head(logits, n))
    expected = ((pred - gather_tokens(clean, n, TOKEN))**2).mean()
    assert torch.allclose(losses['mse_next_token'], expected, rtol=1e-5)


# ----------------------------------------------------------- perceiver head
@pytest.mark.parametrize('shape', [(16, 32, 32), (8, 48, 32)])
def test_perceiver_head_works_on_two_crop_sizes_and_knows_n(shape):
    torch.manual_seed(0)
    head = randomise_readout(TokenUnifyPerceiverHead(
        token_size=TOKEN, embed_dims=48, num_heads=4, depth=1))
    features = torch.randn(1, 1, *shape).expand(3, -1, -1, -1, -1)
    num_tokens = (shape[0] // 4) * (shape[1] // 16) * (shape[2] // 16)
    index = torch.tensor([0, 1, num_tokens - 1])
    out = head(features, index)
    assert out.shape == (3, 1, *TOKEN)
    # the same features, three different target tokens: three predictions
    assert not torch.allclose(out[0], out[1], atol=1e-4)
    assert not torch.allclose(out[1], out[2], atol=1e-4)
    with pytest.raises(IndexError, match='token index'):
        head(features[:1], torch.tensor([num_tokens]))


def test_perceiver_head_rejects_a_token_size_other_than_the_models():
    with pytest.raises(ValueError, match=r'model.head.token_size'):
        TokenUnifyPretrainer(
            backbone=TinyNet(), tasks=dict(next_token=dict()),
            head=dict(type='TokenUnifyPerceiverHead', token_size=(2, 8, 8)),
            data_preprocessor=dict(type='BaseDataPreprocessor'))
    with pytest.raises(ValueError, match='next_token is not in tasks'):
        TokenUnifyPretrainer(
            backbone=TinyNet(), tasks=dict(random=dict(mask_ratio=0.5)),
            head='perceiver')


# ------------------------------- the next-token loss is a head's, not a view
def test_next_token_loss_is_the_heads_not_next_all_restricted_to_n():
    torch.manual_seed(0)
    model = TokenUnifyPretrainer(
        backbone=TinyNet(),
        tasks=dict(next_token=dict(), next_all=dict(loss_on='all')),
        prefix=dict(fill='zero'),
        head=dict(type='TokenUnifyPerceiverHead', embed_dims=48, depth=1),
        data_preprocessor=dict(type='BaseDataPreprocessor'))
    randomise_readout(model.next_token_head)
    clean = torch.rand(2, 1, 16, 32, 32)
    torch.manual_seed(3)
    losses = model.loss(clean)
    logits, = model.backbone.outputs  # one pass for both tasks
    torch.manual_seed(3)
    n = torch.randint(1, 16, (2, ))  # the prefix draw of loss()
    target = gather_tokens(clean, n, TOKEN)
    # the old read-out: next-all's output restricted to token n
    restricted = ((gather_tokens(torch.sigmoid(logits), n, TOKEN) - target)
                  **2).mean()
    with torch.no_grad():
        head_pred = torch.sigmoid(model.next_token_head(logits, n))
    assert torch.allclose(losses['mse_next_token'],
                          ((head_pred - target)**2).mean(), rtol=1e-5)
    assert abs(float(losses['mse_next_token'].detach() - restricted)) > 1e-3
    # gradients reach every parameter of the head
    losses['loss_next_token'].backward()
    for name, param in model.next_token_head.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_default_head_is_the_perceiver_and_trains_from_zero_readout():
    torch.manual_seed(0)
    model = TokenUnifyPretrainer(
        backbone=TinyNet(), tasks=dict(next_token=dict()),
        data_preprocessor=dict(type='BaseDataPreprocessor'))
    assert isinstance(model.next_token_head, TokenUnifyPerceiverHead)
    model.loss(torch.rand(2, 1, 16, 32, 32))['loss_next_token'].backward()
    assert model.next_token_head.out.weight.grad.abs().sum() > 0


# --------------------------------------------- pre-train → fine-tune transfer
def build(cfg_model):
    with DefaultScope.overwrite_default_scope('vistok'):
        return MODELS.build(copy.deepcopy(cfg_model))


def test_learned_fill_checkpoint_with_head_loads_into_the_finetune_model(
        tmp_path):
    pre_cfg = Config.fromfile(osp.join(CONFIGS, PRETRAIN))
    pre_cfg.model.tasks.random.fill = 'learned'
    pre_cfg.model.prefix.fill = 'learned'
    torch.manual_seed(0)
    pretrainer = build(pre_cfg.model)
    state = pretrainer.state_dict()
    assert 'mask_token' in state
    assert any(k.startswith('next_token_head.') for k in state)
    path = str(tmp_path / 'pretrain.pth')
    torch.save(dict(state_dict=state), path)

    ft_cfg = Config.fromfile(osp.join(CONFIGS, FINETUNE))
    ft_cfg.model.pretrained.checkpoint = path
    segmentor = build(ft_cfg.model)
    segmentor.init_weights()
    loaded = segmentor.state_dict()
    for key, value in state.items():
        if key.startswith('backbone.') and 'final_conv' not in key:
            assert torch.equal(loaded[key], value), key
    # the patterns of before the fix named no key of the checkpoint
    ft_cfg.model.pretrained.allow_unexpected = [r'fill_token.*',
                                                r'.*\.fill\..*']
    with pytest.raises(PartialLoadError, match='mask_token'):
        build(ft_cfg.model).init_weights()
