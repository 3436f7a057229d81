"""Peak signal-to-noise ratio of reconstructions."""
import math
from typing import List, Optional, Sequence

import torch
from mmengine.evaluator import BaseMetric

from vistok.registry import METRICS


@METRICS.register_module()
class PSNR(BaseMetric):
    """Mean over images of the per-image PSNR

    ``PSNR = 10 · log10(data_range² / MSE)``,

    with the MSE over all pixels and channels of one image. It is computed on
    the float images exactly as given (``pred_img`` and ``gt_img``,
    ``(C, *spatial)``), each clamped to ``[0, data_range]`` and not rounded.
    A perfect reconstruction (MSE 0) has an infinite PSNR; each image's PSNR
    is therefore capped at ``max_psnr`` so the mean stays finite and
    identical images count as ``max_psnr`` instead of being skipped.

    Reports ``psnr``.

    Args:
        data_range: maximum pixel value.
        max_psnr: cap of a single image's PSNR in dB.
        collect_device, prefix: see ``mmengine.evaluator.BaseMetric``.
    """

    def __init__(self,
                 data_range: float = 255.0,
                 max_psnr: float = 100.0,
                 collect_device: str = 'cpu',
                 prefix: Optional[str] = None):
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.data_range = data_range
        self.max_psnr = max_psnr

    def image_psnr(self, pred: torch.Tensor, gt: torch.Tensor) -> float:
        """Capped PSNR of one image pair (any equal shapes)."""
        pred = pred.double().clamp(0, self.data_range)
        gt = gt.double().clamp(0, self.data_range)
        mse = (pred - gt).pow(2).mean().item()
        if mse == 0:
            return self.max_psnr
        return min(10 * math.log10(self.data_range**2 / mse), self.max_psnr)

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            self.results.append(
                self.image_psnr(sample['pred_img'].cpu(),
                                sample['gt_img'].cpu()))

    def compute_metrics(self, results: List[float]) -> dict:
        return dict(psnr=sum(results) / len(results))
