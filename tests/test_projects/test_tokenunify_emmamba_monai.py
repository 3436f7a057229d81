"""EMmamba's decoder on MONAI's blocks against the hand-written blocks it
replaced (vistok's ``ResBlock3d`` / ``Upsample3d`` with the settings the
previous ``emmamba.py`` used): same forward with the same weights, and a
state dict of the previous layout loads strictly after
``rename_legacy_decoder_keys``."""
import torch

from projects.TokenUnify.tokenunify.emmamba import (
    EMMamba,
    rename_legacy_decoder_keys,
    unetr_basic_block,
    unetr_up_block,
)
from vistok.models.backbones.conv3d import ResBlock3d, Upsample3d

TINY = dict(arch=None, feat_size=(4, 8, 8, 16), hidden_size=16)
KERNEL = (1, 5, 5)


def previous_res_block(c_in, c_out):
    """The previous ``unetr_res_block``."""
    return ResBlock3d(c_in, c_out, kernel_size=KERNEL, negative_slope=0.01,
                      act_after_sum=True, affine=False, bias=False)


def previous_up(c_in, c_out):
    """The previous ``UnetrUpBlock3d``'s parts."""
    return (Upsample3d(c_in, c_out, scale_factor=2, mode='transposed',
                       bias=False), previous_res_block(2 * c_out, c_out))


def prefixed(prefix, module):
    return {prefix + k: v for k, v in module.state_dict().items()}


def test_previous_layout_loads_and_blocks_compute_the_same():
    torch.manual_seed(0)
    model = EMMamba(**TINY)
    channels = (1, ) + TINY['feat_size']
    outs = TINY['feat_size'] + (TINY['hidden_size'], )
    old = {k: v for k, v in model.state_dict().items()
           if k.startswith(('encoder.', 'final_conv.'))}
    skips = [previous_res_block(i, o) for i, o in zip(channels, outs)]
    ups = [previous_up(i, o) for i, o in zip(outs[:0:-1], outs[-2::-1])]
    last = previous_res_block(outs[0], outs[0])
    for i, block in enumerate(skips):
        old.update(prefixed(f'skip_blocks.{i}.', block))
    for i, (up, res) in enumerate(ups):
        old.update(prefixed(f'up_blocks.{i}.transp_conv.', up))
        old.update(prefixed(f'up_blocks.{i}.conv_block.', res))
    old.update(prefixed('decoder1.', last))
    renamed = rename_legacy_decoder_keys(old)
    assert len(renamed) == len(old)
    model.load_state_dict(renamed, strict=True)  # every key, every shape

    x = torch.randn(2, 4, 2, 8, 8)
    torch.testing.assert_close(model.skip_blocks[1](x), skips[1](x))
    torch.testing.assert_close(model.decoder1(x), last(x))
    h, skip = torch.randn(2, 8, 1, 4, 4), torch.randn(2, 4, 2, 8, 8)
    up, res = ups[-1]
    torch.testing.assert_close(model.up_blocks[-1](h, skip),
                               res(torch.cat([up(h), skip], 1)))


def test_factories_build_monai_blocks():
    block = unetr_basic_block(3, 5, KERNEL)
    assert type(block).__module__.startswith('monai.')
    assert type(unetr_up_block(5, 3, KERNEL, 2)).__module__.startswith(
        'monai.')
    assert block.layer.conv1.conv.bias is None
    assert not list(block.layer.norm1.parameters())
