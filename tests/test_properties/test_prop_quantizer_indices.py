"""``decode`` of any index tensor (issue 17, item 4): ids inside every
sub-codebook decode to the codebook's vectors; any id outside its
sub-codebook's range, and any non-integer dtype, raises
``InvalidIndicesError`` naming the range and where it is (``depth 1``,
``branch 0``, ``scale 1``, ``top`` / ``bottom``) — never a silent wrap
(``codebook[-1]`` is the last code in torch indexing) or a clamp.

References, written from the papers' definitions rather than the code:
VQ decodes id ``k`` to codebook row ``k`` (one-hot times the codebook);
FSQ to the mixed-radix digits of ``k`` (channel 0 least significant),
level ``d`` giving ``(d - ⌊L/2⌋) / ⌊L/2⌋``; LFQ to the bits of ``k`` (most
significant first) as ``±1``; a residual quantizer sums its depths'
vectors (``-1``: a dropped depth, zero); a product quantizer concatenates
its branches; a hierarchical one adds the pixel-shuffled top vectors to
the bottom ones. The multi-scale quantizer (VAR Alg. 2) decodes its maps
and the flat sequence to the same latents.
"""
import pytest
import torch
import torch.nn.functional as F
from _properties import examples
from hypothesis import given
from hypothesis import strategies as st

from vistok.models.quantizers import (
    FiniteScalarQuantizer,
    HierarchicalQuantizer,
    LookupFreeQuantizer,
    MultiScaleResidualQuantizer,
    ProductQuantizer,
    ResidualQuantizer,
    VectorQuantizer,
)
from vistok.models.quantizers.base import InvalidIndicesError

torch.manual_seed(0)
FSQ_LEVELS = [3, 2]
LFQ_BITS = 3


def vq(size, dim):
    quantizer = VectorQuantizer(codebook_size=size, embed_dim=dim)
    with torch.no_grad():  # distinct rows, exactly representable
        quantizer.codebook.copy_(torch.arange(size * dim).reshape(
            size, dim).float() / 8 - 1)
    return quantizer.eval()


QUANTIZERS = dict(
    vq=vq(5, 3),
    fsq=FiniteScalarQuantizer(FSQ_LEVELS).eval(),
    lfq=LookupFreeQuantizer(LFQ_BITS).eval(),
    residual=ResidualQuantizer(vq(5, 3), depth=2).eval(),
    product=ProductQuantizer([vq(4, 2), FiniteScalarQuantizer(FSQ_LEVELS)
                              ]).eval(),
    multiscale=MultiScaleResidualQuantizer(
        scales=[1, 2], quantizer=dict(type='VectorQuantizer',
                                      codebook_size=5, embed_dim=3)).eval(),
    hierarchical=HierarchicalQuantizer(vq(4, 8), vq(3, 2)).eval(),
)
#: per quantizer: (level name, codebook size, lowest valid id) in decode
#: order; the level name is how the error locates it ('' at the top)
LEVELS = dict(
    vq=[('', 5, 0)], fsq=[('', 6, 0)], lfq=[('', 2**LFQ_BITS, 0)],
    residual=[('depth 0', 5, -1), ('depth 1', 5, -1)],
    product=[('branch 0', 4, 0), ('branch 1', 6, 0)],
    multiscale=[('scale 0', 5, 0), ('scale 1', 5, 0)],
    hierarchical=[('top', 4, 0), ('bottom', 3, 0)])
INTEGER_DTYPES = [torch.int64, torch.int32, torch.int16, torch.uint8]
OTHER_DTYPES = [torch.float32, torch.float64, torch.bool]


# --- references ------------------------------------------------------------
def rows(quantizer: VectorQuantizer, ids: torch.Tensor) -> torch.Tensor:
    """Codebook rows of ``ids`` ``(B, *spatial)`` as ``(B, D, *spatial)``
    (a one-hot product: exact)."""
    one_hot = F.one_hot(ids, quantizer.codebook.shape[0]).float()
    return (one_hot @ quantizer.codebook.detach()).movedim(-1, 1)


def fsq_codes(ids: torch.Tensor) -> torch.Tensor:
    channels, radix = [], 1
    for level in FSQ_LEVELS:
        digit = (ids // radix) % level
        channels.append((digit - level // 2).float() / (level // 2))
        radix *= level
    return torch.stack(channels, 1)


def lfq_codes(ids: torch.Tensor) -> torch.Tensor:
    bits = [(ids >> (LFQ_BITS - 1 - c)) & 1 for c in range(LFQ_BITS)]
    return torch.stack([b.float() * 2 - 1 for b in bits], 1)


def reference(kind: str, levels):
    q = QUANTIZERS[kind]
    if kind == 'vq':
        return rows(q, levels[0])
    if kind == 'fsq':
        return fsq_codes(levels[0])
    if kind == 'lfq':
        return lfq_codes(levels[0])
    if kind == 'residual':
        return sum(torch.where((ids >= 0).unsqueeze(1),
                               rows(q.quantizers[d], ids.clamp_min(0)), 0)
                   for d, ids in enumerate(levels))
    if kind == 'product':
        return torch.cat([rows(q.branches[0], levels[0]),
                          fsq_codes(levels[1])], 1)
    if kind == 'hierarchical':
        return (F.pixel_shuffle(rows(q.top, levels[0]), 2)
                + rows(q.bottom, levels[1]))
    return None  # multiscale: checked through its two layouts


def assemble(kind: str, levels):
    """The index structure ``decode`` takes, from per-level tensors."""
    if kind == 'residual':
        return torch.stack(levels, -1)
    if kind == 'product':
        return torch.stack(levels, -1)
    if kind == 'multiscale':
        return list(levels)
    if kind == 'hierarchical':
        return tuple(levels)
    return levels[0]


def level_shapes(kind: str, batch: int, side: int):
    if kind == 'multiscale':
        return [(batch, 1, 1), (batch, 2, 2)]
    if kind == 'hierarchical':
        return [(batch, side, side), (batch, 2 * side, 2 * side)]
    return [(batch, side, side)] * len(LEVELS[kind])


@st.composite
def index_cases(draw):
    """``(kind, per-level int64 tensors, dtype, the levels made invalid)``:
    every level valid, then some levels get one id out of their range."""
    kind = draw(st.sampled_from(sorted(QUANTIZERS)))
    shapes = level_shapes(kind, draw(st.integers(1, 2)),
                          draw(st.integers(1, 2)))
    levels, broken = [], []
    for (_, size, lowest), shape in zip(LEVELS[kind], shapes):
        count = int(torch.Size(shape).numel())
        values = draw(st.lists(st.integers(lowest, size - 1), min_size=count,
                               max_size=count))
        if draw(st.booleans()):  # one id out of range
            values[draw(st.integers(0, count - 1))] = draw(st.one_of(
                st.integers(lowest - 5, lowest - 1),
                st.integers(size, 2 * size + 3)))
            broken.append(True)
        else:
            broken.append(False)
        levels.append(torch.tensor(values).reshape(shape))
    dtype = draw(st.sampled_from(INTEGER_DTYPES + OTHER_DTYPES))
    if dtype == torch.uint8 and min(int(t.min()) for t in levels) < 0:
        dtype = torch.int64  # uint8 cannot hold the negative ids
    return kind, levels, dtype, broken


def expected_error(kind: str, levels, broken):
    """The message's ``(where, range)``: the first failing check in decode
    order (a residual quantizer first checks every id against -1)."""
    if kind == 'residual' and any(int(t.min()) < -1 for t in levels):
        return '', 'must be >= -1'
    for (name, size, _), bad in zip(LEVELS[kind], broken):
        if bad:
            lowest = 0  # a residual depth's own codebook starts at 0
            return name, f'must lie in [{lowest}, {size})'
    return None


@examples(300)
@given(case=index_cases())
def test_decode_never_wraps_an_out_of_range_id(case):
    kind, levels, dtype, broken = case
    quantizer = QUANTIZERS[kind]
    indices = assemble(kind, [t.to(dtype) for t in levels])
    if dtype in OTHER_DTYPES:
        with pytest.raises(InvalidIndicesError) as err:
            quantizer.decode(indices)
        assert f'must be an integer tensor of code ids, got dtype {dtype}' \
            in str(err.value)
        return
    error = expected_error(kind, levels, broken)
    if error is not None:
        where, valid = error
        with pytest.raises(InvalidIndicesError) as err:
            quantizer.decode(indices)
        prefix = f'indices of {where} ' if where else 'indices '
        assert str(err.value).startswith(prefix + valid), (str(err.value),
                                                           prefix + valid)
        return
    with torch.no_grad():
        decoded = quantizer.decode(indices)
        expected = reference(kind, levels)
        if kind == 'multiscale':
            expected = quantizer.decode(quantizer.to_sequence(levels))
    torch.testing.assert_close(decoded, expected, rtol=0, atol=0)


def test_containers_locate_a_nested_bad_id():
    """A residual quantizer over product branches: depth and branch."""
    quantizer = ResidualQuantizer(
        dict(type='ProductQuantizer', num_branches=2,
             quantizer=dict(type='VectorQuantizer', codebook_size=4,
                            embed_dim=2)), depth=2).eval()
    indices = torch.zeros(1, 2, 2, 2, 2, dtype=torch.long)
    indices[0, 1, 0, 1, 1] = 4  # depth 1, branch 1
    with pytest.raises(InvalidIndicesError, match=r'^indices of depth 1 > '
                       r'branch 1 must lie in \[0, 4\), got values in '
                       r'\[0, 4\]'):
        quantizer.decode(indices)
