"""Class-balanced weighted MSE on affinity maps (TokenUnify / Superhuman
fine-tuning loss).

Official code (ydchen0806/TokenUnify, commit 221674f4): the weights are
``weight_binary_ratio`` of ``data/data_segmentation.py``, called by the
fine-tuning data provider ``src/data_provider_labeled.py`` (``Train``, the
one ``src/main_finetune.py`` and ``src/main_finetune2.py`` import) as
``weight_binary_ratio(lb_affs)`` on the whole ``(3, D, H, W)`` affinity block
of one crop: **one** positive fraction pooled over the three channels. The
pre-training-era provider ``dataloader/data_provider_labeled.py`` has a
``separate_weight`` flag for one fraction per channel; vistok offers it as
``per_channel=True``. The loss is ``WeightedMSE`` of ``loss/loss.py``.
"""
from typing import Optional

import torch
import torch.nn as nn

from vistok.registry import LOSSES

#: clipping range of the positive fraction in the official
#: ``weight_binary_ratio`` (``np.clip(weight_factor, 5e-2, 0.99)``)
OFFICIAL_MIN_RATIO = 0.05
OFFICIAL_MAX_RATIO = 0.99


def binary_ratio_weights(target: torch.Tensor,
                         mask: Optional[torch.Tensor] = None,
                         min_ratio: float = OFFICIAL_MIN_RATIO,
                         max_ratio: float = OFFICIAL_MAX_RATIO,
                         per_channel: bool = False) -> torch.Tensor:
    """Per-sample class-balance weights of a binary map (the official
    ``weight_binary_ratio``).

    For each sample ``b`` let ``f`` be the fraction of positive voxels of
    ``target[b]`` among the valid ones (``mask > 0``), counted over all
    channels together (official fine-tuning) or, with ``per_channel=True``,
    separately for each channel ``target[b, c]``; ``f`` is clipped to
    ``[min_ratio, max_ratio]``. The rarer class is up-weighted by the
    frequency ratio:

    * ``f > 0.5``: negatives get ``f / (1 - f)``, positives ``1``;
    * otherwise: positives get ``(1 - f) / f``, negatives ``1``.

    A uniform map (all positive or all negative) thus gets weight 1
    everywhere, as the official special case ``label.max() == label.min()``.
    A map without valid voxels gets ``f = min_ratio`` (its weights are all
    multiplied by a zero mask by the loss anyway).

    Args:
        target: ``(B, C, *spatial)`` map in ``{0, 1}`` (values ``> 0.5``
            count as positive).
        mask: optional ``(B, C, *spatial)`` validity mask (1 valid, 0 not).
        min_ratio, max_ratio: clipping range of ``f``.
        per_channel: one fraction per channel instead of one per sample.

    Returns:
        ``(B, C, *spatial)`` float32 weights (not multiplied by ``mask``).
    """
    if target.ndim < 3:
        raise ValueError(f'binary_ratio_weights expects (B, C, *spatial) '
                         f'maps, got shape {tuple(target.shape)}')
    positive = (target > 0.5).float()
    valid = torch.ones_like(positive) if mask is None else (mask > 0).float()
    dims = tuple(range(2 if per_channel else 1, target.ndim))
    num_valid = valid.sum(dims, keepdim=True)
    fraction = (positive * valid).sum(dims, keepdim=True) / num_valid.clamp(
        min=1)
    fraction = torch.where(num_valid > 0, fraction,
                           torch.full_like(fraction, min_ratio))
    fraction = fraction.clamp(min_ratio, max_ratio)
    majority_positive = fraction > 0.5
    negative_weight = torch.where(majority_positive,
                                  fraction / (1 - fraction),
                                  torch.ones_like(fraction))
    positive_weight = torch.where(majority_positive, torch.ones_like(fraction),
                                  (1 - fraction) / fraction)
    return positive * positive_weight + (1 - positive) * negative_weight


@LOSSES.register_module()
class ClassBalancedMSELoss(nn.Module):
    """Weighted MSE ``Σ w · m · (p - y)² / N`` on affinities (the
    ``WeightedMSE`` of the official TokenUnify fine-tuning, with the
    class-balance weights ``w`` of :func:`binary_ratio_weights`, one positive
    fraction per sample pooled over the channels as in the official code, or
    one per channel with ``per_channel=True``, and the validity mask ``m``).

    ``N`` is ``B · D · H · W`` (batch times spatial voxels) as in the
    official loss, which sums the channels instead of averaging them; with
    ``divide_by_channels=True`` it is ``B · C · D · H · W``. Masked voxels
    (``m = 0``: offset neighbour outside the volume or unlabelled) add
    nothing but are still counted in ``N``, as in the official code.

    Computed in fp32 (autocast disabled).

    Args:
        min_ratio, max_ratio: clipping range of the positive fraction
            (official: 0.05 and 0.99).
        per_channel: class-balance each channel on its own positive fraction
            (default ``False``: one fraction over all channels, official).
        divide_by_channels: also divide by the number of channels ``C``.
        loss_weight: multiplier of the loss.
        loss_name: name under which the algorithm logs the term; must contain
            ``'loss'``.
    """

    def __init__(self,
                 min_ratio: float = OFFICIAL_MIN_RATIO,
                 max_ratio: float = OFFICIAL_MAX_RATIO,
                 per_channel: bool = False,
                 divide_by_channels: bool = False,
                 loss_weight: float = 1.0,
                 loss_name: str = 'loss_affinity'):
        super().__init__()
        if not 0 < min_ratio <= max_ratio < 1:
            raise ValueError(f'need 0 < min_ratio <= max_ratio < 1, got '
                             f'min_ratio={min_ratio}, max_ratio={max_ratio}')
        if 'loss' not in loss_name:
            raise ValueError(f'loss_name must contain "loss" to be part of '
                             f'the total loss, got {loss_name!r}')
        self.min_ratio = min_ratio
        self.max_ratio = max_ratio
        self.per_channel = per_channel
        self.divide_by_channels = divide_by_channels
        self.loss_weight = loss_weight
        self.loss_name = loss_name

    def forward(self,
                pred: torch.Tensor,
                target: torch.Tensor,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Loss of ``pred`` (affinity probabilities) against ``target``
        (``{0, 1}``), both ``(B, C, *spatial)``; ``mask`` of the same shape
        or ``None`` (all valid)."""
        if pred.shape != target.shape:
            raise ValueError(f'pred {tuple(pred.shape)} and target '
                             f'{tuple(target.shape)} must have the same shape')
        if mask is not None and mask.shape != target.shape:
            raise ValueError(f'mask {tuple(mask.shape)} must have the shape '
                             f'of target {tuple(target.shape)}')
        with torch.autocast(device_type=pred.device.type, enabled=False):
            pred = pred.float()
            target = target.float()
            with torch.no_grad():
                weight = binary_ratio_weights(target, mask, self.min_ratio,
                                              self.max_ratio, self.per_channel)
                if mask is not None:
                    weight = weight * mask.float()
            total = (weight * (pred - target).pow(2)).sum()
            count = pred.numel() if self.divide_by_channels else (
                pred.numel() // pred.shape[1])
            return self.loss_weight * total / count
