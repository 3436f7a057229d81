import pytest
import torch

# importing the family modules registers them in QUANTIZERS
from _helpers import train_quantizer
from vistok.models.quantizers.base import BaseQuantizer
from vistok.models.quantizers.fsq import FiniteScalarQuantizer  # noqa: F401
from vistok.models.quantizers.lfq import LookupFreeQuantizer  # noqa: F401
from vistok.models.quantizers.multiscale import MultiScaleResidualQuantizer
from vistok.models.quantizers.product import ProductQuantizer
from vistok.models.quantizers.vq import VectorQuantizer
from vistok.registry import QUANTIZERS
from vistok.structures import QuantizerOutput

VQ = dict(type='VectorQuantizer', codebook_size=16, embed_dim=4)
LFQ = dict(type='LookupFreeQuantizer', codebook_bits=3)
FSQ = dict(type='FiniteScalarQuantizer', levels=[5, 3])
SHAPES = [(2, 4, 4, 5), (2, 4, 2, 3, 4), (3, 4, 7)]


def spread_codebooks(module, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for sub in module.modules():
            if isinstance(sub, VectorQuantizer):
                sub.codebook.copy_(
                    torch.randn(sub.codebook.shape, generator=generator))
    return module


def make(quantizer=VQ, num_branches=2, **kwargs):
    torch.manual_seed(0)
    return spread_codebooks(
        ProductQuantizer(quantizer, num_branches, **kwargs)).eval()


def latent(shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def with_channels(shape, channels):
    return (shape[0], channels, *shape[2:])


def test_build_from_registry():
    quantizer = QUANTIZERS.build(
        dict(type='ProductQuantizer', quantizer=VQ, num_branches=3))
    assert isinstance(quantizer, ProductQuantizer)
    assert quantizer.in_channels == 12
    assert quantizer.branch_channels == [4, 4, 4]
    assert quantizer.codebook_size == 48
    assert len({id(b.codebook) for b in quantizer.branches}) == 3


@pytest.mark.parametrize('base', [VQ, LFQ, FSQ])
@pytest.mark.parametrize('shape', SHAPES)
def test_one_branch_equals_base(base, shape):
    torch.manual_seed(0)
    sub = spread_codebooks(QUANTIZERS.build(base)).eval()
    quantizer = ProductQuantizer(sub, 1).eval()
    z = latent(with_channels(shape, sub.in_channels))
    expected = sub(z)
    out = quantizer(z)
    assert torch.equal(out.indices[..., 0], expected.indices)
    assert torch.equal(out.quantized, expected.quantized)
    assert out.loss.keys() == expected.loss.keys()
    for name in expected.loss:
        assert torch.equal(out.loss[name], expected.loss[name])
    assert torch.equal(out.stats['branch0.code_counts'],
                       expected.stats['code_counts'])


@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('quantizer, num_branches', [
    (VQ, 2),
    (VQ, 3),
    ([VQ, dict(VQ, codebook_size=8, embed_dim=2), LFQ, FSQ], None),
])
def test_branches_quantize_their_groups_and_round_trip(
        shape, quantizer, num_branches):
    pq = make(quantizer, num_branches)
    z = latent(with_channels(shape, pq.in_channels)).requires_grad_()
    out = pq(z)
    assert out.indices.shape == (shape[0], *shape[2:], pq.num_branches)
    assert out.quantized.shape == z.shape
    for branch, part, ids in zip(pq.branches,
                                 z.split(pq.branch_channels, 1),
                                 out.indices.unbind(-1)):
        assert torch.equal(ids, branch.encode(part))
    assert torch.equal(out.quantized, pq.decode(out.indices))
    assert torch.equal(pq.encode(z), out.indices)
    assert torch.equal(pq.decode(pq.encode(z)), out.quantized.detach())


def test_straight_through_gradient_is_identity():
    pq = make()
    z = latent(with_channels(SHAPES[0], 8)).requires_grad_()
    pq(z).quantized.sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z))


def test_losses_summed_and_stats_per_branch():
    pq = make()
    z = latent(with_channels(SHAPES[0], 8))
    out = pq(z)
    branch_outs = [b(part) for b, part in zip(pq.branches, z.split(4, 1))]
    for name in ('loss_commitment', 'loss_codebook'):
        torch.testing.assert_close(
            out.loss[name], sum(o.loss[name] for o in branch_outs))
    for p, branch_out in enumerate(branch_outs):
        assert torch.equal(out.stats[f'branch{p}.code_counts'],
                           branch_out.stats['code_counts'])
    torch.testing.assert_close(
        out.stats['perplexity'],
        (out.stats['branch0.perplexity'] + out.stats['branch1.perplexity']) /
        2)


def test_offsets_round_trip():
    pq = make([VQ, dict(VQ, codebook_size=8), LFQ], None)
    assert pq.branch_codebook_sizes == [16, 8, 8]
    assert pq.codebook_size == 32
    z = latent(with_channels(SHAPES[0], pq.in_channels))
    indices = pq.encode(z)
    joint = pq.offset_indices(indices)
    assert torch.equal(joint[..., 0], indices[..., 0])
    assert torch.equal(joint[..., 1], indices[..., 1] + 16)
    assert torch.equal(joint[..., 2], indices[..., 2] + 24)
    assert joint.min() >= 0 and joint.max() < pq.codebook_size
    assert torch.equal(pq.remove_offsets(joint), indices)
    # dropped (negative) ids pass through unchanged
    dropped = indices.clone()
    dropped[0, 0, 0, 1] = -1
    assert pq.offset_indices(dropped)[0, 0, 0, 1] == -1
    assert torch.equal(pq.remove_offsets(pq.offset_indices(dropped)),
                       dropped)
    # lists of maps (multi-scale branches)
    as_list = [indices, indices[:, :2]]
    assert all(
        torch.equal(a, b)
        for a, b in zip(pq.remove_offsets(pq.offset_indices(as_list)),
                        as_list))
    wrong = joint.clone()
    wrong[0, 0, 0, 0] = 20  # a branch-1 id in branch 0's slot
    with pytest.raises(ValueError, match='branch range'):
        pq.remove_offsets(wrong)


class FakeScaleQuantizer(BaseQuantizer):
    """Identity 'quantizer' implementing the shared-dropout interface and
    recording what it receives."""

    def __init__(self, in_channels=2, num_scales=5):
        super().__init__(in_channels)
        self.num_scales = num_scales
        self.draws = 0
        self.received = []

    @property
    def codebook_size(self):
        return 3

    def sample_num_scales(self, batch_size, device):
        self.draws += 1
        return torch.randint(1, self.num_scales + 1, (batch_size, ),
                             device=device)

    def forward(self, z, mask=None, num_scales=None):
        self.received.append(num_scales)
        return QuantizerOutput(
            quantized=z, indices=torch.zeros_like(z[:, 0], dtype=torch.long))

    def encode(self, z):
        return torch.zeros_like(z[:, 0], dtype=torch.long)

    def decode(self, indices):
        return torch.zeros(indices.shape[0], self.in_channels,
                           *indices.shape[1:])


def test_shared_dropout_draw_passed_to_every_branch():
    pq = ProductQuantizer([FakeScaleQuantizer(), FakeScaleQuantizer()])
    z = torch.randn(6, 4, 3, 3)
    out = pq.train()(z)
    first, second = pq.branches
    assert first.draws == 1 and second.draws == 0
    draw = out.stats['num_scales']
    assert draw.shape == (6, )
    assert first.received[-1] is draw and second.received[-1] is draw
    # eval: no draw, each branch decides (None)
    out = pq.eval()(z)
    assert 'num_scales' not in out.stats
    assert first.received[-1] is None and second.received[-1] is None
    # share_dropout off: each branch draws on its own
    independent = ProductQuantizer(
        FakeScaleQuantizer(), num_branches=2, share_dropout=False).train()
    out = independent(z)
    assert 'num_scales' not in out.stats
    assert all(b.received[-1] is None for b in independent.branches)


def test_multiscale_branches_share_one_draw():
    torch.manual_seed(0)
    branch = dict(type='MultiScaleResidualQuantizer', scales=[1, 2, 4],
                  quantizer=dict(VQ, codebook_size=8), dropout_ratio=1.0)
    pq = ProductQuantizer(branch, 2).train()
    assert all(isinstance(b, MultiScaleResidualQuantizer)
               for b in pq.branches)
    z = latent((8, 8, 4, 4))
    out = pq(z)
    draw = out.stats['num_scales']
    assert draw.shape == (8, ) and draw.max() <= 3
    assert [tuple(ids.shape) for ids in out.indices] == [(8, 1, 1, 2),
                                                         (8, 2, 2, 2),
                                                         (8, 4, 4, 2)]
    assert torch.equal(out.quantized,
                       pq.decode(out.indices, num_scales=draw))
    pq.eval()
    out = pq(z)
    assert torch.equal(out.quantized, pq.decode(out.indices))
    encoded = pq.encode(z)
    assert all(torch.equal(a, b) for a, b in zip(encoded, out.indices))


@pytest.mark.parametrize('quantizer', [VQ, [VQ, LFQ]])
def test_bf16_autocast_keeps_indices(quantizer):
    pq = make(quantizer, None if isinstance(quantizer, list) else 2)
    z = latent(with_channels((2, 0, 8, 8), pq.in_channels))
    expected = pq(z).indices
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = pq(z)
        encoded = pq.encode(z)
    assert torch.equal(out.indices, expected)
    assert torch.equal(encoded, expected)


def test_mask_is_passed_to_every_branch():
    pq = make()
    z = latent((2, 8, 3, 4))
    mask = torch.rand(2, 3, 4, generator=torch.Generator().manual_seed(0)) > .4
    out = pq(z, mask=mask)
    for p, (branch, part) in enumerate(zip(pq.branches, z.split(4, 1))):
        expected = branch(part, mask=mask)
        assert out.stats[f'branch{p}.code_counts'].sum() == mask.sum()
        assert torch.equal(out.stats[f'branch{p}.code_counts'],
                           expected.stats['code_counts'])
    torch.testing.assert_close(
        out.loss['loss_commitment'],
        sum(b(part, mask=mask).loss['loss_commitment']
            for b, part in zip(pq.branches, z.split(4, 1))))
    assert torch.equal(out.quantized, pq.decode(out.indices))


def test_bad_channel_split():
    with pytest.raises(ValueError, match='in_channels=10.*\\[4, 4\\]'):
        ProductQuantizer(VQ, 2, in_channels=10)
    with pytest.raises(ValueError, match='num_branches'):
        ProductQuantizer(VQ)
    with pytest.raises(ValueError, match='num_branches=3'):
        ProductQuantizer([VQ, VQ], 3)
    pq = make()
    with pytest.raises(ValueError, match=r'\(2, 6, 4, 4\)'):
        pq(torch.randn(2, 6, 4, 4))
    with pytest.raises(ValueError, match=r'\(2, 6, 4, 4\)'):
        pq.encode(torch.randn(2, 6, 4, 4))
    with pytest.raises(ValueError, match='branch axis of length 2'):
        pq.decode(torch.zeros(2, 4, 4, 3, dtype=torch.long))


def test_toy_learning():
    """Two VQ branches with codebooks initialised from the data learn a
    Gaussian from the codebook loss: error falls, usage stays high."""
    torch.manual_seed(0)
    pq = ProductQuantizer(dict(VQ, codebook_size=8, embed_dim=2), 2).train()
    data = latent((1, 4, 512), seed=2)
    with torch.no_grad():
        for branch, part in zip(pq.branches, data.split(2, 1)):
            branch.codebook.copy_(part[0, :, :8].t())
    initial, final, out = train_quantizer(pq, data)
    assert final < 0.7 * initial
    assert out.stats['usage'] > 0.8
