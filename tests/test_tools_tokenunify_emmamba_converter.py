"""tools/model_converters/tokenunify_emmamba.py (rules:
vistok.apis.converters.tokenunify_emmamba): random weights in the layout
of the released ``SegMamba`` (``tests/reference/emmamba_official.py``,
written from ydchen0806/TokenUnify ``src/segmamba.py`` and
``mamba_local/.../mamba_simple.py``) converted into vistok's EMMamba give
the official forward; the command line converts into the tiny synthetic
segmentor config and refuses an extra or a missing key with the report."""
import os.path as osp

import pytest
import torch
from reference.emmamba_official import RefSegMamba
from safetensors.torch import load_file

import projects.TokenUnify.tokenunify  # noqa: F401  (registers)
from _helpers import REPO_ROOT, load_tool
from projects.TokenUnify.tokenunify.emmamba import ARCH_SETTINGS, EMMamba
from vistok.apis.converters import tokenunify_emmamba
from vistok.utils.convert import ConversionError, convert_state_dict

tool = load_tool('tools/model_converters/tokenunify_emmamba.py',
                 'converter_tokenunify_emmamba')
TINY_CONFIG = osp.join(
    REPO_ROOT, 'projects/TokenUnify/configs',
    'emmamba-seg_affinity-3_emmamba-tiny_1xb4-300_synthetic-16x32x32.py')
#: projects/TokenUnify/configs/_base_/tiny_emmamba.py
TINY = dict(feat_size=(4, 8, 8, 16), hidden_size=16, depths=(1, 1, 1, 1),
            kernel_size=(1, 3, 3))


def official_model(seed=0, **kwargs):
    torch.manual_seed(seed)
    ref = RefSegMamba(**kwargs)
    with torch.no_grad():  # dt biases that make every scan step matter
        for name, p in ref.named_parameters():
            if 'dt_proj' in name and name.endswith('bias'):
                p.uniform_(-3, 0)
    return ref.eval()


def test_converted_base_model_matches_the_official_forward():
    setting = ARCH_SETTINGS['base']
    ref = official_model(feat_size=setting['feat_size'],
                         hidden_size=setting['hidden_size'])
    model = EMMamba(arch='base', out_channels=3, legacy_num_slices=5).eval()
    converted, report = convert_state_dict(
        ref.state_dict(), tokenunify_emmamba.rules_for(model), model)
    assert report.ok and not report.ignored
    assert len(converted) == len(model.state_dict()) == 291
    model.load_state_dict(converted, strict=True)
    # D, H, W divisible by 16; the last stage's 1x1x5 = 5 positions makes
    # every stage divisible into the release's 5 inter-slice chunks
    x = torch.rand(1, 1, 16, 16, 80)
    with torch.no_grad():
        expected = ref(x)
        out = torch.sigmoid(model(x))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=0)
    assert expected.std() > 1e-3  # not a saturated, trivial output


def test_cli_converts_into_the_segmentor_config_and_refuses(tmp_path):
    ref = official_model(**TINY)
    state = {f'module.{k}': v for k, v in ref.state_dict().items()}
    state['module.preciever.mlp.weight'] = torch.zeros(1024, 800)
    torch.save({'model': state, 'epoch': 3}, tmp_path / 'official.pth')
    out = tmp_path / 'vistok.safetensors'
    report = tool.main([str(tmp_path / 'official.pth'), str(out),
                        '--config', TINY_CONFIG])
    assert report.ok
    assert report.ignored == ['module.preciever.mlp.weight']
    weights = load_file(out)
    assert torch.equal(weights['backbone.final_conv.weight'],
                       ref.out.conv.conv.weight)
    assert torch.equal(
        weights['backbone.up_blocks.0.conv_block.conv3.conv.weight'],
        ref.decoder5.conv_block.conv3.conv.weight)
    assert torch.equal(
        weights['backbone.encoder.stages.2.0.mamba.A_s_log'],
        ref.vit.stages[2][0].mamba.A_s_log)

    extra = dict(state, **{'module.vit.norm0.weight': torch.ones(4)})
    torch.save(extra, tmp_path / 'extra.pth')
    with pytest.raises(ConversionError,
                       match=r'(?s)no rule maps.*module\.vit\.norm0\.weight'):
        tool.main([str(tmp_path / 'extra.pth'), str(out), '--config',
                   TINY_CONFIG])
    missing = {k: v for k, v in state.items()
               if k != 'module.decoder1.layer.conv2.conv.weight'}
    torch.save(missing, tmp_path / 'missing.pth')
    with pytest.raises(ConversionError,
                       match=r'(?s)nothing provides.*'
                       r'backbone\.decoder1\.layer\.conv2\.conv\.weight'):
        tool.main([str(tmp_path / 'missing.pth'), str(out), '--config',
                   TINY_CONFIG])


def test_a_model_without_emmamba_is_refused():
    with pytest.raises(tokenunify_emmamba.LayoutError, match='EMMamba'):
        tokenunify_emmamba.rules_for(torch.nn.Linear(2, 2))
    with pytest.raises(tokenunify_emmamba.LayoutError, match='vit.stages'):
        tokenunify_emmamba.check_layout({'x': torch.zeros(1)},
                                        EMMamba(arch=None, **TINY))
