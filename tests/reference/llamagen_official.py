"""An independent reference of LlamaGen's class-conditional GPT
(FoundationVision/LlamaGen, MIT licence; Sun et al. 2024, "Autoregressive
Model Beats Diffusion: Llama for Scalable Image Generation"), written as an
architecture reference for vistok's ``ARGenerator`` (there is no converter)
from the module definitions at commit
ce98ec41803a74a90ce68c40ababa9eaeffeb4ec:

* ``autoregressive/models/gpt.py``: ``ModelArgs``; ``LabelEmbedder``
  (``num_classes + 1`` rows when ``class_dropout_prob > 0``, the last one
  the dropped / unconditional class); ``RMSNorm`` (``x · rsqrt(mean(x²) +
  eps)`` in fp32, then the weight); ``FeedForward`` (SwiGLU ``w2(silu(w1
  x) ⊙ w3 x)``, hidden width ``int(2 · 4·dim / 3)`` (times
  ``ffn_dim_multiplier``) rounded up to ``multiple_of`` by
  ``find_multiple``); ``Attention`` (one bias-free ``wqkv`` split q | k |
  v, heads major inside each, RoPE on q and k, ``scaled_dot_product_
  attention``, ``wo``; a ``KVCache`` of ``max_seq_length`` slots and the
  boolean causal mask rows of ``input_pos`` in inference);
  ``TransformerBlock`` (pre-norm ``attention_norm`` / ``ffn_norm``
  residuals); ``Transformer`` (``c2i``: ``cls_embedding``,
  ``tok_embeddings``, ``layers``, ``norm``, ``output``); the rotary tables
  ``precompute_freqs_cis`` / ``precompute_freqs_cis_2d`` and
  ``apply_rotary_emb``. The tables start with ``cls_token_num`` rows of
  **zeros** — ``(cos, sin) = (0, 0)``, so the class token's query and key
  are zero in every layer, not left unrotated.
* ``autoregressive/models/generate.py``: ``top_k_top_p_filtering``,
  ``sample``, ``prefill``, ``decode_one_token``, ``decode_n_tokens``,
  ``generate`` (``c2i``; guidance ``ℓ_u + (ℓ_c − ℓ_u)·cfg_scale`` for
  ``cfg_scale > 1``, optionally only for the first ``cfg_interval``
  tokens).
* ``utils/drop_path.py``: ``DropPath`` (timm's).

Teacher forcing is LlamaGen's training-mode forward (``model(cond_idx=c,
idx=z[:, :-1])``): it slices the rotary table by length only in training
mode. Left out: the ``t2i`` caption embedder, the loss, FSDP helpers,
``emb_masks`` (text only) and the CUDA kernel contexts. Module names are
the official ones, so ``Transformer(...).state_dict()`` is an
official-layout checkpoint. Plain torch: no vistok import.
"""
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
from torch.nn import functional as F


def find_multiple(n: int, k: int):
    if n % k == 0:
        return n
    return n + k - (n % k)


@dataclass
class ModelArgs:
    dim: int = 4096
    n_layer: int = 32
    n_head: int = 32
    n_kv_head: Optional[int] = None
    multiple_of: int = 256
    ffn_dim_multiplier: Optional[float] = None
    rope_base: float = 10000
    norm_eps: float = 1e-5
    initializer_range: float = 0.02
    token_dropout_p: float = 0.1
    attn_dropout_p: float = 0.0
    resid_dropout_p: float = 0.1
    ffn_dropout_p: float = 0.1
    drop_path_rate: float = 0.0
    num_classes: int = 1000
    class_dropout_prob: float = 0.1
    model_type: str = 'c2i'
    vocab_size: int = 16384
    cls_token_num: int = 1
    block_size: int = 256
    max_batch_size: int = 32
    max_seq_len: int = 2048


# --- utils/drop_path.py -----------------------------------------------------
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


# --- autoregressive/models/gpt.py -------------------------------------------
class LabelEmbedder(nn.Module):

    def __init__(self, num_classes, hidden_size, dropout_prob):
        super().__init__()
        use_cfg_embedding = dropout_prob > 0
        self.embedding_table = nn.Embedding(num_classes + use_cfg_embedding,
                                            hidden_size)
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob

    def token_drop(self, labels, force_drop_ids=None):
        if force_drop_ids is None:
            drop_ids = torch.rand(labels.shape[0],
                                  device=labels.device) < self.dropout_prob
        else:
            drop_ids = force_drop_ids == 1
        return torch.where(drop_ids, self.num_classes, labels)

    def forward(self, labels, train, force_drop_ids=None):
        use_dropout = self.dropout_prob > 0
        if (train and use_dropout) or (force_drop_ids is not None):
            labels = self.token_drop(labels, force_drop_ids)
        return self.embedding_table(labels).unsqueeze(1)


class RMSNorm(nn.Module):

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def _norm(self, x):
        return x * torch.rsqrt(torch.mean(x * x, dim=-1, keepdim=True) +
                               self.eps)

    def forward(self, x):
        output = self._norm(x.float()).type_as(x)
        return output * self.weight


class FeedForward(nn.Module):

    def __init__(self, config: ModelArgs):
        super().__init__()
        hidden_dim = 4 * config.dim
        hidden_dim = int(2 * hidden_dim / 3)
        if config.ffn_dim_multiplier is not None:
            hidden_dim = int(config.ffn_dim_multiplier * hidden_dim)
        hidden_dim = find_multiple(hidden_dim, config.multiple_of)
        self.w1 = nn.Linear(config.dim, hidden_dim, bias=False)
        self.w3 = nn.Linear(config.dim, hidden_dim, bias=False)
        self.w2 = nn.Linear(hidden_dim, config.dim, bias=False)
        self.ffn_dropout = nn.Dropout(config.ffn_dropout_p)

    def forward(self, x):
        return self.ffn_dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class KVCache(nn.Module):

    def __init__(self, max_batch_size, max_seq_length, n_head, head_dim,
                 dtype):
        super().__init__()
        cache_shape = (max_batch_size, n_head, max_seq_length, head_dim)
        self.register_buffer('k_cache', torch.zeros(cache_shape, dtype=dtype))
        self.register_buffer('v_cache', torch.zeros(cache_shape, dtype=dtype))

    def update(self, input_pos, k_val, v_val):
        assert input_pos.shape[0] == k_val.shape[2]
        k_out = self.k_cache
        v_out = self.v_cache
        k_out[:, :, input_pos] = k_val
        v_out[:, :, input_pos] = v_val
        return k_out, v_out


class Attention(nn.Module):

    def __init__(self, config: ModelArgs):
        super().__init__()
        assert config.dim % config.n_head == 0
        self.dim = config.dim
        self.head_dim = config.dim // config.n_head
        self.n_head = config.n_head
        self.n_kv_head = config.n_kv_head if config.n_kv_head is not None \
            else config.n_head
        total_kv_dim = (self.n_head + 2 * self.n_kv_head) * self.head_dim
        self.wqkv = nn.Linear(config.dim, total_kv_dim, bias=False)
        self.wo = nn.Linear(config.dim, config.dim, bias=False)
        self.kv_cache = None
        self.attn_dropout_p = config.attn_dropout_p
        self.resid_dropout = nn.Dropout(config.resid_dropout_p)

    def forward(self, x: torch.Tensor, freqs_cis: torch.Tensor = None,
                input_pos: Optional[torch.Tensor] = None,
                mask: Optional[torch.Tensor] = None):
        bsz, seqlen, _ = x.shape
        kv_size = self.n_kv_head * self.head_dim
        xq, xk, xv = self.wqkv(x).split([self.dim, kv_size, kv_size], dim=-1)
        xq = xq.view(bsz, seqlen, self.n_head, self.head_dim)
        xk = xk.view(bsz, seqlen, self.n_kv_head, self.head_dim)
        xv = xv.view(bsz, seqlen, self.n_kv_head, self.head_dim)
        xq = apply_rotary_emb(xq, freqs_cis)
        xk = apply_rotary_emb(xk, freqs_cis)
        xq, xk, xv = map(lambda x: x.transpose(1, 2), (xq, xk, xv))
        if self.kv_cache is not None:
            keys, values = self.kv_cache.update(input_pos, xk, xv)
        else:
            keys, values = xk, xv
        keys = keys.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
        values = values.repeat_interleave(self.n_head // self.n_kv_head,
                                          dim=1)
        output = F.scaled_dot_product_attention(
            xq, keys, values, attn_mask=mask,
            is_causal=True if mask is None else False,
            dropout_p=self.attn_dropout_p if self.training else 0)
        output = output.transpose(1, 2).contiguous().view(
            bsz, seqlen, self.dim)
        return self.resid_dropout(self.wo(output))


class TransformerBlock(nn.Module):

    def __init__(self, config: ModelArgs, drop_path: float):
        super().__init__()
        self.attention = Attention(config)
        self.feed_forward = FeedForward(config)
        self.attention_norm = RMSNorm(config.dim, eps=config.norm_eps)
        self.ffn_norm = RMSNorm(config.dim, eps=config.norm_eps)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else \
            nn.Identity()

    def forward(self, x: torch.Tensor, freqs_cis: torch.Tensor,
                start_pos: int, mask: Optional[torch.Tensor] = None):
        h = x + self.drop_path(
            self.attention(self.attention_norm(x), freqs_cis, start_pos,
                           mask))
        return h + self.drop_path(self.feed_forward(self.ffn_norm(h)))


class Transformer(nn.Module):
    """LlamaGen's ``Transformer`` with ``model_type='c2i'``."""

    def __init__(self, config: ModelArgs):
        super().__init__()
        self.config = config
        self.vocab_size = config.vocab_size
        self.n_layer = config.n_layer
        self.block_size = config.block_size
        self.num_classes = config.num_classes
        self.model_type = config.model_type
        self.cls_token_num = config.cls_token_num
        assert self.model_type == 'c2i'
        self.cls_embedding = LabelEmbedder(config.num_classes, config.dim,
                                           config.class_dropout_prob)
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.tok_dropout = nn.Dropout(config.token_dropout_p)
        dpr = [x.item() for x in torch.linspace(
            0, config.drop_path_rate, config.n_layer, device='cpu')]
        self.layers = nn.ModuleList()
        for layer_id in range(config.n_layer):
            self.layers.append(TransformerBlock(config, dpr[layer_id]))
        self.norm = RMSNorm(config.dim, eps=config.norm_eps)
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False)
        grid_size = int(self.block_size**0.5)
        assert grid_size * grid_size == self.block_size
        self.freqs_cis = precompute_freqs_cis_2d(
            grid_size, self.config.dim // self.config.n_head,
            self.config.rope_base, self.cls_token_num)
        self.max_batch_size = -1
        self.max_seq_length = -1

    def setup_caches(self, max_batch_size, max_seq_length, dtype):
        head_dim = self.config.dim // self.config.n_head
        max_seq_length = find_multiple(max_seq_length, 8)
        self.max_seq_length = max_seq_length
        self.max_batch_size = max_batch_size
        for b in self.layers:
            b.attention.kv_cache = KVCache(max_batch_size, max_seq_length,
                                           self.config.n_head, head_dim,
                                           dtype)
        causal_mask = torch.tril(
            torch.ones(self.max_seq_length, self.max_seq_length,
                       dtype=torch.bool))
        self.causal_mask = causal_mask.unsqueeze(0).repeat(
            self.max_batch_size, 1, 1)
        grid_size = int(self.config.block_size**0.5)
        self.freqs_cis = precompute_freqs_cis_2d(
            grid_size, self.config.dim // self.config.n_head,
            self.config.rope_base, self.cls_token_num)

    def forward(self, idx: torch.Tensor, cond_idx: torch.Tensor,
                input_pos: Optional[torch.Tensor] = None,
                mask: Optional[torch.Tensor] = None):
        if idx is not None and cond_idx is not None:
            cond_embeddings = self.cls_embedding(
                cond_idx, train=self.training)[:, :self.cls_token_num]
            token_embeddings = self.tok_embeddings(idx)
            token_embeddings = torch.cat((cond_embeddings, token_embeddings),
                                         dim=1)
            h = self.tok_dropout(token_embeddings)
        else:
            if cond_idx is not None:
                token_embeddings = self.cls_embedding(
                    cond_idx, train=self.training)[:, :self.cls_token_num]
            else:
                token_embeddings = self.tok_embeddings(idx)
            bs = token_embeddings.shape[0]
            mask = self.causal_mask[:bs, None, input_pos]
            h = self.tok_dropout(token_embeddings)
        if self.training:
            freqs_cis = self.freqs_cis[:token_embeddings.shape[1]]
        else:
            freqs_cis = self.freqs_cis[input_pos]
        for layer in self.layers:
            h = layer(h, freqs_cis, input_pos, mask)
        h = self.norm(h)
        logits = self.output(h).float()
        if self.training:
            logits = logits[:, self.cls_token_num - 1:].contiguous()
        return logits


def precompute_freqs_cis(seq_len: int, n_elem: int, base: int = 10000,
                         cls_token_num=120):
    freqs = 1.0 / (base**(torch.arange(0, n_elem, 2)[:(n_elem // 2)].float()
                          / n_elem))
    t = torch.arange(seq_len, device=freqs.device)
    freqs = torch.outer(t, freqs)
    freqs_cis = torch.polar(torch.ones_like(freqs), freqs)
    cache = torch.stack([freqs_cis.real, freqs_cis.imag], dim=-1)
    return torch.cat([torch.zeros(cls_token_num, n_elem // 2, 2), cache])


def precompute_freqs_cis_2d(grid_size: int, n_elem: int, base: int = 10000,
                            cls_token_num=120):
    half_dim = n_elem // 2
    freqs = 1.0 / (base**(torch.arange(0, half_dim, 2)[:(half_dim // 2)].
                          float() / half_dim))
    t = torch.arange(grid_size, device=freqs.device)
    freqs = torch.outer(t, freqs)
    freqs_grid = torch.concat([
        freqs[:, None, :].expand(-1, grid_size, -1),
        freqs[None, :, :].expand(grid_size, -1, -1),
    ], dim=-1)
    cache_grid = torch.stack([torch.cos(freqs_grid),
                              torch.sin(freqs_grid)], dim=-1)
    cache = cache_grid.flatten(0, 1)
    return torch.cat([torch.zeros(cls_token_num, n_elem // 2, 2), cache])


def apply_rotary_emb(x: torch.Tensor, freqs_cis: torch.Tensor):
    xshaped = x.float().reshape(*x.shape[:-1], -1, 2)
    freqs_cis = freqs_cis.view(1, xshaped.size(1), 1, xshaped.size(3), 2)
    x_out2 = torch.stack([
        xshaped[..., 0] * freqs_cis[..., 0] -
        xshaped[..., 1] * freqs_cis[..., 1],
        xshaped[..., 1] * freqs_cis[..., 0] +
        xshaped[..., 0] * freqs_cis[..., 1],
    ], dim=-1)
    x_out2 = x_out2.flatten(3)
    return x_out2.type_as(x)


# --- autoregressive/models/generate.py --------------------------------------
def top_k_top_p_filtering(logits, top_k: int = 0, top_p: float = 1.0,
                          filter_value: float = -float('Inf'),
                          min_tokens_to_keep: int = 1):
    if top_k > 0:
        top_k = min(max(top_k, min_tokens_to_keep), logits.size(-1))
        indices_to_remove = logits < torch.topk(logits, top_k)[0][..., -1,
                                                                  None]
        logits[indices_to_remove] = filter_value
    if top_p < 1.0:
        sorted_logits, sorted_indices = torch.sort(logits, descending=True)
        cumulative_probs = torch.cumsum(F.softmax(sorted_logits, dim=-1),
                                        dim=-1)
        sorted_indices_to_remove = cumulative_probs > top_p
        if min_tokens_to_keep > 1:
            sorted_indices_to_remove[..., :min_tokens_to_keep] = 0
        sorted_indices_to_remove[..., 1:] = \
            sorted_indices_to_remove[..., :-1].clone()
        sorted_indices_to_remove[..., 0] = 0
        indices_to_remove = sorted_indices_to_remove.scatter(
            1, sorted_indices, sorted_indices_to_remove)
        logits[indices_to_remove] = filter_value
    return logits


def sample(logits, temperature: float = 1.0, top_k: int = 0,
           top_p: float = 1.0, sample_logits=True):
    logits = logits[:, -1, :] / max(temperature, 1e-5)
    if top_k > 0 or top_p < 1.0:
        logits = top_k_top_p_filtering(logits, top_k=top_k, top_p=top_p)
    probs = F.softmax(logits, dim=-1)
    if sample_logits:
        idx = torch.multinomial(probs, num_samples=1)
    else:
        _, idx = torch.topk(probs, k=1, dim=-1)
    return idx, probs


def prefill(model, cond_idx: torch.Tensor, input_pos: torch.Tensor,
            cfg_scale: float, **sampling_kwargs):
    if cfg_scale > 1.0:
        logits = model(None, cond_idx, input_pos)
        cond_logits, uncond_logits = torch.split(logits, len(logits) // 2,
                                                 dim=0)
        logits = uncond_logits + (cond_logits - uncond_logits) * cfg_scale
    else:
        logits = model(None, cond_idx, input_pos)
    return sample(logits, **sampling_kwargs)[0]


def decode_one_token(model, x: torch.Tensor, input_pos: torch.Tensor,
                     cfg_scale: float, cfg_flag: bool, **sampling_kwargs):
    assert input_pos.shape[-1] == 1
    if cfg_scale > 1.0:
        x_combined = torch.cat([x, x])
        logits = model(x_combined, cond_idx=None, input_pos=input_pos)
        cond_logits, uncond_logits = torch.split(logits, len(logits) // 2,
                                                 dim=0)
        if cfg_flag:
            logits = uncond_logits + (cond_logits - uncond_logits) * \
                cfg_scale
        else:
            logits = cond_logits
    else:
        logits = model(x, cond_idx=None, input_pos=input_pos)
    return sample(logits, **sampling_kwargs)


def decode_n_tokens(model, cur_token: torch.Tensor, input_pos: torch.Tensor,
                    num_new_tokens: int, cfg_scale: float, cfg_interval: int,
                    **sampling_kwargs):
    new_tokens = []
    cfg_flag = True
    for i in range(num_new_tokens):
        if cfg_interval > -1 and i > cfg_interval:
            cfg_flag = False
        next_token, _ = decode_one_token(model, cur_token, input_pos,
                                         cfg_scale, cfg_flag,
                                         **sampling_kwargs)
        input_pos += 1
        new_tokens.append(next_token.clone())
        cur_token = next_token.view(-1, 1)
    return new_tokens


@torch.no_grad()
def generate(model, cond, max_new_tokens, cfg_scale=1.0, cfg_interval=-1,
             **sampling_kwargs):
    """``generate`` for ``c2i`` without ``emb_masks``: the tokens
    ``(B, max_new_tokens)``."""
    if cfg_scale > 1.0:
        cond_null = torch.ones_like(cond) * model.num_classes
        cond_combined = torch.cat([cond, cond_null])
    else:
        cond_combined = cond
    T = 1
    T_new = T + max_new_tokens
    max_seq_length = T_new
    max_batch_size = cond.shape[0]
    max_batch_size_cfg = max_batch_size * 2 if cfg_scale > 1.0 else \
        max_batch_size
    model.setup_caches(max_batch_size=max_batch_size_cfg,
                       max_seq_length=max_seq_length,
                       dtype=model.tok_embeddings.weight.dtype)
    seq = torch.empty((max_batch_size, T_new), dtype=torch.int)
    input_pos = torch.arange(0, T)
    next_token = prefill(model, cond_combined, input_pos, cfg_scale,
                         **sampling_kwargs)
    seq[:, T:T + 1] = next_token
    input_pos = torch.tensor([T], dtype=torch.int)
    generated_tokens = decode_n_tokens(model, next_token, input_pos,
                                       max_new_tokens - 1, cfg_scale,
                                       cfg_interval, **sampling_kwargs)
    seq[:, T + 1:] = torch.cat(generated_tokens, dim=1)
    return seq[:, T:]
