"""Pixel-wise reconstruction losses on ``(B, C, *spatial)`` tensors."""
from abc import ABCMeta, abstractmethod

import torch
import torch.nn as nn

from vistok.registry import LOSSES

REDUCTIONS = ('mean', 'sum', 'none')


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
    """

    def __init__(self, loss_weight: float, reduction: str, loss_name: str):
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

    @abstractmethod
    def elementwise(self, diff: torch.Tensor) -> torch.Tensor:
        """Penalty ``ρ`` of ``diff = pred - target``, element-wise."""

    def forward(self, pred: torch.Tensor,
                target: torch.Tensor) -> torch.Tensor:
        """``pred`` and ``target`` of the same shape ``(B, C, *spatial)``."""
        loss = self.elementwise(pred - target)
        if self.reduction == 'mean':
            loss = loss.mean()
        elif self.reduction == 'sum':
            loss = loss.sum()
        return self.loss_weight * loss


@LOSSES.register_module()
class L1Loss(PixelLoss):
    """Absolute error ``|pred - target|``."""

    def __init__(self,
                 loss_weight: float = 1.0,
                 reduction: str = 'mean',
                 loss_name: str = 'loss_l1'):
        super().__init__(loss_weight, reduction, loss_name)

    def elementwise(self, diff: torch.Tensor) -> torch.Tensor:
        return diff.abs()


@LOSSES.register_module()
class MSELoss(PixelLoss):
    """Squared error ``(pred - target)²``."""

    def __init__(self,
                 loss_weight: float = 1.0,
                 reduction: str = 'mean',
                 loss_name: str = 'loss_mse'):
        super().__init__(loss_weight, reduction, loss_name)

    def elementwise(self, diff: torch.Tensor) -> torch.Tensor:
        return diff.pow(2)


@LOSSES.register_module()
class CharbonnierLoss(PixelLoss):
    """Charbonnier penalty ``sqrt((pred - target)² + ε²)``, a differentiable
    L1 (Charbonnier et al. 1994; LapSRN, Lai et al. 2017, eq. 5).

    Args:
        eps: ``ε``.
        loss_weight, reduction, loss_name: see :class:`PixelLoss`.
    """

    def __init__(self,
                 eps: float = 1e-3,
                 loss_weight: float = 1.0,
                 reduction: str = 'mean',
                 loss_name: str = 'loss_charbonnier'):
        super().__init__(loss_weight, reduction, loss_name)
        self.eps = eps

    def elementwise(self, diff: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(diff.pow(2) + self.eps**2)
