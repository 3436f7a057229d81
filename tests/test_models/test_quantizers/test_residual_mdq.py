"""``ResidualQuantizer(depth_loss_space='mdq')``: MARVEL's official loss
weighting of the residual LFQ, against MDQ's loss written out from
``LookupFreeQuantizer.forward`` (``modeling/quantizer/quantizer.py``) and
``entropy_loss_fn`` / ``clamp_log`` (``modeling/quantizer/
quantizer_utils.py``) of PadrickLeee/MDQ at commit
7816c37086502bfa50931734fbfa2995d5f78cff (its depth is the hard-coded
``depth_codebook``; a parameter here)."""
import pytest
import torch

from vistok.models.quantizers.lfq import LookupFreeQuantizer
from vistok.models.quantizers.residual import ResidualQuantizer

BITS, COMMITMENT, ENTROPY, GAMMA = 4, 0.25, 0.02, 1.0
#: MDQ's temperature is 0.01; at 1.0 every code probability of the latents
#: below stays above MDQ's log clamp (1e-5), where the two entropies agree
TEMPERATURE = 1.0


def mdq_codebook(bits):
    """MDQ's ``codebook`` buffer: the ±1 corners (its bit order; the
    losses do not depend on it)."""
    codes = torch.arange(2**bits)[:, None]
    return (((codes & 2**torch.arange(bits)) != 0).float() * 2 - 1)


def mdq_losses(z, depth, commitment_cost=COMMITMENT,
               entropy_loss_weight=ENTROPY, temperature=TEMPERATURE,
               entropy_gamma=GAMMA):
    """MDQ's residual LFQ loss on ``z`` ``(B, C, H, W)``: per-depth
    commitment terms (already divided by the depth count, as their mean is
    the total), the commitment total, the entropy loss and the quantized
    output."""
    z = z.permute(0, 2, 3, 1)
    codebook = mdq_codebook(z.shape[-1])
    cumulative = torch.zeros_like(z)
    per_depth, affinities = [], []
    for si in range(depth):
        residual = z - cumulative
        ones = torch.ones_like(residual)
        quantized = torch.where(residual > 0, ones, -ones) / 2**si
        cumulative = cumulative + quantized
        affinities.append(
            -2 * torch.einsum('bhwc,nc->bhwn', residual, codebook))
        per_depth.append(commitment_cost *
                         torch.mean((quantized.detach() - residual)**2) /
                         depth)
    # entropy_loss_fn(-1 * d, temperature, gamma) on the stacked depths
    affinity = (-torch.stack(affinities)).reshape(-1, 2**z.shape[-1])
    probability = (affinity / temperature).softmax(-1)
    average = probability.mean(0)

    def clamp_log(x):
        return torch.log(torch.clamp(x, 1e-5))

    per_sample = -torch.mean(
        torch.sum(probability * clamp_log(probability), -1))
    average_entropy = torch.sum(-average * clamp_log(average)) * entropy_gamma
    entropy = entropy_loss_weight * (per_sample - average_entropy)
    return (per_depth, sum(per_depth), entropy,
            cumulative.permute(0, 3, 1, 2))


def hand_made_latent():
    """(1, 4, 2, 3): every sign and residuals on both sides of each depth's
    code (|z| in [0.05, 1.6], depth 1 quantizes to ±1/2, depth 2 to ±1/4)."""
    values = torch.tensor([
        [0.9, -0.3, 0.6, -1.2, 0.05, 1.6],
        [-0.7, 0.4, 1.1, -0.1, -0.55, 0.2],
        [0.3, 0.8, -0.9, 0.45, -1.4, 0.65],
        [-0.2, -0.6, 0.15, 1.3, 0.7, -0.85],
    ])
    return values.reshape(1, BITS, 2, 3)


def residual_lfq(depth, space, **kwargs):
    lfq = dict(type='LookupFreeQuantizer', codebook_bits=BITS,
               commitment_weight=COMMITMENT, entropy_weight=ENTROPY,
               temperature=TEMPERATURE, diversity_gamma=GAMMA)
    return ResidualQuantizer(lfq, depth, depth_scales='pow2',
                             depth_loss_reduction='mean',
                             depth_loss_space=space, **kwargs).train()


@pytest.mark.parametrize('depth', [1, 2, 3])
def test_mdq_weighting_equals_mdq_formula(depth):
    """The commitment at every depth, their mean, the pooled entropy, the
    output and the gradient equal MDQ's on a hand-made residual."""
    z = hand_made_latent().requires_grad_()
    ref_depths, ref_commitment, ref_entropy, ref_quantized = mdq_losses(
        z, depth)
    quantizer = residual_lfq(depth, 'mdq', per_depth_loss=True)
    out = quantizer(z)
    for d in range(depth):
        torch.testing.assert_close(out.loss[f'depth{d}.loss_commitment'],
                                   ref_depths[d], rtol=1e-6, atol=0)
    assert not any(k.endswith('.loss_entropy') for k in out.loss)
    torch.testing.assert_close(out.loss['loss_entropy'], ref_entropy,
                               rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(out.quantized, ref_quantized)
    # one reduced term per name without per_depth_loss; same gradients
    reduced = residual_lfq(depth, 'mdq')(z)
    assert sorted(reduced.loss) == ['loss_commitment', 'loss_entropy']
    torch.testing.assert_close(reduced.loss['loss_commitment'],
                               ref_commitment, rtol=1e-6, atol=0)
    grad, = torch.autograd.grad(sum(reduced.loss.values()), z)
    ref_grad, = torch.autograd.grad(ref_commitment + ref_entropy, z)
    # fp32 round-off of two summation orders
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4,
                               atol=1e-5 * ref_grad.abs().max().item())


def test_default_scaled_space_is_four_to_the_d_times_mdq():
    """vistok's default (unchanged) measures depth d in the rescaled space:
    its commitment is 4^d x MDQ's at every depth."""
    z = hand_made_latent()
    ref_depths = mdq_losses(z, 3)[0]
    out = residual_lfq(3, 'scaled', per_depth_loss=True)(z)
    for d in range(3):
        torch.testing.assert_close(out.loss[f'depth{d}.loss_commitment'],
                                   4**d * ref_depths[d], rtol=1e-6, atol=0)
        assert f'depth{d}.loss_entropy' in out.loss


def test_mdq_entropy_is_pooled_not_averaged():
    """The entropy is that of all depths' residual rows pooled as samples
    (MDQ's stack), which differs from the mean of per-depth entropies."""
    z = torch.randn(4, BITS, 3, 3, generator=torch.Generator().manual_seed(0))
    out = residual_lfq(2, 'mdq')(z)
    lfq = LookupFreeQuantizer(BITS, temperature=TEMPERATURE)
    first = torch.where(z > 0, 1.0, -1.0)
    rows = [z, z - first]
    flat = [r.movedim(1, -1).reshape(-1, BITS) for r in rows]
    pooled = lfq.entropy_terms(torch.cat(flat))
    torch.testing.assert_close(out.stats['soft_codebook_entropy'], pooled[1])
    per_depth = torch.stack([lfq.entropy_terms(f)[1] for f in flat]).mean()
    assert out.stats['soft_codebook_entropy'] > per_depth + 1e-3


def test_mdq_masked_positions_left_out():
    """A mask leaves padded positions out of the pooled entropy (as if
    they were not there)."""
    z = hand_made_latent()
    mask = torch.tensor([[[True, True, False], [True, False, True]]])
    out = residual_lfq(2, 'mdq')(z, mask)
    kept = z.flatten(2)[..., mask.flatten()]  # (1, C, 4)
    ref = mdq_losses(kept.unsqueeze(-1), 2)
    torch.testing.assert_close(out.loss['loss_commitment'], ref[1])
    torch.testing.assert_close(out.loss['loss_entropy'], ref[2])


@pytest.mark.parametrize('quantizer, match', [
    (dict(type='VectorQuantizer', codebook_size=16, embed_dim=BITS),
     'LookupFreeQuantizer'),
    (dict(type='LookupFreeQuantizer', codebook_bits=BITS, in_channels=8),
     'no projections'),
    (dict(type='LookupFreeQuantizer', codebook_bits=BITS, spherical=True),
     'spherical'),
])
def test_mdq_refuses_other_sub_quantizers(quantizer, match):
    import vistok.models.quantizers.vq  # noqa: F401 (registers it)
    with pytest.raises(ValueError, match=match):
        ResidualQuantizer(quantizer, 2, depth_loss_space='mdq')


def test_unknown_space_is_refused():
    with pytest.raises(ValueError, match='depth_loss_space must be one of'):
        residual_lfq(2, 'rescaled')

