"""Pinned random parts (issue 17, item 3): the sampler draws from exactly
softmax(filtered logits / T), checked on 40,000 seeded draws per case."""
import pytest
import torch

from vistok.models.generators.sampling import sample_logits

LOGITS = torch.tensor([2.0, 1.0, 0.5, 0.0, -0.5, -1.5])
DRAWS = 40_000
# total variation between the empirical and the exact distribution: its
# expectation is about sqrt(V / (2 pi n)) = 0.005 here; 0.02 is > 4x that
TV_BOUND = 0.02


def empirical(temperature, top_k=None, top_p=None, seed=0):
    generator = torch.Generator().manual_seed(seed)
    ids = sample_logits(LOGITS.expand(DRAWS, -1), temperature, top_k, top_p,
                        generator=generator)
    return torch.bincount(ids, minlength=len(LOGITS)).double() / DRAWS


def total_variation(p, q):
    return 0.5 * (p - q.double()).abs().sum().item()


@pytest.mark.parametrize('temperature', [0.5, 2.0])
def test_temperature_divides_the_logits(temperature):
    exact = (LOGITS / temperature).softmax(-1)
    assert total_variation(empirical(temperature), exact) < TV_BOUND
    # multiplying instead of dividing is far off
    wrong = (LOGITS * temperature).softmax(-1)
    assert total_variation(exact.double(), wrong) > 5 * TV_BOUND


def test_top_k_and_top_p_renormalise_the_kept_tokens():
    probs = LOGITS.softmax(-1)
    top3 = torch.zeros_like(probs)
    top3[:3] = probs[:3] / probs[:3].sum()
    assert total_variation(empirical(1.0, top_k=3), top3) < TV_BOUND
    # top-p: the smallest prefix (by probability) whose mass reaches p
    mass = probs.cumsum(0)
    keep = int((mass < 0.8).sum()) + 1
    nucleus = torch.zeros_like(probs)
    nucleus[:keep] = probs[:keep] / probs[:keep].sum()
    assert keep == 3
    assert total_variation(empirical(1.0, top_p=0.8), nucleus) < TV_BOUND
    # both, with a temperature: filter the tempered logits, renormalise
    tempered = (LOGITS / 2.0).softmax(-1)
    both = torch.zeros_like(tempered)
    both[:2] = tempered[:2] / tempered[:2].sum()
    assert total_variation(empirical(2.0, top_k=2, top_p=0.99),
                           both) < TV_BOUND
