import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed, resample_patch_embed

from vistok.models.backbones.timm_wrapper import TimmBackbone
from vistok.registry import BACKBONES
from vistok.utils.weights import MissingWeightsError

NAME = 'vit_tiny_patch16_224'
TINY = dict(depth=3, embed_dim=32, num_heads=2)


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    """A random tiny ViT saved at patch 14 / img 56 (a 4x4 grid), like a
    DINOv2 checkpoint at patch 14."""
    torch.manual_seed(0)
    source = timm.create_model(NAME,
                               pretrained=False,
                               img_size=56,
                               patch_size=14,
                               **TINY)
    path = tmp_path_factory.mktemp('timm') / 'tiny_p14.pth'
    torch.save(source.state_dict(), path)
    return str(path), source.state_dict()


def expected_state(state, img_size, patch_size):
    """The checkpoint resampled with timm's own functions for a model at
    ``img_size`` / ``patch_size``."""
    grid = img_size // patch_size
    out = dict(state)
    out['patch_embed.proj.weight'] = resample_patch_embed(
        state['patch_embed.proj.weight'], [patch_size, patch_size])
    out['pos_embed'] = resample_abs_pos_embed(state['pos_embed'],
                                              new_size=[grid, grid],
                                              num_prefix_tokens=1)
    return out


@pytest.mark.parametrize('img_size,frozen', [(64, False), (80, True)])
def test_resampled_loading_equals_timm(checkpoint, img_size, frozen):
    """Loaded at patch 16 (img 64: same 4x4 grid, kernels resampled; img
    80: 5x5 grid, positions resampled too): the tensors equal timm's
    resampling functions applied to the checkpoint, and the features equal
    those of a timm model loaded with them."""
    path, state = checkpoint
    backbone = TimmBackbone(NAME,
                            path,
                            dict(img_size=img_size, patch_size=16, **TINY),
                            out_indices=(0, -1),
                            frozen=frozen)
    backbone.init_weights()
    expected = expected_state(state, img_size, 16)
    loaded = dict(backbone.model.named_parameters())
    loaded.update(backbone.model.named_buffers())
    for name in ('patch_embed.proj.weight', 'pos_embed', 'cls_token',
                 'blocks.2.mlp.fc2.weight'):
        assert torch.equal(loaded[name], expected[name]), name

    reference = timm.create_model(NAME,
                                  pretrained=False,
                                  img_size=img_size,
                                  patch_size=16,
                                  **TINY).eval()
    reference.load_state_dict(expected)
    images = torch.randn(2, 3, img_size, img_size)
    grid = img_size // 16
    first, last = backbone(images)
    ref_first, ref_last = reference.forward_intermediates(
        images, indices=[0, 2], intermediates_only=True)
    assert first.shape == last.shape == (2, 32, grid, grid)
    torch.testing.assert_close(first, ref_first)
    torch.testing.assert_close(last, ref_last)


def test_safetensors_file_and_registry(checkpoint, tmp_path):
    _, state = checkpoint
    path = str(tmp_path / 'tiny.safetensors')
    save_file({k: v.contiguous() for k, v in state.items()}, path)
    backbone = BACKBONES.build(
        dict(type='TimmBackbone',
             model_name=NAME,
             weights_path=path,
             model_kwargs=dict(img_size=56, patch_size=14, **TINY),
             out_indices=1,
             norm=True))
    backbone.init_weights()
    assert torch.equal(backbone.model.blocks[1].attn.qkv.weight,
                       state['blocks.1.attn.qkv.weight'])
    out = backbone(torch.randn(1, 3, 56, 56))
    assert out.shape == (1, 32, 4, 4)  # one index -> one tensor


def test_pruning_keeps_only_used_parameters(checkpoint):
    """Blocks after the last requested one, the head and (without norm) the
    final norm are removed: every parameter gets a gradient (DDP-safe)."""
    backbone = TimmBackbone(NAME,
                            checkpoint[0],
                            dict(img_size=56, patch_size=14, **TINY),
                            out_indices=-2)
    assert backbone.out_indices == [1]
    assert len(backbone.model.blocks) == 2
    backbone.init_weights()  # extra entries (block 2, norm, head) ignored
    backbone(torch.randn(1, 3, 56, 56)).square().sum().backward()
    assert all(p.grad is not None for p in backbone.parameters())


def test_prefix_tokens_and_frozen(checkpoint):
    backbone = TimmBackbone(NAME,
                            checkpoint[0],
                            dict(img_size=56, patch_size=14, **TINY),
                            out_indices=[2],
                            keep_prefix_tokens=True,
                            frozen=True)
    backbone.init_weights()
    assert list(backbone.parameters()) == []
    assert backbone.state_dict() == {}
    images = torch.randn(2, 3, 56, 56, requires_grad=True)
    (grid, prefix), = backbone(images)
    assert grid.shape == (2, 32, 4, 4)
    assert prefix.shape == (2, 32, 1)  # the class token, channel-first
    grid.sum().backward()
    assert images.grad is not None and bool(images.grad.abs().sum() > 0)


def test_missing_and_mismatched_weights(checkpoint, tmp_path):
    kwargs = dict(img_size=56, patch_size=14, **TINY)
    missing = str(tmp_path / 'absent.pth')
    with pytest.raises(MissingWeightsError, match='weights_path') as info:
        TimmBackbone(NAME, missing, kwargs).init_weights()
    assert info.value.key == 'weights_path'
    assert NAME in str(info.value)
    with pytest.raises(MissingWeightsError, match='is not set'):
        TimmBackbone(NAME, None, kwargs, frozen=True).init_weights()
    # not frozen and no file: random initialisation is kept
    TimmBackbone(NAME, None, kwargs).init_weights()
    wider = TimmBackbone(
        NAME, checkpoint[0],
        dict(img_size=56, patch_size=14, depth=3, embed_dim=64, num_heads=2))
    with pytest.raises(ValueError, match=r'cls_token.*\(1, 1, 32\)'):
        wider.init_weights()
    partial = str(tmp_path / 'partial.pth')
    torch.save(
        {
            k: v
            for k, v in checkpoint[1].items() if not k.startswith('blocks.0.')
        }, partial)
    with pytest.raises(KeyError, match='blocks.0.'):
        TimmBackbone(NAME, partial, kwargs).init_weights()


def test_keep_prefix_tokens_needs_a_vit():
    with pytest.raises(ValueError, match='keep_prefix_tokens'):
        TimmBackbone('resnet18', keep_prefix_tokens=True)


def test_dinov2_at_256_with_patch_16():
    """ImageFolder's encoder: DINOv2 ViT-B/14 re-created at 256 px with
    patch 16 -> a 16x16 grid of 768-d features (built on the meta
    device)."""
    with torch.device('meta'):
        backbone = TimmBackbone('vit_base_patch14_dinov2.lvd142m',
                                model_kwargs=dict(img_size=256, patch_size=16),
                                norm=True)
        out = backbone(torch.empty(2, 3, 256, 256))
    assert backbone.model.pos_embed.shape == (1, 257, 768)
    assert backbone.model.patch_embed.proj.weight.shape == (768, 3, 16, 16)
    assert out.shape == (2, 768, 16, 16)
