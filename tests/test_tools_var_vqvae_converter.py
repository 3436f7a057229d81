"""tools/model_converters/var_vqvae.py (rules:
vistok.apis.converters.var_vqvae): an official-layout VAR ``VQVAE`` state
dict (``vae_ch160v4096z32.pth``'s layout) -> vistok's AutoencoderTokenizer
with the conv encoder / decoder and ``MultiScaleResidualQuantizer``,
checked against the independent reference of the official modules in
``tests/reference/var_vqvae_official.py`` (its module names are the official
key names, so its state dict with random weights is an official-layout
checkpoint).

Tiny widths (ch 32, 8 latent channels, 64 codes) at the released depth:
ch_mult (1, 1, 2, 2, 4), attention after every block of the lowest level
and in the middle, 3x3 quant convs, 4 partially shared Phi convs. The
whole tokenizer runs on 128 px images (every resolution level, 128 -> 8)
with 10 scales ending at 8 (VAR's halved, rounded up: 10 scales keep VAR's
scale-to-Phi assignment, including its two exact ties, scales 3 and 8 half-
way between two ticks); the converted quantizer also runs with VAR's own
scales 1..16 on 16 x 16 latents, inside a VARGenerator that loads it from
the converted file."""
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope
from reference.var_vqvae_official import (
    VAR_PATCH_NUMS,
    VQVAE,
    VectorQuantizer2,
)

import vistok.models  # noqa: F401
from _helpers import REPO_ROOT, load_tool, torch_threads
from vistok.apis.converters import var_vqvae
from vistok.apis.tokenize import load_tokenizer
from vistok.models.generators.var import VARGenerator
from vistok.registry import MODELS
from vistok.utils.convert import (
    ConversionError,
    convert_state_dict,
    with_copies,
)
from vistok.utils.weights import load_state_dict_file

PAPER = osp.join(REPO_ROOT, 'configs/var',
                 'var-vqvae_msrq-4k_conv-f16_8xb12-400k_in1k-256.py')
CH, Z, CODES, SIZE = 32, 8, 64, 128
#: VAR's scales halved and rounded up: 10 scales, the grid of a 128 px image
SCALES = (1, 1, 2, 2, 3, 3, 4, 5, 7, 8)
TINY_CONFIG = f"""
_base_ = [{PAPER!r}]
model = dict(
    encoder=dict(ch={CH}, z_channels={Z}),
    quantizer=dict(scales={SCALES},
                   quantizer=dict(codebook_size={CODES}, embed_dim={Z})),
    decoder=dict(ch={CH}, z_channels={Z}),
    perceptual_loss=None, discriminator=None, adversarial_loss=None)
"""
#: the AttnBlocks of VAR's VQVAE: the lowest level's 2 (encoder) and 3
#: (decoder) blocks and the middle one of each half
ATTN_BLOCKS = (['encoder.down.4.attn.0', 'encoder.down.4.attn.1',
                'encoder.mid.attn_1', 'decoder.mid.attn_1'] +
               [f'decoder.up.4.attn.{j}' for j in range(3)])
#: channels of the attention blocks (the lowest level: ch * 4)
ATTN_CH = CH * 4

tool = load_tool('tools/model_converters/var_vqvae.py', 'converter_var_vqvae')


def reference(seed=0):
    """The reference VQVAE with random weights (unit-gain convs, norm
    scales near 1, small biases, unit-variance codes, a decoder output
    mostly inside [-1, 1]) and its state dict."""
    ref = VQVAE(vocab_size=CODES, z_channels=Z, ch=CH, test_mode=True,
                share_quant_resi=4, v_patch_nums=SCALES)
    generator = torch.Generator().manual_seed(seed)

    def draw(key, value):
        if key == 'quantize.ema_vocab_hit_SV':
            return torch.rand(value.shape, generator=generator)
        noise = torch.randn(value.shape, generator=generator)
        if key == 'quantize.embedding.weight':
            return noise
        if value.dim() == 1:
            return 1 + 0.1 * noise if 'norm' in key and key.endswith(
                'weight') else 0.02 * noise
        gain = 0.3 if key == 'decoder.conv_out.weight' else 1.0
        return gain * noise / value[0].numel()**0.5

    official = {k: draw(k, v) for k, v in ref.state_dict().items()}
    ref.load_state_dict(official, strict=True)
    return ref, official


@pytest.fixture(scope='module', autouse=True)
def one_thread():
    """One intra-op thread: on a loaded 2-core machine two threads make the
    convolutions several times slower."""
    with torch_threads(1):
        yield


@pytest.fixture(scope='module')
def config(tmp_path_factory):
    path = tmp_path_factory.mktemp('var_vqvae') / 'tiny.py'
    path.write_text(TINY_CONFIG)
    return str(path)


def run_tool(official, config, tmp_path, *extra, name='out.pth'):
    """Run the tool in-process on ``official`` (saved with ``torch.save``,
    as VAR's release is); returns (report, out)."""
    path = str(tmp_path / 'official.pth')
    torch.save(official, path)
    out = str(tmp_path / name)
    return tool.main([path, out, '--config', config, *extra]), out


@pytest.fixture(scope='module')
def converted(config, tmp_path_factory):
    """(reference, official state dict, converted vistok model, report,
    converted file)."""
    ref, official = reference()
    report, out = run_tool(official, config,
                           tmp_path_factory.mktemp('converted'))
    return ref, official, load_tokenizer(config, out).eval(), report, out


def relative_error(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@torch.no_grad()
def test_converted_checkpoint_matches_the_official_forward(converted):
    ref, official, model, report, out = converted
    images = torch.rand(1, 3, SIZE, SIZE,
                        generator=torch.Generator().manual_seed(1)) * 2 - 1
    # official: img_to_idxBl, the f̂ of every scale (f_to_idxBl_or_fhat),
    # idxBl_to_img and img_to_reconstructed_img
    ref_ids = ref.img_to_idxBl(images)
    f = ref.quant_conv(ref.encoder(images))
    ref_fhats = ref.quantize.f_to_idxBl_or_fhat(f, to_fhat=True)
    ref_decoded = ref.idxBl_to_img(ref_ids, same_shape=True, last_one=True)
    ref_reconstruction = ref.img_to_reconstructed_img(images, last_one=True)

    out_ = model.reconstruct(images)
    assert relative_error(out_.latent, f) < 1e-5
    # every scale's indices equal, not degenerate at the finest scale
    maps = out_.quantizer.indices
    assert [m.shape[1:] for m in maps] == [(s, s) for s in SCALES]
    for idx, ref_idx in zip(maps, ref_ids):
        assert torch.equal(idx.flatten(1), ref_idx)
    assert maps[-1].unique().numel() > CODES // 4
    # f̂ after every scale (VAR Alg. 2 from the first m maps), and the
    # straight-through output of the full pass
    for m, ref_fhat in enumerate(ref_fhats, start=1):
        assert relative_error(model.quantizer.decode(maps[:m]),
                              ref_fhat) < 1e-5
    assert relative_error(out_.quantizer.quantized, ref_fhats[-1]) < 1e-5
    # the training loss is VAR's mean_vq_loss (β = 0.25, mean over scales)
    _, ref_loss = ref.quantize(f)
    assert sum(out_.quantizer.loss.values()).item() == pytest.approx(
        ref_loss.item(), rel=1e-5)
    # images: VAR clamps to [-1, 1] (vistok clamps in to_pixels); the
    # weights keep most pixels inside, so the clamp hides little
    assert (ref_decoded.abs() < 1).float().mean() > 0.9
    assert relative_error(model.decode(maps).clamp(-1, 1), ref_decoded) < 1e-5
    assert relative_error(out_.reconstruction.clamp(-1, 1),
                          ref_reconstruction) < 1e-5
    # bookkeeping: every official tensor mapped, the usage buffer dropped
    assert report.ignored == ['quantize.ema_vocab_hit_SV']
    assert set(report.mapping) == set(official) - set(report.ignored)
    assert not report.allowed_missing
    state = load_state_dict_file(out, 'out', '')
    for block in ATTN_BLOCKS:
        for name in ('weight', 'bias'):
            qkv = official[f'{block}.qkv.{name}']
            for i, part in enumerate('qkv'):
                assert torch.equal(state[f'{block}.{part}.{name}'],
                                   qkv[i * ATTN_CH:(i + 1) * ATTN_CH])
    assert torch.equal(state['quantizer.quantizer.codebook'],
                       official['quantize.embedding.weight'])


@torch.no_grad()
def test_var_generator_loads_the_converted_quantizer(converted, config):
    """The converted file is a ``quantizer_weights`` file of VARGenerator:
    its frozen quantizer, built with VAR's own scales 1..16 (the scales are
    not in the weights), gets the official codebook and Φ convs and gives
    VAR's indices, f̂ and teacher-forcing inputs on 16 x 16 latents."""
    _, official, _, _, out = converted
    ref = VectorQuantizer2(CODES, Z, using_znorm=False,
                           v_patch_nums=VAR_PATCH_NUMS)
    state = {
        key[len('quantize.'):]: value
        for key, value in official.items() if key.startswith('quantize.')
    }
    # one row per scale: VAR's VQVAE.load_state_dict replaces it likewise
    state['ema_vocab_hit_SV'] = ref.ema_vocab_hit_SV
    ref.load_state_dict(state, strict=True)
    quantizer_cfg = Config.fromfile(config).model.quantizer
    quantizer_cfg.scales = VAR_PATCH_NUMS
    generator = VARGenerator(quantizer=quantizer_cfg, quantizer_weights=out,
                             patch_nums=VAR_PATCH_NUMS, num_classes=2,
                             depth=1, embed_dim=16, num_heads=1)
    generator.init_weights()
    quantizer = generator.quantizer
    assert torch.equal(quantizer.quantizer.codebook,
                       official['quantize.embedding.weight'])
    for k in range(4):
        for name in ('weight', 'bias'):
            assert torch.equal(
                getattr(quantizer.phi_convs[k], name),
                official[f'quantize.quant_resi.qresi_ls.{k}.{name}'])
    latent = torch.randn(2, Z, 16, 16,
                         generator=torch.Generator().manual_seed(3))
    ref_ids = ref.f_to_idxBl_or_fhat(latent, to_fhat=False)
    maps = quantizer.encode(latent)
    for idx, ref_idx in zip(maps, ref_ids):
        assert torch.equal(idx.flatten(1), ref_idx)
    assert maps[-1].unique().numel() > CODES // 2
    ref_fhats = ref.f_to_idxBl_or_fhat(latent, to_fhat=True)
    for m in (1, 3, 10):
        assert relative_error(quantizer.decode(maps[:m]),
                              ref_fhats[m - 1]) < 1e-5
    assert relative_error(quantizer.next_scale_inputs(maps),
                          ref.idxBl_to_var_input(ref_ids)) < 1e-5


def build_on_meta(config, **options):
    """The model of ``config`` (with ``options`` merged in) on the meta
    device: the keys and shapes, no weights."""
    cfg = Config.fromfile(config)
    cfg.merge_from_dict(options)
    with torch.device('meta'), DefaultScope.overwrite_default_scope(
            'vistok'):
        return MODELS.build(cfg.model)


def refused(official, model):
    """The report of the refused conversion of ``official`` into
    ``model``."""
    with pytest.raises(ConversionError) as info:
        convert_state_dict(official, var_vqvae.rules_for(model), model,
                           allow_missing=var_vqvae.ALLOW_MISSING,
                           ignore_unmapped=var_vqvae.IGNORE_UNMAPPED)
    return info.value.report


def test_incomplete_foreign_or_misconfigured_conversions_are_refused(
        converted, config, tmp_path):
    _, official, _, _, _ = converted
    # the tool: a missing tensor stops it with the report, nothing written
    missing = dict(official)
    del missing['quantize.quant_resi.qresi_ls.3.bias']
    with pytest.raises(ConversionError, match='nothing provides') as info:
        run_tool(missing, config, tmp_path, name='bad.pth')
    assert info.value.report.missing == ['quantizer.phi_convs.3.bias']
    assert not (tmp_path / 'bad.pth').exists()
    model = build_on_meta(config)
    # a tensor VAR's VQVAE does not have
    extra = dict(official, **{'quantize.extra_buffer': torch.zeros(3)})
    assert refused(extra, model).unmapped == ['quantize.extra_buffer']
    # 1x1 quant convs (quant_conv_ks=1) are not the config's 3x3
    one_by_one = dict(official)
    for key in ('quant_conv.weight', 'post_quant_conv.weight'):
        one_by_one[key] = official[key][:, :, 1:2, 1:2].clone()
    mismatches = refused(one_by_one, model).shape_mismatches
    assert sorted(mismatches) == [
        (key, key, (Z, Z, 1, 1), (Z, Z, 3, 3))
        for key in ('post_quant_conv.weight', 'quant_conv.weight')]
    # MaskGIT-style attention-free config: the qkv convs have no target
    report = refused(official, build_on_meta(
        config, **{'model.encoder.attn_resolutions': (),
                   'model.encoder.mid_attention': False}))
    assert {key.rsplit('.', 2)[0] for key, _ in report.unexpected} == {
        block for block in ATTN_BLOCKS if block.startswith('encoder')}
    # the tokenizer's quant conv kernel must be odd (it keeps the grid)
    with pytest.raises(ValueError, match='quant_conv_kernel_size'):
        build_on_meta(config, **{'model.quant_conv_kernel_size': 2})
    # a config whose look-up or Φ blending would give the weights another
    # meaning (the state dict cannot tell): the tool's check lists both
    wrong = build_on_meta(
        config, **{'model.quantizer.quantizer.use_l2_norm': True,
                   'model.quantizer.phi_ratio': 0.25})
    with pytest.raises(var_vqvae.LayoutError) as info:
        var_vqvae.check_layout(official, wrong)
    assert 'model.quantizer.quantizer.use_l2_norm=False' in str(info.value)
    assert 'model.quantizer.phi_ratio=0.5' in str(info.value)


def test_split_rule_with_copies():
    """A split rule written also to the EMA copy (``with_copies``): each
    copy gets its own piece, in order; pieces that do not divide the
    targets are refused."""
    fused = torch.arange(12.).reshape(6, 2)
    rules = with_copies([(r'a\.qkv\.weight', ('a.q', 'a.k', 'a.v'),
                          var_vqvae.split_qkv)], 'ema.')
    keys = ['a.q', 'a.k', 'a.v', 'ema.a.q', 'ema.a.k', 'ema.a.v']
    converted, report = convert_state_dict({'a.qkv.weight': fused}, rules,
                                           {key: (2, 2) for key in keys})
    assert report.mapping == {'a.qkv.weight': tuple(keys)}
    for i, key in enumerate(keys):
        assert torch.equal(converted[key], fused[2 * (i % 3):2 * (i % 3) + 2])
    assert converted['a.k'].data_ptr() != converted['ema.a.k'].data_ptr()
    with pytest.raises(ValueError, match='does not divide'):
        convert_state_dict({'a.qkv.weight': fused},
                           [(r'a\.qkv\.weight', ('a.q', 'a.k'),
                             var_vqvae.split_qkv)],
                           {'a.q': (2, 2), 'a.k': (2, 2)})


def test_release_layout_maps_onto_the_paper_config():
    """The full-size layout (meta tensors) of ``VQVAE(vocab_size=4096,
    z_channels=32, ch=160, share_quant_resi=4)`` (``build_vae_var``)
    converts one to one into the paper config, whose tokenizer has the
    official parameter count; with an EMA copy every tensor goes to both."""
    with torch.device('meta'):
        ref = VQVAE(vocab_size=4096, z_channels=32, ch=160, test_mode=True,
                    share_quant_resi=4, v_patch_nums=VAR_PATCH_NUMS)
    official = dict(ref.state_dict())
    model = build_on_meta(PAPER)
    assert var_vqvae.layout_problems(model) == []
    converted, report = convert_state_dict(
        official, var_vqvae.rules_for(model), model,
        allow_missing=var_vqvae.ALLOW_MISSING,
        ignore_unmapped=var_vqvae.IGNORE_UNMAPPED)
    assert report.ignored == ['quantize.ema_vocab_hit_SV']
    assert set(report.mapping) == set(official) - set(report.ignored)
    # the release has no discriminator (nor the LeCam statistics)
    assert {k.split('.')[0] for k in report.allowed_missing} == {
        'discriminator', 'adversarial_loss'}
    assert converted['encoder.mid.attn_1.v.weight'].shape == (640, 640, 1, 1)
    assert converted['quant_conv.weight'].shape == (32, 32, 3, 3)
    assert converted['quantizer.quantizer.codebook'].shape == (4096, 32)
    trained = sum(p.numel() for p in ref.parameters())
    assert trained == 108_948_355
    assert sum(p.numel() for part in model.generator_parts().values()
               for p in part.parameters()) == trained
    with_ema = build_on_meta(PAPER, **{'model.ema': dict(decay=0.999)})
    _, report = convert_state_dict(
        official, var_vqvae.rules_for(with_ema), with_ema,
        allow_missing=var_vqvae.ALLOW_MISSING,
        ignore_unmapped=var_vqvae.IGNORE_UNMAPPED)
    ema_keys = {k for k in with_ema.state_dict() if k.startswith('ema.')}
    produced = {t for targets in report.mapping.values() for t in targets}
    assert ema_keys - produced == {'ema.num_updates'}
