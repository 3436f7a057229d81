"""tools/model_converters/titok.py (rules: vistok.apis.converters.titok):
official TiTok checkpoints -> vistok's TiTokTokenizer, checked against an
independent reference of the official forward pass written here from
bytedance/1d-tokenizer
(``modeling/modules/blocks.py``: ``TiTokEncoder`` / ``TiTokDecoder`` with
``ResidualAttentionBlock`` = ``nn.MultiheadAttention``; ``modeling/titok.py``:
top-level ``latent_tokens``, stage-2 ``pixel_quantize`` / ``pixel_decoder``;
``modeling/quantizer/quantizer.py``: l2-normalised VQ). The reference's
module names are the official key names, so its random state dict is an
official-layout checkpoint."""
import os.path as osp
import subprocess
import sys
from collections import OrderedDict

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.registry import DefaultScope
from safetensors.torch import load_file, save_file

from _helpers import REPO_ROOT, load_tool, subprocess_env
from vistok.apis.converters import maskgit_vqgan, titok
from vistok.apis.tokenize import load_tokenizer
from vistok.utils.convert import convert_state_dict

TOOL = osp.join(REPO_ROOT, 'tools/model_converters/titok.py')
IMAGE, PATCH, WIDTH, DEPTH, HEADS, TOKENS = 64, 16, 32, 2, 2, 8
TOKEN_SIZE, CODEBOOK, PROXY_CODES, PIXEL_DIM = 6, 32, 16, 8
#: a tiny MaskGIT-VQGAN (5 levels: 4x4 -> 64x64; vistok's middle block has
#: two ResnetBlocks, MaskGIT's num_res_blocks)
CONV = dict(ch=8, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2,
            attn_resolutions=(), resolution=IMAGE, z_channels=PIXEL_DIM,
            dropout=0.0, num_groups=4, mid_attention=False,
            resnet_bias=False, resnet_shortcut='output',
            pixel_range=(0.0, 1.0))
VIT = dict(size=None, width=WIDTH, depth=DEPTH, num_heads=HEADS,
           num_latent_tokens=TOKENS, img_size=IMAGE, patch_size=PATCH)
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


# --- the official TiTok, from the facts in the module docstring ------------
class RefBlock(nn.Module):
    """``ResidualAttentionBlock``: pre-LN, torch multi-head attention on
    sequence-first ``(L, B, D)`` tokens, GELU MLP ``c_fc`` / ``c_proj``."""

    def __init__(self, width, heads):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([
            ('c_fc', nn.Linear(width, 4 * width)), ('gelu', nn.GELU()),
            ('c_proj', nn.Linear(4 * width, width))]))

    def forward(self, x):
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class RefTrunk(nn.Module):
    """What TiTok's encoder and decoder share (1-row class / mask tokens,
    position embeddings with the class slot)."""

    def __init__(self, width, depth, heads, grid, tokens):
        super().__init__()
        self.width, self.grid, self.tokens = width, grid, tokens
        self.class_embedding = nn.Parameter(torch.randn(1, width))
        self.positional_embedding = nn.Parameter(
            torch.randn(grid * grid + 1, width))
        self.latent_token_positional_embedding = nn.Parameter(
            torch.randn(tokens, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = nn.ModuleList(
            RefBlock(width, heads) for _ in range(depth))
        self.ln_post = nn.LayerNorm(width)

    def run(self, grid_tokens, latent):
        batch = grid_tokens.shape[0]
        cls = self.class_embedding.unsqueeze(0).expand(batch, -1, -1)
        x = torch.cat([cls, grid_tokens], 1) + self.positional_embedding
        latent = latent + self.latent_token_positional_embedding
        x = self.ln_pre(torch.cat([x, latent], 1)).permute(1, 0, 2)
        for block in self.transformer:
            x = block(x)
        return x.permute(1, 0, 2)


class RefEncoder(RefTrunk):

    def __init__(self, token_size, legacy, **kwargs):
        super().__init__(**kwargs)
        self.legacy = legacy
        self.patch_embed = nn.Conv2d(3, self.width, PATCH, PATCH)
        self.conv_out = nn.Conv2d(self.width, token_size, 1)

    def forward(self, images, latent_tokens):
        """``images`` in [0, 1] -> ``(B, token_size, 1, K)``."""
        batch = images.shape[0]
        x = self.patch_embed(images).flatten(2).permute(0, 2, 1)
        latent = latent_tokens.unsqueeze(0).expand(batch, -1, -1)
        x = self.ln_post(self.run(x, latent)[:, 1 + self.grid**2:])
        if self.legacy:  # TiTok issue #17: no permute
            x = x.reshape(batch, self.width, self.tokens, 1)
        else:
            x = x.reshape(batch, self.tokens, self.width,
                          1).permute(0, 2, 1, 3)
        x = self.conv_out(x)
        return x.reshape(batch, -1, 1, self.tokens)


class RefDecoder(RefTrunk):

    def __init__(self, token_size, legacy, num_codes, **kwargs):
        super().__init__(**kwargs)
        width = self.width
        self.legacy = legacy
        self.decoder_embed = nn.Linear(token_size, width)
        self.mask_token = nn.Parameter(torch.randn(1, 1, width))
        if legacy:  # proxy-code logits
            self.ffn = nn.Sequential(nn.Conv2d(width, 2 * width, 1),
                                     nn.Tanh(),
                                     nn.Conv2d(2 * width, num_codes, 1))
            self.conv_out = nn.Identity()
        else:  # pixels: 1x1 conv, 'b (p1 p2 c) h w -> b c (h p1) (w p2)'
            self.ffn = nn.Sequential(nn.Conv2d(width, PATCH * PATCH * 3, 1))
            self.conv_out = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, z):
        batch, channels, _, tokens = z.shape
        x = self.decoder_embed(z.reshape(batch, channels, tokens).permute(
            0, 2, 1))
        masks = self.mask_token.repeat(batch, self.grid**2, 1)
        x = self.ln_post(self.run(masks, x)[:, 1:1 + self.grid**2])
        x = x.permute(0, 2, 1).reshape(batch, self.width, self.grid,
                                       self.grid)
        x = self.ffn(x)
        if not self.legacy:
            p, g = PATCH, self.grid
            x = x.reshape(batch, p, p, 3, g, g).permute(0, 3, 4, 1, 5,
                                                        2).reshape(
                                                            batch, 3, g * p,
                                                            g * p)
        return self.conv_out(x)


class RefTiTok(nn.Module):

    def __init__(self, legacy=True, width=WIDTH, depth=DEPTH, heads=HEADS,
                 tokens=TOKENS, token_size=TOKEN_SIZE, codebook=CODEBOOK,
                 num_codes=PROXY_CODES, grid=IMAGE // PATCH):
        super().__init__()
        trunk = dict(width=width, depth=depth, heads=heads, grid=grid,
                     tokens=tokens)
        self.encoder = RefEncoder(token_size, legacy, **trunk)
        self.decoder = RefDecoder(token_size, legacy, num_codes, **trunk)
        self.latent_tokens = nn.Parameter(torch.randn(tokens, width))
        self.quantize = nn.Module()
        self.quantize.embedding = nn.Embedding(codebook, token_size)

    def encode(self, images):
        """l2-normalised VQ of the encoder output: ids ``(B, K)``, codes
        ``(B, C, 1, K)``."""
        z = self.encoder(images, self.latent_tokens)
        flat = F.normalize(z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]),
                           dim=-1)
        codebook = F.normalize(self.quantize.embedding.weight, dim=-1)
        distances = (flat.pow(2).sum(1, keepdim=True) +
                     codebook.pow(2).sum(1) - 2 * flat @ codebook.t())
        ids = distances.argmin(1).reshape(z.shape[0], -1)
        return z, ids, self.lookup(ids)

    def lookup(self, ids):
        """Unit-norm codes ``(B, C, 1, K)`` of ids ``(B, K)``."""
        codebook = F.normalize(self.quantize.embedding.weight, dim=-1)
        return codebook[ids].permute(0, 2, 1).unsqueeze(2)


def pixel_decoder_layout(ch, ch_mult, num_res_blocks, z_channels, **_):
    """Keys and shapes of TiTok's ``pixel_decoder`` (MaskGIT-VQGAN
    ``Decoder`` of ``modeling/modules/maskgit_vqgan.py``: bias-free
    ResnetBlocks ``norm1 conv1 norm2 conv2 [nin_shortcut]``, ``mid.{j}``,
    ``up.{i}.block.{j}``, ``up.{i}.upsample_conv``)."""
    shapes = {}

    def conv(name, cout, cin, k, bias=True):
        shapes[f'{name}.weight'] = (cout, cin, k, k)
        if bias:
            shapes[f'{name}.bias'] = (cout, )

    def norm(name, c):
        shapes[f'{name}.weight'] = shapes[f'{name}.bias'] = (c, )

    def resnet(name, cin, cout):
        norm(f'{name}.norm1', cin)
        conv(f'{name}.conv1', cout, cin, 3, False)
        norm(f'{name}.norm2', cout)
        conv(f'{name}.conv2', cout, cout, 3, False)
        if cin != cout:
            conv(f'{name}.nin_shortcut', cout, cout, 1, False)

    top = ch * ch_mult[-1]
    conv('conv_in', top, z_channels, 3)
    for j in range(num_res_blocks):
        resnet(f'mid.{j}', top, top)
    for i in range(len(ch_mult)):
        block_in = ch * ch_mult[min(i + 1, len(ch_mult) - 1)]
        for j in range(num_res_blocks):
            resnet(f'up.{i}.block.{j}', block_in, ch * ch_mult[i])
            block_in = ch * ch_mult[i]
        if i:
            conv(f'up.{i}.upsample_conv', block_in, block_in, 3)
    norm('norm_out', ch * ch_mult[0])
    conv('conv_out', 3, ch * ch_mult[0], 3)
    return {f'pixel_decoder.{k}': v for k, v in shapes.items()}


def randomize(state, seed, scale=0.3):
    generator = torch.Generator().manual_seed(seed)
    return {k: scale * torch.randn(v.shape, generator=generator)
            for k, v in state.items()}


def official_checkpoint(legacy=True, stage2=True, seed=0):
    """A random official-layout state dict and the reference TiTok holding
    it (plus the reference's pixel decoder: a vistok ConvDecoder loaded
    through the MaskGIT-VQGAN converter, shared with TiTok's stage 2)."""
    torch.manual_seed(seed)
    ref = RefTiTok(legacy=legacy).eval()
    official = randomize(ref.state_dict(), seed)
    ref.load_state_dict(official, strict=True)
    if not stage2:
        return official, ref, None
    shapes = pixel_decoder_layout(**CONV)
    shapes['pixel_quantize.embedding.weight'] = (PROXY_CODES, PIXEL_DIM)
    official.update(randomize(
        {k: torch.empty(s) for k, s in shapes.items()}, seed + 1))
    from vistok.models.backbones.conv import ConvDecoder
    pixel = ConvDecoder(out_ch=3, num_up_blocks=2, **CONV).eval()
    maskgit = {k[len('pixel_'):]: v for k, v in official.items()
               if k.startswith('pixel_decoder.')}
    state, _ = convert_state_dict(
        maskgit, maskgit_vqgan.RULES,
        {f'decoder.{k}': v for k, v in pixel.state_dict().items()})
    pixel.load_state_dict(
        {k[len('decoder.'):]: v for k, v in state.items()}, strict=True)
    return official, ref, pixel


def stage2_images(official, pixel, logits):
    """TiTok's stage-2 decode: softmax(logits) @ pixel codebook -> MaskGIT
    decoder."""
    weighted = torch.einsum('nchw,cd->ndhw', logits.softmax(1),
                            official['pixel_quantize.embedding.weight'])
    return pixel(weighted)


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
    official, ref, pixel = official_checkpoint()
    model, report, out = convert(official, tiny_config, tmp_path=tmp_path)
    x = images01()
    # encoder (legacy layout), l2 VQ ids, proxy logits, stage-2 images
    z, ids, codes = ref.encode(x)
    latent = model.encoder(model._to_range(2 * x - 1))
    assert torch.allclose(latent, z.squeeze(2), atol=1e-5)
    tokens = model.encode(2 * x - 1)
    assert tokens.shape == (2, TOKENS) and torch.equal(tokens, ids)
    logits = ref.decoder(codes)
    assert logits.shape == (2, PROXY_CODES, IMAGE // PATCH, IMAGE // PATCH)
    assert torch.allclose(model.head_output(tokens), logits, atol=1e-5)
    images = model.decode(tokens)
    assert images.shape == (2, 3, IMAGE, IMAGE)
    assert torch.allclose(images, stage2_images(official, pixel, logits),
                          atol=1e-5)
    assert torch.equal(model.reconstruct(2 * x - 1).reconstruction, images)
    # decoding any ids (random images barely move a random encoder's ids)
    ids = torch.randint(CODEBOOK, (3, TOKENS),
                        generator=torch.Generator().manual_seed(1))
    logits = ref.decoder(ref.lookup(ids))
    assert torch.allclose(model.head_output(ids), logits, atol=1e-5)
    assert torch.allclose(model.decode(ids),
                          stage2_images(official, pixel, logits), atol=1e-5)
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
    official, ref, _ = official_checkpoint(legacy=False, stage2=False)
    model, report, _ = convert(official, config, tmp_path=tmp_path)
    x = images01(1)
    z, ids, _ = ref.encode(x)  # the fixed layout: reshape + permute
    assert torch.allclose(model.encoder(x), z.squeeze(2), atol=1e-5)
    # vistok's [-1, 1] images, mapped to the release's [0, 1] and back
    assert torch.equal(model.encode(x * 2 - 1), ids)
    ids = torch.randint(CODEBOOK, (2, TOKENS),
                        generator=torch.Generator().manual_seed(2))
    images = ref.decoder(ref.lookup(ids))
    assert images.shape == (2, 3, IMAGE, IMAGE)
    assert torch.allclose(model.decode(ids), images * 2 - 1, atol=1e-5)
    assert report.mapping['decoder.conv_out.weight'] == (
        'head.refine.weight', 'ema.head.refine.weight')
    # this checkpoint in an is_legacy=True model is refused
    with pytest.raises(titok.LayoutError, match='is_legacy=False'):
        convert(official, config, tmp_path=tmp_path, name='legacy.pth',
                cfg_options={'model.is_legacy': True})


# --- refusals ----------------------------------------------------------------
def test_legacy_release_is_refused_for_a_non_legacy_model(
        tiny_config, tmp_path):
    official, ref, _ = official_checkpoint()
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
        z = ref.encode(x)[0].squeeze(2)
        assert not torch.allclose(model.encoder(x), z, atol=1e-3)
    # the released encoders see [0, 1] images
    with pytest.raises(titok.LayoutError, match='pixel_range'):
        convert(official, tiny_config, tmp_path=tmp_path,
                cfg_options={'model.pixel_range': None})


def test_stage1_target_needs_stage_1_and_incomplete_files_are_refused(
        tiny_config, tmp_path):
    official, _, _ = official_checkpoint()
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
    official, ref, _ = official_checkpoint(seed=3)
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
        assert torch.equal(model.encode(2 * x - 1), ref.encode(x)[1])


@pytest.mark.parametrize('name', ['l32', 'b64', 's128'])
def test_released_layouts_map_onto_the_stage2_configs(name):
    """The full-size official layouts (meta tensors) convert one to one
    into the stage-2 configs: every official tensor lands, nothing but the
    GAN state is left at initialisation, and the parameter counts agree."""
    size, tokens = dict(l32=('L', 32), b64=('B', 64), s128=('S', 128))[name]
    width, depth, heads = dict(L=(1024, 24, 16), B=(768, 12, 12),
                               S=(512, 8, 8))[size]
    with torch.device('meta'):
        ref = RefTiTok(width=width, depth=depth, heads=heads, tokens=tokens,
                       token_size=12, codebook=4096, num_codes=1024,
                       grid=256 // PATCH)
    official = dict(ref.state_dict())
    full_conv = dict(ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2,
                     z_channels=256)
    shapes = pixel_decoder_layout(**full_conv)
    shapes['pixel_quantize.embedding.weight'] = (1024, 256)
    official.update({k: torch.empty(s, device='meta')
                     for k, s in shapes.items()})
    config = osp.join(REPO_ROOT, 'configs/titok',
                      f'titok_vq-4k_{name}-stage2_8xb32-500k_in1k-256.py')
    if name == 'l32':
        assert config == titok_tool.DEFAULT_CONFIGS[2]
    import vistok.models  # noqa: F401
    from vistok.registry import MODELS
    with DefaultScope.overwrite_default_scope('vistok'), \
            torch.device('meta'):
        model = MODELS.build(Config.fromfile(config).model)
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
