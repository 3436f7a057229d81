"""An independent reference of the ViT-VQGAN tokenizer of
thuanz123/enhancing-transformers (MIT licence; the tokenizer SeiT and SeiT++
store their ImageNet tokens with), written for the converter test from the
module definitions at commit e1c185da5cc0eeefdded68cbff888d5b9c248372:

* ``enhancing/modules/stage1/vitvqgan.py`` ``ViTVQ``: ``encoder``
  (``ViTEncoder``), ``pre_quant`` (Linear, encoder dim -> code dim),
  ``quantizer`` (``VectorQuantizer``), ``post_quant`` (Linear, code dim ->
  decoder dim), ``decoder`` (``ViTDecoder``); ``encode`` = encoder ->
  pre_quant -> quantizer, ``decode`` = post_quant -> decoder,
  ``decode_codes`` = ``normalize(embedding(codes))`` -> decode. The training
  loss (``loss.*``: LPIPS and a StyleGAN discriminator) is left out.
* ``enhancing/modules/stage1/layers.py``: ``ViTEncoder`` = ``Conv2d`` with
  kernel = stride = patch (``to_patch_embedding.0``, then a rearrange to
  ``(B, h·w, dim)``), + the fixed 2-D sin-cos ``en_pos_embedding`` (a
  parameter with ``requires_grad=False``, so it is in the state dict),
  ``Transformer``; ``ViTDecoder`` = + ``de_pos_embedding``, ``Transformer``,
  ``to_pixel`` = rearrange to the grid then ``ConvTranspose2d`` with kernel =
  stride = patch (``to_pixel.1``). ``Transformer``: ``layers.i`` =
  ``[PreNorm(Attention), PreNorm(FeedForward)]`` with residuals, then
  ``norm``; ``PreNorm`` = ``LayerNorm`` (eps 1e-5) then ``fn``;
  ``Attention``: bias-free ``to_qkv`` (``dim -> 3·heads·dim_head``, chunks
  q | k | v, heads major within each), softmax(q kᵀ · dim_head^-½) v,
  ``to_out`` Linear (an Identity when ``heads == 1`` and
  ``dim_head == dim``); ``FeedForward``: ``net`` = Linear, **Tanh**, Linear.
  ``get_2d_sincos_pos_embed``: ``meshgrid(w, h)``, the first half of the
  channels from the column index, the second from the row, each
  ``[sin(p ω) | cos(p ω)]`` with ``ω_i = 10000^(-i / (D/4))``.
* ``enhancing/modules/stage1/quantizers.py`` ``VectorQuantizer`` (default
  ``use_norm=True``, no residual): l2-normalised inputs and codebook rows,
  index = argmin of the squared distance between them, the output is the
  normalised code (straight-through ``z + (q - z).detach()``), loss =
  ``β·mean((sg[q] - ẑ)²) + mean((q - sg[ẑ])²)``, β = 0.25.
* The dataloaders (``enhancing/dataloader/imagenet.py``) give images in
  ``[0, 1]`` (``ToTensor``, no normalisation).

Module names are the official ones, so ``RefViTVQ(...).state_dict()`` is an
official-layout checkpoint (minus ``loss.*``). Plain torch + numpy: no
vistok import.
"""
from typing import Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
    omega = np.arange(dim // 2, dtype=np.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    angles = np.einsum('m,d->md', positions.reshape(-1), omega)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_2d(dim: int, grid: Tuple[int, int]) -> np.ndarray:
    cols, rows = np.meshgrid(np.arange(grid[1], dtype=np.float32),
                             np.arange(grid[0], dtype=np.float32))
    return np.concatenate(
        [sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], axis=1)


class PreNorm(nn.Module):

    def __init__(self, dim, fn):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x):
        return self.fn(self.norm(x))


class FeedForward(nn.Module):

    def __init__(self, dim, hidden_dim):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden_dim), nn.Tanh(),
                                 nn.Linear(hidden_dim, dim))

    def forward(self, x):
        return self.net(x)


class Attention(nn.Module):

    def __init__(self, dim, heads, dim_head):
        super().__init__()
        inner = heads * dim_head
        self.heads, self.scale = heads, dim_head**-0.5
        self.to_qkv = nn.Linear(dim, 3 * inner, bias=False)
        self.to_out = (nn.Identity() if heads == 1 and dim_head == dim else
                       nn.Linear(inner, dim))

    def forward(self, x):
        batch, length, _ = x.shape

        def heads_first(t):  # b n (h d) -> b h n d
            return t.reshape(batch, length, self.heads, -1).transpose(1, 2)

        q, k, v = map(heads_first, self.to_qkv(x).chunk(3, dim=-1))
        attn = (q @ k.transpose(-1, -2) * self.scale).softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(batch, length, -1)
        return self.to_out(out)


class Transformer(nn.Module):

    def __init__(self, dim, depth, heads, dim_head, mlp_dim):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList([
                PreNorm(dim, Attention(dim, heads, dim_head)),
                PreNorm(dim, FeedForward(dim, mlp_dim))
            ]) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        for attn, ff in self.layers:
            x = attn(x) + x
            x = ff(x) + x
        return self.norm(x)


class ToGrid(nn.Module):
    """``b (h w) c -> b c h w`` (the official ``Rearrange``)."""

    def __init__(self, rows):
        super().__init__()
        self.rows = rows

    def forward(self, x):
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], self.rows,
                                         -1)


class ToTokens(nn.Module):
    """``b c h w -> b (h w) c``."""

    def forward(self, x):
        return x.flatten(2).transpose(1, 2)


def fixed_pos_embedding(dim, grid):
    table = torch.from_numpy(sincos_2d(dim, grid)).float().unsqueeze(0)
    return nn.Parameter(table, requires_grad=False)


class ViTEncoder(nn.Module):

    def __init__(self, image_size, patch_size, dim, depth, heads, mlp_dim,
                 channels=3, dim_head=64):
        super().__init__()
        grid = (image_size // patch_size, image_size // patch_size)
        self.to_patch_embedding = nn.Sequential(
            nn.Conv2d(channels, dim, kernel_size=patch_size,
                      stride=patch_size), ToTokens())
        self.en_pos_embedding = fixed_pos_embedding(dim, grid)
        self.transformer = Transformer(dim, depth, heads, dim_head, mlp_dim)

    def forward(self, img):
        x = self.to_patch_embedding(img) + self.en_pos_embedding
        return self.transformer(x)


class ViTDecoder(nn.Module):

    def __init__(self, image_size, patch_size, dim, depth, heads, mlp_dim,
                 channels=3, dim_head=64):
        super().__init__()
        grid = (image_size // patch_size, image_size // patch_size)
        self.transformer = Transformer(dim, depth, heads, dim_head, mlp_dim)
        self.de_pos_embedding = fixed_pos_embedding(dim, grid)
        self.to_pixel = nn.Sequential(
            ToGrid(grid[0]),
            nn.ConvTranspose2d(dim, channels, kernel_size=patch_size,
                               stride=patch_size))

    def forward(self, token):
        return self.to_pixel(self.transformer(token + self.de_pos_embedding))


class VectorQuantizer(nn.Module):

    def __init__(self, embed_dim, n_embed, beta=0.25):
        super().__init__()
        self.embed_dim, self.beta = embed_dim, beta
        self.embedding = nn.Embedding(n_embed, embed_dim)

    def forward(self, z):
        flat = F.normalize(z.reshape(-1, self.embed_dim), dim=-1)
        codes = F.normalize(self.embedding.weight, dim=-1)
        distance = (flat.pow(2).sum(1, keepdim=True) + codes.pow(2).sum(1) -
                    2 * torch.einsum('bd,nd->bn', flat, codes))
        indices = distance.argmin(dim=1).reshape(z.shape[:-1])
        q = F.normalize(self.embedding(indices), dim=-1)
        z_norm = F.normalize(z, dim=-1)
        loss = (self.beta * (q.detach() - z_norm).pow(2).mean() +
                (q - z_norm.detach()).pow(2).mean())
        return z + (q - z).detach(), loss, indices


class RefViTVQ(nn.Module):
    """``ViTVQ`` without its training loss; images in [0, 1]."""

    def __init__(self, image_size, patch_size, encoder: dict, decoder: dict,
                 quantizer: dict):
        super().__init__()
        self.encoder = ViTEncoder(image_size, patch_size, **encoder)
        self.decoder = ViTDecoder(image_size, patch_size, **decoder)
        self.quantizer = VectorQuantizer(**quantizer)
        self.pre_quant = nn.Linear(encoder['dim'], quantizer['embed_dim'])
        self.post_quant = nn.Linear(quantizer['embed_dim'], decoder['dim'])

    def encode(self, x):
        """``(quantized (B, N, C), loss, indices (B, N))``."""
        return self.quantizer(self.pre_quant(self.encoder(x)))

    def decode(self, quant):
        return self.decoder(self.post_quant(quant))

    def decode_codes(self, codes):
        return self.decode(F.normalize(self.quantizer.embedding(codes),
                                       dim=-1))

    def forward(self, x):
        quant, loss, indices = self.encode(x)
        return self.decode(quant), loss, indices
