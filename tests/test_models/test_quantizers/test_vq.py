import pytest
import torch
import torch.nn.functional as F

from vistok.models.quantizers import VectorQuantizer
from vistok.models.quantizers.base import perplexity_from_counts
from vistok.registry import QUANTIZERS

CODEBOOK_SIZE = 16
EMBED_DIM = 8
# images, volumes and token sequences: (B, C, *spatial)
SHAPES = [(2, EMBED_DIM, 4, 5), (2, EMBED_DIM, 3, 4, 5), (2, EMBED_DIM, 7)]
OPTIONS = [
    dict(),
    dict(use_l2_norm=True),
    dict(in_channels=12),
    dict(in_channels=12, use_l2_norm=True),
]


def make_quantizer(**kwargs):
    torch.manual_seed(0)
    quantizer = VectorQuantizer(CODEBOOK_SIZE, EMBED_DIM, **kwargs)
    with torch.no_grad():  # spread the codes so every test sees many codes
        quantizer.codebook.normal_()
    return quantizer


def latent(shape, channels=None):
    shape = (shape[0], channels or shape[1], *shape[2:])
    return torch.randn(*shape, generator=torch.Generator().manual_seed(1))


def brute_force_indices(z, codebook):
    """argmin over explicit pairwise distances, one position at a time."""
    vectors = z.movedim(1, -1).reshape(-1, z.shape[1])
    indices = torch.stack([((v - codebook)**2).sum(-1).argmin()
                           for v in vectors])
    return indices.reshape(z.shape[0], *z.shape[2:])


def test_build_from_registry():
    quantizer = QUANTIZERS.build(
        dict(type='VectorQuantizer', codebook_size=32, embed_dim=4))
    assert isinstance(quantizer, VectorQuantizer)
    assert quantizer.codebook_size == 32
    assert quantizer.in_channels == 4


@pytest.mark.parametrize('shape', SHAPES)
def test_indices_match_brute_force(shape):
    quantizer = make_quantizer()
    z = latent(shape)
    expected = brute_force_indices(z, quantizer.codebook.detach())
    out = quantizer(z)
    assert out.indices.shape == (shape[0], *shape[2:])
    assert torch.equal(out.indices, expected)
    assert torch.equal(quantizer.encode(z), expected)


@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('options', OPTIONS)
def test_quantized_is_bit_identical_to_decode(shape, options):
    quantizer = make_quantizer(**options)
    z = latent(shape, options.get('in_channels')).requires_grad_()
    out = quantizer(z)
    assert out.quantized.shape == z.shape
    assert torch.equal(out.quantized, quantizer.decode(out.indices))
    # encode / decode round trip
    assert torch.equal(quantizer.encode(z), out.indices)
    assert torch.equal(
        quantizer.decode(quantizer.encode(z)), out.quantized.detach())


def test_straight_through_gradient_reaches_encoder_only():
    quantizer = make_quantizer()
    z = latent(SHAPES[0]).requires_grad_()
    quantizer(z).quantized.sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z))
    assert quantizer.codebook.grad is None


def test_codebook_learns_from_codebook_loss():
    quantizer = make_quantizer()
    z = latent(SHAPES[0]).requires_grad_()
    out = quantizer(z)
    out.loss['loss_codebook'].backward()
    assert z.grad is None
    used = torch.zeros(CODEBOOK_SIZE, dtype=torch.bool)
    used[out.indices.unique()] = True
    row_norms = quantizer.codebook.grad.norm(dim=-1)
    assert (row_norms[used] > 0).all()
    assert (row_norms[~used] == 0).all()


def test_commitment_loss_trains_encoder_only():
    quantizer = make_quantizer()
    z = latent(SHAPES[0]).requires_grad_()
    quantizer(z).loss['loss_commitment'].backward()
    assert z.grad.abs().sum() > 0
    assert quantizer.codebook.grad is None


def test_losses_equal_vq_vae_formula():
    beta, codebook_weight = 0.5, 2.0
    quantizer = make_quantizer(
        commitment_weight=beta, codebook_weight=codebook_weight)
    z = latent(SHAPES[0])
    out = quantizer(z)
    q = quantizer.codebook[out.indices].movedim(-1, 1)
    mse = ((z - q)**2).mean()
    torch.testing.assert_close(out.loss['loss_commitment'], beta * mse)
    torch.testing.assert_close(out.loss['loss_codebook'],
                               codebook_weight * mse)


def test_frozen_codebook():
    quantizer = make_quantizer(frozen_codebook=True)
    out = quantizer(latent(SHAPES[0]))
    assert not quantizer.codebook.requires_grad
    assert set(out.loss) == {'loss_commitment'}


def test_stats():
    quantizer = make_quantizer()
    out = quantizer(latent(SHAPES[1]))
    counts = out.stats['code_counts']
    assert counts.shape == (CODEBOOK_SIZE, )
    assert counts.sum() == out.indices.numel()
    assert torch.equal(
        counts, torch.bincount(out.indices.flatten(), minlength=16))
    torch.testing.assert_close(out.stats['perplexity'],
                               perplexity_from_counts(counts))


def test_perplexity_from_counts():
    assert perplexity_from_counts(torch.tensor([5, 0, 0])).item() == 1.0
    torch.testing.assert_close(
        perplexity_from_counts(torch.tensor([3, 3, 0, 3, 3])),
        torch.tensor(4.0))


def test_l2_norm_codes_are_unit_and_lookup_is_cosine_argmax():
    quantizer = make_quantizer(use_l2_norm=True)
    z = latent(SHAPES[0])
    out = quantizer(z)
    ones = torch.ones(out.indices.shape)
    torch.testing.assert_close(out.quantized.norm(dim=1), ones)
    torch.testing.assert_close(quantizer.code_vectors().norm(dim=-1),
                               torch.ones(CODEBOOK_SIZE))
    cosine = torch.einsum('bchw,kc->bhwk', F.normalize(z, dim=1),
                          F.normalize(quantizer.codebook.detach(), dim=-1))
    assert torch.equal(out.indices, cosine.argmax(-1))


def test_projection_to_low_dimensional_code_space():
    quantizer = make_quantizer(in_channels=12)
    assert quantizer.project_in.in_features == 12
    assert quantizer.project_in.out_features == EMBED_DIM
    z = latent((2, 12, 4, 5)).requires_grad_()
    out = quantizer(z)
    assert out.quantized.shape == (2, 12, 4, 5)
    assert out.indices.shape == (2, 4, 5)
    assert quantizer.decode(out.indices).shape == (2, 12, 4, 5)
    out.quantized.sum().backward()  # straight-through reaches project_in
    assert quantizer.project_in.weight.grad.abs().sum() > 0
    assert z.grad.abs().sum() > 0


def test_distances_in_fp32_under_autocast():
    # codes crowded around a centre: bf16 distances cannot tell them apart,
    # fp32 ones can
    generator = torch.Generator().manual_seed(2)
    centre = torch.randn(1, 32, generator=generator)
    quantizer = VectorQuantizer(256, 32)
    with torch.no_grad():
        quantizer.codebook.copy_(
            centre + 0.05 * torch.randn(256, 32, generator=generator))
    z = (centre + 0.05 * torch.randn(64, 32, generator=generator)).t()[None]
    codebook = quantizer.codebook.detach()
    expected = quantizer(z).indices
    assert torch.equal(expected, brute_force_indices(z, codebook))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        flat = z[0].t()
        naive = (flat.pow(2).sum(-1, keepdim=True) - 2 * flat @ codebook.t() +
                 codebook.pow(2).sum(-1)).argmin(-1)
        out = quantizer(z)
        encoded = quantizer.encode(z)
    assert not torch.equal(naive, expected[0]), 'bf16 should be inaccurate'
    assert torch.equal(out.indices, expected)
    assert torch.equal(encoded, expected)


def test_blockwise_search_matches_brute_force(monkeypatch):
    """The search scores a few rows at a time; the blocks (here 3 rows, the
    last one partial) must not change any index."""
    from vistok.models.utils import code_search
    monkeypatch.setattr(code_search, 'SEARCH_BLOCK_ELEMENTS',
                        3 * CODEBOOK_SIZE)
    quantizer = make_quantizer()
    z = latent((2, EMBED_DIM, 7))  # 14 vectors: blocks of 3, 3, 3, 3, 2
    expected = brute_force_indices(z, quantizer.codebook.detach())
    assert torch.equal(quantizer(z).indices, expected)
    assert torch.equal(quantizer.encode(z), expected)
