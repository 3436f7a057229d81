"""Class-conditional masked token generator: MaskGIT (Chang et al. 2022,
"MaskGIT: Masked Generative Image Transformer"), with the U-ViT variant
(Bao et al. 2023) TiTok-S-128 uses (Yu et al. 2024)."""
import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from vistok.models.backbones.transformer import TransformerBlock
from vistok.models.generators.base import (
    BaseGenerator,
    ClassEmbedding,
    SamplerCfg,
    token_cross_entropy,
)
from vistok.models.generators.sampling import TokenSampler
from vistok.registry import MODELS

MASK_SCHEDULES = ('cosine', 'arccos', 'linear')
SAMPLING_MODES = ('maskgit', 'titok')


def mask_schedule(ratio: Union[float, torch.Tensor], schedule: str = 'cosine'
                  ) -> Union[float, torch.Tensor]:
    """Fraction of tokens masked, ``γ(r)``, at ``r`` ∈ [0, 1] (MaskGIT eq. 2
    and §3.2; decreasing from 1 at ``r=0`` to 0 at ``r=1``):

    * ``cosine`` (MaskGIT): ``cos(π r / 2)``;
    * ``arccos`` (MUSE, TiTok): ``arccos(r) / (π / 2)``;
    * ``linear``: ``1 - r``.
    """
    if schedule not in MASK_SCHEDULES:
        raise ValueError(f'mask schedule must be one of {MASK_SCHEDULES}, '
                         f'got {schedule!r}')
    tensor = torch.is_tensor(ratio)
    r = ratio if tensor else torch.tensor(float(ratio), dtype=torch.float64)
    if schedule == 'cosine':
        out = torch.cos(math.pi / 2 * r)
    elif schedule == 'arccos':
        out = torch.arccos(r) / (math.pi / 2)
    else:
        out = 1 - r
    return out if tensor else float(out)


def gumbel_noise(shape: torch.Size, device: torch.device,
                 generator: Optional[torch.Generator] = None,
                 eps: float = 1e-20) -> torch.Tensor:
    """Standard Gumbel noise ``-log(-log u)``, ``u ~ U[0, 1)`` clamped at
    ``eps``."""
    u = torch.rand(shape, device=device, generator=generator)
    return -torch.log((-torch.log(u.clamp_min(eps))).clamp_min(eps))


#: ``noise_fn(shape, device, generator) -> noise`` of
#: :meth:`MaskGITGenerator.generate` (default :func:`gumbel_noise`)
NoiseFn = Callable[[torch.Size, torch.device, Optional[torch.Generator]],
                   torch.Tensor]


class PostNormBlock(TransformerBlock):
    """BERT's layer (Devlin et al. 2019; Hugging Face ``BertLayer``, the
    blocks of TiTok's ``ImageBert``): post-LN ``x ← LN(x + attn(x))``, then
    ``x ← LN(x + ffn(x))``, with :class:`TransformerBlock`'s parameters
    (``attn_norm`` / ``ffn_norm`` are the two post-norms). Arguments: see
    :class:`TransformerBlock` (no long skip, RoPE, mask or cache). Dropout
    in training differs from BERT's in one place: the MLP also drops after
    its activation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (B, N, D)`` → ``(B, N, D)``."""
        x = self.attn_norm(x + self.drop_path(self.attn(x)))
        return self.ffn_norm(x + self.drop_path(self.ffn(x)))


@MODELS.register_module()
class MaskGITGenerator(BaseGenerator):
    """Bidirectional transformer over ``[class token] + N grid tokens``,
    trained to predict masked tokens and decoded iteratively (MaskGIT).

    Training (MaskGIT §3.2): per sample ``r ~ U[0, 1)``, ``ceil(γ(r)·N)``
    (at least 1) random positions are replaced by the mask id
    ``vocab_size``; the loss is the cross-entropy on masked positions (with
    ``label_smoothing``) plus ``unmasked_weight`` times that on the others
    (TiTok: 0.1). Labels are dropped to the null class with
    ``class_dropout_prob``.

    Decoding (MaskGIT §3.2, ``mask_by_random_topk``) over ``steps``
    iterations ``t = 0 … T-1`` from an all-masked grid: sample every masked
    token with the sampler (guided at ``progress = t / T``); keep the
    already decoded ones; confidence = log-probability of the sampled
    token + ``choice_temperature · (1 - (t+1)/T)`` · Gumbel noise (decoded
    tokens: +∞); re-mask the ``n = floor(N · γ((t+1)/T))`` least confident,
    with ``1 ≤ n ≤ (#masked - 1)``; the last step keeps every sampled token.
    That is ``sampling_mode='maskgit'``. ``sampling_mode='titok'`` is
    TiTok's variant (``ImageBert.generate``): with ``τ_t = choice_temperature
    · (1 - (t+1)/T)``, tokens are ``argmax(ℓ + τ_t · g)`` (Gumbel-max
    sampling at the annealed temperature, greedy at the last step; the
    sampler's temperature / top-k / top-p are not used, its guidance is) and
    the confidence is the sampled token's raw guided logit ``+ τ_t · g'``
    (fresh noise); with ``softmax_temperature_annealing`` the logits are
    first divided by ``0.5 + 0.8 · (1 - (t+1)/T)``. TiTok's guidance
    ``ℓ_c + s_T (ℓ_c - ℓ_u)`` is vistok's ``guidance_scale = 1 + s_T``;
    its linear decay (``s_T · t / T`` at step ``t``) is the ``'linear'``
    schedule with that scale.

    Networks: ``long_skip=False`` — ``depth`` pre-LN ViT blocks (GELU MLP);
    ``long_skip=True`` — U-ViT (Bao et al. 2023, §3.1): ``depth / 2`` in
    blocks, a mid block, ``depth / 2`` out blocks each fusing the matching
    in-block output by concatenation + linear (TiTok's ``UViTBert``). Both
    with learned absolute positions, a final LayerNorm and a linear head
    with bias. ``post_norm=True`` (not with ``long_skip``) is BERT's layout
    (Devlin et al. 2019; TiTok's ``ImageBert`` is a Hugging Face
    ``BertModel``): a LayerNorm on the embeddings (after the positions,
    before the dropout), post-LN blocks (:class:`PostNormBlock`) and no
    final LayerNorm.

    ``arch`` presets (TiTok's generators, ``vocab_size=4096``,
    ``num_classes=1000``): ``'titok-bert'`` (768 wide, 24 blocks, 16 heads,
    MLP 3072; sizes of the B-64 / L-32 ``ImageBert``, pre-LN here),
    ``'titok-imagebert'`` (the same sizes in ``ImageBert``'s post-LN
    layout; with ``norm_eps=1e-12`` the released B-64 / L-32 generators
    convert into it, ``tools/model_converters/titok_generator.py``) and
    ``'titok-uvit'`` (1024, 20 + 1, 16, 4096, U-ViT; TiTok-S-128's
    generator, the same parameters as the official model); or a dict with
    ``dim, depth, num_heads, ffn_dim`` and optional ``qkv_bias``,
    ``long_skip``, ``post_norm``.

    Residual (depth) tokens, ``depth_vocab_size`` set — for tokenizers whose
    indices carry a last axis of ``D`` residual depths, each id in its
    depth's own codebook of ``depth_vocab_size`` entries (residual VQ, Lee
    et al. 2022; MARVEL's residual LFQ with ``(B, 32, D)`` ids in
    ``[0, 4096)``):

    * ``token_shape = (*grid, D)``; the sequence is the raster flatten,
      i.e. position-major: position ``k``, depth ``d`` at index
      ``k·D + d`` (``N = K·D`` tokens), one MaskGIT sequence;
    * the joint vocabulary is ``vocab_size = D · depth_vocab_size``: the id
      ``i`` at depth ``d`` is embedded (and predicted) as
      ``d · depth_vocab_size + i``, so depths never share embeddings; the
      mask id stays ``vocab_size`` (one mask embedding, the position
      embedding tells depths apart);
    * a depth-``d`` position only predicts its depth's ids: its logits are
      the head's rows ``[d·Vd, (d+1)·Vd)`` (``Vd = depth_vocab_size``),
      i.e. the joint distribution with ``-inf`` everywhere else, so the
      cross-entropy (label smoothing included) is a per-depth softmax;
      :meth:`logits` returns them un-offset, ``(B, N, Vd)``, and
      :meth:`generate` returns per-depth ids in ``[0, Vd)``, ``(B,
      *token_shape)``, which the tokenizer decodes directly.

    Args:
        arch: preset name or dict (see above).
        num_classes, vocab_size, class_dropout_prob, sampler,
            data_preprocessor, init_cfg: see :class:`BaseGenerator`.
        token_shape: the token grid (any rank; raster order); with
            ``depth_vocab_size`` its last axis is the depth axis ``D``.
        depth_vocab_size: per-depth codebook size ``Vd`` of residual
            tokens (see above; ``vocab_size`` must be ``D · Vd``);
            ``None``: one vocabulary shared by all positions.
        mask_schedule: ``γ`` for training and decoding, one of
            :data:`MASK_SCHEDULES`.
        steps: decoding iterations ``T``.
        choice_temperature: Gumbel temperature of the confidence (and, in
            ``'titok'`` mode, of the token sampling) at the first step
            (annealed linearly to 0).
        sampling_mode: ``'maskgit'`` or ``'titok'`` (see above).
        softmax_temperature_annealing: ``'titok'`` mode's logit
            temperature ``0.5 + 0.8 · (1 - (t+1)/T)``.
        label_smoothing: of the cross-entropy.
        unmasked_weight: loss weight of the unmasked positions.
        dropout: dropout on embeddings and block outputs.
        attn_dropout: dropout on attention weights.
        norm_eps: LayerNorm epsilon.
        init_std: std of the truncated normal init of linear / embedding
            weights and positions.
    """

    arch_zoo = {
        'titok-bert':
        dict(dim=768, depth=24, num_heads=16, ffn_dim=3072, qkv_bias=True,
             long_skip=False),
        'titok-imagebert':
        dict(dim=768, depth=24, num_heads=16, ffn_dim=3072, qkv_bias=True,
             long_skip=False, post_norm=True),
        'titok-uvit':
        dict(dim=1024, depth=20, num_heads=16, ffn_dim=4096, qkv_bias=False,
             long_skip=True),
    }

    def __init__(self,
                 arch: Union[str, dict] = 'titok-bert',
                 num_classes: int = 1000,
                 vocab_size: int = 4096,
                 token_shape: Sequence[int] = (16, 16),
                 depth_vocab_size: Optional[int] = None,
                 mask_schedule: str = 'cosine',
                 steps: int = 8,
                 choice_temperature: float = 4.5,
                 sampling_mode: str = 'maskgit',
                 softmax_temperature_annealing: bool = False,
                 label_smoothing: float = 0.1,
                 unmasked_weight: float = 0.0,
                 dropout: float = 0.1,
                 attn_dropout: float = 0.1,
                 norm_eps: float = 1e-5,
                 class_dropout_prob: float = 0.1,
                 init_std: float = 0.02,
                 sampler: SamplerCfg = dict(type='TokenSampler'),
                 data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None):
        super().__init__(num_classes, vocab_size, class_dropout_prob, sampler,
                         data_preprocessor, init_cfg)
        arch = self.resolve_arch(arch,
                                 ('dim', 'depth', 'num_heads', 'ffn_dim'))
        if mask_schedule not in MASK_SCHEDULES:
            raise ValueError(f'mask_schedule must be one of {MASK_SCHEDULES},'
                             f' got {mask_schedule!r}')
        if steps < 1:
            raise ValueError(f'steps must be >= 1, got {steps}')
        if sampling_mode not in SAMPLING_MODES:
            raise ValueError(f'sampling_mode must be one of '
                             f'{SAMPLING_MODES}, got {sampling_mode!r}')
        if softmax_temperature_annealing and sampling_mode != 'titok':
            raise ValueError("softmax_temperature_annealing needs "
                             "sampling_mode='titok'")
        dim, depth = arch['dim'], arch['depth']
        long_skip = arch.get('long_skip', False)
        post_norm = arch.get('post_norm', False)
        if long_skip and depth % 2:
            raise ValueError(f'a U-ViT (long_skip=True) needs an even depth, '
                             f'got {depth}')
        if long_skip and post_norm:
            raise ValueError('arch: post_norm (BERT) and long_skip (U-ViT) '
                             'cannot be combined')
        self.token_shape = tuple(token_shape)
        self.num_tokens = int(torch.Size(self.token_shape).numel())
        self.depth_vocab_size = depth_vocab_size
        self.num_depths = 1
        if depth_vocab_size is not None:
            if depth_vocab_size < 1:
                raise ValueError(f'depth_vocab_size must be >= 1, got '
                                 f'{depth_vocab_size}')
            self.num_depths = self.token_shape[-1]
            if vocab_size != self.num_depths * depth_vocab_size:
                raise ValueError(
                    f'vocab_size ({vocab_size}) must equal D * '
                    f'depth_vocab_size = {self.num_depths} * '
                    f'{depth_vocab_size} = '
                    f'{self.num_depths * depth_vocab_size} (D = the last '
                    f'axis of token_shape {self.token_shape})')
        self.mask_id = vocab_size
        self.schedule = mask_schedule
        self.steps = steps
        self.choice_temperature = choice_temperature
        self.sampling_mode = sampling_mode
        self.softmax_temperature_annealing = softmax_temperature_annealing
        self.label_smoothing = label_smoothing
        self.unmasked_weight = unmasked_weight
        self.init_std = init_std

        self.class_embed = ClassEmbedding(num_classes, dim,
                                          class_dropout_prob)
        self.token_embed = nn.Embedding(vocab_size + 1, dim)  # + mask id
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_tokens + 1, dim))
        self.dropout = nn.Dropout(dropout)

        block_type = PostNormBlock if post_norm else TransformerBlock

        def block(skip: bool = False) -> TransformerBlock:
            return block_type(dim, arch['num_heads'], arch['ffn_dim'],
                                    norm='layer', ffn='gelu',
                                    qkv_bias=arch.get('qkv_bias', True),
                                    proj_bias=True, dropout=dropout,
                                    attn_dropout=attn_dropout,
                                    norm_eps=norm_eps, long_skip=skip)

        if long_skip:
            self.in_blocks = nn.ModuleList(block() for _ in range(depth // 2))
            self.mid_block = block()
            self.out_blocks = nn.ModuleList(
                block(skip=True) for _ in range(depth // 2))
        else:
            self.blocks = nn.ModuleList(block() for _ in range(depth))
        self.long_skip = long_skip
        self.post_norm = post_norm
        self.embed_norm = nn.LayerNorm(dim, eps=norm_eps) if post_norm \
            else None
        # post-LN blocks end in a norm: BERT has no final one
        self.norm = nn.Identity() if post_norm else nn.LayerNorm(
            dim, eps=norm_eps)
        self.head = nn.Linear(dim, vocab_size)
        self._init_parameters()

    def _init_parameters(self) -> None:
        """Truncated normal(init_std) weights, zero biases, unit norms (as
        TiTok's ``UViTBert``)."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.trunc_normal_(module.weight, std=self.init_std)
                if getattr(module, 'bias', None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.pos_embed, std=self.init_std)

    # --- network --------------------------------------------------------
    def _joint_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Per-depth ids ``(B, N)`` → joint ids ``d · depth_vocab_size +
        i`` (mask ids unchanged); identity without depths."""
        if self.depth_vocab_size is None:
            return ids
        depth = torch.arange(ids.shape[1], device=ids.device) % \
            self.num_depths
        return torch.where(ids == self.mask_id, ids,
                           ids + depth * self.depth_vocab_size)

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        """Hidden states ``(B, N, dim)`` → logits: ``(B, N, V)``, or with
        depths the rows of each position's depth only, ``(B, N, Vd)``
        (the same values as slicing the full ``(B, N, V)`` head output, at
        ``1/D`` of its cost)."""
        if self.depth_vocab_size is None:
            return self.head(h)
        depths, vocab = self.num_depths, self.depth_vocab_size
        b, n, c = h.shape
        weight = self.head.weight.view(depths, vocab, c)
        out = torch.einsum('bkdc,dvc->bkdv',
                           h.reshape(b, n // depths, depths, c), weight)
        return (out + self.head.bias.view(depths, vocab)).reshape(b, n, vocab)

    def _network(self, ids: torch.Tensor,
                 labels: torch.Tensor) -> torch.Tensor:
        """``ids (B, N)`` (per-depth ids; mask id allowed), ``labels (B,)``
        → logits ``(B, N, V)`` (with depths ``(B, N, Vd)``, see
        :meth:`_head`)."""
        h = torch.cat([self.class_embed(labels)[:, None],
                       self.token_embed(self._joint_ids(ids))], dim=1)
        h = h + self.pos_embed
        if self.embed_norm is not None:
            h = self.embed_norm(h)
        h = self.dropout(h)
        if self.long_skip:
            skips = []
            for blk in self.in_blocks:
                h = blk(h)
                skips.append(h)
            h = self.mid_block(h)
            for blk in self.out_blocks:
                h = blk(h, skip=skips.pop())
        else:
            for blk in self.blocks:
                h = blk(h)
        return self._head(self.norm(h)[:, 1:])

    def _sequence(self, tokens: torch.Tensor,
                  allow_mask: bool) -> torch.Tensor:
        """``tokens (B, *token_shape)`` → ``(B, N)``; with depths, every id
        must be in ``[0, depth_vocab_size)`` (or ``mask_id`` when
        ``allow_mask``), else a ``ValueError`` naming the range."""
        seq = self._check_tokens(tokens)
        if self.depth_vocab_size is None:
            return seq
        bad = (seq < 0) | (seq >= self.depth_vocab_size)
        if allow_mask:
            bad &= seq != self.mask_id
        if bad.any():
            values = seq[bad]
            depths = (bad.nonzero()[:, 1] % self.num_depths).unique()
            allowed = f' or mask_id {self.mask_id}' if allow_mask else ''
            raise ValueError(
                f'tokens must be per-depth ids in [0, {self.depth_vocab_size}'
                f') (depth_vocab_size){allowed}, got ids in '
                f'[{values.min()}, {values.max()}] at depths '
                f'{depths.tolist()}')
        return seq

    def logits(self, tokens: torch.Tensor,
               labels: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, N, V)`` of ``tokens (B, *token_shape)``, in which
        positions holding ``mask_id`` are the masked ones.

        With ``depth_vocab_size``: ``(B, N, depth_vocab_size)``, the logits
        of each position's own depth, un-offset (entry ``i`` at a depth-``d``
        position is joint id ``d·Vd + i``; the other depths' ids have
        probability 0). Not the ``(B, N, V)`` array with ``-inf`` outside
        each position's range, because everything downstream stays exact on
        finite logits: guidance ``ℓ_u + s(ℓ_c - ℓ_u)`` would give
        ``-inf - (-inf) = NaN``; top-k / top-p / temperature act on exactly
        the legal ids; a sampled index is the tokenizer's id; and label
        smoothing spreads its mass over the depth's ids only (over ``-inf``
        logits it would be infinite).
        """
        return self._network(self._sequence(tokens, allow_mask=True), labels)

    def random_mask(self, batch_size: int, device: torch.device,
                    generator: Optional[torch.Generator] = None
                    ) -> torch.Tensor:
        """Training mask ``(B, N)`` (True = masked): ``ceil(γ(r)·N)``
        positions, at least 1, uniformly at random, ``r ~ U[0, 1)`` per
        sample."""
        r = torch.rand(batch_size, device=device, generator=generator)
        count = torch.ceil(mask_schedule(r, self.schedule) * self.num_tokens)
        count = count.clamp(1, self.num_tokens)
        order = torch.rand(batch_size, self.num_tokens, device=device,
                           generator=generator).argsort(-1)
        return order < count[:, None]

    def loss(self, tokens: torch.Tensor,
             labels: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``loss_ce`` (see the class doc), ``acc`` on masked positions and
        the batch's ``mask_ratio``. With depths, the cross-entropy and
        its label smoothing are over each position's depth vocabulary
        (targets un-offset against the :meth:`logits` of that depth)."""
        seq = self._sequence(tokens, allow_mask=False)
        mask = self.random_mask(seq.shape[0], seq.device)
        logits = self._network(seq.masked_fill(mask, self.mask_id), labels)
        weights = mask.float() + self.unmasked_weight * (~mask).float()
        out = token_cross_entropy(logits, seq, weights, self.label_smoothing)
        hit = (logits.detach().argmax(-1) == seq) & mask
        out['acc'] = hit.sum() / mask.sum()
        out['mask_ratio'] = mask.float().mean()
        return out

    # --- sampling -------------------------------------------------------
    @torch.no_grad()
    def generate(self,
                 labels: torch.Tensor,
                 sampler: Optional[TokenSampler] = None,
                 generator: Optional[torch.Generator] = None,
                 steps: Optional[int] = None,
                 choice_temperature: Optional[float] = None,
                 return_history: bool = False,
                 noise_fn: Optional[NoiseFn] = None
                 ) -> Union[torch.Tensor, Tuple[torch.Tensor,
                                                List[torch.Tensor]]]:
        """Decode ``(B, *token_shape)`` tokens for ``labels (B,)`` (see the
        class doc; with depths, per-depth ids in ``[0, depth_vocab_size)``);
        ``steps`` / ``choice_temperature`` default to the constructor's.
        With ``return_history`` also the list of the ``steps``
        intermediate grids (``mask_id`` where still masked).

        ``noise_fn(shape, device, generator)`` draws every Gumbel sample
        (default :func:`gumbel_noise`; a test passes known tensors). Its
        calls, per step ``t``: in ``'titok'`` mode first the token-sampling
        noise, ``(B, N, V)`` (with depths ``V = depth_vocab_size``); then,
        in both modes and on every step but the last, the confidence noise
        ``(B, N)``. The sampler of ``'maskgit'`` mode draws its tokens from
        ``generator`` itself."""
        noise_fn = gumbel_noise if noise_fn is None else noise_fn
        sampler = self.sampler if sampler is None else sampler
        steps = self.steps if steps is None else steps
        if steps < 1:
            raise ValueError(f'steps must be >= 1, got {steps}')
        if choice_temperature is None:
            choice_temperature = self.choice_temperature
        labels = torch.as_tensor(labels, device=self.pos_embed.device).long()
        batch_labels = self.guidance_labels(labels, sampler)
        ids = torch.full((len(labels), self.num_tokens), self.mask_id,
                         dtype=torch.long, device=labels.device)
        history = []
        for t in range(steps):
            logits = self._network(self.guidance_repeat(ids, sampler),
                                   batch_labels)
            logits = self.guided(logits, sampler, t / steps).float()
            masked = ids == self.mask_id
            ratio = (t + 1) / steps
            temperature = choice_temperature * (1 - ratio)
            if self.sampling_mode == 'titok':
                if self.softmax_temperature_annealing:
                    logits = logits / (0.5 + 0.8 * (1 - ratio))
                drawn = (logits + temperature * noise_fn(
                    logits.shape, logits.device, generator)).argmax(-1)
                score = logits.gather(-1, drawn[..., None])[..., 0]
            else:
                drawn = sampler.sample(logits, generator)
                score = logits.log_softmax(-1).gather(
                    -1, drawn[..., None])[..., 0]
            sampled = torch.where(masked, drawn, ids)
            if t + 1 < steps:
                confidence = score.masked_fill(~masked, float('inf'))
                confidence = confidence + temperature * noise_fn(
                    confidence.shape, confidence.device, generator)
                n = math.floor(self.num_tokens *
                               mask_schedule(ratio, self.schedule))
                n = (masked.sum(-1, keepdim=True) - 1).clamp(max=n).clamp(
                    min=1)
                rank = confidence.argsort(-1).argsort(-1)
                sampled = sampled.masked_fill(rank < n, self.mask_id)
            ids = sampled
            history.append(ids.view(len(labels), *self.token_shape))
        tokens = history[-1]
        return (tokens, history) if return_history else tokens
