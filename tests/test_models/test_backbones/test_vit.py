import numpy as np
import pytest
import torch
import torch.nn as nn

from vistok.models.backbones.transformer import DropPath
from vistok.models.backbones.vit import (
    TIMM_BLOCK_NAMES,
    PatchEmbed,
    ViTDecoder,
    ViTEncoder,
    build_blocks,
    sincos_pos_embed_2d,
)
from vistok.models.heads.pixel import patchify
from vistok.registry import BACKBONES

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4)


def mae_2d_sincos(embed_dim, grid_h, grid_w):
    """MAE's ``get_2d_sincos_pos_embed`` (util/pos_embed.py), in numpy, for
    an ``grid_h × grid_w`` grid."""

    def one_d(dim, pos):
        omega = np.arange(dim // 2, dtype=np.float64) / (dim / 2.0)
        omega = 1.0 / 10000**omega
        out = np.einsum('m,d->md', pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid = np.meshgrid(np.arange(grid_w, dtype=np.float32),
                       np.arange(grid_h, dtype=np.float32))  # w goes first
    grid = np.stack(grid, axis=0).reshape(2, 1, grid_h, grid_w)
    return np.concatenate(
        [one_d(embed_dim // 2, grid[0]),
         one_d(embed_dim // 2, grid[1])],
        axis=1)


@pytest.mark.parametrize('grid', [(4, 4), (3, 5)])
def test_sincos_matches_mae(grid):
    ours = sincos_pos_embed_2d(16, grid)
    reference = torch.from_numpy(mae_2d_sincos(16, *grid)).float()
    assert ours.shape == (grid[0] * grid[1], 16)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)


def test_sincos_needs_multiple_of_four():
    with pytest.raises(ValueError, match='divisible by 4'):
        sincos_pos_embed_2d(18, (2, 2))


def test_block_equals_multihead_attention_reference():
    """Pre-LN block = x + MHA(LN(x)), then + MLP(LN(x)), with torch's
    nn.MultiheadAttention (TiTok's ResidualAttentionBlock) as reference."""
    torch.manual_seed(0)
    dim, heads = 32, 4
    block, = build_blocks(dim, 1, heads, mlp_ratio=4.0, qkv_bias=True,
                          dropout=0.0, attn_dropout=0.0, drop_path_rate=0.0,
                          norm_eps=1e-5)
    block.eval()
    for p in block.parameters():
        nn.init.normal_(p, std=0.2)
    mha = nn.MultiheadAttention(dim, heads, batch_first=True)
    mha.in_proj_weight.data.copy_(block.attn.qkv.weight)
    mha.in_proj_bias.data.copy_(block.attn.qkv.bias)
    mha.out_proj.weight.data.copy_(block.attn.proj.weight)
    mha.out_proj.bias.data.copy_(block.attn.proj.bias)
    x = torch.randn(2, 7, dim)
    causal = torch.ones(7, 7, dtype=torch.bool).tril()

    def reference(mask):
        h = block.attn_norm(x)
        # nn.MultiheadAttention's bool mask marks positions NOT attended
        y = x + mha(h,
                    h,
                    h,
                    attn_mask=None if mask is None else ~mask,
                    need_weights=False)[0]
        return y + block.ffn(block.ffn_norm(y))

    for mask in (None, causal):
        torch.testing.assert_close(block(x, attn_mask=mask),
                                   reference(mask),
                                   rtol=1e-5,
                                   atol=1e-5)


def test_drop_path():
    drop = DropPath(0.5)
    x = torch.randn(64, 3, 5)
    assert torch.equal(drop.eval()(x), x)
    torch.manual_seed(0)
    y = drop.train()(x)
    kept = (y != 0).flatten(1).all(1)
    dropped = (y == 0).flatten(1).all(1)
    assert bool((kept | dropped).all()) and 0 < int(kept.sum()) < 64
    torch.testing.assert_close(y[kept], x[kept] * 2)
    with pytest.raises(ValueError, match='drop_prob'):
        DropPath(1.0)


def test_patch_embed_is_linear_map_of_patches():
    """The conv patch embedding equals a linear layer on the flattened
    patches (patchify layout (p1 p2 c))."""
    torch.manual_seed(0)
    embed = PatchEmbed(3, 16, patch_size=4)
    images = torch.randn(2, 3, 8, 12)
    weight = embed.proj.weight.permute(0, 2, 3, 1).reshape(16, -1)
    expected = torch.einsum('bkhw,dk->bdhw', patchify(images, 4), weight)
    expected = expected + embed.proj.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(embed(images), expected, rtol=1e-5, atol=1e-5)


def test_patch_embed_bad_size_names_shape_and_patch():
    embed = PatchEmbed(3, 16, patch_size=16)
    with pytest.raises(ValueError, match=r'\(1, 3, 30, 32\).*\(16, 16\)'):
        embed(torch.randn(1, 3, 30, 32))


def test_encoder_equals_timm_vit():
    """ViTEncoder (learned positions, no class token) computes timm's
    VisionTransformer.forward_features with the same weights."""
    from timm.models.vision_transformer import VisionTransformer
    torch.manual_seed(0)
    ours = ViTEncoder(**TINY).eval()
    timm_vit = VisionTransformer(class_token=False,
                                 global_pool='avg',
                                 num_classes=0,
                                 fc_norm=False,
                                 **TINY).eval()
    def timm_name(name):
        name = name.replace('trunk.', '').replace('pos_embed.weight',
                                                   'pos_embed')
        for ours_part, timm_part in TIMM_BLOCK_NAMES.items():
            name = name.replace(ours_part, timm_part)
        return name

    state = {timm_name(k): v for k, v in ours.state_dict().items()}
    timm_vit.load_state_dict(state, strict=True)
    images = torch.randn(2, 3, 32, 32)
    out = ours(images)
    assert out.shape == (2, 32, 4, 4)
    torch.testing.assert_close(out.flatten(2).transpose(1, 2),
                               timm_vit.forward_features(images),
                               rtol=1e-5,
                               atol=1e-5)


def test_encoder_decoder_shapes_and_registry():
    encoder = BACKBONES.build(dict(type='ViTEncoder', out_channels=6, **TINY))
    decoder = BACKBONES.build(
        dict(type='ViTDecoder', in_channels=6, pos_embed='sincos', **TINY))
    assert isinstance(encoder, ViTEncoder)
    assert isinstance(decoder, ViTDecoder)
    images = torch.randn(2, 3, 32, 32)
    z = encoder(images)
    assert z.shape == (2, 6, 4, 4)
    assert decoder(z).shape == (2, 3, 32, 32)
    # sin-cos positions work at any multiple of the patch size
    assert decoder(torch.randn(1, 6, 2, 3)).shape == (1, 3, 16, 24)


def test_learned_positions_fix_the_grid():
    encoder = ViTEncoder(**TINY)
    with pytest.raises(ValueError, match=r'\(4, 4\) token grid.*\(5, 4\)'):
        encoder(torch.randn(1, 3, 40, 32))
    sincos = ViTEncoder(pos_embed='sincos', **TINY)
    assert sincos(torch.randn(1, 3, 40, 32)).shape == (1, 32, 5, 4)


def test_bad_configs():
    with pytest.raises(ValueError, match='img_size=30.*patch_size=8'):
        ViTEncoder(**{**TINY, 'img_size': 30})
    with pytest.raises(ValueError, match='num_heads=5'):
        ViTEncoder(**{**TINY, 'num_heads': 5})
    with pytest.raises(ValueError, match='pos_embed'):
        ViTEncoder(**{**TINY, 'pos_embed': 'rope'})
    decoder = ViTDecoder(in_channels=6, **TINY)
    with pytest.raises(ValueError, match=r'\(B, 6, h, w\).*\(1, 5, 4, 4\)'):
        decoder(torch.randn(1, 5, 4, 4))


def test_vit_base_parameter_count():
    """ViT-B/16 at 256 px without class token: patch embedding
    3·16²·768 + 768, 256 learned positions, 12 blocks of 12·768² + 13·768,
    final LayerNorm."""
    with torch.device('meta'):
        encoder = ViTEncoder(img_size=256, patch_size=16)
    width = 768
    expected = (3 * 256 * width + width + 256 * width + 12 *
                (12 * width**2 + 13 * width) + 2 * width)
    assert sum(p.numel() for p in encoder.parameters()) == expected
