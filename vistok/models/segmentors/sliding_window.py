"""Sliding-window inference over whole volumes with Gaussian blending
(nnU-Net, Isensee et al. 2021; MONAI ``sliding_window_inference``), as used
by the official TokenUnify evaluation (window = training crop, overlap 0.25,
Gaussian weighting)."""
import itertools
import math
from typing import Callable, List, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

WEIGHTINGS = ('gaussian', 'constant')
PAD_MODES = ('constant', 'reflect', 'replicate')

Overlap = Union[float, int, Sequence[Union[float, int]]]


def gaussian_importance_map(window: Sequence[int],
                            sigma_scale: float = 0.125,
                            min_weight: float = 1e-3,
                            device=None) -> torch.Tensor:
    """Separable Gaussian weights ``(*window)`` of a window, peak 1.

    ``w(x) = max(Π_i exp(-(x_i - c_i)² / (2 σ_i²)), min_weight)`` with the
    window centre ``c_i = (n_i - 1) / 2`` (symmetric, so a flipped window
    has the same map) and ``σ_i = sigma_scale · n_i`` (nnU-Net / MONAI use
    ``sigma_scale = 1/8``). The floor ``min_weight`` keeps corner voxels of
    a window from having a (numerically) zero weight, like MONAI's clamp.
    """
    axes = []
    for size in window:
        coords = torch.arange(size, dtype=torch.float64, device=device)
        sigma = sigma_scale * size
        axes.append(torch.exp(-(coords - (size - 1) / 2)**2 /
                              (2 * sigma**2)))
    weights = axes[0]
    for axis in axes[1:]:
        weights = weights[..., None] * axis
    weights = weights / weights.max()
    return weights.clamp(min=min_weight).float()


def window_starts(size: int, window: int, step: int) -> List[int]:
    """Start offsets along one axis of length ``size >= window``: every
    ``step`` voxels, plus a last window shifted back to end at ``size``."""
    starts = list(range(0, size - window + 1, step))
    if starts[-1] != size - window:
        starts.append(size - window)
    return starts


def _steps(window: Tuple[int, ...], overlap: Overlap) -> List[int]:
    """Step between windows per axis. Float overlaps are fractions of the
    window in ``[0, 1)`` (step ``int(n · (1 - overlap))``, MONAI's rule);
    integer overlaps are voxels in ``[0, n)``."""
    if isinstance(overlap, (int, float)):
        overlap = [overlap] * len(window)
    if len(overlap) != len(window):
        raise ValueError(f'overlap {tuple(overlap)} needs one value per '
                         f'window axis {window}')
    steps = []
    for n, value in zip(window, overlap):
        if isinstance(value, float):
            if not 0 <= value < 1:
                raise ValueError(f'a fractional overlap must be in [0, 1), '
                                 f'got {value}')
            steps.append(max(int(n * (1 - value)), 1))
        else:
            if not 0 <= value < n:
                raise ValueError(f'an overlap in voxels must be in [0, {n}) '
                                 f'for a window of {n}, got {value}')
            steps.append(n - value)
    return steps


def _pad_to_window(volume: torch.Tensor, window: Tuple[int, ...],
                   pad_mode: str, pad_value: float
                   ) -> Tuple[torch.Tensor, List[slice]]:
    """Pad the spatial axes of ``(B, C, *spatial)`` that are shorter than
    the window, half before and half after; returns the padded volume and
    the slices that crop the original extent back out."""
    spatial = volume.shape[2:]
    pad, crop = [], []
    for size, n in zip(spatial, window):
        total = max(n - size, 0)
        before = total // 2
        pad.append((before, total - before))
        crop.append(slice(before, before + size))
    if any(sum(p) for p in pad):
        flat = [v for p in reversed(pad) for v in p]
        if pad_mode == 'constant':
            volume = F.pad(volume, flat, mode='constant', value=pad_value)
        else:
            volume = F.pad(volume, flat, mode=pad_mode)
    return volume, crop


@torch.no_grad()
def sliding_window_inference(
        volume: torch.Tensor,
        predictor: Callable[[torch.Tensor], torch.Tensor],
        window: Sequence[int],
        overlap: Overlap = 0.25,
        batch_size: int = 1,
        weighting: str = 'gaussian',
        sigma_scale: float = 0.125,
        min_weight: float = 1e-3,
        pad_mode: str = 'constant',
        pad_value: float = 0.0) -> torch.Tensor:
    """Predict a whole volume window by window and blend the windows.

    The windows tile the volume with the given ``overlap``; the last window
    along each axis is shifted back to end at the border, so every voxel is
    covered and no window leaves the volume. An axis shorter than the
    window is padded (``pad_mode``: zeros by default, like MONAI; half the
    padding before, half after) and the output is cropped back. Window
    predictions are multiplied by an importance map (``'gaussian'``:
    :func:`gaussian_importance_map`; ``'constant'``: ones), summed, and
    divided by the summed map, so the output is a weighted mean of the
    overlapping predictions.

    Args:
        volume: ``(C_in, D, H, W)`` or ``(B, C_in, D, H, W)`` (any number
            of spatial axes, matching ``window``).
        predictor: maps a batch of windows ``(n, C_in, *window)`` to
            ``(n, C, *window)`` (e.g. the sigmoid of a network).
        window: window size per spatial axis.
        overlap: fraction of the window in ``[0, 1)`` (float) or voxels
            (int), one value or one per axis.
        batch_size: windows per ``predictor`` call.
        weighting: ``'gaussian'`` or ``'constant'``.
        sigma_scale: Gaussian ``σ`` as a fraction of the window size.
        min_weight: floor of the Gaussian map.
        pad_mode: ``'constant'``, ``'reflect'`` or ``'replicate'``.
        pad_value: value of ``'constant'`` padding.

    Returns:
        float32 ``(C, D, H, W)`` (``(B, C, D, H, W)`` for a batched input)
        on the device of ``volume``.
    """
    window = tuple(int(n) for n in window)
    batched = volume.ndim == len(window) + 2
    if not batched and volume.ndim != len(window) + 1:
        raise ValueError(
            f'volume must be (C, *spatial) or (B, C, *spatial) with '
            f'{len(window)} spatial axes like window={window}, got shape '
            f'{tuple(volume.shape)}')
    if weighting not in WEIGHTINGS:
        raise ValueError(f'weighting must be one of {WEIGHTINGS}, got '
                         f'{weighting!r}')
    if pad_mode not in PAD_MODES:
        raise ValueError(f'pad_mode must be one of {PAD_MODES}, got '
                         f'{pad_mode!r}')
    if batch_size < 1:
        raise ValueError(f'batch_size must be >= 1, got {batch_size}')
    if not batched:
        volume = volume[None]
    steps = _steps(window, overlap)
    padded, crop = _pad_to_window(volume, window, pad_mode, pad_value)
    spatial = padded.shape[2:]
    if weighting == 'gaussian':
        importance = gaussian_importance_map(window, sigma_scale, min_weight,
                                             device=volume.device)
    else:
        importance = torch.ones(window, device=volume.device)

    corners = list(itertools.product(*[
        window_starts(size, n, step)
        for size, n, step in zip(spatial, window, steps)
    ]))
    outputs = []
    for b in range(padded.shape[0]):
        output = weight_sum = None
        for first in range(0, len(corners), batch_size):
            chunk = corners[first:first + batch_size]
            regions = [
                tuple(slice(c, c + n) for c, n in zip(corner, window))
                for corner in chunk
            ]
            windows = torch.stack(
                [padded[(b, slice(None)) + region] for region in regions])
            predictions = predictor(windows)
            expected = (len(chunk), ) + window
            if (predictions.ndim != len(window) + 2
                    or (predictions.shape[0], ) + tuple(
                        predictions.shape[2:]) != expected):
                raise ValueError(
                    f'predictor must map windows {tuple(windows.shape)} to '
                    f'(n, C, *window) = ({len(chunk)}, C, '
                    f'{", ".join(map(str, window))}), got '
                    f'{tuple(predictions.shape)}')
            if output is None:
                output = torch.zeros((predictions.shape[1], ) + spatial,
                                     device=volume.device)
                weight_sum = torch.zeros(spatial, device=volume.device)
            predictions = predictions.float().to(volume.device)
            for region, prediction in zip(regions, predictions):
                output[(slice(None), ) + region] += prediction * importance
                weight_sum[region] += importance
        outputs.append((output / weight_sum)[(slice(None), ) + tuple(crop)])
    result = torch.stack(outputs)
    return result if batched else result[0]


def num_windows(spatial: Sequence[int], window: Sequence[int],
                overlap: Overlap = 0.25) -> int:
    """Number of windows :func:`sliding_window_inference` runs on a volume
    of ``spatial`` size (after padding short axes to the window)."""
    window = tuple(int(n) for n in window)
    steps = _steps(window, overlap)
    return math.prod(
        len(window_starts(max(size, n), n, step))
        for size, n, step in zip(spatial, window, steps))
