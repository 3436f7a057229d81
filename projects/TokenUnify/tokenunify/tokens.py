"""Voxel tokens of EM volumes and the corrupted inputs of TokenUnify's three
pre-training tasks (Chen et al., "TokenUnify", arXiv 2405.16847).

A volume ``(B, C, D, H, W)`` is cut into non-overlapping tokens of
``token_size = (tz, ty, tx)`` voxels (the paper's 4×16×16). The token grid is
``(gz, gy, gx) = (D / tz, H / ty, W / tx)`` and tokens are numbered in
**raster order, z slowest, then y, then x**: token ``n`` covers the block

    z ∈ [iz·tz, (iz+1)·tz), y ∈ [iy·ty, (iy+1)·ty), x ∈ [ix·tx, (ix+1)·tx)

with ``n = (iz·gy + iy)·gx + ix`` (a 16×160×160 crop has 4×10×10 = 400
tokens). Token masks are ``(B, N)`` bool tensors, ``True`` = hidden from the
network (masked or not yet generated).

* Random token prediction (SimMIM-style, all tokens kept in place):
  :func:`random_token_mask` hides ``round_half_up(ρ·N)`` tokens per sample,
  ``ρ`` fixed or drawn per sample from a range.
* Next-token / next-all-token prediction: :func:`draw_prefix_lengths` draws a
  prefix length ``n`` per sample; :func:`prefix_token_mask` hides the tokens
  ``≥ n``; the next-token target is token ``n`` (:func:`gather_tokens`), the
  next-all target every token ``≥ n``.
* :func:`fill_hidden` overwrites the hidden voxels ('zero', 'noise' or a
  'learned' token-shaped block).

All random draws take an optional ``torch.Generator`` (a CPU generator gives
the same draws on every device); without one the global RNG is used.
"""
import math
from typing import Optional, Sequence, Tuple

import torch

#: fill modes of :func:`fill_hidden`
FILL_MODES = ('zero', 'noise', 'learned')

Size3 = Tuple[int, int, int]


def size3(values: Sequence[int], name: str) -> Size3:
    """``values`` as three positive ints ``(D, H, W)`` (error naming
    ``name`` otherwise)."""
    values = tuple(values)
    if len(values) != 3 or not all(
            isinstance(v, int) and v >= 1 for v in values):
        raise ValueError(f'{name} must be three positive ints (D, H, W), got '
                         f'{values!r}')
    return values


def token_grid(spatial_shape: Sequence[int], token_size: Sequence[int]
               ) -> Size3:
    """Token grid ``(gz, gy, gx)`` of a volume of ``spatial_shape``
    ``(D, H, W)``; every axis must divide by ``token_size`` ``(tz, ty, tx)``.
    """
    spatial = size3(spatial_shape, 'spatial_shape')
    size = size3(token_size, 'token_size')
    if any(s % t for s, t in zip(spatial, size)):
        raise ValueError(f'volume (D, H, W)={spatial} does not divide into '
                         f'tokens of token_size={size}: every axis must be a '
                         f'multiple of the token size')
    return tuple(s // t for s, t in zip(spatial, size))


def token_coords(index: int, grid: Sequence[int]) -> Size3:
    """Grid coordinates ``(iz, iy, ix)`` of token ``index`` (raster order,
    z slowest)."""
    gz, gy, gx = grid
    count = gz * gy * gx
    if not 0 <= index < count:
        raise IndexError(f'token index {index} outside a grid of {count} '
                         f'tokens {tuple(grid)}')
    return index // (gy * gx), (index // gx) % gy, index % gx


def token_index(coords: Sequence[int], grid: Sequence[int]) -> int:
    """Raster index of the token at grid coordinates ``(iz, iy, ix)``
    (inverse of :func:`token_coords`)."""
    (iz, iy, ix), (gz, gy, gx) = coords, grid
    if not (0 <= iz < gz and 0 <= iy < gy and 0 <= ix < gx):
        raise IndexError(f'token coordinates {tuple(coords)} outside the grid '
                         f'{tuple(grid)}')
    return (iz * gy + iy) * gx + ix


def token_block(index: int, grid: Sequence[int], token_size: Sequence[int]
                ) -> Tuple[slice, slice, slice]:
    """Voxel slices ``(z, y, x)`` of token ``index``: ``volume[..., z, y, x]``
    is the token."""
    return tuple(
        slice(c * t, (c + 1) * t)
        for c, t in zip(token_coords(index, grid), token_size))


def patchify(volume: torch.Tensor, token_size: Sequence[int]) -> torch.Tensor:
    """``(B, C, D, H, W)`` → tokens ``(B, N, C, tz, ty, tx)`` in raster
    order."""
    if volume.dim() != 5:
        raise ValueError(f'expected a volume (B, C, D, H, W), got shape '
                         f'{tuple(volume.shape)}')
    b, c = volume.shape[:2]
    gz, gy, gx = token_grid(volume.shape[2:], token_size)
    tz, ty, tx = token_size
    tokens = volume.reshape(b, c, gz, tz, gy, ty, gx, tx)
    return tokens.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(
        b, gz * gy * gx, c, tz, ty, tx)


def unpatchify(tokens: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`patchify`: tokens ``(B, N, C, tz, ty, tx)`` of a
    ``grid`` ``(gz, gy, gx)`` → volume ``(B, C, D, H, W)``."""
    b, n, c, tz, ty, tx = tokens.shape
    gz, gy, gx = grid
    if n != gz * gy * gx:
        raise ValueError(f'{n} tokens do not fill the grid {tuple(grid)}')
    volume = tokens.reshape(b, gz, gy, gx, c, tz, ty, tx)
    return volume.permute(0, 4, 1, 5, 2, 6, 3, 7).reshape(
        b, c, gz * tz, gy * ty, gx * tx)


def gather_tokens(volume: torch.Tensor, indices: torch.Tensor,
                  token_size: Sequence[int]) -> torch.Tensor:
    """Token ``indices[b]`` of sample ``b``: ``(B, C, D, H, W)``, ``(B,)`` →
    ``(B, C, tz, ty, tx)``."""
    tokens = patchify(volume, token_size)
    if indices.shape != (tokens.shape[0], ):
        raise ValueError(f'indices must have shape ({tokens.shape[0]},), one '
                         f'token per sample, got {tuple(indices.shape)}')
    rows = torch.arange(tokens.shape[0], device=tokens.device)
    return tokens[rows, indices.to(tokens.device)]


def tokens_to_voxels(token_mask: torch.Tensor, grid: Sequence[int],
                     token_size: Sequence[int]) -> torch.Tensor:
    """Token mask ``(B, N)`` → voxel mask ``(B, 1, D, H, W)`` (each token's
    value over its whole block)."""
    b = token_mask.shape[0]
    gz, gy, gx = grid
    tz, ty, tx = token_size
    count = gz * gy * gx
    if token_mask.shape != (b, count):
        raise ValueError(f'token_mask must be (B, {count}) for the grid '
                         f'{tuple(grid)}, got {tuple(token_mask.shape)}')
    blocks = token_mask.reshape(b, 1, gz, 1, gy, 1, gx, 1)
    return blocks.expand(b, 1, gz, tz, gy, ty, gx, tx).reshape(
        b, 1, gz * tz, gy * ty, gx * tx)


def masked_token_count(mask_ratio: float, num_tokens: int) -> int:
    """Number of tokens a ratio hides: ``floor(ρ·N + 0.5)`` (round half
    up), e.g. 160 of 400 tokens at ρ = 0.4."""
    if not 0.0 <= mask_ratio <= 1.0:
        raise ValueError(f'mask_ratio must lie in [0, 1], got {mask_ratio}')
    return int(math.floor(mask_ratio * num_tokens + 0.5))


def check_ratio_range(mask_ratio_range: Sequence[float]
                      ) -> Tuple[float, float]:
    """``(low, high)`` with ``0 <= low <= high <= 1``."""
    values = tuple(mask_ratio_range)
    if len(values) != 2 or not 0.0 <= values[0] <= values[1] <= 1.0:
        raise ValueError(f'mask_ratio_range must be (low, high) with '
                         f'0 <= low <= high <= 1, got {mask_ratio_range!r}')
    return values


def random_token_mask(batch_size: int,
                      num_tokens: int,
                      mask_ratio: Optional[float] = None,
                      mask_ratio_range: Optional[Sequence[float]] = None,
                      generator: Optional[torch.Generator] = None
                      ) -> torch.Tensor:
    """Random token masks ``(B, N)`` bool (``True`` = masked), tokens chosen
    uniformly without replacement.

    Exactly one of ``mask_ratio`` (the same ρ for every sample) and
    ``mask_ratio_range`` ``(low, high)`` (ρ ~ U(low, high) drawn per sample)
    is given; sample ``b`` hides exactly
    :func:`masked_token_count` ``(ρ_b, N)`` tokens. (The official code's
    magic value — ρ = 0.4 fixed only when ``--mask_ratio 0.4``, otherwise
    U(0.2, 0.8) — becomes these two explicit keys.) Returned on the
    generator's device (CPU by default).
    """
    if (mask_ratio is None) == (mask_ratio_range is None):
        raise ValueError('give exactly one of mask_ratio (fixed) and '
                         'mask_ratio_range (drawn per sample), got '
                         f'mask_ratio={mask_ratio!r}, '
                         f'mask_ratio_range={mask_ratio_range!r}')
    device = generator.device if generator is not None else None
    if mask_ratio is not None:
        counts = torch.full((batch_size, ),
                            masked_token_count(mask_ratio, num_tokens),
                            device=device)
    else:
        low, high = check_ratio_range(mask_ratio_range)
        ratios = low + (high - low) * torch.rand(
            batch_size, generator=generator, device=device,
            dtype=torch.float64)
        counts = torch.floor(ratios * num_tokens + 0.5).long()
    scores = torch.rand(batch_size, num_tokens, generator=generator,
                        device=device)
    ranks = scores.argsort(dim=1).argsort(dim=1)
    return ranks < counts[:, None]


def draw_prefix_lengths(batch_size: int,
                        num_tokens: int,
                        min_length: int = 1,
                        max_length: Optional[int] = None,
                        generator: Optional[torch.Generator] = None
                        ) -> torch.Tensor:
    """Prefix lengths ``n`` ``(B,)`` int64, uniform on
    ``{min_length, ..., max_length}`` (default ``N − 1``; the official
    code draws from {1, ..., 399} for 400 tokens). Tokens ``< n`` are shown,
    token ``n`` is the next token, so ``n ≤ N − 1``."""
    max_length = num_tokens - 1 if max_length is None else max_length
    if not 0 <= min_length <= max_length <= num_tokens - 1:
        raise ValueError(f'prefix lengths need 0 <= min_length <= max_length '
                         f'<= N - 1 = {num_tokens - 1}, got min_length='
                         f'{min_length}, max_length={max_length}')
    device = generator.device if generator is not None else None
    return torch.randint(min_length, max_length + 1, (batch_size, ),
                         generator=generator, device=device)


def prefix_token_mask(prefix_lengths: torch.Tensor, num_tokens: int
                      ) -> torch.Tensor:
    """``(B, N)`` bool, ``True`` for the tokens not in the prefix
    (index ``≥ n``): hidden in the input, the next-all targets."""
    positions = torch.arange(num_tokens, device=prefix_lengths.device)
    return positions[None, :] >= prefix_lengths[:, None]


def fill_hidden(volume: torch.Tensor,
                voxel_mask: torch.Tensor,
                mode: str,
                generator: Optional[torch.Generator] = None,
                learned: Optional[torch.Tensor] = None,
                noise_mean: float = 0.0,
                noise_std: float = 1.0) -> torch.Tensor:
    """Overwrite the voxels of ``volume`` ``(B, C, D, H, W)`` where
    ``voxel_mask`` ``(B, 1, D, H, W)`` is ``True``.

    Modes: ``'zero'`` (official ``fill_mode=0``); ``'noise'``: i.i.d.
    N(``noise_mean``, ``noise_std``²) (official ``fill_mode=1``, N(0, 1));
    ``'learned'``: a learned block ``learned`` ``(C, tz, ty, tx)`` (or
    ``(tz, ty, tx)``) tiled over the token grid, the voxel-space counterpart
    of SimMIM's learned mask token (gradients reach it).
    """
    if mode == 'zero':
        fill = torch.zeros((), dtype=volume.dtype, device=volume.device)
    elif mode == 'noise':
        device = generator.device if generator is not None else volume.device
        noise = torch.randn(volume.shape, generator=generator, device=device)
        fill = (noise_mean + noise_std * noise).to(volume)
    elif mode == 'learned':
        if learned is None:
            raise ValueError("fill mode 'learned' needs the learned block")
        block = learned if learned.dim() == 4 else learned[None]
        grid = token_grid(volume.shape[2:], block.shape[1:])
        fill = block.repeat(1, *grid)[None].to(volume.dtype)
    else:
        raise ValueError(f'fill mode must be one of {FILL_MODES}, got '
                         f'{mode!r}')
    return torch.where(voxel_mask, fill, volume)
