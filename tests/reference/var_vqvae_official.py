"""An independent reference of VAR's multi-scale VQVAE tokenizer
(FoundationVision/VAR, MIT licence; the ``vae_ch160v4096z32.pth`` release),
written for the converter test from the module definitions at commit
78b95394fc5896192e3a003e4b295f8ea743c48f:

* ``models/basic_vae.py``: ``Encoder`` / ``Decoder`` (the stable-diffusion
  halves: GroupNorm(32, eps 1e-6), swish, ``ResnetBlock`` with a 1x1
  ``nin_shortcut`` on the input when the channels change and its dropout an
  ``Identity`` at ``dropout <= 1e-6``; ``Downsample2x`` = pad ``(0, 1, 0,
  1)`` then a stride-2 conv3x3; ``Upsample2x`` = nearest x2 then conv3x3).
  Attention (``AttnBlock``: one fused 1x1 ``qkv`` conv whose output
  channels are ``[q | k | v]``, ``softmax(q^T k / sqrt(C))`` over the keys,
  ``proj_out``, residual) follows every ResnetBlock of the **lowest
  resolution level only** (``i_level == num_resolutions - 1 and using_sa``,
  in both halves) and sits between the middle blocks (``using_mid_sa``).
  The decoder runs ``num_res_blocks + 1`` blocks per level and does not
  clamp.
* ``models/quant.py``: ``VectorQuantizer2`` — for each scale ``pn`` (small
  to large) the residual ``f_rest`` is area-down-sampled to ``pn x pn``
  (not at the last scale), looked up by squared Euclidean distance
  (``using_znorm=False``, VAR's default) or cosine (``using_znorm=True``),
  the code map is bicubic-up-sampled to the grid (not at the last scale),
  passed through ``quant_resi[si / (SN - 1)]`` and added to ``f_hat`` /
  subtracted from ``f_rest``; ``f_to_idxBl_or_fhat`` (encode),
  ``embed_to_fhat`` (decode), ``idxBl_to_var_input`` (VAR's teacher-forcing
  input); ``Phi`` = ``h (1 - r) + conv3x3(h) r``; ``PhiPartiallyShared``
  picks the conv whose tick (``linspace(1/3K, 1 - 1/3K, K)`` for ``K = 4``,
  else ``linspace(1/2K, 1 - 1/2K, K)``) is nearest to ``si / (SN - 1)``.
  ``forward`` (training) is kept without its distributed usage bookkeeping
  (``ema_vocab_hit_SV`` updates and the usage percentages, which call
  ``torch.distributed`` unconditionally); its loss and straight-through
  output are the official ones.
* ``models/vqvae.py``: ``VQVAE`` with the hard-coded ``ddconfig`` (ch_mult
  ``(1, 1, 2, 2, 4)``, 2 ResnetBlocks, attention on), 3x3 ``quant_conv`` /
  ``post_quant_conv`` (``quant_conv_ks=3``), ``img_to_idxBl``,
  ``fhat_to_img`` / ``idxBl_to_img`` / ``embed_to_img`` /
  ``img_to_reconstructed_img`` (these clamp the images to ``[-1, 1]``).
  The released file is the state dict of ``VQVAE(vocab_size=4096,
  z_channels=32, ch=160, test_mode=True, share_quant_resi=4,
  v_patch_nums=(1, 2, 3, 4, 5, 6, 8, 10, 13, 16))`` (``build_vae_var`` in
  ``models/__init__.py``; ``train.py`` loads it with ``strict=True``).
  Images are in ``[-1, 1]`` (``utils/data.py`` ``normalize_01_into_pm1``).

Module names are the official ones, so ``VQVAE(...).state_dict()`` is an
official-layout checkpoint. Plain torch + numpy: no vistok import.
"""
from typing import List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

#: VAR's scales (``build_vae_var``'s ``patch_nums``)
VAR_PATCH_NUMS = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)


# --------------------------------------------------------------- basic_vae
def Normalize(in_channels, num_groups=32):
    return nn.GroupNorm(num_groups=num_groups, num_channels=in_channels,
                        eps=1e-6, affine=True)


class Upsample2x(nn.Module):

    def __init__(self, in_channels):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, kernel_size=3,
                              stride=1, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode='nearest'))


class Downsample2x(nn.Module):

    def __init__(self, in_channels):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, kernel_size=3,
                              stride=2, padding=0)

    def forward(self, x):
        return self.conv(F.pad(x, pad=(0, 1, 0, 1), mode='constant',
                               value=0))


class ResnetBlock(nn.Module):

    def __init__(self, *, in_channels, out_channels=None, dropout):
        super().__init__()
        self.in_channels = in_channels
        out_channels = in_channels if out_channels is None else out_channels
        self.out_channels = out_channels
        self.norm1 = Normalize(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3,
                               stride=1, padding=1)
        self.norm2 = Normalize(out_channels)
        self.dropout = (nn.Dropout(dropout)
                        if dropout > 1e-6 else nn.Identity())
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3,
                               stride=1, padding=1)
        if self.in_channels != self.out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels,
                                          kernel_size=1, stride=1, padding=0)
        else:
            self.nin_shortcut = nn.Identity()

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):

    def __init__(self, in_channels):
        super().__init__()
        self.C = in_channels
        self.norm = Normalize(in_channels)
        self.qkv = nn.Conv2d(in_channels, 3 * in_channels, kernel_size=1,
                             stride=1, padding=0)
        self.w_ratio = int(in_channels)**(-0.5)
        self.proj_out = nn.Conv2d(in_channels, in_channels, kernel_size=1,
                                  stride=1, padding=0)

    def forward(self, x):
        qkv = self.qkv(self.norm(x))
        B, _, H, W = qkv.shape
        C = self.C
        q, k, v = qkv.reshape(B, 3, C, H, W).unbind(1)
        q = q.view(B, C, H * W).contiguous().permute(0, 2, 1).contiguous()
        k = k.view(B, C, H * W).contiguous()
        w = torch.bmm(q, k).mul_(self.w_ratio)  # B, HW (q), HW (k)
        w = F.softmax(w, dim=2)
        v = v.view(B, C, H * W).contiguous()
        w = w.permute(0, 2, 1).contiguous()
        h = torch.bmm(v, w).view(B, C, H, W).contiguous()
        return x + self.proj_out(h)


def make_attn(in_channels, using_sa=True):
    return AttnBlock(in_channels) if using_sa else nn.Identity()


class Encoder(nn.Module):

    def __init__(self, *, ch=128, ch_mult=(1, 2, 4, 8), num_res_blocks=2,
                 dropout=0.0, in_channels=3, z_channels, double_z=False,
                 using_sa=True, using_mid_sa=True):
        super().__init__()
        self.ch = ch
        self.num_resolutions = len(ch_mult)
        self.num_res_blocks = num_res_blocks
        self.conv_in = nn.Conv2d(in_channels, self.ch, kernel_size=3,
                                 stride=1, padding=1)
        in_ch_mult = (1, ) + tuple(ch_mult)
        self.down = nn.ModuleList()
        for i_level in range(self.num_resolutions):
            block, attn = nn.ModuleList(), nn.ModuleList()
            block_in = ch * in_ch_mult[i_level]
            block_out = ch * ch_mult[i_level]
            for _ in range(self.num_res_blocks):
                block.append(ResnetBlock(in_channels=block_in,
                                         out_channels=block_out,
                                         dropout=dropout))
                block_in = block_out
                if i_level == self.num_resolutions - 1 and using_sa:
                    attn.append(make_attn(block_in, using_sa=True))
            down = nn.Module()
            down.block = block
            down.attn = attn
            if i_level != self.num_resolutions - 1:
                down.downsample = Downsample2x(block_in)
            self.down.append(down)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(in_channels=block_in,
                                       out_channels=block_in, dropout=dropout)
        self.mid.attn_1 = make_attn(block_in, using_sa=using_mid_sa)
        self.mid.block_2 = ResnetBlock(in_channels=block_in,
                                       out_channels=block_in, dropout=dropout)
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(
            block_in, (2 * z_channels if double_z else z_channels),
            kernel_size=3, stride=1, padding=1)

    def forward(self, x):
        h = self.conv_in(x)
        for i_level in range(self.num_resolutions):
            for i_block in range(self.num_res_blocks):
                h = self.down[i_level].block[i_block](h)
                if len(self.down[i_level].attn) > 0:
                    h = self.down[i_level].attn[i_block](h)
            if i_level != self.num_resolutions - 1:
                h = self.down[i_level].downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):

    def __init__(self, *, ch=128, ch_mult=(1, 2, 4, 8), num_res_blocks=2,
                 dropout=0.0, in_channels=3, z_channels, using_sa=True,
                 using_mid_sa=True):
        super().__init__()
        self.ch = ch
        self.num_resolutions = len(ch_mult)
        self.num_res_blocks = num_res_blocks
        block_in = ch * ch_mult[self.num_resolutions - 1]
        self.conv_in = nn.Conv2d(z_channels, block_in, kernel_size=3,
                                 stride=1, padding=1)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(in_channels=block_in,
                                       out_channels=block_in, dropout=dropout)
        self.mid.attn_1 = make_attn(block_in, using_sa=using_mid_sa)
        self.mid.block_2 = ResnetBlock(in_channels=block_in,
                                       out_channels=block_in, dropout=dropout)
        self.up = nn.ModuleList()
        for i_level in reversed(range(self.num_resolutions)):
            block, attn = nn.ModuleList(), nn.ModuleList()
            block_out = ch * ch_mult[i_level]
            for _ in range(self.num_res_blocks + 1):
                block.append(ResnetBlock(in_channels=block_in,
                                         out_channels=block_out,
                                         dropout=dropout))
                block_in = block_out
                if i_level == self.num_resolutions - 1 and using_sa:
                    attn.append(make_attn(block_in, using_sa=True))
            up = nn.Module()
            up.block = block
            up.attn = attn
            if i_level != 0:
                up.upsample = Upsample2x(block_in)
            self.up.insert(0, up)
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, in_channels, kernel_size=3,
                                  stride=1, padding=1)

    def forward(self, z):
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(
            self.conv_in(z))))
        for i_level in reversed(range(self.num_resolutions)):
            for i_block in range(self.num_res_blocks + 1):
                h = self.up[i_level].block[i_block](h)
                if len(self.up[i_level].attn) > 0:
                    h = self.up[i_level].attn[i_block](h)
            if i_level != 0:
                h = self.up[i_level].upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


# ------------------------------------------------------------------- quant
class Phi(nn.Conv2d):

    def __init__(self, embed_dim, quant_resi):
        ks = 3
        super().__init__(in_channels=embed_dim, out_channels=embed_dim,
                         kernel_size=ks, stride=1, padding=ks // 2)
        self.resi_ratio = abs(quant_resi)

    def forward(self, h_BChw):
        return h_BChw.mul(1 - self.resi_ratio) + super().forward(
            h_BChw).mul_(self.resi_ratio)


def _ticks(K):
    return (np.linspace(1 / 3 / K, 1 - 1 / 3 / K, K)
            if K == 4 else np.linspace(1 / 2 / K, 1 - 1 / 2 / K, K))


class PhiShared(nn.Module):

    def __init__(self, qresi):
        super().__init__()
        self.qresi = qresi

    def __getitem__(self, _):
        return self.qresi


class PhiPartiallyShared(nn.Module):

    def __init__(self, qresi_ls: nn.ModuleList):
        super().__init__()
        self.qresi_ls = qresi_ls
        self.ticks = _ticks(len(qresi_ls))

    def __getitem__(self, at_from_0_to_1: float):
        return self.qresi_ls[np.argmin(
            np.abs(self.ticks - at_from_0_to_1)).item()]


class PhiNonShared(nn.ModuleList):

    def __init__(self, qresi: List):
        super().__init__(qresi)
        self.ticks = _ticks(len(qresi))

    def __getitem__(self, at_from_0_to_1: float):
        return super().__getitem__(
            np.argmin(np.abs(self.ticks - at_from_0_to_1)).item())


class VectorQuantizer2(nn.Module):

    def __init__(self, vocab_size, Cvae, using_znorm, beta: float = 0.25,
                 default_qresi_counts=0, v_patch_nums=None, quant_resi=0.5,
                 share_quant_resi=4):
        super().__init__()
        self.vocab_size = vocab_size
        self.Cvae = Cvae
        self.using_znorm = using_znorm
        self.v_patch_nums = v_patch_nums
        self.quant_resi_ratio = quant_resi

        def phi():
            return (Phi(Cvae, quant_resi)
                    if abs(quant_resi) > 1e-6 else nn.Identity())

        if share_quant_resi == 0:
            self.quant_resi = PhiNonShared([
                phi()
                for _ in range(default_qresi_counts or len(v_patch_nums))
            ])
        elif share_quant_resi == 1:
            self.quant_resi = PhiShared(phi())
        else:
            self.quant_resi = PhiPartiallyShared(
                nn.ModuleList([phi() for _ in range(share_quant_resi)]))
        self.register_buffer(
            'ema_vocab_hit_SV',
            torch.full((len(self.v_patch_nums), self.vocab_size),
                       fill_value=0.0))
        self.beta = beta
        self.embedding = nn.Embedding(self.vocab_size, self.Cvae)

    def _lookup(self, z_NC):
        """The nearest code of each row (VAR's two branches, verbatim)."""
        if self.using_znorm:
            z_NC = F.normalize(z_NC, dim=-1)
            return torch.argmax(
                z_NC @ F.normalize(self.embedding.weight.data.T, dim=0),
                dim=1)
        d_no_grad = torch.sum(z_NC.square(), dim=1, keepdim=True) + torch.sum(
            self.embedding.weight.data.square(), dim=1, keepdim=False)
        d_no_grad.addmm_(z_NC, self.embedding.weight.data.T, alpha=-2,
                         beta=1)
        return torch.argmin(d_no_grad, dim=1)

    def forward(self, f_BChw):
        """The training pass without the usage bookkeeping: returns
        ``(f_hat straight-through, mean_vq_loss)``."""
        f_BChw = f_BChw.float()
        B, C, H, W = f_BChw.shape
        f_no_grad = f_BChw.detach()
        f_rest = f_no_grad.clone()
        f_hat = torch.zeros_like(f_rest)
        mean_vq_loss = 0.0
        SN = len(self.v_patch_nums)
        for si, pn in enumerate(self.v_patch_nums):
            rest_NC = (F.interpolate(f_rest, size=(pn, pn), mode='area')
                       if si != SN - 1 else f_rest).permute(0, 2, 3,
                                                            1).reshape(-1, C)
            idx_N = self._lookup(rest_NC)
            idx_Bhw = idx_N.view(B, pn, pn)
            h_BChw = self.embedding(idx_Bhw).permute(0, 3, 1, 2)
            if si != SN - 1:
                h_BChw = F.interpolate(h_BChw, size=(H, W), mode='bicubic')
            h_BChw = self.quant_resi[si / (SN - 1)](h_BChw.contiguous())
            f_hat = f_hat + h_BChw
            f_rest -= h_BChw
            mean_vq_loss += F.mse_loss(f_hat.data, f_BChw).mul_(
                self.beta) + F.mse_loss(f_hat, f_no_grad)
        mean_vq_loss *= 1. / SN
        f_hat = (f_hat.data - f_no_grad).add_(f_BChw)
        return f_hat, mean_vq_loss

    def embed_to_fhat(self, ms_h_BChw, all_to_max_scale=True,
                      last_one=False):
        ls_f_hat_BChw = []
        B = ms_h_BChw[0].shape[0]
        H = W = self.v_patch_nums[-1]
        SN = len(self.v_patch_nums)
        assert all_to_max_scale  # the other branch is "experimental" in VAR
        f_hat = ms_h_BChw[0].new_zeros(B, self.Cvae, H, W,
                                       dtype=torch.float32)
        for si, pn in enumerate(self.v_patch_nums):
            h_BChw = ms_h_BChw[si]
            if si < len(self.v_patch_nums) - 1:
                h_BChw = F.interpolate(h_BChw, size=(H, W), mode='bicubic')
            h_BChw = self.quant_resi[si / (SN - 1)](h_BChw)
            f_hat.add_(h_BChw)
            if last_one:
                ls_f_hat_BChw = f_hat
            else:
                ls_f_hat_BChw.append(f_hat.clone())
        return ls_f_hat_BChw

    def f_to_idxBl_or_fhat(self, f_BChw, to_fhat: bool,
                           v_patch_nums: Optional[Sequence[int]] = None):
        B, C, H, W = f_BChw.shape
        f_rest = f_BChw.detach().clone()
        f_hat = torch.zeros_like(f_rest)
        out = []
        patch_hws = [(pn, pn) for pn in (v_patch_nums or self.v_patch_nums)]
        assert patch_hws[-1][0] == H and patch_hws[-1][1] == W
        SN = len(patch_hws)
        for si, (ph, pw) in enumerate(patch_hws):
            z_NC = (F.interpolate(f_rest, size=(ph, pw), mode='area')
                    if si != SN - 1 else f_rest).permute(0, 2, 3,
                                                         1).reshape(-1, C)
            idx_N = self._lookup(z_NC)
            idx_Bhw = idx_N.view(B, ph, pw)
            h_BChw = self.embedding(idx_Bhw).permute(0, 3, 1, 2)
            if si != SN - 1:
                h_BChw = F.interpolate(h_BChw, size=(H, W), mode='bicubic')
            h_BChw = self.quant_resi[si / (SN - 1)](h_BChw.contiguous())
            f_hat.add_(h_BChw)
            f_rest.sub_(h_BChw)
            out.append(f_hat.clone() if to_fhat else idx_N.reshape(
                B, ph * pw))
        return out

    def idxBl_to_var_input(self, gt_ms_idx_Bl):
        next_scales = []
        B = gt_ms_idx_Bl[0].shape[0]
        C = self.Cvae
        H = W = self.v_patch_nums[-1]
        SN = len(self.v_patch_nums)
        f_hat = gt_ms_idx_Bl[0].new_zeros(B, C, H, W, dtype=torch.float32)
        pn_next = self.v_patch_nums[0]
        for si in range(SN - 1):
            h_BChw = F.interpolate(
                self.embedding(gt_ms_idx_Bl[si]).transpose_(1, 2).view(
                    B, C, pn_next, pn_next), size=(H, W), mode='bicubic')
            f_hat.add_(self.quant_resi[si / (SN - 1)](h_BChw))
            pn_next = self.v_patch_nums[si + 1]
            next_scales.append(
                F.interpolate(f_hat, size=(pn_next, pn_next),
                              mode='area').view(B, C, -1).transpose(1, 2))
        return torch.cat(next_scales, dim=1) if next_scales else None


# ------------------------------------------------------------------- vqvae
class VQVAE(nn.Module):

    def __init__(self, vocab_size=4096, z_channels=32, ch=128, dropout=0.0,
                 beta=0.25, using_znorm=False, quant_conv_ks=3,
                 quant_resi=0.5, share_quant_resi=4, default_qresi_counts=0,
                 v_patch_nums=VAR_PATCH_NUMS, test_mode=True):
        super().__init__()
        self.V, self.Cvae = vocab_size, z_channels
        ddconfig = dict(dropout=dropout, ch=ch, z_channels=z_channels,
                        in_channels=3, ch_mult=(1, 1, 2, 2, 4),
                        num_res_blocks=2, using_sa=True, using_mid_sa=True)
        self.encoder = Encoder(double_z=False, **ddconfig)
        self.decoder = Decoder(**ddconfig)
        self.vocab_size = vocab_size
        self.downsample = 2**(len(ddconfig['ch_mult']) - 1)
        self.quantize = VectorQuantizer2(
            vocab_size=vocab_size, Cvae=self.Cvae, using_znorm=using_znorm,
            beta=beta, default_qresi_counts=default_qresi_counts,
            v_patch_nums=v_patch_nums, quant_resi=quant_resi,
            share_quant_resi=share_quant_resi)
        self.quant_conv = nn.Conv2d(self.Cvae, self.Cvae, quant_conv_ks,
                                    stride=1, padding=quant_conv_ks // 2)
        self.post_quant_conv = nn.Conv2d(self.Cvae, self.Cvae, quant_conv_ks,
                                         stride=1,
                                         padding=quant_conv_ks // 2)
        if test_mode:
            self.eval()
            [p.requires_grad_(False) for p in self.parameters()]

    def forward(self, inp):
        f_hat, vq_loss = self.quantize(self.quant_conv(self.encoder(inp)))
        return self.decoder(self.post_quant_conv(f_hat)), vq_loss

    def fhat_to_img(self, f_hat):
        return self.decoder(self.post_quant_conv(f_hat)).clamp_(-1, 1)

    def img_to_idxBl(self, inp_img_no_grad, v_patch_nums=None):
        f = self.quant_conv(self.encoder(inp_img_no_grad))
        return self.quantize.f_to_idxBl_or_fhat(f, to_fhat=False,
                                                v_patch_nums=v_patch_nums)

    def idxBl_to_img(self, ms_idx_Bl, same_shape: bool, last_one=False):
        B = ms_idx_Bl[0].shape[0]
        ms_h_BChw = []
        for idx_Bl in ms_idx_Bl:
            pn = round(idx_Bl.shape[1]**0.5)
            ms_h_BChw.append(
                self.quantize.embedding(idx_Bl).transpose(1, 2).view(
                    B, self.Cvae, pn, pn))
        return self.embed_to_img(ms_h_BChw, all_to_max_scale=same_shape,
                                 last_one=last_one)

    def embed_to_img(self, ms_h_BChw, all_to_max_scale: bool,
                     last_one=False):
        if last_one:
            return self.decoder(self.post_quant_conv(
                self.quantize.embed_to_fhat(
                    ms_h_BChw, all_to_max_scale=all_to_max_scale,
                    last_one=True))).clamp_(-1, 1)
        return [
            self.decoder(self.post_quant_conv(f_hat)).clamp_(-1, 1)
            for f_hat in self.quantize.embed_to_fhat(
                ms_h_BChw, all_to_max_scale=all_to_max_scale,
                last_one=False)
        ]

    def img_to_reconstructed_img(self, x, v_patch_nums=None,
                                 last_one=False):
        f = self.quant_conv(self.encoder(x))
        ls_f_hat_BChw = self.quantize.f_to_idxBl_or_fhat(
            f, to_fhat=True, v_patch_nums=v_patch_nums)
        if last_one:
            return self.decoder(self.post_quant_conv(
                ls_f_hat_BChw[-1])).clamp_(-1, 1)
        return [
            self.decoder(self.post_quant_conv(f_hat)).clamp_(-1, 1)
            for f_hat in ls_f_hat_BChw
        ]
