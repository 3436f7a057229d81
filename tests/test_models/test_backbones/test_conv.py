import pytest
import torch
import torch.nn as nn

from vistok.models.backbones import ConvDecoder, ConvEncoder
from vistok.models.backbones.conv import AttnBlock
from vistok.registry import BACKBONES

TINY = dict(
    ch=16,
    ch_mult=(1, 2, 2),
    num_res_blocks=1,
    attn_resolutions=(),
    resolution=32,
    z_channels=4,
    num_groups=8)


def attention_input_sizes(model, x):
    """Spatial sizes at which each AttnBlock runs, in call order."""
    sizes = []
    handles = [
        module.register_forward_pre_hook(
            lambda _, args: sizes.append(tuple(args[0].shape[2:])))
        for module in model.modules() if isinstance(module, AttnBlock)
    ]
    model(x)
    for handle in handles:
        handle.remove()
    return sizes


def test_build_from_registry():
    encoder = BACKBONES.build(dict(type='ConvEncoder', in_channels=3, **TINY))
    decoder = BACKBONES.build(dict(type='ConvDecoder', out_ch=3, **TINY))
    assert isinstance(encoder, ConvEncoder)
    assert isinstance(decoder, ConvDecoder)


def test_shapes_factor_four():
    encoder = ConvEncoder(in_channels=3, **TINY)
    decoder = ConvDecoder(out_ch=3, **TINY)
    assert encoder.downsample_factor == decoder.upsample_factor == 4
    assert (encoder.out_channels, decoder.in_channels) == (4, 4)
    z = encoder(torch.randn(2, 3, 32, 32))
    assert z.shape == (2, 4, 8, 8)
    assert decoder(z).shape == (2, 3, 32, 32)
    # fully convolutional: other sizes work too
    assert encoder(torch.randn(1, 3, 16, 24)).shape == (1, 4, 4, 6)


def test_double_z():
    encoder = ConvEncoder(in_channels=1, double_z=True, **TINY)
    assert encoder.out_channels == 8
    assert encoder(torch.randn(1, 1, 32, 32)).shape == (1, 8, 8, 8)


def test_decoder_last_layer_is_conv_out():
    decoder = ConvDecoder(out_ch=3, **TINY)
    assert isinstance(decoder.conv_out, nn.Conv2d)
    assert decoder.conv_out.out_channels == 3
    last = [m for m in decoder.modules() if isinstance(m, nn.Conv2d)][-1]
    assert last is decoder.conv_out


def test_mid_block_attention_only():
    encoder = ConvEncoder(in_channels=3, **TINY)
    decoder = ConvDecoder(out_ch=3, **TINY)
    assert attention_input_sizes(encoder, torch.randn(1, 3, 32, 32)) == [
        (8, 8)
    ]
    assert attention_input_sizes(decoder, torch.randn(1, 4, 8, 8)) == [(8, 8)]


def test_attention_at_requested_resolution():
    cfg = dict(TINY, num_res_blocks=2, attn_resolutions=(16, ))
    encoder = ConvEncoder(in_channels=3, **cfg)
    decoder = ConvDecoder(out_ch=3, **cfg)
    # encoder: 2 blocks at 16x16 + mid; decoder: 3 blocks at 16x16 + mid
    assert attention_input_sizes(encoder, torch.randn(1, 3, 32, 32)) == [
        (16, 16), (16, 16), (8, 8)
    ]
    assert attention_input_sizes(decoder, torch.randn(1, 4, 8, 8)) == [
        (8, 8), (16, 16), (16, 16), (16, 16)
    ]
    assert len(encoder.down[1].attn) == 2
    assert len(decoder.up[1].attn) == 3


def test_group_norm_must_divide_channels():
    with pytest.raises(ValueError, match=r'num_groups=32 .* 24 channels'):
        ConvEncoder(in_channels=3, **dict(TINY, ch=24, num_groups=32))
    with pytest.raises(ValueError, match=r'num_groups=32 .* 48 channels'):
        ConvDecoder(out_ch=3, **dict(TINY, ch=16, ch_mult=(2, 3),
                                     num_groups=32))


def test_at_least_one_res_block_per_level():
    for build in (lambda: ConvEncoder(in_channels=3,
                                      **dict(TINY, num_res_blocks=0)),
                  lambda: ConvDecoder(out_ch=3,
                                      **dict(TINY, num_res_blocks=0))):
        with pytest.raises(ValueError, match='num_res_blocks must be >= 1'):
            build()
