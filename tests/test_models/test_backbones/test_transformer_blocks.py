"""Shared transformer pieces of the generators: RMSNorm, RoPE, SwiGLU,
attention with a KV cache, the pre-norm / U-ViT block, and the generator
base (class embedding, cross-entropy, batched guidance)."""
import math

import pytest
import torch
import torch.nn.functional as F

from vistok.models.backbones.transformer import (
    MLP,
    Attention,
    KVCache,
    RMSNorm,
    SwiGLU,
    TransformerBlock,
    apply_rope,
    llama_ffn_dim,
    new_caches,
    rope_table_1d,
    rope_table_2d,
)
from vistok.models.generators.base import (
    BaseGenerator,
    ClassEmbedding,
    token_cross_entropy,
)
from vistok.models.generators.sampling import TokenSampler


def test_rms_norm_matches_formula_and_torch():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 16)
    norm = RMSNorm(16, eps=1e-5)
    norm.weight.data.uniform_(0.5, 1.5)
    expected = x / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-5) * \
        norm.weight
    torch.testing.assert_close(norm(x), expected)
    reference = torch.nn.RMSNorm(16, eps=1e-5)
    reference.weight.data.copy_(norm.weight.data)
    torch.testing.assert_close(norm(x), reference(x))


def test_rope_1d_is_a_complex_rotation_and_relative():
    torch.manual_seed(0)
    head_dim, length = 8, 6
    table = rope_table_1d(length, head_dim, base=100.0, num_prefix=2)
    assert table.shape == (length + 2, head_dim // 2, 2)
    # prefix positions are not rotated
    x = torch.randn(1, 2, length + 2, head_dim)
    out = apply_rope(x, table)
    torch.testing.assert_close(out[:, :, :2], x[:, :, :2])
    # value: x_pair · exp(i m θ_j), θ_j = base^(-2j / head_dim)
    theta = 100.0**(-torch.arange(0, head_dim, 2).double() / head_dim)
    angles = torch.arange(length).double()[:, None] * theta
    rot = torch.polar(torch.ones_like(angles), angles).cfloat()
    pairs = torch.view_as_complex(x[:, :, 2:].unflatten(-1, (-1, 2))
                                  .contiguous())
    expected = torch.view_as_real(pairs * rot).flatten(-2)
    torch.testing.assert_close(out[:, :, 2:], expected)
    # norms are kept and q·k depends only on the position difference
    torch.testing.assert_close(out.norm(dim=-1), x.norm(dim=-1))
    q, k = torch.randn(head_dim), torch.randn(head_dim)

    def score(m, n):
        qm = apply_rope(q.expand(1, 1, 1, -1), table[2 + m:3 + m])
        kn = apply_rope(k.expand(1, 1, 1, -1), table[2 + n:3 + n])
        return (qm * kn).sum()

    torch.testing.assert_close(score(3, 1), score(4, 2))
    torch.testing.assert_close(score(5, 5), score(0, 0))


def test_rope_2d_layout_and_relative_positions():
    head_dim, grid = 8, (3, 4)
    table = rope_table_2d(grid, head_dim, base=10000.0, num_prefix=1)
    assert table.shape == (1 + 12, head_dim // 2, 2)
    angles = torch.atan2(table[..., 1], table[..., 0])
    assert torch.equal(angles[0], torch.zeros(head_dim // 2))
    # LlamaGen: first head_dim/4 pairs follow the row, the rest the column,
    # each with frequencies base^(-4j / head_dim)
    freqs = 10000.0**(-4 * torch.arange(head_dim // 4).double() / head_dim)
    for pos in range(12):
        row, col = divmod(pos, grid[1])
        expected = torch.cat([row * freqs, col * freqs]).float()
        torch.testing.assert_close(angles[1 + pos], expected)
    torch.manual_seed(0)
    q, k = torch.randn(head_dim), torch.randn(head_dim)

    def score(a, b):  # a, b: (row, col)
        ia, ib = 1 + a[0] * grid[1] + a[1], 1 + b[0] * grid[1] + b[1]
        qa = apply_rope(q.expand(1, 1, 1, -1), table[ia:ia + 1])
        kb = apply_rope(k.expand(1, 1, 1, -1), table[ib:ib + 1])
        return (qa * kb).sum()

    torch.testing.assert_close(score((2, 3), (1, 1)), score((1, 2), (0, 0)))
    with pytest.raises(ValueError, match='divisible by 4'):
        rope_table_2d(grid, 6)
    with pytest.raises(ValueError, match=r'\(h, w\) grid'):
        rope_table_2d((2, 2, 2), 8)
    with pytest.raises(ValueError, match=r'does not fit'):
        apply_rope(torch.randn(1, 1, 5, 8), table)


def test_llama_ffn_width_and_swiglu_formula():
    # LlamaGen GPT-B / L / XL / XXL widths
    assert [llama_ffn_dim(d) for d in (768, 1024, 1280, 1536)] == \
        [2048, 2816, 3584, 4096]
    torch.manual_seed(0)
    ffn = SwiGLU(8, 12)
    x = torch.randn(3, 8)
    expected = (F.silu(x @ ffn.w1.weight.T) * (x @ ffn.w3.weight.T)) @ \
        ffn.w2.weight.T
    torch.testing.assert_close(ffn(x), expected)
    assert sum(p.numel() for p in ffn.parameters()) == 3 * 8 * 12
    mlp = MLP(8, 12)
    torch.testing.assert_close(
        mlp(x), mlp.fc2(F.gelu(mlp.fc1(x))))


def _reference_attention(attn, x, causal):
    """softmax(q kᵀ / sqrt(d)) v, written out."""
    b, n, d = x.shape
    h = attn.num_heads
    q, k, v = (x @ attn.qkv.weight.T).chunk(3, dim=-1)
    q, k, v = (t.view(b, n, h, d // h).transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-1, -2) / math.sqrt(d // h)
    if causal:
        scores = scores.masked_fill(
            ~torch.ones(n, n, dtype=torch.bool).tril(), float('-inf'))
    out = scores.softmax(-1) @ v
    return out.transpose(1, 2).reshape(b, n, d) @ attn.proj.weight.T


def test_attention_matches_formula_and_kv_cache_matches_full():
    torch.manual_seed(0)
    attn = Attention(16, 4).eval()
    x = torch.randn(2, 7, 16)
    torch.testing.assert_close(attn(x), _reference_attention(attn, x, False))
    full = attn(x, causal=True)
    torch.testing.assert_close(full, _reference_attention(attn, x, True))
    # incremental: a 3-token prefill, one token, then a 3-token chunk
    cache = KVCache()
    parts = [attn(x[:, :3], causal=True, cache=cache),
             attn(x[:, 3:4], causal=True, cache=cache),
             attn(x[:, 4:], causal=True, cache=cache)]
    assert cache.length == 7
    torch.testing.assert_close(torch.cat(parts, 1), full)
    # with RoPE: the cached keys keep their positions
    table = rope_table_1d(7, 4)
    full = attn(x, rope=table, causal=True)
    cache = KVCache()
    steps = [attn(x[:, i:i + 1], rope=table[i:i + 1], causal=True,
                  cache=cache) for i in range(7)]
    torch.testing.assert_close(torch.cat(steps, 1), full)
    with pytest.raises(ValueError, match='not both'):
        attn(x, causal=True, attn_mask=torch.ones(7, 7, dtype=torch.bool))
    with pytest.raises(ValueError, match='divisible'):
        Attention(10, 4)


def test_block_variants_and_long_skip():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 16)
    llama = TransformerBlock(16, 4, 32).eval()
    assert isinstance(llama.attn_norm, RMSNorm)
    assert isinstance(llama.ffn, SwiGLU)
    h = x + llama.attn(llama.attn_norm(x))
    torch.testing.assert_close(llama(x), h + llama.ffn(llama.ffn_norm(h)))
    # caches thread through blocks: incremental == full
    caches = new_caches(1)
    steps = [llama(x[:, i:i + 1], causal=True, cache=caches[0])
             for i in range(5)]
    torch.testing.assert_close(torch.cat(steps, 1), llama(x, causal=True))

    uvit = TransformerBlock(16, 4, 32, norm='layer', ffn='gelu',
                            qkv_bias=False, proj_bias=True,
                            long_skip=True).eval()
    skip = torch.randn(2, 5, 16)
    fused = uvit.skip_linear(torch.cat([x, skip], -1))
    h = fused + uvit.attn(uvit.attn_norm(fused))
    torch.testing.assert_close(uvit(x, skip=skip),
                               h + uvit.ffn(uvit.ffn_norm(h)))
    with pytest.raises(ValueError, match='long-skip'):
        uvit(x)
    with pytest.raises(ValueError, match='long-skip'):
        llama(x, skip=skip)
    with pytest.raises(ValueError, match='norm must be'):
        TransformerBlock(16, 4, 32, norm='batch')


def test_class_embedding_label_dropout_and_null_class():
    emb = ClassEmbedding(num_classes=5, dim=4, dropout_prob=0.5)
    assert emb.embedding.num_embeddings == 6 and emb.null_class == 5
    labels = torch.arange(5).repeat(400)
    torch.manual_seed(0)
    dropped = emb.drop_labels(labels)
    kept = dropped == labels
    assert torch.equal(dropped[~kept], torch.full_like(dropped[~kept], 5))
    assert 0.45 < (~kept).float().mean() < 0.55
    emb.eval()  # no dropout outside training
    assert torch.equal(emb.drop_labels(labels), labels)
    torch.testing.assert_close(emb(torch.tensor([5, 2])),
                               emb.embedding.weight[[5, 2]])
    with pytest.raises(ValueError, match=r'labels must be in \[0, 5\]'):
        emb(torch.tensor([6]))
    with pytest.raises(ValueError, match=r'\(B,\) int64'):
        emb(torch.tensor([[1]]))


def test_token_cross_entropy_weights_and_accuracy():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 10)
    targets = torch.randint(10, (2, 6))
    out = token_cross_entropy(logits, targets, label_smoothing=0.1)
    torch.testing.assert_close(
        out['loss_ce'],
        F.cross_entropy(logits.flatten(0, 1), targets.flatten(),
                        label_smoothing=0.1))
    weights = torch.zeros(2, 6)
    weights[0, :3] = 1.0
    weights[1, 5] = 0.5
    out = token_cross_entropy(logits, targets, weights)
    ce = F.cross_entropy(logits.flatten(0, 1), targets.flatten(),
                         reduction='none').view(2, 6)
    torch.testing.assert_close(out['loss_ce'],
                               (ce * weights).sum() / weights.sum())
    hit = (logits.argmax(-1) == targets).float()
    torch.testing.assert_close(out['acc'],
                               (hit[0, :3].sum() + hit[1, 5]) / 4)
    with pytest.raises(ValueError, match='do not match'):
        token_cross_entropy(logits, targets[:, :5])


class _EchoGenerator(BaseGenerator):
    """Minimal concrete generator exposing what the base passes on."""

    token_shape = (2, 2)

    def logits(self, tokens, labels):
        return ('logits', tokens, labels)

    def loss(self, tokens, labels):
        return ('loss', tokens, labels)

    def generate(self, labels, sampler=None, generator=None):
        return labels[:, None, None].expand(-1, 2, 2) + 100


def test_base_generator_runner_contract():
    model = _EchoGenerator(num_classes=7, vocab_size=3,
                           sampler=dict(type='TokenSampler', top_k=2))
    assert isinstance(model.sampler, TokenSampler) and \
        model.sampler.top_k == 2
    assert type(model.data_preprocessor).__name__ == 'TokenDataPreprocessor'
    tokens = torch.zeros(3, 2, 2, dtype=torch.long)
    labels = torch.tensor([1, 2, 6])
    assert model(tokens, labels, mode='loss')[0] == 'loss'
    kind, _, seen = model(tokens, None, mode='tensor')
    assert kind == 'logits' and seen.tolist() == [7, 7, 7]  # null class
    samples = model(tokens, labels, mode='predict')
    assert [int(s.gt_label) for s in samples] == [1, 2, 6]
    assert torch.equal(samples[2].tokens, torch.full((2, 2), 106))
    with pytest.raises(ValueError, match='2 labels for a batch of 3'):
        model(tokens, labels[:2])
    with pytest.raises(ValueError, match='mode must be'):
        model(tokens, labels, mode='sample')
    # per-level token structures split per sample too
    model.generate = lambda labels, **kw: [labels[:, None], labels[:, None]]
    sample = model.predict(labels)[1]
    assert [t.tolist() for t in sample.tokens] == [[2], [2]]


def test_batched_guidance_helpers():
    labels = torch.tensor([3, 1])
    off, on = TokenSampler(), TokenSampler(guidance_scale=2.0)
    model = _EchoGenerator(num_classes=7, vocab_size=3)
    assert model.guidance_labels(labels, off) is labels
    assert model.guidance_labels(labels, on).tolist() == [3, 1, 7, 7]
    x = torch.randn(2, 3)
    assert model.guidance_repeat(x, off) is x
    torch.testing.assert_close(model.guidance_repeat(x, on),
                               torch.cat([x, x]))
    cond, uncond = torch.randn(2, 4), torch.randn(2, 4)
    both = torch.cat([cond, uncond])
    torch.testing.assert_close(model.guided(both, on, 0.5),
                               uncond + 2.0 * (cond - uncond))
    assert model.guided(cond, off, 0.5) is cond
