"""An independent reference of the released ImageFolder tokenizer's
inference pass (MSVR10P2: ``enc_type = dec_type = 'dinov2'``,
``abs_pos_embed: true``, ``product_quant: 2``, multi-scale residual VQ),
written for the converter test from the facts of lxa9867/ImageFolder,
commit 42fd2e7 (unchanged for these parts in 76ddfb9):

* ``tokenizer/tokenizer_image/xqgan_model.py`` ``VQModel``: ``encoder``,
  ``quant_conv`` (1x1 conv, width -> C), ``quantizes`` (an ``nn.ModuleList``
  of one ``VectorQuantizer2`` per branch), ``post_quant_conv`` (1x1 conv,
  P·C -> width), ``decoder``. The encoder's ``(B, P·K², width)`` outputs are
  viewed as ``(B, width, P·K², 1)``, projected, chunked along the token axis
  (branch ``p`` = tokens ``p·K² … (p+1)·K² - 1``) and each chunk viewed as a
  ``K × K`` map; the quantized maps are concatenated along the channels.
* ``tokenizer/tokenizer_image/dino_enc/dinov2.py`` ``DINOv2Encoder``: a
  timm ViT (``model``), ``latent_tokens`` ``(1, P·K², width)`` viewed as
  ``(B, P·K, K, width)`` and chunked into ``P`` grids that each go through
  the ViT's ``_pos_embed`` (position embedding resampled to ``K × K``,
  class token dropped); the level embedding ``lvl_embed`` with the index
  buffer ``lvl1LC`` = ``patch_size² + 1`` zeros then ``K²`` times ``p + 1``
  per branch; ``norm_pre``, blocks, ``norm``; the last ``P·K²`` outputs.
  ``DINOv2Decoder``: ``h·w`` copies of ``mask_token`` through
  ``_pos_embed``, the ``K × K`` latent grid through ``_pos_embed`` (class
  token and resampled position embedding kept), levels ``patch_size² + 1``
  zeros then ``K² + 1`` ones, blocks, ``norm``, the ``h·w`` outputs after
  the class token to ``to_pixel``; the ViT's ``patch_embed.proj`` is
  deleted.
* ``tokenizer/tokenizer_image/dino_enc/vision_transformer.py``
  ``VisionTransformer._pos_embed``: a 4-D ``(B, H, W, width)`` input gets
  timm's ``resample_abs_pos_embed(pos_embed, (H, W), num_prefix_tokens)``;
  the class token is concatenated before the position embedding is added.
* ``tokenizer/tokenizer_image/dino_enc/to_pixel.py`` ``ToPixel('linear')``:
  ``nn.Linear(width, 3·p·p)`` then the ``(h, w, p, q, c)`` ->
  ``(c, h·p, w·q)`` unpatchify.
* ``tokenizer/tokenizer_image/quant.py`` ``VectorQuantizer2`` (eval): for
  each scale ``s_i``, the residual area-downsampled to ``s_i × s_i``
  (not at the last scale when it is the full grid), index = argmax of the
  cosine similarity with the codebook ``embedding``, the *raw* codebook row
  bicubic-upsampled to the grid (not at the last scale), then ``Phi`` =
  ``(1 - 0.5)·h + 0.5·conv3x3(h)`` chosen by ``PhiPartiallyShared``
  (ticks ``linspace(1/(3k), 1 - 1/(3k), k)`` for ``k = 4``, the tick
  nearest to ``i / (n - 1)``); ``f̂ += h``, residual ``-= h``.
  ``ema_vocab_hit_SV`` is a usage-statistics buffer.

Module names are the official ones, so ``RefImageFolder().state_dict()``
is an official-layout checkpoint (the training-only ``semantic_model`` is
left out; the test adds such keys by hand). Plain torch + timm only: no
vistok import.
"""
import math
from typing import List, Sequence, Tuple

import numpy as np
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed

#: Phi's blending ratio (``quant_resi=0.5`` default of VectorQuantizer2)
PHI_RATIO = 0.5


def create_vit(model_name: str, vit_kwargs: dict) -> nn.Module:
    """The timm ViT of ``DINOv2Encoder`` / ``DINOv2Decoder`` (no head: the
    DINOv2 entries have ``num_classes=0``)."""
    return timm.create_model(model_name, pretrained=False, num_classes=0,
                             **vit_kwargs)


def pos_embed(vit: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``VisionTransformer._pos_embed`` of the official fork (class token,
    no registers, ``no_embed_class=False``): ``(B, N, width)`` gets the
    position embedding as it is, ``(B, H, W, width)`` a resampled one."""
    pos = vit.pos_embed
    if x.dim() == 4:
        batch, rows, cols, width = x.shape
        pos = resample_abs_pos_embed(pos, (rows, cols),
                                     num_prefix_tokens=vit.num_prefix_tokens)
        x = x.reshape(batch, rows * cols, width)
    cls = vit.cls_token.expand(x.shape[0], -1, -1)
    return torch.cat([cls, x], dim=1) + pos


class RefEncoder(nn.Module):
    """``DINOv2Encoder`` with ``abs_pos_embed=True``, ``product_quant=P``."""

    def __init__(self, model_name, vit_kwargs, num_latent_tokens, branches):
        super().__init__()
        self.model = create_vit(model_name, vit_kwargs)
        width = self.model.embed_dim
        self.num_latent_tokens = num_latent_tokens  # P·K² in total
        self.branches = branches
        self.latent_tokens = nn.Parameter(
            torch.zeros(1, num_latent_tokens, width))
        self.lvl_embed = nn.Embedding(1 + branches, width)
        patch = vit_kwargs['patch_size']
        per_branch = num_latent_tokens // branches
        levels = [torch.full((patch * patch + 1, ), 0)]
        levels += [torch.full((per_branch, ), p + 1) for p in range(branches)]
        self.register_buffer('lvl1LC', torch.cat(levels).view(1, -1))

    def forward(self, images):
        vit = self.model
        x = pos_embed(vit, vit.patch_embed(images))
        side = math.isqrt(self.num_latent_tokens // self.branches)
        z = self.latent_tokens.expand(images.shape[0], -1, -1)
        z = z.reshape(images.shape[0], self.branches * side, side, -1)
        grids = [pos_embed(vit, g)[:, 1:] for g in z.chunk(self.branches, 1)]
        x = torch.cat([x] + grids, dim=1)
        x = x + self.lvl_embed(self.lvl1LC.expand(x.shape[0], -1))
        x = vit.norm(vit.blocks(vit.norm_pre(x)))
        return x[:, -self.num_latent_tokens:]


class RefDecoder(nn.Module):
    """``DINOv2Decoder`` with ``abs_pos_embed=True``, ``to_pixel='linear'``,
    no RoPE, no ``cond_latent``."""

    def __init__(self, model_name, vit_kwargs, num_latent_tokens):
        super().__init__()
        self.model = create_vit(model_name, vit_kwargs)
        width = self.model.embed_dim
        self.num_latent_tokens = num_latent_tokens  # K²
        self.patch = vit_kwargs['patch_size']
        self.num_img_tokens = self.model.patch_embed.num_patches
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.lvl_embed = nn.Embedding(2, width)
        self.register_buffer('lvl1LC', torch.cat([
            torch.full((self.patch * self.patch + 1, ), 0),
            torch.full((num_latent_tokens + 1, ), 1)
        ]).view(1, -1))
        self.to_pixel = nn.Module()
        self.to_pixel.model = nn.Linear(width, 3 * self.patch * self.patch)
        # DINOv2Decoder deletes the unused patch-embedding conv's tensors
        del self.model.patch_embed.proj.weight
        del self.model.patch_embed.proj.bias

    def forward(self, z):
        vit, batch = self.model, z.shape[0]
        x = pos_embed(vit,
                      self.mask_token.expand(batch, self.num_img_tokens, -1))
        side = math.isqrt(self.num_latent_tokens)
        z = pos_embed(vit, z.reshape(batch, side, side, -1))
        x = torch.cat([x, z], dim=1)
        x = x + self.lvl_embed(self.lvl1LC.expand(batch, -1))
        x = vit.norm(vit.blocks(vit.norm_pre(x)))
        x = self.to_pixel.model(x[:, 1:1 + self.num_img_tokens])
        # ToPixel.unpatchify: (n, h, w, p, q, c) -> (n, c, h·p, w·q)
        rows = math.isqrt(x.shape[1])
        p = self.patch
        x = x.reshape(batch, rows, rows, p, p, 3)
        return x.permute(0, 5, 1, 3, 2, 4).reshape(batch, 3, rows * p,
                                                   rows * p)


class RefPhiPartiallyShared(nn.Module):
    """``quant_resi``: ``qresi_ls`` of ``k`` 3x3 convs; scale ``i`` of ``n``
    uses the one whose tick is nearest to ``i / (n - 1)``."""

    def __init__(self, channels, k=4):
        super().__init__()
        self.qresi_ls = nn.ModuleList(
            nn.Conv2d(channels, channels, 3, padding=1) for _ in range(k))
        self.ticks = (np.linspace(1 / 3 / k, 1 - 1 / 3 / k, k) if k == 4
                      else np.linspace(1 / 2 / k, 1 - 1 / 2 / k, k))

    def forward(self, h, at):
        conv = self.qresi_ls[int(np.argmin(np.abs(self.ticks - at)))]
        return h * (1 - PHI_RATIO) + conv(h) * PHI_RATIO


class RefVectorQuantizer2(nn.Module):
    """One branch's multi-scale residual VQ (eval pass of
    ``VectorQuantizer2.forward``, ``using_znorm=True``)."""

    def __init__(self, vocab_size, channels, scales, num_latent_tokens):
        super().__init__()
        self.scales = list(scales)
        self.num_latent_tokens = num_latent_tokens
        self.quant_resi = RefPhiPartiallyShared(channels)
        self.register_buffer('ema_vocab_hit_SV',
                             torch.zeros(len(self.scales), vocab_size))
        self.embedding = nn.Embedding(vocab_size, channels)

    def forward(self, f) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        batch, channels, height, width = f.shape
        rest, f_hat, ids = f.clone(), torch.zeros_like(f), []
        last = len(self.scales) - 1
        codes = F.normalize(self.embedding.weight, dim=1)
        for i, side in enumerate(self.scales):
            if i == last and side == math.isqrt(self.num_latent_tokens):
                small = rest
            else:
                small = F.interpolate(rest, size=(side, side), mode='area')
            vectors = F.normalize(small.permute(0, 2, 3, 1).reshape(
                -1, channels), dim=-1)
            idx = (vectors @ codes.T).argmax(dim=1).view(batch, side, side)
            h = self.embedding(idx).permute(0, 3, 1, 2)
            if i != last:
                h = F.interpolate(h, size=(height, width), mode='bicubic')
            h = self.quant_resi(h, i / last if last else 0.0)
            f_hat = f_hat + h
            rest = rest - h
            ids.append(idx)
        return f_hat, ids


class RefImageFolder(nn.Module):
    """``VQModel`` (dinov2 encoder / decoder, ``product_quant = P > 1``),
    without the training-only semantic teacher."""

    def __init__(self, model_name: str, vit_kwargs: dict, grid: int,
                 branches: int, code_dim: int, codebook_size: int,
                 scales: Sequence[int]):
        super().__init__()
        self.branches, self.grid = branches, grid
        self.encoder = RefEncoder(model_name, vit_kwargs,
                                  branches * grid * grid, branches)
        width = self.encoder.model.embed_dim
        self.quant_conv = nn.Conv2d(width, code_dim, 1)
        self.decoder = RefDecoder(model_name, vit_kwargs, grid * grid)
        self.quantizes = nn.ModuleList(
            RefVectorQuantizer2(codebook_size, code_dim, scales, grid * grid)
            for _ in range(branches))
        self.post_quant_conv = nn.Conv2d(branches * code_dim, width, 1)

    def encode(self, images) -> List[torch.Tensor]:
        """Per-branch ``(B, C, K, K)`` maps fed to ``quantizes``."""
        h = self.encoder(images)  # (B, P·K², width)
        batch, length, width = h.shape
        h = self.quant_conv(h.reshape(batch, length, 1, width).permute(
            0, 3, 1, 2))  # (B, C, P·K², 1)
        return [
            part.reshape(batch, -1, self.grid, self.grid)
            for part in h.chunk(self.branches, dim=2)
        ]

    def forward(self, images):
        """``(reconstruction, per-branch lists of per-scale index maps
        (B, s, s))``."""
        quantized, ids = [], []
        for quantizer, f in zip(self.quantizes, self.encode(images)):
            f_hat, branch_ids = quantizer(f)
            quantized.append(f_hat)
            ids.append(branch_ids)
        quant = self.post_quant_conv(torch.cat(quantized, dim=1))
        return self.decoder(quant.flatten(2).transpose(1, 2)), ids
