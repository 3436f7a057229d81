"""MaskGIT over residual (depth) tokens, ``depth_vocab_size``: position-major
sequence, per-depth embedding offsets, per-depth logits / loss / sampling,
guidance, learning a depth-structured toy set and input errors."""
import math

import pytest
import torch
import torch.nn.functional as F
from mmengine.optim import OptimWrapper

from vistok.models.generators.maskgit import MaskGITGenerator
from vistok.models.generators.sampling import TokenSampler, sample_logits

GRID, DEPTHS, VD = 4, 3, 8  # token_shape (4, 3), joint vocabulary 24


def tiny_model(seed=0, **kwargs):
    torch.manual_seed(seed)
    cfg = dict(arch=dict(dim=32, depth=2, num_heads=4, ffn_dim=64),
               num_classes=4, vocab_size=DEPTHS * VD,
               token_shape=(GRID, DEPTHS), depth_vocab_size=VD,
               dropout=0.0, attn_dropout=0.0, class_dropout_prob=0.0)
    return MaskGITGenerator(**{**cfg, **kwargs}).eval()


def depth_of_position():
    """Depth of each sequence index, position-major: ``n = k·D + d``."""
    return torch.tensor([d for _ in range(GRID) for d in range(DEPTHS)])


def full_head_logits(model, tokens, labels):
    """The joint ``(B, N, D·Vd)`` head output of ``tokens`` (via the final
    norm's output), independent of the model's per-depth head."""
    seen = []
    handle = model.norm.register_forward_hook(
        lambda mod, args, out: seen.append(out))
    model.logits(tokens, labels)
    handle.remove()
    return model.head(seen[0][:, 1:])


def restrict(joint):
    """``(B, N, D·Vd)`` → each position's depth slice ``(B, N, Vd)``."""
    depth = depth_of_position()
    return torch.stack([joint[:, n, d * VD:(d + 1) * VD]
                        for n, d in enumerate(depth.tolist())], dim=1)


def test_embedding_uses_manual_offsets():
    model = tiny_model()
    tokens = torch.randint(VD, (2, GRID, DEPTHS))
    tokens[0, 1, 2] = model.mask_id
    seen = []
    model.token_embed.register_forward_hook(
        lambda mod, args, out: seen.append((args[0], out)))
    model.logits(tokens, torch.tensor([0, 1]))
    ids, embedded = seen[0]
    expected = tokens.clone()
    for d in range(DEPTHS):  # offset d·Vd, the mask id unchanged
        expected[..., d] += d * VD
    expected[0, 1, 2] = model.mask_id
    assert torch.equal(ids, expected.flatten(1))
    assert torch.equal(embedded, model.token_embed.weight[expected.flatten(1)])
    assert model.token_embed.num_embeddings == DEPTHS * VD + 1


def test_logits_are_each_depths_slice_of_the_joint_head():
    model = tiny_model()
    tokens = torch.randint(VD, (3, GRID, DEPTHS))
    labels = torch.tensor([0, 2, 3])
    logits = model.logits(tokens, labels)
    assert logits.shape == (3, GRID * DEPTHS, VD)
    torch.testing.assert_close(
        logits, restrict(full_head_logits(model, tokens, labels)))


@pytest.mark.parametrize('smoothing', [0.0, 0.2])
def test_loss_is_per_depth_cross_entropy(smoothing):
    model = tiny_model(label_smoothing=smoothing, unmasked_weight=0.1)
    tokens = torch.randint(VD, (4, GRID, DEPTHS))
    labels = torch.tensor([0, 1, 2, 3])
    seen = []
    model.token_embed.register_forward_hook(
        lambda mod, args, out: seen.append(args[0]))
    model.norm.register_forward_hook(lambda mod, args, out: seen.append(out))
    out = model.loss(tokens, labels)
    masked = seen[0] == model.mask_id
    joint = model.head(seen[1][:, 1:])  # (B, N, D·Vd)
    # reference: softmax over the depth's own ids, smoothing eps/Vd on each
    depth = depth_of_position()
    target = tokens.flatten(1)
    ce = torch.zeros(target.shape)
    for b in range(4):
        for n in range(GRID * DEPTHS):
            d = int(depth[n])
            log_p = joint[b, n, d * VD:(d + 1) * VD].log_softmax(-1)
            ce[b, n] = -(1 - smoothing) * log_p[target[b, n]] \
                - smoothing / VD * log_p.sum()
    weight = masked.float() + 0.1 * (~masked).float()
    torch.testing.assert_close(out['loss_ce'], (ce * weight).sum() /
                               weight.sum())
    if smoothing == 0:  # the joint softmax with -inf outside the range
        offset = target + depth * VD
        allowed = torch.arange(DEPTHS * VD) // VD == depth[:, None]
        ce_joint = F.cross_entropy(
            joint.masked_fill(~allowed, float('-inf')).flatten(0, 1),
            offset.flatten(), reduction='none').view(target.shape)
        torch.testing.assert_close(ce_joint, ce)
    hit = restrict(joint).argmax(-1) == target
    assert out['acc'] == (hit & masked).sum() / masked.sum()


def biased_model(**kwargs):
    """A random model whose last depth's joint ids have a +50 bias: an
    unrestricted sampler would pick them at every position."""
    model = tiny_model(**kwargs)
    with torch.no_grad():
        model.head.bias[(DEPTHS - 1) * VD:] = 50.0
    return model


def test_generated_ids_stay_in_their_depth_range():
    model = biased_model(choice_temperature=4.5)
    labels = torch.tensor([0, 1, 2, 3])
    samplers = [TokenSampler(temperature=1.0),
                TokenSampler(temperature=1.5, top_k=3),
                TokenSampler(temperature=1.0, top_p=0.9),
                TokenSampler(temperature=0.0)]
    for seed in range(12):
        for sampler in samplers:
            tokens = model.generate(
                labels, sampler, steps=3,
                generator=torch.Generator().manual_seed(seed))
            assert tokens.shape == (4, GRID, DEPTHS)
            assert tokens.dtype == torch.long
            assert ((tokens >= 0) & (tokens < VD)).all()
    # argmax in one step = the argmax of each depth's slice of the head
    all_masked = torch.full((4, GRID, DEPTHS), model.mask_id)
    joint = full_head_logits(model, all_masked, labels)
    tokens = model.generate(labels, TokenSampler(temperature=0.0), steps=1)
    assert torch.equal(tokens.flatten(1), restrict(joint).argmax(-1))
    assert not torch.equal(joint.argmax(-1) - depth_of_position() * VD,
                           tokens.flatten(1))  # the bias would win jointly


def test_same_seed_reproduces_a_sample():
    model = tiny_model()
    labels = torch.tensor([0, 1, 2, 3])
    sampler = TokenSampler(temperature=1.0, top_k=6)

    def run(seed):
        return model.generate(labels, sampler, steps=4,
                              generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))


def test_guidance_path_with_depths():
    model = biased_model(choice_temperature=0.0)
    labels = torch.tensor([0, 1, 3])
    all_masked = torch.full((3, GRID, DEPTHS), model.mask_id)
    cond = model.logits(all_masked, labels)
    uncond = model.logits(all_masked,
                          torch.full_like(labels, model.null_class))
    tokens = model.generate(labels, TokenSampler(
        temperature=0.0, guidance_scale=2.5), steps=1)
    guided = uncond + 2.5 * (cond - uncond)
    assert torch.isfinite(guided).all()
    assert torch.equal(tokens.flatten(1), guided.argmax(-1))
    for seed in range(4):
        tokens = model.generate(labels, TokenSampler(
            temperature=1.0, top_p=0.8, guidance_scale=3.0,
            guidance_schedule='power_cosine'), steps=3,
            generator=torch.Generator().manual_seed(seed))
        assert ((tokens >= 0) & (tokens < VD)).all()


def test_token_sampler_handles_minus_inf_logits():
    """The joint representation (-inf outside a range) is also safe for the
    sampler: no NaN, samples inside the finite range, greedy = argmax."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 24, generator=gen)
    allowed = (torch.arange(24) >= 8) & (torch.arange(24) < 16)
    logits = logits.masked_fill(~allowed, float('-inf'))
    for kwargs in (dict(temperature=0.0), dict(temperature=0.0, top_p=0.5),
                   dict(temperature=1.0), dict(temperature=0.7, top_p=0.9),
                   dict(temperature=1.0, top_p=1.0),
                   dict(temperature=1.0, top_k=3),
                   dict(temperature=1.0, top_k=20)):
        ids = sample_logits(logits, generator=gen, **kwargs)
        assert ((ids >= 8) & (ids < 16)).all(), kwargs
    assert torch.equal(sample_logits(logits, 0.0), logits.argmax(-1))
    # MaskGIT's confidence: log-probability of the sampled id + Gumbel noise
    ids = sample_logits(logits, 1.0, generator=gen)
    log_p = logits.log_softmax(-1).gather(-1, ids[:, None])[:, 0]
    assert torch.isfinite(log_p).all()


def test_learns_depth_structured_tokens():
    """Depth 0 uniform, depth d > 0 a fixed function of depth 0. After 100
    steps the loss falls clearly and, with all deeper depths masked, the
    model predicts them from depth 0 on unseen sequences."""

    def toy(count, seed):
        d0 = torch.randint(VD, (count, GRID),
                           generator=torch.Generator().manual_seed(seed))
        return torch.stack([d0, (3 * d0 + 1) % VD, (5 * d0 + 2) % VD], -1)

    model = tiny_model(arch=dict(dim=64, depth=2, num_heads=4, ffn_dim=128),
                       num_classes=0, label_smoothing=0.0)
    data = toy(64, 0)
    labels = torch.zeros(64, dtype=torch.long)  # the null class
    torch.manual_seed(1)
    before = model.loss(data, labels)['loss_ce'].item()
    assert before == pytest.approx(math.log(VD), abs=0.3)
    model.train()
    wrapper = OptimWrapper(torch.optim.Adam(model.parameters(), lr=3e-3))
    for _ in range(100):
        model.train_step(dict(indices=data, gt_label=labels), wrapper)
    model.eval()
    torch.manual_seed(1)
    after = model.loss(data, labels)['loss_ce'].item()
    assert after < 0.75 * before  # masked depth-0 ids stay at ln(Vd)
    test = toy(32, 1)
    masked = test.clone()
    masked[..., 1:] = model.mask_id
    logits = model.logits(masked, labels[:32]).view(*test.shape, VD)
    deeper = F.cross_entropy(logits[..., 1:, :].flatten(0, -2),
                             test[..., 1:].flatten())
    assert deeper < 0.2
    pred = logits.argmax(-1)
    assert (pred[..., 1:] == test[..., 1:]).float().mean() > 0.95


def test_bad_depth_arguments_and_ids_raise():
    with pytest.raises(ValueError, match=r'vocab_size \(20\) must equal D '
                       r'\* depth_vocab_size = 3 \* 8 = 24'):
        tiny_model(vocab_size=20)
    with pytest.raises(ValueError, match='depth_vocab_size must be >= 1'):
        tiny_model(depth_vocab_size=0)
    model = tiny_model()
    tokens = torch.randint(VD, (2, GRID, DEPTHS))
    tokens[1, 2, 1] = VD + 3  # a joint id where a per-depth one is expected
    with pytest.raises(ValueError, match=r'in \[0, 8\) \(depth_vocab_size\),'
                       r' got ids in \[11, 11\] at depths \[1\]'):
        model.loss(tokens, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r'or mask_id 24, got ids in '
                       r'\[11, 11\]'):
        model.logits(tokens, torch.tensor([0, 1]))
    tokens[1, 2, 1] = -1
    with pytest.raises(ValueError, match=r'got ids in \[-1, -1\]'):
        model.loss(tokens, torch.tensor([0, 1]))
    masked = torch.full((2, GRID, DEPTHS), model.mask_id)
    with pytest.raises(ValueError, match=r'in \[0, 8\) \(depth_vocab_size\),'
                       r' got ids in \[24, 24\]'):
        model.loss(masked, torch.tensor([0, 1]))
