"""Token-logit head: per-position class logits over a codebook.

Used for TiTok's stage-1 proxy codes (Yu et al. 2024, "An Image is Worth 32
Tokens for Reconstruction and Generation", §3.3): the decoder's features at
each of the ``h × w`` positions are mapped to logits over the teacher
MaskGIT-VQGAN's 1024 codes and trained with cross-entropy. TiTok's head is
``hidden_channels=2 * width, activation='tanh'`` (conv1×1 → tanh →
conv1×1); ``hidden_channels=None`` is a single linear layer (MaskGIT-style
token prediction).
"""
from typing import Optional

import torch
import torch.nn as nn

from vistok.registry import HEADS

ACTIVATIONS = {'tanh': nn.Tanh, 'gelu': nn.GELU, 'relu': nn.ReLU}


@HEADS.register_module()
class TokenLogitHead(nn.Module):
    """Features ``(B, in_channels, *spatial)`` → logits
    ``(B, num_classes, *spatial)`` (any spatial rank: grids ``(B, C, h, w)``,
    sequences ``(B, C, N)``), applied independently at every position:

    ``[LayerNorm →] Linear(in, hidden) → activation → Linear(hidden, V)``,
    or ``[LayerNorm →] Linear(in, V)`` without ``hidden_channels``.

    Args:
        in_channels: feature channels.
        num_classes: codebook size ``V``.
        hidden_channels: width of the hidden layer; ``None`` for none.
        activation: ``'tanh'``, ``'gelu'`` or ``'relu'`` (hidden layer
            only).
        norm: LayerNorm over the channels first.
        norm_eps: LayerNorm epsilon.
    """

    def __init__(self,
                 in_channels: int,
                 num_classes: int,
                 hidden_channels: Optional[int] = None,
                 activation: str = 'tanh',
                 norm: bool = False,
                 norm_eps: float = 1e-5):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f'activation must be one of '
                             f'{sorted(ACTIVATIONS)}, got {activation!r}')
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.norm = (nn.LayerNorm(in_channels, eps=norm_eps)
                     if norm else nn.Identity())
        if hidden_channels is None:
            self.mlp = nn.Linear(in_channels, num_classes)
        else:
            self.mlp = nn.Sequential(nn.Linear(in_channels, hidden_channels),
                                     ACTIVATIONS[activation](),
                                     nn.Linear(hidden_channels, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[1] != self.in_channels:
            raise ValueError(f'x must be (B, {self.in_channels}, *spatial), '
                             f'got shape {tuple(x.shape)}')
        return self.mlp(self.norm(x.movedim(1, -1))).movedim(-1, 1)
