"""UNETR (Hatamizadeh et al., WACV 2022) as a TokenUnify backbone: the
Transformer counterpart of EMmamba in TokenUnify's scaling figure
(arXiv 2405.16847, Fig. 4 of v1, "Transformer" curve).

The network is MONAI's :class:`monai.networks.nets.UNETR` (the release's
UNETR baseline is MONAI's, ``src/model_unetr*.py``): a 12-layer ViT on
16×16×16 patches whose hidden states 3 / 6 / 9 / 12 feed a UNETR decoder.
The release's own "ViT in place of the Mamba stages" variant
(``src/model_vit_3d_varient.py``) does not run as released (nested blocks,
misnamed norms), so the counterpart here is the plain UNETR, scaled by its
width (``hidden_size``, ``mlp_dim``, ``num_heads``, ``feature_size``).

This wrapper only adds the contract of :class:`~.emmamba.EMMamba` that
``AffinitySegmentor`` and ``TokenUnifyPretrainer`` rely on:
``(B, in_channels, D, H, W) -> (B, out_channels, D, H, W)`` logits (no
activation; the algorithms apply the sigmoid), ``in_channels`` /
``out_channels`` attributes, and an error naming the config key when the
input does not have the ViT's fixed ``img_size`` (its position embedding
has one entry per patch of that size).
"""
from typing import Sequence

import torch
import torch.nn as nn
from monai.networks.nets import UNETR as MonaiUNETR

from vistok.models.backbones.conv3d import check_volume
from vistok.registry import BACKBONES


@BACKBONES.register_module()
class UNETR(nn.Module):
    """MONAI's UNETR, ``(B, in_channels, D, H, W) -> (B, out_channels, D, H,
    W)`` logits, for inputs of exactly ``img_size``.

    Args:
        img_size: ``(D, H, W)`` of every input (the training crop / the
            sliding window); each a multiple of MONAI's patch size 16.
        in_channels: input channels (1 for EM).
        out_channels: output channels (1 for voxel reconstruction, 3 for
            affinities).
        feature_size: channels of the decoder's finest level.
        hidden_size: ViT width.
        mlp_dim: ViT MLP width.
        num_heads: attention heads (must divide ``hidden_size``).
        norm_name: MONAI norm of the decoder blocks.
        dropout_rate: ViT dropout.
    """

    def __init__(self,
                 img_size: Sequence[int] = (16, 160, 160),
                 in_channels: int = 1,
                 out_channels: int = 3,
                 feature_size: int = 16,
                 hidden_size: int = 768,
                 mlp_dim: int = 3072,
                 num_heads: int = 12,
                 norm_name: str = 'instance',
                 dropout_rate: float = 0.0):
        super().__init__()
        self.img_size = tuple(int(s) for s in img_size)
        if len(self.img_size) != 3:
            raise ValueError(f'model.backbone.img_size must be (D, H, W), '
                             f'got {img_size}')
        self.in_channels, self.out_channels = in_channels, out_channels
        self.net = MonaiUNETR(
            in_channels=in_channels, out_channels=out_channels,
            img_size=self.img_size, feature_size=feature_size,
            hidden_size=hidden_size, mlp_dim=mlp_dim, num_heads=num_heads,
            norm_name=norm_name, dropout_rate=dropout_rate, spatial_dims=3)
        patch = self.net.patch_size
        if any(s % p for s, p in zip(self.img_size, patch)):
            raise ValueError(f'model.backbone.img_size {self.img_size} must '
                             f'be a multiple of the patch size {patch}')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, *img_size)`` → ``(B, out_channels,
        *img_size)`` logits."""
        check_volume(x, self.in_channels, type(self).__name__)
        if tuple(x.shape[2:]) != self.img_size:
            raise ValueError(
                f'UNETR takes inputs of model.backbone.img_size '
                f'{self.img_size} (its position embedding is fixed), got '
                f'{tuple(x.shape)}')
        return self.net(x)


__all__ = ['UNETR']
