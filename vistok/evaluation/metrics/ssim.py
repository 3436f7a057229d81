"""Structural similarity (SSIM) of reconstructions.

Wang, Bovik, Sheikh & Simoncelli, "Image quality assessment: from error
visibility to structural similarity", IEEE TIP 2004, Eq. (13): for windowed
means ``μ``, variances ``σ²`` and covariance ``σ_xy``

    SSIM = (2 μ_x μ_y + C1)(2 σ_xy + C2)
           / ((μ_x² + μ_y² + C1)(σ_x² + σ_y² + C2)),

``C1 = (K1·L)²``, ``C2 = (K2·L)²`` with ``L`` the data range, statistics
weighted by a Gaussian window (σ = 1.5, §III.C) and population (not sample)
covariance. The mean SSIM of an image averages the map over the positions
whose window lies inside the image, per channel, then over channels — the
convention of ``skimage.metrics.structural_similarity(gaussian_weights=True,
sigma=1.5, use_sample_covariance=False, channel_axis=...)``, which truncates
the Gaussian at 3.5 σ (an 11-tap window) and crops ``(win - 1) // 2`` border
pixels; here the window is applied as a separable depthwise convolution
with 'valid' borders, which yields exactly those un-cropped positions.
"""
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from mmengine.evaluator import BaseMetric

from vistok.registry import METRICS

#: ITU-R BT.601 luma weights for R, G, B in [0, 255] (Y in [16, 235])
BT601_LUMA = (65.481, 128.553, 24.966)
BT601_LUMA_OFFSET = 16.0

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def gaussian_window(sigma: float = 1.5, truncate: float = 3.5,
                    dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Normalised 1-D Gaussian taps ``exp(-x²/2σ²)`` for ``|x| <= r``,
    ``r = int(truncate·σ + 0.5)`` (``scipy.ndimage.gaussian_filter``)."""
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    taps = torch.exp(-0.5 * (x / sigma)**2)
    return (taps / taps.sum()).to(dtype)


def rgb_to_luma(images: torch.Tensor,
                data_range: float = 255.0) -> torch.Tensor:
    """ITU-R BT.601 luma ``Y = (65.481 R + 128.553 G + 24.966 B) / 255 + 16``
    (rescaled to ``data_range``) of ``(B, 3, *spatial)`` RGB images in
    ``[0, data_range]``; returns ``(B, 1, *spatial)``."""
    if images.shape[1] != 3:
        raise ValueError('rgb_to_luma expects (B, 3, *spatial) images, got '
                         f'shape {tuple(images.shape)}')
    weights = images.new_tensor(BT601_LUMA) / 255.0
    weights = weights.view(1, 3, *([1] * (images.dim() - 2)))
    offset = BT601_LUMA_OFFSET / 255.0 * data_range
    return (images * weights).sum(dim=1, keepdim=True) + offset


def _blur_valid(x: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of ``(N, 1, *spatial)`` with 'valid' borders."""
    spatial = x.dim() - 2
    conv = _CONV[spatial]
    for axis in range(spatial):
        shape = [1, 1] + [1] * spatial
        shape[2 + axis] = taps.numel()
        x = conv(x, taps.view(shape))
    return x


def ssim(pred: torch.Tensor,
         target: torch.Tensor,
         data_range: float = 255.0,
         sigma: float = 1.5,
         truncate: float = 3.5,
         k1: float = 0.01,
         k2: float = 0.03) -> torch.Tensor:
    """Mean SSIM (Wang et al. 2004, Eq. 13) of each image pair.

    Args:
        pred, target: ``(B, C, *spatial)`` images (1 to 3 spatial dims, each
            at least the window size ``2·int(truncate·σ + 0.5) + 1``).
        data_range: the dynamic range ``L`` of the pixel values.
        sigma, truncate: the Gaussian window's σ and its half-width in σ.
        k1, k2: stabilising constants ``C1 = (k1·L)²``, ``C2 = (k2·L)²``.

    Returns:
        ``(B,)`` SSIM per image, averaged over valid positions and channels,
        in ``float64`` for ``float64`` inputs and ``float32`` otherwise.
        Computed with autocast disabled; both images are shifted by the
        target's per-channel mean first (variances and covariances do not
        change), which keeps float32 accurate on [0, 255] data.
    """
    if pred.shape != target.shape:
        raise ValueError(f'ssim: pred shape {tuple(pred.shape)} differs from '
                         f'target shape {tuple(target.shape)}')
    spatial = pred.dim() - 2
    if spatial not in _CONV:
        raise ValueError('ssim expects (B, C, *spatial) with 1 to 3 spatial '
                         f'dims, got shape {tuple(pred.shape)}')
    dtype = torch.float64 if pred.dtype == torch.float64 else torch.float32
    taps = gaussian_window(sigma, truncate, dtype).to(pred.device)
    if min(pred.shape[2:]) < taps.numel():
        raise ValueError(f'ssim: every spatial size of shape '
                         f'{tuple(pred.shape)} must be >= the Gaussian window '
                         f'size {taps.numel()} (sigma={sigma}, '
                         f'truncate={truncate})')
    with torch.autocast(device_type=pred.device.type, enabled=False):
        b, c = pred.shape[:2]
        x = pred.to(dtype).reshape(b * c, 1, *pred.shape[2:])
        y = target.to(dtype).reshape(b * c, 1, *pred.shape[2:])
        shift = y.mean(dim=tuple(range(1, y.dim())), keepdim=True)
        x, y = x - shift, y - shift
        mu_x, mu_y = _blur_valid(x, taps), _blur_valid(y, taps)
        var_x = _blur_valid(x * x, taps) - mu_x * mu_x
        var_y = _blur_valid(y * y, taps) - mu_y * mu_y
        cov_xy = _blur_valid(x * y, taps) - mu_x * mu_y
        mu_x, mu_y = mu_x + shift, mu_y + shift
        c1, c2 = (k1 * data_range)**2, (k2 * data_range)**2
        ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2) /
                    ((mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)))
        per_channel = ssim_map.flatten(1).mean(dim=1)
        return per_channel.view(b, c).mean(dim=1)


@METRICS.register_module()
class SSIM(BaseMetric):
    """Mean over images of the per-image SSIM (see :func:`ssim`).

    Samples carry ``pred_img`` and ``gt_img``, float ``(C, *spatial)`` in
    ``[0, data_range]``; both are clamped to that range (as :class:`PSNR`
    does), not rounded, and compared in float64. With ``convert_to='y'`` RGB
    images are compared on their ITU-R BT.601 luma (the super-resolution
    convention); otherwise SSIM is averaged over channels.

    Reports ``ssim``.

    Args:
        data_range: maximum pixel value ``L``.
        convert_to: ``None`` (all channels) or ``'y'`` (BT.601 luma).
        sigma, truncate, k1, k2: see :func:`ssim`.
        collect_device, prefix: see ``mmengine.evaluator.BaseMetric``.
    """

    def __init__(self,
                 data_range: float = 255.0,
                 convert_to: Optional[str] = None,
                 sigma: float = 1.5,
                 truncate: float = 3.5,
                 k1: float = 0.01,
                 k2: float = 0.03,
                 collect_device: str = 'cpu',
                 prefix: Optional[str] = None):
        super().__init__(collect_device=collect_device, prefix=prefix)
        if convert_to not in (None, 'y'):
            raise ValueError(f"SSIM: convert_to must be None or 'y', got "
                             f'{convert_to!r}')
        self.data_range = data_range
        self.convert_to = convert_to
        self.ssim_kwargs = dict(data_range=data_range, sigma=sigma,
                                truncate=truncate, k1=k1, k2=k2)

    def image_ssim(self, pred: torch.Tensor, gt: torch.Tensor) -> float:
        """SSIM of one ``(C, *spatial)`` image pair."""
        pred = pred.double().clamp(0, self.data_range)[None]
        gt = gt.double().clamp(0, self.data_range)[None]
        if self.convert_to == 'y':
            pred = rgb_to_luma(pred, self.data_range)
            gt = rgb_to_luma(gt, self.data_range)
        return ssim(pred, gt, **self.ssim_kwargs).item()

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            self.results.append(
                self.image_ssim(sample['pred_img'], sample['gt_img']))

    def compute_metrics(self, results: List[float]) -> dict:
        return dict(ssim=sum(results) / len(results))
