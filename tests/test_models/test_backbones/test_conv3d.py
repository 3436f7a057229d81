"""3-D conv blocks: anisotropic shapes, zero-init identities, GSC and
ResBlock3d against hand compositions, transposed up-sampling by value."""
import pytest
import torch
import torch.nn.functional as F

from vistok.models.backbones.conv3d import (
    Downsample3d,
    GSCBlock3d,
    ResBlock3d,
    Upsample3d,
)


def randomise_norms(module):
    """Give the affine InstanceNorms non-trivial scales and shifts."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.InstanceNorm3d) and m.affine:
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)


def conv(x, layer):
    return F.conv3d(x, layer.weight, layer.bias, layer.stride, layer.padding)


def inorm(x, norm):
    return F.instance_norm(x, weight=norm.weight, bias=norm.bias,
                           eps=norm.eps)


@pytest.mark.parametrize('kernel', [(1, 3, 3), (1, 5, 5), (3, 3, 3), 3])
def test_res_block_keeps_shape_with_anisotropic_kernels(kernel):
    block = ResBlock3d(4, 4, kernel_size=kernel)
    expected = (kernel, ) * 3 if isinstance(kernel, int) else kernel
    assert tuple(block.conv1.weight.shape[2:]) == expected
    assert block.conv1.padding == tuple(k // 2 for k in expected)
    x = torch.randn(2, 4, 3, 10, 12)
    assert block(x).shape == x.shape


def test_res_block_strided_anisotropic():
    block = ResBlock3d(4, 8, kernel_size=(1, 3, 3), stride=(1, 2, 2))
    assert block(torch.randn(1, 4, 3, 16, 10)).shape == (1, 8, 3, 8, 5)
    block = ResBlock3d(4, 4, kernel_size=(3, 3, 3), stride=(2, 2, 2))
    assert block(torch.randn(1, 4, 4, 8, 8)).shape == (1, 4, 2, 4, 4)


@pytest.mark.parametrize('act_after_sum', [False, True])
def test_res_block_equals_hand_composition(act_after_sum):
    torch.manual_seed(0)
    block = ResBlock3d(3, 5, kernel_size=(1, 5, 5), stride=(1, 2, 2),
                       negative_slope=0.01, act_after_sum=act_after_sum,
                       affine=True, bias=True)
    randomise_norms(block)
    x = torch.randn(2, 3, 4, 12, 12)

    def act(t):
        return F.leaky_relu(t, 0.01)

    h = act(inorm(conv(x, block.conv1), block.norm1))
    h = inorm(conv(h, block.conv2), block.norm2)
    skip = inorm(conv(x, block.shortcut[0]), block.shortcut[1])
    expected = act(h + skip) if act_after_sum else act(h) + skip
    torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)


def test_res_block_zero_init_is_identity():
    block = ResBlock3d(6, 6, kernel_size=(1, 3, 3), affine=True,
                       zero_init_residual=True)
    x = torch.randn(2, 6, 3, 8, 8)
    assert torch.equal(block(x), x)
    with pytest.raises(ValueError, match='zero_init_residual needs affine'):
        ResBlock3d(6, 6, zero_init_residual=True)


def test_gsc_equals_hand_composition():
    torch.manual_seed(0)
    block = GSCBlock3d(4, kernel_size=(1, 3, 3), affine=True)
    randomise_norms(block)
    x = torch.randn(2, 4, 3, 10, 10)
    x1 = F.relu(inorm(conv(x, block.proj), block.norm))
    x1 = F.relu(inorm(conv(x1, block.proj2), block.norm2))
    x2 = F.relu(inorm(conv(x, block.proj3), block.norm3))
    expected = F.relu(inorm(conv(x1 + x2, block.proj4), block.norm4)) + x
    torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)


def test_gsc_segmamba_layout_and_zero_init():
    block = GSCBlock3d(8)  # SegMamba: 3x3x3 then 1x1x1, no affine IN
    assert sorted(block.state_dict()) == sorted(
        f'{name}.{p}' for name in ('proj', 'proj2', 'proj3', 'proj4')
        for p in ('weight', 'bias'))
    assert block.proj.weight.shape == (8, 8, 3, 3, 3)
    assert block.proj4.weight.shape == (8, 8, 1, 1, 1)
    x = torch.randn(1, 8, 4, 6, 6)
    assert block(x).shape == x.shape
    identity = GSCBlock3d(8, affine=True, zero_init_residual=True)
    assert torch.equal(identity(x), x)


def test_downsample_tokenunify_stem_and_transition():
    stem = Downsample3d(1, 8, stride=2, kernel_size=(1, 7, 7),
                        padding=(0, 3, 3))
    x = torch.randn(1, 1, 16, 32, 32)
    h = stem(x)
    assert h.shape == (1, 8, 8, 16, 16)
    transition = Downsample3d(8, 16, stride=2, kernel_size=(1, 2, 2),
                              pre_norm=True)
    assert transition(h).shape == (1, 16, 4, 8, 8)
    # default: non-overlapping in-plane patches
    assert Downsample3d(8, 8)(h).shape == (1, 8, 8, 8, 8)
    with pytest.raises(ValueError, match=r'\(8, 15, 16\).*not divisible'):
        Downsample3d(8, 8)(torch.randn(1, 8, 8, 15, 16))


def test_transposed_upsample_by_value():
    torch.manual_seed(0)
    up = Upsample3d(3, 2, scale_factor=(1, 2, 2), mode='transposed')
    x = torch.randn(2, 3, 4, 5, 6)
    out = up(x)
    assert out.shape == (2, 2, 4, 10, 12)
    # every voxel becomes a 1 x 2 x 2 block: out[o, d, 2i + a, 2j + b] =
    # sum_c x[c, d, i, j] W[c, o, 0, a, b] + bias[o]
    blocks = torch.einsum('ncdij,coab->nodiajb', x, up.conv.weight[:, :, 0])
    expected = blocks.reshape(2, 2, 4, 10, 12) + up.conv.bias.view(1, -1, 1, 1,
                                                                   1)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('mode', ['trilinear', 'nearest'])
def test_interpolating_upsample(mode):
    up = Upsample3d(4, 2, scale_factor=(2, 2, 2), mode=mode,
                    kernel_size=(3, 3, 3))
    x = torch.randn(1, 4, 2, 3, 3)
    out = up(x)
    assert out.shape == (1, 2, 4, 6, 6)
    resized = F.interpolate(x, scale_factor=(2, 2, 2), mode=mode)
    torch.testing.assert_close(out, conv(resized, up.conv))


def test_bad_input_and_options_name_the_problem():
    with pytest.raises(ValueError, match=r'\(B, 4, D, H, W\).*\(2, 3, 8, 8\)'):
        ResBlock3d(4, 4)(torch.randn(2, 3, 8, 8))
    with pytest.raises(ValueError,
                       match=r'\(B, 4, D, H, W\).*\(1, 5, 2, 8, 8\)'):
        GSCBlock3d(4)(torch.randn(1, 5, 2, 8, 8))
    with pytest.raises(ValueError, match='kernel_size must be odd'):
        ResBlock3d(4, 4, kernel_size=(1, 2, 2))
    with pytest.raises(ValueError, match='mode must be one of'):
        Upsample3d(4, 4, mode='bicubic')
    with pytest.raises(ValueError, match='stride must be a positive int'):
        Downsample3d(4, 4, stride=(1, 2))
