"""tools/model_converters/titok.py (rules: vistok.apis.converters.titok):
official TiTok checkpoints -> vistok's TiTokTokenizer, checked against the
independent reference of the official modules in
``tests/reference/titok_official.py`` (TiTok's encoder, decoder and l2 VQ)
whose stage-2 pixel decoder is the reference MaskGIT-VQGAN of
``tests/reference/maskgit_vqgan_official.py``: no vistok module on the
reference side. The reference's module names are the official key names,
so its random state dict is an official-layout checkpoint. Tiny sizes: 64 px,
patch 16 (a 4 x 4 grid), width 32, depth 2, 2 heads, 8 latent tokens of
dimension 6, 32 codes, 16 proxy codes; a MaskGIT-VQGAN pixel decoder with the
release's 5 levels (4 x 4 -> 64 x 64) at ch 32 (GroupNorm's 32 groups)."""
import os.path as osp
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope
from reference.maskgit_vqgan_official import make_config
from reference.titok_official import MODEL_SIZES
from reference.titok_official import TiTok as RefTiTok
from safetensors.torch import load_file, save_file

from _helpers import REPO_ROOT, load_tool, subprocess_env
from vistok.apis.converters import titok
from vistok.apis.tokenize import load_tokenizer
from vistok.utils.convert import convert_state_dict

TOOL = osp.join(REPO_ROOT, 'tools/model_converters/titok.py')
IMAGE, PATCH, WIDTH, DEPTH, HEADS, TOKENS = 64, 16, 32, 2, 2, 8
TOKEN_SIZE, CODEBOOK, PROXY_CODES, PIXEL_DIM = 6, 32, 16, 8
#: a tiny MaskGIT-VQGAN (the release's 5 levels: 4x4 -> 64x64; vistok's
#: middle block has two ResnetBlocks, MaskGIT's num_res_blocks)
CONV = dict(ch=32, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2,
            attn_resolutions=(), resolution=IMAGE, z_channels=PIXEL_DIM,
            dropout=0.0, num_groups=32, mid_attention=False,
            resnet_bias=False, resnet_shortcut='output',
            pixel_range=(0.0, 1.0))
#: the same decoder in the official config's terms
PIXEL_CONFIG = make_config(hidden_channels=CONV['ch'],
                           channel_mult=CONV['ch_mult'],
                           num_res_blocks=CONV['num_res_blocks'],
                           resolution=IMAGE, z_channels=PIXEL_DIM)
VIT = dict(size=None, width=WIDTH, depth=DEPTH, num_heads=HEADS,
           num_latent_tokens=TOKENS, img_size=IMAGE, patch_size=PATCH)
#: the same transformers in the reference's terms
REF_VIT = dict(image_size=IMAGE, patch_size=PATCH, width=WIDTH,
               num_layers=DEPTH, num_heads=HEADS, num_latent_tokens=TOKENS,
               token_size=TOKEN_SIZE, codebook_size=CODEBOOK)
TINY_CONFIG = f"""
default_scope = 'vistok'
conv = {CONV!r}
vit = {VIT!r}
pixel_tokenizer = dict(
    type='AutoencoderTokenizer',
    encoder=dict(type='ConvEncoder', in_channels=3, conv_in_bias=False,
                 downsample='avgpool', conv_out_kernel_size=1, **conv),
    quantizer=dict(type='VectorQuantizer', codebook_size={PROXY_CODES},
                   embed_dim={PIXEL_DIM}),
    decoder=dict(type='ConvDecoder', out_ch=3, num_up_blocks=2, **conv),
    use_quant_conv=False, use_post_quant_conv=False)
model = dict(
    type='TiTokTokenizer',
    encoder=dict(type='LatentTokenEncoder', out_channels={TOKEN_SIZE},
                 **vit),
    quantizer=dict(type='VectorQuantizer', codebook_size={CODEBOOK},
                   embed_dim={TOKEN_SIZE}, use_l2_norm=True),
    decoder=dict(type='LatentTokenDecoder', in_channels={TOKEN_SIZE}, **vit),
    head='proxy',
    num_proxy_codes={PROXY_CODES},
    pixel_decoder=pixel_tokenizer,
    is_legacy=True,
    pixel_range=(0.0, 1.0),
    frozen_parts=('encoder', 'quantizer'),
    ema=dict(decay=0.9))
"""


titok_tool = load_tool('tools/model_converters/titok.py', 'converter_titok')


# --- the reference with random official-layout weights ---------------------
def randomize(state, seed, scale=0.3):
    generator = torch.Generator().manual_seed(seed)
    return {k: scale * torch.randn(v.shape, generator=generator)
            for k, v in state.items()}


def official_checkpoint(legacy=True, stage2=True, seed=0):
    """A random official-layout state dict and the reference TiTok holding
    it (with ``stage2``: TiTok's ``pixel_quantize`` / ``pixel_decoder``, the
    reference MaskGIT-VQGAN)."""
    torch.manual_seed(seed)
    ref = RefTiTok(**REF_VIT, is_legacy=legacy, finetune_decoder=stage2,
                   num_proxy_codes=PROXY_CODES,
                   pixel_config=PIXEL_CONFIG).eval()
    official = randomize(ref.state_dict(), seed)
    ref.load_state_dict(official, strict=True)
    return official, ref


def reference_encode(ref, images):
    """The official encoder output ``(B, C, 1, K)``, the ids ``(B, K)`` of
    its l2 VQ and their unit-norm codes ``(B, C, 1, K)``."""
    z = ref.encoder(pixel_values=images, latent_tokens=ref.latent_tokens)
    codes, result = ref.quantize(z)
    return z, result['min_encoding_indices'].flatten(1), codes


def reference_codes(ref, ids):
    """``TiTok.decode_tokens``'s codes ``(B, C, 1, K)`` of ids ``(B, K)``."""
    batch, tokens = ids.shape
    codes = ref.quantize.get_codebook_entry(ids.reshape(-1))
    return codes.reshape(batch, 1, tokens, -1).permute(0, 3, 1, 2)


def relative_error(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.fixture(scope='module')
def tiny_config(tmp_path_factory):
    path = tmp_path_factory.mktemp('titok') / 'tiny_titok_stage2.py'
    path.write_text(TINY_CONFIG)
    return str(path)


def images01(seed=0):
    return torch.rand(2, 3, IMAGE, IMAGE,
                      generator=torch.Generator().manual_seed(seed))


def convert(official, config, *extra, tmp_path, name='out.safetensors',
            cfg_options=None):
    """Run the tool in-process on ``official`` saved as safetensors; return
    the converted model (loaded strictly), the report and the output."""
    out = str(tmp_path / name)
    path = str(tmp_path / 'official.safetensors')
    save_file(official, path)
    options = [f'{k}={v}' for k, v in (cfg_options or {}).items()]
    report = titok_tool.main([path, out, '--config', config, *extra] +
                             (['--cfg-options', *options] if options else []))
    return load_tokenizer(config, out, cfg_options=cfg_options), report, out


# --- equivalence -------------------------------------------------------------
@torch.no_grad()
def test_stage2_release_matches_the_official_forward(tiny_config, tmp_path):
    official, ref = official_checkpoint()
    model, report, out = convert(official, tiny_config, tmp_path=tmp_path)
    x = images01()
    # encoder (legacy layout), l2 VQ ids, proxy logits, stage-2 images
    z, ids, codes = reference_encode(ref, x)
    latent = model.encoder(model._to_range(2 * x - 1))
    assert relative_error(latent, z.squeeze(2)) < 1e-5
    tokens = model.encode(2 * x - 1)
    assert tokens.shape == (2, TOKENS) and torch.equal(tokens, ids)
    logits = ref.decoder(codes)
    assert logits.shape == (2, PROXY_CODES, IMAGE // PATCH, IMAGE // PATCH)
    assert relative_error(model.head_output(tokens), logits) < 1e-5
    # TiTok.forward: softmax(logits) @ pixel codebook -> MaskGIT decoder, in
    # [0, 1]; vistok's images are in [-1, 1]
    images = model.decode(tokens)
    assert images.shape == (2, 3, IMAGE, IMAGE)
    assert relative_error((images + 1) / 2, ref(x)[0]) < 1e-5
    assert torch.equal(model.reconstruct(2 * x - 1).reconstruction, images)
    # decoding any ids (random images barely move a random encoder's ids)
    ids = torch.randint(CODEBOOK, (3, TOKENS),
                        generator=torch.Generator().manual_seed(1))
    logits = ref.decoder(reference_codes(ref, ids))
    assert relative_error(model.head_output(ids), logits) < 1e-5
    assert relative_error((model.decode(ids) + 1) / 2,
                          ref.decode_tokens(ids)) < 1e-5
    # every official tensor landed; EMA copies of the trained parts only
    assert set(report.mapping) == set(official) and not report.ignored
    assert sorted(report.allowed_missing) == ['ema.num_updates']
    state = load_file(out)
    assert set(state) == set(model.state_dict())
    assert torch.equal(state['encoder.class_embedding'],
                       official['encoder.class_embedding'][0])
    assert torch.equal(state['ema.decoder.mask_token'],
                       official['decoder.mask_token'].reshape(-1))
    assert torch.equal(state['ema.pixel_codebook.weight'],
                       official['pixel_quantize.embedding.weight'])
    assert torch.equal(state['encoder.blocks.1.attn.qkv.weight'],
                       official['encoder.transformer.1.attn.in_proj_weight'])
    assert not any(k.startswith(('ema.encoder', 'ema.quantizer'))
                   for k in state)


@torch.no_grad()
def test_single_stage_pixel_decoder_matches(tmp_path):
    """A non-legacy (single-stage) checkpoint: ``decoder.ffn.0`` +
    ``decoder.conv_out`` on pixels -> the ``'pixel'`` head."""
    cfg = Config.fromstring(TINY_CONFIG, '.py')
    cfg.model.update(head='pixel', pixel_decoder=None, is_legacy=False,
                     frozen_parts=())
    config = str(tmp_path / 'tiny_titok_pixel.py')
    cfg.dump(config)
    official, ref = official_checkpoint(legacy=False, stage2=False)
    model, report, _ = convert(official, config, tmp_path=tmp_path)
    x = images01(1)
    z, ids, _ = reference_encode(ref, x)  # the fixed layout: + permute
    assert relative_error(model.encoder(x), z.squeeze(2)) < 1e-5
    # vistok's [-1, 1] images, mapped to the release's [0, 1] and back
    assert torch.equal(model.encode(x * 2 - 1), ids)
    ids = torch.randint(CODEBOOK, (2, TOKENS),
                        generator=torch.Generator().manual_seed(2))
    images = ref.decode_tokens(ids)
    assert images.shape == (2, 3, IMAGE, IMAGE)
    assert relative_error((model.decode(ids) + 1) / 2, images) < 1e-5
    assert report.mapping['decoder.conv_out.weight'] == (
        'head.refine.weight', 'ema.head.refine.weight')
    # this checkpoint in an is_legacy=True model is refused
    with pytest.raises(titok.LayoutError, match='is_legacy=False'):
        convert(official, config, tmp_path=tmp_path, name='legacy.pth',
                cfg_options={'model.is_legacy': True})


# --- refusals ----------------------------------------------------------------
def test_legacy_release_is_refused_for_a_non_legacy_model(
        tiny_config, tmp_path):
    official, ref = official_checkpoint()
    non_legacy = {'model.is_legacy': False}
    with pytest.raises(titok.LayoutError, match='issue #17'):
        convert(official, tiny_config, tmp_path=tmp_path,
                cfg_options=non_legacy)
    assert not (tmp_path / 'out.safetensors').exists()
    # allowed on request: the weights load, but the latents are not TiTok's
    model, _, _ = convert(official, tiny_config, '--allow-non-legacy',
                          tmp_path=tmp_path, cfg_options=non_legacy)
    assert not model.is_legacy
    x = images01()
    with torch.no_grad():
        z = reference_encode(ref, x)[0].squeeze(2)
        assert not torch.allclose(model.encoder(x), z, atol=1e-3)
    # the released encoders see [0, 1] images
    with pytest.raises(titok.LayoutError, match='pixel_range'):
        convert(official, tiny_config, tmp_path=tmp_path,
                cfg_options={'model.pixel_range': None})


def test_stage1_target_needs_stage_1_and_incomplete_files_are_refused(
        tiny_config, tmp_path):
    official, _ = official_checkpoint()
    stage1 = {'model.pixel_decoder': None, 'model.frozen_parts': []}
    with pytest.raises(titok.LayoutError, match='--stage 1'):
        convert(official, tiny_config, tmp_path=tmp_path, cfg_options=stage1)
    model, report, _ = convert(official, tiny_config, '--stage', '1',
                               tmp_path=tmp_path, cfg_options=stage1)
    assert model.pixel_decoder is None
    assert report.ignored and all(
        k.startswith(('pixel_decoder.', 'pixel_quantize.'))
        for k in report.ignored)
    assert report.mapping['quantize.embedding.weight'] == (
        'quantizer.codebook', 'ema.quantizer.codebook')
    with pytest.raises(titok.LayoutError, match='stage-2 model'):
        convert(official, tiny_config, '--stage', '1', tmp_path=tmp_path)
    # a missing tensor (and its EMA copy) is reported, nothing written
    del official['decoder.transformer.0.attn.in_proj_bias']
    with pytest.raises(ValueError, match='nothing provides') as info:
        convert(official, tiny_config, tmp_path=tmp_path, name='bad.pth')
    assert info.value.report.missing == [
        'decoder.blocks.0.attn.qkv.bias', 'ema.decoder.blocks.0.attn.qkv.bias']
    assert not (tmp_path / 'bad.pth').exists()


# --- the command line and the real configs ---------------------------------
def test_cli_converts_a_pytorch_model_bin(tiny_config, tmp_path):
    official, ref = official_checkpoint(seed=3)
    snapshot = tmp_path / 'tokenizer_titok_tiny'
    snapshot.mkdir()
    torch.save(official, snapshot / 'pytorch_model.bin')
    out = str(tmp_path / 'converted.pth')
    result = subprocess.run(
        [sys.executable, TOOL, str(snapshot), out, '--config', tiny_config],
        env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert 'proxy decoder head, model.is_legacy=True, stage 2' in (
        result.stdout)
    model = load_tokenizer(tiny_config, out)
    x = images01(2)
    with torch.no_grad():
        assert torch.equal(model.encode(2 * x - 1),
                           reference_encode(ref, x)[1])


@pytest.mark.parametrize('name', ['l32', 'b64', 's128'])
def test_released_layouts_map_onto_the_stage2_configs(name):
    """The full-size official layouts (meta tensors) convert one to one
    into the stage-2 configs: every official tensor lands, nothing but the
    GAN state is left at initialisation, and the parameter counts agree."""
    size, tokens = dict(l32=('large', 32), b64=('base', 64),
                        s128=('small', 128))[name]
    width, depth, heads = MODEL_SIZES[size]
    with torch.device('meta'):  # with the release's MaskGIT-VQGAN
        ref = RefTiTok(image_size=256, patch_size=PATCH, width=width,
                       num_layers=depth, num_heads=heads,
                       num_latent_tokens=tokens, token_size=12,
                       codebook_size=4096)
    official = dict(ref.state_dict())
    assert official['pixel_quantize.embedding.weight'].shape == (1024, 256)
    config = osp.join(REPO_ROOT, 'configs/titok',
                      f'titok_vq-4k_{name}-stage2_8xb32-500k_in1k-256.py')
    if name == 'l32':
        assert config == titok_tool.DEFAULT_CONFIGS[2]
    import vistok.models  # noqa: F401
    from vistok.registry import MODELS
    # without the perceptual loss: a frozen ConvNeXt outside the state dict
    # (nothing converts into it), slow to build even on meta
    cfg = Config.fromfile(config)
    cfg.model.perceptual_loss = None
    with DefaultScope.overwrite_default_scope('vistok'), \
            torch.device('meta'):
        model = MODELS.build(cfg.model)
    assert titok.check_layout(official, model) == 2
    _, report = convert_state_dict(official, titok.rules_for(model),
                                   model,
                                   allow_missing=titok.ALLOW_MISSING)
    assert set(report.mapping) == set(official)
    assert {k.split('.')[0] for k in report.allowed_missing} == {
        'discriminator', 'adversarial_loss', 'ema'}
    assert 'ema.num_updates' in report.allowed_missing
    generator = sum(p.numel() for k, p in model.named_parameters()
                    if not k.startswith(('ema.', 'discriminator.')))
    assert sum(t.numel() for t in official.values()) == generator


@pytest.mark.parametrize('name', ['bl64', 'bl128', 'sl256'])
def test_single_stage_vq8k_layouts_map_onto_their_configs(name):
    """The single-stage VQ-8k releases (configs/infer/TiTok/
    titok_{name}_vq8k.yaml: is_legacy False, no finetune_decoder, VQ 8192 x
    64 without l2 norm, a large decoder behind a base / small encoder) as
    full-size official layouts (meta tensors) convert one to one into
    configs/titok/titok_vq-8k_{name}-pixel_*: every tensor lands, the
    counts agree."""
    encoder, tokens = dict(bl64=('base', 64), bl128=('base', 128),
                           sl256=('small', 256))[name]
    width, depth, heads = MODEL_SIZES[encoder]
    with torch.device('meta'):
        ref = RefTiTok(image_size=256, patch_size=PATCH, width=width,
                       num_layers=depth, num_heads=heads,
                       num_latent_tokens=tokens, token_size=64,
                       codebook_size=8192, use_l2_norm=False,
                       is_legacy=False, finetune_decoder=False,
                       decoder_size=MODEL_SIZES['large'])
    official = dict(ref.state_dict())
    assert titok.official_head(official) == 'pixel'
    config = osp.join(REPO_ROOT, 'configs/titok',
                      f'titok_vq-8k_{name}-pixel_8xb32-1m_in1k-256.py')
    import vistok.models  # noqa: F401
    from vistok.registry import MODELS
    cfg = Config.fromfile(config)
    with DefaultScope.overwrite_default_scope('vistok'), \
            torch.device('meta'):
        model = MODELS.build(cfg.model)
    assert titok.check_layout(official, model) == 1
    _, report = convert_state_dict(official, titok.rules_for(model),
                                   model,
                                   allow_missing=titok.ALLOW_MISSING)
    assert set(report.mapping) == set(official)
    assert {k.split('.')[0] for k in report.allowed_missing} == {'ema'}
    generator = sum(p.numel() for k, p in model.named_parameters()
                    if not k.startswith('ema.'))
    assert sum(t.numel() for t in official.values()) == generator
