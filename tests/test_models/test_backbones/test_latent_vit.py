import pytest
import torch

from vistok.models.backbones.latent_vit import (
    LATENT_VIT_SIZES,
    LatentTokenDecoder,
    LatentTokenEncoder,
)
from vistok.models.heads.pixel import PixelHead
from vistok.models.heads.token_logit import TokenLogitHead
from vistok.models.quantizers.vq import VectorQuantizer
from vistok.registry import BACKBONES

# tiny stand-in: 32x32 images, patch 8 -> 4x4 grid, K = 6 tokens of 5 dims
TINY = dict(size=None,
            num_latent_tokens=6,
            img_size=32,
            patch_size=8,
            width=32,
            depth=2,
            num_heads=4)


def num_params(*modules):
    return sum(p.numel() for m in modules for p in m.parameters())


def titok_parameter_count(width,
                          depth,
                          num_latent_tokens,
                          grid=16,
                          patch=16,
                          token_size=12,
                          proxy_codes=1024):
    """Encoder and decoder (+ stage-1 proxy-code head) parameters of the
    official TiTok (bytedance/1d-tokenizer, modeling/modules/blocks.py and
    the ``latent_tokens`` of modeling/titok.py), layer by layer:
    ResidualAttentionBlock = 2 LayerNorms + nn.MultiheadAttention
    (in_proj 3w² + 3w, out_proj w² + w) + MLP (w·4w + 4w, 4w·w + w)."""
    w, k = width, num_latent_tokens
    block = 2 * 2 * w + (4 * w * w + 4 * w) + (8 * w * w + 5 * w)
    shared = (w + (grid * grid + 1) * w + k * w + 2 * w + depth * block + 2 * w
              )  # class, positions, latent positions, ln_pre/post
    encoder = (
        shared + (3 * patch * patch * w + w)  # patch_embed
        + (w * token_size + token_size)  # conv_out
        + k * w)  # latent_tokens
    decoder = (
        shared + (token_size * w + w)  # decoder_embed
        + w  # mask_token
        + (w * 2 * w + 2 * w) + (2 * w * proxy_codes + proxy_codes))
    return encoder, decoder


@pytest.mark.parametrize('size,width,depth,heads', [('S', 512, 8, 8),
                                                    ('B', 768, 12, 12),
                                                    ('L', 1024, 24, 16)])
def test_size_presets(size, width, depth, heads):
    assert LATENT_VIT_SIZES[size] == dict(width=width,
                                          depth=depth,
                                          num_heads=heads)
    with torch.device('meta'):
        encoder = LatentTokenEncoder(size, num_latent_tokens=32)
        decoder = LatentTokenDecoder(size, num_latent_tokens=32, depth=2)
    assert (encoder.width, encoder.depth, encoder.num_heads,
            len(encoder.blocks)) == (width, depth, heads, depth)
    assert encoder.blocks[0].attn.num_heads == heads
    assert encoder.blocks[0].attn_norm.normalized_shape == (width, )
    # explicit arguments override the preset
    assert (decoder.width, decoder.depth, len(decoder.blocks)) == (width, 2, 2)


def test_bad_size():
    with pytest.raises(ValueError, match="'XL'"):
        LatentTokenEncoder('XL')
    with pytest.raises(ValueError, match='size=None needs'):
        LatentTokenEncoder(None, width=64)


# official sizes: (encoder, decoder + proxy-code head) per TiTok model
TITOK_COUNTS = {
    ('L', 32): (303_442_956, 306_822_144),
    ('B', 64): (85_953_804, 88_070_656),
    ('S', 128): (25_884_172, 27_000_832),
}


@pytest.mark.parametrize('size,num_tokens', sorted(TITOK_COUNTS))
def test_titok_parameter_counts(size, num_tokens):
    """TiTok-L-32 / B-64 / S-128 at 256 px, patch 16, token_size 12, with the
    stage-1 head (conv1x1 w→2w, tanh, conv1x1 2w→1024): equal to the
    official layer-by-layer count."""
    with torch.device('meta'):
        encoder = LatentTokenEncoder(size, num_tokens, out_channels=12)
        decoder = LatentTokenDecoder(size, num_tokens, in_channels=12)
        head = TokenLogitHead(decoder.width, 1024, 2 * decoder.width)
    counts = (num_params(encoder), num_params(decoder, head))
    assert counts == titok_parameter_count(encoder.width, encoder.depth,
                                           num_tokens)
    assert counts == TITOK_COUNTS[(size, num_tokens)]


def test_shapes_and_quantizer_round_trip():
    torch.manual_seed(0)
    encoder = BACKBONES.build(
        dict(type='LatentTokenEncoder', out_channels=5, **TINY))
    decoder = BACKBONES.build(
        dict(type='LatentTokenDecoder', in_channels=5, **TINY))
    assert (encoder.out_channels, decoder.out_channels) == (5, 32)
    images = torch.randn(2, 3, 32, 32)
    tokens = encoder(images)
    assert tokens.shape == (2, 5, 6)  # (B, C_q, K)
    quantizer = VectorQuantizer(codebook_size=16, embed_dim=5)
    out = quantizer(tokens)
    assert out.indices.shape == (2, 6)
    features = decoder(out.quantized)
    assert features.shape == (2, 32, 4, 4)
    assert TokenLogitHead(32, 16, 64)(features).shape == (2, 16, 4, 4)
    assert PixelHead(32, 8)(features).shape == (2, 3, 32, 32)


def test_batch_independence():
    """A sample's tokens and features do not depend on the other samples of
    the batch."""
    torch.manual_seed(0)
    encoder = LatentTokenEncoder(out_channels=5, **TINY).eval()
    decoder = LatentTokenDecoder(in_channels=5, **TINY).eval()
    images = torch.randn(3, 3, 32, 32)
    other = images.clone()
    other[1:] = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(encoder(other)[0], encoder(images)[0])
    tokens = torch.randn(3, 5, 6)
    changed = torch.cat([tokens[:1], torch.randn(2, 5, 6)])
    torch.testing.assert_close(decoder(changed)[0], decoder(tokens)[0])


def test_every_token_sees_the_whole_image():
    """1-D tokenization: each latent token depends on every image patch,
    and each output position of the decoder on every latent token."""
    torch.manual_seed(0)
    encoder = LatentTokenEncoder(out_channels=5, **TINY)
    decoder = LatentTokenDecoder(in_channels=5, **TINY)
    images = torch.randn(1, 3, 32, 32, requires_grad=True)
    for k in (0, 5):
        grad, = torch.autograd.grad(encoder(images)[0, :, k].sum(), images)
        per_patch = grad.abs().reshape(3, 4, 8, 4, 8).sum((0, 2, 4))
        assert bool((per_patch > 0).all())
    tokens = torch.randn(1, 5, 6, requires_grad=True)
    weights = torch.randn(32)  # (a plain sum of LayerNorm outputs is const)
    for y, x in ((0, 0), (3, 2)):
        grad, = torch.autograd.grad(
            (decoder(tokens)[0, :, y, x] * weights).sum(), tokens)
        assert bool((grad.abs().sum(1) > 0).all())


def test_bad_inputs():
    encoder = LatentTokenEncoder(out_channels=5, **TINY)
    with pytest.raises(ValueError, match=r'\(1, 3, 30, 32\).*\(8, 8\)'):
        encoder(torch.randn(1, 3, 30, 32))
    with pytest.raises(ValueError, match=r'\(1, 3, 40, 32\).*\(4, 4\)'):
        encoder(torch.randn(1, 3, 40, 32))
    decoder = LatentTokenDecoder(in_channels=5, **TINY)
    with pytest.raises(ValueError, match=r'\(B, 5, 6\).*\(1, 5, 1, 6\)'):
        decoder(torch.randn(1, 5, 1, 6))
    with pytest.raises(ValueError, match='img_size=30'):
        LatentTokenDecoder(**{**TINY, 'img_size': 30})
