"""Linear classification head of a linear probe.

Linear probing of frozen features puts a BatchNorm without affine
parameters before the linear classifier (He et al. 2022, "Masked
Autoencoders Are Scalable Vision Learners", appendix A.2):
it standardises features whose scales differ wildly between tokenizers, so
one learning rate fits all. ImageFolder's probe (official
``tokenizer/tokenizer_image/linear_probing.py``, ``LinearClassifier``) is
``BatchNorm1d(C, affine=False, eps=1e-6)`` then ``Linear(C, classes)`` on
token-averaged features — this head with its defaults.
"""
import torch
import torch.nn as nn

from vistok.registry import HEADS


@HEADS.register_module()
class LinearClsHead(nn.Module):
    """Pooled features ``(B, in_channels)`` → class logits
    ``(B, num_classes)``: ``[BatchNorm1d(affine=False) →] Linear``.

    The norm keeps running statistics (in the state dict) and uses the
    batch's in training, as any BatchNorm; it has no parameters.

    Args:
        in_channels: feature channels ``C``.
        num_classes: number of classes.
        norm: standardise the features first (BatchNorm1d without affine).
        norm_eps: its epsilon (ImageFolder's probe: 1e-6).
        norm_momentum: its running-statistics momentum.
    """

    def __init__(self,
                 in_channels: int,
                 num_classes: int,
                 norm: bool = True,
                 norm_eps: float = 1e-6,
                 norm_momentum: float = 0.1):
        super().__init__()
        if in_channels < 1 or num_classes < 1:
            raise ValueError(f'in_channels and num_classes must be positive, '
                             f'got {in_channels} and {num_classes}')
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.norm = (nn.BatchNorm1d(in_channels, eps=norm_eps,
                                    momentum=norm_momentum, affine=False)
                     if norm else nn.Identity())
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.in_channels:
            raise ValueError(f'x must be pooled features (B, '
                             f'{self.in_channels}), got shape '
                             f'{tuple(x.shape)}')
        return self.fc(self.norm(x))
