"""An independent reference of the PyTorch MaskGIT-VQGAN (Chang et al. 2022;
the JAX tokenizer ported by open-muse), as released with TiTok, written for
the converter tests from the module definitions of bytedance/1d-tokenizer
at commit 942a96fbdd873780179d1b78d5462911528bf8c8:

* ``modeling/modules/maskgit_vqgan.py``: ``Conv2dSame`` (TF "same" padding,
  ``pad // 2`` before and the rest after; symmetric for the stride-1 odd
  kernels used), ``ResnetBlock`` (GroupNorm 32 groups eps 1e-6, SiLU,
  bias-free conv3×3, GroupNorm, SiLU, dropout, bias-free conv3×3; when the
  channel count changes the residual is the bias-free 1×1 ``nin_shortcut``
  of the block's *output*, not of its input), ``DownsamplingBlock``
  (``num_res_blocks`` ResnetBlocks, then a 2×2 average pool except at the
  last level), ``UpsamplingBlock`` (ResnetBlocks from
  ``ch·channel_mult[i + 1]``, then nearest ×2 and ``upsample_conv`` except
  at level 0), ``Encoder`` (bias-free ``conv_in``, ``down``, ``mid`` = a
  ``ModuleList`` of ``num_res_blocks`` ResnetBlocks, ``norm_out``, SiLU,
  1×1 ``conv_out``), ``Decoder`` (``conv_in``, ``mid``, ``up`` run from the
  last level to the first, ``norm_out``, SiLU, ``conv_out``; no attention
  anywhere), ``VectorQuantizer`` (distances with ``addmm``, ``argmin``,
  codes through a one-hot matmul, indices ``(B, h·w)``; loss and
  straight-through only with ``return_loss``; ``get_codebook_entry``).
* ``modeling/titok.py`` ``PretrainedTokenizer``: the release's config
  (:data:`RELEASE_CONFIG`), ``encoder``, ``decoder``, ``quantize`` (1024 ×
  256, ``commitment_cost=0.25``); ``encode`` -> indices, ``decode`` =
  ``get_codebook_entry`` -> decoder -> ``clamp(0, 1)``. The official class
  loads its weights file in ``__init__``; here the weights are loaded by the
  caller. Images are in ``[0, 1]``.

TiTok's stage-2 / single-stage pixel decoder (``TiTok.pixel_decoder``) is
this ``Decoder`` and its ``pixel_quantize`` this ``VectorQuantizer``.
Module names are the official ones, so ``PretrainedTokenizer(...)
.state_dict()`` is an official-layout checkpoint. Plain torch: no vistok
import.
"""
import math
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

#: the config ``PretrainedTokenizer`` and ``TiTok.pixel_decoder`` build
RELEASE_CONFIG = dict(channel_mult=(1, 1, 2, 2, 4), num_resolutions=5,
                      dropout=0.0, hidden_channels=128, num_channels=3,
                      num_res_blocks=2, resolution=256, z_channels=256)
#: the release's codebook (``Pixel_Quantizer(num_embeddings=1024, ...)``)
RELEASE_CODEBOOK_SIZE = 1024


def make_config(**overrides):
    """:data:`RELEASE_CONFIG` with ``overrides``, as the attribute access
    object the official modules read (an OmegaConf config there);
    ``num_resolutions`` follows ``channel_mult`` unless given."""
    config = dict(RELEASE_CONFIG, **overrides)
    if 'channel_mult' in overrides and 'num_resolutions' not in overrides:
        config['num_resolutions'] = len(config['channel_mult'])
    return SimpleNamespace(**config)


# Conv2D with same padding
class Conv2dSame(nn.Conv2d):

    def calc_same_pad(self, i: int, k: int, s: int, d: int) -> int:
        return max((math.ceil(i / s) - 1) * s + (k - 1) * d + 1 - i, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.size()[-2:]
        pad_h = self.calc_same_pad(i=ih, k=self.kernel_size[0],
                                   s=self.stride[0], d=self.dilation[0])
        pad_w = self.calc_same_pad(i=iw, k=self.kernel_size[1],
                                   s=self.stride[1], d=self.dilation[1])
        if pad_h > 0 or pad_w > 0:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2,
                          pad_h - pad_h // 2])
        return super().forward(x)


class ResnetBlock(nn.Module):

    def __init__(self, in_channels: int, out_channels: int = None,
                 dropout_prob: float = 0.0):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.out_channels_ = (self.in_channels if self.out_channels is None
                              else self.out_channels)
        self.norm1 = nn.GroupNorm(num_groups=32, num_channels=in_channels,
                                  eps=1e-6, affine=True)
        self.conv1 = Conv2dSame(self.in_channels, self.out_channels_,
                                kernel_size=3, bias=False)
        self.norm2 = nn.GroupNorm(num_groups=32,
                                  num_channels=self.out_channels_, eps=1e-6,
                                  affine=True)
        self.dropout = nn.Dropout(dropout_prob)
        self.conv2 = Conv2dSame(self.out_channels_, self.out_channels_,
                                kernel_size=3, bias=False)
        if self.in_channels != self.out_channels_:
            self.nin_shortcut = Conv2dSame(self.out_channels_,
                                           self.out_channels_, kernel_size=1,
                                           bias=False)

    def forward(self, hidden_states):
        residual = hidden_states
        hidden_states = self.norm1(hidden_states)
        hidden_states = F.silu(hidden_states)
        hidden_states = self.conv1(hidden_states)
        hidden_states = self.norm2(hidden_states)
        hidden_states = F.silu(hidden_states)
        hidden_states = self.dropout(hidden_states)
        hidden_states = self.conv2(hidden_states)
        if self.in_channels != self.out_channels_:
            residual = self.nin_shortcut(hidden_states)
        return hidden_states + residual


class DownsamplingBlock(nn.Module):

    def __init__(self, config, block_idx: int):
        super().__init__()
        self.config = config
        self.block_idx = block_idx
        in_channel_mult = (1, ) + tuple(self.config.channel_mult)
        block_in = (self.config.hidden_channels *
                    in_channel_mult[self.block_idx])
        block_out = (self.config.hidden_channels *
                     self.config.channel_mult[self.block_idx])
        res_blocks = nn.ModuleList()
        for _ in range(self.config.num_res_blocks):
            res_blocks.append(ResnetBlock(block_in, block_out,
                                          dropout_prob=self.config.dropout))
            block_in = block_out
        self.block = res_blocks
        self.downsample = self.block_idx != self.config.num_resolutions - 1

    def forward(self, hidden_states):
        for res_block in self.block:
            hidden_states = res_block(hidden_states)
        if self.downsample:
            hidden_states = F.avg_pool2d(hidden_states, kernel_size=2,
                                         stride=2)
        return hidden_states


class UpsamplingBlock(nn.Module):

    def __init__(self, config, block_idx: int):
        super().__init__()
        self.config = config
        self.block_idx = block_idx
        if self.block_idx == self.config.num_resolutions - 1:
            block_in = (self.config.hidden_channels *
                        self.config.channel_mult[-1])
        else:
            block_in = (self.config.hidden_channels *
                        self.config.channel_mult[self.block_idx + 1])
        block_out = (self.config.hidden_channels *
                     self.config.channel_mult[self.block_idx])
        res_blocks = []
        for _ in range(self.config.num_res_blocks):
            res_blocks.append(ResnetBlock(block_in, block_out,
                                          dropout_prob=self.config.dropout))
            block_in = block_out
        self.block = nn.ModuleList(res_blocks)
        self.add_upsample = self.block_idx != 0
        if self.add_upsample:
            self.upsample_conv = Conv2dSame(block_out, block_out,
                                            kernel_size=3)

    def forward(self, hidden_states):
        for res_block in self.block:
            hidden_states = res_block(hidden_states)
        if self.add_upsample:
            hidden_states = F.interpolate(hidden_states, scale_factor=2.0,
                                          mode='nearest')
            hidden_states = self.upsample_conv(hidden_states)
        return hidden_states


class Encoder(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.conv_in = Conv2dSame(self.config.num_channels,
                                  self.config.hidden_channels, kernel_size=3,
                                  bias=False)
        downsample_blocks = []
        for i_level in range(self.config.num_resolutions):
            downsample_blocks.append(
                DownsamplingBlock(self.config, block_idx=i_level))
        self.down = nn.ModuleList(downsample_blocks)
        mid_channels = (self.config.hidden_channels *
                        self.config.channel_mult[-1])
        res_blocks = nn.ModuleList()
        for _ in range(self.config.num_res_blocks):
            res_blocks.append(ResnetBlock(mid_channels, mid_channels,
                                          dropout_prob=self.config.dropout))
        self.mid = res_blocks
        self.norm_out = nn.GroupNorm(num_groups=32, num_channels=mid_channels,
                                     eps=1e-6, affine=True)
        self.conv_out = Conv2dSame(mid_channels, self.config.z_channels,
                                   kernel_size=1)

    def forward(self, pixel_values):
        hidden_states = self.conv_in(pixel_values)
        for block in self.down:
            hidden_states = block(hidden_states)
        for block in self.mid:
            hidden_states = block(hidden_states)
        hidden_states = self.norm_out(hidden_states)
        hidden_states = F.silu(hidden_states)
        return self.conv_out(hidden_states)


class Decoder(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.config = config
        block_in = (self.config.hidden_channels *
                    self.config.channel_mult[self.config.num_resolutions - 1])
        self.conv_in = Conv2dSame(self.config.z_channels, block_in,
                                  kernel_size=3)
        res_blocks = nn.ModuleList()
        for _ in range(self.config.num_res_blocks):
            res_blocks.append(ResnetBlock(block_in, block_in,
                                          dropout_prob=self.config.dropout))
        self.mid = res_blocks
        upsample_blocks = []
        for i_level in reversed(range(self.config.num_resolutions)):
            upsample_blocks.append(
                UpsamplingBlock(self.config, block_idx=i_level))
        # reverse to get consistent order
        self.up = nn.ModuleList(list(reversed(upsample_blocks)))
        block_out = self.config.hidden_channels * self.config.channel_mult[0]
        self.norm_out = nn.GroupNorm(num_groups=32, num_channels=block_out,
                                     eps=1e-6, affine=True)
        self.conv_out = Conv2dSame(block_out, self.config.num_channels,
                                   kernel_size=3)

    def forward(self, hidden_states):
        hidden_states = self.conv_in(hidden_states)
        for block in self.mid:
            hidden_states = block(hidden_states)
        for block in reversed(self.up):
            hidden_states = block(hidden_states)
        hidden_states = self.norm_out(hidden_states)
        hidden_states = F.silu(hidden_states)
        return self.conv_out(hidden_states)


class VectorQuantizer(nn.Module):

    def __init__(self, num_embeddings, embedding_dim, commitment_cost):
        super().__init__()
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.commitment_cost = commitment_cost
        self.embedding = nn.Embedding(num_embeddings, embedding_dim)
        self.embedding.weight.data.uniform_(-1.0 / num_embeddings,
                                            1.0 / num_embeddings)

    def forward(self, hidden_states, return_loss=False):
        # reshape z -> (batch, height, width, channel) and flatten
        hidden_states = hidden_states.permute(0, 2, 3, 1).contiguous()
        distances = self.compute_distances(hidden_states)
        min_encoding_indices = torch.argmin(distances, axis=1).unsqueeze(1)
        min_encodings = torch.zeros(min_encoding_indices.shape[0],
                                    self.num_embeddings).to(hidden_states)
        min_encodings.scatter_(1, min_encoding_indices, 1)

        # get quantized latent vectors
        z_q = torch.matmul(min_encodings,
                           self.embedding.weight).view(hidden_states.shape)

        # reshape to (batch, num_tokens)
        min_encoding_indices = min_encoding_indices.reshape(
            hidden_states.shape[0], -1)

        # compute loss for embedding
        loss = None
        if return_loss:
            loss = torch.mean((z_q.detach() - hidden_states)**2) + \
                self.commitment_cost * torch.mean(
                    (z_q - hidden_states.detach())**2)
            # preserve gradients
            z_q = hidden_states + (z_q - hidden_states).detach()

        # reshape back to match original input shape
        z_q = z_q.permute(0, 3, 1, 2).contiguous()
        return z_q, min_encoding_indices, loss

    def compute_distances(self, hidden_states):
        # distances from z to embeddings e_j (z - e)^2 = z^2 + e^2 - 2 e * z
        hidden_states_flattended = hidden_states.reshape(
            (-1, self.embedding_dim))
        emb_weights = self.embedding.weight.t()
        inputs_norm_sq = hidden_states_flattended.pow(2.0).sum(dim=1,
                                                               keepdim=True)
        codebook_t_norm_sq = emb_weights.pow(2.0).sum(dim=0, keepdim=True)
        return torch.addmm(inputs_norm_sq + codebook_t_norm_sq,
                           hidden_states_flattended, emb_weights, alpha=-2.0)

    def get_codebook_entry(self, indices):
        # indices are expected to be of shape (batch, num_tokens)
        if len(indices.shape) == 2:
            batch, num_tokens = indices.shape
            z_q = self.embedding(indices)
            side = int(math.sqrt(num_tokens))
            z_q = z_q.reshape(batch, side, side, -1).permute(0, 3, 1, 2)
        elif len(indices.shape) == 3:
            batch, height, width = indices.shape
            indices = indices.view(batch, -1)
            z_q = self.embedding(indices)
            z_q = z_q.reshape(batch, height, width, -1).permute(0, 3, 1, 2)
        else:
            raise NotImplementedError(indices.shape)
        return z_q


class PretrainedTokenizer(nn.Module):
    """TiTok's wrapper of the release, built from ``config`` (default: the
    release's) without loading a file."""

    def __init__(self, config=None,
                 num_embeddings: int = RELEASE_CODEBOOK_SIZE):
        super().__init__()
        config = config or make_config()
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quantize = VectorQuantizer(num_embeddings=num_embeddings,
                                        embedding_dim=config.z_channels,
                                        commitment_cost=0.25)

    @torch.no_grad()
    def encode(self, x):
        hidden_states = self.encoder(x)
        _, codebook_indices, _ = self.quantize(hidden_states)
        return codebook_indices.detach()

    @torch.no_grad()
    def decode(self, codes):
        quantized_states = self.quantize.get_codebook_entry(codes)
        rec_images = self.decoder(quantized_states)
        rec_images = torch.clamp(rec_images, 0.0, 1.0)
        return rec_images.detach()
