"""VAR's transformer blocks (Tian et al. 2024, "Visual Autoregressive
Modeling: Scalable Image Generation via Next-Scale Prediction", §3.2 and
the released ``models/basic_var.py``), the network that
:class:`vistok.models.generators.var.VARGenerator` stacks (and ImageFolder's
generator reuses):

* :class:`VARSelfAttention`: multi-head self-attention, optionally cosine
  attention with a learned per-head scale, with a :class:`KVCache`.
* :class:`VARFFN`: the tanh-GELU feed-forward network.
* :class:`AdaLNSelfAttn`: the block with adaptive layer norm (AdaLN)
  conditioning, with stochastic depth (:class:`DropPath`).
* :class:`AdaLNBeforeHead`: the AdaLN before the output head.

Tensors are sequence-major ``(B, N, C)``. Class and parameter names follow
VAR's code.
"""
import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from vistok.models.backbones.transformer import DropPath, KVCache


class VARSelfAttention(nn.Module):
    """VAR's multi-head self-attention on ``x (B, N, C)``.

    ``q, k, v = x W_qkv + (b_q, 0, b_v)`` (a key bias would cancel in the
    softmax). With ``attn_l2_norm`` (VAR's default for its released models)
    queries and keys are l2-normalised per head and the logits are scaled by
    a learned per-head ``exp(min(τ_h, log max_scale_mul))`` with ``τ_h``
    initialised to ``log init_scale_mul``; otherwise by ``0.25 / sqrt(D_h)``.
    Parameter names follow VAR's ``SelfAttention``.

    Args:
        dim: width ``C``.
        num_heads: heads ``H`` (``D_h = C / H``).
        attn_l2_norm: cosine attention with a learned scale (see above).
        init_scale_mul, max_scale_mul: initial value and cap of the scale.
        attn_drop: dropout on the attention weights (training only).
        proj_drop: dropout on the output.
    """

    def __init__(self,
                 dim: int,
                 num_heads: int,
                 attn_l2_norm: bool = True,
                 init_scale_mul: float = 4.0,
                 max_scale_mul: float = 100.0,
                 attn_drop: float = 0.0,
                 proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'embed_dim {dim} is not divisible by num_heads '
                             f'{num_heads}')
        self.num_heads = num_heads
        self.attn_l2_norm = attn_l2_norm
        self.mat_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        if attn_l2_norm:
            self.scale = 1.0
            self.scale_mul_1H11 = nn.Parameter(
                torch.full((1, num_heads, 1, 1), float(init_scale_mul)).log())
            self.max_log_scale_mul = math.log(max_scale_mul)
        else:
            self.scale = 0.25 / math.sqrt(dim // num_heads)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = attn_drop
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self,
                x: torch.Tensor,
                attn_mask: Optional[torch.Tensor] = None,
                cache: Optional[KVCache] = None) -> torch.Tensor:
        """``x (B, N, C)`` → ``(B, N, C)``; ``attn_mask`` boolean ``(N, L)``
        (True = attend), ``cache`` holds the keys / values of earlier
        positions (the new ones are appended; all of them are attended)."""
        batch, length, dim = x.shape
        bias = torch.cat(
            [self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
        q, k, v = F.linear(x, self.mat_qkv.weight, bias).view(
            batch, length, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        if self.attn_l2_norm:
            scale_mul = self.scale_mul_1H11.clamp_max(
                self.max_log_scale_mul).exp()
            q = F.normalize(q, dim=-1) * scale_mul
            k = F.normalize(k, dim=-1)
        if cache is not None:
            k, v = cache.append(k, v)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, scale=self.scale,
            dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(
            self.proj(out.transpose(1, 2).reshape(batch, length, dim)))


class VARFFN(nn.Module):
    """``fc2(GELU_tanh(fc1 x))`` with dropout on the output (VAR's
    ``FFN``)."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU(approximate='tanh')
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.act(self.fc1(x))))


class AdaLNSelfAttn(nn.Module):
    """VAR's transformer block with adaptive layer norm (AdaLN, as DiT,
    Peebles & Xie 2023) class conditioning:

    ``x ← x + γ_1 · attn(LN(x)(1 + α_1) + β_1)``,
    ``x ← x + γ_2 · ffn(LN(x)(1 + α_2) + β_2)``,

    with a layer norm without affine parameters. ``(γ_1, γ_2, α_1, α_2, β_1,
    β_2)`` come from the condition: ``Linear(SiLU(c))`` of the block
    (``ada_lin``), or with ``shared_aln`` a per-block learned offset
    ``ada_gss`` added to one linear map shared by all blocks (computed by the
    generator, e.g. :class:`vistok.models.generators.var.VARGenerator`, and
    passed as ``cond``).

    Args:
        dim: width ``C``.
        cond_dim: width ``D`` of the condition.
        num_heads, attn_l2_norm, attn_drop: see :class:`VARSelfAttention`.
        mlp_ratio: feed-forward width ``round(C · mlp_ratio)``.
        shared_aln: use the shared AdaLN projection.
        norm_eps: layer norm epsilon.
        drop: dropout on the attention and feed-forward outputs.
        drop_path: stochastic depth rate.
    """

    def __init__(self,
                 dim: int,
                 cond_dim: int,
                 num_heads: int,
                 mlp_ratio: float = 4.0,
                 shared_aln: bool = False,
                 norm_eps: float = 1e-6,
                 attn_l2_norm: bool = True,
                 drop: float = 0.0,
                 attn_drop: float = 0.0,
                 drop_path: float = 0.0):
        super().__init__()
        self.dim = dim
        self.shared_aln = shared_aln
        self.attn = VARSelfAttention(dim, num_heads, attn_l2_norm,
                                     attn_drop=attn_drop, proj_drop=drop)
        self.ffn = VARFFN(dim, round(dim * mlp_ratio), drop)
        self.ln_wo_grad = nn.LayerNorm(dim, eps=norm_eps,
                                       elementwise_affine=False)
        if shared_aln:
            self.ada_gss = nn.Parameter(
                torch.randn(1, 1, 6, dim) / math.sqrt(dim))
        else:
            self.ada_lin = nn.Sequential(nn.SiLU(),
                                         nn.Linear(cond_dim, 6 * dim))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else \
            nn.Identity()

    def forward(self,
                x: torch.Tensor,
                cond: torch.Tensor,
                attn_mask: Optional[torch.Tensor] = None,
                cache: Optional[KVCache] = None) -> torch.Tensor:
        """``x (B, N, C)`` → ``(B, N, C)``; ``cond`` is the condition
        ``(B, D)``, or with ``shared_aln`` the shared projection ``(B, 1, 6,
        C)``; ``attn_mask`` / ``cache``: see :class:`VARSelfAttention`."""
        if self.shared_aln:
            modulation = self.ada_gss + cond
        else:
            modulation = self.ada_lin(cond).view(-1, 1, 6, self.dim)
        gamma1, gamma2, scale1, scale2, shift1, shift2 = modulation.unbind(2)
        x = x + self.drop_path(
            self.attn(self.ln_wo_grad(x) * (1 + scale1) + shift1, attn_mask,
                      cache) * gamma1)
        return x + self.drop_path(
            self.ffn(self.ln_wo_grad(x) * (1 + scale2) + shift2) * gamma2)


class AdaLNBeforeHead(nn.Module):
    """``LN(x)(1 + α) + β`` with ``(α, β) = Linear(SiLU(c))`` before VAR's
    output head; ``x (B, N, C)``, ``c (B, D)``."""

    def __init__(self, dim: int, cond_dim: int, norm_eps: float = 1e-6):
        super().__init__()
        self.dim = dim
        self.ln_wo_grad = nn.LayerNorm(dim, eps=norm_eps,
                                       elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 2 * dim))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, shift = self.ada_lin(cond).view(-1, 1, 2, self.dim).unbind(2)
        return self.ln_wo_grad(x) * (1 + scale) + shift
