"""An independent reference of VAR's class-conditional transformer
(FoundationVision/VAR, MIT licence; Tian et al. 2024, "Visual
Autoregressive Modeling: Scalable Image Generation via Next-Scale
Prediction"), written for the converter test from the module definitions
at commit 78b95394fc5896192e3a003e4b295f8ea743c48f:

* ``models/var.py`` ``VAR``: ``word_embed`` (Linear ``Cvae -> C``),
  ``class_emb`` (``num_classes + 1`` rows: the last one is the class
  dropped by ``cond_drop_rate``, the unconditional branch of guidance),
  ``pos_start`` ``(1, first_l, C)``, ``pos_1LC`` ``(1, L, C)``,
  ``lvl_embed`` (one row per scale), ``shared_ada_lin`` (an Identity unless
  ``shared_aln``: ``SiLU`` + ``SharedAdaLin``), ``blocks``, ``head_nm``,
  ``head``; the buffers ``lvl_1L`` (scale of each position) and
  ``attn_bias_for_masking`` (0 where a position may attend, ``-inf``
  elsewhere: block-causal over scales). ``forward(label_B,
  x_BLCv_wo_first_l)`` is teacher forcing (label dropout drawn with
  ``torch.rand`` on every call, as the official code does, also in eval
  mode); ``autoregressive_infer_cfg`` is the KV-cached loop with guidance
  ``(1 + t)·ℓ_c − t·ℓ_u``, ``t = cfg · si / (n − 1)`` at scale ``si``,
  top-k / top-p filtering, one ``torch.multinomial`` draw per scale from
  ``rng`` and the running ``f_hat`` from the quantizer's
  ``get_next_autoregressive_input``.
* ``models/basic_var.py``: ``SelfAttention`` (bias-free ``mat_qkv``, the
  biases ``q_bias | zero_k_bias | v_bias``, with ``attn_l2_norm``
  l2-normalised q and k and a learned per-head ``scale_mul_1H11`` clamped
  at ``log 100``, else scale ``0.25 / sqrt(D_h)``; the torch
  ``scaled_dot_product_attention`` path, the one taken without flash-attn
  / xformers), ``FFN`` (tanh-GELU), ``AdaLNSelfAttn`` (six AdaLN vectors
  ``γ1 γ2 s1 s2 b1 b2`` from ``ada_lin`` or ``ada_gss + shared``),
  ``AdaLNBeforeHead``.
* ``models/helpers.py``: ``sample_with_top_k_top_p_``, ``DropPath``.
* ``models/quant.py`` ``VectorQuantizer2``, only what the transformer
  uses: ``embedding``, ``quant_resi`` (``Phi`` 3x3 convs blended with
  ratio 0.5, ``PhiPartiallyShared`` / ``PhiShared`` / ``PhiNonShared``
  chosen by the scale's position ``si / (n − 1)``), ``idxBl_to_var_input``
  (the teacher-forcing input) and ``get_next_autoregressive_input``.
* ``models/__init__.py`` ``build_vae_var``: the VAR hyper-parameters of the
  released ``var_d{16,20,24,30}.pth`` as a function of ``depth``
  (:func:`build_var`).

Left out: the fused / flash / xformers kernels (numerically the same
function), the progressive-training branches (``prog_si`` is always -1),
``init_weights`` (tests draw their own weights), the VQVAE's encoder and
decoder (``autoregressive_infer_cfg`` returns the sampled indices and
``f_hat`` instead of ``vae.fhat_to_img(f_hat)``), the ``more_smooth``
Gumbel-softmax visualisation path (not used for FID) and the CUDA
autocast contexts (fp32 throughout). Module and buffer names are the
official ones, so ``RefVAR(...).state_dict()`` is an official-layout
``var_d*.pth``. Plain torch + numpy: no vistok import.
"""
import math
from functools import partial
from typing import List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


# --- models/helpers.py ------------------------------------------------------
def sample_with_top_k_top_p_(logits_BlV: torch.Tensor, top_k: int = 0,
                             top_p: float = 0.0, rng=None,
                             num_samples=1) -> torch.Tensor:
    B, l, V = logits_BlV.shape  # noqa: E741 (VAR's names)
    if top_k > 0:
        idx_to_remove = logits_BlV < logits_BlV.topk(
            top_k, largest=True, sorted=False, dim=-1)[0].amin(
                dim=-1, keepdim=True)
        logits_BlV.masked_fill_(idx_to_remove, -torch.inf)
    if top_p > 0:
        sorted_logits, sorted_idx = logits_BlV.sort(dim=-1, descending=False)
        sorted_idx_to_remove = sorted_logits.softmax(dim=-1).cumsum_(
            dim=-1) <= (1 - top_p)
        sorted_idx_to_remove[..., -1:] = False
        logits_BlV.masked_fill_(
            sorted_idx_to_remove.scatter(sorted_idx.ndim - 1, sorted_idx,
                                         sorted_idx_to_remove), -torch.inf)
    replacement = num_samples >= 0
    num_samples = abs(num_samples)
    return torch.multinomial(logits_BlV.softmax(dim=-1).view(-1, V),
                             num_samples=num_samples,
                             replacement=replacement,
                             generator=rng).view(B, l, num_samples)


def drop_path(x, drop_prob: float = 0., training: bool = False,
              scale_by_keep: bool = True):
    if drop_prob == 0. or not training:
        return x
    keep_prob = 1 - drop_prob
    shape = (x.shape[0], ) + (1, ) * (x.ndim - 1)
    random_tensor = x.new_empty(shape).bernoulli_(keep_prob)
    if keep_prob > 0.0 and scale_by_keep:
        random_tensor.div_(keep_prob)
    return x * random_tensor


class DropPath(nn.Module):

    def __init__(self, drop_prob: float = 0., scale_by_keep: bool = True):
        super().__init__()
        self.drop_prob = drop_prob
        self.scale_by_keep = scale_by_keep

    def forward(self, x):
        return drop_path(x, self.drop_prob, self.training, self.scale_by_keep)


# --- models/quant.py (the parts VAR's transformer uses) ---------------------
class Phi(nn.Conv2d):

    def __init__(self, embed_dim, quant_resi):
        ks = 3
        super().__init__(in_channels=embed_dim, out_channels=embed_dim,
                         kernel_size=ks, stride=1, padding=ks // 2)
        self.resi_ratio = abs(quant_resi)

    def forward(self, h_BChw):
        return h_BChw.mul(1 - self.resi_ratio) + super().forward(
            h_BChw).mul_(self.resi_ratio)


class PhiShared(nn.Module):

    def __init__(self, qresi: Phi):
        super().__init__()
        self.qresi = qresi

    def __getitem__(self, _) -> Phi:
        return self.qresi


class PhiPartiallyShared(nn.Module):

    def __init__(self, qresi_ls: nn.ModuleList):
        super().__init__()
        self.qresi_ls = qresi_ls
        K = len(qresi_ls)
        self.ticks = np.linspace(1 / 3 / K, 1 - 1 / 3 / K, K) if K == 4 \
            else np.linspace(1 / 2 / K, 1 - 1 / 2 / K, K)

    def __getitem__(self, at_from_0_to_1: float) -> Phi:
        return self.qresi_ls[np.argmin(np.abs(self.ticks -
                                              at_from_0_to_1)).item()]


class PhiNonShared(nn.ModuleList):

    def __init__(self, qresi: List):
        super().__init__(qresi)
        K = len(qresi)
        self.ticks = np.linspace(1 / 3 / K, 1 - 1 / 3 / K, K) if K == 4 \
            else np.linspace(1 / 2 / K, 1 - 1 / 2 / K, K)

    def __getitem__(self, at_from_0_to_1: float) -> Phi:
        return super().__getitem__(
            np.argmin(np.abs(self.ticks - at_from_0_to_1)).item())


class VectorQuantizer2(nn.Module):
    """``VectorQuantizer2`` without its VQVAE-training ``forward`` and
    encoding (``f_to_idxBl_or_fhat``): the transformer only decodes."""

    def __init__(self, vocab_size, Cvae, using_znorm, beta: float = 0.25,
                 default_qresi_counts=0, v_patch_nums=None, quant_resi=0.5,
                 share_quant_resi=4):
        super().__init__()
        self.vocab_size = vocab_size
        self.Cvae = Cvae
        self.using_znorm = using_znorm
        self.v_patch_nums = v_patch_nums
        self.quant_resi_ratio = quant_resi
        if share_quant_resi == 0:
            self.quant_resi = PhiNonShared([
                (Phi(Cvae, quant_resi) if abs(quant_resi) > 1e-6 else
                 nn.Identity())
                for _ in range(default_qresi_counts or len(self.v_patch_nums))
            ])
        elif share_quant_resi == 1:
            self.quant_resi = PhiShared(
                Phi(Cvae, quant_resi) if abs(quant_resi) > 1e-6 else nn.
                Identity())
        else:
            self.quant_resi = PhiPartiallyShared(
                nn.ModuleList([(Phi(Cvae, quant_resi) if abs(quant_resi) >
                                1e-6 else nn.Identity())
                               for _ in range(share_quant_resi)]))
        self.register_buffer(
            'ema_vocab_hit_SV',
            torch.full((len(self.v_patch_nums), self.vocab_size),
                       fill_value=0.0))
        self.record_hit = 0
        self.beta = beta
        self.embedding = nn.Embedding(self.vocab_size, self.Cvae)
        self.prog_si = -1

    def idxBl_to_var_input(self,
                           gt_ms_idx_Bl: List[torch.Tensor]) -> torch.Tensor:
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
        return torch.cat(next_scales, dim=1) if len(next_scales) else None

    def get_next_autoregressive_input(
            self, si: int, SN: int, f_hat: torch.Tensor,
            h_BChw: torch.Tensor) -> Tuple[Optional[torch.Tensor],
                                           torch.Tensor]:
        HW = self.v_patch_nums[-1]
        if si != SN - 1:
            h = self.quant_resi[si / (SN - 1)](F.interpolate(
                h_BChw, size=(HW, HW), mode='bicubic'))
            f_hat.add_(h)
            return f_hat, F.interpolate(
                f_hat, size=(self.v_patch_nums[si + 1],
                             self.v_patch_nums[si + 1]), mode='area')
        h = self.quant_resi[si / (SN - 1)](h_BChw)
        f_hat.add_(h)
        return f_hat, f_hat


class VAEStandIn:
    """What ``VAR.__init__`` reads of its ``vae_local`` (a ``VQVAE``):
    ``Cvae``, ``vocab_size`` and the quantizer ``quantize``. A plain object,
    as VAR keeps the VQVAE in a tuple (not a sub-module: its weights are not
    in ``var_d*.pth``)."""

    def __init__(self, quantize: VectorQuantizer2):
        self.quantize = quantize
        self.Cvae = quantize.Cvae
        self.vocab_size = quantize.vocab_size


# --- models/basic_var.py ----------------------------------------------------
class FFN(nn.Module):

    def __init__(self, in_features, hidden_features=None, out_features=None,
                 drop=0.):
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU(approximate='tanh')
        self.fc2 = nn.Linear(hidden_features, out_features)
        self.drop = nn.Dropout(drop, inplace=True) if drop > 0 else \
            nn.Identity()

    def forward(self, x):
        return self.drop(self.fc2(self.act(self.fc1(x))))


class SelfAttention(nn.Module):

    def __init__(self, block_idx, embed_dim=768, num_heads=12, attn_drop=0.,
                 proj_drop=0., attn_l2_norm=False):
        super().__init__()
        assert embed_dim % num_heads == 0
        self.block_idx, self.num_heads = block_idx, num_heads
        self.head_dim = embed_dim // num_heads
        self.attn_l2_norm = attn_l2_norm
        if self.attn_l2_norm:
            self.scale = 1
            self.scale_mul_1H11 = nn.Parameter(
                torch.full(size=(1, self.num_heads, 1, 1),
                           fill_value=4.0).log(), requires_grad=True)
            self.max_scale_mul = torch.log(torch.tensor(
                100, device='cpu')).item()  # a float32 log, as VAR's
        else:
            self.scale = 0.25 / math.sqrt(self.head_dim)
        self.mat_qkv = nn.Linear(embed_dim, embed_dim * 3, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(embed_dim))
        self.v_bias = nn.Parameter(torch.zeros(embed_dim))
        self.register_buffer('zero_k_bias', torch.zeros(embed_dim))
        self.proj = nn.Linear(embed_dim, embed_dim)
        self.proj_drop = nn.Dropout(proj_drop, inplace=True) \
            if proj_drop > 0 else nn.Identity()
        self.attn_drop = attn_drop
        self.caching, self.cached_k, self.cached_v = False, None, None

    def kv_caching(self, enable: bool):
        self.caching, self.cached_k, self.cached_v = enable, None, None

    def forward(self, x, attn_bias):
        B, L, C = x.shape
        qkv = F.linear(input=x, weight=self.mat_qkv.weight,
                       bias=torch.cat((self.q_bias, self.zero_k_bias,
                                       self.v_bias))).view(
                                           B, L, 3, self.num_heads,
                                           self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(dim=0)  # BHLc
        dim_cat = 2
        if self.attn_l2_norm:
            scale_mul = self.scale_mul_1H11.clamp_max(
                self.max_scale_mul).exp()
            q = F.normalize(q, dim=-1).mul(scale_mul)
            k = F.normalize(k, dim=-1)
        if self.caching:
            if self.cached_k is None:
                self.cached_k = k
                self.cached_v = v
            else:
                k = self.cached_k = torch.cat((self.cached_k, k), dim=dim_cat)
                v = self.cached_v = torch.cat((self.cached_v, v), dim=dim_cat)
        dropout_p = self.attn_drop if self.training else 0.0
        oup = F.scaled_dot_product_attention(
            query=q, key=k, value=v, scale=self.scale, attn_mask=attn_bias,
            dropout_p=dropout_p).transpose(1, 2).reshape(B, L, C)
        return self.proj_drop(self.proj(oup))


class AdaLNSelfAttn(nn.Module):

    def __init__(self, block_idx, last_drop_p, embed_dim, cond_dim,
                 shared_aln: bool, norm_layer, num_heads, mlp_ratio=4.,
                 drop=0., attn_drop=0., drop_path=0., attn_l2_norm=False):
        super().__init__()
        self.block_idx, self.last_drop_p = block_idx, last_drop_p
        self.C, self.D = embed_dim, cond_dim
        self.drop_path = DropPath(drop_path) if drop_path > 0. else \
            nn.Identity()
        self.attn = SelfAttention(block_idx=block_idx, embed_dim=embed_dim,
                                  num_heads=num_heads, attn_drop=attn_drop,
                                  proj_drop=drop, attn_l2_norm=attn_l2_norm)
        self.ffn = FFN(in_features=embed_dim,
                       hidden_features=round(embed_dim * mlp_ratio),
                       drop=drop)
        self.ln_wo_grad = norm_layer(embed_dim, elementwise_affine=False)
        self.shared_aln = shared_aln
        if self.shared_aln:
            self.ada_gss = nn.Parameter(
                torch.randn(1, 1, 6, embed_dim) / embed_dim**0.5)
        else:
            lin = nn.Linear(cond_dim, 6 * embed_dim)
            self.ada_lin = nn.Sequential(nn.SiLU(inplace=False), lin)

    def forward(self, x, cond_BD, attn_bias):
        if self.shared_aln:
            gamma1, gamma2, scale1, scale2, shift1, shift2 = (
                self.ada_gss + cond_BD).unbind(2)
        else:
            gamma1, gamma2, scale1, scale2, shift1, shift2 = self.ada_lin(
                cond_BD).view(-1, 1, 6, self.C).unbind(2)
        x = x + self.drop_path(
            self.attn(self.ln_wo_grad(x).mul(scale1.add(1)).add_(shift1),
                      attn_bias=attn_bias).mul_(gamma1))
        x = x + self.drop_path(
            self.ffn(self.ln_wo_grad(x).mul(scale2.add(1)).add_(
                shift2)).mul(gamma2))
        return x


class AdaLNBeforeHead(nn.Module):

    def __init__(self, C, D, norm_layer):
        super().__init__()
        self.C, self.D = C, D
        self.ln_wo_grad = norm_layer(C, elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(inplace=False),
                                     nn.Linear(D, 2 * C))

    def forward(self, x_BLC: torch.Tensor, cond_BD: torch.Tensor):
        scale, shift = self.ada_lin(cond_BD).view(-1, 1, 2, self.C).unbind(2)
        return self.ln_wo_grad(x_BLC).mul(scale.add(1)).add_(shift)


# --- models/var.py ----------------------------------------------------------
class SharedAdaLin(nn.Linear):

    def forward(self, cond_BD):
        C = self.weight.shape[0] // 6
        return super().forward(cond_BD).view(-1, 1, 6, C)


class RefVAR(nn.Module):
    """VAR's ``VAR`` (see the module docstring)."""

    def __init__(self, vae_local: VAEStandIn, num_classes=1000, depth=16,
                 embed_dim=1024, num_heads=16, mlp_ratio=4., drop_rate=0.,
                 attn_drop_rate=0., drop_path_rate=0., norm_eps=1e-6,
                 shared_aln=False, cond_drop_rate=0.1, attn_l2_norm=False,
                 patch_nums=(1, 2, 3, 4, 5, 6, 8, 10, 13, 16)):
        super().__init__()
        assert embed_dim % num_heads == 0
        self.Cvae, self.V = vae_local.Cvae, vae_local.vocab_size
        self.depth, self.C, self.D = depth, embed_dim, embed_dim
        self.num_heads = num_heads
        self.cond_drop_rate = cond_drop_rate
        self.prog_si = -1
        self.patch_nums = patch_nums
        self.L = sum(pn**2 for pn in self.patch_nums)
        self.first_l = self.patch_nums[0]**2
        self.begin_ends = []
        cur = 0
        for pn in self.patch_nums:
            self.begin_ends.append((cur, cur + pn**2))
            cur += pn**2
        self.num_stages_minus_1 = len(self.patch_nums) - 1
        self.rng = torch.Generator(device='cpu')

        quant = vae_local.quantize
        self.vae_proxy = (vae_local, )
        self.vae_quant_proxy = (quant, )
        self.word_embed = nn.Linear(self.Cvae, self.C)

        init_std = math.sqrt(1 / self.C / 3)
        self.num_classes = num_classes
        self.uniform_prob = torch.full((1, num_classes),
                                       fill_value=1.0 / num_classes,
                                       dtype=torch.float32)
        self.class_emb = nn.Embedding(self.num_classes + 1, self.C)
        nn.init.trunc_normal_(self.class_emb.weight.data, mean=0,
                              std=init_std)
        self.pos_start = nn.Parameter(torch.empty(1, self.first_l, self.C))
        nn.init.trunc_normal_(self.pos_start.data, mean=0, std=init_std)

        pos_1LC = []
        for pn in self.patch_nums:
            pe = torch.empty(1, pn * pn, self.C)
            nn.init.trunc_normal_(pe, mean=0, std=init_std)
            pos_1LC.append(pe)
        pos_1LC = torch.cat(pos_1LC, dim=1)
        assert tuple(pos_1LC.shape) == (1, self.L, self.C)
        self.pos_1LC = nn.Parameter(pos_1LC)
        self.lvl_embed = nn.Embedding(len(self.patch_nums), self.C)
        nn.init.trunc_normal_(self.lvl_embed.weight.data, mean=0,
                              std=init_std)

        self.shared_ada_lin = nn.Sequential(
            nn.SiLU(inplace=False), SharedAdaLin(
                self.D, 6 * self.C)) if shared_aln else nn.Identity()
        norm_layer = partial(nn.LayerNorm, eps=norm_eps)
        self.drop_path_rate = drop_path_rate
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, depth,
                                                device='cpu')]
        self.blocks = nn.ModuleList([
            AdaLNSelfAttn(cond_dim=self.D, shared_aln=shared_aln,
                          block_idx=block_idx, embed_dim=self.C,
                          norm_layer=norm_layer, num_heads=num_heads,
                          mlp_ratio=mlp_ratio, drop=drop_rate,
                          attn_drop=attn_drop_rate, drop_path=dpr[block_idx],
                          last_drop_p=0 if block_idx == 0 else
                          dpr[block_idx - 1], attn_l2_norm=attn_l2_norm)
            for block_idx in range(depth)
        ])

        d = torch.cat([
            torch.full((pn * pn, ), i) for i, pn in enumerate(self.patch_nums)
        ]).view(1, self.L, 1)
        dT = d.transpose(1, 2)
        lvl_1L = dT[:, 0].contiguous()
        self.register_buffer('lvl_1L', lvl_1L)
        attn_bias_for_masking = torch.where(d >= dT, 0., -torch.inf).reshape(
            1, 1, self.L, self.L)
        self.register_buffer('attn_bias_for_masking',
                             attn_bias_for_masking.contiguous())

        self.head_nm = AdaLNBeforeHead(self.C, self.D, norm_layer=norm_layer)
        self.head = nn.Linear(self.C, self.V)

    def get_logits(self, h: torch.Tensor, cond_BD: Optional[torch.Tensor]):
        return self.head(self.head_nm(h.float(), cond_BD).float()).float()

    @torch.no_grad()
    def autoregressive_infer_cfg(self, B: int, label_B, g_seed=None, cfg=1.5,
                                 top_k=0, top_p=0.0
                                 ) -> Tuple[List[torch.Tensor],
                                            torch.Tensor]:
        """The official loop; returns ``(idx_Bl per scale, f_hat)`` where
        the official code returns ``vae.fhat_to_img(f_hat)``."""
        if g_seed is None:
            rng = None
        else:
            self.rng.manual_seed(g_seed)
            rng = self.rng
        if label_B is None:
            label_B = torch.multinomial(self.uniform_prob, num_samples=B,
                                        replacement=True,
                                        generator=rng).reshape(B)
        elif isinstance(label_B, int):
            label_B = torch.full((B, ), fill_value=self.num_classes
                                 if label_B < 0 else label_B,
                                 device=self.lvl_1L.device)
        sos = cond_BD = self.class_emb(
            torch.cat((label_B,
                       torch.full_like(label_B,
                                       fill_value=self.num_classes)),
                      dim=0))
        lvl_pos = self.lvl_embed(self.lvl_1L) + self.pos_1LC
        next_token_map = sos.unsqueeze(1).expand(
            2 * B, self.first_l, -1) + self.pos_start.expand(
                2 * B, self.first_l, -1) + lvl_pos[:, :self.first_l]
        cur_L = 0
        f_hat = sos.new_zeros(B, self.Cvae, self.patch_nums[-1],
                              self.patch_nums[-1])
        sampled = []
        for b in self.blocks:
            b.attn.kv_caching(True)
        for si, pn in enumerate(self.patch_nums):
            ratio = si / self.num_stages_minus_1
            cur_L += pn * pn
            cond_BD_or_gss = self.shared_ada_lin(cond_BD)
            x = next_token_map
            for b in self.blocks:
                x = b(x=x, cond_BD=cond_BD_or_gss, attn_bias=None)
            logits_BlV = self.get_logits(x, cond_BD)
            t = cfg * ratio
            logits_BlV = (1 + t) * logits_BlV[:B] - t * logits_BlV[B:]
            idx_Bl = sample_with_top_k_top_p_(logits_BlV, rng=rng,
                                              top_k=top_k, top_p=top_p,
                                              num_samples=1)[:, :, 0]
            sampled.append(idx_Bl)
            h_BChw = self.vae_quant_proxy[0].embedding(idx_Bl)
            h_BChw = h_BChw.transpose_(1, 2).reshape(B, self.Cvae, pn, pn)
            f_hat, next_token_map = self.vae_quant_proxy[
                0].get_next_autoregressive_input(si, len(self.patch_nums),
                                                 f_hat, h_BChw)
            if si != self.num_stages_minus_1:
                next_token_map = next_token_map.view(B, self.Cvae,
                                                     -1).transpose(1, 2)
                next_token_map = self.word_embed(next_token_map) + lvl_pos[
                    :, cur_L:cur_L + self.patch_nums[si + 1]**2]
                next_token_map = next_token_map.repeat(2, 1, 1)
        for b in self.blocks:
            b.attn.kv_caching(False)
        return sampled, f_hat

    def forward(self, label_B: torch.LongTensor,
                x_BLCv_wo_first_l: torch.Tensor) -> torch.Tensor:
        bg, ed = self.begin_ends[self.prog_si] if self.prog_si >= 0 else (
            0, self.L)
        B = x_BLCv_wo_first_l.shape[0]
        label_B = torch.where(
            torch.rand(B, device=label_B.device) < self.cond_drop_rate,
            self.num_classes, label_B)
        sos = cond_BD = self.class_emb(label_B)
        sos = sos.unsqueeze(1).expand(B, self.first_l, -1) + \
            self.pos_start.expand(B, self.first_l, -1)
        x_BLC = torch.cat((sos, self.word_embed(x_BLCv_wo_first_l.float())),
                          dim=1)
        x_BLC += self.lvl_embed(self.lvl_1L[:, :ed].expand(B, -1)) + \
            self.pos_1LC[:, :ed]
        attn_bias = self.attn_bias_for_masking[:, :, :ed, :ed]
        cond_BD_or_gss = self.shared_ada_lin(cond_BD)
        for b in self.blocks:
            x_BLC = b(x=x_BLC, cond_BD=cond_BD_or_gss, attn_bias=attn_bias)
        return self.get_logits(x_BLC.float(), cond_BD)


# --- models/__init__.py -----------------------------------------------------
def build_var(depth: int, vae_local: VAEStandIn, num_classes=1000,
              shared_aln=False, attn_l2_norm=True,
              patch_nums=(1, 2, 3, 4, 5, 6, 8, 10, 13, 16), **overrides):
    """The ``VAR`` of ``build_vae_var``: ``heads = depth``, ``width = 64 ·
    depth``, ``drop_path_rate = 0.1 · depth / 24``, no dropout, ``norm_eps
    1e-6``, ``cond_drop_rate 0.1``; ``overrides`` replace any of them
    (tests use tiny widths)."""
    kwargs = dict(num_classes=num_classes, depth=depth, embed_dim=depth * 64,
                  num_heads=depth, drop_rate=0., attn_drop_rate=0.,
                  drop_path_rate=0.1 * depth / 24, norm_eps=1e-6,
                  shared_aln=shared_aln, cond_drop_rate=0.1,
                  attn_l2_norm=attn_l2_norm, patch_nums=patch_nums)
    kwargs.update(overrides)
    return RefVAR(vae_local, **kwargs)


def build_vae_quantizer(patch_nums=(1, 2, 3, 4, 5, 6, 8, 10, 13, 16),
                        V=4096, Cvae=32, share_quant_resi=4) -> VAEStandIn:
    """The quantizer of ``build_vae_var``'s ``VQVAE`` (``using_znorm=False``,
    ``beta=0.25``, ``quant_resi=0.5``) wrapped as VAR's ``vae_local``."""
    return VAEStandIn(
        VectorQuantizer2(vocab_size=V, Cvae=Cvae, using_znorm=False,
                         beta=0.25, v_patch_nums=patch_nums, quant_resi=0.5,
                         share_quant_resi=share_quant_resi))
