"""MARVEL stage 1 starts from the released TiTok-L-32 as MARVEL's fork does
(PadrickLeee/MDQ at 7816c37086502bfa50931734fbfa2995d5f78cff:
``create_model_and_loss_module`` in ``utils/train_utils.py`` loads
``experiment.init_weight`` = ``tokenizer_titok_l32.bin`` without its
``quantize.`` and ``pixel_`` keys).

A tiny official-layout release (the reference TiTok of
``tests/reference/titok_official.py`` after stage 2, with the reference
MaskGIT-VQGAN pixel decoder) is converted by the real converter
(``tools/model_converters/titok.py --stage 1``) and loaded by a tiny MARVEL
model whose ``model.pretrained`` and quantizer are those of the real
ImageNet configs: exactly the official ``pixel_*`` keys (at conversion) and
``quantize.*`` (vistok: ``quantizer.codebook`` and its EMA copy, at
loading) are dropped; one key more or less is refused."""
import copy

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope
from reference.maskgit_vqgan_official import make_config
from reference.titok_official import TiTok as RefTiTok
from safetensors.torch import load_file, save_file

import vistok.models  # noqa: F401 (registers the parts)
from _helpers import REPO_ROOT, load_tool
from vistok.models.tokenizers import titok as titok_module
from vistok.registry import MODELS
from vistok.utils.partial_load import PartialLoadError

MARVEL_STAGE1 = (REPO_ROOT + '/projects/MARVEL/configs/'
                 'marvel_rlfq-4k-x{}_l32_8xb64-40k_in1k-256.py')
IMAGE, PATCH, WIDTH, LAYERS, HEADS, TOKENS = 32, 16, 16, 1, 2, 4
TOKEN_SIZE, CODEBOOK, PROXY_CODES, PIXEL_DIM = 6, 16, 8, 4
VIT = dict(size=None, width=WIDTH, depth=LAYERS, num_heads=HEADS,
           num_latent_tokens=TOKENS, img_size=IMAGE, patch_size=PATCH)
#: a tiny stage-1 TiTok (the converter's target for ``--stage 1``)
TITOK_STAGE1 = f"""
default_scope = 'vistok'
vit = {VIT!r}
model = dict(
    type='TiTokTokenizer',
    encoder=dict(type='LatentTokenEncoder', out_channels={TOKEN_SIZE},
                 **vit),
    quantizer=dict(type='VectorQuantizer', codebook_size={CODEBOOK},
                   embed_dim={TOKEN_SIZE}, use_l2_norm=True),
    decoder=dict(type='LatentTokenDecoder', in_channels={TOKEN_SIZE}, **vit),
    head='proxy',
    num_proxy_codes={PROXY_CODES},
    is_legacy=True,
    pixel_range=(0.0, 1.0),
    ema=dict(decay=0.9))
"""

titok_tool = load_tool('tools/model_converters/titok.py',
                       'converter_titok_marvel')


def real_stage1_config(depth=2):
    return Config.fromfile(MARVEL_STAGE1.format(depth))


def official_release(seed=0):
    """A random official-layout TiTok after stage 2 (``pixel_quantize`` /
    ``pixel_decoder`` included) and the reference model holding it."""
    torch.manual_seed(seed)
    ref = RefTiTok(image_size=IMAGE, patch_size=PATCH, width=WIDTH,
                   num_layers=LAYERS, num_heads=HEADS,
                   num_latent_tokens=TOKENS, token_size=TOKEN_SIZE,
                   codebook_size=CODEBOOK, is_legacy=True,
                   finetune_decoder=True, num_proxy_codes=PROXY_CODES,
                   pixel_config=make_config(
                       hidden_channels=32, channel_mult=(1, 1, 2),
                       num_res_blocks=1, resolution=IMAGE,
                       z_channels=PIXEL_DIM)).eval()
    generator = torch.Generator().manual_seed(seed)
    official = {k: 0.3 * torch.randn(v.shape, generator=generator)
                for k, v in ref.state_dict().items()}
    ref.load_state_dict(official, strict=True)
    return official, ref


def tiny_marvel(checkpoint, depth=2):
    """A tiny MARVEL stage 1 with the real configs' quantizer (its width)
    and ``model.pretrained`` (its checkpoint path)."""
    real = real_stage1_config(depth).model
    quantizer = copy.deepcopy(real.quantizer.to_dict())
    quantizer['quantizer']['codebook_bits'] = TOKEN_SIZE
    pretrained = {name: dict(load.to_dict(), checkpoint=checkpoint)
                  for name, load in real.pretrained.items()}
    cfg = Config.fromstring(TITOK_STAGE1, '.py').model.to_dict()
    cfg.update(quantizer=quantizer, pretrained=pretrained)
    with DefaultScope.overwrite_default_scope('vistok'):
        return MODELS.build(cfg)


@pytest.fixture(scope='module')
def converted(tmp_path_factory):
    """The release, the reference, the converter's report and the converted
    stage-1 file."""
    folder = tmp_path_factory.mktemp('marvel_release')
    official, ref = official_release()
    release = str(folder / 'tokenizer_titok_tiny.safetensors')
    save_file(official, release)
    config = folder / 'titok_tiny_stage1.py'
    config.write_text(TITOK_STAGE1)
    out = str(folder / 'tokenizer_titok_tiny_stage1_vistok.safetensors')
    report = titok_tool.main(
        [release, out, '--config', str(config), '--stage', '1'])
    return official, ref, report, out


@pytest.fixture
def load_reports(monkeypatch):
    """The reports of the loads ``init_weights`` makes (the real
    ``load_pretrained``, recorded)."""
    reports = []
    real_load = titok_module.load_pretrained

    def recording(*args, **kwargs):
        reports.append(real_load(*args, **kwargs))
        return reports[-1]

    monkeypatch.setattr(titok_module, 'load_pretrained', recording)
    return reports


def test_real_configs_drop_only_the_vq_codebook():
    """x1 / x2 / x4 share one start: the converted release, dropping only
    ``(ema.)quantizer.*``, nothing allowed missing."""
    loads = [real_stage1_config(depth).model.pretrained.to_dict()
             for depth in (1, 2, 4)]
    assert loads[0] == loads[1] == loads[2] == dict(titok=dict(
        checkpoint='checkpoints/tokenizer_titok_l32_imagenet_stage1_'
        'vistok.pth', allow_unexpected=[r'(ema\.)?quantizer\..*']))


@torch.no_grad()
def test_marvel_stage1_from_converted_release(converted, load_reports):
    official, ref, report, out = converted
    # the converter drops exactly the release's pixel_* keys
    pixel_keys = sorted(k for k in official if k.startswith('pixel_'))
    assert len(pixel_keys) > 10 and sorted(report.ignored) == pixel_keys
    assert sorted(report.mapping) == sorted(set(official) - set(pixel_keys))
    # loading drops exactly quantize.* (vistok: the codebook and its EMA
    # copy); every model tensor comes from the file
    model = tiny_marvel(out)
    model.init_weights()
    load, = load_reports
    assert official['quantize.embedding.weight'].shape == (CODEBOOK,
                                                           TOKEN_SIZE)
    assert sorted(ckpt for ckpt, _ in load.allowed_unexpected) == [
        'ema.quantizer.codebook', 'quantizer.codebook']
    assert not load.allowed_missing and not load.allowed_shape_mismatches
    assert load.loaded == sorted(model.state_dict())
    state = load_file(out)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    # the loaded encoder is the release's (legacy layout, [0, 1] images)
    x = torch.rand(2, 3, IMAGE, IMAGE,
                   generator=torch.Generator().manual_seed(1))
    latent = model.encoder(model._to_range(2 * x - 1))
    expected = ref.encoder(pixel_values=x, latent_tokens=ref.latent_tokens)
    torch.testing.assert_close(latent, expected.squeeze(2))
    assert model.encode(2 * x - 1).shape == (2, TOKENS, 2)


@pytest.mark.parametrize('change', ['extra', 'missing'])
def test_any_other_key_is_refused(converted, tmp_path, change):
    """One key more (not the codebook) or one key less stops the load."""
    state = load_file(converted[3])
    if change == 'extra':
        key = 'decoder.extra_scale'
        state[key] = torch.ones(1)
    else:
        key = 'decoder.ln_post.weight'
        del state[key]
    path = str(tmp_path / 'changed.safetensors')
    save_file(state, path)
    model = tiny_marvel(path)
    with pytest.raises(PartialLoadError, match=key.replace('.', r'\.')):
        model.init_weights()
