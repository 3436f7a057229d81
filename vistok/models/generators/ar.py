"""Class-conditional autoregressive token generator, LlamaGen-style
(Sun et al. 2024, "Autoregressive Model Beats Diffusion: Llama for Scalable
Image Generation")."""
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from vistok.models.backbones.transformer import (
    KVCache,
    RMSNorm,
    TransformerBlock,
    llama_ffn_dim,
    new_caches,
    rope_table_1d,
    rope_table_2d,
)
from vistok.models.generators.base import (
    BaseGenerator,
    ClassEmbedding,
    SamplerCfg,
    token_cross_entropy,
)
from vistok.models.generators.sampling import TokenSampler
from vistok.registry import MODELS


@MODELS.register_module()
class ARGenerator(BaseGenerator):
    """GPT over a token grid in raster order, conditioned on a class token.

    The sequence is ``[class embedding, t_0, …, t_{N-2}]``; the output at
    position ``i`` predicts ``t_i`` (LlamaGen §2.2: the class embedding is
    the prefilling token). Llama blocks: RMSNorm, SwiGLU, RoPE (2-D over
    the grid as LlamaGen, or 1-D), no biases; causal attention with a KV
    cache for :meth:`generate`. The class position's rotary entries are
    LlamaGen's: ``(cos, sin) = (0, 0)`` (``precompute_freqs_cis_2d``
    prepends ``cls_token_num`` rows of zeros), so the class token's query
    and key are zero in every layer — every position attends to it with
    logit 0 and it reaches them through its value only
    (``prefix_rope='identity'`` leaves it unrotated instead). The training
    loss is the token cross-entropy; labels are dropped to the null class
    with ``class_dropout_prob`` for classifier-free guidance.

    ``arch`` presets (LlamaGen Table 1, with ``vocab_size=16384`` and
    ``num_classes=1000``: 111M / 343M / 775M / 1.4B parameters):
    ``'gpt-b'`` (768 wide, 12 layers, 12 heads), ``'gpt-l'`` (1024, 24,
    16), ``'gpt-xl'`` (1280, 36, 20), ``'gpt-xxl'`` (1536, 48, 24); or a
    dict ``dict(dim=..., depth=..., num_heads=...)``.

    Args:
        arch: preset name or dict (see above).
        num_classes, vocab_size, class_dropout_prob, sampler,
            data_preprocessor, init_cfg: see :class:`BaseGenerator`.
        token_shape: the token grid, ``(h, w)`` (or ``(N,)`` with 1-D RoPE).
        rope: ``'2d'`` (over the grid) or ``'1d'`` (over raster positions).
        rope_base: RoPE base.
        prefix_rope: rotary entries of the class position: ``'zero'``
            (LlamaGen's released models: its query and key become zero) or
            ``'identity'`` (unrotated).
        ffn_multiple_of, ffn_dim_multiplier: SwiGLU width, see
            :func:`~vistok.models.backbones.transformer.llama_ffn_dim`.
        norm_eps: RMSNorm epsilon.
        token_dropout: dropout on the input embeddings.
        resid_dropout: dropout on each attention / feed-forward output.
        attn_dropout: dropout on attention weights.
        init_std: std of the normal initialisation of linear and embedding
            weights (the output layer starts at zero, as LlamaGen).
    """

    arch_zoo = {
        'gpt-b': dict(dim=768, depth=12, num_heads=12),
        'gpt-l': dict(dim=1024, depth=24, num_heads=16),
        'gpt-xl': dict(dim=1280, depth=36, num_heads=20),
        'gpt-xxl': dict(dim=1536, depth=48, num_heads=24),
    }

    def __init__(self,
                 arch: Union[str, dict] = 'gpt-b',
                 num_classes: int = 1000,
                 vocab_size: int = 16384,
                 token_shape: Sequence[int] = (16, 16),
                 rope: str = '2d',
                 rope_base: float = 10000.0,
                 prefix_rope: str = 'zero',
                 ffn_multiple_of: int = 256,
                 ffn_dim_multiplier: Optional[float] = None,
                 norm_eps: float = 1e-5,
                 token_dropout: float = 0.1,
                 resid_dropout: float = 0.1,
                 attn_dropout: float = 0.0,
                 class_dropout_prob: float = 0.1,
                 init_std: float = 0.02,
                 sampler: SamplerCfg = dict(type='TokenSampler'),
                 data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None):
        super().__init__(num_classes, vocab_size, class_dropout_prob, sampler,
                         data_preprocessor, init_cfg)
        arch = self.resolve_arch(arch, ('dim', 'depth', 'num_heads'))
        dim, depth, num_heads = arch['dim'], arch['depth'], arch['num_heads']
        self.token_shape = tuple(token_shape)
        self.num_tokens = int(torch.Size(self.token_shape).numel())
        head_dim = dim // num_heads
        if rope == '2d':
            table = rope_table_2d(self.token_shape, head_dim, rope_base,
                                  num_prefix=1)
        elif rope == '1d':
            table = rope_table_1d(self.num_tokens, head_dim, rope_base,
                                  num_prefix=1)
        else:
            raise ValueError(f"rope must be '2d' or '1d', got {rope!r}")
        if prefix_rope == 'zero':
            table[0] = 0  # LlamaGen: (cos, sin) = (0, 0) at the class token
        elif prefix_rope != 'identity':
            raise ValueError(f"prefix_rope must be 'zero' or 'identity', "
                             f'got {prefix_rope!r}')
        # (1 + N, D_h / 2, 2): the class token's row, then the grid
        self.register_buffer('rope', table, persistent=False)

        self.class_embed = ClassEmbedding(num_classes, dim,
                                          class_dropout_prob)
        self.token_embed = nn.Embedding(vocab_size, dim)
        self.token_dropout = nn.Dropout(token_dropout)
        ffn_dim = llama_ffn_dim(dim, ffn_multiple_of, ffn_dim_multiplier)
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, num_heads, ffn_dim, norm='rms',
                             ffn='swiglu', dropout=resid_dropout,
                             attn_dropout=attn_dropout, norm_eps=norm_eps)
            for _ in range(depth))
        self.norm = RMSNorm(dim, eps=norm_eps)
        self.head = nn.Linear(dim, vocab_size, bias=False)
        self.init_std = init_std
        self._init_parameters()

    def _init_parameters(self) -> None:
        """LlamaGen's initialisation: N(0, init_std) linear / embedding
        weights, zero output layer."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=self.init_std)
                if getattr(module, 'bias', None) is not None:
                    nn.init.zeros_(module.bias)
        nn.init.zeros_(self.head.weight)

    # --- network --------------------------------------------------------
    def _transformer(self, h: torch.Tensor, start: int,
                     caches: Optional[List[KVCache]] = None) -> torch.Tensor:
        """Causal blocks over ``h (B, T, D)`` at sequence positions
        ``start .. start + T - 1`` → logits ``(B, T, V)``."""
        rope = self.rope[start:start + h.shape[1]]
        h = self.token_dropout(h)
        for i, block in enumerate(self.blocks):
            h = block(h, rope, causal=True,
                      cache=None if caches is None else caches[i])
        return self.head(self.norm(h))

    def logits(self, tokens: torch.Tensor,
               labels: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits ``(B, N, V)``: position ``i`` predicts
        ``t_i`` from the class and ``t_{<i}``."""
        seq = self._check_tokens(tokens)
        h = torch.cat([self.class_embed(labels)[:, None],
                       self.token_embed(seq[:, :-1])], dim=1)
        return self._transformer(h, 0)

    def loss(self, tokens: torch.Tensor,
             labels: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``loss_ce``: mean next-token cross-entropy; ``acc``: top-1
        accuracy."""
        return token_cross_entropy(self.logits(tokens, labels),
                                   self._check_tokens(tokens))

    # --- sampling -------------------------------------------------------
    @torch.no_grad()
    def generate(self,
                 labels: torch.Tensor,
                 sampler: Optional[TokenSampler] = None,
                 generator: Optional[torch.Generator] = None,
                 use_cache: bool = True,
                 return_logits: bool = False
                 ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """Sample ``(B, *token_shape)`` tokens for ``labels (B,)`` in raster
        order, one token per step, guided at ``progress = i / N`` for token
        ``i``. ``use_cache=False`` recomputes the whole prefix each step
        (the reference the KV cache is tested against). With
        ``return_logits`` also the (guided) logits ``(B, N, V)`` each token
        was sampled from."""
        sampler = self.sampler if sampler is None else sampler
        labels = torch.as_tensor(labels, device=self.rope.device).long()
        batch_labels = self.guidance_labels(labels, sampler)
        caches = new_caches(len(self.blocks)) if use_cache else None
        h = self.class_embed(batch_labels)[:, None]
        sampled, step_logits = [], []
        for i in range(self.num_tokens):
            if use_cache:
                logits = self._transformer(h, i, caches)[:, -1]
            else:
                logits = self._transformer(h, 0)[:, -1]
            logits = self.guided(logits, sampler, i / self.num_tokens)
            step_logits.append(logits)
            token = sampler.sample(logits, generator)
            sampled.append(token)
            if i + 1 < self.num_tokens:
                new = self.token_embed(
                    self.guidance_repeat(token, sampler))[:, None]
                h = new if use_cache else torch.cat([h, new], dim=1)
        tokens = torch.stack(sampled, dim=1).view(len(labels),
                                                  *self.token_shape)
        if return_logits:
            return tokens, torch.stack(step_logits, dim=1)
        return tokens
