"""projects/SeiTpp/tools/convert_tokenadapt.py (rules:
projects.SeiTpp.seitpp.convert): the released TokenAdapt weights (f =
``conversion_function``, g = ``reverse_transform`` of naver-ai/tokenadapt's
classifier) -> vistok's TokenAdapt, checked against the independent
reference of the official modules in ``tests/reference/tokenadapt_official.py``
(its module names are the official key names, so its state dict with random
weights is an official-layout ``tokenadapt.ckpt``). Tiny sizes: 8-d codes,
23 of them, width 128 with 2 heads of 64 (the official head width), depth
2, MLP 256, f on an 8 x 8 token grid, g on 6 x 6; the release size is
checked key by key on the meta device and forward once on the CPU."""
import argparse

import pytest
import torch
from mmengine.config import Config
from reference.tokenadapt_official import RefTokenAdapt

from _helpers import load_tool
from projects.SeiTpp.seitpp import convert
from projects.SeiTpp.seitpp.token_adapt import TokenAdapt
from vistok.apis.converters.vitvqgan import LayoutError
from vistok.models.data_preprocessors import TokenEmbeddingPreprocessor
from vistok.utils.checkpoint import CheckpointLoadError
from vistok.utils.convert import ConversionError, convert_state_dict
from vistok.utils.weights import load_state_dict_file

CODE_DIM, CODES, WIDTH, HEADS, MLP, DEPTH, GRID, OUT_GRID, SCALE = (8, 23,
                                                                    128, 2,
                                                                    256, 2, 8,
                                                                    6, 2)
TINY = dict(num_codes=CODES, code_dim=CODE_DIM, scale=SCALE,
            embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS,
            mlp_ratio=MLP / WIDTH, grid=GRID, out_grid=OUT_GRID)
TINY_REF = dict(code_dim=CODE_DIM, num_codes=CODES, dim=WIDTH, depth=DEPTH,
                heads=HEADS, mlp_dim=MLP, f_image_size=GRID * SCALE,
                g_image_size=OUT_GRID * SCALE, patch_size=SCALE)
CONFIG = """
custom_imports = dict(imports=['projects.SeiTpp.seitpp'],
                      allow_failed_imports=False)
default_scope = 'vistok'
model = dict(type='TokenAdapt', {options})
"""
POS_KEYS = ('conversion_function.1.de_pos_embedding',
            'reverse_transform.0.en_pos_embedding')
#: keys of the classifier the released file is loaded into (strict=False)
CLASSIFIER_KEYS = ('cls_token', 'pos_embed', 'patch_embed.proj.weight',
                   'blocks.0.norm1.weight', 'head.weight')

tool = load_tool('projects/SeiTpp/tools/convert_tokenadapt.py',
                 'converter_tokenadapt')


def reference(seed=0, **sizes):
    """The tiny reference (``sizes`` override) with random weights and its
    state dict."""
    ref = RefTokenAdapt(**{**TINY_REF, **sizes}).eval()
    return ref, randomize(ref, seed)


def randomize(ref, seed):
    """Random weights (the fixed sin-cos tables kept) put into ``ref``;
    returns its state dict."""
    generator = torch.Generator().manual_seed(seed)

    def draw(key, value):
        """Unit-gain weights, norm scales near 1, small biases."""
        if key in POS_KEYS:
            return value.clone()
        noise = torch.randn(value.shape, generator=generator)
        if value.dim() == 1:
            return 1 + 0.1 * noise if 'norm.weight' in key else 0.02 * noise
        return noise / value[0].numel()**0.5

    official = {k: draw(k, v) for k, v in ref.state_dict().items()}
    ref.load_state_dict(official, strict=True)
    return official


def with_classifier_keys(official):
    generator = torch.Generator().manual_seed(9)
    return dict(official, **{k: torch.randn(3, 2, generator=generator)
                             for k in CLASSIFIER_KEYS})


def write_config(path, **options):
    text = ', '.join(f'{k}={v!r}' for k, v in {**TINY, **options}.items())
    with open(path, 'w') as f:
        f.write(CONFIG.format(options=text))
    return str(path)


def run_tool(checkpoint, config, out, *extra):
    return tool.main([str(checkpoint), str(out), '--config', config, *extra])


def load_converted(config, out):
    """The converted file loaded strictly into the config's TokenAdapt."""
    model = convert.build_token_adapt(config)
    model.load_state_dict(load_state_dict_file(str(out), 'out', ''),
                          strict=True)
    return model


def relative_error(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def grid_logits(ref, x):
    """The reference's ``(B, N, K)`` logits as vistok's ``(B, K, h, w)``
    (raster order, as ``forward_inversion``'s reshape)."""
    logits = ref.inversion_logits(x)
    side = ref.out_grid
    return logits.transpose(1, 2).reshape(len(x), -1, side, side)


@torch.no_grad()
def test_converted_weights_match_the_official_forward(tmp_path):
    ref, official = reference()
    path = tmp_path / 'tokenadapt.ckpt'
    torch.save(with_classifier_keys(official), path)  # main.py's layout
    config = write_config(tmp_path / 'tiny.py')
    out = tmp_path / 'tokenadapt.pth'
    report = run_tool(path, config, out)
    model = load_converted(config, out)
    generator = torch.Generator().manual_seed(1)
    z = torch.randn(3, CODE_DIM, GRID, GRID, generator=generator)
    # f: forward_conversion
    lifted = model.f(z)
    assert lifted.shape == (3, CODE_DIM, SCALE * GRID, SCALE * GRID)
    assert relative_error(lifted, ref.forward_conversion(z)) < 1e-5
    # g: the logits forward_inversion arg-maxes, and its codes exactly
    x = torch.randn(3, CODE_DIM, SCALE * OUT_GRID, SCALE * OUT_GRID,
                    generator=generator)
    logits = model.g(x)
    assert logits.shape == (3, CODES, OUT_GRID, OUT_GRID)
    assert relative_error(logits, grid_logits(ref, x)) < 1e-5
    codes = logits.argmax(1)
    assert torch.equal(codes, ref.forward_inversion(x).argmax(1))
    assert codes.unique().numel() > CODES // 2
    # the official chain with a crop as A: g(A(f(z)))
    box = (slice(None), slice(None), slice(2, 14), slice(3, 15))
    assert torch.equal(
        model.g(model.f(z)[box]).argmax(1),
        ref.forward_inversion(ref.forward_conversion(z)[box]).argmax(1))
    # bookkeeping: every TokenAdapt tensor mapped, the tables and the
    # classifier's keys dropped; the file is a plain f.* / g.* state dict
    assert set(report.ignored) == set(POS_KEYS) | set(CLASSIFIER_KEYS)
    assert set(report.mapping) == set(official) - set(POS_KEYS)
    assert not report.allowed_missing
    state = load_state_dict_file(str(out), 'out', '')
    assert {k.split('.')[0] for k in state} == {'f', 'g'}
    assert torch.equal(state['g.proj_out.weight'][:, :, 0, 0],
                       official['reverse_transform.1.weight'])
    assert torch.equal(state['f.embed.weight'][:, :, 0, 0],
                       official['conversion_function.0.weight'])


def test_a_training_checkpoint_needs_trust_and_converts_the_same(tmp_path):
    """DeiT-style ``{'model': ..., 'args': Namespace}``: a full pickle,
    refused without ``--trust-checkpoint``; with it, the same tensors as the
    bare state dict."""
    _, official = reference(seed=3)
    config = write_config(tmp_path / 'tiny.py')
    bare = tmp_path / 'bare.ckpt'
    torch.save(official, bare)
    run_tool(bare, config, tmp_path / 'bare.pth')
    wrapped = tmp_path / 'checkpoint.pth'
    torch.save(dict(model=with_classifier_keys(official),
                    args=argparse.Namespace(lr=1e-3), epoch=3), wrapped)
    with pytest.raises(CheckpointLoadError, match='--trust-checkpoint'):
        run_tool(wrapped, config, tmp_path / 'untrusted.pth')
    assert not (tmp_path / 'untrusted.pth').exists()
    out = tmp_path / 'trusted.safetensors'
    run_tool(wrapped, config, out, '--trust-checkpoint')
    expected = load_state_dict_file(str(tmp_path / 'bare.pth'), 'out', '')
    state = load_state_dict_file(str(out), 'out', '')
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], expected[k]) for k in expected)


def test_incomplete_foreign_or_mismatched_inputs_are_refused(tmp_path):
    _, official = reference()
    config = write_config(tmp_path / 'tiny.py')
    model = convert.build_token_adapt(config)
    out = tmp_path / 'bad.pth'
    # a classifier checkpoint without TokenAdapt, through the tool
    foreign = tmp_path / 'classifier.pth'
    torch.save({k: torch.zeros(2) for k in CLASSIFIER_KEYS}, foreign)
    with pytest.raises(LayoutError, match='not a TokenAdapt checkpoint'):
        run_tool(foreign, config, out)
    assert not out.exists()
    # missing tensors: all named, in the official layout's names
    gone = ('reverse_transform.1.bias',
            'conversion_function.1.transformer.layers.1.0.fn.to_qkv.weight')
    incomplete = tmp_path / 'incomplete.pth'
    torch.save({k: v for k, v in official.items() if k not in gone},
               incomplete)
    with pytest.raises(LayoutError, match='lacks 2 TokenAdapt tensors') as e:
        run_tool(incomplete, config, out)
    assert all(key in str(e.value) for key in gone)
    assert not out.exists()
    # a deeper official model than the config
    _, deeper = reference(depth=DEPTH + 1)
    with pytest.raises(LayoutError, match='no place for') as e:
        convert.check_layout(deeper, model)
    assert 'conversion_function.1.transformer.layers.2.0.norm.bias' in str(
        e.value)
    # learned (not sin-cos) position tables: another layout
    learned = dict(official)
    learned[POS_KEYS[1]] = torch.randn(official[POS_KEYS[1]].shape)
    with pytest.raises(LayoutError, match='sin-cos'):
        convert.check_layout(learned, model)
    # configs that would give the weights another meaning
    gelu = TokenAdapt(**TINY, vit=dict(qkv_bias=False, pos_embed='sincos',
                                       mlp_act='gelu', norm_eps=1e-6))
    with pytest.raises(LayoutError) as e:
        convert.check_layout(official, gelu)
    assert "model.vit.mlp_act='tanh'" in str(e.value)
    assert 'model.vit.norm_eps=1e-05' in str(e.value)
    narrow = TokenAdapt(**{**TINY, 'num_heads': 4})  # heads of 32
    with pytest.raises(LayoutError, match='model.num_heads = embed_dim / 64'):
        convert.check_layout(official, narrow)
    # another codebook size: the shapes do not fit
    with pytest.raises(ConversionError, match='shape mismatch') as e:
        convert.convert_official(official,
                                 TokenAdapt(**{**TINY, 'num_codes': 24}))
    assert {t for _, t, _, _ in e.value.report.shape_mismatches} == {
        'g.proj_out.weight', 'g.proj_out.bias'}


def test_the_token_adapt_of_any_config_is_found(tmp_path):
    """The model itself, a SeiT++ preprocessor's ``token_adapt`` or a
    TokenAdaptTrainer's; a SeiT config (``token_adapt=None``) is refused."""
    token_adapt = dict(type='TokenAdapt', **TINY)
    places = [dict(model=token_adapt),
              dict(model=dict(type='TokenViTClassifier',
                              data_preprocessor=dict(
                                  type='TokenEmbeddingPreprocessor',
                                  token_adapt=token_adapt))),
              dict(model=dict(type='TokenAdaptTrainer',
                              token_adapt=token_adapt))]
    for cfg in places:
        model = convert.build_token_adapt(Config(cfg))
        assert isinstance(model, TokenAdapt)
        assert model.num_codes == CODES and model.g.grid_size == (OUT_GRID,
                                                                  OUT_GRID)
    seit = Config(dict(model=dict(type='SeiTViTClassifier',
                                  data_preprocessor=dict(token_adapt=None))))
    with pytest.raises(LayoutError, match='has no TokenAdapt'):
        convert.build_token_adapt(seit)


@torch.no_grad()
def test_cli_output_loads_into_the_token_preprocessor(tmp_path):
    """The written file fills the preprocessor's frozen TokenAdapt, and its
    training path (flip / affine off, RandomResizedCrop of the whole map)
    gives exactly the official chain's codes: embed, forward_conversion,
    bicubic resize to s·crop, forward_inversion."""
    ref, official = reference(seed=5)
    path = tmp_path / 'tokenadapt.ckpt'
    torch.save(official, path)
    out = tmp_path / 'tokenadapt.pth'
    run_tool(path, write_config(tmp_path / 'tiny.py'), out)
    generator = torch.Generator().manual_seed(6)
    codebook = torch.randn(CODES, CODE_DIM, generator=generator)
    preprocessor = TokenEmbeddingPreprocessor(
        codebook=codebook, crop_size=OUT_GRID, rrc_scale=(1.0, 1.0),
        rrc_ratio=(1.0, 1.0), noise_prob=0.0, color_adapt_prob=0.0,
        mixup=None, token_adapt=dict(type='TokenAdapt', **TINY),
        token_adapt_checkpoint=str(out), token_adapt_ratio=1.0,
        token_adapt_aug=dict(flip_prob=0.0, affine_prob=0.0),
        token_adapt_mixup=None)
    preprocessor.load_weights()
    assert not list(preprocessor.token_adapt.parameters())  # frozen
    codes = torch.randint(CODES, (4, GRID, GRID), generator=generator)
    result = preprocessor(dict(indices=codes, gt_label=torch.arange(4)),
                          training=True)
    lifted = ref.forward_conversion(codebook[codes].permute(0, 3, 1, 2))
    resized = torch.nn.functional.interpolate(
        lifted, size=SCALE * OUT_GRID, mode='bicubic', align_corners=False)
    expected = ref.forward_inversion(resized).argmax(1)
    assert expected.unique().numel() > CODES // 2
    assert torch.equal(result['inputs'], expected)
    assert torch.equal(result['data_samples'], torch.arange(4))


def test_release_layout_maps_onto_token_adapt():
    """The release size (meta tensors: f 32 x 32 -> 64 x 64, g 56 x 56 ->
    28 x 28, width 384, 6 heads, MLP 1536, depth 1, 391 codes of 32) maps
    one to one onto ``TokenAdapt()`` and onto the TokenAdapt of the
    converter's default config (the SeiT++ fine-tuning config); vistok has
    (2·2 - 1)·32 more parameters (the pixel head's bias per output
    value)."""
    with torch.device('meta'):
        ref = RefTokenAdapt()
        models = [TokenAdapt(), convert.build_token_adapt(tool.DEFAULT_CONFIG)]
    official = dict(ref.state_dict())
    trained = sum(p.numel() for p in ref.parameters() if p.requires_grad)
    for model in models:
        ignored, _ = convert.check_layout(official, model)
        _, report = convert_state_dict(official, convert.rules_for(model),
                                       model, ignore_unmapped=ignored)
        assert set(report.ignored) == set(POS_KEYS)
        assert set(report.mapping) == set(official) - set(POS_KEYS)
        assert sum(p.numel()
                   for p in model.parameters()) == trained + 3 * 32


@torch.no_grad()
def test_release_size_forward_matches():
    """At the release size, with the float32 position tables of the official
    ``layers.py`` (< 2e-6 from vistok's): one map through f, a 56 x 56 crop
    of it through g."""
    ref = RefTokenAdapt().eval()
    official = randomize(ref, seed=7)
    model = TokenAdapt().eval()
    convert.convert_official(official, model)
    z = torch.randn(1, 32, 32, 32, generator=torch.Generator().manual_seed(8))
    lifted = model.f(z)
    assert relative_error(lifted, ref.forward_conversion(z)) < 1e-5
    x = lifted[..., 3:59, 5:61]
    logits = model.g(x)
    assert relative_error(logits, grid_logits(ref, x)) < 1e-5
    assert torch.equal(logits.argmax(1), ref.forward_inversion(x).argmax(1))
