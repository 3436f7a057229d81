"""TokenUnify voxel tokens: raster order, exact round trips, mask counts,
prefix masks and fills (projects/TokenUnify/tokenunify/tokens.py)."""
import itertools

import pytest
import torch

from projects.TokenUnify.tokenunify.tokens import (
    draw_prefix_lengths,
    fill_hidden,
    gather_tokens,
    masked_token_count,
    patchify,
    prefix_token_mask,
    random_token_mask,
    token_block,
    token_coords,
    token_grid,
    token_index,
    tokens_to_voxels,
    unpatchify,
)

TOKEN = (4, 16, 16)
SHAPE = (8, 32, 48)  # grid (2, 2, 3): 12 tokens


def index_volume(shape=SHAPE, token_size=TOKEN):
    """A volume ``(1, 1, D, H, W)`` whose voxels hold the raster index of
    their token, computed voxel by voxel (z slowest, then y, then x)."""
    grid = [s // t for s, t in zip(shape, token_size)]
    volume = torch.empty(1, 1, *shape)
    for z, y, x in itertools.product(*map(range, shape)):
        iz, iy, ix = z // token_size[0], y // token_size[1], x // token_size[2]
        volume[0, 0, z, y, x] = (iz * grid[1] + iy) * grid[2] + ix
    return volume


def test_paper_crop_has_400_tokens_and_sizes_must_divide():
    assert token_grid((16, 160, 160), TOKEN) == (4, 10, 10)
    with pytest.raises(ValueError, match='token_size'):
        token_grid((16, 160, 150), TOKEN)
    with pytest.raises(ValueError, match='token_size'):
        token_grid((16, 160, 160), (4, 16))


def test_raster_order_z_slowest_and_blocks():
    grid = token_grid(SHAPE, TOKEN)
    assert token_coords(1, grid) == (0, 0, 1)  # x fastest
    assert token_coords(3, grid) == (0, 1, 0)
    assert token_coords(6, grid) == (1, 0, 0)  # z slowest
    for n in range(12):
        assert token_index(token_coords(n, grid), grid) == n
    assert token_block(11, grid, TOKEN) == (slice(4, 8), slice(16, 32),
                                            slice(32, 48))
    with pytest.raises(IndexError):
        token_coords(12, grid)


def test_patchify_round_trip_and_token_n_is_its_block():
    volume = torch.randn(2, 3, *SHAPE)
    tokens = patchify(volume, TOKEN)
    assert tokens.shape == (2, 12, 3, *TOKEN)
    assert torch.equal(unpatchify(tokens, token_grid(SHAPE, TOKEN)), volume)
    for n in range(12):
        block = token_block(n, token_grid(SHAPE, TOKEN), TOKEN)
        assert torch.equal(tokens[:, n], volume[(Ellipsis, ) + block])
    indexed = patchify(index_volume(), TOKEN)
    assert torch.equal(indexed, torch.arange(12.).view(1, 12, 1, 1, 1, 1)
                       .expand_as(indexed))


def test_next_token_target_is_exactly_token_n_in_raster_order():
    volume = index_volume().expand(5, 1, *SHAPE)
    lengths = torch.tensor([1, 4, 6, 7, 11])
    targets = gather_tokens(volume, lengths, TOKEN)
    assert targets.shape == (5, 1, *TOKEN)
    for b, n in enumerate(lengths.tolist()):
        assert torch.all(targets[b] == n)
    # the input shows tokens < n and hides the rest
    hidden = tokens_to_voxels(prefix_token_mask(lengths, 12),
                              token_grid(SHAPE, TOKEN), TOKEN)
    shown = fill_hidden(volume + 1, hidden, 'zero') - 1
    for b, n in enumerate(lengths.tolist()):
        assert torch.equal(shown[b] >= 0, volume[b] < n)


def test_tokens_to_voxels_matches_per_token_blocks():
    grid = token_grid(SHAPE, TOKEN)
    mask = torch.rand(3, 12) < 0.5
    voxels = tokens_to_voxels(mask, grid, TOKEN)
    assert voxels.shape == (3, 1, *SHAPE) and voxels.dtype == torch.bool
    for b, n in itertools.product(range(3), range(12)):
        block = voxels[(b, 0) + token_block(n, grid, TOKEN)]
        assert torch.all(block == mask[b, n])
    assert int(voxels.sum()) == int(mask.sum()) * 4 * 16 * 16


def test_masked_count_rounds_half_up():
    assert masked_token_count(0.4, 400) == 160
    assert masked_token_count(0.5, 5) == 3
    assert masked_token_count(0.25, 10) == 3  # 2.5 -> 3
    assert masked_token_count(0.24, 10) == 2
    assert (masked_token_count(0.0, 9), masked_token_count(1.0, 9)) == (0, 9)
    with pytest.raises(ValueError, match='mask_ratio'):
        masked_token_count(1.2, 9)


@pytest.mark.parametrize('ratio,count', [(0.4, 160), (0.75, 300), (0.0, 0),
                                         (1.0, 400), (0.00125, 1)])
def test_fixed_ratio_masks_exactly_round_ratio_n_tokens(ratio, count):
    mask = random_token_mask(16, 400, mask_ratio=ratio)
    assert mask.shape == (16, 400) and mask.dtype == torch.bool
    assert mask.sum(1).tolist() == [count] * 16


def test_ratio_range_draws_per_sample_and_counts_are_exact():
    seed, batch, n = 3, 64, 400
    mask = random_token_mask(batch, n, mask_ratio_range=(0.2, 0.8),
                             generator=torch.Generator().manual_seed(seed))
    ratios = 0.2 + 0.6 * torch.rand(
        batch, generator=torch.Generator().manual_seed(seed),
        dtype=torch.float64)
    expected = [masked_token_count(r, n) for r in ratios.tolist()]
    assert mask.sum(1).tolist() == expected
    assert 80 <= min(expected) < max(expected) <= 320
    again = random_token_mask(batch, n, mask_ratio_range=(0.2, 0.8),
                              generator=torch.Generator().manual_seed(seed))
    assert torch.equal(mask, again)
    with pytest.raises(ValueError, match='exactly one'):
        random_token_mask(2, n, mask_ratio=0.4, mask_ratio_range=(0.2, 0.8))
    with pytest.raises(ValueError, match='exactly one'):
        random_token_mask(2, n)
    with pytest.raises(ValueError, match='mask_ratio_range'):
        random_token_mask(2, n, mask_ratio_range=(0.8, 0.2))


def test_masked_tokens_are_uniform_without_replacement():
    mask = random_token_mask(4000, 10, mask_ratio=0.3,
                             generator=torch.Generator().manual_seed(0))
    frequency = mask.double().mean(0)
    assert torch.allclose(frequency, torch.full((10, ), 0.3,
                                                dtype=torch.float64),
                          atol=0.03)


def test_prefix_lengths_cover_the_official_range_and_mask_hides_the_rest():
    lengths = draw_prefix_lengths(3000, 12,
                                  generator=torch.Generator().manual_seed(0))
    assert set(lengths.tolist()) == set(range(1, 12))  # {1, ..., N - 1}
    lengths = draw_prefix_lengths(500, 12, min_length=0, max_length=2)
    assert set(lengths.tolist()) == {0, 1, 2}
    with pytest.raises(ValueError, match='max_length'):
        draw_prefix_lengths(2, 12, max_length=12)
    mask = prefix_token_mask(torch.tensor([0, 5, 11]), 12)
    assert mask.sum(1).tolist() == [12, 7, 1]
    assert mask[1].tolist() == [False] * 5 + [True] * 7


def test_fill_modes():
    volume = torch.rand(2, 1, *SHAPE)
    mask = tokens_to_voxels(torch.rand(2, 12) < 0.5,
                            token_grid(SHAPE, TOKEN), TOKEN)
    zero = fill_hidden(volume, mask, 'zero')
    assert torch.equal(zero[mask], torch.zeros(int(mask.sum())))
    assert torch.equal(zero[~mask], volume[~mask])

    noise = fill_hidden(volume, mask, 'noise',
                        torch.Generator().manual_seed(1), noise_mean=0.5,
                        noise_std=2.0)
    expected = 0.5 + 2.0 * torch.randn(
        volume.shape, generator=torch.Generator().manual_seed(1))
    assert torch.equal(noise[mask], expected[mask])
    assert torch.equal(noise[~mask], volume[~mask])

    learned = torch.randn(1, *TOKEN, requires_grad=True)
    filled = fill_hidden(volume, mask, 'learned', learned=learned)
    tiled = patchify(filled, TOKEN)
    hidden_tokens = patchify(mask.float(), TOKEN)[:, :, 0, 0, 0, 0] > 0
    assert torch.equal(tiled[hidden_tokens],
                       learned.detach()[None].expand_as(
                           tiled[hidden_tokens]))
    filled.sum().backward()
    assert learned.grad.sum() == int(mask.sum())
    with pytest.raises(ValueError, match='fill mode'):
        fill_hidden(volume, mask, 'mean')
