"""MaskGIT generator (ViT and TiTok's U-ViT variant): mask schedules,
training masks, iterative decoding, guidance and overfitting."""
import math

import pytest
import torch
from mmengine.optim import OptimWrapper

from vistok.models.generators.maskgit import (
    MaskGITGenerator,
    gumbel_noise,
    mask_schedule,
)
from vistok.models.generators.sampling import TokenSampler
from vistok.registry import MODELS


def tiny_model(long_skip=False, seed=0, **kwargs):
    torch.manual_seed(seed)
    cfg = dict(arch=dict(dim=32, depth=2, num_heads=4, ffn_dim=64,
                         long_skip=long_skip),
               num_classes=8, vocab_size=32, token_shape=(4, 4),
               dropout=0.0, attn_dropout=0.0, class_dropout_prob=0.0)
    return MaskGITGenerator(**{**cfg, **kwargs}).eval()


def test_mask_schedules():
    for r in (0.0, 0.1, 0.25, 0.5, 0.9, 1.0):
        assert mask_schedule(r, 'cosine') == pytest.approx(
            math.cos(math.pi * r / 2), abs=1e-12)
        assert mask_schedule(r, 'arccos') == pytest.approx(
            math.acos(r) / (math.pi / 2), abs=1e-12)
        assert mask_schedule(r, 'linear') == pytest.approx(1 - r)
    r = torch.linspace(0, 1, 11)
    torch.testing.assert_close(mask_schedule(r), torch.cos(math.pi * r / 2))
    with pytest.raises(ValueError, match='mask schedule must be one of'):
        mask_schedule(0.5, 'square')


@pytest.mark.parametrize('schedule', ['cosine', 'arccos'])
def test_training_mask_counts_follow_the_schedule(schedule):
    model = tiny_model(mask_schedule=schedule)
    mask = model.random_mask(64, torch.device('cpu'),
                             torch.Generator().manual_seed(0))
    r = torch.rand(64, generator=torch.Generator().manual_seed(0))
    expected = torch.ceil(mask_schedule(r, schedule) * 16).clamp(1, 16)
    assert torch.equal(mask.sum(-1), expected.long())
    # the loss sees exactly those positions masked
    seen = []
    model.token_embed.register_forward_hook(
        lambda mod, args, out: seen.append(args[0]))
    tokens = torch.randint(32, (5, 4, 4))
    out = model.loss(tokens, torch.arange(5))
    assert set(out) == {'loss_ce', 'acc', 'mask_ratio'}
    masked = seen[0] == model.mask_id
    assert masked.any(-1).all()
    assert torch.equal(seen[0][~masked], tokens.flatten(1)[~masked])
    assert out['mask_ratio'] == masked.float().mean()


@pytest.mark.parametrize('long_skip', [False, True])
def test_decoding_fills_everything_and_never_changes_decoded(long_skip):
    model = tiny_model(long_skip, choice_temperature=4.5)
    labels = torch.tensor([0, 5, 7])
    steps = 5
    tokens, history = model.generate(
        labels, TokenSampler(temperature=1.0), steps=steps,
        generator=torch.Generator().manual_seed(0), return_history=True)
    assert len(history) == steps and torch.equal(tokens, history[-1])
    assert tokens.shape == (3, 4, 4)
    assert (tokens != model.mask_id).all() and (tokens < 32).all()
    masked_before = torch.full((3, ), 16)
    for t, grid in enumerate(history):
        masked = (grid == model.mask_id).flatten(1).sum(-1)
        if t + 1 < steps:  # floor(N γ((t+1)/T)), 1 <= n <= masked - 1
            n = math.floor(16 * math.cos(math.pi / 2 * (t + 1) / steps))
            expected = (masked_before - 1).clamp(max=n).clamp(min=1)
            assert torch.equal(masked, expected)
        if t:
            decoded = history[t - 1] != model.mask_id
            assert torch.equal(grid[decoded], history[t - 1][decoded])
        masked_before = masked


def test_decoding_is_deterministic_for_a_seed():
    model = tiny_model(True)
    labels = torch.tensor([1, 2, 3, 4])
    sampler = TokenSampler(temperature=1.0, top_k=8)

    def run(seed):
        return model.generate(labels, sampler,
                              generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(11), run(11))
    assert not torch.equal(run(11), run(12))


def test_guidance_disabled_is_the_conditional_model():
    model = tiny_model(choice_temperature=0.0)
    labels = torch.tensor([0, 3, 6])
    all_masked = torch.full((3, 4, 4), model.mask_id)
    conditional = model.logits(all_masked, labels).argmax(-1).view(3, 4, 4)
    seen = []
    model.class_embed.embedding.register_forward_hook(
        lambda mod, args, out: seen.append(args[0].clone()))
    for scale in (None, 1.0):
        seen.clear()
        tokens = model.generate(labels, TokenSampler(
            temperature=0.0, guidance_scale=scale), steps=1)
        assert [s.tolist() for s in seen] == [labels.tolist()]
        assert torch.equal(tokens, conditional)


def test_guidance_combines_batched_branches():
    model = tiny_model(True, choice_temperature=0.0)
    labels = torch.tensor([0, 3, 6])
    all_masked = torch.full((3, 4, 4), model.mask_id)
    cond = model.logits(all_masked, labels)
    uncond = model.logits(all_masked,
                          torch.full_like(labels, model.null_class))
    tokens = model.generate(labels, TokenSampler(
        temperature=0.0, guidance_scale=2.5), steps=1)
    guided = uncond + 2.5 * (cond - uncond)
    assert torch.equal(tokens.flatten(1), guided.argmax(-1))
    # linear schedule at progress = step / steps = 0: scale 1
    tokens = model.generate(labels, TokenSampler(
        temperature=0.0, guidance_scale=5.0, guidance_schedule='linear'),
        steps=1)
    assert torch.equal(tokens.flatten(1), cond.argmax(-1))


@pytest.mark.parametrize('long_skip', [False, True])
def test_overfits_tiny_token_set(long_skip):
    """8 classes, one 4x4 sequence each (vocab 32): the masked-token loss
    falls from ln(32) ≈ 3.47 to below 0.05, and decoding each class
    reproduces its sequence."""
    torch.manual_seed(0)
    data = torch.randint(32, (8, 4, 4))
    labels = torch.arange(8)
    model = tiny_model(long_skip, arch=dict(dim=64, depth=2, num_heads=4,
                                            ffn_dim=128, long_skip=long_skip),
                       label_smoothing=0.0, steps=4, choice_temperature=0.0)
    model.train()
    wrapper = OptimWrapper(torch.optim.Adam(model.parameters(), lr=3e-3))
    batch = dict(indices=data, gt_label=labels)
    for _ in range(200):
        model.train_step(batch, wrapper)
    model.eval()
    torch.manual_seed(1)
    losses = [model.loss(data, labels)['loss_ce'] for _ in range(5)]
    assert max(losses) < 0.05
    decoded = model.generate(labels, TokenSampler(temperature=0.0))
    assert torch.equal(decoded, data)


def test_titok_presets_parameter_counts():
    """TiTok-S-128's UViTBert (1024 wide, 10 in + mid + 10 out blocks, 16
    heads, MLP 4096; qkv without bias; long-skip linears; 4096 + 1 + 1000 +
    1 embeddings; 129 positions; LayerNorm; head with bias) has 294,990,848
    parameters. The BERT preset has the official ImageBert's 177,227,008
    minus BERT's constant token-type embedding (2 × 768)."""
    with torch.device('meta'):
        uvit = MODELS.build(dict(type='MaskGITGenerator', arch='titok-uvit',
                                 token_shape=(128, )))
        bert = MODELS.build(dict(type='MaskGITGenerator', arch='titok-bert',
                                 token_shape=(64, )))
    assert len(uvit.in_blocks) == len(uvit.out_blocks) == 10
    assert all(b.skip_linear is not None for b in uvit.out_blocks)
    assert uvit.in_blocks[0].attn.qkv.bias is None
    assert sum(p.numel() for p in uvit.parameters()) == 294_990_848
    assert sum(p.numel() for p in bert.parameters()) == 177_227_008 - 1536


def test_bad_inputs_raise_clear_errors():
    model = tiny_model()
    with pytest.raises(ValueError, match=r'\(B, 4, 4\), got \(2, 4, 5\)'):
        model.logits(torch.zeros(2, 4, 5, dtype=torch.long),
                     torch.tensor([0, 1]))
    with pytest.raises(ValueError, match='even depth'):
        MaskGITGenerator(arch=dict(dim=32, depth=3, num_heads=4, ffn_dim=64,
                                   long_skip=True))
    with pytest.raises(ValueError, match='mask_schedule must be one of'):
        tiny_model(mask_schedule='cos')
    with pytest.raises(ValueError, match='steps must be >= 1'):
        model.generate(torch.tensor([0]), steps=0)
    with pytest.raises(ValueError, match=r"misses \['ffn_dim'\]"):
        MaskGITGenerator(arch=dict(dim=32, depth=2, num_heads=4))


def test_gumbel_noise_is_standard_gumbel():
    noise = gumbel_noise((200_000, ), 'cpu', torch.Generator().manual_seed(0))
    assert torch.isfinite(noise).all()
    euler_gamma = 0.5772156649
    assert abs(noise.mean().item() - euler_gamma) < 0.01
    assert abs(noise.var().item() - math.pi**2 / 6) < 0.03


@torch.no_grad()
def greedy_reference(model, labels, steps, confidence='logit'):
    """Decoding at temperature 0, written out: each step takes the argmax
    of every masked position, scores it by its raw logit (TiTok) or its
    log-probability (MaskGIT) (decoded positions: +inf) and re-masks the
    ``n`` lowest scores, ``n = floor(N · arccos((t+1)/T) / (π/2))`` clipped
    to [1, #masked - 1]."""
    num = model.num_tokens
    ids = torch.full((len(labels), num), model.mask_id)
    for t in range(steps):
        logits = model._network(ids, labels)
        masked = ids == model.mask_id
        best = logits.argmax(-1)
        sampled = torch.where(masked, best, ids)
        if t + 1 < steps:
            if confidence == 'log_prob':
                logits = logits.log_softmax(-1)
            score = logits.gather(-1, best[..., None])[..., 0]
            score = score.masked_fill(~masked, float('inf'))
            n = math.floor(num * math.acos((t + 1) / steps) / (math.pi / 2))
            for b in range(len(labels)):
                k = max(1, min(n, int(masked[b].sum()) - 1))
                sampled[b, score[b].argsort()[:k]] = model.mask_id
        ids = sampled
    return ids.view(len(labels), *model.token_shape)


def test_titok_sampling_mode():
    """Greedy decoding equals the written-out reference with MaskGIT's
    log-probability confidence and with ``sampling_mode='titok'``'s raw
    logit (the two differ); TiTok's Gumbel-max tokens at the annealed
    temperature are reproducible from a seed."""
    model = tiny_model(mask_schedule='arccos', steps=4,
                       sampling_mode='titok', choice_temperature=0.0).eval()
    labels = torch.tensor([0, 3, 5])
    greedy = model.generate(labels)
    assert torch.equal(greedy, greedy_reference(model, labels, 4))
    maskgit = tiny_model(mask_schedule='arccos', steps=4,
                         choice_temperature=0.0,
                         sampler=dict(type='TokenSampler',
                                      temperature=0.0)).eval()
    maskgit_greedy = maskgit.generate(labels)
    assert torch.equal(maskgit_greedy,
                       greedy_reference(maskgit, labels, 4, 'log_prob'))
    assert not torch.equal(maskgit_greedy, greedy)

    model.choice_temperature = 9.5
    model.softmax_temperature_annealing = True
    first = model.generate(labels, generator=torch.Generator().manual_seed(1))
    again = model.generate(labels, generator=torch.Generator().manual_seed(1))
    other = model.generate(labels, generator=torch.Generator().manual_seed(2))
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert int(first.min()) >= 0 and int(first.max()) < model.vocab_size
    with pytest.raises(ValueError, match='sampling_mode'):
        tiny_model(sampling_mode='muse')
    with pytest.raises(ValueError, match='softmax_temperature_annealing'):
        tiny_model(softmax_temperature_annealing=True)
