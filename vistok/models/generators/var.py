"""Next-scale prediction: VAR (Tian et al. 2024, "Visual Autoregressive
Modeling: Scalable Image Generation via Next-Scale Prediction"), with
ImageFolder's parallel heads for product-quantized branches (Li et al. 2025,
"ImageFolder: Autoregressive Image Generation with Folded Tokens").

The token maps ``r_1, ..., r_n`` of a multi-scale residual quantizer (VAR
Alg. 1) are generated coarse to fine, one scale per step: ``p(r_1, ..., r_n)
= Π_k p(r_k | r_1, ..., r_{k-1})`` (VAR eq. 6), all tokens of a scale in
parallel. Tensors inside the transformer are sequence-major ``(B, L, C)``
with ``L = Σ_k s_k²`` positions (scale-major, raster order inside a scale).
"""
import math
from typing import Dict, List, Optional, Sequence, Union

import torch
import torch.nn as nn

from vistok.models.backbones.transformer import new_caches
from vistok.models.backbones.var_transformer import (
    AdaLNBeforeHead,
    AdaLNSelfAttn,
)
from vistok.models.generators.base import (
    BaseGenerator,
    ClassEmbedding,
    SamplerCfg,
    token_cross_entropy,
)
from vistok.models.generators.sampling import TokenSampler
from vistok.models.quantizers.multiscale import MultiScaleResidualQuantizer
from vistok.models.quantizers.product import ProductQuantizer, unstack_branches
from vistok.models.utils.frozen import freeze_as_buffers, load_frozen_weights
from vistok.registry import MODELS, QUANTIZERS
from vistok.utils.weights import MissingWeightsError, load_state_dict_file

#: VAR's tokenizer quantizer (4096 codes × 32 channels, scales 1..16).
DEFAULT_QUANTIZER = dict(type='MultiScaleResidualQuantizer')

QUANTIZER_HOW_TO_GET = (
    'Set model.quantizer_weights to the checkpoint (.pth, or a .safetensors '
    'export from tools/model_converters/export_safetensors.py) of the '
    'multi-scale tokenizer whose tokens the generator models; its '
    '`quantizer.*` tensors (model.quantizer_prefix) fill the frozen '
    'quantizer. tools/sample.py fills it from --tokenizer-checkpoint.')


@MODELS.register_module()
class VARGenerator(BaseGenerator):
    """VAR: class-conditional next-scale prediction over the token maps of a
    multi-scale residual quantizer (or of ``P`` such branches of a product
    quantizer, ImageFolder).

    **Input sequence** (VAR §3.2, Fig. 4), ``L = Σ_k s_k²`` positions: the
    first scale's ``s_1²`` positions hold the class embedding plus
    ``pos_start`` (the start token); scale ``k > 1`` holds ``word_embed``
    (Linear ``C_vae → C``) of the quantizer's teacher-forcing input — the
    running reconstruction ``f̂_{k-1}`` area-down-sampled to ``s_k``
    (:meth:`MultiScaleResidualQuantizer.next_scale_inputs`; with branches,
    the branches' inputs concatenated along the channels, ``C_vae = Σ_p
    C_p``). Every position adds an absolute position embedding
    (``pos_1LC``, ``(1, L, C)``) and the embedding of its scale
    (``lvl_embed``).

    **Transformer** (blocks from
    :mod:`vistok.models.backbones.var_transformer`): ``depth``
    :class:`AdaLNSelfAttn` blocks conditioned on the class embedding
    (per-block or, with ``shared_aln``, shared AdaLN projection) under the
    **block-causal mask** — a position attends to every position of its own
    and of earlier scales (:meth:`attention_mask`) — then
    :class:`AdaLNBeforeHead` and the head ``Linear(C, P·V)``. Position ``i``
    of scale ``k`` predicts token ``i`` of ``r_k``; with ``P`` branches the
    head's output is split into ``P`` parallel heads of ``V`` logits, one
    token per branch (ImageFolder's parallel decoding). Widths follow VAR's
    depth scaling: ``C = 64 · depth``, ``depth`` heads, MLP ratio 4,
    stochastic depth ``0.1 · depth / 24``. Parameter counts (transformer
    only; the quantizer is a frozen buffer): depth 16 → 310,283,520 and
    depth 17 → 371,191,905 for VAR's tokenizer (680 positions, 32 channels,
    4096 codes); ImageFolder's depth-17 generator (286 positions, 2 × 32
    channels, 2 × 4096 logits) → 375,258,593.

    **Loss**: token cross-entropy averaged over positions (and branches),
    as VAR's trainer (weights ``1/L``) and ImageFolder (mean over branches);
    labels are dropped to the null class with ``class_dropout_prob``.
    :meth:`logits` gives ``(B, L·P, V)``, position-major, branch-minor.

    **Generation** (:meth:`generate`, VAR's ``autoregressive_infer_cfg``):
    scale by scale with a KV cache, so each step runs the transformer on the
    new scale's ``s_k²`` positions only; all tokens (and branches) of a
    scale are drawn in parallel by the sampler, guided at ``progress = (k -
    1) / (n - 1)``. VAR's guidance ``(1 + t)ℓ_c − tℓ_u`` with ``t = cfg ·
    progress`` is the ``'linear'`` schedule with ``guidance_scale = 1 +
    cfg``. The next scale's input is recomputed from all maps drawn so far
    through the quantizer's ``next_scale_inputs`` (the very teacher-forcing
    path, so generation and training see identical inputs).

    **Quantizer**: built from ``quantizer`` and frozen
    (:func:`~vistok.models.utils.frozen.freeze_as_buffers`: not trained, not in
    checkpoints); :meth:`init_weights` fills it from the tokenizer
    checkpoint ``quantizer_weights`` (tensors under ``quantizer_prefix``).
    Its config must be the tokenizer's.

    **Parameter names** follow VAR's code (``word_embed``, ``pos_start``,
    ``pos_1LC``, ``lvl_embed``, ``shared_ada_lin``, ``blocks.i.attn.
    {mat_qkv, q_bias, v_bias, scale_mul_1H11, proj}``, ``blocks.i.ffn.
    {fc1, fc2}``, ``blocks.i.{ada_lin, ada_gss}``, ``head_nm``, ``head``)
    except the class table: VAR's ``class_emb.weight`` is
    ``class_emb.embedding.weight`` here, and VAR's derived buffers
    (``lvl_1L``, ``attn_bias_for_masking``, ``zero_k_bias``) are not kept.

    Args:
        quantizer: QUANTIZERS config (or module) of the tokenizer's
            quantizer: a :class:`MultiScaleResidualQuantizer`, or a
            :class:`ProductQuantizer` of them with equal codebook sizes.
        quantizer_weights: tokenizer checkpoint loaded by
            :meth:`init_weights`.
        quantizer_prefix: key prefix of the quantizer in that checkpoint.
        patch_nums: the scales ``s_1..s_n``; must equal the quantizer's.
        num_branches: ``P`` parallel heads; must equal the quantizer's
            number of branches (1 for a plain multi-scale quantizer).
        num_classes, class_dropout_prob, sampler, data_preprocessor,
            init_cfg: see :class:`BaseGenerator`.
        vocab_size: per-branch vocabulary ``V``; ``None`` takes the
            quantizer's codebook size (a given value must equal it).
        depth: number of blocks.
        embed_dim: width ``C`` (``None``: ``64 · depth``).
        num_heads: heads (``None``: ``depth``).
        mlp_ratio: feed-forward width ratio.
        norm_eps: layer norm epsilon.
        shared_aln: one AdaLN projection shared by all blocks.
        attn_l2_norm: cosine attention (see ``VARSelfAttention`` in
            :mod:`vistok.models.backbones.var_transformer`).
        drop_rate, attn_drop_rate: dropout rates.
        drop_path_rate: largest stochastic depth rate, increasing linearly
            over the blocks (``None``: ``0.1 · depth / 24``, VAR's).
        label_smoothing: of the cross-entropy.
        init_std: std of the truncated normal initialisation of linear and
            embedding weights (``None``: ``sqrt(1 / (3C))``, VAR's
            automatic value).
        init_head: multiplier of the head's initial weights.
        init_adaln: multiplier of the initial AdaLN scale / shift weights.
        init_adaln_gamma: multiplier of the initial AdaLN gate weights.
    """

    def __init__(self,
                 quantizer: Union[dict, nn.Module] = DEFAULT_QUANTIZER,
                 quantizer_weights: Optional[str] = None,
                 quantizer_prefix: str = 'quantizer.',
                 patch_nums: Sequence[int] = (1, 2, 3, 4, 5, 6, 8, 10, 13,
                                              16),
                 num_branches: int = 1,
                 num_classes: int = 1000,
                 vocab_size: Optional[int] = None,
                 depth: int = 16,
                 embed_dim: Optional[int] = None,
                 num_heads: Optional[int] = None,
                 mlp_ratio: float = 4.0,
                 norm_eps: float = 1e-6,
                 shared_aln: bool = False,
                 attn_l2_norm: bool = True,
                 drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0,
                 drop_path_rate: Optional[float] = None,
                 class_dropout_prob: float = 0.1,
                 label_smoothing: float = 0.0,
                 init_std: Optional[float] = None,
                 init_head: float = 0.02,
                 init_adaln: float = 0.5,
                 init_adaln_gamma: float = 1e-5,
                 sampler: SamplerCfg = dict(type='TokenSampler'),
                 data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None):
        quantizer = QUANTIZERS.build_or_take(quantizer)
        branches = self._check_quantizer(quantizer, patch_nums, num_branches)
        codebook_size = branches[0].codebook_size
        if vocab_size not in (None, codebook_size):
            raise ValueError(f'vocab_size={vocab_size} differs from the '
                             f"quantizer's codebook size {codebook_size}")
        super().__init__(num_classes, codebook_size, class_dropout_prob,
                         sampler, data_preprocessor, init_cfg)
        self.quantizer = freeze_as_buffers(quantizer)
        self.quantizer_weights = quantizer_weights
        self.quantizer_prefix = quantizer_prefix
        self.patch_nums = tuple(patch_nums)
        self.num_branches = num_branches
        self.latent_channels = sum(branch.in_channels for branch in branches)
        self.num_positions = sum(side * side for side in self.patch_nums)
        self.first_l = self.patch_nums[0]**2
        self.token_shape = tuple(
            (side, side) if num_branches == 1 else (side, side, num_branches)
            for side in self.patch_nums)
        self.label_smoothing = label_smoothing

        dim = 64 * depth if embed_dim is None else embed_dim
        num_heads = depth if num_heads is None else num_heads
        if drop_path_rate is None:
            drop_path_rate = 0.1 * depth / 24
        self.embed_dim = dim
        self.word_embed = nn.Linear(self.latent_channels, dim)
        self.class_emb = ClassEmbedding(num_classes, dim, class_dropout_prob)
        self.pos_start = nn.Parameter(torch.empty(1, self.first_l, dim))
        self.pos_1LC = nn.Parameter(torch.empty(1, self.num_positions, dim))
        self.lvl_embed = nn.Embedding(len(self.patch_nums), dim)
        self.shared_ada_lin = (nn.Sequential(nn.SiLU(),
                                             nn.Linear(dim, 6 * dim))
                               if shared_aln else None)
        rates = torch.linspace(0, drop_path_rate, depth, device='cpu')
        self.blocks = nn.ModuleList(
            AdaLNSelfAttn(dim, dim, num_heads, mlp_ratio, shared_aln,
                          norm_eps, attn_l2_norm, drop_rate, attn_drop_rate,
                          float(rate)) for rate in rates)
        self.head_nm = AdaLNBeforeHead(dim, dim, norm_eps)
        self.head = nn.Linear(dim, num_branches * codebook_size)

        levels = torch.cat([
            torch.full((side * side, ), k, dtype=torch.long)
            for k, side in enumerate(self.patch_nums)
        ])
        self.register_buffer('level_ids', levels, persistent=False)
        self._init_parameters(init_std, init_head, init_adaln,
                              init_adaln_gamma)

    @staticmethod
    def _check_quantizer(quantizer: nn.Module, patch_nums: Sequence[int],
                         num_branches: int
                         ) -> List[MultiScaleResidualQuantizer]:
        """The multi-scale branches of ``quantizer``, checked against
        ``patch_nums`` and ``num_branches``."""
        if isinstance(quantizer, ProductQuantizer):
            branches = list(quantizer.branches)
        else:
            branches = [quantizer]
        if not all(isinstance(b, MultiScaleResidualQuantizer)
                   for b in branches):
            raise TypeError(
                f'VARGenerator needs a MultiScaleResidualQuantizer or a '
                f'ProductQuantizer of them (config key model.quantizer), got '
                f'{type(quantizer).__name__} with branches '
                f'{[type(b).__name__ for b in branches]}')
        if len(branches) != num_branches:
            raise ValueError(f'num_branches={num_branches} differs from the '
                             f"quantizer's {len(branches)} branches")
        for p, branch in enumerate(branches):
            if tuple(branch.scales) != tuple(patch_nums):
                raise ValueError(
                    f'patch_nums {list(patch_nums)} differ from the scales '
                    f'{list(branch.scales)} of quantizer branch {p}')
        sizes = [branch.codebook_size for branch in branches]
        if len(set(sizes)) != 1:
            raise ValueError(f'parallel heads need equal branch codebook '
                             f'sizes, got {sizes}')
        return branches

    @torch.no_grad()
    def _init_parameters(self, init_std: Optional[float], init_head: float,
                         init_adaln: float, init_adaln_gamma: float) -> None:
        """VAR's ``init_weights``: truncated normal linear / embedding
        weights and position embeddings, zero biases, the head scaled by
        ``init_head``, AdaLN scale / shift weights by ``init_adaln`` and
        gates by ``init_adaln_gamma``, each block's output projections by
        ``1 / sqrt(2 · depth)`` (GPT-2)."""
        dim = self.embed_dim
        std = math.sqrt(1 / dim / 3) if init_std is None else init_std
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.trunc_normal_(module.weight, std=std)
                if getattr(module, 'bias', None) is not None:
                    nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.pos_start, std=std)
        nn.init.trunc_normal_(self.pos_1LC, std=std)
        self.head.weight.mul_(init_head)
        self.head_nm.ada_lin[-1].weight.mul_(init_adaln)
        depth = len(self.blocks)
        for block in self.blocks:
            block.attn.proj.weight.div_(math.sqrt(2 * depth))
            block.ffn.fc2.weight.div_(math.sqrt(2 * depth))
            if block.shared_aln:
                block.ada_gss[:, :, 2:].mul_(init_adaln)
                block.ada_gss[:, :, :2].mul_(init_adaln_gamma)
            else:
                weight = block.ada_lin[-1].weight
                weight[2 * dim:].mul_(init_adaln)
                weight[:2 * dim].mul_(init_adaln_gamma)

    def init_weights(self) -> None:
        """mmengine's initialisation, then the frozen quantizer from
        ``quantizer_weights`` (:class:`MissingWeightsError` naming
        ``model.quantizer_weights`` when it is not set or missing)."""
        super().init_weights()
        try:
            state = load_state_dict_file(self.quantizer_weights,
                                         'quantizer_weights',
                                         QUANTIZER_HOW_TO_GET)
        except MissingWeightsError as err:
            raise err.with_prefix('model') from None
        prefix = self.quantizer_prefix
        own = {
            key[len(prefix):]: value
            for key, value in state.items() if key.startswith(prefix)
        }
        if not own:
            tops = sorted({key.split('.')[0] for key in state})
            raise KeyError(
                f'{self.quantizer_weights} (model.quantizer_weights) holds '
                f'no tensors under {prefix!r} (model.quantizer_prefix); its '
                f'top-level keys are {tops[:10]}')
        load_frozen_weights(self.quantizer, own, self.quantizer_weights)

    # --- token layouts --------------------------------------------------
    def attention_mask(self) -> torch.Tensor:
        """The block-causal mask ``(L, L)`` bool: position ``i`` attends to
        ``j`` iff ``j``'s scale is not later than ``i``'s (VAR's
        ``attn_bias_for_masking``)."""
        return self.level_ids[:, None] >= self.level_ids[None, :]

    def _as_maps(self, tokens) -> List[torch.Tensor]:
        """Per-scale maps ``[(B, s_k, s_k[, P])]`` from maps or the flat
        sequence ``(B, L[, P])``; shapes checked."""
        tail = () if self.num_branches == 1 else (self.num_branches, )
        if torch.is_tensor(tokens):
            expected = (self.num_positions, *tail)
            if tuple(tokens.shape[1:]) != expected:
                raise ValueError(
                    f'tokens as a sequence must be (B, '
                    f'{", ".join(map(str, expected))}) for patch_nums '
                    f'{list(self.patch_nums)}, got {tuple(tokens.shape)}')
            chunks = tokens.split([s * s for s in self.patch_nums], dim=1)
            return [
                chunk.reshape(-1, side, side, *tail)
                for chunk, side in zip(chunks, self.patch_nums)
            ]
        maps = list(tokens)
        shapes = [tuple(m.shape[1:]) for m in maps]
        if shapes != list(self.token_shape):
            raise ValueError(
                f'tokens must be per-scale maps (B, *shape) with shapes '
                f'{list(self.token_shape)}, got shapes {shapes}')
        return maps

    def _sequence(self, maps: List[torch.Tensor]) -> torch.Tensor:
        """Flat targets ``(B, L·P)``, position-major, branch-minor."""
        return torch.cat([m.reshape(m.shape[0], -1) for m in maps], dim=1)

    def next_scale_inputs(self, maps: List[torch.Tensor]) -> torch.Tensor:
        """The quantizer's teacher-forcing inputs after the given ``m`` scale
        maps, ``(B, s_2² + ... + s_{m+1}², C_vae)`` fp32 (branches
        concatenated along the channels)."""
        if self.num_branches == 1:
            return self.quantizer.next_scale_inputs(maps)
        return torch.cat([
            branch.next_scale_inputs(branch_maps) for branch, branch_maps in
            zip(self.quantizer.branches, unstack_branches(maps))
        ], dim=-1)

    # --- network --------------------------------------------------------
    def _adaln_condition(self, cond: torch.Tensor) -> torch.Tensor:
        """The blocks' condition: ``cond (B, C)`` or the shared projection
        ``(B, 1, 6, C)``."""
        if self.shared_ada_lin is None:
            return cond
        return self.shared_ada_lin(cond).view(-1, 1, 6, self.embed_dim)

    def _head(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, N, P, V)`` of ``x (B, N, C)``."""
        logits = self.head(self.head_nm(x, cond))
        return logits.unflatten(-1, (self.num_branches, self.vocab_size))

    def logits(self, tokens, labels: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits ``(B, L·P, V)`` (position-major,
        branch-minor) of the per-scale maps (or flat sequence) ``tokens`` for
        ``labels (B,)``; labels are dropped in training."""
        maps = self._as_maps(tokens)
        batch = maps[0].shape[0]
        with torch.autocast(device_type=self.pos_1LC.device.type,
                            enabled=False):
            cond = self.class_emb(labels)
            x = cond[:, None].expand(batch, self.first_l, -1) + self.pos_start
            if len(self.patch_nums) > 1:
                x = torch.cat(
                    [x, self.word_embed(self.next_scale_inputs(maps[:-1]))],
                    dim=1)
            x = x + self.lvl_embed(self.level_ids) + self.pos_1LC
        mask = self.attention_mask()
        ada_cond = self._adaln_condition(cond)
        for block in self.blocks:
            x = block(x, ada_cond, mask)
        return self._head(x, cond).flatten(1, 2)

    def loss(self, tokens, labels: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``loss_ce``: cross-entropy averaged over positions and branches;
        ``acc``: top-1 accuracy."""
        maps = self._as_maps(tokens)
        return token_cross_entropy(self.logits(maps, labels),
                                   self._sequence(maps),
                                   label_smoothing=self.label_smoothing)

    # --- sampling -------------------------------------------------------
    @torch.no_grad()
    def generate(self,
                 labels: torch.Tensor,
                 sampler: Optional[TokenSampler] = None,
                 generator: Optional[torch.Generator] = None
                 ) -> List[torch.Tensor]:
        """Sample the per-scale maps ``[(B, s_k, s_k[, P])]`` (the indices
        the quantizer's ``decode`` takes, branch-local ids) for ``labels
        (B,)``, scale by scale with a KV cache; see the class docstring.
        Call it in eval mode (as ``predict`` in validation): dropout and
        stochastic depth act in training mode."""
        sampler = self.sampler if sampler is None else sampler
        labels = torch.as_tensor(labels, device=self.pos_1LC.device).long()
        batch = labels.shape[0]
        num_scales = len(self.patch_nums)
        if labels.dim() != 1 or labels.numel() and (
                labels.min() < 0 or labels.max() > self.null_class):
            raise ValueError(f'labels must be (B,) class ids in [0, '
                             f'{self.null_class}], got {labels.tolist()}')
        # the table itself: no label dropout, even in training mode
        cond = self.class_emb.embedding(self.guidance_labels(labels, sampler))
        ada_cond = self._adaln_condition(cond)
        level_pos = self.lvl_embed(self.level_ids) + self.pos_1LC[0]
        x = cond[:, None] + self.pos_start + level_pos[:self.first_l]
        caches = new_caches(len(self.blocks))
        maps, start = [], 0
        for k, side in enumerate(self.patch_nums):
            for block, cache in zip(self.blocks, caches):
                x = block(x, ada_cond, cache=cache)
            logits = self.guided(self._head(x, cond), sampler,
                                 k / max(num_scales - 1, 1))
            ids = sampler.sample(logits, generator).view(
                batch, side, side, self.num_branches)
            maps.append(ids.squeeze(-1) if self.num_branches == 1 else ids)
            start += side * side
            if k + 1 < num_scales:
                size = self.patch_nums[k + 1]**2
                inputs = self.next_scale_inputs(maps)[:, -size:]
                x = self.word_embed(inputs) + level_pos[start:start + size]
                x = self.guidance_repeat(x, sampler)
        return maps
