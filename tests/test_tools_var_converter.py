"""tools/model_converters/var.py (rules: vistok.apis.converters.var): an
official-layout ``var_d*.pth`` -> vistok's VARGenerator, checked against
the independent reference of VAR's ``VAR`` in
``tests/reference/var_transformer_official.py`` (its module and buffer
names are the official ones, so its state dict with random weights is an
official-layout checkpoint, buffers included).

Tiny sizes: depth 2, width 64, 2 heads, 10 classes, 64 codes of 8
channels, scales (1, 2, 3, 4) (30 positions; each scale uses its own Φ
conv). The released depths d16 … d30 (and the 512-px d36) are checked on
the meta device: key by key, parameter counts and the hyper-parameters the
state dict does not hold."""
import math
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from reference.var_transformer_official import (
    build_vae_quantizer,
    build_var,
)
from safetensors.torch import load_file

import vistok.models  # noqa: F401
from _helpers import REPO_ROOT, load_tool, torch_threads
from vistok.apis.converters import var
from vistok.models.generators.sampling import TokenSampler
from vistok.models.generators.var import VARGenerator
from vistok.models.utils.frozen import load_frozen_weights
from vistok.utils.convert import convert_state_dict

D16 = osp.join(REPO_ROOT, 'configs/var',
               'var_msrq-4k_d16_8xb96-200e_in1k-256.py')
DEPTH, WIDTH, HEADS, CLASSES, CODES, CVAE = 2, 64, 2, 10, 64, 8
SCALES = (1, 2, 3, 4)
#: VAR's Euclidean look-up (``using_znorm=False``), given explicitly
PLAIN_VQ = dict(type='VectorQuantizer', codebook_size=CODES,
                embed_dim=CVAE, use_l2_norm=False)
TINY_CONFIG = f"""
_base_ = [{D16!r}]
model = dict(
    depth={DEPTH}, embed_dim={WIDTH}, num_heads={HEADS},
    num_classes={CLASSES}, patch_nums={SCALES},
    quantizer=dict(type='MultiScaleResidualQuantizer', scales={SCALES},
                   quantizer={PLAIN_VQ!r}),
    quantizer_weights='{{tokenizer}}')
"""
DERIVED_BUFFERS = {'lvl_1L', 'attn_bias_for_masking'} | {
    f'blocks.{i}.attn.zero_k_bias' for i in range(DEPTH)}
#: VAR's ``build_vae_var`` releases: depth -> parameters without the VQVAE,
#: counted on the reference (VAR's code; README: 310M, 600M, 1.0B, 2.0B)
RELEASED = {16: 310_283_520, 20: 600_917_136, 24: 1_033_399_360,
            30: 2_010_020_356}
#: var_d36.pth: 512 px, shared AdaLN (README: 2.3B)
D36_SCALES = (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)

tool = load_tool('tools/model_converters/var.py', 'converter_var')
sample_tool = load_tool('tools/sample.py', 'sample_for_var_converter')


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one intra-op thread is the fastest (and spares the
    thread pool's spin-waits on a busy machine)."""
    with torch_threads(1):
        yield


def reference(seed=0, **options):
    """The reference VAR (cond_drop_rate 0 unless given: VAR draws label
    dropout on every forward) with random weights large enough that every
    block, gate and Φ conv matters; its official state dict."""
    torch.manual_seed(seed)
    vae = build_vae_quantizer(patch_nums=SCALES, V=CODES, Cvae=CVAE)
    kwargs = dict(num_classes=CLASSES, embed_dim=WIDTH, num_heads=HEADS,
                  cond_drop_rate=0.0, patch_nums=SCALES)
    kwargs.update(options)
    ref = build_var(DEPTH, vae, **kwargs).eval()
    generator = torch.Generator().manual_seed(seed)

    def draw(key, value):
        noise = torch.randn(value.shape, generator=generator)
        if key.endswith('scale_mul_1H11'):
            return math.log(4.0) + 0.3 * noise
        if key.endswith('bias'):
            return 0.1 * noise
        if value.dim() >= 2 and key not in ('pos_start', 'pos_1LC'):
            gain = 2.0 if key == 'head.weight' else 1.0
            return gain * noise / value[0].numel()**0.5
        return noise

    official = {
        k: v.clone() if k in DERIVED_BUFFERS else draw(k, v)
        for k, v in ref.state_dict().items()
    }
    ref.load_state_dict(official, strict=True)
    quant = vae.quantize
    with torch.no_grad():
        quant.embedding.weight.normal_(generator=generator)
        for phi in quant.quant_resi.qresi_ls:
            phi.weight.normal_(generator=generator).div_(3 * CVAE**0.5)
            phi.bias.normal_(generator=generator).mul_(0.1)
    return ref, official


def tokenizer_state(ref):
    """The quantizer of a vistok tokenizer checkpoint holding VAR's VQVAE
    quantizer (what the VQVAE converter writes under ``quantizer.``)."""
    quant = ref.vae_quant_proxy[0]
    state = {'quantizer.quantizer.codebook': quant.embedding.weight}
    for k, phi in enumerate(quant.quant_resi.qresi_ls):
        state[f'quantizer.phi_convs.{k}.weight'] = phi.weight
        state[f'quantizer.phi_convs.{k}.bias'] = phi.bias
    return {k: v.detach().clone() for k, v in state.items()}


@pytest.fixture(scope='module')
def converted(tmp_path_factory):
    """The reference, the CLI's report and the converted VARGenerator loaded
    as ``tools/sample.py`` loads a generator (quantizer from the tokenizer
    checkpoint, then the converted weights strictly)."""
    root = tmp_path_factory.mktemp('var')
    ref, official = reference()
    torch.save(official, root / 'var_d2.pth')  # a plain state dict
    tokenizer = str(root / 'tokenizer.pth')
    torch.save(dict(state_dict=tokenizer_state(ref)), tokenizer)
    config = str(root / 'tiny.py')
    with open(config, 'w') as f:
        f.write(TINY_CONFIG.replace('{tokenizer}', tokenizer))
    out = str(root / 'var_d2.safetensors')
    report = tool.main([str(root / 'var_d2.pth'), out, '--config', config])
    model = sample_tool.load_generator(Config.fromfile(config), out,
                                       tokenizer, torch.device('cpu'))
    return ref, official, report, model, config


def random_maps(batch, seed):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, CODES, (batch, s, s), generator=generator)
            for s in SCALES]


def relative_error(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def test_report_maps_one_to_one_and_drops_only_the_derived_buffers(
        converted):
    ref, official, report, model, config = converted
    out = osp.join(osp.dirname(config), 'var_d2.safetensors')
    assert report.ok and report.allowed_missing == []
    assert set(report.ignored) == DERIVED_BUFFERS
    mapping = dict(report.mapping)
    assert mapping.pop('class_emb.weight') == ('class_emb.embedding.weight', )
    assert all(targets == (key, ) for key, targets in mapping.items())
    assert set(mapping) | DERIVED_BUFFERS | {'class_emb.weight'} == \
        set(official)
    # the output holds exactly the model's state dict, with VAR's values
    written = load_file(out)
    assert written.keys() == model.state_dict().keys()
    assert torch.equal(written['class_emb.embedding.weight'],
                       official['class_emb.weight'])


@torch.no_grad()
def test_teacher_forcing_logits_match_the_official_forward(converted):
    ref, _, _, model, _ = converted
    labels = torch.tensor([0, 3, 9, CLASSES])  # CLASSES: the dropped class
    maps = random_maps(4, seed=1)
    inputs = ref.vae_quant_proxy[0].idxBl_to_var_input(
        [m.flatten(1) for m in maps])
    expected = ref(labels, inputs)
    logits = model.logits(maps, labels)
    assert logits.shape == expected.shape == (4, 30, CODES)
    assert relative_error(logits, expected) < 1e-5
    # not degenerate: classes, the null class and positions all differ
    assert not torch.allclose(logits[0], logits[3], atol=1e-2)
    assert logits.argmax(-1).unique().numel() > 20


def test_training_forward_draws_label_dropout_and_stochastic_depth_alike(
        converted):
    """Train mode from one seed: VAR drops labels with one ``torch.rand(B)``
    and stochastic depth with one Bernoulli draw per branch; vistok's
    forward makes the same draws in the same order."""
    _, official, _, _, _ = converted
    ref, _ = reference(cond_drop_rate=0.3, drop_path_rate=0.3)
    ref.load_state_dict(official)
    model = VARGenerator(
        quantizer=dict(type='MultiScaleResidualQuantizer', scales=SCALES,
                       quantizer=PLAIN_VQ), patch_nums=SCALES, depth=DEPTH,
        embed_dim=WIDTH, num_heads=HEADS, num_classes=CLASSES,
        class_dropout_prob=0.3, drop_path_rate=0.3)
    state, _ = convert_state_dict(official, var.RULES, model,
                                  ignore_unmapped=var.IGNORE_UNMAPPED)
    model.load_state_dict(state, strict=True)
    load_frozen_weights(model.quantizer, {
        k[len('quantizer.'):]: v
        for k, v in tokenizer_state(ref).items()
    }, 'the reference quantizer')
    labels = torch.arange(8) % CLASSES
    maps = random_maps(8, seed=2)
    inputs = ref.vae_quant_proxy[0].idxBl_to_var_input(
        [m.flatten(1) for m in maps])
    ref.train()
    model.train()
    with torch.no_grad():
        torch.manual_seed(5)
        expected = ref(labels, inputs)
        torch.manual_seed(5)
        logits = model.logits(maps, labels)
        assert relative_error(logits, expected) < 1e-5
        model.eval()
        assert not torch.allclose(model.logits(maps, labels), logits,
                                  atol=1e-3)  # something was dropped


@pytest.mark.parametrize('cfg, top_k, top_p, seed', [
    (0.0, 1, 0.0, 0),  # greedy, no guidance
    (2.0, 1, 0.0, 0),  # greedy, guidance ramped over the scales
    (1.5, 8, 0.9, 3),  # VAR's sampling: top-k, top-p, guidance
    (4.0, 0, 0.0, 7),  # plain sampling, strong guidance
])
def test_generation_matches_autoregressive_infer_cfg(converted, cfg, top_k,
                                                      top_p, seed):
    """The same indices at every scale and the same ``f̂``: VAR's
    ``cfg`` is vistok's linear guidance ``1 + cfg``, and with one seeded
    generator both draw one multinomial per scale in the same order."""
    ref, _, _, model, _ = converted
    labels = torch.tensor([0, 1, 2, 3, 9, 9])
    ids, f_hat = ref.autoregressive_infer_cfg(len(labels), labels,
                                              g_seed=seed, cfg=cfg,
                                              top_k=top_k, top_p=top_p)
    sampler = TokenSampler(temperature=1.0, top_k=top_k or None,
                           top_p=top_p or None, guidance_scale=1.0 + cfg,
                           guidance_schedule='linear')
    maps = model.generate(labels, sampler,
                          torch.Generator().manual_seed(seed))
    for k, side in enumerate(SCALES):
        assert maps[k].shape == (len(labels), side, side)
        assert torch.equal(maps[k].flatten(1), ids[k]), f'scale {k}'
    assert relative_error(model.quantizer.decode(maps), f_hat) < 1e-5
    assert torch.cat([m.flatten(1) for m in maps], 1).unique().numel() > 8


def released_pair(depth, scales=None, shared_aln=False):
    """The reference VAR-d``depth`` and the VARGenerator a config builds
    for it, on the meta device."""
    scales = scales or (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    with torch.device('meta'):
        ref = build_var(depth, build_vae_quantizer(patch_nums=scales),
                        shared_aln=shared_aln, patch_nums=scales)
        model = VARGenerator(
            depth=depth, shared_aln=shared_aln, patch_nums=scales,
            quantizer=dict(type='MultiScaleResidualQuantizer', scales=scales,
                           quantizer=dict(type='VectorQuantizer',
                                          codebook_size=4096, embed_dim=32,
                                          use_l2_norm=False)))
    return ref, model


def count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize('depth', sorted(RELEASED))
def test_released_depths_map_onto_the_default_generator(depth):
    """``VARGenerator(depth=d)`` with VAR's tokenizer is VAR-d: every key
    maps with its shape, equal parameter counts (those of VAR's code), and
    the hyper-parameters no tensor holds are ``build_vae_var``'s."""
    ref, model = released_pair(depth)
    _, report = convert_state_dict(ref.state_dict(), var.RULES, model,
                                   ignore_unmapped=var.IGNORE_UNMAPPED)
    assert report.ok and not report.allowed_missing
    assert len(report.ignored) == 2 + depth
    assert count(ref) == count(model) == RELEASED[depth]
    assert model.embed_dim == 64 * depth
    assert model.class_dropout_prob == ref.cond_drop_rate == 0.1
    for ours, theirs in zip(model.blocks, ref.blocks):
        assert ours.attn.num_heads == theirs.attn.num_heads == depth
        assert ours.attn.attn_l2_norm and theirs.attn.attn_l2_norm
        assert ours.attn.scale == theirs.attn.scale == 1
        assert ours.attn.max_log_scale_mul == pytest.approx(
            theirs.attn.max_scale_mul, rel=1e-7)
        assert ours.ln_wo_grad.eps == theirs.ln_wo_grad.eps == 1e-6
        assert ours.ffn.fc1.out_features == theirs.ffn.fc1.out_features
        ours_p = getattr(ours.drop_path, 'drop_prob', 0.0)
        theirs_p = getattr(theirs.drop_path, 'drop_prob', 0.0)
        assert ours_p == pytest.approx(theirs_p, rel=1e-6)
    assert model.blocks[-1].drop_path.drop_prob == pytest.approx(
        0.1 * depth / 24, rel=1e-6)


def test_512px_d36_maps_with_shared_adaln():
    ref, model = released_pair(36, D36_SCALES, shared_aln=True)
    _, report = convert_state_dict(ref.state_dict(), var.RULES, model,
                                   ignore_unmapped=var.IGNORE_UNMAPPED)
    assert report.ok and 'shared_ada_lin.1.weight' in report.mapping
    assert count(ref) == count(model) == 2_353_893_904


def test_layouts_the_model_cannot_take_are_refused(converted, tmp_path):
    ref, official, _, model, config = converted
    assert var.check_layout(official, model)[1].startswith('VAR-d2: width')
    # another depth: the CLI refuses before writing anything
    deeper = dict(official)
    deeper.update({k.replace('blocks.1.', 'blocks.2.'): v
                   for k, v in official.items() if k.startswith('blocks.1.')})
    torch.save(deeper, tmp_path / 'var_d3.pth')
    with pytest.raises(var.LayoutError, match='model.depth=3'):
        tool.main([str(tmp_path / 'var_d3.pth'), str(tmp_path / 'x.pth'),
                   '--config', config])
    assert not osp.exists(tmp_path / 'x.pth')
    # scales: lvl_1L of (1, 2, 5) against the model's (1, 2, 3, 4)
    other = dict(official, lvl_1L=torch.repeat_interleave(
        torch.arange(3), torch.tensor([1, 4, 25]))[None])
    with pytest.raises(var.LayoutError, match=r'\[1, 2, 5\].*patch_nums'):
        var.check_layout(other, model)
    # heads, cosine attention, shared AdaLN, the mask, the key bias
    four_heads = VARGenerator(
        quantizer=dict(type='MultiScaleResidualQuantizer', scales=SCALES,
                       quantizer=PLAIN_VQ), patch_nums=SCALES, depth=DEPTH,
        embed_dim=WIDTH, num_heads=4, num_classes=CLASSES)
    with pytest.raises(var.LayoutError, match='model.num_heads'):
        var.check_layout(official, four_heads)
    no_l2 = {k: v for k, v in official.items() if 'scale_mul' not in k}
    with pytest.raises(var.LayoutError, match='model.attn_l2_norm'):
        var.check_layout(no_l2, model)
    shared = dict(official, **{'blocks.0.ada_gss': torch.zeros(1, 1, 6, 64)})
    with pytest.raises(var.LayoutError, match='model.shared_aln'):
        var.check_layout(shared, model)
    causal = dict(official, attn_bias_for_masking=torch.zeros(1, 1, 30, 30))
    with pytest.raises(var.LayoutError, match='block-causal'):
        var.check_layout(causal, model)
    biased = dict(official)
    biased['blocks.1.attn.zero_k_bias'] = torch.ones(WIDTH)
    with pytest.raises(var.LayoutError, match='zero_k_bias'):
        var.check_layout(biased, model)
