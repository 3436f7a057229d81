"""Next-token heads of TokenUnify pre-training: predict the voxels of token
``n`` (raster order, z slowest) from the backbone's output.

Both heads share one contract, ``head(features, index) -> logits``:
``features`` ``(B, C, D, H, W)`` is the backbone output (the decoder's
full-resolution logits, as in the official ``SegMamba.forward`` of
``src/segmamba_ar.py``), ``index`` ``(B,)`` the token ``n`` to predict, and
the result ``(B, 1, tz, ty, tx)`` the logits of token ``n``
(:class:`~.pretrainer.TokenUnifyPretrainer` applies the sigmoid, as the
official forward does after ``self.preciever(out)``).

* :class:`TokenUnifyPreceiverHead` (``head='official'``): the released
  ``Preciever`` of ``src/segmamba_ar.py`` (ydchen0806/TokenUnify, commit
  221674f4): three ``Conv3d(kernel 3, stride 2, padding 1)`` with channels
  1→12→12→1, ReLU after the first two, flatten, ``Linear`` to the token
  volume. For a 16×160×160 crop the convs give 1×2×20×20 (800 values) and
  the Linear maps 800 → 1024 = 4×16×16. It only fits the crop size it was
  built for and never sees ``n`` (it must infer the boundary from the
  fill).
* :class:`TokenUnifyPerceiverHead` (``head='perceiver'``, the default): the
  "Perceiver Resampler" the v2 paper names (Alayrac et al., Flamingo,
  NeurIPS 2022, §3.1.1 / Jaegle et al., Perceiver, ICML 2021): learned
  latent queries, offset by a sinusoidal embedding of token ``n``'s grid
  coordinates, cross-attend to the output cut into tokens (each embedded
  by a token-sized strided conv plus the sinusoidal embedding of its grid
  coordinates); the latents are then read out to the token's voxels. Every
  size is relative to the token grid, so any crop that is a multiple of
  ``token_size`` works. The layer sizes are vistok's choice (the paper does
  not give them).
"""
import math
from typing import Sequence

import torch
import torch.nn as nn

from vistok.registry import HEADS
from .tokens import size3, token_grid


def _check_index(index: torch.Tensor, batch: int, num_tokens: int) -> None:
    if index.shape != (batch, ):
        raise ValueError(f'index must have shape ({batch},), one token per '
                         f'sample, got {tuple(index.shape)}')
    if index.numel() and not (0 <= int(index.min())
                              and int(index.max()) < num_tokens):
        raise IndexError(f'token index outside [0, {num_tokens}): '
                         f'{index.tolist()}')


@HEADS.register_module()
class TokenUnifyPreceiverHead(nn.Module):
    """The official next-token head ``Preciever`` (``src/segmamba_ar.py``):
    ``(B, in_channels, *input_size)`` → ``(B, 1, *token_size)`` logits.

    conv(k3, s2, p1) ``in_channels → hidden_channels`` → ReLU → conv
    ``hidden → hidden`` → ReLU → conv ``hidden → 1`` → flatten →
    ``Linear(prod(conv output), prod(token_size))``. ``index`` is accepted
    for the common head contract and ignored, as in the official code.

    Args:
        input_size: ``(D, H, W)`` of the backbone output (official
            16×160×160); any other size is an error.
        token_size: ``(tz, ty, tx)`` (official 4×16×16).
        in_channels: channels of the backbone output (official 1).
        hidden_channels: channels of the first two convs (official 12).
    """

    #: official ``Conv3d`` settings of the three convs
    KERNEL, STRIDE, PADDING = 3, 2, 1

    def __init__(self,
                 input_size: Sequence[int] = (16, 160, 160),
                 token_size: Sequence[int] = (4, 16, 16),
                 in_channels: int = 1,
                 hidden_channels: int = 12):
        super().__init__()
        self.input_size = size3(input_size, 'head.input_size')
        self.token_size = size3(token_size, 'head.token_size')
        conv = dict(kernel_size=self.KERNEL, stride=self.STRIDE,
                    padding=self.PADDING)
        self.conv1 = nn.Conv3d(in_channels, hidden_channels, **conv)
        self.conv2 = nn.Conv3d(hidden_channels, hidden_channels, **conv)
        self.conv3 = nn.Conv3d(hidden_channels, 1, **conv)
        self.conv_output_size = self.input_size
        for _ in range(3):
            self.conv_output_size = tuple(
                (s + 2 * self.PADDING - self.KERNEL) // self.STRIDE + 1
                for s in self.conv_output_size)
        self.mlp = nn.Linear(math.prod(self.conv_output_size),
                             math.prod(self.token_size))

    def forward(self, features: torch.Tensor,
                index: torch.Tensor) -> torch.Tensor:
        """``features`` ``(B, C, *input_size)``, ``index`` ``(B,)``
        (unused) → logits ``(B, 1, *token_size)``."""
        if tuple(features.shape[2:]) != self.input_size:
            raise ValueError(
                f"head='official' (TokenUnifyPreceiverHead) was built for "
                f'outputs of spatial size {self.input_size} (head.input_size)'
                f', got features of shape {tuple(features.shape)}; use '
                f"head='perceiver' for other crop sizes")
        x = torch.relu(self.conv1(features))
        x = torch.relu(self.conv2(x))
        x = self.conv3(x).flatten(1)
        return self.mlp(x).view(x.shape[0], 1, *self.token_size)


def sincos_embedding_3d(coords: torch.Tensor, dims: int,
                        temperature: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding (Vaswani et al. 2017) of integer grid
    coordinates ``coords`` ``(..., 3)`` → ``(..., dims)``: each axis gets
    ``dims / 3`` channels, half ``sin(c·ω_i)``, half ``cos(c·ω_i)``, with
    ``ω_i = temperature^(-i / (dims / 6))``. ``dims`` must be a multiple
    of 6."""
    if dims % 6:
        raise ValueError(f'the 3-D sinusoidal embedding needs dims divisible '
                         f'by 6, got {dims}')
    per_axis = dims // 6
    omega = temperature ** (-torch.arange(
        per_axis, dtype=torch.float32, device=coords.device) / per_axis)
    angles = coords.float()[..., None] * omega  # (..., 3, per_axis)
    return torch.cat([angles.sin(), angles.cos()], -1).flatten(-2)


def grid_coords(grid: Sequence[int], device=None) -> torch.Tensor:
    """``(N, 3)`` grid coordinates ``(iz, iy, ix)`` of every token, raster
    order (z slowest)."""
    axes = [torch.arange(g, device=device) for g in grid]
    return torch.stack(torch.meshgrid(*axes, indexing='ij'), -1).view(-1, 3)


class _ResamplerBlock(nn.Module):
    """Flamingo's Perceiver-resampler layer: latents attend to
    ``[features; latents]``, then a feed-forward, both pre-norm residual."""

    def __init__(self, dims: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm_latents = nn.LayerNorm(dims)
        self.norm_context = nn.LayerNorm(dims)
        self.attn = nn.MultiheadAttention(dims, num_heads, batch_first=True)
        hidden = int(dims * mlp_ratio)
        self.ffn = nn.Sequential(nn.LayerNorm(dims), nn.Linear(dims, hidden),
                                 nn.GELU(), nn.Linear(hidden, dims))

    def forward(self, latents, context):
        query = self.norm_latents(latents)
        context = torch.cat([self.norm_context(context), query], 1)
        latents = latents + self.attn(query, context, context,
                                      need_weights=False)[0]
        return latents + self.ffn(latents)


@HEADS.register_module()
class TokenUnifyPerceiverHead(nn.Module):
    """Size-agnostic next-token head: a Perceiver resampler whose latent
    queries know which token to predict.

    1. The output ``(B, C, D, H, W)`` is cut into its tokens by a
       ``Conv3d(C, embed_dims, kernel=stride=token_size)`` and each token
       gets the sinusoidal embedding of its grid coordinates → context
       ``(B, N, embed_dims)``.
    2. ``num_queries`` learned latents plus a learned projection of the
       sinusoidal embedding of token ``n``'s grid coordinates → queries
       ``(B, num_queries, embed_dims)``.
    3. ``depth`` resampler layers (:class:`_ResamplerBlock`).
    4. LayerNorm and a shared ``Linear(embed_dims, prod(token_size) /
       num_queries)``: latent ``q`` gives the ``q``-th chunk of the token's
       voxels (raster order) → logits ``(B, 1, *token_size)``.

    Args:
        token_size: ``(tz, ty, tx)`` (paper 4×16×16).
        in_channels: channels of the backbone output.
        embed_dims: width (a multiple of 6 and of ``num_heads``).
        num_queries: number of latent queries (divides the token's voxel
            count).
        num_heads: attention heads.
        depth: resampler layers.
        mlp_ratio: feed-forward hidden width / ``embed_dims``.
    """

    def __init__(self,
                 token_size: Sequence[int] = (4, 16, 16),
                 in_channels: int = 1,
                 embed_dims: int = 96,
                 num_queries: int = 16,
                 num_heads: int = 4,
                 depth: int = 2,
                 mlp_ratio: float = 2.0):
        super().__init__()
        self.token_size = size3(token_size, 'head.token_size')
        if embed_dims % 6 or embed_dims % num_heads:
            raise ValueError(f'head.embed_dims={embed_dims} must be a '
                             f'multiple of 6 and of head.num_heads='
                             f'{num_heads}')
        self.embed_dims = embed_dims
        self.patch_embed = nn.Conv3d(in_channels, embed_dims,
                                     kernel_size=self.token_size,
                                     stride=self.token_size)
        self.latents = nn.Parameter(torch.randn(num_queries, embed_dims) *
                                    0.02)
        self.position_proj = nn.Linear(embed_dims, embed_dims)
        self.blocks = nn.ModuleList(
            _ResamplerBlock(embed_dims, num_heads, mlp_ratio)
            for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dims)
        voxels = math.prod(self.token_size)
        if voxels % num_queries:
            raise ValueError(f'head.num_queries={num_queries} must divide '
                             f'the {voxels} voxels of a token '
                             f'{self.token_size}')
        # each latent reads out its own chunk of the token's voxels (raster
        # order); a small fan-in and a zero start (sigmoid 0.5) keep the
        # logits away from saturation, where the MSE gradient vanishes
        self.out = nn.Linear(embed_dims, voxels // num_queries)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, features: torch.Tensor,
                index: torch.Tensor) -> torch.Tensor:
        """``features`` ``(B, C, D, H, W)`` (``D, H, W`` multiples of
        ``token_size``), ``index`` ``(B,)`` token to predict → logits
        ``(B, 1, *token_size)``."""
        grid = token_grid(features.shape[2:], self.token_size)
        _check_index(index, features.shape[0], math.prod(grid))
        coords = grid_coords(grid, features.device)  # (N, 3)
        context = self.patch_embed(features).flatten(2).transpose(1, 2)
        context = context + sincos_embedding_3d(
            coords, self.embed_dims).to(context.dtype)
        target = sincos_embedding_3d(coords[index.to(features.device)],
                                     self.embed_dims).to(context.dtype)
        latents = self.latents[None] + self.position_proj(target)[:, None]
        for block in self.blocks:
            latents = block(latents, context)
        logits = self.out(self.norm(latents))  # (B, Q, voxels / Q)
        return logits.view(features.shape[0], 1, *self.token_size)
