"""Vision Transformer parts (Dosovitskiy et al. 2021, "An Image is Worth
16x16 Words") and a ViT encoder / decoder pair for tokenizers.

The blocks are vistok's one transformer block
(:class:`~vistok.models.backbones.transformer.TransformerBlock`, attention
through ``F.scaled_dot_product_attention``) in its ViT flavour: LayerNorm,
GELU MLP, biased projections (:func:`build_blocks`); the TiTok latent-token
ViT of ``latent_vit.py`` and the generators use the same block.

Layout options for released weights (defaults: the ViT above): ``mlp_act``
(``'tanh'`` for the ViT-VQGAN of thuanz123/enhancing-transformers, whose
``FeedForward`` is Linear-Tanh-Linear) and ``pixel_range`` (the image range
the weights were trained on; that ViT-VQGAN sees ``[0, 1]``), as the conv
backbones' ``pixel_range``.

Layouts: the backbones take and return channel-first tensors (images
``(B, C, H, W)``, feature grids ``(B, C, h, w)``); inside, the transformer
works on token sequences ``(B, N, D)`` in raster order (row-major over the
``h × w`` grid). Module names follow timm's ``VisionTransformer`` except
inside the blocks (``blocks.i.attn_norm`` / ``attn.qkv`` / ``attn.proj`` /
``ffn_norm`` / ``ffn.fc1`` / ``ffn.fc2`` for timm's ``norm1`` / ``attn.qkv``
/ ``attn.proj`` / ``norm2`` / ``mlp.fc1`` / ``mlp.fc2``, see
:data:`TIMM_BLOCK_NAMES`).
"""
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from vistok.models.heads.pixel import PixelHead
from vistok.registry import BACKBONES
from .conv import _pixel_affine as pixel_affine
from .transformer import TransformerBlock

#: vistok block module name -> timm ``VisionTransformer`` block name
TIMM_BLOCK_NAMES = {'attn_norm.': 'norm1.', 'ffn_norm.': 'norm2.',
                    'ffn.': 'mlp.'}

POS_EMBED_KINDS = ('learned', 'sincos')


def to_2tuple(value: Union[int, Sequence[int]]) -> Tuple[int, int]:
    """``7 -> (7, 7)``; a pair is returned as a tuple."""
    if isinstance(value, int):
        return value, value
    height, width = value
    return int(height), int(width)


def check_patch_grid(shape: Sequence[int],
                     patch_size: Tuple[int, int]) -> Tuple[int, int]:
    """The token grid ``(H / p_h, W / p_w)`` of an image of ``shape``
    ``(B, C, H, W)``; ``ValueError`` naming both when ``H`` or ``W`` is not a
    multiple of the patch size."""
    if len(shape) != 4:
        raise ValueError(f'expected images (B, C, H, W), got shape '
                         f'{tuple(shape)}')
    height, width = shape[-2:]
    if height % patch_size[0] or width % patch_size[1]:
        raise ValueError(f'image of shape {tuple(shape)}: H={height} and '
                         f'W={width} must be multiples of the patch size '
                         f'{tuple(patch_size)}')
    return height // patch_size[0], width // patch_size[1]


def config_grid(img_size: Union[int, Sequence[int]],
                patch_size: int) -> Tuple[int, int]:
    """The token grid of the configured ``img_size`` (int or ``(H, W)``);
    ``ValueError`` naming both when a side is not a multiple of
    ``patch_size``."""
    height, width = to_2tuple(img_size)
    if height % patch_size or width % patch_size:
        raise ValueError(f'img_size={img_size} must be a multiple of '
                         f'patch_size={patch_size}')
    return height // patch_size, width // patch_size


def grid_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, h, w)`` grid → ``(B, h·w, C)`` tokens in raster order."""
    return x.flatten(2).transpose(1, 2)


def tokens_to_grid(tokens: torch.Tensor, grid: Tuple[int,
                                                     int]) -> torch.Tensor:
    """``(B, h·w, C)`` raster-order tokens → ``(B, C, h, w)`` grid."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, *grid)


def sincos_pos_embed_1d(embed_dim: int,
                        positions: torch.Tensor,
                        temperature: float = 10000.0) -> torch.Tensor:
    """Transformer sin-cos embedding (Vaswani et al. 2017, §3.5) of
    ``positions`` ``(M,)``: ``(M, embed_dim)`` with
    ``[sin(p ω_i) | cos(p ω_i)]``, ``ω_i = temperature^(-i / (embed_dim/2))``
    for ``i < embed_dim / 2`` (MAE's ``get_1d_sincos_pos_embed_from_grid``),
    computed in float64 and returned as float32."""
    if embed_dim % 2:
        raise ValueError(f'embed_dim must be even, got {embed_dim}')
    half = embed_dim // 2
    omega = temperature**(-torch.arange(half, dtype=torch.float64) / half)
    angles = positions.to(torch.float64).reshape(-1, 1) * omega
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


def sincos_pos_embed_2d(embed_dim: int,
                        grid: Tuple[int, int],
                        temperature: float = 10000.0) -> torch.Tensor:
    """MAE's fixed 2-D sin-cos position embedding (He et al. 2022, "Masked
    Autoencoders Are Scalable Vision Learners", ``get_2d_sincos_pos_embed``):
    ``(h·w, embed_dim)`` in raster order; the first half of the channels
    encodes the column index, the second half the row index, each with
    :func:`sincos_pos_embed_1d`."""
    if embed_dim % 4:
        raise ValueError(f'a 2-D sin-cos embedding needs embed_dim divisible '
                         f'by 4, got {embed_dim}')
    rows, cols = torch.meshgrid(torch.arange(grid[0]),
                                torch.arange(grid[1]),
                                indexing='ij')
    halves = [
        sincos_pos_embed_1d(embed_dim // 2, axis.flatten(), temperature)
        for axis in (cols, rows)
    ]
    return torch.cat(halves, dim=1)


def init_vit_weights(module: nn.Module, std: float = 0.02) -> None:
    """ViT initialisation (timm / TiTok): linear and conv weights from a
    normal truncated at ±2σ with σ = ``std``, zero biases, LayerNorm weight
    1 and bias 0. Use with ``model.apply``."""
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def build_blocks(dim: int, depth: int, num_heads: int, mlp_ratio: float,
                 qkv_bias: bool, dropout: float, attn_dropout: float,
                 drop_path_rate: float, norm_eps: float,
                 mlp_act: str = 'gelu') -> nn.ModuleList:
    """``depth`` ViT blocks: the shared pre-LN
    :class:`~vistok.models.backbones.transformer.TransformerBlock` with
    LayerNorm, an MLP of width ``int(dim * mlp_ratio)`` (GELU, or the
    ``mlp_act`` given: ``'gelu'`` | ``'tanh'``) and biased output
    projections; the drop-path probability grows linearly from 0 to
    ``drop_path_rate`` (stochastic-depth "linear decay rule", Huang et al.
    2016)."""
    rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
    return nn.ModuleList(
        TransformerBlock(dim, num_heads, int(dim * mlp_ratio), norm='layer',
                         ffn=mlp_act, qkv_bias=qkv_bias, proj_bias=True,
                         dropout=dropout, attn_dropout=attn_dropout,
                         norm_eps=norm_eps, drop_path=rate)
        for rate in rates)


class PatchEmbed(nn.Module):
    """Non-overlapping patch embedding: a conv with kernel = stride =
    ``patch_size``; ``(B, in_channels, H, W) -> (B, embed_dim, H/p, W/p)``.
    ``H`` or ``W`` not a multiple of the patch size → ``ValueError``."""

    def __init__(self,
                 in_channels: int,
                 embed_dim: int,
                 patch_size: int,
                 bias: bool = True):
        super().__init__()
        self.patch_size = to_2tuple(patch_size)
        self.proj = nn.Conv2d(in_channels,
                              embed_dim,
                              kernel_size=self.patch_size,
                              stride=self.patch_size,
                              bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_patch_grid(x.shape, self.patch_size)
        return self.proj(x)


class PositionEmbedding2D(nn.Module):
    """Absolute position embedding of a ``grid`` of tokens:
    ``forward(grid) -> (1, h·w, embed_dim)`` in raster order.

    ``'learned'``: a parameter (truncated normal, σ = ``init_std``) for the
    configured grid; another grid → ``ValueError``. ``'sincos'``:
    :func:`sincos_pos_embed_2d` of the requested grid (nothing stored, any
    grid works).
    """

    def __init__(self,
                 embed_dim: int,
                 grid: Tuple[int, int],
                 kind: str = 'learned',
                 temperature: float = 10000.0,
                 init_std: float = 0.02):
        super().__init__()
        if kind not in POS_EMBED_KINDS:
            raise ValueError(f'pos_embed must be one of {POS_EMBED_KINDS}, '
                             f'got {kind!r}')
        self.embed_dim = embed_dim
        self.grid = tuple(grid)
        self.kind = kind
        self.temperature = temperature
        if kind == 'learned':
            self.weight = nn.Parameter(
                torch.zeros(1, grid[0] * grid[1], embed_dim))
            nn.init.trunc_normal_(self.weight,
                                  std=init_std,
                                  a=-2 * init_std,
                                  b=2 * init_std)
        elif embed_dim % 4:
            raise ValueError(f'pos_embed="sincos" needs embed_dim divisible '
                             f'by 4, got {embed_dim}')

    def forward(self, grid: Tuple[int, int]) -> torch.Tensor:
        if self.kind == 'sincos':
            return sincos_pos_embed_2d(self.embed_dim, grid,
                                       self.temperature)[None]
        if tuple(grid) != self.grid:
            raise ValueError(f'learned position embeddings exist for a '
                             f'{self.grid} token grid, got a {tuple(grid)} '
                             f'grid; use the configured image size or '
                             f'pos_embed="sincos"')
        return self.weight


class _ViTTrunk(nn.Module):
    """Position embedding, blocks and final LayerNorm shared by
    :class:`ViTEncoder` and :class:`ViTDecoder`: ``(B, D, h, w)`` tokens
    laid out as a grid → normalised ``(B, D, h, w)``."""

    def __init__(self, grid: Tuple[int, int], embed_dim: int, depth: int,
                 num_heads: int, mlp_ratio: float, qkv_bias: bool,
                 dropout: float, attn_dropout: float, drop_path_rate: float,
                 pos_embed: str, pos_embed_temperature: float,
                 norm_eps: float, mlp_act: str = 'gelu'):
        super().__init__()
        self.pos_embed = PositionEmbedding2D(embed_dim, grid, pos_embed,
                                             pos_embed_temperature)
        self.blocks = build_blocks(embed_dim, depth, num_heads, mlp_ratio,
                                   qkv_bias, dropout, attn_dropout,
                                   drop_path_rate, norm_eps, mlp_act)
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = tuple(x.shape[-2:])
        tokens = grid_to_tokens(x) + self.pos_embed(grid).to(x)
        for block in self.blocks:
            tokens = block(tokens)
        return tokens_to_grid(self.norm(tokens), grid)


@BACKBONES.register_module()
class ViTEncoder(nn.Module):
    """ViT encoder without class token: ``(B, in_channels, H, W) ->
    (B, out_channels, H / p, W / p)``.

    Patch embedding → + position embedding → ``depth`` pre-LN blocks →
    LayerNorm → a linear projection to ``out_channels`` (when set).

    Args:
        in_channels: image channels.
        out_channels: channels of the output grid; ``None`` keeps
            ``embed_dim`` (no projection).
        img_size: nominal image size (int or ``(H, W)``); with learned
            position embeddings the input must have this size.
        patch_size: patch side.
        embed_dim, depth, num_heads, mlp_ratio, qkv_bias: transformer sizes.
        dropout, attn_dropout: see :class:`TransformerBlock`.
        drop_path_rate: stochastic depth of the last block (linear rule).
        pos_embed: ``'learned'`` or ``'sincos'`` (MAE's fixed 2-D).
        pos_embed_temperature: sin-cos frequency base.
        norm_eps: LayerNorm epsilon.
        mlp_act: the blocks' MLP activation, ``'gelu'`` (ViT) or
            ``'tanh'`` (enhancing-transformers' ViT-VQGAN).
        pixel_range: the image range the weights were trained on; inputs in
            vistok's ``[-1, 1]`` are mapped to it affinely before the patch
            embedding (enhancing-transformers' ViT-VQGAN: ``(0, 1)``).
    """

    def __init__(self,
                 in_channels: int = 3,
                 out_channels: Optional[int] = None,
                 img_size: Union[int, Sequence[int]] = 256,
                 patch_size: int = 16,
                 embed_dim: int = 768,
                 depth: int = 12,
                 num_heads: int = 12,
                 mlp_ratio: float = 4.0,
                 qkv_bias: bool = True,
                 dropout: float = 0.0,
                 attn_dropout: float = 0.0,
                 drop_path_rate: float = 0.0,
                 pos_embed: str = 'learned',
                 pos_embed_temperature: float = 10000.0,
                 norm_eps: float = 1e-6,
                 mlp_act: str = 'gelu',
                 pixel_range: Sequence[float] = (-1.0, 1.0)):
        super().__init__()
        self.pixel_scale, self.pixel_shift = pixel_affine(pixel_range)
        self.in_channels = in_channels
        self.out_channels = embed_dim if out_channels is None else out_channels
        self.patch_size = patch_size
        self.grid_size = config_grid(img_size, patch_size)
        self.downsample_factor = patch_size
        self.patch_embed = PatchEmbed(in_channels, embed_dim, patch_size)
        self.trunk = _ViTTrunk(self.grid_size, embed_dim, depth, num_heads,
                               mlp_ratio, qkv_bias, dropout, attn_dropout,
                               drop_path_rate, pos_embed,
                               pos_embed_temperature, norm_eps, mlp_act)
        self.proj_out = (nn.Identity() if out_channels is None else nn.Conv2d(
            embed_dim, out_channels, 1))
        self.apply(init_vit_weights)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if (self.pixel_scale, self.pixel_shift) != (1.0, 0.0):
            images = images * self.pixel_scale + self.pixel_shift
        return self.proj_out(self.trunk(self.patch_embed(images)))


@BACKBONES.register_module()
class ViTDecoder(nn.Module):
    """ViT decoder: ``(B, in_channels, h, w) -> (B, out_channels, h·p,
    w·p)``, the mirror of :class:`ViTEncoder`.

    A linear embedding of each latent vector → + position embedding →
    ``depth`` pre-LN blocks → LayerNorm → :class:`PixelHead` (a linear
    "to-pixels" layer and unpatchify, MAE's decoder output).

    Args:
        in_channels: latent channels.
        out_channels: image channels.
        img_size: nominal output image size (int or ``(H, W)``); the latent
            grid is ``img_size / patch_size``.
        patch_size, embed_dim, depth, num_heads, mlp_ratio, qkv_bias,
        dropout, attn_dropout, drop_path_rate, pos_embed,
        pos_embed_temperature, norm_eps, mlp_act: as in
        :class:`ViTEncoder`.
        pixel_range: the image range the weights were trained on; the pixel
            head's output is mapped from it to vistok's ``[-1, 1]``.
    """

    def __init__(self,
                 in_channels: int,
                 out_channels: int = 3,
                 img_size: Union[int, Sequence[int]] = 256,
                 patch_size: int = 16,
                 embed_dim: int = 768,
                 depth: int = 12,
                 num_heads: int = 12,
                 mlp_ratio: float = 4.0,
                 qkv_bias: bool = True,
                 dropout: float = 0.0,
                 attn_dropout: float = 0.0,
                 drop_path_rate: float = 0.0,
                 pos_embed: str = 'learned',
                 pos_embed_temperature: float = 10000.0,
                 norm_eps: float = 1e-6,
                 mlp_act: str = 'gelu',
                 pixel_range: Sequence[float] = (-1.0, 1.0)):
        super().__init__()
        self.pixel_scale, self.pixel_shift = pixel_affine(pixel_range)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.patch_size = patch_size
        self.grid_size = config_grid(img_size, patch_size)
        self.upsample_factor = patch_size
        self.embed = nn.Conv2d(in_channels, embed_dim, 1)
        self.trunk = _ViTTrunk(self.grid_size, embed_dim, depth, num_heads,
                               mlp_ratio, qkv_bias, dropout, attn_dropout,
                               drop_path_rate, pos_embed,
                               pos_embed_temperature, norm_eps, mlp_act)
        self.head = PixelHead(embed_dim, self.patch_size, out_channels)
        self.apply(init_vit_weights)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() != 4 or z.shape[1] != self.in_channels:
            raise ValueError(f'z must be (B, {self.in_channels}, h, w), got '
                             f'shape {tuple(z.shape)}')
        out = self.head(self.trunk(self.embed(z)))
        if (self.pixel_scale, self.pixel_shift) != (1.0, 0.0):
            out = (out - self.pixel_shift) / self.pixel_scale
        return out
