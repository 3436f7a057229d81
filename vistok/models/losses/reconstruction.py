"""Pixel-wise reconstruction losses on ``(B, C, *spatial)`` tensors, and
the pixel range every image loss term declares.

Pixel range (DESIGN.md §6): a tokenizer's images are in
:data:`TOKENIZER_PIXEL_RANGE` ``[-1, 1]``, but official recipes define their
loss terms on other ranges -- TiTok computes every pixel loss on ``[0, 1]``
images (bytedance/1d-tokenizer ``modeling/modules/losses.py``
``ReconstructionLoss_Stage2.forward``: "Both inputs and reconstructions are
in range [0, 1]"), taming on ``[-1, 1]``. Each image loss term (the pixel
losses here, ``LPIPS`` / ``PerceptualFeatureLoss``, the discriminator input
of ``AdversarialLoss``) therefore takes ``pixel_range=(low, high)`` and maps
its ``[-1, 1]`` inputs onto it with :func:`to_pixel_range`, the one place the
conversion happens. An L2 on ``[0, 1]`` is a quarter of the L2 on ``[-1,
1]``, an L1 half of it.
"""
from abc import ABCMeta, abstractmethod
from typing import Sequence, Tuple

import torch
import torch.nn as nn

from vistok.registry import LOSSES

REDUCTIONS = ('mean', 'sum', 'none')
#: the range of the tokenizer API's images (and of every loss term's
#: inputs); a term's ``pixel_range`` is the range it is computed on
TOKENIZER_PIXEL_RANGE = (-1.0, 1.0)


def check_pixel_range(pixel_range: Sequence[float],
                      key: str = 'pixel_range') -> Tuple[float, float]:
    """``pixel_range`` as a ``(low, high)`` pair of floats with ``high >
    low``; a ``ValueError`` naming the config ``key`` otherwise."""
    try:
        low, high = (float(v) for v in pixel_range)
    except (TypeError, ValueError):
        raise ValueError(f'{key} must be a pair (low, high), got '
                         f'{pixel_range!r}') from None
    if not high > low:
        raise ValueError(f'{key} must be (low, high) with high > low, got '
                         f'{tuple(pixel_range)}')
    return low, high


def to_pixel_range(images: torch.Tensor,
                   pixel_range: Tuple[float, float]) -> torch.Tensor:
    """Map ``images`` from :data:`TOKENIZER_PIXEL_RANGE` ``[-1, 1]`` onto
    ``pixel_range = (low, high)``: ``(x + 1) · (high - low) / 2 + low``
    (``(x + 1) / 2`` for TiTok's ``[0, 1]``). ``[-1, 1]`` returns
    ``images`` itself, so that default terms compute exactly what they did
    before the range was a property."""
    low, high = pixel_range
    if (low, high) == TOKENIZER_PIXEL_RANGE:
        return images
    return (images + 1) * (0.5 * (high - low)) + low


class PixelLoss(nn.Module, metaclass=ABCMeta):
    """``loss_weight · reduce(ρ(pred - target))`` for an element-wise
    penalty ``ρ`` defined by the subclass.

    Args:
        loss_weight: multiplier of the reduced loss.
        reduction: ``'mean'``, ``'sum'`` or ``'none'`` (element-wise,
            shape of ``pred``).
        loss_name: name under which an algorithm logs this term; it must
            contain ``'loss'`` so that mmengine's ``parse_losses`` adds it to
            the total.
        pixel_range: ``(low, high)`` range the penalty is computed on;
            ``pred`` and ``target`` in ``[-1, 1]`` are mapped onto it first
            (:func:`to_pixel_range`). TiTok: ``(0, 1)``; default ``(-1,
            1)`` (no conversion).
    """

    def __init__(self,
                 loss_weight: float,
                 reduction: str,
                 loss_name: str,
                 pixel_range: Sequence[float] = TOKENIZER_PIXEL_RANGE):
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f'reduction must be one of {REDUCTIONS}, '
                             f'got {reduction!r}')
        if 'loss' not in loss_name:
            raise ValueError(f'loss_name must contain "loss" to be part of '
                             f'the total loss, got {loss_name!r}')
        self.loss_weight = loss_weight
        self.reduction = reduction
        self.loss_name = loss_name
        self.pixel_range = check_pixel_range(pixel_range)

    @abstractmethod
    def elementwise(self, diff: torch.Tensor) -> torch.Tensor:
        """Penalty ``ρ`` of ``diff = pred - target``, element-wise."""

    def forward(self, pred: torch.Tensor,
                target: torch.Tensor) -> torch.Tensor:
        """``pred`` and ``target`` of the same shape ``(B, C, *spatial)``,
        in ``[-1, 1]``."""
        loss = self.elementwise(
            to_pixel_range(pred, self.pixel_range) -
            to_pixel_range(target, self.pixel_range))
        if self.reduction == 'mean':
            loss = loss.mean()
        elif self.reduction == 'sum':
            loss = loss.sum()
        return self.loss_weight * loss


@LOSSES.register_module()
class L1Loss(PixelLoss):
    """Absolute error ``|pred - target|`` (arguments: :class:`PixelLoss`)."""

    def __init__(self,
                 loss_weight: float = 1.0,
                 reduction: str = 'mean',
                 loss_name: str = 'loss_l1',
                 pixel_range: Sequence[float] = TOKENIZER_PIXEL_RANGE):
        super().__init__(loss_weight, reduction, loss_name, pixel_range)

    def elementwise(self, diff: torch.Tensor) -> torch.Tensor:
        return diff.abs()


@LOSSES.register_module()
class MSELoss(PixelLoss):
    """Squared error ``(pred - target)²`` (arguments: :class:`PixelLoss`;
    TiTok's ``l2`` is ``pixel_range=(0, 1)``)."""

    def __init__(self,
                 loss_weight: float = 1.0,
                 reduction: str = 'mean',
                 loss_name: str = 'loss_mse',
                 pixel_range: Sequence[float] = TOKENIZER_PIXEL_RANGE):
        super().__init__(loss_weight, reduction, loss_name, pixel_range)

    def elementwise(self, diff: torch.Tensor) -> torch.Tensor:
        return diff.pow(2)


@LOSSES.register_module()
class CharbonnierLoss(PixelLoss):
    """Charbonnier penalty ``sqrt((pred - target)² + ε²)``, a differentiable
    L1 (Charbonnier et al. 1994; LapSRN, Lai et al. 2017, eq. 5).

    Args:
        eps: ``ε``.
        loss_weight, reduction, loss_name, pixel_range: see
            :class:`PixelLoss`.
    """

    def __init__(self,
                 eps: float = 1e-3,
                 loss_weight: float = 1.0,
                 reduction: str = 'mean',
                 loss_name: str = 'loss_charbonnier',
                 pixel_range: Sequence[float] = TOKENIZER_PIXEL_RANGE):
        super().__init__(loss_weight, reduction, loss_name, pixel_range)
        self.eps = eps

    def elementwise(self, diff: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(diff.pow(2) + self.eps**2)
