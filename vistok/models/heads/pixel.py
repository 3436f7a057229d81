"""Pixel head: per-position linear "to-pixels" layer and unpatchify (the ViT
decoder output of MAE, He et al. 2022, and of TiTok's single-stage decoder,
Yu et al. 2024, "An Image is Worth 32 Tokens for Reconstruction and
Generation").

Patch layout: a feature vector at grid position ``(y, x)`` holds the
``p × p × C`` pixel values of the patch whose top-left pixel is
``(y·p, x·p)``, with channel index ``(i·p + j)·C + c`` for pixel offset
``(i, j)`` and image channel ``c`` (einops
``'b (p1 p2 c) h w -> b c (h p1) (w p2)'``, TiTok's and MAE's order).
"""
from typing import Optional

import torch
import torch.nn as nn

from vistok.registry import HEADS


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``(B, C, H, W)`` images → ``(B, p·p·C, H/p, W/p)`` patch vectors
    (layout in the module docstring); ``ValueError`` naming the shape when
    ``H`` or ``W`` is not a multiple of ``patch_size``."""
    batch, channels, height, width = images.shape
    if height % patch_size or width % patch_size:
        raise ValueError(f'images of shape {tuple(images.shape)}: H and W '
                         f'must be multiples of patch_size={patch_size}')
    rows, cols = height // patch_size, width // patch_size
    x = images.reshape(batch, channels, rows, patch_size, cols, patch_size)
    # (b, c, h, p1, w, p2) -> (b, p1, p2, c, h, w)
    return x.permute(0, 3, 5, 1, 2,
                     4).reshape(batch, patch_size * patch_size * channels,
                                rows, cols)


def unpatchify(patches: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Inverse of :func:`patchify`: ``(B, p·p·C, h, w)`` →
    ``(B, C, h·p, w·p)``."""
    batch, depth, rows, cols = patches.shape
    if depth % (patch_size * patch_size):
        raise ValueError(f'patches of shape {tuple(patches.shape)}: the '
                         f'channel count must be a multiple of '
                         f'patch_size**2={patch_size**2}')
    channels = depth // (patch_size * patch_size)
    x = patches.reshape(batch, patch_size, patch_size, channels, rows, cols)
    # (b, p1, p2, c, h, w) -> (b, c, h, p1, w, p2)
    return x.permute(0, 3, 4, 1, 5,
                     2).reshape(batch, channels, rows * patch_size,
                                cols * patch_size)


@HEADS.register_module()
class PixelHead(nn.Module):
    """Features ``(B, in_channels, h, w)`` → pixels
    ``(B, out_channels, h·p, w·p)``: a per-position linear layer to
    ``p·p·out_channels`` values, :func:`unpatchify`, then optionally a
    ``refine_kernel_size`` conv over the image (TiTok's single-stage decoder
    uses a 3×3 conv to smooth patch seams).

    Args:
        in_channels: feature channels.
        patch_size: side ``p`` of the patch each position produces.
        out_channels: image channels.
        refine_kernel_size: odd kernel of the final ``out → out`` conv;
            ``None`` for none.
    """

    def __init__(self,
                 in_channels: int,
                 patch_size: int,
                 out_channels: int = 3,
                 refine_kernel_size: Optional[int] = None):
        super().__init__()
        if refine_kernel_size is not None and refine_kernel_size % 2 == 0:
            raise ValueError(f'refine_kernel_size must be odd (same-size '
                             f'output), got {refine_kernel_size}')
        self.in_channels = in_channels
        self.patch_size = patch_size
        self.out_channels = out_channels
        self.proj = nn.Conv2d(in_channels,
                              patch_size * patch_size * out_channels, 1)
        self.refine = (nn.Identity() if refine_kernel_size is None else
                       nn.Conv2d(out_channels,
                                 out_channels,
                                 refine_kernel_size,
                                 padding=refine_kernel_size // 2))

    @property
    def last_layer(self) -> torch.Tensor:
        """Weight of the last layer (for a taming-style adaptive GAN
        weight)."""
        last = self.proj if isinstance(self.refine,
                                       nn.Identity) else self.refine
        return last.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f'x must be (B, {self.in_channels}, h, w), got '
                             f'shape {tuple(x.shape)}')
        return self.refine(unpatchify(self.proj(x), self.patch_size))
