"""MaskGIT-VQGAN options of the conv encoder / decoder: the official
parameter counts (54,515,587 = 23,775,104 + 30,478,339 + 262,144), its
layout, the output-side shortcut and the [0, 1] pixel range."""
import os.path as osp

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.registry import DefaultScope

from _helpers import REPO_ROOT
from vistok.models.backbones.conv import (
    AttnBlock,
    AvgPoolDownsample,
    ConvDecoder,
    ConvEncoder,
    ResnetBlock,
)

BASE = osp.join(REPO_ROOT, 'configs/_base_/models/maskgit_vqgan_conv-f16.py')
CONFIG = osp.join(REPO_ROOT, 'configs/maskgit_vqgan/'
                  'maskgit-vqgan_vq-1k_conv-f16_8xb32-500k_in1k-256.py')
#: the MaskGIT options at a small width (f16 kept: five levels)
TINY = dict(ch=8, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2,
            attn_resolutions=(), resolution=32, z_channels=6, num_groups=4,
            mid_attention=False, resnet_bias=False, resnet_shortcut='output')
TINY_ENCODER = dict(TINY, in_channels=3, conv_in_bias=False,
                    downsample='avgpool', conv_out_kernel_size=1)
TINY_DECODER = dict(TINY, out_ch=3, num_up_blocks=2)


def count(module):
    return sum(p.numel() for p in module.parameters())


def build_on_meta(path):
    import vistok.models  # noqa: F401
    from vistok.registry import MODELS
    cfg = Config.fromfile(path)
    with DefaultScope.overwrite_default_scope('vistok'), \
            torch.device('meta'):
        return MODELS.build(cfg.model)


@pytest.mark.parametrize('path', [BASE, CONFIG])
def test_official_parameter_counts(path):
    model = build_on_meta(path)
    assert count(model.encoder) == 23_775_104
    assert count(model.decoder) == 30_478_339
    assert count(model.quantizer) == 262_144 == 1024 * 256
    assert isinstance(model.quant_conv, nn.Identity)
    assert isinstance(model.post_quant_conv, nn.Identity)
    generator = sum(count(part) for part in model.generator_parts().values())
    assert generator == 54_515_587


def test_layout():
    model = build_on_meta(BASE)
    encoder, decoder = model.encoder, model.decoder
    assert not any(isinstance(m, AttnBlock) for m in model.modules())
    blocks = [m for m in model.modules() if isinstance(m, ResnetBlock)]
    # 5 levels x 2 + 2 middle blocks in each half
    assert len(blocks) == 24
    assert all(b.conv1.bias is None and b.conv2.bias is None for b in blocks)
    changing = [b for b in blocks if isinstance(b.nin_shortcut, nn.Conv2d)]
    assert len(changing) == 4  # 128->256, 256->512 (enc); 512->256, 256->128
    for b in changing:  # 1x1, C_out x C_out, no bias: reads the output
        c_out = b.conv2.out_channels
        assert b.nin_shortcut.weight.shape == (c_out, c_out, 1, 1)
        assert b.nin_shortcut.bias is None
    assert encoder.conv_in.bias is None
    assert encoder.conv_out.kernel_size == (1, 1)
    assert decoder.conv_in.bias is not None
    assert [type(level.resample) for level in encoder.down] == \
        [AvgPoolDownsample] * 4 + [nn.Identity]
    assert [len(level.block) for level in decoder.up] == [2] * 5
    assert decoder.up[1].resample.conv.bias is not None


def test_shortcut_from_output_equals_hand_composition():
    torch.manual_seed(0)
    block = ResnetBlock(8, 16, dropout=0.0, num_groups=4, bias=False,
                        shortcut='output')
    x = torch.randn(2, 8, 6, 6)
    h = block.conv1(F.silu(block.norm1(x)))
    h = block.conv2(F.silu(block.norm2(h)))
    expected = F.conv2d(h, block.nin_shortcut.weight) + h
    torch.testing.assert_close(block(x), expected)
    # equal channel counts: the plain identity shortcut, as taming's
    same = ResnetBlock(8, 8, 0.0, 4, bias=False, shortcut='output')
    h = same.conv2(F.silu(same.norm2(same.conv1(F.silu(same.norm1(x))))))
    torch.testing.assert_close(same(x), x + h)


def test_shapes_f16():
    encoder = ConvEncoder(**TINY_ENCODER)
    decoder = ConvDecoder(**TINY_DECODER)
    assert encoder.downsample_factor == decoder.upsample_factor == 16
    z = encoder(torch.randn(2, 3, 64, 48))
    assert z.shape == (2, 6, 4, 3)
    assert decoder(z).shape == (2, 3, 64, 48)


def test_pixel_range_maps_vistok_images_to_unit_range():
    torch.manual_seed(0)
    unit_encoder = ConvEncoder(**TINY_ENCODER, pixel_range=(0, 1))
    plain_encoder = ConvEncoder(**TINY_ENCODER)
    plain_encoder.load_state_dict(unit_encoder.state_dict())
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(unit_encoder(x), plain_encoder((x + 1) / 2))

    unit_decoder = ConvDecoder(**TINY_DECODER, pixel_range=(0, 1))
    plain_decoder = ConvDecoder(**TINY_DECODER)
    plain_decoder.load_state_dict(unit_decoder.state_dict())
    z = torch.randn(1, 6, 2, 2)
    torch.testing.assert_close(unit_decoder(z), plain_decoder(z) * 2 - 1)


def test_bad_options_name_the_argument():
    with pytest.raises(ValueError, match='downsample must be one of'):
        ConvEncoder(**dict(TINY_ENCODER, downsample='maxpool'))
    with pytest.raises(ValueError, match='resnet_shortcut must be one of'):
        ConvDecoder(**dict(TINY_DECODER, resnet_shortcut='both'))
    with pytest.raises(ValueError,
                       match='conv_out_kernel_size must be an odd'):
        ConvEncoder(**dict(TINY_ENCODER, conv_out_kernel_size=2))
    with pytest.raises(ValueError, match=r'pixel_range .* got \(1.0, 0.0\)'):
        ConvDecoder(**TINY_DECODER, pixel_range=(1.0, 0.0))
    with pytest.raises(ValueError, match='num_up_blocks must be >= 1'):
        ConvDecoder(**dict(TINY_DECODER, num_up_blocks=0))
