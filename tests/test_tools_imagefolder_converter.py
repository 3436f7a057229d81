"""tools/model_converters/imagefolder.py (rules:
vistok.apis.converters.imagefolder): an official-layout ImageFolder
checkpoint (lxa9867/ImageFolder ``VQModel``, MSVR10P2 options) -> vistok's
ImageFolderTokenizer, checked against the independent reference of the
official inference pass in ``tests/reference/imagefolder_official.py``
(its module names are the official key names, so its random state dict is
an official-layout checkpoint). Tiny sizes: a 2-block DINOv2-style timm ViT
(with LayerScale) of width 64 at 64 px / patch 8 (8² = (64/8)², as the
official level index assumes), 2 branches of 4 x 4 latent tokens, code dim
8, 64 codes, scales 1, 2, 4."""
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope
from reference.imagefolder_official import RefImageFolder
from safetensors.torch import load_file, save_file

import projects.ImageFolder.imagefolder  # noqa: F401
import vistok.models  # noqa: F401
from _helpers import REPO_ROOT, load_tool
from vistok.apis.converters import imagefolder
from vistok.apis.tokenize import load_tokenizer
from vistok.registry import MODELS
from vistok.utils.convert import ConversionError, convert_state_dict

TINY_BASE = osp.join(
    REPO_ROOT, 'projects/ImageFolder/configs',
    'imagefolder_msvr3p2-64_vit-tiny_1xb8-300_skimage-64.py')
MODEL_NAME = 'vit_small_patch14_dinov2'  # LayerScale blocks, as DINOv2
VIT = dict(img_size=64, patch_size=8, depth=2, embed_dim=64, num_heads=2)
GRID, BRANCHES, CODE_DIM, CODES, SCALES = 4, 2, 8, 64, (1, 2, 4)
TINY_CONFIG = f"""
_base_ = [{TINY_BASE!r}]
vit_kwargs = {VIT!r}
model = dict(
    encoder=dict(model_name={MODEL_NAME!r}, model_kwargs=vit_kwargs),
    decoder=dict(model_name={MODEL_NAME!r}, model_kwargs=vit_kwargs),
    semantic_loss=None,
    ema={{ema}})
"""
#: training-only keys of a release (the frozen DINOv2 teacher)
TEACHER_KEYS = ('semantic_model.cls_token',
                'semantic_model.blocks.0.attn.qkv.weight')

tool = load_tool('tools/model_converters/imagefolder.py',
                 'converter_imagefolder')


def reference(seed=0):
    """The reference model holding a random official-layout state dict, and
    that state dict plus teacher keys (a training checkpoint's 'model')."""
    torch.manual_seed(seed)
    ref = RefImageFolder(MODEL_NAME, VIT, GRID, BRANCHES, CODE_DIM, CODES,
                         SCALES).eval()
    generator = torch.Generator().manual_seed(seed)
    official = {
        k: (0.3 * torch.randn(v.shape, generator=generator)
            if v.is_floating_point() else v.clone())
        for k, v in ref.state_dict().items()
    }
    ref.load_state_dict(official, strict=True)
    for key in TEACHER_KEYS:
        official[key] = torch.randn(4, 4, generator=generator)
    return ref, official


@pytest.fixture(scope='module')
def configs(tmp_path_factory):
    root = tmp_path_factory.mktemp('imagefolder')
    paths = {}
    for name, ema in (('plain', 'None'), ('ema', 'dict(decay=0.9)')):
        paths[name] = str(root / f'tiny_{name}.py')
        with open(paths[name], 'w') as f:
            f.write(TINY_CONFIG.replace('{ema}', ema))
    return paths


def convert(official, config, tmp_path, *extra, name='out.safetensors'):
    """Run the tool in-process on ``official`` (a state dict, saved as
    safetensors, or a path); return (converted model, report)."""
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
def test_converted_release_matches_the_official_forward(configs, tmp_path):
    ref, official = reference()
    model, report, out = convert(official, configs['plain'], tmp_path)
    images = 2 * torch.rand(2, 3, 64, 64,
                            generator=torch.Generator().manual_seed(1)) - 1
    reconstruction, ref_ids = ref(images)
    # latent maps: branch-major channels = the official chunks
    latent = model.encoder(images)
    assert relative_error(latent, torch.cat(ref.encode(images), 1)) < 1e-5
    # tokens: per scale (B, s, s, P), equal to both branches' indices
    tokens = model.encode(images)
    assert [t.shape for t in tokens] == [(2, s, s, BRANCHES) for s in SCALES]
    for i, scale_tokens in enumerate(tokens):
        assert torch.equal(scale_tokens,
                           torch.stack([ids[i] for ids in ref_ids], -1))
    # the tokens are not degenerate (else equal indices prove little)
    assert tokens[-1].unique().numel() > 4
    out_images = model.reconstruct(images).reconstruction
    assert out_images.shape == reconstruction.shape == (2, 3, 64, 64)
    assert relative_error(out_images, reconstruction) < 1e-5
    assert relative_error(model.decode(tokens), reconstruction) < 1e-5
    # bookkeeping: every official tensor mapped or dropped on purpose
    dropped = {'encoder.lvl1LC', 'decoder.lvl1LC', *TEACHER_KEYS} | {
        f'quantizes.{p}.ema_vocab_hit_SV' for p in range(BRANCHES)}
    assert set(report.ignored) == dropped
    assert set(report.mapping) == set(official) - dropped
    assert {k.split('.')[0] for k in report.allowed_missing} == {
        'discriminator', 'adversarial_loss'}
    state = load_file(out)
    assert torch.equal(state['encoder.quant_proj.weight'],
                       official['quant_conv.weight'][:, :, 0, 0])
    assert torch.equal(state['decoder.head.proj.weight'][:, :, 0, 0],
                       official['decoder.to_pixel.model.weight'])
    assert torch.equal(state['quantizer.branches.1.phi_convs.3.bias'],
                       official['quantizes.1.quant_resi.qresi_ls.3.bias'])


def test_ema_weights_and_ema_copies(configs, tmp_path):
    _, official = reference(seed=2)
    _, ema = reference(seed=3)
    path = str(tmp_path / 'best_ckpt.pt')
    torch.save(dict(model=official, ema=ema, steps=torch.tensor(7)), path)
    model, report, out = convert(path, configs['ema'], tmp_path, '--weights',
                                 'ema')
    state = load_file(out)
    for key in ('encoder.latent_tokens', 'ema.encoder.latent_tokens'):
        assert torch.equal(state[key], ema['encoder.latent_tokens'][0])
    assert torch.equal(state['ema.quantizer.branches.0.quantizer.codebook'],
                       ema['quantizes.0.embedding.weight'])
    assert 'ema.num_updates' in report.allowed_missing
    # the default entry is 'model'
    _, _, out = convert(path, configs['plain'], tmp_path, name='model.pth')
    assert torch.equal(
        load_tokenizer(configs['plain'], out).decoder.mask_token,
        official['decoder.mask_token'].reshape(-1))


def test_incomplete_or_foreign_checkpoints_are_refused(configs, tmp_path):
    _, official = reference()
    missing = dict(official)
    del missing['post_quant_conv.bias']
    with pytest.raises(ConversionError, match='nothing provides') as info:
        convert(missing, configs['plain'], tmp_path, name='bad.pth')
    assert info.value.report.missing == ['decoder.post_quant_proj.bias']
    assert not (tmp_path / 'bad.pth').exists()
    extra = dict(official, **{'decoder.extra_token': torch.zeros(3)})
    with pytest.raises(ConversionError) as info:
        convert(extra, configs['plain'], tmp_path, name='bad.pth')
    assert info.value.report.unmapped == ['decoder.extra_token']
    assert not info.value.report.missing
    # other VQModel variants are refused with the reason
    with pytest.raises(imagefolder.LayoutError, match='abs_pos_embed'):
        convert(dict(official, **{'encoder.latent_pos_embed':
                                  torch.zeros(1, 32, 64)}),
                configs['plain'], tmp_path, name='bad.pth')
    one_branch = {k: v for k, v in official.items()
                  if not k.startswith('quantizes.1.')}
    with pytest.raises(imagefolder.LayoutError, match='num_branches'):
        convert(one_branch, configs['plain'], tmp_path, name='bad.pth')


def test_release_layout_maps_onto_the_paper_config():
    """The full-size MSVR10P2-4096 layout (meta tensors; DINOv2 ViT-B at
    256 px / patch 16, 2 x 11 x 11 tokens, 4096 x 32 codes, 10 scales)
    converts one to one into the script's default config: every official
    tensor but the dropped ones lands, only the semantic loss, the
    discriminator, the LeCam statistics and ``ema.num_updates`` keep their
    initialisation, and the parameter counts agree."""
    vit = dict(img_size=256, patch_size=16, drop_path_rate=0.1)
    with torch.device('meta'):
        ref = RefImageFolder('vit_base_patch14_dinov2', vit, 11, 2, 32,
                             4096, (1, 1, 2, 3, 3, 4, 5, 6, 8, 11))
        official = dict(ref.state_dict())
        official.update({k: torch.empty(4, 4) for k in TEACHER_KEYS})
        with DefaultScope.overwrite_default_scope('vistok'):
            model = MODELS.build(Config.fromfile(tool.DEFAULT_CONFIG).model)
    imagefolder.check_layout(official, model)
    _, report = convert_state_dict(
        official, imagefolder.rules_for(model), model,
        allow_missing=imagefolder.ALLOW_MISSING,
        ignore_unmapped=imagefolder.IGNORE_UNMAPPED)
    assert len(report.ignored) == 6
    assert set(report.mapping) == set(official) - set(report.ignored)
    assert {k.split('.')[0] for k in report.allowed_missing} == {
        'semantic_loss', 'discriminator', 'adversarial_loss', 'ema'}
    generator = sum(p.numel() for k, p in model.named_parameters()
                    if not k.startswith(('ema.', 'discriminator.',
                                         'semantic_loss.')))
    assert generator == sum(p.numel() for p in ref.parameters())
