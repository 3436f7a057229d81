"""vistok's ARGenerator against LlamaGen's GPT (architecture reference, no
converter): the independent reference of LlamaGen's ``gpt.py`` /
``generate.py`` in ``tests/reference/llamagen_official.py`` gets random
weights, which an explicit key map (:func:`to_vistok`) copies into vistok's
modules; then the blocks, the rotary tables (2-D over the grid, 1-D, and
the class-token prefix), the SwiGLU width rounding, the teacher-forced
logits and the KV-cached generation with guidance must agree.

Tiny sizes: width 64, 4 heads (head width 16), 2 layers, SwiGLU rounded to
a multiple of 32 (170 -> 192), 32 codes on a 4 x 4 grid, 10 classes."""
import re

import pytest
import torch
from reference.llamagen_official import (
    FeedForward,
    ModelArgs,
    Transformer,
    TransformerBlock,
    generate,
    precompute_freqs_cis,
    precompute_freqs_cis_2d,
)

from _helpers import torch_threads
from vistok.models.backbones.transformer import (
    TransformerBlock as VistokBlock,
)
from vistok.models.backbones.transformer import llama_ffn_dim
from vistok.models.generators.ar import ARGenerator
from vistok.models.generators.sampling import TokenSampler

DIM, HEADS, LAYERS, VOCAB, CLASSES, GRID, MULTIPLE = 64, 4, 2, 32, 10, 4, 32

#: LlamaGen key -> vistok key (gpt.py names -> ar.py / transformer.py)
KEY_MAP = [
    (r'cls_embedding\.embedding_table\.weight',
     'class_embed.embedding.weight'),
    (r'tok_embeddings\.weight', 'token_embed.weight'),
    (r'layers\.(\d+)\.attention\.wqkv\.weight', r'blocks.\1.attn.qkv.weight'),
    (r'layers\.(\d+)\.attention\.wo\.weight', r'blocks.\1.attn.proj.weight'),
    (r'layers\.(\d+)\.feed_forward\.(w[123])\.weight',
     r'blocks.\1.ffn.\2.weight'),
    (r'layers\.(\d+)\.(attention_norm|ffn_norm)\.weight',
     lambda m: f'blocks.{m[1]}.'
     f'{"attn_norm" if m[2] == "attention_norm" else "ffn_norm"}.weight'),
    (r'norm\.weight', 'norm.weight'),
    (r'output\.weight', 'head.weight'),
]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one intra-op thread is the fastest (and spares the
    thread pool's spin-waits on a busy machine)."""
    with torch_threads(1):
        yield


def to_vistok(state, block=None):
    """LlamaGen's state dict renamed by :data:`KEY_MAP`; with ``block=i``
    the state dict of LlamaGen's ``layers.i`` to that of vistok's
    ``blocks.i``."""
    prefix, strip = ('', 0) if block is None else (
        f'layers.{block}.', len(f'blocks.{block}.'))
    out = {}
    for key, value in state.items():
        full = prefix + key
        for pattern, target in KEY_MAP:
            match = re.fullmatch(pattern, full)
            if match:
                new = target(match) if callable(target) else \
                    match.expand(target)
                out[new[strip:]] = value
                break
        else:
            raise KeyError(f'no rule for LlamaGen key {full}')
    return out


def config(**options):
    kwargs = dict(dim=DIM, n_layer=LAYERS, n_head=HEADS, multiple_of=MULTIPLE,
                  vocab_size=VOCAB, num_classes=CLASSES,
                  block_size=GRID * GRID, token_dropout_p=0.0,
                  resid_dropout_p=0.0, ffn_dropout_p=0.0,
                  class_dropout_prob=0.1)
    kwargs.update(options)
    return ModelArgs(**kwargs)


def randomise(module, seed):
    """Unit-gain random weights; RMSNorm scales near 1."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if name.endswith('norm.weight'):
                param.copy_(1 + 0.2 * noise)
            elif 'embedding' in name:
                param.copy_(noise)
            else:
                param.copy_(noise / param.shape[-1]**0.5)
    return module


def reference(seed=0):
    """LlamaGen's c2i GPT with random weights, in training mode (where its
    forward does teacher forcing) with label dropout off."""
    torch.manual_seed(seed)
    ref = randomise(Transformer(config()), seed)
    ref.cls_embedding.dropout_prob = 0.0  # keep the null row, drop nothing
    return ref.train()


def vistok_model(ref, **options):
    model = ARGenerator(arch=dict(dim=DIM, depth=LAYERS, num_heads=HEADS),
                        num_classes=CLASSES, vocab_size=VOCAB,
                        token_shape=(GRID, GRID), ffn_multiple_of=MULTIPLE,
                        token_dropout=0.0, resid_dropout=0.0, **options)
    model.load_state_dict(to_vistok(ref.state_dict()), strict=True)
    return model.eval()


def relative_error(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@torch.no_grad()
def test_block_equals_llamagens_transformer_block():
    """One block on its own, causal, both given LlamaGen's 2-D rotary
    table with the class-token row."""
    ref = randomise(TransformerBlock(config(), drop_path=0.0), 1).eval()
    block = VistokBlock(DIM, HEADS, llama_ffn_dim(DIM, MULTIPLE), norm='rms',
                        ffn='swiglu', norm_eps=config().norm_eps)
    block.load_state_dict(to_vistok(ref.state_dict(), block=0), strict=True)
    table = precompute_freqs_cis_2d(GRID, DIM // HEADS, 10000, 1)
    x = torch.randn(3, 1 + GRID * GRID, DIM,
                    generator=torch.Generator().manual_seed(2))
    expected = ref(x, table, None)
    out = block(x, table, causal=True)
    assert relative_error(out, expected) < 1e-5
    assert relative_error(out, x) > 0.1  # the block does something


def test_rope_tables_equal_llamagens_with_the_class_prefix():
    """ARGenerator's tables are LlamaGen's ``precompute_freqs_cis_2d`` /
    ``precompute_freqs_cis`` with ``cls_token_num=1``: row 0 (the class
    token) is all zeros, i.e. its query and key vanish."""
    ref = reference()
    model = vistok_model(ref)
    expected = precompute_freqs_cis_2d(GRID, DIM // HEADS, 10000, 1)
    assert model.rope.shape == expected.shape == (17, 8, 2)
    assert torch.allclose(model.rope, expected, atol=1e-6)
    assert not model.rope[0].any()
    one_d = ARGenerator(arch=dict(dim=DIM, depth=1, num_heads=HEADS),
                        vocab_size=VOCAB, token_shape=(GRID * GRID, ),
                        rope='1d')
    assert torch.allclose(
        one_d.rope, precompute_freqs_cis(GRID * GRID, DIM // HEADS, 10000, 1),
        atol=1e-6)
    # the option that leaves the class token unrotated instead
    unrotated = ARGenerator(arch=dict(dim=DIM, depth=1, num_heads=HEADS),
                            vocab_size=VOCAB, token_shape=(GRID, GRID),
                            prefix_rope='identity')
    assert torch.equal(unrotated.rope[1:], model.rope[1:])
    assert (unrotated.rope[0, :, 0] == 1).all()
    assert not unrotated.rope[0, :, 1].any()
    with pytest.raises(ValueError, match='prefix_rope'):
        ARGenerator(arch=dict(dim=DIM, depth=1, num_heads=HEADS),
                    vocab_size=VOCAB, token_shape=(GRID, GRID),
                    prefix_rope='none')


@pytest.mark.parametrize('arch, layers, heads, dim', [
    ('gpt-b', 12, 12, 768), ('gpt-l', 24, 16, 1024),
    ('gpt-xl', 36, 20, 1280), ('gpt-xxl', 48, 24, 1536)])
def test_presets_have_llamagens_parameter_counts(arch, layers, heads, dim):
    """``GPT_B`` … ``GPT_XXL`` of gpt.py (16384 codes, 1000 classes + the
    null row, 16 x 16 tokens) and vistok's presets: the same tensors by the
    key map, so the same counts (111M / 343M / 775M / 1.4B)."""
    with torch.device('meta'):
        ref = Transformer(ModelArgs(n_layer=layers, n_head=heads, dim=dim))
        model = ARGenerator(arch=arch)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape)
              for k, v in to_vistok(ref.state_dict()).items()}
    assert ours == theirs
    assert sum(p.numel() for p in model.parameters()) == sum(
        p.numel() for p in ref.parameters())


@pytest.mark.parametrize('dim, multiple_of, multiplier', [
    (768, 256, None), (1024, 256, None), (1280, 256, None),
    (1536, 256, None), (64, 32, None), (100, 48, 1.3), (96, 7, 0.5)])
def test_swiglu_width_is_llamagens_rounding(dim, multiple_of, multiplier):
    with torch.device('meta'):
        ffn = FeedForward(ModelArgs(dim=dim, multiple_of=multiple_of,
                                    ffn_dim_multiplier=multiplier))
    assert llama_ffn_dim(dim, multiple_of, multiplier) == \
        ffn.w1.out_features == ffn.w3.out_features == ffn.w2.in_features


@torch.no_grad()
def test_teacher_forced_logits_equal_llamagens():
    """LlamaGen's training forward ``model(cond_idx=c, idx=z[:, :-1])``:
    the class embedding (the null class included) is the prefilling token,
    position ``i`` predicts ``z_i``."""
    ref = reference()
    model = vistok_model(ref)
    generator = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, VOCAB, (4, GRID, GRID), generator=generator)
    labels = torch.tensor([0, 4, 9, CLASSES])
    expected = ref(tokens.flatten(1)[:, :-1], labels)
    logits = model.logits(tokens, labels)
    assert logits.shape == expected.shape == (4, GRID * GRID, VOCAB)
    assert relative_error(logits, expected) < 1e-5
    # the class token matters (through its value; its key is zero)
    assert not torch.allclose(logits[:, 0], model.logits(
        tokens, torch.tensor([1, 5, 8, 0]))[:, 0], atol=1e-3)


@pytest.mark.parametrize('cfg, greedy, top_k, top_p, seed', [
    (1.0, True, 0, 1.0, 0),  # no guidance, greedy
    (3.0, True, 0, 1.0, 0),  # guidance, greedy
    (2.0, False, 8, 0.9, 4),  # guidance, top-k / top-p sampling
])
def test_kv_cached_generation_equals_llamagens(cfg, greedy, top_k, top_p,
                                               seed):
    """``generate.py``: prefill with the class token, then one token per
    step with a KV cache, guidance ``ℓ_u + (ℓ_c − ℓ_u)·cfg`` (vistok's
    constant schedule); sampled with the global RNG on both sides."""
    ref = reference().eval()
    model = vistok_model(ref)
    labels = torch.tensor([0, 3, 6, 9])
    torch.manual_seed(seed)
    expected = generate(ref, labels, GRID * GRID, cfg_scale=cfg,
                        temperature=1.0, top_k=top_k, top_p=top_p,
                        sample_logits=not greedy)
    sampler = TokenSampler(temperature=0.0 if greedy else 1.0,
                           top_k=top_k or None,
                           top_p=top_p if top_p < 1 else None,
                           guidance_scale=cfg if cfg > 1 else None,
                           guidance_schedule='constant')
    torch.manual_seed(seed)
    tokens = model.generate(labels, sampler)
    assert torch.equal(tokens.flatten(1), expected.long())
    assert tokens.unique().numel() > 8
