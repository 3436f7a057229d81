"""Transformer pieces shared by every transformer in vistok: the ViT /
TiTok backbones and the token generators (AR, MaskGIT; VAR reuses the cache).

Tensors inside a transformer are sequence-major: tokens ``(B, N, D)``,
per-head tensors ``(B, H, N, D_h)``.

* :class:`RMSNorm` (Zhang & Sennrich 2019), as in Llama / LlamaGen.
* Rotary position embeddings (RoPE, Su et al. 2021): :func:`rope_table_1d`
  over a sequence, :func:`rope_table_2d` over a grid (half of the rotated
  pairs follow the row, half the column, as LlamaGen), and
  :func:`apply_rope` rotating interleaved pairs ``(x_{2i}, x_{2i+1})``.
* :class:`SwiGLU` (Shazeer 2020) and the GELU :class:`MLP` of ViT.
* :class:`Attention`: multi-head self-attention with optional RoPE, causal
  or given mask, and a :class:`KVCache` for incremental decoding.
* :class:`TransformerBlock`: the pre-norm block (Llama or ViT flavour),
  with stochastic depth (:class:`DropPath`) and an optional U-ViT long skip
  input (Bao et al. 2023, concatenation + linear).
"""
from functools import partial
from typing import List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x²) + eps) · g`` over the last axis of ``(..., D)``
    (normalised in fp32, cast back)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


def _rope_frequencies(num_pairs: int, base: float) -> torch.Tensor:
    """``θ_i = base^(-2i / d)`` with ``d = 2·num_pairs`` (RoPE eq. 15)."""
    return base**(-torch.arange(num_pairs, dtype=torch.float64) / num_pairs)


def _rope_table(angles: torch.Tensor, num_prefix: int) -> torch.Tensor:
    """``(num_prefix + N, P, 2)`` table of ``(cos, sin)``; prefix positions
    (class tokens) get angle 0, i.e. no rotation."""
    angles = torch.cat([angles.new_zeros(num_prefix, angles.shape[1]),
                        angles])
    return torch.stack([angles.cos(), angles.sin()], -1).float()


def rope_table_1d(length: int, head_dim: int, base: float = 10000.0,
                  num_prefix: int = 0) -> torch.Tensor:
    """RoPE ``(cos, sin)`` table ``(num_prefix + length, head_dim // 2, 2)``
    for positions ``0 .. length - 1`` after ``num_prefix`` unrotated prefix
    positions."""
    if head_dim % 2:
        raise ValueError(f'1-D RoPE needs an even head_dim, got {head_dim}')
    freqs = _rope_frequencies(head_dim // 2, base)
    positions = torch.arange(length, dtype=torch.float64)
    return _rope_table(positions[:, None] * freqs, num_prefix)


def rope_table_2d(grid: Sequence[int], head_dim: int, base: float = 10000.0,
                  num_prefix: int = 0) -> torch.Tensor:
    """2-D RoPE table ``(num_prefix + h·w, head_dim // 2, 2)`` for a
    raster-ordered ``(h, w)`` grid: the first ``head_dim // 4`` pairs rotate
    with the row index, the last ``head_dim // 4`` with the column index,
    each with the 1-D frequencies of a ``head_dim // 2`` wide half (LlamaGen's
    ``precompute_freqs_cis_2d``)."""
    if len(grid) != 2:
        raise ValueError(f'2-D RoPE needs a (h, w) grid, got {tuple(grid)}')
    if head_dim % 4:
        raise ValueError(f'2-D RoPE needs head_dim divisible by 4, got '
                         f'{head_dim}')
    h, w = grid
    freqs = _rope_frequencies(head_dim // 4, base)
    rows = torch.arange(h, dtype=torch.float64)[:, None, None] * freqs
    cols = torch.arange(w, dtype=torch.float64)[None, :, None] * freqs
    angles = torch.cat([rows.expand(h, w, -1), cols.expand(h, w, -1)], -1)
    return _rope_table(angles.reshape(h * w, -1), num_prefix)


def apply_rope(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rotate the interleaved pairs of ``x (B, H, N, D_h)`` by the
    ``(N, D_h // 2, 2)`` ``(cos, sin)`` ``table`` (RoPE eq. 34), in fp32."""
    if table.shape[0] != x.shape[-2] or 2 * table.shape[1] != x.shape[-1]:
        raise ValueError(f'RoPE table {tuple(table.shape)} does not fit '
                         f'(B, H, N, D_h) = {tuple(x.shape)}')
    pairs = x.float().unflatten(-1, (-1, 2))
    cos, sin = table[..., 0], table[..., 1]
    real, imag = pairs[..., 0], pairs[..., 1]
    out = torch.stack([real * cos - imag * sin, imag * cos + real * sin], -1)
    return out.flatten(-2).type_as(x)


def llama_ffn_dim(dim: int, multiple_of: int = 256,
                  multiplier: Optional[float] = None) -> int:
    """Llama's SwiGLU width: ``2/3 · 4·dim`` (times ``multiplier``) rounded
    up to a multiple of ``multiple_of``."""
    hidden = int(2 * 4 * dim / 3)
    if multiplier is not None:
        hidden = int(multiplier * hidden)
    return -(-hidden // multiple_of) * multiple_of


class SwiGLU(nn.Module):
    """``W_2 (SiLU(W_1 x) ⊙ W_3 x)`` without biases (Shazeer 2020, eq. 6;
    Llama's / LlamaGen's ``FeedForward``), dropout on the output."""

    def __init__(self, dim: int, hidden_dim: int, dropout: float = 0.0):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


#: hidden activations of :class:`MLP`
MLP_ACTIVATIONS = dict(gelu=nn.GELU, tanh=nn.Tanh)


class MLP(nn.Module):
    """ViT's ``fc2(dropout(act(fc1 x)))`` with biases, dropout on the
    output; ``act`` is GELU (ViT) or ``'tanh'`` (the ViT-VQGAN of
    thuanz123/enhancing-transformers, ``FeedForward`` in
    ``enhancing/modules/stage1/layers.py``)."""

    def __init__(self, dim: int, hidden_dim: int, dropout: float = 0.0,
                 act: str = 'gelu'):
        super().__init__()
        if act not in MLP_ACTIVATIONS:
            raise ValueError(f'act must be one of {sorted(MLP_ACTIVATIONS)}, '
                             f'got {act!r}')
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = MLP_ACTIVATIONS[act]()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(self.dropout(self.act(self.fc1(x)))))


class KVCache:
    """Keys and values ``(B, H, L, D_h)`` of the positions attended so far
    (one per attention layer), for incremental decoding."""

    def __init__(self):
        self.keys: Optional[torch.Tensor] = None
        self.values: Optional[torch.Tensor] = None

    @property
    def length(self) -> int:
        return 0 if self.keys is None else self.keys.shape[-2]

    def append(self, keys: torch.Tensor, values: torch.Tensor):
        """Add the new positions; return all keys and values so far."""
        if self.keys is not None:
            keys = torch.cat([self.keys, keys], dim=-2)
            values = torch.cat([self.values, values], dim=-2)
        self.keys, self.values = keys, values
        return keys, values


def new_caches(num_layers: int) -> List[KVCache]:
    """One empty :class:`KVCache` per layer."""
    return [KVCache() for _ in range(num_layers)]


class Attention(nn.Module):
    """Multi-head self-attention (Vaswani et al. 2017) on ``x (B, N, D)``.

    Args:
        dim: token width ``D``.
        num_heads: heads ``H`` (``D_h = D / H``).
        qkv_bias: bias of the fused q/k/v projection.
        proj_bias: bias of the output projection.
        attn_dropout: dropout on attention weights (training only).
        proj_dropout: dropout on the output.
    """

    def __init__(self,
                 dim: int,
                 num_heads: int,
                 qkv_bias: bool = False,
                 proj_bias: bool = False,
                 attn_dropout: float = 0.0,
                 proj_dropout: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'dim={dim} must be divisible by '
                             f'num_heads={num_heads}')
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.attn_dropout = attn_dropout
        self.proj_dropout = nn.Dropout(proj_dropout)

    def forward(self,
                x: torch.Tensor,
                rope: Optional[torch.Tensor] = None,
                causal: bool = False,
                attn_mask: Optional[torch.Tensor] = None,
                cache: Optional[KVCache] = None) -> torch.Tensor:
        """``x (B, N, D)`` → ``(B, N, D)``.

        Args:
            rope: ``(N, D_h // 2, 2)`` RoPE table of the N positions of ``x``.
            causal: each position attends to itself and earlier ones
                (including all positions already in ``cache``).
            attn_mask: boolean (True = attend) or additive mask broadcast
                to ``(B, H, N, L)``; not combined with ``causal``.
            cache: keys / values of earlier positions; the new ones are
                appended.
        """
        if causal and attn_mask is not None:
            raise ValueError('give either causal=True or attn_mask, not both')
        q, k, v = self.qkv(x).unflatten(-1, (3, self.num_heads, -1)).permute(
            2, 0, 3, 1, 4)
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        past = 0
        if cache is not None:
            past = cache.length
            k, v = cache.append(k, v)
        is_causal = causal and past == 0
        if causal and past and x.shape[1] > 1:
            attn_mask = torch.ones(x.shape[1], k.shape[-2], dtype=torch.bool,
                                   device=x.device).tril(past)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, is_causal=is_causal,
            dropout_p=self.attn_dropout if self.training else 0.0)
        return self.proj_dropout(self.proj(out.transpose(1, 2).flatten(2)))


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016, "Deep Networks with Stochastic
    Depth"): in training, zero the residual branch of a whole sample with
    probability ``drop_prob`` and scale the kept ones by
    ``1 / (1 - drop_prob)``; the identity in eval mode. Bit-identical to
    timm's ``DropPath`` with ``scale_by_keep=True`` (as in VAR's released
    ``models/helpers.py`` and timm's ViT): the same random draw, and the
    mask is scaled before it multiplies ``x``."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f'drop_prob must be in [0, 1), got {drop_prob}')
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0], ) + (1, ) * (x.dim() - 1))
        return x * mask.bernoulli_(keep).div_(keep)

    def extra_repr(self) -> str:
        return f'drop_prob={self.drop_prob:.3f}'


class TransformerBlock(nn.Module):
    """Pre-norm block ``x + attn(norm(x))``, then ``x + ffn(norm(x))``.

    ``norm='rms'`` / ``ffn='swiglu'`` is the Llama block (LlamaGen);
    ``norm='layer'`` / ``ffn='gelu'`` the ViT / U-ViT block; ``ffn='tanh'``
    the same MLP with a tanh (enhancing-transformers' ViT-VQGAN). With
    ``long_skip=True`` the block first fuses a U-ViT long skip connection:
    ``x ← Linear(concat(x, skip))`` (Bao et al. 2023, §3.1).

    Args:
        dim, num_heads: width and heads.
        ffn_dim: hidden width of the feed-forward network.
        norm: ``'rms'`` or ``'layer'``.
        ffn: ``'swiglu'``, ``'gelu'`` or ``'tanh'`` (:class:`MLP`'s
            activation).
        qkv_bias, proj_bias: see :class:`Attention`.
        dropout: dropout on the attention and feed-forward outputs.
        attn_dropout: dropout on attention weights.
        norm_eps: epsilon of both norms.
        long_skip: whether the block takes a U-ViT long skip input.
        drop_path: stochastic-depth probability of both residual branches.
    """

    def __init__(self,
                 dim: int,
                 num_heads: int,
                 ffn_dim: int,
                 norm: str = 'rms',
                 ffn: str = 'swiglu',
                 qkv_bias: bool = False,
                 proj_bias: bool = False,
                 dropout: float = 0.0,
                 attn_dropout: float = 0.0,
                 norm_eps: float = 1e-5,
                 long_skip: bool = False,
                 drop_path: float = 0.0):
        super().__init__()
        norms = dict(rms=RMSNorm, layer=nn.LayerNorm)
        ffns = dict(swiglu=SwiGLU, gelu=MLP, tanh=partial(MLP, act='tanh'))
        if norm not in norms:
            raise ValueError(f'norm must be one of {sorted(norms)}, got '
                             f'{norm!r}')
        if ffn not in ffns:
            raise ValueError(f'ffn must be one of {sorted(ffns)}, got {ffn!r}')
        self.skip_linear = nn.Linear(2 * dim, dim) if long_skip else None
        self.attn_norm = norms[norm](dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias, proj_bias,
                              attn_dropout, dropout)
        self.ffn_norm = norms[norm](dim, eps=norm_eps)
        self.ffn = ffns[ffn](dim, ffn_dim, dropout)
        self.drop_path = DropPath(drop_path)

    def forward(self,
                x: torch.Tensor,
                rope: Optional[torch.Tensor] = None,
                causal: bool = False,
                attn_mask: Optional[torch.Tensor] = None,
                cache: Optional[KVCache] = None,
                skip: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``x (B, N, D)`` → ``(B, N, D)``; ``skip (B, N, D)`` is required
        exactly when the block has a long skip. Other arguments: see
        :meth:`Attention.forward`."""
        if (skip is None) != (self.skip_linear is None):
            raise ValueError('a long-skip block needs `skip` and other '
                             'blocks must not get one')
        if skip is not None:
            x = self.skip_linear(torch.cat([x, skip], dim=-1))
        x = x + self.drop_path(
            self.attn(self.attn_norm(x), rope, causal, attn_mask, cache))
        return x + self.drop_path(self.ffn(self.ffn_norm(x)))
