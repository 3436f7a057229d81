"""An independent reference of TiTok (Yu et al. 2024, "An Image is Worth 32
Tokens for Reconstruction and Generation"), written for the converter test
from the module definitions of bytedance/1d-tokenizer at commit
942a96fbdd873780179d1b78d5462911528bf8c8:

* ``modeling/modules/blocks.py``: ``ResidualAttentionBlock`` (pre-LN
  ``ln_1`` -> ``nn.MultiheadAttention`` on sequence-first ``(L, B, D)``
  tokens, residual, ``ln_2`` -> MLP ``c_fc`` / GELU / ``c_proj`` (ratio 4),
  residual); ``TiTokEncoder`` (``patch_embed`` conv with kernel = stride =
  patch, ``[class_embedding; patches] + positional_embedding``, ``latent
  tokens + latent_token_positional_embedding`` appended, ``ln_pre``, the
  blocks, ``ln_post`` on the latent tokens, then the "fake 2-D" layout:
  ``is_legacy`` reshapes ``(B, K, D)`` straight to ``(B, D, K, 1)`` (TiTok
  issue #17), otherwise reshape to ``(B, K, D, 1)`` and permute; 1×1
  ``conv_out`` to ``token_size``; output ``(B, token_size, 1, K)``);
  ``TiTokDecoder`` (``decoder_embed`` Linear, ``h·w`` copies of
  ``mask_token`` behind ``class_embedding`` plus ``positional_embedding``,
  the latents plus ``latent_token_positional_embedding``, ``ln_pre``,
  blocks, the grid outputs after the class token through ``ln_post`` and
  ``ffn``: with ``is_legacy`` conv1×1 -> Tanh -> conv1×1 to 1024 proxy-code
  logits and an identity ``conv_out``; otherwise conv1×1 to ``3·p·p``, the
  ``b (p1 p2 c) h w -> b c (h p1) (w p2)`` rearrange, conv3×3
  ``conv_out``). Widths / depths / heads of the released sizes:
  :data:`MODEL_SIZES`.
* ``modeling/quantizer/quantizer.py`` ``VectorQuantizer`` (``use_l2_norm``,
  no clustering): l2-normalised latents and codebook rows, squared
  distances, ``argmin``, ``get_codebook_entry`` (normalised rows), the
  losses ``β·mean((sg[q] - ẑ)²)`` and ``mean((q - sg[ẑ])²)``, the
  straight-through ``ẑ + (q - ẑ).detach()``, indices ``(B, 1, K)``.
* ``modeling/titok.py`` ``TiTok``: top-level ``latent_tokens``,
  ``quantize``; with ``finetune_decoder`` (stage 2) ``pixel_quantize`` and
  ``pixel_decoder``, the MaskGIT-VQGAN ``VectorQuantizer`` and ``Decoder``
  of ``modeling/modules/maskgit_vqgan.py`` (taken from
  :mod:`reference.maskgit_vqgan_official`), and ``decode`` = decoder ->
  ``einsum('nchw,cd->ndhw', softmax(logits, 1), pixel codebook)`` ->
  ``pixel_decoder``; ``decode_tokens`` = ``get_codebook_entry`` ->
  ``(B, C, 1, K)`` -> ``decode``.

The official modules read sizes from a config object; here they are
keyword arguments, and the proxy-code count (1024 in the release, the
MaskGIT-VQGAN codebook) and the pixel decoder's config are arguments so that
the test can build tiny models. Images are in ``[0, 1]``. Module names are
the official ones, so ``TiTok(...).state_dict()`` is an official-layout
checkpoint. Plain torch + einops: no vistok import.
"""
from collections import OrderedDict

import torch
import torch.nn as nn
from einops import rearrange
from einops.layers.torch import Rearrange

from . import maskgit_vqgan_official as maskgit

#: ``vit_enc_model_size`` / ``vit_dec_model_size`` -> (width, layers, heads)
MODEL_SIZES = dict(small=(512, 8, 8), base=(768, 12, 12),
                   large=(1024, 24, 16))
#: the legacy decoder's proxy-code logits (the MaskGIT-VQGAN codebook)
NUM_PROXY_CODES = 1024


def _expand_token(token, batch_size: int):
    return token.unsqueeze(0).expand(batch_size, -1, -1)


class ResidualAttentionBlock(nn.Module):

    def __init__(self, d_model, n_head, mlp_ratio=4.0):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d_model)
        self.attn = nn.MultiheadAttention(d_model, n_head)
        self.ln_2 = nn.LayerNorm(d_model)
        mlp_width = int(d_model * mlp_ratio)
        self.mlp = nn.Sequential(OrderedDict([
            ('c_fc', nn.Linear(d_model, mlp_width)),
            ('gelu', nn.GELU()),
            ('c_proj', nn.Linear(mlp_width, d_model)),
        ]))

    def attention(self, x):
        return self.attn(x, x, x, need_weights=False)[0]

    def forward(self, x):
        x = x + self.attention(x=self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class TiTokEncoder(nn.Module):

    def __init__(self, *, image_size, patch_size, width, num_layers,
                 num_heads, num_latent_tokens, token_size, is_legacy=True):
        super().__init__()
        self.grid_size = image_size // patch_size
        self.width = width
        self.num_layers = num_layers
        self.num_latent_tokens = num_latent_tokens
        self.token_size = token_size
        self.is_legacy = is_legacy
        self.patch_embed = nn.Conv2d(3, width, kernel_size=patch_size,
                                     stride=patch_size, bias=True)
        scale = width**-0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(1, width))
        self.positional_embedding = nn.Parameter(
            scale * torch.randn(self.grid_size**2 + 1, width))
        self.latent_token_positional_embedding = nn.Parameter(
            scale * torch.randn(num_latent_tokens, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = nn.ModuleList(
            ResidualAttentionBlock(width, num_heads, mlp_ratio=4.0)
            for _ in range(num_layers))
        self.ln_post = nn.LayerNorm(width)
        self.conv_out = nn.Conv2d(width, token_size, kernel_size=1,
                                  bias=True)

    def forward(self, pixel_values, latent_tokens):
        batch_size = pixel_values.shape[0]
        x = self.patch_embed(pixel_values)
        x = x.reshape(x.shape[0], x.shape[1], -1)
        x = x.permute(0, 2, 1)  # shape = [*, grid ** 2, width]
        x = torch.cat([_expand_token(self.class_embedding, x.shape[0]), x],
                      dim=1)
        x = x + self.positional_embedding

        latent_tokens = _expand_token(latent_tokens, x.shape[0])
        latent_tokens = latent_tokens + self.latent_token_positional_embedding
        x = torch.cat([x, latent_tokens], dim=1)

        x = self.ln_pre(x)
        x = x.permute(1, 0, 2)  # NLD -> LND
        for i in range(self.num_layers):
            x = self.transformer[i](x)
        x = x.permute(1, 0, 2)  # LND -> NLD

        latent_tokens = x[:, 1 + self.grid_size**2:]
        latent_tokens = self.ln_post(latent_tokens)
        # fake 2D shape
        if self.is_legacy:
            latent_tokens = latent_tokens.reshape(batch_size, self.width,
                                                  self.num_latent_tokens, 1)
        else:
            # Fix legacy problem.
            latent_tokens = latent_tokens.reshape(
                batch_size, self.num_latent_tokens, self.width,
                1).permute(0, 2, 1, 3)
        latent_tokens = self.conv_out(latent_tokens)
        return latent_tokens.reshape(batch_size, self.token_size, 1,
                                     self.num_latent_tokens)


class TiTokDecoder(nn.Module):

    def __init__(self, *, image_size, patch_size, width, num_layers,
                 num_heads, num_latent_tokens, token_size, is_legacy=True,
                 num_proxy_codes=NUM_PROXY_CODES):
        super().__init__()
        self.grid_size = image_size // patch_size
        self.width = width
        self.num_layers = num_layers
        self.num_latent_tokens = num_latent_tokens
        self.is_legacy = is_legacy
        self.decoder_embed = nn.Linear(token_size, width, bias=True)
        scale = width**-0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(1, width))
        self.positional_embedding = nn.Parameter(
            scale * torch.randn(self.grid_size**2 + 1, width))
        # add mask token and query pos embed
        self.mask_token = nn.Parameter(scale * torch.randn(1, 1, width))
        self.latent_token_positional_embedding = nn.Parameter(
            scale * torch.randn(num_latent_tokens, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = nn.ModuleList(
            ResidualAttentionBlock(width, num_heads, mlp_ratio=4.0)
            for _ in range(num_layers))
        self.ln_post = nn.LayerNorm(width)
        if is_legacy:
            self.ffn = nn.Sequential(
                nn.Conv2d(width, 2 * width, 1, padding=0, bias=True),
                nn.Tanh(),
                nn.Conv2d(2 * width, num_proxy_codes, 1, padding=0,
                          bias=True))
            self.conv_out = nn.Identity()
        else:
            # Directly predicting RGB pixels
            self.ffn = nn.Sequential(
                nn.Conv2d(width, patch_size * patch_size * 3, 1, padding=0,
                          bias=True),
                Rearrange('b (p1 p2 c) h w -> b c (h p1) (w p2)',
                          p1=patch_size, p2=patch_size))
            self.conv_out = nn.Conv2d(3, 3, 3, padding=1, bias=True)

    def forward(self, z_quantized):
        N, C, H, W = z_quantized.shape
        assert H == 1 and W == self.num_latent_tokens, (H, W)
        x = z_quantized.reshape(N, C * H, W).permute(0, 2, 1)  # NLD
        x = self.decoder_embed(x)

        batchsize, seq_len, _ = x.shape

        mask_tokens = self.mask_token.repeat(batchsize, self.grid_size**2, 1)
        mask_tokens = torch.cat([
            _expand_token(self.class_embedding, mask_tokens.shape[0]),
            mask_tokens
        ], dim=1)
        mask_tokens = mask_tokens + self.positional_embedding
        x = x + self.latent_token_positional_embedding[:seq_len]
        x = torch.cat([mask_tokens, x], dim=1)

        x = self.ln_pre(x)
        x = x.permute(1, 0, 2)  # NLD -> LND
        for i in range(self.num_layers):
            x = self.transformer[i](x)
        x = x.permute(1, 0, 2)  # LND -> NLD
        x = x[:, 1:1 + self.grid_size**2]  # remove cls embed
        x = self.ln_post(x)
        # N L D -> N D H W
        x = x.permute(0, 2, 1).reshape(batchsize, self.width, self.grid_size,
                                       self.grid_size)
        x = self.ffn(x.contiguous())
        return self.conv_out(x)


class VectorQuantizer(nn.Module):

    def __init__(self, codebook_size=1024, token_size=256,
                 commitment_cost=0.25, use_l2_norm=False):
        super().__init__()
        self.codebook_size = codebook_size
        self.token_size = token_size
        self.commitment_cost = commitment_cost
        self.embedding = nn.Embedding(codebook_size, token_size)
        self.embedding.weight.data.uniform_(-1.0 / codebook_size,
                                            1.0 / codebook_size)
        self.use_l2_norm = use_l2_norm

    def forward(self, z):
        z = z.float()
        z = rearrange(z, 'b c h w -> b h w c').contiguous()
        z_flattened = rearrange(z, 'b h w c -> (b h w) c')

        if self.use_l2_norm:
            z_flattened = nn.functional.normalize(z_flattened, dim=-1)
            embedding = nn.functional.normalize(self.embedding.weight, dim=-1)
        else:
            embedding = self.embedding.weight
        d = torch.sum(z_flattened**2, dim=1, keepdim=True) + \
            torch.sum(embedding**2, dim=1) - 2 * \
            torch.einsum('bd,dn->bn', z_flattened, embedding.T)

        min_encoding_indices = torch.argmin(d, dim=1)  # num_ele
        z_quantized = self.get_codebook_entry(min_encoding_indices).view(
            z.shape)

        if self.use_l2_norm:
            z = nn.functional.normalize(z, dim=-1)

        # compute loss for embedding
        commitment_loss = self.commitment_cost * torch.mean(
            (z_quantized.detach() - z)**2)
        codebook_loss = torch.mean((z_quantized - z.detach())**2)
        loss = commitment_loss + codebook_loss

        # preserve gradients
        z_quantized = z + (z_quantized - z).detach()

        # reshape back to match original input shape
        z_quantized = rearrange(z_quantized, 'b h w c -> b c h w').contiguous()

        result_dict = dict(
            quantizer_loss=loss,
            commitment_loss=commitment_loss,
            codebook_loss=codebook_loss,
            min_encoding_indices=min_encoding_indices.view(
                z_quantized.shape[0], z_quantized.shape[2],
                z_quantized.shape[3]))
        return z_quantized, result_dict

    def get_codebook_entry(self, indices):
        if len(indices.shape) == 1:
            z_quantized = self.embedding(indices)
        elif len(indices.shape) == 2:
            z_quantized = torch.einsum('bd,dn->bn', indices,
                                       self.embedding.weight)
        else:
            raise NotImplementedError(indices.shape)
        if self.use_l2_norm:
            z_quantized = nn.functional.normalize(z_quantized, dim=-1)
        return z_quantized


class TiTok(nn.Module):
    """TiTok with VQ (``quantize_mode='vq'``); ``decoder_size`` ``(width,
    layers, heads)`` when the decoder's ``vit_dec_model_size`` differs from
    the encoder's. ``finetune_decoder`` adds the
    stage-2 ``pixel_quantize`` / ``pixel_decoder`` (MaskGIT-VQGAN) built
    from ``pixel_config`` (a :func:`reference.maskgit_vqgan_official
    .make_config`; default the release's) with ``num_proxy_codes`` codes of
    ``pixel_config.z_channels``. The official class also freezes the
    stage-1 parts then; that changes no value."""

    def __init__(self, *, image_size, patch_size, width, num_layers,
                 num_heads, num_latent_tokens, token_size, codebook_size,
                 use_l2_norm=True, is_legacy=True, finetune_decoder=True,
                 num_proxy_codes=NUM_PROXY_CODES, pixel_config=None,
                 decoder_size=None):
        super().__init__()
        vit = dict(image_size=image_size, patch_size=patch_size,
                   num_latent_tokens=num_latent_tokens, token_size=token_size,
                   is_legacy=is_legacy)
        self.finetune_decoder = finetune_decoder
        self.encoder = TiTokEncoder(width=width, num_layers=num_layers,
                                    num_heads=num_heads, **vit)
        # vit_dec_model_size (e.g. the VQ-8k releases: base / small
        # encoder, large decoder); default the encoder's
        dec_width, dec_layers, dec_heads = decoder_size or (
            width, num_layers, num_heads)
        self.decoder = TiTokDecoder(width=dec_width, num_layers=dec_layers,
                                    num_heads=dec_heads,
                                    num_proxy_codes=num_proxy_codes, **vit)
        self.num_latent_tokens = num_latent_tokens
        scale = width**-0.5
        self.latent_tokens = nn.Parameter(
            scale * torch.randn(num_latent_tokens, width))
        self.quantize = VectorQuantizer(codebook_size=codebook_size,
                                        token_size=token_size,
                                        commitment_cost=0.25,
                                        use_l2_norm=use_l2_norm)
        if finetune_decoder:
            pixel_config = pixel_config or maskgit.make_config()
            self.pixel_quantize = maskgit.VectorQuantizer(
                num_embeddings=num_proxy_codes,
                embedding_dim=pixel_config.z_channels, commitment_cost=0.25)
            self.pixel_decoder = maskgit.Decoder(pixel_config)

    def encode(self, x):
        z = self.encoder(pixel_values=x, latent_tokens=self.latent_tokens)
        z_quantized, result_dict = self.quantize(z)
        return z_quantized, result_dict

    def decode(self, z_quantized):
        decoded = self.decoder(z_quantized)
        if self.finetune_decoder:
            quantized_states = torch.einsum(
                'nchw,cd->ndhw', decoded.softmax(1),
                self.pixel_quantize.embedding.weight)
            decoded = self.pixel_decoder(quantized_states)
        return decoded

    def decode_tokens(self, tokens):
        tokens = tokens.squeeze(1)
        batch, seq_len = tokens.shape  # B x N
        z_quantized = self.quantize.get_codebook_entry(
            tokens.reshape(-1)).reshape(batch, 1, seq_len, -1)
        z_quantized = rearrange(z_quantized,
                                'b h w c -> b c h w').contiguous()
        return self.decode(z_quantized)

    def forward(self, x):
        z_quantized, result_dict = self.encode(x)
        return self.decode(z_quantized), result_dict
