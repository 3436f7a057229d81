import math

import pytest
import torch
import torch.nn.functional as F

from vistok.models.quantizers.lfq import (
    LookupFreeQuantizer,
    bit_pattern_probabilities,
    codebook_entropy_exact,
    codebook_entropy_marginal,
)
from vistok.registry import QUANTIZERS

BITS = 6
# images, volumes, token sequences and plain vectors: (B, C, *spatial)
SHAPES = [(2, BITS, 4, 5), (2, BITS, 3, 4, 5), (2, BITS, 7), (5, BITS)]
OPTIONS = [
    dict(),
    dict(spherical=True),
    dict(in_channels=10),
    dict(in_channels=10, spherical=True),
]


def latent(shape, channels=None, seed=1):
    shape = (shape[0], channels or shape[1], *shape[2:])
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def make_quantizer(bits=BITS, **kwargs):
    torch.manual_seed(0)
    return LookupFreeQuantizer(bits, **kwargs)


def all_codes(bits, scale):
    """Every code of the implicit codebook, row j = code of index j, with the
    bits of j read MSB first."""
    shifts = torch.arange(bits - 1, -1, -1)
    bits_of = (torch.arange(2**bits)[:, None] >> shifts) & 1
    return (bits_of * 2 - 1).double() * scale


def enumerated_entropies(u, bits, scale, temperature):
    """The MAGVIT-2 entropy terms by brute force over all 2^d codes: softmax
    of -‖u - c‖²/τ, fp64."""
    logits = -torch.cdist(u.double(), all_codes(bits, scale))**2 / temperature
    probs = logits.softmax(-1)
    sample = -torch.special.xlogy(probs, probs).sum(-1).mean()
    mean = probs.mean(0)
    return sample, -torch.special.xlogy(mean, mean).sum(), probs


def test_build_from_registry():
    quantizer = QUANTIZERS.build(
        dict(type='LookupFreeQuantizer', codebook_bits=10, spherical=True))
    assert isinstance(quantizer, LookupFreeQuantizer)
    assert quantizer.codebook_size == 1024
    assert quantizer.in_channels == 10
    assert quantizer.state_dict() == {}


@pytest.mark.parametrize('shape', SHAPES)
def test_index_is_binary_of_sign_bits_msb_first(shape):
    quantizer = make_quantizer()
    z = latent(shape)
    out = quantizer(z)
    vectors = z.movedim(1, -1).reshape(-1, BITS)
    expected = torch.tensor([
        int(''.join('1' if value > 0 else '0' for value in vector), 2)
        for vector in vectors
    ]).reshape(shape[0], *shape[2:])
    assert out.indices.dtype == torch.long
    assert torch.equal(out.indices, expected)
    assert torch.equal(quantizer.encode(z), expected)
    # channel 0 is the most significant bit
    one_hot = -torch.ones(1, BITS, 1)
    one_hot[0, 0] = 1
    assert quantizer.encode(one_hot).item() == 2**(BITS - 1)
    assert torch.equal(quantizer.indices_to_bits(torch.tensor(1)),
                       torch.arange(BITS) == BITS - 1)


@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('options', OPTIONS)
def test_quantized_is_bit_identical_to_decode(shape, options):
    quantizer = make_quantizer(**options)
    z = latent(shape, options.get('in_channels')).requires_grad_()
    out = quantizer(z)
    assert out.quantized.shape == z.shape
    assert out.indices.shape == (shape[0], *shape[2:])
    assert torch.equal(out.quantized, quantizer.decode(out.indices))
    assert torch.equal(quantizer.encode(z), out.indices)
    assert torch.equal(quantizer.decode(quantizer.encode(z)),
                       out.quantized.detach())


@pytest.mark.parametrize('spherical', [False, True])
def test_codes_are_signs_times_scale(spherical):
    quantizer = make_quantizer(spherical=spherical)
    z = latent(SHAPES[0])
    out = quantizer(z)
    scale = 1 / math.sqrt(BITS) if spherical else 1.0
    assert torch.equal(out.quantized,
                       torch.where(z > 0, scale, -scale).float())
    decoded = quantizer.decode(torch.arange(2**BITS)[None])[0].t()
    torch.testing.assert_close(decoded.double(), all_codes(BITS, scale))


def test_straight_through_gradient_is_identity():
    quantizer = make_quantizer()
    z = latent(SHAPES[0]).requires_grad_()
    grad = latent(SHAPES[0], seed=2)
    quantizer(z).quantized.backward(grad)
    assert torch.equal(z.grad, grad)


def test_spherical_gradient_passes_through_the_normalisation():
    quantizer = make_quantizer(spherical=True)
    z = latent(SHAPES[0]).requires_grad_()
    grad = latent(SHAPES[0], seed=2)
    quantizer(z).quantized.backward(grad)
    expected, = torch.autograd.grad(F.normalize(z, dim=1), z, grad)
    torch.testing.assert_close(z.grad, expected)


def test_bit_pattern_probabilities_are_the_factorised_softmax():
    bits, scale, temperature = 5, 1.0, 0.5
    u = torch.randn(7, bits, generator=torch.Generator().manual_seed(3))
    logits = u * (4 * scale / temperature)
    *_, probs = enumerated_entropies(u, bits, scale, temperature)
    # column j holds the pattern of index j, MSB first
    torch.testing.assert_close(
        bit_pattern_probabilities(logits).double(), probs)
    assert torch.equal(bit_pattern_probabilities(logits[:, :0]),
                       torch.ones(7, 1))


@pytest.mark.parametrize('bits', [6, 7, 8])
@pytest.mark.parametrize('spherical', [False, True])
def test_entropy_terms_equal_enumeration(bits, spherical):
    temperature, weight, gamma = 0.3, 0.2, 0.7
    quantizer = make_quantizer(bits,
                               spherical=spherical,
                               temperature=temperature,
                               entropy_weight=weight,
                               diversity_gamma=gamma)
    # spread over several scales so that some bits are confident, some not
    z = latent((3, bits, 40)) * torch.logspace(-2, 0, 40)
    z.requires_grad_()
    out = quantizer(z)

    u = z.movedim(1, -1).reshape(-1, bits)
    if spherical:
        u = F.normalize(u, dim=-1)
    scale = 1 / math.sqrt(bits) if spherical else 1.0
    sample, codebook, _ = enumerated_entropies(u, bits, scale, temperature)
    expected_loss = weight * (sample - gamma * codebook)
    for value, expected in [(out.stats['soft_sample_entropy'], sample),
                            (out.stats['soft_codebook_entropy'], codebook),
                            (out.loss['loss_entropy'], expected_loss)]:
        torch.testing.assert_close(value.double(),
                                   expected.detach(),
                                   atol=1e-6,
                                   rtol=1e-5)
    # the gradients of the loss agree with the enumerated formula too
    grad, = torch.autograd.grad(out.loss['loss_entropy'], z)
    expected_grad, = torch.autograd.grad(expected_loss, z)
    torch.testing.assert_close(grad, expected_grad, atol=1e-5, rtol=1e-3)


@pytest.mark.parametrize('spherical', [False, True])
def test_marginal_mode_equals_sum_of_bit_entropies(spherical):
    bits, temperature = 6, 0.3
    quantizer = make_quantizer(bits,
                               spherical=spherical,
                               temperature=temperature,
                               entropy_loss_mode='marginal')
    z = latent((3, bits, 40))
    out = quantizer(z)
    u = z.movedim(1, -1).reshape(-1, bits)
    if spherical:
        u = F.normalize(u, dim=-1)
    scale = 1 / math.sqrt(bits) if spherical else 1.0
    _, codebook, probs = enumerated_entropies(u, bits, scale, temperature)
    bit_is_one = all_codes(bits, scale) > 0  # (2^d, d)
    mean_one = probs.mean(0) @ bit_is_one.double()
    marginal = -(torch.special.xlogy(mean_one, mean_one) +
                 torch.special.xlogy(1 - mean_one, 1 - mean_one)).sum()
    torch.testing.assert_close(out.stats['soft_codebook_entropy'].double(),
                               marginal)
    assert marginal >= codebook  # an upper bound


def test_marginal_entropy_does_not_see_collapse_onto_correlated_bits():
    bits = 8
    # half the samples confidently on code 00000000, half on 11111111
    logits = torch.full((64, bits), 50.0)
    logits[::2] *= -1
    assert torch.isclose(codebook_entropy_marginal(logits),
                         torch.tensor(bits * math.log(2)))
    assert torch.isclose(codebook_entropy_exact(logits),
                         torch.tensor(math.log(2)))


def test_large_codebook_exact_entropy_is_cheap():
    # d = 18 (MAGVIT-2's 262144 codes): two 4096 x 512 tables, not 4096 x
    # 2^18. Identical rows make the mean distribution equal each row's, so
    # the codebook entropy must equal the per-sample entropy.
    bits = 18
    quantizer = make_quantizer(bits, temperature=1.0)
    row = torch.randn(1, bits, 1, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        out = quantizer(row.expand(1, bits, 4096))
        assert torch.isclose(out.stats['soft_codebook_entropy'],
                             out.stats['soft_sample_entropy'])
        out = quantizer(latent((1, bits, 4096)))
    sample = out.stats['soft_sample_entropy']
    codebook = out.stats['soft_codebook_entropy']
    # concavity (H(mean) >= mean H) and subadditivity (<= marginal)
    assert sample <= codebook <= bits * math.log(2)
    assert out.stats['code_counts'].shape == (2**bits, )


def test_commitment_loss_formula():
    quantizer = make_quantizer(commitment_weight=0.5, spherical=True)
    z = latent(SHAPES[0])
    out = quantizer(z)
    u = F.normalize(z, dim=1)
    torch.testing.assert_close(out.loss['loss_commitment'],
                               0.5 * ((u - out.quantized)**2).mean())


def test_mask_excludes_padded_tokens_from_losses_and_stats():
    quantizer = make_quantizer(temperature=0.5)
    z = latent((2, BITS, 9))
    mask = torch.zeros(2, 9, dtype=torch.bool)
    mask[0, :5] = True
    mask[1, :3] = True
    out = quantizer(z, mask=mask)
    real = torch.cat([z[0, :, :5], z[1, :, :3]], -1)[None]
    reference = quantizer(real)
    for key in ('loss_commitment', 'loss_entropy'):
        torch.testing.assert_close(out.loss[key], reference.loss[key])
    assert torch.equal(out.stats['code_counts'],
                       reference.stats['code_counts'])
    assert out.stats['code_counts'].sum() == 8
    # padded positions are still quantized
    assert torch.equal(out.indices, quantizer(z).indices)
    # nothing real: losses are zero, not NaN
    empty = quantizer(z, mask=torch.zeros(2, 9, dtype=torch.bool))
    assert all(value == 0 for value in empty.loss.values())


@pytest.mark.parametrize('options', OPTIONS)
def test_bf16_autocast_keeps_indices_and_fp32_entropy(options):
    quantizer = make_quantizer(temperature=0.1, **options)
    z = latent((2, options.get('in_channels', BITS), 512))
    expected = quantizer(z)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = quantizer(z)
        encoded = quantizer.encode(z)
        if 'in_channels' in options:
            # a bf16 in-projection flips the sign of near-zero outputs
            naive = quantizer.project_in(z.movedim(1, -1))
            assert not torch.equal(naive > 0,
                                   quantizer.indices_to_bits(out.indices))
    assert torch.equal(out.indices, expected.indices)
    assert torch.equal(encoded, expected.indices)
    for key, value in expected.loss.items():
        assert out.loss[key].dtype == torch.float32
        torch.testing.assert_close(out.loss[key], value)


def test_entropy_loss_spreads_a_collapsed_code_distribution():
    """Toy problem: 512 latents that all start on one code (usage 1/64)
    learn, from the entropy and commitment losses alone, to use >90% of
    the 64 codes (perplexity > 40), while the entropy loss falls."""
    bits = 6
    quantizer = make_quantizer(bits, temperature=0.1, entropy_weight=1.0)
    generator = torch.Generator().manual_seed(5)
    z = (0.05 + 0.01 * torch.randn(1, bits, 512, generator=generator))
    z.requires_grad_()
    optimizer = torch.optim.Adam([z], lr=0.02)
    first = quantizer(z)
    assert first.stats['usage'] == 1 / 64
    for _ in range(40):
        out = quantizer(z)
        optimizer.zero_grad()
        sum(out.loss.values()).backward()
        optimizer.step()
    last = quantizer(z)
    assert last.stats['usage'] > 0.9
    assert last.stats['perplexity'] > 40
    assert last.loss['loss_entropy'] < first.loss['loss_entropy'] - 3


def test_entropy_loss_can_be_switched_off():
    quantizer = make_quantizer(22, entropy_weight=0.0)
    out = quantizer(latent((1, 22, 5)))
    assert set(out.loss) == {'loss_commitment'}
    assert 'soft_codebook_entropy' not in out.stats
    # the marginal approximation accepts any d
    marginal = make_quantizer(22, entropy_loss_mode='marginal')
    assert 'loss_entropy' in marginal(latent((1, 22, 5))).loss


def test_bad_input_raises_clear_errors():
    quantizer = make_quantizer()
    with pytest.raises(ValueError, match=r'z must be \(B, 6.*\(2, 5, 4\)'):
        quantizer(torch.randn(2, 5, 4))
    with pytest.raises(ValueError, match='z must be'):
        quantizer.encode(torch.randn(6))
    with pytest.raises(ValueError, match=r'mask .*\(2, 4\).*\(2, 5\)'):
        quantizer(torch.randn(2, BITS, 4), mask=torch.ones(2, 5).bool())
    with pytest.raises(ValueError, match='mask .*torch.float32'):
        quantizer(torch.randn(2, BITS, 4), mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match=r'indices must lie in \[0, 64\)'):
        quantizer.decode(torch.tensor([[0, 64]]))
    with pytest.raises(ValueError, match='integer'):
        quantizer.decode(torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r'indices must be \(B, \*spatial\)'):
        quantizer.decode(torch.tensor(3))
    with pytest.raises(ValueError, match='codebook_bits'):
        LookupFreeQuantizer(0)
    with pytest.raises(ValueError, match='temperature'):
        LookupFreeQuantizer(4, temperature=0)
    with pytest.raises(ValueError, match='entropy_loss_mode'):
        LookupFreeQuantizer(4, entropy_loss_mode='approx')
    with pytest.raises(ValueError, match='codebook_entropy_exact_max_bits=20'):
        LookupFreeQuantizer(21)
    LookupFreeQuantizer(21, codebook_entropy_exact_max_bits=21)
