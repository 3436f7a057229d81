"""Latent-token 1-D ViT tokenizer backbone (TiTok: Yu et al. 2024, "An Image
is Worth 32 Tokens for Reconstruction and Generation", §3.2).

The encoder appends ``K`` learned latent tokens to the image's patch tokens
and keeps only the latent tokens' outputs: the image becomes a 1-D sequence
of ``K`` vectors whatever the image size. The decoder does the reverse: the
``K`` quantized tokens are appended to a grid of learned mask tokens, and
the mask tokens' outputs form the feature grid that a head turns into
proxy-code logits (:class:`~vistok.models.heads.token_logit.TokenLogitHead`,
stage 1) or pixels (:class:`~vistok.models.heads.pixel.PixelHead`).

Layouts (channel-first, DESIGN §6): images ``(B, C, H, W)``; latent token
sequences ``(B, C_q, K)``, which every vistok quantizer accepts as
``(B, C, *spatial)`` with one spatial axis (indices ``(B, K)``); decoder
features ``(B, width, h, w)``. (TiTok's code uses a fake 2-D
``(B, C_q, 1, K)``; squeeze / unsqueeze axis 2 to convert.)

Sequence of both halves (as in TiTok): ``[class token, h·w grid tokens,
K latent tokens]`` with learned position embeddings (``1 + h·w`` entries
for class and grid tokens, ``K`` for the latent tokens), a LayerNorm before
the pre-LN blocks (``ln_pre``) and one after them on the kept tokens
(``ln_post``). Sizes ``'S' | 'B' | 'L'`` are TiTok's small / base / large.
"""
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from vistok.registry import BACKBONES
from .vit import PatchEmbed, build_blocks, config_grid, init_vit_weights

#: TiTok's model sizes (``modeling/modules/blocks.py``): width, depth, heads
LATENT_VIT_SIZES = {
    'S': dict(width=512, depth=8, num_heads=8),
    'B': dict(width=768, depth=12, num_heads=12),
    'L': dict(width=1024, depth=24, num_heads=16),
}


def resolve_size(size: Optional[str], width: Optional[int],
                 depth: Optional[int],
                 num_heads: Optional[int]) -> Tuple[int, int, int]:
    """``(width, depth, num_heads)``: the preset ``size`` with any explicit
    value taking precedence; ``size=None`` needs all three."""
    if size is None:
        if None in (width, depth, num_heads):
            raise ValueError(f'size=None needs width, depth and num_heads, '
                             f'got {width}, {depth}, {num_heads}')
        preset = {}
    elif size in LATENT_VIT_SIZES:
        preset = LATENT_VIT_SIZES[size]
    else:
        raise ValueError(f'size must be one of {sorted(LATENT_VIT_SIZES)} '
                         f'or None, got {size!r}')
    return (preset['width'] if width is None else width,
            preset['depth'] if depth is None else depth,
            preset['num_heads'] if num_heads is None else num_heads)


class _LatentTokenTransformer(nn.Module):
    """Class token, position embeddings, ``ln_pre``, blocks and ``ln_post``
    shared by :class:`LatentTokenEncoder` and :class:`LatentTokenDecoder`.
    Learned embeddings start as ``width^-1/2 · N(0, 1)`` (TiTok)."""

    def __init__(self, size: Optional[str], width: Optional[int],
                 depth: Optional[int], num_heads: Optional[int],
                 img_size: Union[int, Sequence[int]], patch_size: int,
                 num_latent_tokens: int, mlp_ratio: float, qkv_bias: bool,
                 dropout: float, attn_dropout: float, drop_path_rate: float,
                 norm_eps: float):
        super().__init__()
        self.width, self.depth, self.num_heads = resolve_size(
            size, width, depth, num_heads)
        self.patch_size = patch_size
        self.grid_size = config_grid(img_size, patch_size)
        self.num_latent_tokens = num_latent_tokens
        width = self.width
        num_grid = self.grid_size[0] * self.grid_size[1]
        scale = width**-0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(
            scale * torch.randn(1 + num_grid, width))
        self.latent_token_positional_embedding = nn.Parameter(
            scale * torch.randn(num_latent_tokens, width))
        self.ln_pre = nn.LayerNorm(width, eps=norm_eps)
        self.blocks = build_blocks(width, self.depth, self.num_heads,
                                   mlp_ratio, qkv_bias, dropout, attn_dropout,
                                   drop_path_rate, norm_eps)
        self.ln_post = nn.LayerNorm(width, eps=norm_eps)

    def transform(
            self, grid_tokens: torch.Tensor,
            latent_tokens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Run ``[class, grid_tokens, latent_tokens]`` (``(B, h·w, width)``
        and ``(B, K, width)``, before position embeddings) through the
        transformer; returns the grid and latent outputs (before
        ``ln_post``)."""
        batch = grid_tokens.shape[0]
        cls = self.class_embedding.to(grid_tokens).expand(batch, 1, -1)
        x = torch.cat([cls, grid_tokens], dim=1) + self.positional_embedding
        latent = latent_tokens + self.latent_token_positional_embedding
        x = self.ln_pre(torch.cat([x, latent], dim=1))
        for block in self.blocks:
            x = block(x)
        num_grid = grid_tokens.shape[1]
        return x[:, 1:1 + num_grid], x[:, 1 + num_grid:]


@BACKBONES.register_module()
class LatentTokenEncoder(_LatentTokenTransformer):
    """TiTok encoder: images ``(B, in_channels, H, W)`` → latent tokens
    ``(B, out_channels, K)``.

    Patch embedding of the image (``H / p × W / p`` tokens) + ``K`` learned
    latent tokens → transformer → ``ln_post`` of the latent tokens' outputs
    → a linear projection to the quantizer's ``out_channels`` (TiTok's
    ``token_size``, 12).

    Args:
        size: ``'S'``, ``'B'``, ``'L'`` (:data:`LATENT_VIT_SIZES`) or
            ``None`` (then ``width``, ``depth``, ``num_heads`` are required).
        num_latent_tokens: ``K``.
        out_channels: channels of each latent token (quantizer dim).
        img_size: input image size (int or ``(H, W)``); the learned
            position embeddings fix it.
        patch_size: patch side.
        in_channels: image channels.
        width, depth, num_heads: override the preset.
        mlp_ratio, qkv_bias, dropout, attn_dropout: see
            :class:`~vistok.models.backbones.vit.TransformerBlock`.
        drop_path_rate: stochastic depth of the last block (linear rule).
        norm_eps: LayerNorm epsilon (torch's default, as in TiTok).
    """

    def __init__(self,
                 size: Optional[str] = 'B',
                 num_latent_tokens: int = 64,
                 out_channels: int = 12,
                 img_size: Union[int, Sequence[int]] = 256,
                 patch_size: int = 16,
                 in_channels: int = 3,
                 width: Optional[int] = None,
                 depth: Optional[int] = None,
                 num_heads: Optional[int] = None,
                 mlp_ratio: float = 4.0,
                 qkv_bias: bool = True,
                 dropout: float = 0.0,
                 attn_dropout: float = 0.0,
                 drop_path_rate: float = 0.0,
                 norm_eps: float = 1e-5):
        super().__init__(size, width, depth, num_heads, img_size, patch_size,
                         num_latent_tokens, mlp_ratio, qkv_bias, dropout,
                         attn_dropout, drop_path_rate, norm_eps)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.patch_embed = PatchEmbed(in_channels, self.width, patch_size)
        self.latent_tokens = nn.Parameter(
            self.width**-0.5 * torch.randn(num_latent_tokens, self.width))
        self.proj_out = nn.Linear(self.width, out_channels)
        self.apply(init_vit_weights)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != self.in_channels:
            raise ValueError(f'images must be (B, {self.in_channels}, H, W), '
                             f'got shape {tuple(images.shape)}')
        patches = self.patch_embed(images)
        if tuple(patches.shape[-2:]) != self.grid_size:
            raise ValueError(
                f'images of shape {tuple(images.shape)} give a '
                f'{tuple(patches.shape[-2:])} patch grid; the position '
                f'embeddings are for {self.grid_size} (img_size '
                f'{self.grid_size[0] * self.patch_size}x'
                f'{self.grid_size[1] * self.patch_size})')
        grid_tokens = patches.flatten(2).transpose(1, 2)
        latent = self.latent_tokens.to(grid_tokens).expand(
            images.shape[0], -1, -1)
        _, latent = self.transform(grid_tokens, latent)
        return self.proj_out(self.ln_post(latent)).transpose(1, 2)


@BACKBONES.register_module()
class LatentTokenDecoder(_LatentTokenTransformer):
    """TiTok decoder: quantized latent tokens ``(B, in_channels, K)`` →
    features ``(B, width, h, w)`` with ``(h, w) = img_size / patch_size``.

    A linear embedding of the ``K`` tokens is appended to ``h·w`` copies of
    a learned mask token → transformer → ``ln_post`` of the mask tokens'
    outputs, laid out as the ``h × w`` grid (``out_channels = width``).

    Args:
        size, num_latent_tokens, img_size, patch_size, width, depth,
        num_heads, mlp_ratio, qkv_bias, dropout, attn_dropout,
        drop_path_rate, norm_eps: as in :class:`LatentTokenEncoder`;
            ``img_size`` / ``patch_size`` set the output grid.
        in_channels: channels of each latent token (quantizer dim).
    """

    def __init__(self,
                 size: Optional[str] = 'B',
                 num_latent_tokens: int = 64,
                 in_channels: int = 12,
                 img_size: Union[int, Sequence[int]] = 256,
                 patch_size: int = 16,
                 width: Optional[int] = None,
                 depth: Optional[int] = None,
                 num_heads: Optional[int] = None,
                 mlp_ratio: float = 4.0,
                 qkv_bias: bool = True,
                 dropout: float = 0.0,
                 attn_dropout: float = 0.0,
                 drop_path_rate: float = 0.0,
                 norm_eps: float = 1e-5):
        super().__init__(size, width, depth, num_heads, img_size, patch_size,
                         num_latent_tokens, mlp_ratio, qkv_bias, dropout,
                         attn_dropout, drop_path_rate, norm_eps)
        self.in_channels = in_channels
        self.out_channels = self.width
        self.embed = nn.Linear(in_channels, self.width)
        self.mask_token = nn.Parameter(self.width**-0.5 *
                                       torch.randn(self.width))
        self.apply(init_vit_weights)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        expected = (self.in_channels, self.num_latent_tokens)
        if tokens.dim() != 3 or tuple(tokens.shape[1:]) != expected:
            raise ValueError(f'tokens must be (B, {self.in_channels}, '
                             f'{self.num_latent_tokens}) (B, C, K), got '
                             f'shape {tuple(tokens.shape)}')
        latent = self.embed(tokens.transpose(1, 2))
        num_grid = self.grid_size[0] * self.grid_size[1]
        masks = self.mask_token.to(latent).expand(latent.shape[0], num_grid,
                                                  -1)
        grid_tokens, _ = self.transform(masks, latent)
        return self.ln_post(grid_tokens).transpose(1, 2).reshape(
            latent.shape[0], self.width, *self.grid_size)
