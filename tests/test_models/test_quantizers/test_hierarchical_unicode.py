"""UniCode's tokenizer layouts (Zheng et al. 2024; official code
``src/vae/models/stage1/generator.py``): the HQ-VAE's concatenated levels
before ``post_quant_conv``, its released token layout
(``legacy_raster_children``), and the flat sequences of the HQ-VAE
(8×8 + 16×16 = 320 ids) and the RQ-VAE (4 × 8×8 = 256 ids)."""
import copy

import pytest
import torch
import torch.nn.functional as F

from vistok.models.quantizers.base import flat_tokens
from vistok.models.quantizers.hierarchical import (
    TOKEN_ORDERS,
    HierarchicalQuantizer,
)
from vistok.models.quantizers.residual import ResidualQuantizer
from vistok.models.quantizers.vq import VectorQuantizer
from vistok.registry import MODELS

C = 2  # bottom channels; the top quantizer sees 4C = 8
TOP = dict(type='VectorQuantizer', codebook_size=16, embed_dim=4 * C)
# UniCode's bottom: up_conv (C -> 4C), a 4C-d codebook, down_conv (4C -> C)
BOTTOM = dict(type='VectorQuantizer', codebook_size=8, in_channels=C,
              embed_dim=4 * C)


@pytest.fixture(autouse=True)
def single_thread():
    """One intra-op thread: the machine's cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def spread_codebooks(module, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for sub in module.modules():
            if isinstance(sub, VectorQuantizer):
                sub.codebook.copy_(
                    torch.randn(sub.codebook.shape, generator=generator))
    return module


def make(shared_codebook=False, **kwargs):
    torch.manual_seed(0)
    quantizer = HierarchicalQuantizer(
        TOP, None if shared_codebook else BOTTOM,
        shared_codebook=shared_codebook, **kwargs)
    return spread_codebooks(quantizer).eval()


def latent(shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------ token orders
@pytest.mark.parametrize('shared_codebook', [False, True])
def test_every_order_matches_hand_written_4x4_sequences(shared_codebook):
    """Top 2×2 ids 0..3, bottom 4×4 ids 100 + 10·row + col; bottom ids are
    shifted by K_top = 16 in the joint vocabulary of separate codebooks."""
    quantizer = make(shared_codebook=shared_codebook)
    top = torch.arange(4).reshape(1, 2, 2)
    rows, cols = torch.meshgrid(torch.arange(4), torch.arange(4),
                                indexing='ij')
    bottom = (100 + 10 * rows + cols)[None]
    o = 0 if shared_codebook else 16
    expected = {
        # top tokens, then the 2×2 block under each top token
        'grouped': [0, 1, 2, 3,
                    100 + o, 101 + o, 110 + o, 111 + o,
                    102 + o, 103 + o, 112 + o, 113 + o,
                    120 + o, 121 + o, 130 + o, 131 + o,
                    122 + o, 123 + o, 132 + o, 133 + o],
        # each top token followed by the 2×2 block under it
        'interleaved': [0, 100 + o, 101 + o, 110 + o, 111 + o,
                        1, 102 + o, 103 + o, 112 + o, 113 + o,
                        2, 120 + o, 121 + o, 130 + o, 131 + o,
                        3, 122 + o, 123 + o, 132 + o, 133 + o],
        # UniCode's release: top i followed by raster positions 4i..4i+3
        # of the bottom map (here: bottom row i)
        'legacy_raster_children': [0, 100 + o, 101 + o, 102 + o, 103 + o,
                                   1, 110 + o, 111 + o, 112 + o, 113 + o,
                                   2, 120 + o, 121 + o, 122 + o, 123 + o,
                                   3, 130 + o, 131 + o, 132 + o, 133 + o],
    }
    assert set(expected) == set(TOKEN_ORDERS)
    for order, sequence in expected.items():
        quantizer.token_order = order
        got = quantizer.to_sequence((top, bottom))
        assert got.tolist() == [sequence], order
        back_top, back_bottom = quantizer.from_sequence(got)
        assert torch.equal(back_top, top) and torch.equal(back_bottom, bottom)


def test_legacy_layout_is_the_official_reshape():
    """``data/process.py``: ``cat([codes_t.unsqueeze(1), codes_b.reshape(64,
    4)], -1).flatten()`` on raster-flattened 8×8 / 16×16 code maps (shared
    codebook: one vocabulary, as UniCode maps both levels through the same
    ``selected_llm_indices``)."""
    quantizer = make(shared_codebook=True,
                     token_order='legacy_raster_children')
    generator = torch.Generator().manual_seed(0)
    top = torch.randint(16, (2, 8, 8), generator=generator)
    bottom = torch.randint(16, (2, 16, 16), generator=generator)
    official = torch.stack([
        torch.cat([top[i].reshape(-1).unsqueeze(1),
                   bottom[i].reshape(-1).reshape(64, 4)], -1).flatten()
        for i in range(2)])
    assert official.shape == (2, 320)
    assert torch.equal(quantizer.to_sequence((top, bottom)), official)


@pytest.mark.parametrize('order', TOKEN_ORDERS)
@pytest.mark.parametrize('bottom_depth', [None, 3])
def test_every_order_round_trips_rectangular_and_residual(order,
                                                         bottom_depth):
    """A 4×6 bottom grid (legacy children then wrap across bottom rows) and
    a residual bottom level (its depth ids stay together; a dropped id
    stays negative)."""
    bottom_cfg = BOTTOM if bottom_depth is None else dict(
        type='ResidualQuantizer', quantizer=dict(BOTTOM), depth=bottom_depth)
    quantizer = HierarchicalQuantizer(TOP, bottom_cfg, token_order=order)
    generator = torch.Generator().manual_seed(0)
    top = torch.randint(16, (3, 2, 3), generator=generator)
    bottom = torch.randint(
        8, (3, 4, 6) + (() if bottom_depth is None else (bottom_depth, )),
        generator=generator)
    if bottom_depth is not None:
        bottom[0, 0, 0, 2] = -1
    sequence = quantizer.to_sequence((top, bottom))
    per_position = bottom_depth or 1
    assert sequence.shape == (3, (1 + 4 * per_position) * 6)
    assert sequence.max() < quantizer.codebook_size
    assert (sequence < 0).sum() == (bottom < 0).sum()
    back_top, back_bottom = quantizer.from_sequence(sequence, size=(4, 6))
    assert torch.equal(back_top, top) and torch.equal(back_bottom, bottom)
    # flat_tokens (what predict / export use) is the same sequence
    assert torch.equal(flat_tokens(quantizer, (top, bottom)), sequence)
    with pytest.raises(ValueError, match='indices'):
        quantizer.to_sequence((top, bottom[:, :, :4]))


def test_residual_sequence_order_hand_written():
    """RQ: positions in raster order, a position's depth ids consecutive:
    id = 10·position + depth on a 2×2 grid of depth 4."""
    quantizer = ResidualQuantizer(TOP, depth=4, shared_codebook=True)
    indices = (10 * torch.arange(4)[:, None] + torch.arange(4)).reshape(
        1, 2, 2, 4)
    sequence = quantizer.to_sequence(indices)
    assert sequence.tolist() == [[0, 1, 2, 3, 10, 11, 12, 13,
                                  20, 21, 22, 23, 30, 31, 32, 33]]
    assert torch.equal(flat_tokens(quantizer, indices), sequence)
    assert torch.equal(quantizer.from_sequence(sequence, (2, 2)), indices)
    with pytest.raises(ValueError, match=r'\(B, 12\).*\(1, 16\)'):
        quantizer.from_sequence(sequence, (3, 1))
    with pytest.raises(ValueError, match='depth=4'):
        quantizer.to_sequence(indices[..., :3])


# ------------------------------------------------------------------ concat
@pytest.mark.parametrize('shared_codebook', [False, True])
def test_concat_follows_the_definition(shared_codebook):
    """``quantized = cat([pixel_shuffle(q_top), q_bottom])`` with
    ``q_bottom`` the bottom level on ``z - pixel_shuffle(q_top)``; ``decode``
    gives the same bits."""
    quantizer = make(shared_codebook=shared_codebook, combine='concat')
    summed = make(shared_codebook=shared_codebook)
    assert quantizer.out_channels == 2 * C and summed.out_channels == C
    z = latent((2, C, 4, 6))
    out = quantizer(z)
    top_map = F.pixel_shuffle(
        quantizer.top(F.pixel_unshuffle(z, 2)).quantized, 2)
    if shared_codebook:
        bottom_map = quantizer.bottom_out(
            quantizer.top(quantizer.bottom_in(z - top_map)).quantized)
    else:
        bottom_map = quantizer.bottom(z - top_map).quantized
    assert out.quantized.shape == (2, 2 * C, 4, 6)
    torch.testing.assert_close(out.quantized,
                               torch.cat([top_map, bottom_map], 1))
    assert torch.equal(out.quantized, quantizer.decode(out.indices))
    assert torch.equal(quantizer.decode(quantizer.encode(z)),
                       out.quantized)
    # the same levels as the summed variant, only combined differently
    reference = summed(z)
    assert torch.equal(out.indices[0], reference.indices[0])
    assert torch.equal(out.indices[1], reference.indices[1])
    torch.testing.assert_close(out.quantized[:, :C] + out.quantized[:, C:],
                               reference.quantized)


def test_concat_gradients_reach_both_levels():
    quantizer = make(shared_codebook=True, combine='concat')
    z = latent((2, C, 4, 4)).requires_grad_()
    quantizer(z).quantized.pow(2).sum().backward()
    for projection in (quantizer.bottom_in, quantizer.bottom_out):
        assert projection.weight.grad.abs().sum() > 0
    assert z.grad.abs().sum() > 0  # through the top half
    with pytest.raises(ValueError, match='combine'):
        HierarchicalQuantizer(TOP, BOTTOM, combine='add')


def tiny_tokenizer(combine, resolution=16, levels=2, seed=0):
    backbone = dict(ch=8, ch_mult=(1, ) * levels, num_res_blocks=1,
                    attn_resolutions=(), resolution=resolution,
                    z_channels=8, num_groups=4)
    torch.manual_seed(seed)
    model = MODELS.build(dict(
        type='AutoencoderTokenizer',
        encoder=dict(type='ConvEncoder', in_channels=3, **backbone),
        decoder=dict(type='ConvDecoder', out_ch=3, **backbone),
        quantizer=dict(type='HierarchicalQuantizer', combine=combine,
                       shared_codebook=True, token_order='interleaved',
                       top_quantizer=dict(TOP)),
        reconstruction_loss=dict(type='MSELoss')))
    spread_codebooks(model)
    return model.eval()


def test_concat_tokenizer_decode_of_encode_is_the_reconstruction():
    """post_quant_conv takes the quantizer's out_channels (2C: one C·z more
    weights than the summed variant), and decode(encode(x)) equals the
    forward's reconstruction bit for bit."""
    model = tiny_tokenizer('concat')
    summed = tiny_tokenizer('sum')
    assert model.post_quant_conv.in_channels == 2 * C
    assert summed.post_quant_conv.in_channels == C
    count = [sum(p.numel() for p in m.parameters()) for m in (model, summed)]
    assert count[0] - count[1] == C * 8  # z_channels = 8
    images = latent((2, 3, 16, 16)).clamp(-1, 1)
    with torch.no_grad():
        out = model.reconstruct(images)
        tokens = model.encode(images)
        decoded = model.decode(tokens)
    assert out.quantizer.quantized.shape == (2, 2 * C, 8, 8)
    assert torch.equal(decoded, out.reconstruction)
    sequence = flat_tokens(model.quantizer, tokens)
    assert sequence.shape == (2, 16 + 64)
    with torch.no_grad():
        again = model.decode(model.quantizer.from_sequence(sequence))
    assert torch.equal(again, out.reconstruction)


def test_ids_per_image_unicode_hq_320_and_rq_256():
    """At 256 px: HQ-VAE on the 16×16 grid of an f16 encoder -> 8×8 top +
    16×16 bottom = 320 ids; RQ-VAE on the 8×8 grid of an f32 encoder (one
    more level), depth 4 with a shared codebook -> 256 ids (small widths,
    the paper's geometry)."""
    hq = tiny_tokenizer('concat', resolution=256, levels=5)
    rq_cfg = copy.deepcopy(dict(
        type='AutoencoderTokenizer',
        encoder=dict(type='ConvEncoder', in_channels=3, ch=4,
                     ch_mult=(1, ) * 6, num_res_blocks=1,
                     attn_resolutions=(), resolution=256, z_channels=8,
                     num_groups=2),
        quantizer=dict(type='ResidualQuantizer', depth=4,
                       shared_codebook=True, depth_loss_reduction='mean',
                       quantizer=dict(type='VectorQuantizer',
                                      codebook_size=16, embed_dim=8))))
    rq_cfg['decoder'] = dict(rq_cfg['encoder'], type='ConvDecoder', out_ch=3)
    del rq_cfg['decoder']['in_channels']
    rq = MODELS.build(rq_cfg).eval()
    images = latent((1, 3, 256, 256)).clamp(-1, 1)
    with torch.no_grad():
        hq_tokens, rq_tokens = hq.encode(images), rq.encode(images)
    assert [t.shape for t in hq_tokens] == [(1, 8, 8), (1, 16, 16)]
    assert flat_tokens(hq.quantizer, hq_tokens).shape == (1, 320)
    assert rq_tokens.shape == (1, 8, 8, 4)
    assert flat_tokens(rq.quantizer, rq_tokens).shape == (1, 256)
