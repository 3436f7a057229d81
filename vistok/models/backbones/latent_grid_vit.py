"""Latent-grid ViT encoder and pixel decoder on a timm ViT (ImageFolder: Li
et al., ICLR 2025, "ImageFolder: Autoregressive Image Generation with Folded
Tokens", §3; official ``tokenizer/tokenizer_image/dino_enc/dinov2.py``,
``DINOv2Encoder`` / ``DINOv2Decoder``, and ``dino_enc/to_pixel.py``).

Like TiTok's :mod:`~vistok.models.backbones.latent_vit`, learned latent
tokens are appended after the image's patch tokens and only their outputs
are kept, but here each of the ``P`` product-quantization branches gets a
``K × K`` *grid* of latent tokens ("spatially aligned" tokens), so that a
VAR-style multi-scale residual quantizer can run on each branch:

* position embedding of a latent grid = the ViT's absolute position
  embedding resampled to ``K × K`` (timm's ``resample_abs_pos_embed``,
  recomputed at every forward so that it follows the trained embedding);
* a learned *level* embedding tells the groups apart: level 0 for the
  image part (prefix + patch tokens), level ``p + 1`` for branch ``p``
  (VAR's ``lvl_embed``; initialised ``N(0, 1 / (3·width))`` truncated).
  The number of image tokens is taken from the sequence itself; the
  official code writes ``patch_size² + 1``, which equals ``(256 / 16)² + 1``
  only because the image side is ``16 × 16`` patches (reference notes §B.7).

Layouts (channel-first, DESIGN §6): images ``(B, 3, H, W)``; latent maps
``(B, P·C, K, K)`` with *branch-major* channels — branch ``p`` owns channels
``p·C … (p+1)·C - 1``, its ``K²`` tokens in row-major order — which is what
:class:`~vistok.models.quantizers.product.ProductQuantizer` splits.

The pretrained ViT (DINOv2 ViT-B/14 in the paper, re-created at 256 px with
patch 16) is read from ``weights_path`` in :meth:`init_weights`, never in a
constructor; patch-embedding kernels and position embeddings are resampled
to the configured patch / image size with
:func:`~vistok.models.backbones.timm_wrapper.resample_timm_state_dict`.

Differences from the official code (same function, cleaner seams): the
token projections ``quant_conv`` (768 → C) and ``post_quant_conv``
(P·C → 768) live here (as :class:`torch.nn.Linear` ``quant_proj`` /
``post_quant_proj``, equal to the official 1×1 convs) instead of in the
tokenizer; embeddings are not forced to fp32 under autocast; LoRA / RoPE /
attention-mask variants of the official classes are not implemented.
"""
import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from vistok.models.heads.pixel import PixelHead
from vistok.registry import BACKBONES
from vistok.utils.weights import load_state_dict_file
from .timm_wrapper import (
    load_timm_state_dict,
    resample_timm_state_dict,
    timm_weights_hint,
)

#: timm arguments of ImageFolder's encoder and decoder (official
#: ``xqgan_model.py``): DINOv2 re-created at 256 px with patch 16 (a 16×16
#: token grid), stochastic depth 0.1.
IMAGEFOLDER_VIT_KWARGS = dict(img_size=256, patch_size=16, drop_path_rate=0.1)

#: std of the official initialisation of the latent and mask tokens
#: (``nn.init.normal_(..., std=1e-6)``: they start as "almost nothing").
TOKEN_INIT_STD = 1e-6


def _grid(size: Union[int, Sequence[int]], name: str) -> Tuple[int, int]:
    grid = (size, size) if isinstance(size, int) else tuple(size)
    if len(grid) != 2 or min(grid) < 1:
        raise ValueError(f'{name} must be a positive int or (h, w), got '
                         f'{size!r}')
    return int(grid[0]), int(grid[1])


class _TimmLatentGridViT(nn.Module):
    """A timm ViT with a level embedding and latent-grid position
    embeddings; the weight loading shared by the encoder and decoder.

    Subclasses set ``latent_group_sizes`` (number of latent tokens of each
    level ``1, 2, …``) before calling :meth:`level_index`.
    """

    def __init__(self, model_name: str, weights_path: Optional[str],
                 model_kwargs: Optional[Dict],
                 latent_grid_size: Union[int, Sequence[int]], num_levels: int,
                 checkpoint_grid_size: Optional[Sequence[int]],
                 resample_interpolation: str, resample_antialias: bool):
        super().__init__()
        import timm  # imported here: importing vistok stays cheap
        kwargs = dict(IMAGEFOLDER_VIT_KWARGS if model_kwargs is None else
                      model_kwargs)
        model = timm.create_model(model_name, pretrained=False, **kwargs)
        for attribute in ('patch_embed', 'blocks', 'norm_pre', 'norm',
                          'pos_drop', 'num_prefix_tokens', 'embed_dim'):
            if not hasattr(model, attribute):
                raise ValueError(f'model_name={model_name!r} is not a timm '
                                 f'VisionTransformer (no {attribute!r})')
        if getattr(model, 'pos_embed', None) is None:
            raise ValueError(f'model_name={model_name!r} has no learned '
                             f'absolute position embedding (pos_embed); the '
                             f'latent grid is placed by resampling it')
        # the classifier and its pooling are never used
        model.fc_norm = nn.Identity()
        model.reset_classifier(0, '')
        self.model = model
        self.model_name = model_name
        self.weights_path = weights_path
        self.model_kwargs = kwargs
        self.embed_dim = model.embed_dim
        self.latent_grid_size = _grid(latent_grid_size, 'latent_grid_size')
        self.checkpoint_grid_size = (None if checkpoint_grid_size is None else
                                     list(checkpoint_grid_size))
        self.resample_interpolation = resample_interpolation
        self.resample_antialias = resample_antialias
        self.level_embed = nn.Embedding(num_levels, self.embed_dim)
        nn.init.trunc_normal_(self.level_embed.weight,
                              std=math.sqrt(1 / self.embed_dim / 3))
        self.latent_group_sizes: List[int] = []

    # -- geometry -----------------------------------------------------------
    @property
    def grid_size(self) -> Tuple[int, int]:
        """Patch-token grid ``(h, w)`` of the configured image size."""
        return tuple(self.model.patch_embed.grid_size)

    @property
    def num_pos_prefix(self) -> int:
        """Prefix tokens (class, registers) that have a position entry."""
        return (0 if getattr(self.model, 'no_embed_class', False) else
                self.model.num_prefix_tokens)

    def position_embedding(self, size: Sequence[int]) -> torch.Tensor:
        """``(1, num_pos_prefix + h·w, width)``: the ViT's position embedding
        resampled to an ``(h, w)`` grid (the tensor itself at the model's
        own grid); prefix entries are kept as they are."""
        pos = self.model.pos_embed
        if tuple(size) == self.grid_size:
            return pos
        from timm.layers import resample_abs_pos_embed
        return resample_abs_pos_embed(pos,
                                      new_size=list(size),
                                      old_size=list(self.grid_size),
                                      num_prefix_tokens=self.num_pos_prefix,
                                      interpolation=self.resample_interpolation,
                                      antialias=self.resample_antialias)

    def grid_sequence(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens of an ``(h, w)`` grid ``(B, h, w, width)`` → the sequence
        ``[prefix tokens, h·w tokens] + position embedding`` (resampled to
        ``(h, w)``), ``(B, num_prefix + h·w, width)``, as timm's
        ``VisionTransformer._pos_embed`` does for the image grid."""
        batch, rows, cols, width = tokens.shape
        pos = self.position_embedding((rows, cols))
        x = tokens.reshape(batch, rows * cols, width)
        prefix = [
            token.expand(batch, -1, -1)
            for token in (self.model.cls_token,
                          getattr(self.model, 'reg_token', None))
            if token is not None
        ]
        if self.num_pos_prefix == 0:
            x = torch.cat(prefix + [x + pos], dim=1)
        else:
            x = torch.cat(prefix + [x], dim=1) + pos
        return self.model.pos_drop(x)

    def level_index(self, num_image_tokens: int) -> torch.Tensor:
        """Level of each position of the sequence: ``0`` for the
        ``num_image_tokens`` image-part positions (prefix + patch / mask
        tokens), then ``l`` for the ``latent_group_sizes[l - 1]`` tokens of
        latent group ``l``."""
        counts = [num_image_tokens] + list(self.latent_group_sizes)
        device = self.level_embed.weight.device
        return torch.cat([
            torch.full((count, ), level, dtype=torch.long, device=device)
            for level, count in enumerate(counts)
        ])

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """The ViT's ``norm_pre``, blocks and final ``norm``."""
        return self.model.norm(self.model.blocks(self.model.norm_pre(x)))

    # -- weights ------------------------------------------------------------
    @property
    def how_to_get(self) -> str:
        return timm_weights_hint(self.model_name)

    def init_weights(self) -> None:
        """Load the ViT from ``weights_path`` (a timm state dict), with the
        patch-embedding kernels and position embeddings resampled to the
        configured patch / image size; ``None`` keeps timm's random
        initialisation. The latent / mask tokens, level embedding and
        projections are not in the file and keep their initialisation."""
        if self.weights_path is None:
            return
        state = load_state_dict_file(self.weights_path, 'weights_path',
                                     self.how_to_get)
        state = resample_timm_state_dict(
            self.model,
            state,
            self.model_name,
            self.weights_path,
            checkpoint_grid_size=self.checkpoint_grid_size,
            interpolation=self.resample_interpolation,
            antialias=self.resample_antialias)
        load_timm_state_dict(self.model, state, self.model_name,
                             self.weights_path)


@BACKBONES.register_module()
class DINOv2LatentEncoder(_TimmLatentGridViT):
    """ImageFolder's encoder: images ``(B, in_channels, H, W)`` → ``P``
    latent grids ``(B, P·C, K, K)`` (branch-major channels).

    Sequence: ``[prefix, h·w patch tokens, branch 0's K² latent tokens, …,
    branch P-1's]``; every latent grid gets the position embedding resampled
    to ``K × K``; level embedding 0 / 1…P is added; the ViT's blocks and
    final norm run; the ``P·K²`` latent outputs go through one shared
    ``quant_proj`` (official ``quant_conv``, 768 → 32) and are laid out as
    ``P`` maps of ``C`` channels.

    Args:
        model_name: timm ViT (``'vit_base_patch14_dinov2'`` in the paper;
            a pretrained tag such as ``.lvd142m`` may be added).
        weights_path: local timm state dict of ``model_name`` loaded by
            :meth:`init_weights` (config key ``weights_path``); ``None``
            keeps the random initialisation.
        model_kwargs: ``timm.create_model`` arguments; ``None`` gives
            ImageFolder's :data:`IMAGEFOLDER_VIT_KWARGS` (img 256, patch 16,
            drop_path_rate 0.1).
        latent_grid_size: ``K`` (or ``(K_h, K_w)``) of each branch's grid
            (11 in the paper: 121 tokens per branch).
        num_branches: ``P`` (2 in the paper).
        code_dim: ``C``, channels per branch (the codebook dim, 32).
        checkpoint_grid_size: token grid of the checkpoint's position
            embeddings; ``None`` infers a square one.
        resample_interpolation, resample_antialias: of every position /
            patch resampling (timm's defaults, as the official code).

    Attributes:
        out_channels: ``P·C``, the channels of the output (the tokenizer
            reads it).
        num_latent_tokens: ``P·K_h·K_w``.
    """

    def __init__(self,
                 model_name: str = 'vit_base_patch14_dinov2',
                 weights_path: Optional[str] = None,
                 model_kwargs: Optional[Dict] = None,
                 latent_grid_size: Union[int, Sequence[int]] = 11,
                 num_branches: int = 2,
                 code_dim: int = 32,
                 checkpoint_grid_size: Optional[Sequence[int]] = None,
                 resample_interpolation: str = 'bicubic',
                 resample_antialias: bool = True):
        if num_branches < 1 or code_dim < 1:
            raise ValueError(f'num_branches and code_dim must be >= 1, got '
                             f'{num_branches}, {code_dim}')
        super().__init__(model_name, weights_path, model_kwargs,
                         latent_grid_size, 1 + num_branches,
                         checkpoint_grid_size, resample_interpolation,
                         resample_antialias)
        rows, cols = self.latent_grid_size
        self.num_branches = num_branches
        self.code_dim = code_dim
        self.num_latent_tokens = num_branches * rows * cols
        self.latent_group_sizes = [rows * cols] * num_branches
        self.in_channels = self.model.patch_embed.proj.in_channels
        self.out_channels = num_branches * code_dim
        self.latent_tokens = nn.Parameter(
            TOKEN_INIT_STD *
            torch.randn(self.num_latent_tokens, self.embed_dim))
        self.quant_proj = nn.Linear(self.embed_dim, code_dim)

    @property
    def patch_size(self) -> int:
        """Side of a (square) patch in pixels."""
        return int(self.model.patch_embed.patch_size[0])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        patch_embed = self.model.patch_embed
        if images.dim() != 4 or images.shape[1] != self.in_channels:
            raise ValueError(f'images must be (B, {self.in_channels}, H, W), '
                             f'got shape {tuple(images.shape)}')
        if getattr(patch_embed, 'strict_img_size', False) and \
                tuple(images.shape[-2:]) != tuple(patch_embed.img_size):
            raise ValueError(f'images of shape {tuple(images.shape)}: '
                             f'{self.model_name} was built for '
                             f'{tuple(patch_embed.img_size)} images '
                             f'(model_kwargs img_size)')
        batch = images.shape[0]
        x = patch_embed(images)
        if x.dim() == 3:  # flattened (B, h·w, width): restore the grid
            x = x.reshape(batch, *self.grid_size, self.embed_dim)
        image = self.model.patch_drop(self.grid_sequence(x))
        rows, cols = self.latent_grid_size
        latent_pos = self.position_embedding(
            (rows, cols))[:, self.num_pos_prefix:]
        latent = self.model.pos_drop(
            self.latent_tokens.view(self.num_branches, rows * cols, -1) +
            latent_pos).reshape(1, self.num_latent_tokens, -1)
        x = torch.cat([image, latent.expand(batch, -1, -1)], dim=1)
        x = self.transform(x + self.level_embed(self.level_index(
            image.shape[1])))
        z = self.quant_proj(x[:, image.shape[1]:])  # (B, P·K², C)
        z = z.reshape(batch, self.num_branches, rows, cols, self.code_dim)
        return z.permute(0, 1, 4, 2, 3).reshape(batch, self.out_channels,
                                                rows, cols)


@BACKBONES.register_module()
class DINOv2PixelDecoder(_TimmLatentGridViT):
    """ImageFolder's decoder: quantized latent maps ``(B, P·C, K, K)`` →
    images ``(B, out_channels, H, W)``.

    ``post_quant_proj`` (official ``post_quant_conv``, P·C → 768) embeds
    the ``K²`` positions (the branches concatenated along the channels);
    they get the position embedding resampled to ``K × K`` and level 1.
    ``h·w`` copies of a learned mask token get the image position embedding
    and level 0. After the ViT's blocks and final norm the mask tokens'
    outputs go through a linear :class:`PixelHead` (official
    ``ToPixel('linear')``) to ``p × p`` patches. The ViT's patch embedding
    is unused and removed (its weights are not loaded or saved).

    Args:
        model_name, weights_path, model_kwargs, latent_grid_size,
        num_branches, code_dim, checkpoint_grid_size,
        resample_interpolation, resample_antialias: as in
            :class:`DINOv2LatentEncoder`; ``img_size`` / ``patch_size`` of
            ``model_kwargs`` set the output image and patch size.
        out_channels: image channels.
        latent_prefix_tokens: also put the ViT's prefix tokens (class,
            registers) with their position embedding in front of the latent
            grid, with level 1 — the official decoder does (it passes the
            latent grid through timm's ``_pos_embed``), so official weights
            need ``True``; ``False`` gives ``[prefix, mask tokens, latent
            tokens]``.

    Attributes:
        in_channels: ``P·C``.
        last_layer_name: parameter path of the last layer's weight
            (``'head.proj.weight'``) for a taming-style adaptive GAN weight.
    """

    last_layer_name = 'head.proj.weight'

    def __init__(self,
                 model_name: str = 'vit_base_patch14_dinov2',
                 weights_path: Optional[str] = None,
                 model_kwargs: Optional[Dict] = None,
                 latent_grid_size: Union[int, Sequence[int]] = 11,
                 num_branches: int = 2,
                 code_dim: int = 32,
                 out_channels: int = 3,
                 latent_prefix_tokens: bool = True,
                 checkpoint_grid_size: Optional[Sequence[int]] = None,
                 resample_interpolation: str = 'bicubic',
                 resample_antialias: bool = True):
        if num_branches < 1 or code_dim < 1:
            raise ValueError(f'num_branches and code_dim must be >= 1, got '
                             f'{num_branches}, {code_dim}')
        super().__init__(model_name, weights_path, model_kwargs,
                         latent_grid_size, 2, checkpoint_grid_size,
                         resample_interpolation, resample_antialias)
        patch = tuple(self.model.patch_embed.patch_size)
        if patch[0] != patch[1]:
            raise ValueError(f'the pixel head needs square patches, '
                             f'model_kwargs give patch_size {patch}')
        # the patch embedding is unused: drop it (the loader ignores the
        # checkpoint's entries for it)
        self.model.patch_embed.proj = nn.Identity()
        self.model.patch_embed.norm = nn.Identity()
        rows, cols = self.latent_grid_size
        self.num_branches = num_branches
        self.code_dim = code_dim
        self.latent_prefix_tokens = latent_prefix_tokens
        self.in_channels = num_branches * code_dim
        self.out_channels = out_channels
        self.patch_size = patch[0]
        self.latent_group_sizes = [
            rows * cols +
            (self.model.num_prefix_tokens if latent_prefix_tokens else 0)
        ]
        self.post_quant_proj = nn.Linear(self.in_channels, self.embed_dim)
        self.mask_token = nn.Parameter(TOKEN_INIT_STD *
                                       torch.randn(self.embed_dim))
        self.head = PixelHead(self.embed_dim, self.patch_size, out_channels)

    @property
    def last_layer(self) -> torch.Tensor:
        """The weight named by :attr:`last_layer_name`."""
        return self.head.last_layer

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        expected = (self.in_channels, *self.latent_grid_size)
        if z.dim() != 4 or tuple(z.shape[1:]) != expected:
            raise ValueError(f'z must be (B, {", ".join(map(str, expected))})'
                             f' (B, P·C, K, K), got shape {tuple(z.shape)}')
        batch = z.shape[0]
        latent = self.post_quant_proj(z.permute(0, 2, 3, 1))  # (B, K, K, D)
        if self.latent_prefix_tokens:
            latent = self.grid_sequence(latent)
        else:
            pos = self.position_embedding(self.latent_grid_size)
            latent = self.model.pos_drop(
                latent.flatten(1, 2) + pos[:, self.num_pos_prefix:])
        rows, cols = self.grid_size
        masks = self.mask_token.expand(batch, rows, cols, -1)
        image = self.grid_sequence(masks)
        x = torch.cat([image, latent], dim=1)
        x = self.transform(x + self.level_embed(self.level_index(
            image.shape[1])))
        start = self.model.num_prefix_tokens
        grid = x[:, start:start + rows * cols].transpose(1, 2)
        return self.head(grid.reshape(batch, self.embed_dim, rows, cols))
