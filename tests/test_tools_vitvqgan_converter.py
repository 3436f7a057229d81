"""tools/model_converters/vitvqgan.py (rules:
vistok.apis.converters.vitvqgan): an official-layout enhancing-transformers
``ViTVQ`` checkpoint -> vistok's AutoencoderTokenizer with ViT backbones,
checked against the independent reference of the official modules in
``tests/reference/vitvqgan_official.py`` (its module names are the official
key names, so its state dict with random weights is an official-layout
checkpoint). Tiny sizes: 32 px, patch 4 (8 x 8 tokens), width 128 with
2 heads of 64 (the official head width), depth 2, MLP 256, 64 codes of
dimension 8."""
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope
from reference.vitvqgan_official import RefViTVQ
from safetensors.torch import load_file, save_file

import vistok.models  # noqa: F401
from _helpers import REPO_ROOT, load_tool
from vistok.apis.converters import vitvqgan
from vistok.apis.tokenize import load_tokenizer
from vistok.registry import MODELS
from vistok.utils.checkpoint import CheckpointLoadError
from vistok.utils.convert import ConversionError, convert_state_dict

BASE = osp.join(REPO_ROOT, 'configs/vitvqgan',
                'vitvqgan_vq-8k-d32-l2_vit-b-p8_1xb8-100e_in1k-256.py')
SEIT = osp.join(REPO_ROOT, 'configs/vitvqgan',
                'vitvqgan_vq-391-d32-l2_vit-b-p8_1xb8-100e_in1k-256.py')
SIZE, PATCH, WIDTH, DEPTH, HEADS, MLP, CODE_DIM, CODES = (32, 4, 128, 2, 2,
                                                          256, 8, 64)
TINY_CONFIG = f"""
_base_ = [{BASE!r}]
vit = dict(img_size={SIZE}, patch_size={PATCH}, embed_dim={WIDTH},
           depth={DEPTH}, num_heads={HEADS}, mlp_ratio={MLP / WIDTH},
           mlp_act='{{act}}')
model = dict(
    encoder=dict(out_channels={CODE_DIM}, **vit),
    quantizer=dict(codebook_size={{codes}}, embed_dim={CODE_DIM}),
    decoder=dict(in_channels={CODE_DIM}, **vit),
    perceptual_loss=None,
    ema={{ema}})
"""
#: training-only keys of a Lightning checkpoint (VQLPIPSWithDiscriminator)
LOSS_KEYS = ('loss.perceptual_loss.net.slice1.0.weight',
             'loss.discriminator.convs.0.0.weight')
POS_KEYS = ('encoder.en_pos_embedding', 'decoder.de_pos_embedding')

tool = load_tool('tools/model_converters/vitvqgan.py', 'converter_vitvqgan')


def reference(seed=0, codes=CODES):
    """The reference model with random weights (the fixed sin-cos tables
    kept) and its state dict plus training-loss keys."""
    torch.manual_seed(seed)
    vit = dict(dim=WIDTH, depth=DEPTH, heads=HEADS, mlp_dim=MLP)
    ref = RefViTVQ(SIZE, PATCH, vit, vit,
                   dict(embed_dim=CODE_DIM, n_embed=codes)).eval()
    generator = torch.Generator().manual_seed(seed)

    def draw(key, value):
        """Unit-gain weights, norm scales near 1, small biases."""
        if key in POS_KEYS:
            return value.clone()
        noise = torch.randn(value.shape, generator=generator)
        if value.dim() == 1:
            return 1 + 0.1 * noise if 'norm.weight' in key else 0.02 * noise
        if key == 'quantizer.embedding.weight':
            return noise
        return noise / value[0].numel()**0.5

    official = {k: draw(k, v) for k, v in ref.state_dict().items()}
    ref.load_state_dict(official, strict=True)
    # centre the latents (the [0, 1] pixels share a large mean direction),
    # so the tokens spread over the codebook and equal indices mean much
    with torch.no_grad():
        pixels = torch.rand(4, 3, SIZE, SIZE, generator=generator)
        ref.pre_quant.bias -= ref.pre_quant(ref.encoder(pixels)).mean((0, 1))
    official['pre_quant.bias'] = ref.pre_quant.bias.detach().clone()
    for key in LOSS_KEYS:
        official[key] = torch.randn(2, 2, generator=generator)
    return ref, official


@pytest.fixture(scope='module')
def configs(tmp_path_factory):
    root = tmp_path_factory.mktemp('vitvqgan')
    variants = dict(plain=('tanh', CODES, 'None'),
                    ema=('tanh', 20, 'dict(decay=0.9)'),
                    gelu=('gelu', CODES, 'None'))
    paths = {}
    for name, (act, codes, ema) in variants.items():
        paths[name] = str(root / f'tiny_{name}.py')
        with open(paths[name], 'w') as f:
            f.write(TINY_CONFIG.replace('{act}', act).replace(
                '{codes}', str(codes)).replace('{ema}', ema))
    return paths


def convert(official, config, tmp_path, *extra, name='out.safetensors'):
    """Run the tool in-process on ``official`` (a state dict, saved as
    safetensors, or a path); return (converted model, report, out)."""
    path = official
    if isinstance(official, dict):
        path = str(tmp_path / 'official.safetensors')
        save_file(official, path)
    out = str(tmp_path / name)
    report = tool.main([path, out, '--config', config, *extra])
    return load_tokenizer(config, out).eval(), report, out


def relative_error(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@torch.no_grad()
def test_converted_checkpoint_matches_the_official_forward(configs,
                                                          tmp_path):
    ref, official = reference()
    model, report, out = convert(official, configs['plain'], tmp_path)
    pixels = torch.rand(2, 3, SIZE, SIZE,
                        generator=torch.Generator().manual_seed(1))
    images = 2 * pixels - 1  # vistok's range; the official model sees [0, 1]
    ref_quant, ref_loss, ref_ids = ref.encode(pixels)
    ref_recon = ref.decode(ref_quant)
    grid = SIZE // PATCH
    # encoder + pre_quant
    latent = model.encoder(images)
    assert relative_error(
        latent.flatten(2).transpose(1, 2),
        ref.pre_quant(ref.encoder(pixels))) < 1e-5
    # tokens: exactly the official indices, in raster order, not degenerate
    tokens = model.encode(images)
    assert tokens.shape == (2, grid, grid)
    assert torch.equal(tokens.flatten(1), ref_ids)
    assert tokens.unique().numel() > 24
    out_ = model.reconstruct(images)
    assert relative_error(out_.quantizer.quantized.flatten(2).transpose(1, 2),
                          ref_quant) < 1e-5
    # the loss terms are the official ones (β = 0.25 on the commitment)
    assert sum(out_.quantizer.loss.values()).item() == pytest.approx(
        ref_loss.item(), rel=1e-5)
    # reconstructions, mapped back from vistok's [-1, 1]
    assert relative_error((out_.reconstruction + 1) / 2, ref_recon) < 1e-5
    assert relative_error((model.decode(tokens) + 1) / 2,
                          ref.decode_codes(ref_ids)) < 1e-5
    # bookkeeping: every official tensor mapped or dropped on purpose
    assert set(report.ignored) == set(POS_KEYS) | set(LOSS_KEYS)
    assert set(report.mapping) == set(official) - set(report.ignored)
    assert {k.split('.')[0] for k in report.allowed_missing} <= {
        'discriminator', 'adversarial_loss'}
    state = load_file(out)
    assert torch.equal(state['encoder.proj_out.weight'][:, :, 0, 0],
                       official['pre_quant.weight'])
    assert torch.equal(state['quantizer.codebook'],
                       official['quantizer.embedding.weight'])


@torch.no_grad()
def test_pickled_module_with_a_replacement_codebook(configs, tmp_path):
    """SeiT's release: a pickled tokenizer object plus a separate codebook
    file; with ``--codebook`` the tokens index that table (cosine look-up),
    and the EMA copy gets the same weights."""
    ref, _ = reference(seed=2)
    path = str(tmp_path / 'tokenizer.ckpt')
    torch.save(ref, path)
    table = torch.randn(20, CODE_DIM,
                        generator=torch.Generator().manual_seed(3))
    codebook_path = str(tmp_path / 'codebook.ckpt')
    torch.save(table, codebook_path)
    with pytest.raises(CheckpointLoadError, match='--trust-checkpoint'):
        convert(path, configs['ema'], tmp_path, '--codebook', codebook_path,
                name='untrusted.pth')
    model, report, out = convert(path, configs['ema'], tmp_path, '--codebook',
                                 codebook_path, '--trust-checkpoint',
                                 name='seit.pth')
    ref.quantizer.embedding = torch.nn.Embedding.from_pretrained(table)
    pixels = torch.rand(2, 3, SIZE, SIZE,
                        generator=torch.Generator().manual_seed(4))
    _, _, ref_ids = ref.encode(pixels)
    tokens = model.encode(2 * pixels - 1)
    assert torch.equal(tokens.flatten(1), ref_ids)
    assert tokens.unique().numel() > 10
    assert relative_error((model.decode(tokens) + 1) / 2,
                          ref.decode_codes(ref_ids)) < 1e-5
    for key in ('quantizer.codebook', 'ema.quantizer.codebook'):
        assert torch.equal(model.state_dict()[key], table)
    assert 'ema.num_updates' in report.allowed_missing


def test_incomplete_or_foreign_checkpoints_are_refused(configs, tmp_path):
    _, official = reference()
    missing = dict(official)
    del missing['post_quant.bias']
    with pytest.raises(ConversionError, match='nothing provides') as info:
        convert(missing, configs['plain'], tmp_path, name='bad.pth')
    assert info.value.report.missing == ['decoder.embed.bias']
    assert not (tmp_path / 'bad.pth').exists()
    extra = dict(official, **{'decoder.extra_token': torch.zeros(3)})
    with pytest.raises(ConversionError) as info:
        convert(extra, configs['plain'], tmp_path, name='bad.pth')
    assert info.value.report.unmapped == ['decoder.extra_token']
    assert not (tmp_path / 'bad.pth').exists()
    # learned (non sin-cos) position tables: another layout
    model = load_tokenizer(configs['plain'])
    learned = dict(official)
    learned['decoder.de_pos_embedding'] = torch.randn(
        official['decoder.de_pos_embedding'].shape)
    with pytest.raises(vitvqgan.LayoutError, match='sin-cos'):
        vitvqgan.check_layout(learned, model)
    no_table = {k: v for k, v in official.items()
                if k != 'encoder.en_pos_embedding'}
    with pytest.raises(vitvqgan.LayoutError, match='en_pos_embedding'):
        vitvqgan.check_layout(no_table, model)
    # a config that would give the weights another meaning
    with pytest.raises(vitvqgan.LayoutError,
                       match="model.encoder.mlp_act='tanh'"):
        vitvqgan.check_layout(official, load_tokenizer(configs['gelu']))
    # a codebook of another code dimension
    with pytest.raises(vitvqgan.LayoutError, match=f'\\(K, {CODE_DIM}\\)'):
        vitvqgan.replace_codebook(dict(official),
                                  torch.zeros(20, CODE_DIM + 1))


@pytest.mark.parametrize('config,codes', [(BASE, 8192), (SEIT, 391)])
def test_release_layout_maps_onto_the_configs(config, codes):
    """The full-size layout (meta tensors; enhancing-transformers'
    imagenet_vitvq_base: 256 px, patch 8, width 768, depth 12, 12 heads,
    MLP 3072, 32-d codes) converts one to one into the base config and into
    the SeiT config (391 codes), and the parameter counts agree (170.4M +
    the codebook; 189 more in vistok, see below)."""
    vit = dict(dim=768, depth=12, heads=12, mlp_dim=3072)
    with torch.device('meta'):
        ref = RefViTVQ(256, 8, vit, vit, dict(embed_dim=32, n_embed=codes))
        with DefaultScope.overwrite_default_scope('vistok'):
            model = MODELS.build(Config.fromfile(config).model)
    official = dict(ref.state_dict())
    ignored, _ = vitvqgan.check_layout(official, model)
    _, report = convert_state_dict(
        official, vitvqgan.rules_for(model), model,
        allow_missing=vitvqgan.ALLOW_MISSING,
        ignore_unmapped=vitvqgan.IGNORE_UNMAPPED + tuple(ignored))
    assert set(report.ignored) == set(POS_KEYS)
    assert set(report.mapping) == set(official) - set(POS_KEYS)
    assert not report.allowed_missing
    trained = sum(p.numel() for p in ref.parameters() if p.requires_grad)
    assert trained == 170_402_339 + codes * 32
    # vistok's pixel head has one bias per output value (p·p·3), the
    # transposed conv one per channel (3): the converter repeats it
    assert sum(p.numel() for p in model.parameters()) == (trained +
                                                          (8 * 8 - 1) * 3)
