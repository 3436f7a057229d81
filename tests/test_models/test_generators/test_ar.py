"""LlamaGen-style class-conditional AR generator: presets, KV cache,
sampling contract, guidance and overfitting a tiny token set."""
import math

import pytest
import torch
from mmengine.optim import OptimWrapper

from vistok.models.generators.ar import ARGenerator
from vistok.models.generators.sampling import TokenSampler
from vistok.registry import MODELS

TINY = dict(arch=dict(dim=32, depth=2, num_heads=4), num_classes=4,
            vocab_size=32, token_shape=(4, 4), token_dropout=0.0,
            resid_dropout=0.0, class_dropout_prob=0.0)


def tiny_model(seed=0, **kwargs):
    """A small random model with a non-zero output layer (LlamaGen zeroes
    it at init, which would make every logit equal)."""
    torch.manual_seed(seed)
    model = ARGenerator(**{**TINY, **kwargs})
    torch.nn.init.normal_(model.head.weight, std=0.5)
    return model.eval()


@pytest.mark.parametrize('arch,params,paper', [
    ('gpt-b', 110_888_448, 111e6), ('gpt-l', 342_910_976, 343e6),
    ('gpt-xl', 774_699_520, 775e6), ('gpt-xxl', 1_410_972_672, 1.4e9)
])
def test_llamagen_preset_parameter_counts(arch, params, paper):
    """Exact counts of LlamaGen's c2i GPTs (ModelArgs: vocab 16384, 1000
    classes + null, SwiGLU width multiple of 256, untied output), which
    round to the paper's Table 1 sizes."""
    with torch.device('meta'):
        model = MODELS.build(dict(type='ARGenerator', arch=arch))
    count = sum(p.numel() for p in model.parameters())
    assert count == params
    digits = 2 if paper >= 1e9 else 3
    assert float(f'{count:.{digits}g}') == paper


@pytest.mark.parametrize('rope', ['2d', '1d'])
def test_kv_cache_equals_recomputation(rope):
    model = tiny_model(rope=rope)
    labels = torch.tensor([0, 3, 1])
    greedy = TokenSampler(temperature=0.0)
    cached, cached_logits = model.generate(labels, greedy,
                                           return_logits=True)
    full, full_logits = model.generate(labels, greedy, use_cache=False,
                                       return_logits=True)
    assert torch.equal(cached, full)
    torch.testing.assert_close(cached_logits, full_logits)
    # and both equal the teacher-forced (training) logits of the sample
    torch.testing.assert_close(cached_logits, model.logits(cached, labels))
    assert cached.shape == (3, 4, 4) and cached.dtype == torch.long


def test_top_k_one_is_greedy_and_seed_reproduces():
    model = tiny_model()
    labels = torch.tensor([2, 2, 1, 0])
    greedy = model.generate(labels, TokenSampler(temperature=0.0))
    top1 = model.generate(labels, TokenSampler(temperature=1.5, top_k=1),
                          generator=torch.Generator().manual_seed(3))
    assert torch.equal(greedy, top1)
    sampler = TokenSampler(temperature=1.0, top_p=0.9)
    first = model.generate(labels, sampler,
                           generator=torch.Generator().manual_seed(7))
    again = model.generate(labels, sampler,
                           generator=torch.Generator().manual_seed(7))
    other = model.generate(labels, sampler,
                           generator=torch.Generator().manual_seed(8))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_guidance_disabled_is_the_conditional_model():
    model = tiny_model()
    labels = torch.tensor([0, 1, 2])
    seen = []
    model.class_embed.embedding.register_forward_hook(
        lambda mod, args, out: seen.append(args[0].clone()))
    runs = []
    for scale in (None, 1.0):  # both disable guidance (constant schedule)
        seen.clear()
        tokens, logits = model.generate(
            labels, TokenSampler(guidance_scale=scale),
            generator=torch.Generator().manual_seed(0), return_logits=True)
        # the unconditional branch never runs: only the 3 real labels
        assert [s.tolist() for s in seen] == [labels.tolist()]
        runs.append(tokens)
        torch.testing.assert_close(logits, model.logits(tokens, labels))
    assert torch.equal(runs[0], runs[1])


def test_guidance_combines_batched_branches():
    model = tiny_model()
    labels = torch.tensor([0, 3])
    sampler = TokenSampler(temperature=0.0, guidance_scale=3.0,
                           guidance_schedule='linear')
    tokens, logits = model.generate(labels, sampler, return_logits=True)
    cond = model.logits(tokens, labels)
    uncond = model.logits(tokens, torch.full_like(labels, model.null_class))
    scale = 1 + 2.0 * torch.arange(16) / 16  # linear ramp at i / N
    expected = uncond + scale[None, :, None] * (cond - uncond)
    torch.testing.assert_close(logits, expected)
    assert torch.equal(tokens.flatten(1), logits.argmax(-1))


def test_overfits_tiny_token_set_through_train_step():
    """8 sequences of 16 tokens (vocab 32), 2 per class of 4, differing at
    the first token: the minimum loss is ln(2) / 16 ≈ 0.043."""
    torch.manual_seed(0)
    data = torch.randint(32, (8, 4, 4))
    data[:, 0, 0] = torch.arange(8)
    labels = torch.arange(8) // 2
    model = ARGenerator(**{**TINY, 'arch': dict(dim=64, depth=2,
                                                num_heads=4)})
    wrapper = OptimWrapper(torch.optim.Adam(model.parameters(), lr=3e-3))
    batch = dict(indices=data, gt_label=labels)
    logs = [model.train_step(batch, wrapper)['loss_ce'] for _ in range(150)]
    # zero-initialised output layer (LlamaGen): uniform logits at first
    assert logs[0].item() == pytest.approx(math.log(32), abs=1e-6)
    assert logs[-1] < 0.08
    model.eval()
    samples = model.generate(torch.arange(4), TokenSampler(temperature=0))
    for cls, sample in enumerate(samples):
        assert any(torch.equal(sample, data[i]) for i in (2 * cls,
                                                          2 * cls + 1))
    predictions = model.val_step(batch)
    assert len(predictions) == 8 and predictions[0].tokens.shape == (4, 4)


def test_bad_inputs_raise_clear_errors():
    model = tiny_model()
    with pytest.raises(ValueError, match=r'\(B, 4, 4\), got \(2, 16\)'):
        model.logits(torch.zeros(2, 16, dtype=torch.long),
                     torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r'\(h, w\) grid'):
        ARGenerator(**{**TINY, 'token_shape': (16, )})
    with pytest.raises(ValueError, match="rope must be '2d' or '1d'"):
        ARGenerator(**{**TINY, 'rope': '3d'})
    with pytest.raises(ValueError, match='arch must be one of'):
        ARGenerator(**{**TINY, 'arch': 'gpt-z'})
    one_d = ARGenerator(**{**TINY, 'token_shape': (16, ), 'rope': '1d'})
    assert one_d.generate(torch.tensor([1])).shape == (1, 16)
