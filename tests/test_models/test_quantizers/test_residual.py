import math

import pytest
import torch

# importing the family modules registers them in QUANTIZERS
from _helpers import train_quantizer
from vistok.models.quantizers.fsq import FiniteScalarQuantizer  # noqa: F401
from vistok.models.quantizers.lfq import LookupFreeQuantizer  # noqa: F401
from vistok.models.quantizers.residual import DROPPED_INDEX, ResidualQuantizer
from vistok.models.quantizers.vq import VectorQuantizer
from vistok.registry import QUANTIZERS

CHANNELS = 4
VQ = dict(type='VectorQuantizer', codebook_size=16, embed_dim=CHANNELS)
LFQ = dict(type='LookupFreeQuantizer', codebook_bits=CHANNELS)
FSQ = dict(type='FiniteScalarQuantizer', levels=[5, 4, 3, 3])
BASES = {'vq': VQ, 'lfq': LFQ, 'fsq': FSQ}
# images, volumes and token sequences: (B, C, *spatial)
SHAPES = [(2, CHANNELS, 4, 5), (2, CHANNELS, 2, 3, 4), (3, CHANNELS, 7)]


def spread_codebooks(module, seed=0):
    """Normal codes, so every test sees many codes in use."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for sub in module.modules():
            if isinstance(sub, VectorQuantizer):
                sub.codebook.copy_(
                    torch.randn(sub.codebook.shape, generator=generator))
    return module


def make(base='vq', depth=3, **kwargs):
    """``base``: a key of ``BASES`` or a quantizer config."""
    torch.manual_seed(0)
    quantizer = ResidualQuantizer(
        BASES[base] if isinstance(base, str) else base, depth, **kwargs)
    return spread_codebooks(quantizer).eval()


def latent(shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_build_from_registry_and_module():
    quantizer = QUANTIZERS.build(dict(type='ResidualQuantizer', quantizer=VQ,
                                      depth=2))
    assert isinstance(quantizer, ResidualQuantizer)
    assert quantizer.in_channels == CHANNELS
    assert quantizer.codebook_size == 16
    base = VectorQuantizer(8, CHANNELS)
    separate = ResidualQuantizer(base, 3)
    assert separate.quantizers[0] is base
    assert len({id(q.codebook) for q in separate.quantizers}) == 3
    assert torch.equal(separate.quantizers[2].codebook, base.codebook)


def test_shared_and_separate_codebooks():
    shared = make(shared_codebook=True)
    separate = make()
    assert len(shared.quantizers) == 1
    assert all(shared.quantizer_at(d) is shared.quantizers[0]
               for d in range(3))
    assert len(separate.quantizers) == 3
    base_params = sum(p.numel() for p in separate.quantizers[0].parameters())
    assert sum(p.numel() for p in shared.parameters()) == base_params
    assert sum(p.numel() for p in separate.parameters()) == 3 * base_params
    assert not torch.equal(separate.quantizers[0].codebook,
                           separate.quantizers[1].codebook)


@pytest.mark.parametrize('base', ['vq', 'lfq', 'fsq'])
@pytest.mark.parametrize('shape', SHAPES)
def test_depth_one_equals_base(base, shape):
    torch.manual_seed(0)
    sub = spread_codebooks(QUANTIZERS.build(BASES[base])).eval()
    quantizer = ResidualQuantizer(sub, 1).eval()
    z = latent(shape)
    expected = sub(z)
    out = quantizer(z)
    assert out.indices.shape == (*expected.indices.shape, 1)
    assert torch.equal(out.indices[..., 0], expected.indices)
    assert torch.equal(out.quantized, expected.quantized)
    assert out.loss.keys() == expected.loss.keys()
    for name in expected.loss:
        assert torch.equal(out.loss[name], expected.loss[name])
    torch.testing.assert_close(out.stats['depth0.perplexity'],
                               expected.stats['perplexity'])


@pytest.mark.parametrize('base', ['vq', 'lfq', 'fsq'])
@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('options', [
    dict(),
    dict(shared_codebook=True),
    dict(depth_scales='pow2'),
    dict(depth_scales=[1.0, 0.3, 0.07]),
])
def test_decode_encode_bit_identical(base, shape, options):
    quantizer = make(base, **options)
    z = latent(shape).requires_grad_()
    out = quantizer(z)
    assert out.indices.shape == (shape[0], *shape[2:], 3)
    assert out.quantized.shape == z.shape
    assert torch.equal(out.quantized, quantizer.decode(out.indices))
    assert torch.equal(quantizer.encode(z), out.indices)
    assert torch.equal(
        quantizer.decode(quantizer.encode(z)), out.quantized.detach())


def test_each_depth_quantizes_the_scaled_residual():
    """Reference loop: depth d gives its sub-quantizer r_d / s_d; loss terms
    are the sums of the sub-quantizers' terms."""
    quantizer = make('lfq', depth_scales='pow2')
    z = latent(SHAPES[0])
    out = quantizer(z)
    residual, expected_loss = z, {}
    for d in range(3):
        sub_out = quantizer.quantizer_at(d)(residual * 2**d)
        assert torch.equal(out.indices[..., d], sub_out.indices)
        # LFQ codes are ±1: depth d contributes ±2^-d
        contribution = sub_out.quantized * 2.0**-d
        assert torch.equal(contribution.abs(),
                           torch.full_like(z, 2.0**-d))
        residual = residual - contribution
        for name, value in sub_out.loss.items():
            expected_loss[name] = expected_loss.get(name, 0) + value
    torch.testing.assert_close(out.quantized, z - residual)
    assert out.loss.keys() == expected_loss.keys()
    for name, value in expected_loss.items():
        torch.testing.assert_close(out.loss[name], value)


def test_residual_decreases_with_depth():
    """Codebooks of shrinking scale that contain the zero vector: every
    depth can only lower the error, and on random data it does."""
    quantizer = make(depth=4)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for d, sub in enumerate(quantizer.quantizers):
            sub.codebook.copy_(0.6**d * torch.randn(
                sub.codebook.shape, generator=generator))
            sub.codebook[0] = 0
    z = latent((4, CHANNELS, 8, 8))
    indices = quantizer.encode(z)
    errors = [((z - quantizer.decode(indices, num_depths=n))**2).mean()
              for n in range(1, 5)]
    initial = (z**2).mean()
    assert all(b < a for a, b in zip([initial] + errors, errors))


def test_decode_first_n_depths():
    quantizer = make(depth_scales='pow2')
    z = latent(SHAPES[0])
    indices = quantizer.encode(z)
    for n in range(1, 4):
        expected = sum(
            quantizer.quantizer_at(d).decode(indices[..., d]) * 2.0**-d
            for d in range(n))
        partial = quantizer.decode(indices, num_depths=n)
        torch.testing.assert_close(partial, expected)
        assert torch.equal(partial, quantizer.decode(indices[..., :n]))
    with pytest.raises(ValueError, match='num_depths'):
        quantizer.decode(indices, num_depths=4)


def test_straight_through_gradient_is_identity():
    quantizer = make()
    z = latent(SHAPES[0]).requires_grad_()
    quantizer(z).quantized.sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z))
    assert all(q.codebook.grad is None for q in quantizer.quantizers)


def test_commitment_of_every_depth_trains_the_encoder():
    """Depth d's commitment is ‖z - sg[ẑ_≤d]‖² (RQ-VAE §3.1): its gradient
    w.r.t. z is 2β(z - ẑ_≤d)/numel, summed over the depths."""
    quantizer = make()
    z = latent(SHAPES[0]).requires_grad_()
    out = quantizer(z)
    out.loss['loss_commitment'].backward()
    beta = quantizer.quantizers[0].commitment_weight
    expected = sum(
        2 * beta * (z - quantizer.decode(out.indices, num_depths=n)) /
        z.numel() for n in range(1, 4)).detach()
    torch.testing.assert_close(z.grad, expected)


def test_quantizer_dropout_per_sample_in_training_only():
    quantizer = make(depth=4, dropout_prob=1.0, dropout_min_depth=2).train()
    torch.manual_seed(5)
    z = latent((16, CHANNELS, 3, 3))
    out = quantizer(z)
    num_depths = out.stats['num_depths']
    assert num_depths.shape == (16, )
    assert num_depths.min() >= 2 and num_depths.max() <= 4
    assert len(num_depths.unique()) > 1, 'one draw per sample'
    kept = out.indices != DROPPED_INDEX
    # each sample keeps a prefix of its depths, at every position
    expected = torch.arange(4) < num_depths[:, None, None, None]
    assert torch.equal(kept, expected.expand_as(kept))
    assert torch.equal(out.quantized, quantizer.decode(out.indices))
    for d in range(int(num_depths.max())):
        # dropped depths are excluded from the stats (and losses)
        assert out.stats[f'depth{d}.code_counts'].sum() == kept[..., d].sum()
    # equal to running each sample alone with its first n depths
    sample = int(num_depths.argmin())
    n = int(num_depths[sample])
    reference = make(depth=n)
    reference.load_state_dict(
        {k: v for k, v in quantizer.state_dict().items()
         if int(k.split('.')[1]) < n})
    assert torch.equal(out.quantized[sample],
                       reference(z[sample:sample + 1]).quantized[0])

    quantizer.eval()
    out = quantizer(z)
    assert 'num_depths' not in out.stats
    assert (out.indices != DROPPED_INDEX).all()


def test_dropout_over_a_product_quantizer():
    """The inner quantizer's branch axis: a dropped depth is dropped in
    every branch, and decode(indices) still equals the output."""
    branch = dict(type='VectorQuantizer', codebook_size=8,
                  embed_dim=CHANNELS // 2)
    quantizer = make(dict(type='ProductQuantizer', quantizer=branch,
                          num_branches=2), depth=3, dropout_prob=1.0).train()
    torch.manual_seed(3)
    out = quantizer(latent((8, CHANNELS, 2, 2)))
    assert out.indices.shape == (8, 2, 2, 2, 3)
    num_depths = out.stats['num_depths']
    dropped = out.indices == DROPPED_INDEX
    expected = torch.arange(3) >= num_depths[:, None, None, None, None]
    assert torch.equal(dropped, expected.expand_as(dropped))
    assert dropped.any() and not dropped.all()
    assert torch.equal(out.quantized, quantizer.decode(out.indices))


def test_depths_that_no_sample_keeps_are_skipped():
    quantizer = make(depth=3, dropout_prob=1.0, dropout_min_depth=1).train()
    torch.manual_seed(0)
    while True:  # a draw where every sample keeps a single depth
        out = quantizer(latent((1, CHANNELS, 2, 2)))
        if out.stats['num_depths'].item() == 1:
            break
    assert (out.indices[..., 1:] == DROPPED_INDEX).all()
    assert 'depth1.perplexity' not in out.stats
    assert torch.equal(out.quantized, quantizer.decode(out.indices))


@pytest.mark.parametrize('base', ['vq', 'lfq', 'fsq'])
def test_bf16_autocast_keeps_indices(base):
    quantizer = make(base, depth_scales='pow2')
    z = latent((2, CHANNELS, 8, 8))
    expected = quantizer(z).indices
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = quantizer(z)
        encoded = quantizer.encode(z)
    assert torch.equal(out.indices, expected)
    assert torch.equal(encoded, expected)


def test_masked_positions_excluded_from_losses_and_stats():
    """Positions are independent, so the masked losses equal those of the
    real positions alone."""
    quantizer = make()
    z = latent((2, CHANNELS, 6))
    mask = torch.tensor([[1, 1, 0, 1, 0, 0], [1, 0, 1, 1, 1, 0]]).bool()
    out = quantizer(z, mask=mask)
    real = z.movedim(1, -1)[mask].t()[None]  # (1, C, N_real)
    reference = quantizer(real)
    for name, value in reference.loss.items():
        torch.testing.assert_close(out.loss[name], value)
    for d in range(3):
        assert torch.equal(out.stats[f'depth{d}.code_counts'],
                           reference.stats[f'depth{d}.code_counts'])
    # padded positions still get indices and values
    assert torch.equal(out.indices, quantizer(z).indices)
    assert torch.equal(out.quantized, quantizer.decode(out.indices))


def test_loss_reduction_and_per_depth_terms():
    z = latent(SHAPES[0])
    summed = make()(z)
    mean = make(depth_loss_reduction='mean')(z)
    per_depth = make(per_depth_loss=True)(z)
    per_depth_mean = make(per_depth_loss=True,
                          depth_loss_reduction='mean')(z)
    assert set(summed.loss) == {'loss_commitment', 'loss_codebook'}
    assert set(per_depth.loss) == {
        f'depth{d}.{name}'
        for d in range(3) for name in ('loss_commitment', 'loss_codebook')
    }
    for name, value in summed.loss.items():
        torch.testing.assert_close(mean.loss[name], value / 3)
        torch.testing.assert_close(
            sum(per_depth.loss[f'depth{d}.{name}'] for d in range(3)), value)
        torch.testing.assert_close(
            sum(per_depth_mean.loss[f'depth{d}.{name}'] for d in range(3)),
            value / 3)


def test_stats_per_depth_and_mean():
    out = make()(latent(SHAPES[0]))
    for d in range(3):
        assert out.stats[f'depth{d}.code_counts'].sum() == 2 * 4 * 5
    torch.testing.assert_close(
        out.stats['perplexity'],
        torch.stack([out.stats[f'depth{d}.perplexity']
                     for d in range(3)]).mean())
    torch.testing.assert_close(
        out.stats['usage'],
        torch.stack([out.stats[f'depth{d}.usage'] for d in range(3)]).mean())


@pytest.mark.parametrize('kwargs, match', [
    (dict(depth=0), 'depth'),
    (dict(depth=2, depth_scales=[1.0]), 'depth_scales'),
    (dict(depth=2, depth_scales='linear'), 'depth_scales'),
    (dict(depth=2, depth_scales=[1.0, 0.0]), 'depth_scales'),
    (dict(depth=2, dropout_prob=1.5), 'dropout_prob'),
    (dict(depth=2, dropout_min_depth=3), 'dropout_min_depth'),
    (dict(depth=2, depth_loss_reduction='max'), 'depth_loss_reduction'),
])
def test_invalid_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ResidualQuantizer(VQ, **kwargs)


def test_bad_input():
    quantizer = make()
    with pytest.raises(ValueError, match=r'\(2, 5, 4, 4\)'):
        quantizer(torch.randn(2, 5, 4, 4))
    with pytest.raises(ValueError, match='mask'):
        quantizer(torch.randn(2, CHANNELS, 4, 4), mask=torch.ones(2, 4).bool())
    with pytest.raises(ValueError, match=r'\(2, 4, 4, 5\)'):
        quantizer.decode(torch.zeros(2, 4, 4, 5, dtype=torch.long))


def test_toy_learning():
    """Codebooks initialised from the data (depth 0) and a shrunken copy
    (depth 1) learn a 4-d Gaussian from the codebook loss: the
    reconstruction error falls and most codes stay in use."""
    torch.manual_seed(0)
    quantizer = ResidualQuantizer(
        dict(VQ, codebook_size=8), 2).train()
    data = latent((1, CHANNELS, 512), seed=2)
    with torch.no_grad():
        for d, sub in enumerate(quantizer.quantizers):
            sub.codebook.copy_(0.3**d * data[0, :, :8].t())
    initial, final, out = train_quantizer(quantizer, data)
    assert final < 0.7 * initial
    assert out.stats['usage'] > 0.8


def test_shared_ema_codebook_stays_exact_in_training():
    """Depth 2's EMA update changes codes depth 1 used; the output must still
    equal decode(indices) with the codebook as it is after the call."""
    torch.manual_seed(0)
    rq = QUANTIZERS.build(dict(
        type='ResidualQuantizer', depth=3, shared_codebook=True,
        quantizer=dict(type='VectorQuantizer', codebook_size=8,
                       embed_dim=CHANNELS, ema_decay=0.5)))
    rq.train()
    for _ in range(2):
        out = rq(torch.randn(2, CHANNELS, 5, 5))
        assert torch.equal(out.quantized, rq.decode(out.indices))


def test_residual_lfq_pow2_lowers_mean_error_with_depth():
    """MARVEL's residual LFQ: each depth quantizes the residual by sign with
    output scale 2^-d (12 bits = 4,096 implicit codes per depth). On a fixed
    Gaussian latent set the mean reconstruction error falls with every added
    depth (on average: sign(0) makes single vectors exceptions)."""
    lfq = dict(type='LookupFreeQuantizer', codebook_bits=12)
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(64, 12, 4, 4, generator=generator) * 0.5
    errors = []
    for depth in (1, 2, 3, 4):
        quantizer = ResidualQuantizer(lfq, depth, depth_scales='pow2').eval()
        out = quantizer(z)
        assert out.indices.shape == (64, 4, 4, depth)
        assert int(out.indices.max()) < 4096
        errors.append(((out.quantized - z)**2).mean().item())
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    single = ResidualQuantizer(lfq, 1, depth_scales='pow2').eval()
    plain = QUANTIZERS.build(lfq).eval()
    assert torch.equal(single(z).quantized, plain(z).quantized)


def test_residual_lfq_entropy_is_scored_per_depth_on_its_own_codes():
    """MARVEL fix: depth d's entropy (and commitment) terms are those of a
    plain LFQ on r_d · 2^d, i.e. scored against the ±1 codes that depth
    actually quantizes with (the official code scored r_d against the
    unscaled ±1 codebook and pooled the depths)."""
    lfq = dict(type='LookupFreeQuantizer', codebook_bits=6,
               entropy_weight=0.02, temperature=0.01)
    z = torch.randn(8, 6, 3, 3, generator=torch.Generator().manual_seed(1))
    quantizer = ResidualQuantizer(lfq, 2, depth_scales='pow2',
                                  per_depth_loss=True).train()
    plain = QUANTIZERS.build(lfq).train()
    out = quantizer(z)
    first = plain(z)
    second = plain((z - first.quantized.detach()) * 2)
    for name in ('loss_entropy', 'loss_commitment'):
        torch.testing.assert_close(out.loss[f'depth0.{name}'],
                                   first.loss[name])
        torch.testing.assert_close(out.loss[f'depth1.{name}'],
                                   second.loss[name])
    # the scaled residual uses both signs of every bit: the soft codebook
    # entropy of depth 1 is far from collapsed
    assert out.stats['depth1.soft_codebook_entropy'] > 0.5 * math.log(64)
