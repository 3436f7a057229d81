"""EMmamba (TokenUnify): parameter counts of the five released sizes, shapes
of the encoder skips and outputs, the divisibility error, the inter-slice
scan over each stage's z-depth (and the legacy fixed 5), the Mamba layer
and up-block against hand compositions, and pre-train → fine-tune loading
with an allowed head mismatch."""
import pytest
import torch
import torch.nn.functional as F

import vistok.models.backbones.mamba.mixer as mixer_module
from projects.TokenUnify.tokenunify.emmamba import (
    ARCH_SETTINGS,
    EMMamba,
    EMMambaLayer,
    unetr_up_block,
)
from vistok.registry import BACKBONES
from vistok.utils.partial_load import PartialLoadError, load_pretrained

TINY = dict(arch=None, feat_size=(4, 8, 8, 16), hidden_size=16)


def tiny(**kwargs):
    torch.manual_seed(0)
    return EMMamba(**dict(TINY, **kwargs))


def count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize('arch', list(ARCH_SETTINGS))
def test_parameter_counts_match_the_release(arch):
    with torch.device('meta'):
        model = EMMamba(arch=arch, out_channels=3)
    millions = count(model) / 1e6
    assert millions == pytest.approx(ARCH_SETTINGS[arch]['params'],
                                     rel=1e-3)
    assert model.feat_size == ARCH_SETTINGS[arch]['feat_size']


def test_base_size_by_module():
    """28.3M = encoder 6.89M + decoder residual / up blocks."""
    with torch.device('meta'):
        model = EMMamba(arch='base')
    assert count(model.encoder) == 6_893_600
    assert count(model) == 28_296_131
    # MONAI blocks: bias-free convs, InstanceNorms without parameters
    conv1 = model.skip_blocks[0].layer.conv1.conv
    assert conv1.bias is None
    assert tuple(conv1.weight.shape) == (32, 1, 1, 5, 5)
    assert tuple(model.up_blocks[0].transp_conv.conv.weight.shape) == (
        512, 256, 2, 2, 2)


def test_forward_shapes_and_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = BACKBONES.build(dict(type='EMMamba', out_channels=3, **TINY))
    x = torch.rand(2, 1, 16, 32, 32)
    skips = model.encoder(x)
    assert [tuple(s.shape) for s in skips] == [(2, 4, 8, 16, 16),
                                               (2, 8, 4, 8, 8),
                                               (2, 8, 2, 4, 4),
                                               (2, 16, 1, 2, 2)]
    out = model(x)
    assert out.shape == (2, 3, 16, 32, 32)
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0
               for p in model.parameters())
    assert model.final_conv.out_channels == 3


def test_ar_variant_kernel_and_depths():
    """The release's pre-training network: (1, 3, 3) kernels, 3 layers."""
    model = tiny(kernel_size=(1, 3, 3), depths=(3, 3, 3, 3), out_channels=1)
    assert {tuple(m.weight.shape[2:]) for name, m in model.named_modules()
            if name.endswith(('conv1.conv', 'conv2.conv'))} == {(1, 3, 3)}
    assert [len(stage) for stage in model.encoder.stages] == [3] * 4
    assert model(torch.rand(1, 1, 16, 32, 32)).shape == (1, 1, 16, 32, 32)


@pytest.mark.parametrize('shape', [(1, 1, 8, 32, 32), (1, 1, 16, 32, 24),
                                   (1, 1, 16, 40, 32)])
def test_sizes_not_divisible_by_16_are_refused_with_the_shape(shape):
    with pytest.raises(ValueError, match=r'divisible by 16.*' +
                       str(shape).replace('(', r'\(').replace(')', r'\)')):
        tiny()(torch.rand(shape))


def test_wrong_channels_and_arch_are_refused():
    with pytest.raises(ValueError, match=r'\(B, 1, D, H, W\).*\(1, 2, 16'):
        tiny()(torch.rand(1, 2, 16, 32, 32))
    with pytest.raises(ValueError, match='arch must be one of'):
        EMMamba(arch='tiny')
    with pytest.raises(ValueError, match='feat_size and hidden_size'):
        EMMamba(arch=None, feat_size=(4, 8, 8, 16))


def record_num_slices(monkeypatch):
    """Record the chunk count of every inter-slice scan and the depth D of
    the volume the mixer saw."""
    calls, forward = [], mixer_module.MambaMixer.forward

    def spy_forward(self, x):
        calls.append([x.shape[2], None])
        return forward(self, x)

    def spy_interleave(x, num_slices):
        calls[-1][1] = num_slices
        return interleave(x, num_slices)

    interleave = mixer_module.interleave
    monkeypatch.setattr(mixer_module.MambaMixer, 'forward', spy_forward)
    monkeypatch.setattr(mixer_module, 'interleave', spy_interleave)
    return calls


def test_inter_slice_scan_uses_each_stage_depth(monkeypatch):
    calls = record_num_slices(monkeypatch)
    tiny()(torch.rand(1, 1, 16, 32, 32))
    # two Mamba layers per stage, z-depth 8, 4, 2, 1
    assert calls == [[8, 8], [8, 8], [4, 4], [4, 4], [2, 2], [2, 2], [1, 1],
                     [1, 1]]


def test_legacy_num_slices_is_fixed_at_every_stage(monkeypatch):
    calls = record_num_slices(monkeypatch)
    tiny(legacy_num_slices=5)(torch.rand(1, 1, 16, 80, 80))
    assert [c[1] for c in calls] == [5] * 8
    with pytest.raises(ValueError, match='num_slices=5'):
        tiny(legacy_num_slices=5)(torch.rand(1, 1, 16, 32, 32))


@pytest.mark.parametrize('residual', [False, True])
def test_mamba_layer_is_layernorm_then_mixer(residual):
    torch.manual_seed(0)
    layer = EMMambaLayer(8, residual=residual)
    with torch.no_grad():
        layer.norm.weight.uniform_(0.5, 1.5)
        layer.norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 8, 2, 3, 4)
    seq = x.flatten(2).transpose(1, 2)  # (B, DHW, C), z slowest
    normed = F.layer_norm(seq, (8, ), layer.norm.weight, layer.norm.bias)
    expected = layer.mamba(normed.transpose(1, 2).unflatten(2, (2, 3, 4)))
    if residual:
        expected = expected + x
    torch.testing.assert_close(layer(x), expected)
    assert layer.mamba.directions == ('forward', 'backward', 'inter_slice')


def test_up_block_is_transposed_conv_concat_residual_block():
    torch.manual_seed(0)
    block = unetr_up_block(6, 4, kernel_size=(1, 3, 3),
                           upsample_kernel_size=2)
    x, skip = torch.randn(1, 6, 1, 2, 3), torch.randn(1, 4, 2, 4, 6)
    up = F.conv_transpose3d(x, block.transp_conv.conv.weight, stride=2)
    h = torch.cat([up, skip], 1)
    res = block.conv_block

    def conv(v, layer):
        return F.conv3d(v, layer.weight, None, layer.stride, layer.padding)

    y = F.leaky_relu(F.instance_norm(conv(h, res.conv1.conv)), 0.01)
    y = F.instance_norm(conv(y, res.conv2.conv))
    shortcut = F.instance_norm(conv(h, res.conv3.conv))
    torch.testing.assert_close(block(x, skip),
                               F.leaky_relu(y + shortcut, 0.01))


def test_pretrain_to_finetune_loads_all_but_the_head():
    pretrained, finetune = tiny(out_channels=1), tiny(out_channels=3)
    with pytest.raises(PartialLoadError, match='final_conv.weight'):
        load_pretrained(finetune, pretrained.state_dict())
    head = {k: v.clone() for k, v in finetune.final_conv.state_dict().items()}
    report = load_pretrained(finetune, pretrained.state_dict(),
                             allow_shape_mismatch=[r'final_conv\..*'])
    assert len(report.loaded) == len(finetune.state_dict()) - 2
    for key, value in pretrained.state_dict().items():
        if not key.startswith('final_conv.'):
            assert torch.equal(finetune.state_dict()[key], value), key
    for key, value in finetune.final_conv.state_dict().items():
        assert torch.equal(value, head[key])
