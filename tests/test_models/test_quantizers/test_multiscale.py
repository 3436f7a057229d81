import pytest
import torch
import torch.nn.functional as F

from vistok.models.quantizers.multiscale import MultiScaleResidualQuantizer
from vistok.models.quantizers.vq import VectorQuantizer
from vistok.registry import QUANTIZERS

CHANNELS = 4
SCALES = [1, 2, 3, 4]
IMAGEFOLDER_SCALES = [1, 1, 2, 3, 3, 4, 5, 6, 8, 11]
VAR_SCALES = [1, 2, 3, 4, 5, 6, 8, 10, 13, 16]


def make_quantizer(scales=SCALES, codebook_size=32, spread=True, **kwargs):
    """A small multi-scale quantizer (cosine look-up unless overridden)."""
    quantizer_cfg = dict(type='VectorQuantizer',
                         codebook_size=codebook_size,
                         embed_dim=CHANNELS,
                         use_l2_norm=True)
    quantizer_cfg.update(kwargs.pop('quantizer', {}))
    torch.manual_seed(0)
    quantizer = MultiScaleResidualQuantizer(scales=scales,
                                            quantizer=quantizer_cfg,
                                            **kwargs)
    if spread:  # spread the codes so every test sees many codes
        with torch.no_grad():
            quantizer.quantizer.codebook.normal_()
    return quantizer


def latent(batch=3, side=SCALES[-1], channels=CHANNELS, seed=1):
    return torch.randn(batch,
                       channels,
                       side,
                       side,
                       generator=torch.Generator().manual_seed(seed))


def smooth_latents(batch, side, generator):
    """Low-frequency maps plus a little noise: the toy distribution."""
    coarse = torch.randn(batch, CHANNELS, 2, 2, generator=generator)
    return F.interpolate(coarse, size=(side, side), mode='bilinear') + \
        0.3 * torch.randn(batch, CHANNELS, side, side, generator=generator)


def reference_losses(quantizer, z, maps, mask=None, num_scales=None):
    """VAR's loss from its definition: the squared error of every running
    reconstruction f̂_i (rebuilt by decoding the first i scales), averaged
    over the real positions of the samples that keep scale i."""
    num, den = 0.0, 0.0
    real = torch.ones_like(z[:, 0]) if mask is None else mask.float()
    for i in range(len(maps)):
        f_hat = quantizer.decode(maps[:i + 1], num_scales)
        keep = torch.ones(
            z.shape[0]) if num_scales is None else (i < num_scales).float()
        weight = (real * keep[:, None, None])[:, None]
        num = num + (weight * (f_hat - z)**2).sum()
        den = den + weight.sum() * z.shape[1]
    mse = num / den
    return dict(loss_codebook=mse, loss_commitment=0.25 * mse)


def test_build_from_registry_and_layout_helpers():
    quantizer = QUANTIZERS.build(
        dict(type='MultiScaleResidualQuantizer', scales=VAR_SCALES))
    assert isinstance(quantizer, MultiScaleResidualQuantizer)
    assert isinstance(quantizer.quantizer, VectorQuantizer)
    assert quantizer.codebook_size == 4096 and quantizer.in_channels == 32
    assert quantizer.sequence_length == 680  # VAR's 680 tokens
    out = quantizer(torch.randn(1, 32, 16, 16))
    assert quantizer.to_sequence(out.indices).shape == (1, 680)
    assert quantizer.next_scale_inputs(out.indices).shape == (1, 679, 32)
    assert MultiScaleResidualQuantizer(
        scales=IMAGEFOLDER_SCALES).sequence_length == 286  # ImageFolder


def test_default_lookup_is_vars_euclidean_one():
    """VAR's released tokenizer looks codes up by plain Euclidean distance
    of un-normalised codes (``VectorQuantizer2(using_znorm=False)``), not by
    cosine: on codes of very different norms the default's indices are the
    brute-force Euclidean arg-min, which here differs from the cosine one."""
    torch.manual_seed(0)
    quantizer = MultiScaleResidualQuantizer(scales=[1], use_phi=False)
    with torch.no_grad():
        quantizer.quantizer.codebook.mul_(
            torch.logspace(-1, 1, 4096).unsqueeze(1))
    z = torch.randn(64, 32, 1, 1)
    codes = quantizer.quantizer.codebook
    flat = z.flatten(1)
    euclidean = torch.cdist(flat, codes).argmin(1)
    cosine = (F.normalize(flat, dim=1) @ F.normalize(codes, dim=1).T).argmax(1)
    assert (euclidean != cosine).any()
    assert torch.equal(quantizer(z).indices[0].flatten(), euclidean)


def test_phi_assignment_follows_var():
    """VAR's PhiPartiallyShared with 4 convs over 10 scales (ticks at
    1/12 .. 11/12; scale 2 sits on a tie and goes to the lower conv)."""
    assignment = MultiScaleResidualQuantizer._phi_assignment
    assert assignment(10, 4) == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]
    assert assignment(10, 10) == list(range(10))  # one conv per scale
    assert assignment(10, 1) == [0] * 10  # fully shared
    quantizer = make_quantizer(scales=VAR_SCALES, num_phi=4)
    assert len(quantizer.phi_convs) == 4


@pytest.mark.parametrize('quantizer_cfg', [
    dict(),
    dict(use_l2_norm=False),
    dict(in_channels=6),
])
def test_single_scale_without_phi_equals_plain_vq(quantizer_cfg):
    quantizer = make_quantizer(scales=[4],
                               use_phi=False,
                               quantizer=quantizer_cfg)
    plain = quantizer.quantizer.eval()
    z = latent(channels=quantizer.in_channels)
    expected = plain(z)
    out = quantizer(z)
    assert len(out.indices) == 1
    assert torch.equal(out.indices[0], expected.indices)
    assert torch.equal(out.quantized, expected.quantized)


@pytest.mark.parametrize('scales', [SCALES, IMAGEFOLDER_SCALES])
@pytest.mark.parametrize('use_phi', [True, False])
def test_quantized_is_bit_identical_to_decode(scales, use_phi):
    quantizer = make_quantizer(scales=scales, use_phi=use_phi)
    z = latent(batch=2, side=scales[-1]).requires_grad_()
    out = quantizer(z)
    assert [tuple(idx.shape) for idx in out.indices] == \
        [(2, s, s) for s in scales]
    assert out.quantized.shape == z.shape
    assert torch.equal(out.quantized, quantizer.decode(out.indices))
    maps = quantizer.encode(z)
    assert all(torch.equal(a, b) for a, b in zip(maps, out.indices))
    assert torch.equal(quantizer.decode(maps), out.quantized.detach())
    # the flat sequence VAR's transformer consumes decodes identically
    sequence = quantizer.to_sequence(maps)
    assert sequence.shape == (2, sum(s * s for s in scales))
    assert all(
        torch.equal(a, b)
        for a, b in zip(quantizer.from_sequence(sequence), maps))
    assert torch.equal(quantizer.decode(sequence), out.quantized.detach())


def test_straight_through_gradient_is_identity():
    quantizer = make_quantizer()
    z = latent().requires_grad_()
    quantizer(z).quantized.sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z))
    assert all(p.grad is None for p in quantizer.parameters())


def test_residual_error_decreases_as_scales_are_added():
    """Euclidean look-up in a dense 2-D codebook, Φ off: every scale
    explains part of what the coarser ones left (VAR Alg. 1)."""
    quantizer = make_quantizer(scales=[1, 2, 4, 8],
                               use_phi=False,
                               codebook_size=256,
                               quantizer=dict(embed_dim=2, use_l2_norm=False))
    z = F.interpolate(
        latent(batch=4, side=2, channels=2), size=(8, 8),
        mode='bilinear') + 0.3 * latent(batch=4, side=8, channels=2, seed=2)
    maps = quantizer.encode(z)
    errors = [z.pow(2).mean()
              ] + [(z - quantizer.decode(maps[:n])).pow(2).mean()
                   for n in range(1,
                                  len(maps) + 1)]
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.05 * errors[0]


def test_decode_from_the_first_scales():
    """VAR Alg. 2: f̂_n = f̂_{n-1} + Φ_n(bicubic_up(codes of k_n)), and the
    first n scales (maps or a sequence prefix) give f̂_n."""
    quantizer = make_quantizer()
    z = latent()
    maps = quantizer.encode(z)
    sequence = quantizer.to_sequence(maps)
    f_hat, length = torch.zeros_like(z), 0
    for n, side in enumerate(SCALES, start=1):
        h = quantizer.quantizer.decode(maps[n - 1])
        if side != SCALES[-1]:
            h = F.interpolate(h, size=z.shape[2:], mode='bicubic')
        conv = quantizer.phi_convs[quantizer.phi_index[n - 1]]
        f_hat = f_hat + 0.5 * h + 0.5 * conv(h)
        coarse = quantizer.decode(maps[:n])
        torch.testing.assert_close(coarse, f_hat)
        length += side * side
        assert torch.equal(quantizer.decode(sequence[:, :length]), coarse)


def test_next_scale_inputs_are_downsampled_running_reconstructions():
    quantizer = make_quantizer()
    maps = quantizer.encode(latent())
    inputs = quantizer.next_scale_inputs(maps)
    expected = torch.cat([
        F.interpolate(quantizer.decode(maps[:i + 1]),
                      size=(SCALES[i + 1], ) * 2,
                      mode='area').flatten(2).transpose(1, 2)
        for i in range(len(SCALES) - 1)
    ],
                         dim=1)
    assert inputs.shape == (3, sum(s * s for s in SCALES[1:]), CHANNELS)
    torch.testing.assert_close(inputs, expected)


def test_losses_and_stats_follow_var_with_mask():
    quantizer = make_quantizer()
    z = latent()
    mask = torch.ones(3, 4, 4, dtype=torch.bool)
    mask[0, :, 2:] = False  # sample 0: right half padded
    mask[1] = False
    mask[1, 0, 0] = True  # sample 1: a single real position
    out = quantizer(z, mask=mask)
    expected = reference_losses(quantizer, z, out.indices, mask=mask)
    for key, value in expected.items():
        torch.testing.assert_close(out.loss[key], value)
    # the mask changes neither indices nor values
    plain = quantizer(z)
    assert all(torch.equal(a, b) for a, b in zip(out.indices, plain.indices))
    assert torch.equal(out.quantized, plain.quantized)
    # usage counts: full grid = real positions; a coarse token counts when
    # its area holds a real position (2x2 grid: 2 + 1 + 4 tokens)
    assert out.stats['scale3.code_counts'].sum() == mask.sum()
    assert out.stats['scale1.code_counts'].sum() == 2 + 1 + 4
    assert plain.stats['scale1.code_counts'].sum() == 3 * 4
    assert out.stats['scale0.code_counts'].sum() == 3
    for key in ('usage', 'perplexity'):
        torch.testing.assert_close(
            plain.stats[key],
            torch.stack([
                plain.stats[f'scale{i}.{key}'] for i in range(len(SCALES))
            ]).mean())
    torch.testing.assert_close(
        plain.loss['loss_codebook'],
        reference_losses(quantizer, z, plain.indices)['loss_codebook'])


def test_quantizer_dropout_only_in_training():
    quantizer = make_quantizer(dropout_ratio=1.0, start_scale=2)
    draws = quantizer.sample_num_scales(2000)
    assert draws.dtype == torch.long
    assert set(draws.tolist()) == {2, 3, 4}  # U{start_scale..n}
    quantizer.eval()
    assert torch.equal(quantizer.sample_num_scales(5), torch.full((5, ), 4))
    z = latent()
    assert torch.equal(quantizer(z).stats['num_scales'], torch.full((3, ), 4))
    half = make_quantizer(dropout_ratio=0.5)
    fraction = (half.sample_num_scales(4000) < 4).float().mean()
    # dropped half the time, then to fewer than n scales 3 times in 4
    assert abs(fraction - 0.5 * 3 / 4) < 0.03


def test_quantizer_dropout_keeps_the_first_scales():
    quantizer = make_quantizer(dropout_ratio=1.0, start_scale=1)
    z = latent(batch=8)
    torch.manual_seed(3)
    out = quantizer(z)
    draw = out.stats['num_scales']
    assert draw.shape == (8, ) and 1 <= draw.min() and draw.max() <= 4
    assert len(set(draw.tolist())) > 1
    maps = quantizer.encode(z)  # the residual still subtracts every scale
    assert all(torch.equal(a, b) for a, b in zip(maps, out.indices))
    assert torch.equal(out.quantized, quantizer.decode(out.indices, draw))
    for b, kept in enumerate(draw.tolist()):
        assert torch.equal(out.quantized[b], quantizer.decode(maps[:kept])[b])
    expected = reference_losses(quantizer, z, maps, num_scales=draw)
    for key, value in expected.items():
        torch.testing.assert_close(out.loss[key], value)


def test_passed_num_scales_is_respected():
    """A product quantizer shares one draw between its branches."""
    quantizer = make_quantizer(dropout_ratio=1.0).eval()
    z = latent()
    draw = torch.tensor([1, 4, 2])
    out = quantizer(z, num_scales=draw)
    assert out.stats['num_scales'] is draw
    maps = quantizer.encode(z)
    for b, kept in enumerate(draw.tolist()):
        assert torch.equal(out.quantized[b], quantizer.decode(maps[:kept])[b])


def test_bf16_autocast_keeps_fp32_indices():
    quantizer = make_quantizer(scales=IMAGEFOLDER_SCALES)
    z = latent(side=11)
    expected = quantizer(z)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = quantizer(z)
        maps = quantizer.encode(z)
        decoded = quantizer.decode(maps)
    assert all(
        torch.equal(a, b) for a, b in zip(out.indices, expected.indices))
    assert all(torch.equal(a, b) for a, b in zip(maps, expected.indices))
    assert out.quantized.dtype == torch.float32
    assert torch.equal(out.quantized, expected.quantized)
    assert torch.equal(decoded, expected.quantized)


def test_toy_distribution_is_learned():
    """Cosine look-up with Φ on (the defaults) learns smooth 8x8 maps:
    the loss falls by a third, the full-resolution scale uses more than
    90% of its 32 codes, and after training every added scale lowers the
    reconstruction error (the coarse-to-fine property)."""
    quantizer = make_quantizer(scales=[1, 2, 4, 8], num_phi=2, spread=False)
    generator = torch.Generator().manual_seed(1)
    held_out = smooth_latents(64, 8, generator)
    optimizer = torch.optim.Adam(quantizer.parameters(), lr=1e-2)
    with torch.no_grad():
        before = sum(quantizer.eval()(held_out).loss.values())
    quantizer.train()
    for _ in range(100):
        loss = sum(quantizer(smooth_latents(16, 8, generator)).loss.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        out = quantizer.eval()(held_out)
        maps = quantizer.encode(held_out)
        errors = [(held_out - quantizer.decode(maps[:n])).pow(2).mean()
                  for n in range(1, 5)]
    assert sum(out.loss.values()) < 2 / 3 * before
    assert out.stats['scale3.usage'] > 0.9
    assert out.stats['usage'] > 0.75
    assert all(b < a for a, b in zip(errors, errors[1:])), errors


@pytest.mark.parametrize('scales, match', [
    ([], 'scales'),
    ([1, 0, 4], 'scales'),
    ([1, 3, 2, 4], 'non-decreasing'),
    ([1, 2.5, 4], 'scales'),
])
def test_bad_scales_are_rejected(scales, match):
    with pytest.raises(ValueError, match=match):
        MultiScaleResidualQuantizer(scales=scales)


@pytest.mark.parametrize(
    'scales, shape',
    [
        ([1, 2, 4], (2, CHANNELS, 8, 8)),  # does not end at the grid size
        ([1, 2, 8], (2, CHANNELS, 4, 4)),  # exceeds the grid
        ([1, 2, 4], (2, CHANNELS, 4, 5)),  # not square
    ])
def test_scales_must_end_at_the_grid_size(scales, shape):
    quantizer = make_quantizer(scales=scales)
    with pytest.raises(ValueError, match=r'scales .*\(2, 4, \d, \d\)'):
        quantizer(torch.zeros(shape))
    with pytest.raises(ValueError, match='scales'):
        quantizer.encode(torch.zeros(shape))


@pytest.mark.parametrize('kwargs, match', [
    (dict(dropout_ratio=1.5), 'dropout_ratio'),
    (dict(start_scale=5), 'start_scale'),
    (dict(start_scale=0), 'start_scale'),
    (dict(num_phi=0), 'num_phi'),
    (dict(phi_ratio=0.0), 'phi_ratio'),
    (dict(phi_kernel_size=2), 'phi_kernel_size'),
])
def test_bad_options_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_quantizer(**kwargs)


def test_bad_inputs_are_rejected():
    quantizer = make_quantizer()
    with pytest.raises(ValueError, match=r'2-D.*\(2, 4, 16\)'):
        quantizer(torch.zeros(2, CHANNELS, 16))
    with pytest.raises(ValueError, match=r'in_channels=4.*\(2, 3, 4, 4\)'):
        quantizer(torch.zeros(2, 3, 4, 4))
    z = latent(batch=2)
    with pytest.raises(ValueError, match=r'mask.*\(2, 4, 4\)'):
        quantizer(z, mask=torch.ones(2, 4, 4))  # not bool
    with pytest.raises(ValueError, match='num_scales'):
        quantizer(z, num_scales=torch.tensor([0, 4]))
    with pytest.raises(ValueError, match='num_scales'):
        quantizer(z, num_scales=torch.tensor([4]))
    maps = quantizer.encode(z)
    with pytest.raises(ValueError, match=r'indices\[1\].*\(2, 3, 3\)'):
        quantizer.decode([maps[0], maps[2]])
    with pytest.raises(ValueError, match='prefix sum'):
        quantizer.decode(quantizer.to_sequence(maps)[:, :3])
    with pytest.raises(ValueError, match='1 to 4 scale maps'):
        quantizer.decode(maps + maps[-1:])
