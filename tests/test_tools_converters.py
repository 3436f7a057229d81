"""Model converters: the key-mapping framework (vistok.utils.convert), the
command line (vistok.apis.convert) and the taming VQGAN / MaskGIT-VQGAN
converters (rules in vistok.apis.converters, scripts in
tools/model_converters) on synthetic checkpoints with the official key
names and shapes (enumerated below from taming's
``taming/modules/diffusionmodules/model.py``, ``taming/models/vqgan.py``,
``taming/modules/discriminator/model.py``, ``taming/modules/losses/lpips.py``
and TiTok's ``modeling/modules/maskgit_vqgan.py``), and converted random
checkpoints against the independent references of the official forward
passes in ``tests/reference/taming_official.py`` and
``tests/reference/maskgit_vqgan_official.py``."""
import argparse
import os
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope
from reference import maskgit_vqgan_official, taming_official
from safetensors.torch import load_file

from _helpers import REPO_ROOT, load_tool
from vistok.apis.converters import maskgit_vqgan, taming_vqgan
from vistok.apis.tokenize import load_tokenizer
from vistok.utils.checkpoint import CheckpointLoadError, pickle_trusted
from vistok.utils.convert import (
    ConversionError,
    Rule,
    convert_for_model,
    convert_state_dict,
    with_copies,
)

TAMING_F16 = osp.join(REPO_ROOT, 'configs/vqgan/'
                      'vqgan_vq-16k_conv-f16_8xb12-400k_in1k-256.py')
MASKGIT_BASE = osp.join(REPO_ROOT,
                        'configs/_base_/models/maskgit_vqgan_conv-f16.py')
MASKGIT_CONFIG = osp.join(REPO_ROOT, 'configs/maskgit_vqgan/maskgit-vqgan_'
                          'vq-1k_conv-f16_8xb32-500k_in1k-256.py')
#: a small taming-layout tokenizer: attention at 8x8, a 4-d code space
#: (quant_conv 8 -> 4), a BatchNorm PatchGAN, LeCam and an EMA copy
TINY_TAMING = dict(ch=32, ch_mult=(1, 2), num_res_blocks=1,
                   attn_resolutions=(8, ), resolution=16, z_channels=8)
TINY_TAMING_CONFIG = f"""
_base_ = [{TAMING_F16!r}]
conv = dict({TINY_TAMING!r}, num_groups=8)
model = dict(
    encoder=dict(_delete_=True, type='ConvEncoder', in_channels=3, **conv),
    quantizer=dict(codebook_size=64, embed_dim=4),
    decoder=dict(_delete_=True, type='ConvDecoder', out_ch=3, **conv),
    discriminator=dict(base_channels=8),
    adversarial_loss=dict(lecam_weight=0.01),
    ema=dict(decay=0.9))
"""

#: the released f16 layout (5 resolution levels, 2 ResnetBlocks each,
#: attention at the lowest resolution, as taming's 16 of 256) at tiny
#: widths: 64 px images -> 4 x 4 latents, ch 32 (GroupNorm's 32 groups),
#: z_channels 8, a 64 x 4 codebook behind quant_conv 8 -> 4
REF_TAMING = dict(ch=32, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2,
                  attn_resolutions=(4, ), resolution=64, z_channels=8)
REF_TAMING_CODES, REF_TAMING_DIM = 64, 4
REF_TAMING_CONFIG = f"""
_base_ = [{TAMING_F16!r}]
conv = {REF_TAMING!r}
model = dict(
    encoder=dict(**conv),
    quantizer=dict(codebook_size={REF_TAMING_CODES},
                   embed_dim={REF_TAMING_DIM}),
    decoder=dict(**conv),
    perceptual_loss=None,
    discriminator=dict(base_channels=8))
"""
#: the release's MaskGIT-VQGAN layout (5 levels, 2 ResnetBlocks) at tiny
#: widths: 64 px -> 4 x 4 latents, ch 32, z_channels 8, 64 codes
REF_MASKGIT = dict(ch=32, resolution=64, z_channels=8)
REF_MASKGIT_CODES = 64
REF_MASKGIT_CONFIG = f"""
_base_ = [{MASKGIT_BASE!r}]
conv = {REF_MASKGIT!r}
model = dict(
    encoder=dict(**conv),
    quantizer=dict(codebook_size={REF_MASKGIT_CODES},
                   embed_dim={REF_MASKGIT['z_channels']}),
    decoder=dict(**conv))
"""


def converter(name):
    return load_tool(f'tools/model_converters/{name}.py', f'converter_{name}')


taming_tool = converter('taming_vqgan')


# --- official layouts -------------------------------------------------------
def conv_shapes(prefix, cout, cin, k, bias=True):
    shapes = {f'{prefix}.weight': (cout, cin, k, k)}
    if bias:
        shapes[f'{prefix}.bias'] = (cout, )
    return shapes


def norm_shapes(prefix, c):
    return {f'{prefix}.weight': (c, ), f'{prefix}.bias': (c, )}


def resnet_shapes(prefix, cin, cout, bias=True, shortcut_in=None):
    shapes = {**norm_shapes(f'{prefix}.norm1', cin),
              **conv_shapes(f'{prefix}.conv1', cout, cin, 3, bias),
              **norm_shapes(f'{prefix}.norm2', cout),
              **conv_shapes(f'{prefix}.conv2', cout, cout, 3, bias)}
    if cin != cout:
        shapes.update(conv_shapes(f'{prefix}.nin_shortcut', cout,
                                  shortcut_in or cin, 1, bias))
    return shapes


def attn_shapes(prefix, c):
    shapes = norm_shapes(f'{prefix}.norm', c)
    for name in ('q', 'k', 'v', 'proj_out'):
        shapes.update(conv_shapes(f'{prefix}.{name}', c, c, 1))
    return shapes


def taming_shapes(ch, ch_mult, num_res_blocks, attn_resolutions, resolution,
                  z_channels, n_embed, embed_dim, disc_channels=64,
                  disc_layers=3):
    """Keys and shapes of a taming ``VQModel`` checkpoint with its
    ``VQLPIPSWithDiscriminator`` loss (NLayerDiscriminator with BatchNorm,
    LPIPS with VGG16)."""
    s = {}
    # Encoder
    s.update(conv_shapes('encoder.conv_in', ch, 3, 3))
    in_mult, res, block_in = (1, ) + tuple(ch_mult), resolution, ch
    for i, mult in enumerate(ch_mult):
        block_in, block_out = ch * in_mult[i], ch * mult
        for j in range(num_res_blocks):
            s.update(resnet_shapes(f'encoder.down.{i}.block.{j}', block_in,
                                   block_out))
            block_in = block_out
            if res in attn_resolutions:
                s.update(attn_shapes(f'encoder.down.{i}.attn.{j}', block_in))
        if i != len(ch_mult) - 1:
            s.update(conv_shapes(f'encoder.down.{i}.downsample.conv',
                                 block_in, block_in, 3))
            res //= 2
    for half in ('encoder', 'decoder'):
        c = ch * ch_mult[-1]
        s.update(resnet_shapes(f'{half}.mid.block_1', c, c))
        s.update(attn_shapes(f'{half}.mid.attn_1', c))
        s.update(resnet_shapes(f'{half}.mid.block_2', c, c))
    s.update(norm_shapes('encoder.norm_out', block_in))
    s.update(conv_shapes('encoder.conv_out', z_channels, block_in, 3))
    # Decoder
    block_in = ch * ch_mult[-1]
    res = resolution // 2**(len(ch_mult) - 1)
    s.update(conv_shapes('decoder.conv_in', block_in, z_channels, 3))
    for i in reversed(range(len(ch_mult))):
        block_out = ch * ch_mult[i]
        for j in range(num_res_blocks + 1):
            s.update(resnet_shapes(f'decoder.up.{i}.block.{j}', block_in,
                                   block_out))
            block_in = block_out
            if res in attn_resolutions:
                s.update(attn_shapes(f'decoder.up.{i}.attn.{j}', block_in))
        if i != 0:
            s.update(conv_shapes(f'decoder.up.{i}.upsample.conv', block_in,
                                 block_in, 3))
            res *= 2
    s.update(norm_shapes('decoder.norm_out', block_in))
    s.update(conv_shapes('decoder.conv_out', 3, block_in, 3))
    # VQModel
    s['quantize.embedding.weight'] = (n_embed, embed_dim)
    s.update(conv_shapes('quant_conv', embed_dim, z_channels, 1))
    s.update(conv_shapes('post_quant_conv', z_channels, embed_dim, 1))
    # NLayerDiscriminator(input_nc=3, ndf, n_layers, use_actnorm=False)
    d = 'loss.discriminator.main'
    s.update(conv_shapes(f'{d}.0', disc_channels, 3, 4))
    index, mult = 2, 1
    for n in range(1, disc_layers + 1):
        prev, mult = mult, min(2**n, 8)
        s.update(conv_shapes(f'{d}.{index}', disc_channels * mult,
                             disc_channels * prev, 4, bias=False))
        s.update(norm_shapes(f'{d}.{index + 1}', disc_channels * mult))
        s[f'{d}.{index + 1}.running_mean'] = (disc_channels * mult, )
        s[f'{d}.{index + 1}.running_var'] = (disc_channels * mult, )
        s[f'{d}.{index + 1}.num_batches_tracked'] = ()
        index += 3
    s.update(conv_shapes(f'{d}.{index}', 1, disc_channels * mult, 4))
    # LPIPS: scaling layer, VGG16 slices (torchvision indices), lin heads
    p = 'loss.perceptual_loss'
    s[f'{p}.scaling_layer.shift'] = s[f'{p}.scaling_layer.scale'] = (1, 3, 1,
                                                                       1)
    vgg = [(0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128),
           (10, 128, 256), (12, 256, 256), (14, 256, 256), (17, 256, 512),
           (19, 512, 512), (21, 512, 512), (24, 512, 512), (26, 512, 512),
           (28, 512, 512)]
    for index, cin, cout in vgg:
        slice_ = 1 + sum(index > end for end in (3, 8, 15, 22))
        s.update(conv_shapes(f'{p}.net.slice{slice_}.{index}', cout, cin, 3))
    for k, c in enumerate((64, 128, 256, 512, 512)):
        s[f'{p}.lin{k}.model.1.weight'] = (1, c, 1, 1)
    return s


def maskgit_shapes(ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2,
                   z_channels=256, n_embed=1024):
    """Keys and shapes of TiTok's ``PretrainedTokenizer`` (MaskGIT-VQGAN)
    state dict."""
    s = conv_shapes('encoder.conv_in', ch, 3, 3, bias=False)
    in_mult = (1, ) + tuple(ch_mult)
    for i, mult in enumerate(ch_mult):
        block_in, block_out = ch * in_mult[i], ch * mult
        for j in range(num_res_blocks):
            s.update(resnet_shapes(f'encoder.down.{i}.block.{j}', block_in,
                                   block_out, bias=False,
                                   shortcut_in=block_out))
            block_in = block_out
    c = ch * ch_mult[-1]
    for half in ('encoder', 'decoder'):
        for j in range(num_res_blocks):
            s.update(resnet_shapes(f'{half}.mid.{j}', c, c, bias=False))
    s.update(norm_shapes('encoder.norm_out', c))
    s.update(conv_shapes('encoder.conv_out', z_channels, c, 1))
    s.update(conv_shapes('decoder.conv_in', c, z_channels, 3))
    for i in range(len(ch_mult)):
        block_in = ch * ch_mult[min(i + 1, len(ch_mult) - 1)]
        block_out = ch * ch_mult[i]
        for j in range(num_res_blocks):
            s.update(resnet_shapes(f'decoder.up.{i}.block.{j}', block_in,
                                   block_out, bias=False,
                                   shortcut_in=block_out))
            block_in = block_out
        if i != 0:
            s.update(conv_shapes(f'decoder.up.{i}.upsample_conv', block_out,
                                 block_out, 3))
    s.update(norm_shapes('decoder.norm_out', ch * ch_mult[0]))
    s.update(conv_shapes('decoder.conv_out', 3, ch * ch_mult[0], 3))
    s['quantize.embedding.weight'] = (n_embed, z_channels)
    return s


def random_state(shapes, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {
        key: (torch.tensor(7) if key.endswith('num_batches_tracked') else
              torch.randn(shape, generator=generator))
        for key, shape in shapes.items()
    }


def build(path, device='cpu'):
    import vistok.models  # noqa: F401
    from vistok.registry import MODELS
    with DefaultScope.overwrite_default_scope('vistok'), \
            torch.device(device):
        return MODELS.build(Config.fromfile(path).model)


def assert_landed(official, model, report):
    """Every mapped official tensor equals the model tensor it went to."""
    state = model.state_dict()
    for key, targets in report.mapping.items():
        for target in targets:
            assert torch.equal(state[target], official[key]), (key, target)


def draw_weights(module, seed):
    """Random official-layout weights of ``module``, at unit gain so every
    level matters: weights N(0, 1/fan_in), GroupNorm scales 1 + N(0, 0.1²),
    biases N(0, 0.1²)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in module.state_dict().items():
        noise = torch.randn(value.shape, generator=generator)
        if value.dim() > 1:
            state[key] = noise / value[0].numel()**0.5
        elif 'norm' in key and key.endswith('.weight'):
            state[key] = 1 + 0.1 * noise
        else:
            state[key] = 0.1 * noise
    module.load_state_dict(state, strict=True)


@torch.no_grad()
def codebook_from_latents(embedding, bias, latents):
    """Centre ``latents`` ``(B, C, h, w)`` through the ``bias`` that made
    them and make their vectors the codebook rows: the look-up then spreads
    over the codebook and no two codes nearly tie."""
    mean = latents.mean((0, 2, 3))
    bias -= mean
    vectors = (latents - mean[:, None, None]).permute(0, 2, 3, 1)
    embedding.weight.copy_(vectors.reshape(embedding.weight.shape))


def relative_error(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


# --- every converter is checked against the official forward ---------------
#: converter script -> the test that runs random official-layout weights
#: through it and compares with a re-written official forward
#: (tests/reference/). A new converter must add its entry (issue 17).
FORWARD_EQUIVALENCE_TESTS = {
    'taming_vqgan': ('test_tools_converters.py',
                     'test_taming_conversion_computes_the_official_forward'),
    'maskgit_vqgan': ('test_tools_converters.py',
                      'test_maskgit_conversion_computes_the_official_forward'),
    'titok': ('test_tools_titok_converter.py',
              'test_stage2_release_matches_the_official_forward'),
    'imagefolder': ('test_tools_imagefolder_converter.py',
                    'test_converted_release_matches_the_official_forward'),
    'vitvqgan': ('test_tools_vitvqgan_converter.py',
                 'test_converted_checkpoint_matches_the_official_forward'),
    'var_vqvae': ('test_tools_var_vqvae_converter.py',
                  'test_converted_checkpoint_matches_the_official_forward'),
    'tokenunify_emmamba': (
        'test_tools_tokenunify_emmamba_converter.py',
        'test_converted_base_model_matches_the_official_forward'),
    'var': ('test_tools_var_converter.py',
            'test_teacher_forcing_logits_match_the_official_forward'),
    'titok_generator': ('test_tools_titok_generator_converter.py',
                        'test_converted_generators_match_the_official_forward'),
}
#: scripts that convert vistok's own checkpoints, not an official layout
NOT_OFFICIAL_LAYOUTS = {'export_safetensors'}


def test_every_converter_has_a_forward_equivalence_test():
    scripts = {osp.splitext(name)[0] for name in os.listdir(
        osp.join(REPO_ROOT, 'tools', 'model_converters'))
        if name.endswith('.py')} - NOT_OFFICIAL_LAYOUTS
    assert scripts == set(FORWARD_EQUIVALENCE_TESTS)
    for name, (test_file, test_name) in FORWARD_EQUIVALENCE_TESTS.items():
        with open(osp.join(REPO_ROOT, 'tests', test_file)) as f:
            source = f.read()
        assert f'def {test_name}(' in source, (name, test_file, test_name)
        assert 'from reference' in source, (name, test_file)


# --- framework --------------------------------------------------------------
@pytest.mark.parametrize('name', ['taming_vqgan', 'maskgit_vqgan', 'titok'])
def test_scripts_load_and_default_to_core_configs(name):
    tool = converter(name)
    defaults = getattr(tool, 'DEFAULT_CONFIGS', None)
    defaults = (list(defaults.values()) if defaults else
                [tool.DEFAULT_CONFIG])
    for path in defaults:
        assert osp.isfile(path), path
        assert osp.relpath(path, REPO_ROOT).startswith('configs' + osp.sep)
    with pytest.raises(SystemExit) as info:
        tool.main(['--help'])
    assert info.value.code == 0


def test_rules_transforms_copies_and_report():
    official = {'a.w': torch.randn(2, 3), 'b.w': torch.randn(4),
                'junk.x': torch.zeros(1)}
    target = {'x.w': (3, 2), 'y.w': (4, ), 'ema.y.w': (4, ), 'count': ()}
    rules = [(r'a\.(.+)', r'x.\1', lambda t: t.t()),
             Rule(r'b\.(.+)', (r'y.\1', r'ema.y.\1'))]
    converted, report = convert_state_dict(
        official, rules, target, allow_missing=['count'],
        ignore_unmapped=[r'junk\..+'])
    assert torch.equal(converted['x.w'], official['a.w'].t())
    assert torch.equal(converted['ema.y.w'], official['b.w'])
    assert converted['ema.y.w'].data_ptr() != converted['y.w'].data_ptr()
    assert report.mapping == {'a.w': ('x.w', ), 'b.w': ('y.w', 'ema.y.w')}
    assert report.ignored == ['junk.x']
    assert report.allowed_missing == ['count'] and report.ok
    assert with_copies(rules[:1], 'ema.')[0].apply('a.q') == ('x.q',
                                                               'ema.x.q')


def test_every_problem_is_reported():
    official = {'a': torch.zeros(2), 'b': torch.zeros(2), 'c': torch.zeros(3),
                'd': torch.zeros(1), 'e': torch.zeros(5)}
    target = {'t': (2, ), 'u': (2, ), 'v': (1, ), 'w': (1, )}
    rules = [(r'[ab]', 't'), ('c', 'u'), ('d', 'nowhere')]
    with pytest.raises(ConversionError) as info:
        convert_state_dict(official, rules, target, source='toy.ckpt')
    report = info.value.report
    assert report.unmapped == ['e']
    assert report.duplicates == {'t': ['a', 'b']}
    assert report.shape_mismatches == [('c', 'u', (3, ), (2, ))]
    assert report.unexpected == [('d', 'nowhere')]
    assert report.missing == ['v', 'w']
    message = str(info.value)
    for text in ('toy.ckpt', 'no rule maps', '    e', 't <- a, b',
                 'c (3,) -> u (2,)', 'd -> nowhere', 'nothing provides',
                 '    v', '    w'):
        assert text in message


# --- taming VQGAN -----------------------------------------------------------
def test_taming_f16_16384_converts_one_to_one():
    """The official f16-16384 layout (76,073,859 generator parameters)
    lands tensor by tensor in vistok's model of the f16 config."""
    shapes = taming_shapes(128, (1, 1, 2, 2, 4), 2, (16, ), 256, 256,
                           16384, 256)
    generator = sum(torch.Size(v).numel() for k, v in shapes.items()
                    if not k.startswith('loss.'))
    assert generator == 76_073_859
    official = random_state(shapes)
    model = build(TAMING_F16)
    converted, report = convert_for_model(
        official, model, taming_vqgan.rules_for(model),
        allow_missing=taming_vqgan.ALLOW_MISSING,
        ignore_unmapped=taming_vqgan.IGNORE_UNMAPPED)
    # bijection: every official tensor but LPIPS to one distinct key, and
    # every model key but the LeCam statistics from one official tensor
    lpips = {k for k in official if k.startswith('loss.perceptual_loss.')}
    assert sorted(report.ignored) == sorted(lpips)
    assert set(report.mapping) == set(official) - lpips
    assert all(len(t) == 1 for t in report.mapping.values())
    produced = [t for (t, ) in report.mapping.values()]
    assert len(set(produced)) == len(produced)
    assert set(produced) | set(report.allowed_missing) == set(
        model.state_dict())
    assert report.allowed_missing == ['adversarial_loss.lecam_ema_real',
                                      'adversarial_loss.lecam_ema_fake']
    assert_landed(official, model, report)
    for taming_key, module in [
            ('decoder.conv_out.weight', model.decoder.conv_out.weight),
            ('quantize.embedding.weight', model.quantizer.codebook),
            ('encoder.down.3.downsample.conv.weight',
             model.encoder.down[3].resample.conv.weight),
            ('decoder.up.4.upsample.conv.bias',
             model.decoder.up[4].resample.conv.bias),
            ('encoder.down.4.attn.1.proj_out.weight',
             model.encoder.down[4].attn[1].proj_out.weight),
            ('loss.discriminator.main.9.running_var',
             model.discriminator.main[9].running_var)]:
        assert torch.equal(module, official[taming_key])
    assert set(converted) == set(model.state_dict())


@pytest.fixture
def tiny_taming(tmp_path):
    config = tmp_path / 'tiny_taming.py'
    config.write_text(TINY_TAMING_CONFIG)
    shapes = taming_shapes(**TINY_TAMING, n_embed=64, embed_dim=4,
                           disc_channels=8)
    official = random_state(shapes, seed=1)
    checkpoint = tmp_path / 'last.ckpt'
    # a Lightning checkpoint: the state dict next to pickled objects
    torch.save({'state_dict': official, 'epoch': 3,
                'hyper_parameters': argparse.Namespace(lr=4.5e-6)},
               checkpoint)
    return str(config), str(checkpoint), official


def test_cli_needs_trust_then_writes_strict_loadable_files(tiny_taming,
                                                           tmp_path):
    config, checkpoint, official = tiny_taming
    out = str(tmp_path / 'vistok.safetensors')
    with pytest.raises(CheckpointLoadError, match='--trust-checkpoint'):
        taming_tool.main([checkpoint, out, '--config', config])
    report = taming_tool.main(
        [checkpoint, out, '--config', config, '--trust-checkpoint'])
    assert not pickle_trusted()  # trusted for that load only
    model = load_tokenizer(config, out)  # strict
    assert_landed(official, model, report)
    ema = model.ema.state_dict()  # the EMA copy starts from the weights
    for key in ('encoder.mid.attn_1.q.weight', 'quantizer.codebook',
                'post_quant_conv.bias'):
        assert torch.equal(ema[key], model.state_dict()[key])
    assert not any(k.startswith('discriminator') for k in ema)
    assert sorted(report.allowed_missing) == [
        'adversarial_loss.lecam_ema_fake', 'adversarial_loss.lecam_ema_real',
        'ema.num_updates']
    saved = load_file(out)
    assert saved['adversarial_loss.lecam_ema_real'].item() == 0
    assert torch.equal(saved['discriminator.main.3.running_mean'],
                       official['loss.discriminator.main.3.running_mean'])
    # a .pth output loads as well
    pth = str(tmp_path / 'vistok.pth')
    taming_tool.main([checkpoint, pth, '--config', config,
                      '--trust-checkpoint'])
    assert torch.equal(load_tokenizer(config, pth).decoder.conv_out.weight,
                       official['decoder.conv_out.weight'])


def test_incomplete_checkpoint_is_refused_with_the_missing_keys(
        tiny_taming, tmp_path):
    config, _, official = tiny_taming
    model = load_tokenizer(config)
    incomplete = dict(official)
    del incomplete['decoder.conv_out.weight']
    del incomplete['encoder.mid.attn_1.q.bias']
    with pytest.raises(ConversionError) as info:
        convert_for_model(incomplete, model, taming_vqgan.rules_for(model),
                          allow_missing=taming_vqgan.ALLOW_MISSING,
                          ignore_unmapped=taming_vqgan.IGNORE_UNMAPPED,
                          source='incomplete.ckpt')
    # the generator key and its EMA copy, nothing else
    assert info.value.report.missing == [
        'encoder.mid.attn_1.q.bias', 'decoder.conv_out.weight',
        'ema.encoder.mid.attn_1.q.bias', 'ema.decoder.conv_out.weight']
    assert 'incomplete.ckpt' in str(info.value)
    assert 'decoder.conv_out.weight' in str(info.value)
    # without the LPIPS ignore pattern its keys are reported unmapped
    with pytest.raises(ConversionError, match='no rule maps') as info:
        convert_for_model(official, model, taming_vqgan.rules_for(model),
                          allow_missing=taming_vqgan.ALLOW_MISSING)
    assert all(k.startswith('loss.perceptual_loss.')
               for k in info.value.report.unmapped)
    # a checkpoint of another codebook size: shape mismatch named
    other = dict(official, **{'quantize.embedding.weight': torch.zeros(9, 4)})
    with pytest.raises(ConversionError, match=r'quantize.embedding.weight '
                       r'\(9, 4\) -> quantizer.codebook \(64, 4\)'):
        convert_for_model(other, model, taming_vqgan.rules_for(model),
                          allow_missing=taming_vqgan.ALLOW_MISSING,
                          ignore_unmapped=taming_vqgan.IGNORE_UNMAPPED)


def test_taming_conversion_computes_the_official_forward(tmp_path):
    """A Lightning checkpoint of the official ``VQModel`` (reference
    generator with random weights + discriminator and LPIPS-head keys),
    converted by the script and loaded strictly, computes the official
    latents, indices, quantized latents (and their straight-through
    gradient), VQ loss and reconstructions, with taming's asymmetric
    Downsample padding and its attention (encoder and decoder level 4 at
    4 x 4, and both middle blocks) running."""
    ddconfig = dict(REF_TAMING, in_channels=3, out_ch=3, double_z=False,
                    dropout=0.0)
    ref = taming_official.VQModel(ddconfig, REF_TAMING_CODES,
                                  REF_TAMING_DIM).eval()
    draw_weights(ref, seed=3)
    generator = torch.Generator().manual_seed(4)
    images = torch.rand(5, 3, 64, 64, generator=generator) * 2 - 1
    with torch.no_grad():  # 4 calibration images -> the 64 codes
        codebook_from_latents(ref.quantize.embedding, ref.quant_conv.bias,
                              ref.quant_conv(ref.encoder(images[:4])))
    assert len(ref.encoder.down[4].attn) == 2
    assert len(ref.decoder.up[4].attn) == 3
    # the checkpoint: the reference's keys are taming's layout
    shapes = taming_shapes(**REF_TAMING, n_embed=REF_TAMING_CODES,
                           embed_dim=REF_TAMING_DIM, disc_channels=8)
    generator_state = ref.state_dict()
    assert {k: tuple(v.shape) for k, v in generator_state.items()} == {
        k: v for k, v in shapes.items() if not k.startswith('loss.')}
    loss_keys = [k for k in shapes if k.startswith('loss.discriminator.') or
                 k.startswith('loss.perceptual_loss.lin')]
    official = dict(generator_state, **random_state(
        {k: shapes[k] for k in loss_keys}, seed=5))
    checkpoint = str(tmp_path / 'last.ckpt')
    torch.save({'state_dict': official, 'epoch': 3, 'global_step': 7},
               checkpoint)
    config = str(tmp_path / 'ref_taming.py')
    with open(config, 'w') as f:
        f.write(REF_TAMING_CONFIG)
    out = str(tmp_path / 'vistok.safetensors')
    report = taming_tool.main([checkpoint, out, '--config', config])
    assert sorted(report.ignored) == sorted(
        k for k in loss_keys if k.startswith('loss.perceptual_loss.'))
    model = load_tokenizer(config, out)  # strict

    x = torch.cat([images[4:], images[:1].flip(-1)])
    with torch.no_grad():
        latent = ref.quant_conv(ref.encoder(x))  # VQModel.encode
        quant, loss, (_, _, ids) = ref.quantize(latent)
        reconstruction = ref.decode(quant)
        out_ = model.reconstruct(x)
        tokens = model.encode(x)
        assert relative_error(out_.latent, latent) < 1e-5
        assert tokens.shape == (2, 4, 4)
        assert torch.equal(tokens.flatten(), ids)
        assert ids.unique().numel() >= 12
        assert relative_error(out_.quantizer.quantized, quant) < 1e-5
        # β = 0.25 on one term: the value of taming's "legacy" loss
        assert sum(out_.quantizer.loss.values()).item() == pytest.approx(
            loss.item(), rel=1e-5)
        assert relative_error(out_.reconstruction, reconstruction) < 1e-5
        assert relative_error(model.decode(tokens), ref.decode_code(
            ids, (2, 4, 4, REF_TAMING_DIM))) < 1e-5
    # the straight-through estimator: the gradient passes unchanged
    weights = torch.randn(quant.shape, generator=generator)
    grads = []
    for quantizer in (lambda z: ref.quantize(z)[0],
                      lambda z: model.quantizer(z).quantized):
        z = latent.clone().requires_grad_()
        (quantizer(z) * weights).sum().backward()
        grads.append(z.grad)
    assert torch.equal(grads[0], weights) and torch.equal(grads[1], weights)


# --- MaskGIT-VQGAN ----------------------------------------------------------
def test_maskgit_release_converts_one_to_one():
    shapes = maskgit_shapes()
    assert sum(torch.Size(v).numel() for v in shapes.values()) == 54_515_587
    official = random_state(shapes, seed=2)
    model = build(MASKGIT_BASE)
    _, report = convert_for_model(official, model,
                                  maskgit_vqgan.rules_for(model),
                                  allow_missing=maskgit_vqgan.ALLOW_MISSING)
    assert set(report.mapping) == set(official)
    assert not report.allowed_missing and not report.ignored
    assert_landed(official, model, report)
    assert torch.equal(model.decoder.up[2].resample.conv.weight,
                       official['decoder.up.2.upsample_conv.weight'])
    assert torch.equal(model.decoder.mid.block_1.conv2.weight,
                       official['decoder.mid.0.conv2.weight'])

    # the training config: EMA copies, discriminator kept at initialisation
    full = build(MASKGIT_CONFIG, device='meta')
    _, report = convert_state_dict(official, maskgit_vqgan.rules_for(full),
                                   full,
                                   allow_missing=maskgit_vqgan.ALLOW_MISSING)
    assert report.mapping['quantize.embedding.weight'] == (
        'quantizer.codebook', 'ema.quantizer.codebook')
    assert {k.split('.')[0] for k in report.allowed_missing} == {
        'discriminator', 'adversarial_loss', 'ema'}
    assert 'ema.num_updates' in report.allowed_missing


def test_maskgit_conversion_computes_the_official_forward(tmp_path):
    """The release's layout (a plain state dict of TiTok's
    ``PretrainedTokenizer``, reference with random weights), converted by
    the script and loaded strictly, computes the official latents, indices,
    quantized latents, VQ loss and images: vistok's [-1, 1] images map onto
    the release's [0, 1] and back."""
    ref_config = maskgit_vqgan_official.make_config(
        hidden_channels=REF_MASKGIT['ch'],
        resolution=REF_MASKGIT['resolution'],
        z_channels=REF_MASKGIT['z_channels'])
    ref = maskgit_vqgan_official.PretrainedTokenizer(
        ref_config, num_embeddings=REF_MASKGIT_CODES).eval()
    draw_weights(ref, seed=6)
    generator = torch.Generator().manual_seed(7)
    pixels = torch.rand(5, 3, 64, 64, generator=generator)
    with torch.no_grad():  # 4 calibration images -> the 64 codes
        codebook_from_latents(ref.quantize.embedding,
                              ref.encoder.conv_out.bias,
                              ref.encoder(pixels[:4]))
    official = ref.state_dict()
    assert {k: tuple(v.shape) for k, v in official.items()} == \
        maskgit_shapes(ch=32, z_channels=8, n_embed=REF_MASKGIT_CODES)
    checkpoint = str(tmp_path / 'maskgit-vqgan-tiny.bin')
    torch.save(dict(official), checkpoint)
    config = str(tmp_path / 'ref_maskgit.py')
    with open(config, 'w') as f:
        f.write(REF_MASKGIT_CONFIG)
    out = str(tmp_path / 'vistok.safetensors')
    report = converter('maskgit_vqgan').main([checkpoint, out, '--config',
                                              config])
    assert set(report.mapping) == set(official)
    model = load_tokenizer(config, out)  # strict

    x = torch.cat([pixels[4:], pixels[:1].flip(-1)])
    with torch.no_grad():
        latent = ref.encoder(x)
        quant, ids, loss = ref.quantize(latent, return_loss=True)
        reconstruction = ref.decoder(quant)
        official_images = ref.decode(ids)
        out_ = model.reconstruct(2 * x - 1)
        tokens = model.encode(2 * x - 1)
        assert relative_error(out_.latent, latent) < 1e-5
        assert tokens.shape == (2, 4, 4)
        assert torch.equal(tokens.flatten(1), ids)
        assert ids.unique().numel() >= 12
        assert relative_error(out_.quantizer.quantized, quant) < 1e-5
        assert sum(out_.quantizer.loss.values()).item() == pytest.approx(
            loss.item(), rel=1e-5)
        assert relative_error((out_.reconstruction + 1) / 2,
                              reconstruction) < 1e-5
        # the release's decode clamps to [0, 1]; vistok's does not (errors
        # relative to the unclamped images)
        decoded = (model.decode(tokens) + 1) / 2
        assert relative_error(decoded, reconstruction) < 1e-5
        assert (decoded < 0).any() and (decoded > 1).any()
        assert (decoded.clamp(0, 1) - official_images).abs().max() < (
            1e-5 * reconstruction.abs().max())
