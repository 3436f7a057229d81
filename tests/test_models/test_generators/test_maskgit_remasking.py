"""MaskGIT decoding with its Gumbel noise pinned to known tensors, against
the official re-masking rule written out.

Official rule (MaskGIT, google-research/maskgit, ``maskgit/libml/
parallel_decode.py``: ``decode`` and ``mask_by_random_topk``; read from the
copy in skrya/maskgit at d45e95d2aa1c4364c8dac5de512fbc5eb7c5a23f, and
TiTok's PyTorch port, bytedance/1d-tokenizer ``modeling/maskgit.py``
``ImageBert.generate`` at 942a96fbdd873780179d1b78d5462911528bf8c8): at
step ``t`` of ``T``, with ``r = (t+1)/T``,

* ``confidence = score + c · (1 - r) · g`` (``c`` the choice temperature,
  ``g`` Gumbel noise; ``score = log p(sampled)`` in MaskGIT, the sampled
  token's logit in TiTok; already decoded tokens: ``+inf``);
* ``n = floor(N · γ(r))`` clipped to ``[1, #masked - 1]``;
* the tokens with ``confidence < sort(confidence)[n]`` (the ``n`` lowest)
  are masked again, every other sampled token is kept; the last step keeps
  all.

TiTok also draws its tokens as ``argmax(ℓ + c · (1 - r) · g)`` (Gumbel-max
at the annealed temperature), with ``ℓ`` divided by ``0.5 + 0.8 · (1 - r)``
under ``softmax_temperature_annealing``.

The test replays a decode step by step from the model's logits and the
pinned noise and compares every intermediate grid; it also checks that the
formula without the ``(1 - r)`` annealing, and with the noise's sign
flipped, would mask other tokens on this data (so either bug fails it).
"""
import math

import pytest
import torch

from _helpers import torch_threads
from vistok.models.generators.maskgit import MaskGITGenerator

CHOICE_TEMPERATURE = 3.0
STEPS = 5
BATCH = 3
#: the head's weights are scaled so that the scores spread over a range
#: comparable to ``c · (1 - r) · g``: with near-equal scores, the noise
#: alone would decide and any positive factor on it gives the same order
LOGIT_GAIN = 20.0
SAMPLER_SEED = 7


def tiny_model(sampling_mode, schedule, annealing=False):
    torch.manual_seed(0)
    model = MaskGITGenerator(
        arch=dict(dim=32, depth=2, num_heads=4, ffn_dim=64),
        num_classes=8, vocab_size=32, token_shape=(4, 4),
        mask_schedule=schedule, steps=STEPS,
        choice_temperature=CHOICE_TEMPERATURE, sampling_mode=sampling_mode,
        softmax_temperature_annealing=annealing, dropout=0.0,
        attn_dropout=0.0, class_dropout_prob=0.0,
        sampler=dict(type='TokenSampler', temperature=1.0)).eval()
    with torch.no_grad():
        model.head.weight.mul_(LOGIT_GAIN)
    return model


class PinnedNoise:
    """A ``noise_fn`` returning known tensors (standard Gumbel from its own
    seeded stream, never the decode's ``generator``) and recording them."""

    def __init__(self, seed=123):
        self.stream = torch.Generator().manual_seed(seed)
        self.drawn = []

    def __call__(self, shape, device, generator=None):
        u = torch.rand(shape, generator=self.stream, dtype=torch.float64)
        noise = (-torch.log(-torch.log(u))).float().to(device)
        self.drawn.append(noise)
        return noise


def gamma(r, schedule):
    """MaskGIT's ``γ(r)`` (cosine; arccos of MUSE / TiTok)."""
    if schedule == 'cosine':
        return math.cos(math.pi / 2 * r)
    return math.acos(r) / (math.pi / 2)


def official_remask(confidence, masked, num_tokens, r, schedule):
    """``mask_by_random_topk``'s mask: per row, the entries below the
    ``n``-th smallest confidence (0-based), ``n`` clipped as in
    ``decode``."""
    n = math.floor(num_tokens * gamma(r, schedule))
    out = torch.zeros_like(masked)
    for row in range(len(confidence)):
        k = max(1, min(int(masked[row].sum()) - 1, n))
        cut_off = confidence[row].sort().values[k]
        out[row] = confidence[row] < cut_off
    return out


@torch.no_grad()
def replay(model, labels, history, noise, schedule):
    """Step through the decode: the model's logits on the previous grid,
    the official rule with the recorded noise; returns per re-masking step
    the expected mask and the masks the two wrong formulas would give."""
    num, mask_id = model.num_tokens, model.mask_id
    sampler_stream = torch.Generator().manual_seed(SAMPLER_SEED)
    drawn_noise = iter(noise.drawn)
    ids = torch.full((len(labels), num), mask_id)
    wrong = []
    for t in range(STEPS):
        logits = model.logits(ids.view(len(labels), *model.token_shape),
                              labels).float()
        masked = ids == mask_id
        r = (t + 1) / STEPS
        tau = CHOICE_TEMPERATURE * (1 - r)
        if model.sampling_mode == 'titok':
            if model.softmax_temperature_annealing:
                logits = logits / (0.5 + 0.8 * (1 - r))
            tokens = (logits + tau * next(drawn_noise)).argmax(-1)
            score = logits.gather(-1, tokens[..., None])[..., 0]
        else:
            tokens = model.sampler.sample(logits, sampler_stream)
            score = logits.log_softmax(-1).gather(-1, tokens[..., None])[...,
                                                                        0]
        expected = torch.where(masked, tokens, ids)
        if t + 1 < STEPS:
            score = score.masked_fill(~masked, float('inf'))
            g = next(drawn_noise)
            remask = official_remask(score + tau * g, masked, num, r,
                                     schedule)
            assert 1 <= int(remask.sum(-1).min())
            expected = expected.masked_fill(remask, mask_id)
            wrong.append(dict(
                no_annealing=official_remask(
                    score + CHOICE_TEMPERATURE * g, masked, num, r,
                    schedule),
                sign_flipped=official_remask(score - tau * g, masked, num,
                                             r, schedule),
                remask=remask))
        got = history[t].reshape(len(labels), num)
        assert torch.equal(got, expected), (
            f'step {t}: re-masked {(got == mask_id).nonzero().tolist()}, '
            f'official {(expected == mask_id).nonzero().tolist()}')
        ids = got
    assert next(drawn_noise, None) is None  # every pinned tensor was used
    return wrong


@pytest.mark.parametrize('sampling_mode, schedule, annealing', [
    ('maskgit', 'cosine', False),
    ('titok', 'arccos', False),
    ('titok', 'arccos', True),
])
def test_remasking_equals_the_official_rule(sampling_mode, schedule,
                                            annealing):
    """Every intermediate grid of a 5-step decode (4 re-masking steps, 3
    samples) equals the official rule replayed on the pinned noise: the
    kept tokens are the sampled ones, the re-masked ones exactly the ``n``
    lowest of ``score + c · (1 - (t+1)/T) · g``."""
    model = tiny_model(sampling_mode, schedule, annealing)
    labels = torch.tensor([0, 3, 5])
    noise = PinnedNoise()
    with torch_threads(1):  # tiny matrices: threads only add overhead
        tokens, history = model.generate(
            labels, generator=torch.Generator().manual_seed(SAMPLER_SEED),
            return_history=True, noise_fn=noise)
        wrong = replay(model, labels, history, noise, schedule)
    assert torch.equal(tokens, history[-1])
    assert (tokens != model.mask_id).all()

    num, vocab = model.num_tokens, model.vocab_size
    confidence_shape = (BATCH, num)
    per_step = [(BATCH, num, vocab)] if sampling_mode == 'titok' else []
    expected_shapes = (per_step + [confidence_shape]) * (STEPS - 1) + \
        per_step
    assert [tuple(n.shape) for n in noise.drawn] == expected_shapes

    assert len(wrong) == STEPS - 1
    # the data tells the rule from the two planted bugs
    for bug in ('no_annealing', 'sign_flipped'):
        assert any(not torch.equal(step[bug], step['remask'])
                   for step in wrong), bug

