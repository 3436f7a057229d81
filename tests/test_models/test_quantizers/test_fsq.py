import math

import pytest
import torch

from vistok.models.quantizers.fsq import FiniteScalarQuantizer
from vistok.registry import QUANTIZERS

LEVELS = [3, 4, 5]  # odd and even level counts
# images, volumes, token sequences and plain vectors: (B, C, *spatial)
SHAPES = [(2, 3, 4, 5), (2, 3, 3, 4, 5), (2, 3, 7), (5, 3)]
OPTIONS = [dict(), dict(in_channels=10)]
LEVEL_SETS = [[3, 4, 5], [2, 6], [8, 8, 8, 5, 5, 5]]


def latent(shape, channels=None, seed=1, scale=1.0):
    shape = (shape[0], channels or shape[1], *shape[2:])
    return scale * torch.randn(*shape,
                               generator=torch.Generator().manual_seed(seed))


def make_quantizer(levels=LEVELS, **kwargs):
    torch.manual_seed(0)
    return FiniteScalarQuantizer(levels, **kwargs)


def reference_bound(z, levels, eps=1e-3):
    """FSQ's bound with atanh and (1 + eps) (see the class docstring),
    channel-first ``z``."""
    shape = (1, len(levels)) + (1, ) * (z.dim() - 2)
    levels = torch.tensor(levels, dtype=torch.float64).reshape(shape)
    half_range = (levels - 1) * (1 + eps) / 2
    offset = (levels % 2 == 0).double() / 2
    shift = torch.atanh(offset / half_range)
    return torch.tanh(z + shift) * half_range - offset, levels


def test_build_from_registry():
    quantizer = QUANTIZERS.build(
        dict(type='FiniteScalarQuantizer', levels=[8, 5, 5, 5]))
    assert isinstance(quantizer, FiniteScalarQuantizer)
    assert quantizer.codebook_size == 1000
    assert quantizer.in_channels == 4
    assert quantizer.state_dict() == {}


@pytest.mark.parametrize('levels', LEVEL_SETS)
def test_every_code_round_trips(levels):
    quantizer = make_quantizer(levels)
    size = math.prod(levels)
    assert quantizer.codebook_size == size
    indices = torch.arange(size)
    codes = quantizer.indices_to_codes(indices)
    assert codes.shape == (size, len(levels))
    assert torch.equal(quantizer.codes_to_indices(codes), indices)
    assert codes.unique(dim=0).shape[0] == size
    # forward: latents placed inside each code's rounding cell
    half_width = torch.tensor(levels) // 2
    half_range = (torch.tensor(levels, dtype=torch.float64) - 1) * (1 +
                                                                    1e-3) / 2
    offset = (torch.tensor(levels) % 2 == 0).double() / 2
    target = (codes.double() * half_width + offset) * 0.9 - offset
    z = torch.atanh(
        (target + offset) / half_range) - torch.atanh(offset / half_range)
    z = z.float().t()[None]  # (1, d, K)
    out = quantizer(z)
    assert torch.equal(out.indices[0], indices)
    assert torch.equal(out.quantized[0].t(), codes)
    assert torch.equal(quantizer.decode(indices[None]), out.quantized)


def test_indices_are_mixed_radix_with_channel_0_least_significant():
    quantizer = make_quantizer()
    z = latent((2, 3, 50), scale=2.0)
    out = quantizer(z)
    bounded, _ = reference_bound(z.double(), LEVELS)
    digits = bounded.round().long() + torch.tensor(LEVELS)[:, None] // 2
    expected = digits[:, 0] + 3 * digits[:, 1] + 3 * 4 * digits[:, 2]
    assert torch.equal(out.indices, expected)
    assert quantizer.decode(torch.tensor([[1]
                                          ]))[0, :,
                                              0].tolist() == [0.0, -1.0, -1.0]


def test_exactly_l_levels_per_channel_in_minus_one_one():
    levels = [2, 3, 4, 5, 6, 7, 8]
    quantizer = make_quantizer(levels)
    sweep = torch.linspace(-20, 20, 4001)
    z = sweep.expand(len(levels), -1)[None]
    codes = quantizer(z).quantized[0]
    for channel, level in enumerate(levels):
        half_width = level // 2
        expected = torch.arange(-half_width, level - half_width) / half_width
        assert torch.equal(codes[channel].unique(), expected)
        assert codes[channel].min() == -1 and codes[channel].max() <= 1
    # the offset makes z = 0 the zero code for odd and even L alike
    assert torch.equal(
        quantizer(torch.zeros(1, len(levels), 1)).quantized,
        torch.zeros(1, len(levels), 1))


@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('options', OPTIONS)
def test_quantized_is_bit_identical_to_decode(shape, options):
    quantizer = make_quantizer(**options)
    z = latent(shape, options.get('in_channels'), scale=2.0).requires_grad_()
    out = quantizer(z)
    assert out.quantized.shape == z.shape
    assert out.indices.shape == (shape[0], *shape[2:])
    assert out.indices.dtype == torch.long
    assert out.loss == {}
    assert torch.equal(out.quantized, quantizer.decode(out.indices))
    assert torch.equal(quantizer.encode(z), out.indices)
    assert torch.equal(quantizer.decode(quantizer.encode(z)),
                       out.quantized.detach())


def test_straight_through_rounding_gradient_is_that_of_the_bound():
    quantizer = make_quantizer()
    z = latent(SHAPES[0], scale=2.0).requires_grad_()
    grad = latent(SHAPES[0], seed=2)
    quantizer(z).quantized.backward(grad)
    z64 = z.detach().double().requires_grad_()
    bounded, levels = reference_bound(z64, LEVELS)
    expected, = torch.autograd.grad(bounded / (levels // 2), z64,
                                    grad.double())
    torch.testing.assert_close(z.grad, expected.float())


@pytest.mark.parametrize('options', OPTIONS)
def test_bf16_autocast_keeps_the_integer_indices(options):
    levels = [8, 8, 8, 5, 5, 5]  # 64000 codes: far above bf16's 256
    quantizer = make_quantizer(levels, **options)
    channels = options.get('in_channels', len(levels))
    z = latent((4, channels, 512), scale=2.0)
    expected = quantizer(z)
    assert expected.indices.max() > 256
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = quantizer(z)
        encoded = quantizer.encode(z)
        if 'in_channels' in options:
            # a bf16 in-projection would move some latents across a cell
            projected = quantizer.project_in(z.movedim(1, -1))
            assert projected.dtype == torch.bfloat16
            bounded = quantizer.bound(projected.movedim(-1, 1).float())
            naive = quantizer.codes_to_indices(
                bounded.movedim(1, -1) / quantizer.half_width)
            assert not torch.equal(naive, expected.indices)
    assert torch.equal(out.indices, expected.indices)
    assert torch.equal(encoded, expected.indices)


def test_mask_excludes_padded_tokens_from_stats():
    quantizer = make_quantizer()
    z = latent((2, 3, 9), scale=2.0)
    mask = torch.zeros(2, 9, dtype=torch.bool)
    mask[0, :5] = True
    mask[1, :3] = True
    out = quantizer(z, mask=mask)
    full = quantizer(z)
    assert torch.equal(out.indices, full.indices)
    assert torch.equal(out.quantized, full.quantized)
    expected = torch.bincount(out.indices[mask], minlength=60)
    assert torch.equal(out.stats['code_counts'], expected)
    assert out.stats['usage'] == (expected > 0).float().mean()


def test_toy_autoencoder_learns_and_uses_the_grid():
    """A linear encoder -> FSQ [5, 5, 5] -> linear decoder learns to
    reconstruct 3-d points drawn uniformly from a cube; it starts collapsed
    (tiny encoder weights: one code) and ends using >90% of the 125 codes
    with a reconstruction error at least 20x lower."""
    torch.manual_seed(0)
    quantizer = FiniteScalarQuantizer([5, 5, 5])
    encoder, decoder = torch.nn.Linear(3, 3), torch.nn.Linear(3, 3)
    with torch.no_grad():
        encoder.weight.mul_(1e-2)
        encoder.bias.zero_()
    params = [*encoder.parameters(), *decoder.parameters()]
    optimizer = torch.optim.Adam(params, lr=0.05)
    x = torch.rand(1024, 3, generator=torch.Generator().manual_seed(6)) * 2 - 1

    def step():
        out = quantizer(encoder(x).t()[None])
        return out, torch.nn.functional.mse_loss(decoder(out.quantized[0].t()),
                                                 x)

    first, first_loss = step()
    assert first.stats['usage'] < 0.05
    for _ in range(250):
        _, loss = step()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    last, last_loss = step()
    assert last.stats['usage'] > 0.9
    assert last_loss < first_loss / 20


@pytest.mark.parametrize('levels', [[], [1, 3], [3, 2.5], 8, [True, 3]])
def test_bad_levels_raise(levels):
    with pytest.raises(ValueError, match='levels must be a non-empty list'):
        FiniteScalarQuantizer(levels)


def test_bad_input_raises_clear_errors():
    quantizer = make_quantizer()
    with pytest.raises(ValueError, match=r'z must be \(B, 3.*\(2, 4, 5\)'):
        quantizer(torch.randn(2, 4, 5))
    with pytest.raises(ValueError, match='z must be'):
        quantizer.encode(torch.randn(3))
    with pytest.raises(ValueError, match=r'mask .*\(2, 4\).*\(2, 5\)'):
        quantizer(torch.randn(2, 3, 4), mask=torch.ones(2, 5).bool())
    with pytest.raises(ValueError, match=r'indices must lie in \[0, 60\)'):
        quantizer.decode(torch.tensor([[-1, 3]]))
    with pytest.raises(ValueError, match='integer'):
        quantizer.decode(torch.zeros(1, 2))
    with pytest.raises(ValueError, match=r'indices must be \(B, \*spatial\)'):
        quantizer.decode(torch.tensor(3))
    with pytest.raises(ValueError, match=r'codes must be \(\.\.\., 3\)'):
        quantizer.codes_to_indices(torch.zeros(5, 4))
    with pytest.raises(ValueError, match='bound_eps'):
        FiniteScalarQuantizer([3, 9], bound_eps=0.2)
    with pytest.raises(ValueError, match='bound_eps'):
        FiniteScalarQuantizer([2, 3], bound_eps=0)
    with pytest.raises(ValueError, match='in_channels'):
        FiniteScalarQuantizer([3, 3], in_channels=0)
