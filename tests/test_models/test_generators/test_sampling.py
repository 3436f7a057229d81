"""The sampling contract shared by the generators, and token batches."""
import math

import pytest
import torch

from vistok.models.data_preprocessors import TokenDataPreprocessor
from vistok.models.generators.sampling import (
    TokenSampler,
    filter_logits,
    guidance_scale,
    sample_logits,
)
from vistok.registry import SAMPLERS


def test_guidance_schedules():
    assert guidance_scale(None, 'linear', 0.3) == 1.0
    assert guidance_scale(4.0, 'constant', 0.0) == 4.0
    assert guidance_scale(4.0, 'linear', 0.0) == 1.0
    assert guidance_scale(4.0, 'linear', 0.5) == 2.5
    assert guidance_scale(4.0, 'linear', 1.0) == 4.0
    # power-cosine: 1 + (s - 1)(1 - cos(pi p^k)) / 2
    expected = 1 + 3 * (1 - math.cos(math.pi * 0.5**2)) / 2
    assert guidance_scale(4.0, 'power_cosine', 0.5, power=2) == \
        pytest.approx(expected)
    assert guidance_scale(4.0, 'power_cosine', 1.0) == pytest.approx(4.0)
    with pytest.raises(ValueError, match='schedule'):
        guidance_scale(2.0, 'cosine', 0.5)
    with pytest.raises(ValueError, match='progress'):
        guidance_scale(2.0, 'linear', 1.5)


def test_top_k_and_top_p_filtering():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0], [0.0, 0.0, 5.0, 1.0]])
    top2 = filter_logits(logits, top_k=2)
    assert torch.isinf(top2).sum(1).tolist() == [2, 2]
    assert torch.equal(top2.argmax(1), logits.argmax(1))
    # nucleus: smallest prefix (by probability) whose mass reaches top_p
    probs = logits.softmax(-1)
    for p in (0.5, 0.8, 0.95, 1.0):
        kept = ~torch.isinf(filter_logits(logits, top_p=p))
        for row in range(2):
            order = probs[row].argsort(descending=True)
            mass = probs[row][order].cumsum(0)
            n = int((mass < p).sum()) + 1  # tokens needed to reach p
            assert kept[row].sum() == min(n, 4)
            assert kept[row][order[:n]].all()
    with pytest.raises(ValueError, match='top_k'):
        filter_logits(logits, top_k=0)
    with pytest.raises(ValueError, match='top_p'):
        filter_logits(logits, top_p=0.0)


def test_sampling_is_seeded_greedy_and_respects_filters():
    logits = torch.randn(64, 10, generator=torch.Generator().manual_seed(0))
    draw = lambda seed, **kw: sample_logits(  # noqa: E731
        logits, generator=torch.Generator().manual_seed(seed), **kw)
    assert torch.equal(draw(1), draw(1))
    assert not torch.equal(draw(1), draw(2))
    assert torch.equal(draw(1, temperature=0), logits.argmax(-1))
    assert torch.equal(draw(3, top_k=1), logits.argmax(-1))
    allowed = logits.topk(3, -1).indices
    picked = draw(4, top_k=3)
    assert (allowed == picked[:, None]).any(1).all()


def test_token_sampler_guidance_disabled_returns_conditional_logits():
    cond, uncond = torch.randn(2, 5), torch.randn(2, 5)
    off = SAMPLERS.build(dict(type='TokenSampler'))
    assert not off.uses_guidance and off.guide(cond, None, 0.5) is cond
    unit = TokenSampler(guidance_scale=1.0)
    assert not unit.uses_guidance
    on = TokenSampler(guidance_scale=3.0, guidance_schedule='linear')
    assert on.uses_guidance
    assert torch.allclose(on.guide(cond, uncond, 0.5),
                          uncond + 2.0 * (cond - uncond))
    with pytest.raises(ValueError, match='temperature'):
        TokenSampler(temperature=-1)


def test_token_preprocessor_batches_every_structure():
    pre = TokenDataPreprocessor()
    grid = [torch.randint(9, (4, 4), dtype=torch.int32) for _ in range(3)]
    out = pre(dict(indices=grid, gt_label=[2, 0, 1]))
    assert out['inputs'].dtype == torch.long
    assert torch.equal(out['inputs'], torch.stack(grid).long())
    assert out['data_samples'].tolist() == [2, 0, 1]
    scales = [[torch.zeros(1, 1), torch.ones(2, 2)] for _ in range(3)]
    out = pre(dict(indices=scales))
    assert isinstance(out['inputs'], list) and out['data_samples'] is None
    assert [t.shape for t in out['inputs']] == [(3, 1, 1), (3, 2, 2)]
    levels = [(torch.zeros(2, 2), torch.ones(4, 4)) for _ in range(2)]
    out = pre(dict(indices=levels))
    assert isinstance(out['inputs'], tuple)
    assert out['inputs'][1].shape == (2, 4, 4)


def test_token_preprocessor_reads_the_runners_collated_levels():
    """Through the Runner, pseudo_collate turns per-sample lists of levels
    into per-level lists of samples; both layouts give the same batch."""
    from mmengine.dataset import pseudo_collate
    pre = TokenDataPreprocessor()
    samples = [dict(indices=[torch.full((1, 1, 2), i),
                             torch.full((2, 2, 2), i)],
                    sample_idx=i, gt_label=i) for i in range(3)]
    collated = pseudo_collate(samples)
    out = pre(collated)
    assert [t.shape for t in out['inputs']] == [(3, 1, 1, 2), (3, 2, 2, 2)]
    assert out['inputs'][1][:, 0, 0, 0].tolist() == [0, 1, 2]
    direct = pre(dict(indices=[s['indices'] for s in samples]))
    for a, b in zip(out['inputs'], direct['inputs']):
        assert torch.equal(a, b)
    # as many levels as samples, all of one shape: the batch size decides
    square = [dict(indices=[torch.full((2, 2), 10 * i + j) for j in range(2)],
                   sample_idx=i) for i in range(2)]
    out = pre(pseudo_collate(square))
    assert out['inputs'][0].flatten(1)[:, 0].tolist() == [0, 10]
