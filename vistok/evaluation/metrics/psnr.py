"""Peak signal-to-noise ratio of reconstructions."""
from typing import List, Optional, Sequence

import torch
from mmengine.evaluator import BaseMetric

from vistok.registry import METRICS


def psnr(pred: torch.Tensor,
         target: torch.Tensor,
         data_range: float,
         max_psnr: float = 100.0,
         mask: Optional[torch.Tensor] = None) -> float:
    """``PSNR = 10 · log10(data_range² / MSE)`` of one pair of equal-shape
    tensors (any layout, e.g. an image ``(C, *spatial)``), in float64.

    The MSE is over all elements, or over those where ``mask`` (bool,
    broadcastable to ``pred``) is ``True``. The PSNR is capped at
    ``max_psnr``, which is also the value of a perfect reconstruction
    (MSE 0, an infinite PSNR); it is NaN when ``mask`` selects nothing.
    Values are used as given (no clamping to ``[0, data_range]``).
    """
    error = (pred.double() - target.double()).pow(2)
    if mask is None:
        mse = error.mean()
    else:
        weight = mask.expand_as(error).double()
        mse = (error * weight).sum() / weight.sum()  # 0 / 0 = NaN if empty
    if mse == 0:
        return float(max_psnr)
    return float((10 * torch.log10(data_range**2 / mse)).clamp(max=max_psnr))


@METRICS.register_module()
class PSNR(BaseMetric):
    """Mean over images of the per-image PSNR

    ``PSNR = 10 · log10(data_range² / MSE)``,

    with the MSE over all pixels and channels of one image. It is computed on
    the float images exactly as given (``pred_img`` and ``gt_img``,
    ``(C, *spatial)``), each clamped to ``[0, data_range]`` and not rounded.
    A perfect reconstruction (MSE 0) has an infinite PSNR; each image's PSNR
    is therefore capped at ``max_psnr`` so the mean stays finite and
    identical images count as ``max_psnr`` instead of being skipped (see
    :func:`psnr`, which also serves metrics of other layouts).

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
        """Capped PSNR (:func:`psnr`) of one image pair (any equal shapes),
        both clamped to ``[0, data_range]``."""
        return psnr(pred.double().clamp(0, self.data_range),
                    gt.double().clamp(0, self.data_range), self.data_range,
                    self.max_psnr)

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            self.results.append(
                self.image_psnr(sample['pred_img'].cpu(),
                                sample['gt_img'].cpu()))

    def compute_metrics(self, results: List[float]) -> dict:
        return dict(psnr=sum(results) / len(results))
