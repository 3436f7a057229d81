"""The quantizer options ImageFolder (Li et al. 2025, arXiv 2410.01756)
needs, checked against independent references: the cosine look-up with the
raw codebook row out (``VectorQuantizer(l2_norm_output=False)``, the
official ``VectorQuantizer2`` with ``using_znorm=True``), quantizer dropout
of the first fraction of the batch (``dropout_mode='first_fraction'``), the
commitment summed over scales (``commitment_reduction='sum'``) and the
folding property they train for."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from vistok.models.quantizers import VectorQuantizer
from vistok.models.quantizers.multiscale import MultiScaleResidualQuantizer
from vistok.models.quantizers.product import ProductQuantizer

CODEBOOK_SIZE = 16
EMBED_DIM = 4
# images, volumes and token sequences: (B, C, *spatial)
SHAPES = [(3, EMBED_DIM, 4, 5), (2, EMBED_DIM, 3, 4, 5), (2, EMBED_DIM, 7)]
RAW_COSINE = dict(type='VectorQuantizer',
                  codebook_size=CODEBOOK_SIZE,
                  embed_dim=EMBED_DIM,
                  use_l2_norm=True,
                  l2_norm_output=False)


def latent(shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def spread_codes(codebook: torch.Tensor) -> None:
    """Random directions with norms from 0.2 to 5: raw rows differ clearly
    from their normalised versions."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        codebook.copy_(
            F.normalize(torch.randn(codebook.shape, generator=generator),
                        dim=-1) *
            torch.linspace(0.2, 5.0, len(codebook))[:, None])


def raw_cosine_vq(**kwargs):
    torch.manual_seed(0)
    quantizer = VectorQuantizer(**{k: v
                                   for k, v in RAW_COSINE.items()
                                   if k != 'type'},
                                **kwargs)
    spread_codes(quantizer.codebook)
    return quantizer


def brute_force_cosine(z, codebook):
    """argmax of the cosine similarity, one position at a time."""
    vectors = z.movedim(1, -1).reshape(-1, z.shape[1])
    codes = codebook / codebook.norm(dim=-1, keepdim=True)
    indices = torch.stack([(codes @ (v / v.norm())).argmax()
                           for v in vectors])
    return indices.reshape(z.shape[0], *z.shape[2:])


# --------------------------------------------- cosine look-up, raw code out
@pytest.mark.parametrize('shape', SHAPES)
def test_cosine_lookup_adds_the_raw_codebook_row(shape):
    quantizer = raw_cosine_vq()
    codebook = quantizer.codebook.detach().clone()
    z = latent(shape).requires_grad_()
    out = quantizer(z)
    expected = brute_force_cosine(z.detach(), codebook)
    assert torch.equal(out.indices, expected)
    assert len(expected.unique()) > 4  # the test sees many codes
    raw = codebook[expected].movedim(-1, 1)
    assert torch.equal(out.quantized, raw)
    assert torch.equal(out.quantized, quantizer.decode(out.indices))
    assert torch.equal(quantizer.encode(z), out.indices)
    assert torch.equal(quantizer.decode(quantizer.encode(z)),
                       out.quantized.detach())
    # the raw rows are not the unit ones the default quantizer adds
    assert not torch.allclose(out.quantized.norm(dim=1),
                              torch.ones(expected.shape))
    # straight-through on the un-normalised z: the gradient is copied
    out.quantized.sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z))


def test_raw_code_out_losses_are_euclidean_on_raw_vectors():
    """VAR / ImageFolder: after the cosine look-up the losses compare the
    un-normalised z with the raw code."""
    quantizer = raw_cosine_vq(commitment_weight=0.5, codebook_weight=2.0)
    z = latent(SHAPES[0])
    out = quantizer(z)
    mse = (z - quantizer.codebook[out.indices].movedim(-1, 1)).pow(2).mean()
    torch.testing.assert_close(out.loss['loss_commitment'], 0.5 * mse)
    torch.testing.assert_close(out.loss['loss_codebook'], 2.0 * mse)


def test_raw_code_out_with_projection_and_default_unchanged():
    z = latent((2, 6, 3, 3))
    projected = raw_cosine_vq(in_channels=6)
    out = projected(z)
    flat = projected.project_in(z.movedim(1, -1))
    assert torch.equal(
        out.indices, brute_force_cosine(flat.movedim(-1, 1).detach(),
                                        projected.codebook.detach()))
    expected = projected.project_out(projected.codebook[out.indices])
    torch.testing.assert_close(out.quantized, expected.movedim(-1, 1))
    assert torch.equal(out.quantized, projected.decode(out.indices))
    # the default (None) follows use_l2_norm: unit codes out, as before
    outputs = []
    for option in ({}, dict(l2_norm_output=True)):
        torch.manual_seed(0)
        unit = VectorQuantizer(CODEBOOK_SIZE, EMBED_DIM, use_l2_norm=True,
                               **option)
        spread_codes(unit.codebook)
        assert unit.l2_norm_output is True
        outputs.append(unit(latent(SHAPES[0])))
    assert torch.equal(outputs[0].quantized, outputs[1].quantized)
    torch.testing.assert_close(outputs[0].quantized.norm(dim=1),
                               torch.ones(outputs[0].indices.shape))
    assert VectorQuantizer(8, 4).l2_norm_output is False
    with pytest.raises(ValueError, match='l2_norm_output=True.*use_l2_norm'):
        VectorQuantizer(8, 4, l2_norm_output=True)


def test_multiscale_with_raw_cosine_lookup_follows_var_algorithm():
    """VAR Alg. 1 written out independently (brute-force cosine argmax,
    raw rows, bicubic up-sampling, Φ) gives the quantizer's indices and
    f̂; forward is bit-identical to decode."""
    torch.manual_seed(0)
    scales = [1, 2, 4]
    quantizer = MultiScaleResidualQuantizer(scales=scales,
                                            quantizer=RAW_COSINE,
                                            num_phi=2)
    spread_codes(quantizer.quantizer.codebook)
    codebook = quantizer.quantizer.codebook.detach().clone()
    z = latent((3, EMBED_DIM, 4, 4))
    out = quantizer(z)
    assert torch.equal(out.quantized, quantizer.decode(out.indices))
    assert all(
        torch.equal(a, b) for a, b in zip(quantizer.encode(z), out.indices))
    with torch.no_grad():
        residual, f_hat = z.clone(), torch.zeros_like(z)
        for i, side in enumerate(scales):
            coarse = F.interpolate(residual, size=(side, side), mode='area')
            idx = brute_force_cosine(coarse, codebook)
            assert torch.equal(idx, out.indices[i]), i
            h = codebook[idx].movedim(-1, 1)
            if side != 4:
                h = F.interpolate(h, size=(4, 4), mode='bicubic')
            conv = quantizer.phi_convs[quantizer.phi_index[i]]
            h = 0.5 * h + 0.5 * conv(h)
            f_hat, residual = f_hat + h, residual - h
    torch.testing.assert_close(out.quantized, f_hat)


# ------------------------------------------------ dropout of a first fraction
def first_fraction_quantizer(**kwargs):
    torch.manual_seed(0)
    options = dict(scales=[1, 2, 3, 4],
                   quantizer=RAW_COSINE,
                   dropout_ratio=0.5,
                   dropout_mode='first_fraction',
                   start_scale=2)
    options.update(kwargs)
    return MultiScaleResidualQuantizer(**options).train()


def test_first_fraction_drops_only_the_first_samples():
    quantizer = first_fraction_quantizer()
    torch.manual_seed(1)
    draws = torch.stack([quantizer.sample_num_scales(10)
                         for _ in range(300)])
    assert draws.dtype == torch.long
    assert (draws[:, 5:] == 4).all()  # samples 5-9 keep every scale
    for b in range(5):  # samples 0-4: U{start_scale..S}, each value seen
        assert set(draws[:, b].tolist()) == {2, 3, 4}, b
    # fewer than S scales with probability (S - start) / (S - start + 1)
    assert abs((draws[:, :5] < 4).float().mean() - 2 / 3) < 0.05
    # int(p·B) samples, as the official n_dropout: none for B < 1/p
    for batch, dropped in ((7, 3), (1, 0)):
        draws = torch.stack(
            [quantizer.sample_num_scales(batch) for _ in range(100)])
        assert (draws[:, dropped:] == 4).all()
        assert (draws[:, :dropped] < 4).any(0).all()
    assert torch.equal(quantizer.eval().sample_num_scales(10),
                       torch.full((10, ), 4))


def test_first_fraction_forward_keeps_the_draw():
    quantizer = first_fraction_quantizer(dropout_ratio=0.6)
    spread_codes(quantizer.quantizer.codebook)
    z = latent((5, EMBED_DIM, 4, 4))
    torch.manual_seed(2)
    out = quantizer(z)
    draw = out.stats['num_scales']
    assert (draw[3:] == 4).all() and (draw[:3] < 4).any()
    assert torch.equal(out.quantized, quantizer.decode(out.indices, draw))
    full = quantizer.decode(out.indices)
    assert torch.equal(out.quantized[3:], full[3:])


@pytest.mark.parametrize('share_dropout', [True, False])
def test_product_branches_share_the_first_fraction_draw(share_dropout):
    branch = dict(type='MultiScaleResidualQuantizer',
                  scales=[1, 2, 4],
                  quantizer=RAW_COSINE,
                  dropout_ratio=0.5,
                  dropout_mode='first_fraction',
                  start_scale=1)
    torch.manual_seed(0)
    pq = ProductQuantizer(branch, 2, share_dropout=share_dropout).train()
    z = latent((10, 2 * EMBED_DIM, 4, 4))
    differ = 0
    for _ in range(20):
        out = pq(z)
        first = out.stats['branch0.num_scales']
        second = out.stats['branch1.num_scales']
        for draw in (first, second):
            assert (draw[5:] == 3).all()
        if share_dropout:
            assert out.stats['num_scales'] is first
            assert second is first
            assert torch.equal(out.quantized,
                               pq.decode(out.indices, num_scales=first))
        differ += int(not torch.equal(first, second))
    # without sharing the branches draw on their own (and do differ)
    assert (differ > 0) == (not share_dropout)


# ------------------------------------------------ commitment over the scales
def per_scale_masked_mse(quantizer, z, maps, mask, num_scales):
    """‖z - f̂_i‖² averaged over the real positions of the samples keeping
    scale i, for every scale i (f̂_i rebuilt by decoding i scales)."""
    terms = []
    for i in range(len(maps)):
        f_hat = quantizer.decode(maps[:i + 1], num_scales)
        weight = (mask.float() * (i < num_scales).float()[:, None, None])
        weight = weight[:, None].expand_as(z)
        terms.append((weight * (f_hat - z)**2).sum() / weight.sum())
    return torch.stack(terms)


def test_commitment_summed_over_scales():
    draw = torch.tensor([1, 4, 2, 3, 4])  # scale i kept by 5, 4, 3, 2 samples
    mask = torch.ones(5, 4, 4, dtype=torch.bool)
    mask[0, :, 3:] = False
    mask[2, 1:] = False
    z = latent((5, EMBED_DIM, 4, 4))
    outs = {}
    for reduction in ('mean', 'sum'):
        quantizer = first_fraction_quantizer(commitment_reduction=reduction,
                                             commitment_weight=0.3)
        spread_codes(quantizer.quantizer.codebook)
        outs[reduction] = quantizer(z, mask=mask, num_scales=draw)
        maps = outs[reduction].indices
    terms = per_scale_masked_mse(quantizer, z, maps, mask, draw)
    torch.testing.assert_close(outs['sum'].loss['loss_commitment'],
                               0.3 * terms.sum())
    # the codebook term is the same pooled mean under both reductions
    assert torch.equal(outs['sum'].loss['loss_codebook'],
                       outs['mean'].loss['loss_codebook'])
    # 'mean' pools the squared errors: not the mean of the per-scale terms
    # once dropout keeps different samples per scale
    assert not torch.allclose(outs['mean'].loss['loss_commitment'],
                              0.3 * terms.mean())
    # without dropout and mask: 'sum' = S x 'mean'
    full = torch.full((5, ), 4)
    plain = {
        reduction: first_fraction_quantizer(
            commitment_reduction=reduction)(z, num_scales=full)
        for reduction in ('mean', 'sum')
    }
    torch.testing.assert_close(plain['sum'].loss['loss_commitment'],
                               4 * plain['mean'].loss['loss_commitment'])


def test_summed_commitment_trains_the_encoder_only():
    quantizer = first_fraction_quantizer(commitment_reduction='sum')
    z = latent((4, EMBED_DIM, 4, 4)).requires_grad_()
    quantizer(z).loss['loss_commitment'].backward()
    assert z.grad.abs().sum() > 0
    assert all(p.grad is None for p in quantizer.parameters())


@pytest.mark.parametrize('kwargs, match', [
    (dict(dropout_mode='first'), 'dropout_mode'),
    (dict(commitment_reduction='total'), 'commitment_reduction'),
])
def test_bad_options_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        first_fraction_quantizer(**kwargs)


# ---------------------------------------------------------------- folding
def smooth_images(batch, generator):
    """Smooth random 3-channel 8x8 signals (2x2 and 4x4 detail)."""
    coarse = torch.randn(batch, 3, 2, 2, generator=generator)
    detail = torch.randn(batch, 3, 4, 4, generator=generator)
    return (F.interpolate(coarse, size=(8, 8), mode='bilinear') +
            0.5 * F.interpolate(detail, size=(8, 8), mode='bilinear'))


def test_folding_reconstruction_improves_with_kept_scales():
    """The issue's folding property at quantizer level: a tiny
    encoder -> MS-RQ (p = 0.5, first fraction, start 2) -> decoder trained
    with MSE; on a fixed batch the pixel MSE of ``decode(indices,
    num_scales=n)`` is non-increasing in n = start..S within 5%, and
    MSE(S) < MSE(start)."""
    torch.manual_seed(0)
    channels = 8
    encoder = nn.Conv2d(3, channels, 1)
    decoder = nn.Conv2d(channels, 3, 1)
    quantizer = MultiScaleResidualQuantizer(
        scales=[1, 2, 4, 8],
        quantizer=dict(RAW_COSINE, codebook_size=64, embed_dim=channels),
        num_phi=2,
        dropout_ratio=0.5,
        dropout_mode='first_fraction',
        start_scale=2,
        commitment_reduction='sum')
    parts = nn.ModuleList([encoder, quantizer, decoder])
    optimizer = torch.optim.Adam(parts.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(1)
    fixed = smooth_images(64, generator)

    def pixel_mse(num_kept):
        with torch.no_grad():
            maps = quantizer.encode(encoder(fixed))
            kept = torch.full((len(fixed), ), num_kept)
            return F.mse_loss(decoder(quantizer.decode(maps, kept)),
                              fixed).item()

    before = pixel_mse(4)
    dropped = 0
    for _ in range(150):
        images = smooth_images(32, generator)
        out = quantizer(encoder(images))
        dropped += int((out.stats['num_scales'] < 4).sum())
        loss = F.mse_loss(decoder(out.quantized), images) + sum(
            out.loss.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert dropped > 0
    parts.eval()
    errors = [pixel_mse(n) for n in range(2, 5)]  # n = start .. S
    assert errors[-1] < 0.2 * before  # it trained
    assert all(b <= 1.05 * a for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < errors[0], errors
