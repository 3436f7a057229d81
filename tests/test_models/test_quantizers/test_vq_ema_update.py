"""VectorQuantizer's EMA codebook update at decay 0.9 over three steps,
against the update written out (VQ-VAE, van den Oord et al. 2017, appendix
A.1, with the Laplace smoothing of Sonnet's ``VectorQuantizerEMA`` and
taming's ``EMAVectorQuantizer``):

    N_i ← γ N_i + (1 - γ) n_i,     m_i ← γ m_i + (1 - γ) s_i,
    Ñ_i = (N_i + ε) / (Σ N + K ε) · Σ N,     e_i = m_i / Ñ_i,

``n_i`` / ``s_i`` the count / sum of the (unmasked) vectors whose nearest
code is ``i``. At γ = 0.9 swapping γ and 1 - γ changes every number (at
0.5, where the older test ran, it changed none)."""
import pytest
import torch

from vistok.models.quantizers.vq import VectorQuantizer

DECAY = 0.9
CODES = torch.tensor([[0., 0.], [4., 0.], [0., 4.], [4., 4.]])
#: three steps of vectors (N, 2): code 2 gets nothing at step 1, code 3
#: three vectors at step 2; step 3 masks its last two vectors out
STEPS = [
    torch.tensor([[0.5, 0.2], [-0.3, 0.1], [3.6, 0.4], [4.2, 4.4]]),
    torch.tensor([[0.1, 0.3], [3.9, -0.2], [0.2, 3.8], [3.7, 4.1],
                  [4.3, 3.6], [4.0, 4.5]]),
    torch.tensor([[-0.2, -0.4], [0.3, 4.4], [4.4, 0.3], [3.5, 3.9],
                  [0.1, 0.1], [4.1, 4.2]]),
]
MASKS = [None, None, torch.tensor([True, True, True, True, False, False])]


def smoothed(sizes, eps):
    total = sizes.sum()
    return (sizes + eps) / (total + len(sizes) * eps) * total


def written_out_step(state, vectors, mask, eps):
    """One training step in float64: nearest codes by brute force, then
    the EMA statistics and the codebook."""
    sizes, sums, codebook = state
    distance = ((vectors[:, None] - codebook[None])**2).sum(-1)
    indices = distance.argmin(1)
    kept = slice(None) if mask is None else mask
    counts = torch.zeros(len(codebook), dtype=torch.float64)
    step_sums = torch.zeros_like(codebook)
    for i, v in zip(indices[kept], vectors[kept]):
        counts[i] += 1
        step_sums[i] += v
    sizes = DECAY * sizes + (1 - DECAY) * counts
    sums = DECAY * sums + (1 - DECAY) * step_sums
    codebook = sums / smoothed(sizes, eps)[:, None]
    return indices, (sizes, sums, codebook)


@pytest.mark.parametrize('eps', [1e-5, 0.5])
def test_three_ema_steps_equal_the_written_out_update(eps):
    """Indices, cluster sizes, embedding sums, codebook and the output of
    each step equal the written-out update (fp64 reference, fp32 model);
    ``eps=0.5`` makes the Laplace smoothing visible. Initial state
    (``set_codes``): ``N = 1``, ``m = e · Ñ``."""
    quantizer = VectorQuantizer(len(CODES), 2, ema_decay=DECAY,
                                ema_eps=eps).train()
    quantizer.set_codes(CODES)
    assert list(quantizer.parameters()) == []  # EMA: no gradient parameter
    sizes = torch.ones(len(CODES), dtype=torch.float64)
    state = (sizes, CODES.double() * smoothed(sizes, eps)[:, None],
             CODES.double())
    torch.testing.assert_close(quantizer.ema_embed_sum, state[1].float())

    for step, (vectors, mask) in enumerate(zip(STEPS, MASKS)):
        z = vectors.t()[None]  # (1, 2, N)
        out = quantizer(z, None if mask is None else mask[None])
        indices, state = written_out_step(state, vectors.double(), mask, eps)
        assert out.indices[0].tolist() == indices.tolist(), step
        assert 'loss_codebook' not in out.loss
        sizes, sums, codebook = (x.float() for x in state)
        torch.testing.assert_close(quantizer.ema_cluster_size, sizes,
                                   rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(quantizer.ema_embed_sum, sums,
                                   rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(quantizer.codebook, codebook,
                                   rtol=1e-6, atol=1e-6)
        # the update comes before the gather: the output is the new code
        torch.testing.assert_close(out.quantized[0].t(), codebook[indices],
                                   rtol=1e-6, atol=1e-6)
        assert torch.equal(out.quantized, quantizer.decode(out.indices))
        if step == 0:  # the first step by hand: counts [2, 1, 0, 1]
            torch.testing.assert_close(
                quantizer.ema_cluster_size,
                torch.tensor([1.1, 1.0, 0.9, 1.0]))

    # eval mode: no update
    before = {k: v.clone() for k, v in quantizer.state_dict().items()}
    quantizer.eval()(STEPS[0].t()[None])
    for key, value in quantizer.state_dict().items():
        assert torch.equal(value, before[key]), key
