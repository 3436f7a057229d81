"""tools/model_converters/titok_generator.py (rules:
vistok.apis.converters.titok_generator): TiTok's released MaskGIT generators
(``UViTBert`` of S-128, ``ImageBert`` of B-64 / L-32) -> vistok's
MaskGITGenerator, checked against the independent reference of
1d-tokenizer's ``modeling/maskgit.py`` in
``tests/reference/titok_generator_official.py`` (official module names, so
its state dict with random weights is an official-layout checkpoint); the
reference ``ImageBert`` is itself checked against ``transformers``'
``BertModel``, the class the official code builds.

Tiny sizes: width 32, 4 heads, MLP 64, 16 codes, 5 classes, 8 tokens; the
U-ViT has 4 layers (2 in, mid, 2 out), the BERT 2. The full-size releases
are checked on the meta device: key by key and parameter counts."""
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from reference import titok_generator_official as official_ref
from safetensors.torch import load_file

import vistok.models  # noqa: F401
from _helpers import REPO_ROOT, load_tool, torch_threads
from vistok.apis.converters import titok_generator as conv
from vistok.models.generators.maskgit import MaskGITGenerator
from vistok.utils.convert import ConversionError, convert_state_dict

#: vistok's generator config of each release
RELEASE_CONFIGS = {
    name: osp.join(REPO_ROOT, 'configs/maskgit',
                   f'maskgit_vq-4k_{arch}-titok-{name}_32xb64-500k_in1k-256.py')
    for name, arch in (('s128', 'uvit'), ('b64', 'bert'), ('l32', 'bert'))}
S128 = RELEASE_CONFIGS['s128']
WIDTH, HEADS, FFN, CODES, CLASSES, TOKENS = 32, 4, 64, 16, 5, 8
LAYERS = dict(UViTBert=4, ImageBert=2)
ARCH = dict(
    UViTBert=dict(dim=WIDTH, depth=LAYERS['UViTBert'], num_heads=HEADS,
                  ffn_dim=FFN, qkv_bias=False, long_skip=True),
    ImageBert=dict(dim=WIDTH, depth=LAYERS['ImageBert'], num_heads=HEADS,
                   ffn_dim=FFN, qkv_bias=True, post_norm=True))
EPS = dict(UViTBert=1e-5, ImageBert=1e-12)
KINDS = sorted(ARCH)
#: TiTok-S-128's generator (UViTBert), counted on the reference
S128_PARAMS = 294_990_848
#: the B-64 / L-32 ImageBert, counted on the reference ("177M")
BERT_PARAMS = dict(b64=177_227_008, l32=177_202_432)
#: BERT's token-type table (2 x 768): row 0 is folded into the positions,
#: row 1 is never used; vistok has no such table
TOKEN_TYPE_PARAMS = 2 * 768

tool = load_tool('tools/model_converters/titok_generator.py',
                 'converter_titok_generator')


@pytest.fixture(autouse=True)
def one_thread():
    with torch_threads(1):
        yield


def tiny_config(tmp_path, kind, **model):
    model = dict(arch=dict(ARCH[kind], _delete_=True), vocab_size=CODES,
                 num_classes=CLASSES, token_shape=(TOKENS, ),
                 norm_eps=EPS[kind], **model)
    path = tmp_path / f'{kind}.py'
    path.write_text(f'_base_ = [{S128!r}]\nmodel = {model!r}\n')
    return str(path)


def build(config):
    cfg = Config.fromfile(config)
    return MaskGITGenerator(**{k: v for k, v in cfg.model.items()
                               if k != 'type'})


def reference(kind, seed=0):
    cls = getattr(official_ref, kind)
    ref = cls(codebook_size=CODES, num_classes=CLASSES, image_seq_len=TOKENS,
              hidden_size=WIDTH, num_hidden_layers=LAYERS[kind],
              num_attention_heads=HEADS, intermediate_size=FFN)
    return official_ref.randomize_(ref, torch.Generator().manual_seed(seed)
                                   ).eval()


def inputs(seed=1):
    """Tokens with about a third masked (the mask id is ``CODES``), and
    labels covering every class."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, CODES, (6, TOKENS), generator=g)
    tokens[torch.rand(tokens.shape, generator=g) < 0.35] = CODES
    labels = torch.arange(6) % CLASSES
    return tokens, labels


def relative_error(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize('kind', KINDS)
def test_converted_generators_match_the_official_forward(tmp_path, kind):
    ref = reference(kind)
    checkpoint = tmp_path / 'generator.bin'
    torch.save(ref.state_dict(), checkpoint)
    out = tmp_path / 'converted.safetensors'
    config = tiny_config(tmp_path, kind)
    report = tool.main([str(checkpoint), str(out), '--config', config])
    assert not report.allowed_missing
    model = build(config).eval()
    model.load_state_dict(load_file(str(out)), strict=True)
    tokens, labels = inputs()
    assert (tokens == CODES).any() and (tokens != CODES).any()
    with torch.no_grad():
        for drop in (0.0, 1.0):  # class-conditional, then the null class
            expected = ref(tokens, labels.clone(), cond_drop_prob=drop)
            vistok_labels = labels if drop == 0 else torch.full_like(
                labels, CLASSES)
            got = model.logits(tokens, vistok_labels)
            assert got.shape == (6, TOKENS, CODES)
            assert relative_error(got, expected) < 1e-5, (kind, drop)


def test_reference_image_bert_is_transformers_bert():
    """The reference's BERT (written from modeling_bert.py) against the
    ``BertModel`` ``ImageBert`` builds, same weights (guards the reference
    itself: post-LN order, the token type, the embedding LayerNorm)."""
    transformers = pytest.importorskip('transformers')
    ref = reference('ImageBert')
    bert = transformers.BertModel(transformers.BertConfig(
        vocab_size=CODES + CLASSES + 2, hidden_size=WIDTH,
        num_hidden_layers=LAYERS['ImageBert'], num_attention_heads=HEADS,
        intermediate_size=FFN, hidden_act='gelu',
        max_position_embeddings=TOKENS + 1, layer_norm_eps=1e-12,
        pad_token_id=None, position_embedding_type='absolute'),
        add_pooling_layer=False).eval()
    state = {k[len('model.'):]: v for k, v in ref.state_dict().items()
             if not k.startswith('model.lm_head.')}
    bert.load_state_dict(state, strict=True)
    tokens, labels = inputs()
    ids = torch.cat([labels[:, None] + CODES + 1, tokens], dim=1)
    with torch.no_grad():
        expected = bert(input_ids=ids)[0]
        got = ref.model(ids)
    assert relative_error(got, expected) < 1e-5


@pytest.mark.parametrize('kind', KINDS)
def test_missing_or_extra_keys_are_refused(tmp_path, kind):
    config = tiny_config(tmp_path, kind)
    state = reference(kind).state_dict()
    model = build(config)
    conv.convert_official(state, model)  # the complete release converts
    prefix = 'model.encoder.layer.1.' if kind == 'ImageBert' else \
        'out_blocks.0.'
    for drop in (prefix + 'output.dense.bias' if kind == 'ImageBert' else
                 prefix + 'skip_linear.bias',
                 'model.embeddings.LayerNorm.weight'
                 if kind == 'ImageBert' else 'norm.weight'):
        partial = {k: v for k, v in state.items() if k != drop}
        with pytest.raises(ConversionError, match='missing'):
            conv.convert_official(partial, build(config))
    with pytest.raises(ConversionError, match='unmapped'):
        conv.convert_official({**state, prefix + 'extra.weight':
                               torch.zeros(1)}, build(config))
    if kind == 'ImageBert':  # the keys the preparation consumes
        for drop in (prefix + 'attention.self.key.weight',
                     'model.embeddings.token_type_embeddings.weight'):
            partial = {k: v for k, v in state.items() if k != drop}
            with pytest.raises(conv.LayoutError, match='missing'):
                conv.convert_official(partial, build(config))


def test_image_bert_buffers_of_older_transformers_are_checked(tmp_path):
    """``position_ids`` / ``token_type_ids`` saved by older transformers
    are dropped when they are ``arange`` / zeros, refused otherwise."""
    config = tiny_config(tmp_path, 'ImageBert')
    state = reference('ImageBert').state_dict()
    state[conv.POSITION_IDS] = torch.arange(TOKENS + 1)[None]
    state[conv.TOKEN_TYPE_IDS] = torch.zeros(1, TOKENS + 1, dtype=torch.long)
    _, report = conv.convert_official(state, build(config))
    assert set(report.ignored) == {conv.POSITION_IDS, conv.TOKEN_TYPE_IDS}
    state[conv.POSITION_IDS] = torch.arange(TOKENS + 1).flip(0)[None]
    with pytest.raises(conv.LayoutError, match='position_ids'):
        conv.convert_official(state, build(config))


@pytest.mark.parametrize('kind,model,key', [
    ('ImageBert', dict(arch={**ARCH['ImageBert'], 'post_norm': False}),
     "model.arch='titok-imagebert'"),
    ('ImageBert', dict(norm_eps=1e-5), 'model.norm_eps=1e-12'),
    ('ImageBert', dict(arch=ARCH['UViTBert']), "model.arch='titok-imagebert'"),
    ('UViTBert', dict(arch=ARCH['ImageBert']), "model.arch='titok-uvit'"),
    ('UViTBert', dict(arch={**ARCH['UViTBert'], 'qkv_bias': True}),
     'qkv_bias=False'),
    ('UViTBert', dict(arch={**ARCH['UViTBert'], 'depth': 6}), 'depth=4'),
    ('UViTBert', dict(num_classes=7), 'model.num_classes=5'),
    ('UViTBert', dict(vocab_size=32), 'model.vocab_size=16'),
    ('UViTBert', dict(token_shape=(4, )), r'model.token_shape=\(8, \)'),
])
def test_a_config_of_another_layout_is_refused(tmp_path, kind, model, key):
    base = dict(arch=ARCH[kind], vocab_size=CODES, num_classes=CLASSES,
                token_shape=(TOKENS, ), norm_eps=EPS[kind])
    base.update(model)
    with pytest.raises(conv.LayoutError, match=key):
        conv.check_layout(reference(kind).state_dict(),
                          MaskGITGenerator(**base))


@pytest.mark.parametrize('release', sorted(RELEASE_CONFIGS))
def test_full_size_releases_map_key_by_key_and_count(release):
    """Each release at full size on the meta device into its vistok config:
    the layout is accepted, every official key maps onto a key of the same
    shape and every vistok key is produced; TiTok-S-128's generator has
    294,990,848 parameters in both (the "287M" quoted for it is U-ViT-L's
    own count), the ImageBerts have vistok's plus BERT's 2 x 768 token-type
    table."""
    ref = official_ref.build_release(release, 'meta')
    kind = official_ref.RELEASES[release][0]
    with torch.device('meta'):
        model = build(RELEASE_CONFIGS[release])
    state = ref.state_dict()
    conv.check_layout(state, model)
    _, report = convert_state_dict(conv.prepare_official(state),
                                   conv.rules_for(model), model,
                                   ignore_unmapped=conv.IGNORE_UNMAPPED)
    assert report.ok and not report.ignored and not report.allowed_missing
    official = sum(p.numel() for p in ref.parameters())
    ours = sum(p.numel() for p in model.parameters())
    if kind == 'UViTBert':
        assert official == ours == S128_PARAMS
    else:
        assert official == BERT_PARAMS[release]
        assert ours == official - TOKEN_TYPE_PARAMS
