"""ImageFolder's latent-grid ViT encoder / pixel decoder on a timm ViT.

Tiny random ViTs (width 32, 1-2 blocks) stand in for DINOv2; the forward
passes are checked against a reference written here from timm's own
``_pos_embed`` and ``resample_abs_pos_embed`` and the official layout
(level rows added per segment, ``ToPixel`` unpatchify by einsum)."""
import pytest
import timm
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed, resample_patch_embed

from vistok.models.backbones import DINOv2LatentEncoder, DINOv2PixelDecoder
from vistok.registry import BACKBONES
from vistok.utils.weights import MissingWeightsError

NAME = 'vit_tiny_patch16_224'
WIDTH = 32
TINY = dict(embed_dim=WIDTH, num_heads=2, depth=2, init_values=1e-5)
# DINOv2 with registers: 4 register tokens, no position entry for prefixes
REGISTERS = dict(reg_tokens=4, no_embed_class=True)


def tiny(img_size=32, patch_size=16, **extra):
    return dict(TINY, img_size=img_size, patch_size=patch_size, **extra)


def randomise_(module):
    """Give the tokens / embeddings unit scale (they start at 1e-6 / 0.1)
    and LayerScale 1 (it starts at 1e-5: the blocks would be almost the
    identity and the tokens would hardly mix), so that a wrong index or
    layout shows in the outputs."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name.endswith('.gamma'):
                param.fill_(1.0)
            elif any(key in name for key in ('latent_tokens', 'level_embed',
                                             'mask_token', 'pos_embed')):
                param.normal_()
    return module.eval()


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    """A random tiny ViT saved at patch 14 / img 28 (a 2x2 grid), like a
    DINOv2 checkpoint (patch 14, LayerScale)."""
    torch.manual_seed(0)
    source = timm.create_model(NAME, pretrained=False, **tiny(28, 14))
    path = tmp_path_factory.mktemp('timm') / 'tiny_p14.pth'
    torch.save(source.state_dict(), path)
    return str(path), source.state_dict()


def test_weights_resampled_to_another_patch_and_grid(checkpoint):
    """Loaded at patch 16 / img 48 (3x3 grid): the patch kernels and the
    position embedding equal timm's resampling functions applied to the
    checkpoint, every other ViT tensor is copied exactly, and the parts
    the file does not hold keep their values. The decoder loads the same
    file without a patch embedding."""
    path, state = checkpoint
    encoder = DINOv2LatentEncoder(NAME, path, tiny(48, 16), 3, 2, 8)
    decoder = DINOv2PixelDecoder(NAME, path, tiny(48, 16), 3, 2, 8)
    extra_before = {
        name: value.clone()
        for name, value in encoder.state_dict().items()
        if not name.startswith('model.')
    }
    encoder.init_weights()
    decoder.init_weights()

    expected = dict(state)
    expected['pos_embed'] = resample_abs_pos_embed(state['pos_embed'],
                                                   new_size=[3, 3],
                                                   num_prefix_tokens=1)
    expected['patch_embed.proj.weight'] = resample_patch_embed(
        state['patch_embed.proj.weight'], [16, 16])
    assert expected['pos_embed'].shape == (1, 10, WIDTH)
    assert not torch.equal(expected['pos_embed'][:, 1:5],
                           state['pos_embed'][:, 1:])
    for part in (encoder, decoder):
        own = part.model.state_dict()
        for name, value in own.items():
            assert torch.equal(value, expected[name]), name
    assert set(expected) - set(encoder.model.state_dict()) == {
        'head.weight', 'head.bias'
    }
    assert set(expected) - set(decoder.model.state_dict()) == {
        'head.weight', 'head.bias', 'patch_embed.proj.weight',
        'patch_embed.proj.bias'
    }
    for name, value in extra_before.items():
        assert torch.equal(encoder.state_dict()[name], value), name


def test_missing_weights_and_incomplete_files(checkpoint, tmp_path):
    """Constructors never read the file; ``init_weights`` names the config
    key of a missing file and the tensors a file lacks."""
    path, state = checkpoint
    absent = str(tmp_path / 'absent.pth')
    encoder = DINOv2LatentEncoder(NAME, absent, tiny(), 3, 2, 8)
    with pytest.raises(MissingWeightsError, match='`weights_path`'):
        encoder.init_weights()
    partial = tmp_path / 'partial.pth'
    torch.save({k: v
                for k, v in state.items() if k != 'blocks.1.ls2.gamma'},
               partial)
    decoder = DINOv2PixelDecoder(NAME, str(partial), tiny(), 3, 2, 8)
    with pytest.raises(KeyError, match='blocks.1.ls2.gamma'):
        decoder.init_weights()


def reference_encoder(encoder, images):
    """The encoder's function written from the notes with timm's
    ``_pos_embed``: image sequence + level row 0, branch p's tokens + the
    position embedding resampled to K x K + level row p + 1; blocks, norm,
    projection; token p·K² + r·K_w + c -> channels p·C…, position (r, c)."""
    m = encoder.model
    rows, cols = encoder.latent_grid_size
    levels = encoder.level_embed.weight
    image = m._pos_embed(m.patch_embed(images)) + levels[0]
    prefix = 0 if m.no_embed_class else m.num_prefix_tokens
    pos = resample_abs_pos_embed(m.pos_embed, [rows, cols],
                                 num_prefix_tokens=prefix)[:, prefix:]
    branches = encoder.latent_tokens.view(encoder.num_branches, rows * cols,
                                          WIDTH)
    latent = [
        branches[p] + pos[0] + levels[p + 1]
        for p in range(encoder.num_branches)
    ]
    x = torch.cat([image] +
                  [t.expand(len(images), -1, -1) for t in latent], 1)
    x = m.norm(m.blocks(x))
    tokens = encoder.quant_proj(x[:, image.shape[1]:])
    out = torch.empty(len(images), encoder.out_channels, rows, cols)
    size = encoder.code_dim
    for p in range(encoder.num_branches):
        for r in range(rows):
            for c in range(cols):
                token = tokens[:, p * rows * cols + r * cols + c]
                out[:, p * size:(p + 1) * size, r, c] = token
    return out


@pytest.mark.parametrize('extra', [{}, REGISTERS])
def test_encoder_equals_reference(extra):
    """Three branches on a rectangular 3x4 grid, with a class token or a
    class token and 4 registers (no position entries): equal to the
    reference. A level index with ``patch_size² + 1`` image tokens (the
    official formula: 257 here instead of 5 or 9) cannot pass."""
    torch.manual_seed(0)
    encoder = randomise_(
        DINOv2LatentEncoder(NAME,
                            model_kwargs=tiny(**extra),
                            latent_grid_size=(3, 4),
                            num_branches=3,
                            code_dim=5))
    images = torch.randn(2, 3, 32, 32)
    out = encoder(images)
    assert out.shape == (2, 15, 3, 4)
    torch.testing.assert_close(out, reference_encoder(encoder, images))
    num_image = encoder.model.num_prefix_tokens + 2 * 2
    assert num_image == (9 if extra else 5)  # prefix + 2x2 grid
    assert encoder.level_index(num_image).tolist() == (
        [0] * num_image + [1] * 12 + [2] * 12 + [3] * 12)


def test_each_level_row_reaches_only_its_branch():
    """Without blocks every token's output depends on itself only: level
    row p + 1 moves branch p's channels and nothing else, row 0 (image
    tokens) moves nothing, and latent token p·K² + r·K + c moves only
    position (r, c) of branch p."""
    encoder = randomise_(
        DINOv2LatentEncoder(NAME,
                            model_kwargs=dict(tiny(), depth=0),
                            latent_grid_size=3,
                            num_branches=2,
                            code_dim=4))
    images = torch.randn(1, 3, 32, 32)
    base = encoder(images)
    # not a constant: the final LayerNorm would remove it
    shift = torch.randn(WIDTH)
    with torch.no_grad():
        encoder.level_embed.weight[2] += shift
    moved = (encoder(images) - base).abs().amax(dim=(0, 2, 3)) > 1e-4
    assert moved.tolist() == [False] * 4 + [True] * 4
    with torch.no_grad():
        encoder.level_embed.weight[2] -= shift
        encoder.level_embed.weight[0] += shift
    torch.testing.assert_close(encoder(images), base)
    with torch.no_grad():
        encoder.latent_tokens[9 + 1 * 3 + 2] += shift  # branch 1, (1, 2)
    moved = (encoder(images) - base).abs() > 1e-4
    assert moved.nonzero()[:, 1:].unique(dim=0).tolist() == [
        [c, 1, 2] for c in range(4, 8)
    ]


def test_paper_shape_and_gradients():
    """P=2, C=32, K=11 on 32 px images (free latent tokens): a
    ``(2, 64, 11, 11)`` output; the loss reaches the latent tokens, the
    level embedding and, through the resampled latent positions, the
    ViT's position embedding."""
    encoder = DINOv2LatentEncoder(NAME, model_kwargs=tiny())
    assert encoder.out_channels == 64 and encoder.num_latent_tokens == 242
    out = encoder(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 64, 11, 11)
    out.square().sum().backward()
    for param in (encoder.latent_tokens, encoder.level_embed.weight,
                  encoder.model.pos_embed, encoder.quant_proj.weight):
        assert param.grad is not None and param.grad.abs().sum() > 0
    # both branches' tokens
    assert encoder.latent_tokens.grad[:121].abs().sum() > 0
    assert encoder.latent_tokens.grad[121:].abs().sum() > 0


def reference_decoder(decoder, z):
    """The decoder's function from the notes: ``h·w`` mask tokens through
    timm's ``_pos_embed`` + level row 0; latents embedded, with the class
    token (``latent_prefix_tokens``) and the position embedding resampled
    to K x K + level row 1; blocks, norm; image tokens -> linear ->
    official ``ToPixel.unpatchify`` (einsum ``nhwpqc->nchpwq``)."""
    m = decoder.model
    rows, cols = decoder.grid_size
    batch, p = len(z), decoder.patch_size
    levels = decoder.level_embed.weight
    masks = decoder.mask_token.expand(batch, rows * cols, WIDTH)
    image = m._pos_embed(masks) + levels[0]
    latent = decoder.post_quant_proj(z.flatten(2).transpose(1, 2))
    pos = resample_abs_pos_embed(m.pos_embed,
                                 list(decoder.latent_grid_size),
                                 num_prefix_tokens=1)
    if decoder.latent_prefix_tokens:
        latent = torch.cat([m.cls_token.expand(batch, -1, -1), latent],
                           1) + pos
    else:
        latent = latent + pos[:, 1:]
    x = torch.cat([image, latent + levels[1]], 1)
    x = m.norm(m.blocks(x))[:, 1:1 + rows * cols]
    weight = decoder.head.proj.weight.flatten(1)
    x = F.linear(x, weight, decoder.head.proj.bias)
    x = x.reshape(batch, rows, cols, p, p, 3)
    return torch.einsum('nhwpqc->nchpwq', x).reshape(batch, 3, rows * p,
                                                     cols * p)


@pytest.mark.parametrize('latent_prefix_tokens', [True, False])
def test_decoder_equals_reference(latent_prefix_tokens):
    """Images of the configured size, equal to the reference, with and
    without the official class token in front of the latent grid."""
    torch.manual_seed(0)
    decoder = randomise_(
        DINOv2PixelDecoder(NAME,
                           model_kwargs=tiny(48, 16),
                           latent_grid_size=(2, 3),
                           num_branches=2,
                           code_dim=4,
                           latent_prefix_tokens=latent_prefix_tokens))
    assert decoder.in_channels == 8
    z = torch.randn(2, 8, 2, 3)
    out = decoder(z)
    assert out.shape == (2, 3, 48, 48)
    torch.testing.assert_close(out, reference_decoder(decoder, z))
    latent_size = 6 + latent_prefix_tokens
    assert decoder.level_index(10).tolist() == [0] * 10 + [1] * latent_size


def test_decoder_state_dict_and_last_layer():
    """No patch-embedding tensor is kept; the adaptive GAN weight's layer
    is ``head.proj.weight`` and it receives gradient."""
    decoder = DINOv2PixelDecoder(NAME, model_kwargs=tiny())
    assert not [k for k in decoder.state_dict() if 'patch_embed' in k]
    params = dict(decoder.named_parameters())
    assert decoder.last_layer_name == 'head.proj.weight'
    assert params[decoder.last_layer_name] is decoder.last_layer
    out = decoder(torch.randn(2, 64, 11, 11))
    assert out.shape == (2, 3, 32, 32)
    out.sum().backward()
    assert decoder.last_layer.grad.abs().sum() > 0


def test_bad_inputs_and_registry():
    encoder = BACKBONES.build(
        dict(type='DINOv2LatentEncoder',
             model_name=NAME,
             model_kwargs=tiny(depth=1)))
    decoder = BACKBONES.build(
        dict(type='DINOv2PixelDecoder',
             model_name=NAME,
             model_kwargs=tiny(depth=1)))
    with pytest.raises(ValueError, match='img_size'):
        encoder(torch.randn(1, 3, 48, 48))
    with pytest.raises(ValueError, match=r'\(1, 32, 11, 11\)'):
        decoder(torch.randn(1, 32, 11, 11))
    with pytest.raises(ValueError, match='latent_grid_size'):
        DINOv2LatentEncoder(NAME, model_kwargs=tiny(), latent_grid_size=0)
    with pytest.raises(ValueError, match='not a timm VisionTransformer'):
        DINOv2LatentEncoder('resnet18', model_kwargs={})


def test_paper_size_on_meta():
    """ImageFolder's encoder and decoder (DINOv2 ViT-B/14 re-created at
    256 px / patch 16, P=2, C=32, K=11) on the meta device: output shapes
    and parameter counts equal to a count written out layer by layer."""
    with torch.device('meta'):
        encoder = DINOv2LatentEncoder()
        decoder = DINOv2PixelDecoder()
        z = encoder(torch.empty(1, 3, 256, 256))
        images = decoder(z)
    assert z.shape == (1, 64, 11, 11) and images.shape == (1, 3, 256, 256)
    w, depth, latent, patch = 768, 12, 2 * 11 * 11, 16
    block = (2 * w + 3 * w * w + 3 * w + w * w + w + w  # norm1 attn ls1
             + 2 * w + 8 * w * w + 5 * w + w)  # norm2 mlp ls2
    vit = w + 257 * w + depth * block + 2 * w  # cls, pos_embed, norm
    expected_encoder = (vit + 3 * patch * patch * w + w  # patch_embed
                        + 3 * w + latent * w + w * 32 + 32)
    expected_decoder = (vit + 2 * w + w + 64 * w + w  # level, mask, proj
                        + w * patch * patch * 3 + patch * patch * 3)
    counts = [
        sum(p.numel() for p in part.parameters())
        for part in (encoder, decoder)
    ]
    print(f'ImageFolder encoder {counts[0]:,} + decoder {counts[1]:,} '
          f'parameters')
    assert counts == [expected_encoder, expected_decoder]
