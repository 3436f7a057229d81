"""Sliding-window inference over whole volumes with Gaussian blending
(nnU-Net, Isensee et al. 2021), run by MONAI's ``sliding_window_inference``
(``monai.inferers``), the function the official TokenUnify evaluation calls
(``src/inference_monai.py``, ``src/engine_finetune*.py``:
``sliding_window_inference(volume, crop_size, batch, model, overlap=0.25,
mode="gaussian")``, MONAI's defaults for ``sigma_scale=0.125`` and zero
padding).

This module keeps vistok's calling convention on top of MONAI: an
unbatched ``(C, *spatial)`` volume is accepted, the arguments are checked
with errors naming them, and a predictor that does not return ``(n, C,
*window)`` is refused (MONAI would silently resample its output).

Blending as MONAI computes it: a window's weight is the separable Gaussian
``Π_i exp(-(x_i - (n_i - 1) / 2)² / (2 σ_i²))``, ``σ_i = sigma_scale ·
n_i``, *not* normalised to peak 1, floored at ``max(min, 1e-3)``. vistok's
earlier hand-written copy normalised the peak to 1 before the same floor;
for an odd window the two are identical; for an even one the peak is
below 1 (0.97 for the 16×160×160 training crop, 0.57 for 4×16×16), so the
floor is relatively higher and floored window borders weigh more where they
meet an unfloored window (0.12 measured on 4×16×16 windows of a random conv
in ``tests/test_models/test_segmentors/test_sliding_window_monai.py``).
"""
from typing import Callable, List, Sequence, Union

import torch
from monai.data.utils import dense_patch_slices
from monai.inferers import sliding_window_inference as monai_sliding_window

WEIGHTINGS = ('gaussian', 'constant')
PAD_MODES = ('constant', 'reflect', 'replicate')

Overlap = Union[float, Sequence[float]]


def _overlaps(window: Sequence[int], overlap: Overlap) -> List[float]:
    """One overlap fraction in ``[0, 1)`` per window axis."""
    values = ([overlap] * len(window) if isinstance(overlap, (int, float))
              else list(overlap))
    if len(values) != len(window):
        raise ValueError(f'overlap {tuple(values)} needs one value per '
                         f'window axis {tuple(window)}')
    for value in values:
        if not 0 <= value < 1:
            raise ValueError(f'overlap is a fraction of the window in [0, 1) '
                             f'(MONAI), got {value}')
    return [float(v) for v in values]


def scan_interval(size: int, window: int, overlap: float) -> int:
    """Step between windows along one axis (MONAI's rule): ``int(window ·
    (1 - overlap))`` (at least 1), or ``window`` when the axis is exactly
    one window long."""
    if size == window:
        return window
    return max(int(window * (1 - overlap)), 1)


def window_starts(size: int, window: int, step: int) -> List[int]:
    """Start offsets along one axis of length ``size >= window``: every
    ``step`` voxels, plus a last window shifted back to end at ``size``
    (MONAI's ``dense_patch_slices``)."""
    return [s.start for (s, ) in dense_patch_slices((size, ), (window, ),
                                                    (step, ))]


@torch.no_grad()
def sliding_window_inference(
        volume: torch.Tensor,
        predictor: Callable[[torch.Tensor], torch.Tensor],
        window: Sequence[int],
        overlap: Overlap = 0.25,
        batch_size: int = 1,
        weighting: str = 'gaussian',
        sigma_scale: float = 0.125,
        pad_mode: str = 'constant',
        pad_value: float = 0.0) -> torch.Tensor:
    """Predict a whole volume window by window and blend the windows, with
    MONAI's ``sliding_window_inference`` (module docstring).

    The windows tile the volume with the given ``overlap``; the last window
    along each axis is shifted back to end at the border. An axis shorter
    than the window is padded (``pad_mode``; half before, half after) and
    the output cropped back. Window predictions are multiplied by the
    importance map (``'gaussian'`` or ``'constant'``), summed, and divided
    by the summed map.

    Args:
        volume: ``(C_in, *spatial)`` or ``(B, C_in, *spatial)`` with as many
            spatial axes as ``window``.
        predictor: maps a batch of windows ``(n, C_in, *window)`` to
            ``(n, C, *window)`` (e.g. the sigmoid of a network).
        window: window size per spatial axis (MONAI's ``roi_size``).
        overlap: fraction of the window in ``[0, 1)``, one value or one per
            axis.
        batch_size: windows per ``predictor`` call (``sw_batch_size``).
        weighting: ``'gaussian'`` or ``'constant'`` (MONAI's ``mode``).
        sigma_scale: Gaussian ``σ`` as a fraction of the window size.
        pad_mode: ``'constant'``, ``'reflect'`` or ``'replicate'``
            (``padding_mode``).
        pad_value: value of ``'constant'`` padding (``cval``).

    Returns:
        float32 ``(C, *spatial)`` (``(B, C, *spatial)`` for a batched
        input) on the device of ``volume``.
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
    overlaps = _overlaps(window, overlap)

    def checked(windows: torch.Tensor) -> torch.Tensor:
        predictions = predictor(windows)
        if (predictions.ndim != windows.ndim
                or predictions.shape[0] != windows.shape[0]
                or tuple(predictions.shape[2:]) != window):
            raise ValueError(
                f'predictor must map windows {tuple(windows.shape)} to '
                f'(n, C, *window) = ({windows.shape[0]}, C, '
                f'{", ".join(map(str, window))}), got '
                f'{tuple(predictions.shape)}')
        # a copy: MONAI scales the predictions in place, which must not
        # reach a tensor the predictor keeps (or the input windows)
        return predictions.to(device=volume.device, dtype=torch.float32,
                              copy=True)

    inputs = (volume if batched else volume[None]).float()
    out = monai_sliding_window(
        inputs,
        roi_size=window,
        sw_batch_size=batch_size,
        predictor=checked,
        overlap=overlaps,
        mode=weighting,
        sigma_scale=sigma_scale,
        padding_mode=pad_mode,
        cval=pad_value)
    out = out.as_tensor() if hasattr(out, 'as_tensor') else out
    return out if batched else out[0]


def num_windows(spatial: Sequence[int], window: Sequence[int],
                overlap: Overlap = 0.25) -> int:
    """Number of windows :func:`sliding_window_inference` runs on a volume
    of ``spatial`` size (after padding short axes to the window)."""
    window = tuple(int(n) for n in window)
    overlaps = _overlaps(window, overlap)
    count = 1
    for size, n, o in zip(spatial, window, overlaps):
        size = max(size, n)
        count *= len(window_starts(size, n, scan_interval(size, n, o)))
    return count


__all__ = [
    'sliding_window_inference', 'num_windows', 'window_starts',
    'scan_interval'
]
