"""LPIPS of reconstructions (Zhang et al. 2018, eq. 1)."""
from typing import List, Optional, Sequence

import torch
from mmengine.evaluator import BaseMetric

from vistok.models.losses.perceptual import LPIPS
from vistok.registry import METRICS


@METRICS.register_module()
class LPIPSMetric(BaseMetric):
    """Mean over images of the per-image LPIPS (VGG16, v0.1) of ``pred_img``
    against ``gt_img`` (float ``(3, H, W)`` in ``[0, data_range]``, clamped
    to that range and mapped to ``[-1, 1]``). The per-image values are the
    results gathered across ranks.

    Reports ``lpips``.

    The constructor only checks that the weight files exist (raising
    :class:`~vistok.utils.weights.MissingWeightsError` before the first
    iteration, e.g. for the config key ``val_evaluator.trunk_path``); the
    weights are loaded on the first :meth:`process`.

    Args:
        trunk_path: torchvision VGG16 state dict file, see
            :class:`~vistok.models.losses.perceptual.LPIPS`.
        heads_path: ``lpips`` heads file; ``None`` takes the one shipped
            with the installed ``lpips`` package.
        data_range: maximum pixel value of the images.
        batch_size: image pairs per LPIPS forward pass.
        collect_device, prefix: see ``mmengine.evaluator.BaseMetric``.
    """

    def __init__(self,
                 trunk_path: Optional[str] = None,
                 heads_path: Optional[str] = None,
                 data_range: float = 255.0,
                 batch_size: int = 32,
                 collect_device: str = 'cpu',
                 prefix: Optional[str] = None):
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.data_range = data_range
        self.batch_size = batch_size
        self.lpips = LPIPS(trunk_path=trunk_path,
                           heads_path=heads_path,
                           reduction='none')
        self.lpips.weight_files()
        self.weights_loaded = False

    @torch.no_grad()
    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        if not self.weights_loaded:
            self.lpips.init_weights()
            self.weights_loaded = True
        for start in range(0, len(data_samples), self.batch_size):
            chunk = data_samples[start:start + self.batch_size]
            pred = torch.stack([sample['pred_img'] for sample in chunk])
            gt = torch.stack([sample['gt_img'] for sample in chunk])
            self.lpips.to(pred.device)
            values = self.lpips(self.to_signed_range(pred),
                                self.to_signed_range(gt.to(pred.device)))
            self.results.extend(values.cpu().tolist())

    def to_signed_range(self, images: torch.Tensor) -> torch.Tensor:
        """``[0, data_range]`` → ``[-1, 1]`` (after clamping)."""
        images = images.float().clamp(0, self.data_range)
        return images / self.data_range * 2 - 1

    def compute_metrics(self, results: List[float]) -> dict:
        return dict(lpips=sum(results) / len(results))
