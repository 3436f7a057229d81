import pytest
import torch
import torch.nn.functional as F

# importing the family modules registers them in QUANTIZERS
from _helpers import train_quantizer
from vistok.models.quantizers.base import flat_tokens
from vistok.models.quantizers.fsq import FiniteScalarQuantizer  # noqa: F401
from vistok.models.quantizers.hierarchical import HierarchicalQuantizer
from vistok.models.quantizers.lfq import LookupFreeQuantizer  # noqa: F401
from vistok.models.quantizers.vq import VectorQuantizer
from vistok.registry import QUANTIZERS

C = 2  # bottom channels; the top quantizer sees 4C = 8
TOP = dict(type='VectorQuantizer', codebook_size=16, embed_dim=4 * C)
BOTTOM = dict(type='VectorQuantizer', codebook_size=8, embed_dim=C)
LEVELS = {
    'vq': (TOP, BOTTOM),
    'lfq': (dict(type='LookupFreeQuantizer', codebook_bits=4 * C),
            dict(type='LookupFreeQuantizer', codebook_bits=C)),
    'fsq_vq': (dict(type='FiniteScalarQuantizer', levels=[3] * 4 * C),
               BOTTOM),
}


def spread_codebooks(module, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for sub in module.modules():
            if isinstance(sub, VectorQuantizer):
                sub.codebook.copy_(
                    torch.randn(sub.codebook.shape, generator=generator))
    return module


def make(levels='vq', shared_codebook=False, **kwargs):
    torch.manual_seed(0)
    top, bottom = LEVELS[levels]
    quantizer = HierarchicalQuantizer(
        top, None if shared_codebook else bottom,
        shared_codebook=shared_codebook, **kwargs)
    return spread_codebooks(quantizer).eval()


def latent(shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_build_from_registry():
    quantizer = QUANTIZERS.build(
        dict(type='HierarchicalQuantizer', top_quantizer=TOP,
             bottom_quantizer=BOTTOM))
    assert isinstance(quantizer, HierarchicalQuantizer)
    assert quantizer.in_channels == C
    assert quantizer.codebook_size == 16 + 8
    shared = make(shared_codebook=True)
    assert shared.codebook_size == 16
    assert not hasattr(shared, 'bottom')


@pytest.mark.parametrize('shared_codebook', [False, True])
def test_hand_written_sequences_on_4x4(shared_codebook):
    """Top 2×2 ids 0..3, bottom 4×4 ids 100 + 10·row + col."""
    quantizer = make(shared_codebook=shared_codebook)
    top = torch.arange(4).reshape(1, 2, 2)
    rows, cols = torch.meshgrid(torch.arange(4), torch.arange(4),
                                indexing='ij')
    bottom = (100 + 10 * rows + cols)[None]
    off = 0 if shared_codebook else 16  # bottom ids follow the top vocab
    children = [[0, 1, 10, 11], [2, 3, 12, 13], [20, 21, 30, 31],
                [22, 23, 32, 33]]
    grouped = [0, 1, 2, 3] + [100 + off + c for block in children
                              for c in block]
    interleaved = [
        t for parent, block in enumerate(children)
        for t in [parent] + [100 + off + c for c in block]
    ]
    assert grouped == [0, 1, 2, 3, 100 + off, 101 + off, 110 + off,
                       111 + off, 102 + off, 103 + off, 112 + off,
                       113 + off, 120 + off, 121 + off, 130 + off,
                       131 + off, 122 + off, 123 + off, 132 + off,
                       133 + off]
    assert interleaved[:10] == [0, 100 + off, 101 + off, 110 + off,
                                111 + off, 1, 102 + off, 103 + off,
                                112 + off, 113 + off]
    for order, expected in (('grouped', grouped),
                            ('interleaved', interleaved)):
        quantizer.token_order = order
        sequence = quantizer.to_sequence((top, bottom))
        assert sequence.tolist() == [expected]
        back_top, back_bottom = quantizer.from_sequence(sequence)
        assert torch.equal(back_top, top)
        assert torch.equal(back_bottom, bottom)


@pytest.mark.parametrize('token_order', ['grouped', 'interleaved'])
def test_sequence_round_trip_rectangular(token_order):
    quantizer = make(token_order=token_order)
    generator = torch.Generator().manual_seed(0)
    top = torch.randint(16, (3, 2, 3), generator=generator)
    bottom = torch.randint(8, (3, 4, 6), generator=generator)
    sequence = quantizer.to_sequence((top, bottom))
    assert sequence.shape == (3, 5 * 6)
    assert sequence.max() < quantizer.codebook_size
    back_top, back_bottom = quantizer.from_sequence(sequence, size=(4, 6))
    assert torch.equal(back_top, top) and torch.equal(back_bottom, bottom)
    with pytest.raises(ValueError, match='square'):
        quantizer.from_sequence(sequence)  # 30 tokens: not a square grid
    with pytest.raises(ValueError, match=r'\(4, 8\)'):
        quantizer.from_sequence(sequence, size=(4, 8))


@pytest.mark.parametrize('token_order', ['grouped', 'interleaved'])
def test_sequence_round_trip_with_residual_bottom(token_order):
    """UniCode-style HQ-VAE over RQ: a residual bottom level adds a depth
    axis; its ids of one position stay together and dropped ids (-1) stay
    negative instead of being shifted into the vocabulary."""
    quantizer = HierarchicalQuantizer(
        TOP, dict(type='ResidualQuantizer', quantizer=BOTTOM, depth=3),
        token_order=token_order).eval()
    generator = torch.Generator().manual_seed(0)
    top = torch.randint(16, (2, 2, 3), generator=generator)
    bottom = torch.randint(8, (2, 4, 6, 3), generator=generator)
    bottom[0, 0, 0, 2] = -1
    sequence = quantizer.to_sequence((top, bottom))
    assert sequence.shape == (2, (1 + 4 * 3) * 6)
    assert (sequence < 0).sum() == 1
    assert sequence.max() < quantizer.codebook_size
    if token_order == 'interleaved':  # top id, then 4 children x 3 depths
        assert sequence[0, :4].tolist() == [top[0, 0, 0].item()] + [
            16 + b for b in bottom[0, 0, 0, :].tolist()[:2]] + [-1]
    back_top, back_bottom = quantizer.from_sequence(sequence, size=(4, 6))
    assert torch.equal(back_top, top) and torch.equal(back_bottom, bottom)
    z = latent((2, C, 4, 6))
    indices = quantizer.encode(z)
    assert torch.equal(flat_tokens(quantizer, indices),
                       quantizer.to_sequence(indices))


@pytest.mark.parametrize('levels', ['vq', 'lfq', 'fsq_vq'])
@pytest.mark.parametrize('shared_codebook', [False, True])
@pytest.mark.parametrize('size', [(4, 4), (2, 6)])
def test_decode_encode_bit_identical(levels, shared_codebook, size):
    quantizer = make(levels, shared_codebook)
    z = latent((2, C, *size)).requires_grad_()
    out = quantizer(z)
    top, bottom = out.indices
    assert top.shape == (2, size[0] // 2, size[1] // 2)
    assert bottom.shape == (2, *size)
    assert out.quantized.shape == z.shape
    assert torch.equal(out.quantized, quantizer.decode(out.indices))
    encoded = quantizer.encode(z)
    assert torch.equal(encoded[0], top) and torch.equal(encoded[1], bottom)
    assert torch.equal(quantizer.decode(encoded), out.quantized.detach())
    sequence = quantizer.to_sequence(out.indices)
    assert torch.equal(
        quantizer.decode(quantizer.from_sequence(sequence, size)),
        out.quantized.detach())


def test_levels_follow_the_definition():
    """Top = top quantizer on pixel_unshuffle(z); bottom = bottom
    quantizer on z - pixel_shuffle(top)."""
    quantizer = make()
    z = latent((2, C, 4, 6))
    out = quantizer(z)
    top_out = quantizer.top(F.pixel_unshuffle(z, 2))
    top_map = F.pixel_shuffle(top_out.quantized, 2)
    bottom_out = quantizer.bottom(z - top_map)
    assert torch.equal(out.indices[0], top_out.indices)
    assert torch.equal(out.indices[1], bottom_out.indices)
    assert torch.equal(out.quantized, top_map + bottom_out.quantized)
    for name in top_out.loss:
        torch.testing.assert_close(
            out.loss[name], top_out.loss[name] + bottom_out.loss[name])
    assert torch.equal(out.stats['top.code_counts'],
                       top_out.stats['code_counts'])
    assert torch.equal(out.stats['bottom.code_counts'],
                       bottom_out.stats['code_counts'])
    torch.testing.assert_close(
        out.stats['perplexity'],
        (top_out.stats['perplexity'] + bottom_out.stats['perplexity']) / 2)
    # the bottom level codes the residual: adding it lowers the error
    top_error = ((z - top_map)**2).mean()
    assert ((z - out.quantized)**2).mean() < top_error


def test_straight_through_gradient_is_identity():
    quantizer = make()
    z = latent((2, C, 4, 4)).requires_grad_()
    quantizer(z).quantized.sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z))


def test_shared_codebook_projections_get_decoder_gradient():
    quantizer = make(shared_codebook=True)
    z = latent((2, C, 4, 4)).requires_grad_()
    quantizer(z).quantized.pow(2).sum().backward()
    for projection in (quantizer.bottom_in, quantizer.bottom_out):
        assert projection.weight.grad.abs().sum() > 0
    assert quantizer.top.codebook.grad is None


@pytest.mark.parametrize('shared_codebook', [False, True])
def test_bf16_autocast_keeps_indices(shared_codebook):
    quantizer = make(shared_codebook=shared_codebook)
    z = latent((2, C, 8, 8))
    expected = quantizer(z).indices
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = quantizer(z)
        encoded = quantizer.encode(z)
    for got in (out.indices, encoded):
        assert torch.equal(got[0], expected[0])
        assert torch.equal(got[1], expected[1])


def test_mask_at_bottom_resolution():
    quantizer = make()
    z = latent((2, C, 4, 4))
    mask = torch.ones(2, 4, 4, dtype=torch.bool)
    mask[0, 2:, :] = False  # bottom half of sample 0: two padded top rows
    mask[1, :, 3] = False  # last column of sample 1: top blocks half real
    out = quantizer(z, mask=mask)
    top_mask = torch.ones(2, 2, 2, dtype=torch.bool)
    top_mask[0, 1, :] = False  # a top token is real if any child is
    assert out.stats['top.code_counts'].sum() == top_mask.sum()
    assert out.stats['bottom.code_counts'].sum() == mask.sum()
    top_out = quantizer.top(F.pixel_unshuffle(z, 2), mask=top_mask)
    bottom_out = quantizer.bottom(
        z - F.pixel_shuffle(top_out.quantized, 2), mask=mask)
    torch.testing.assert_close(
        out.loss['loss_commitment'], top_out.loss['loss_commitment'] +
        bottom_out.loss['loss_commitment'])
    # padded positions still get indices and values
    unmasked = quantizer(z)
    assert torch.equal(out.indices[0], unmasked.indices[0])
    assert torch.equal(out.indices[1], unmasked.indices[1])
    assert torch.equal(out.quantized, quantizer.decode(out.indices))


def test_bad_input():
    quantizer = make()
    with pytest.raises(ValueError, match=r'even H and W.*\(2, 2, 3, 4\)'):
        quantizer(torch.randn(2, C, 3, 4))
    with pytest.raises(ValueError, match=r'2-D only.*\(2, 2, 4, 4, 4\)'):
        quantizer(torch.randn(2, C, 4, 4, 4))
    with pytest.raises(ValueError, match=r'\(2, 3, 4, 4\)'):
        quantizer.encode(torch.randn(2, 3, 4, 4))
    with pytest.raises(ValueError, match='mask'):
        quantizer(torch.randn(2, C, 4, 4), mask=torch.ones(2, 2, 2).bool())
    with pytest.raises(ValueError, match='top_quantizer.in_channels'):
        HierarchicalQuantizer(dict(TOP, embed_dim=6), BOTTOM)
    with pytest.raises(ValueError, match='bottom_quantizer.in_channels'):
        HierarchicalQuantizer(TOP, dict(BOTTOM, embed_dim=3))
    with pytest.raises(ValueError, match='bottom_quantizer'):
        HierarchicalQuantizer(TOP, BOTTOM, shared_codebook=True)
    with pytest.raises(ValueError, match='token_order'):
        HierarchicalQuantizer(TOP, BOTTOM, token_order='raster')
    with pytest.raises(ValueError, match='indices'):
        quantizer.decode((torch.zeros(2, 2, 2).long(),
                          torch.zeros(2, 4, 5).long()))


def test_toy_learning():
    """Codebooks initialised from the data learn a Gaussian from the
    codebook loss: error falls, both levels keep most codes in use."""
    torch.manual_seed(0)
    quantizer = HierarchicalQuantizer(dict(TOP, codebook_size=8),
                                      BOTTOM).train()
    data = latent((8, C, 8, 8), seed=2)
    with torch.no_grad():
        top_vectors = F.pixel_unshuffle(data, 2).movedim(1, -1).reshape(
            -1, 4 * C)
        quantizer.top.codebook.copy_(top_vectors[:8])
        quantizer.bottom.codebook.copy_(
            0.5 * data.movedim(1, -1).reshape(-1, C)[:8])
    initial, final, out = train_quantizer(quantizer, data)
    assert final < 0.7 * initial
    assert out.stats['top.usage'] > 0.8 and out.stats['bottom.usage'] > 0.8
