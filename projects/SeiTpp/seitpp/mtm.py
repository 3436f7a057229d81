"""Masked token modelling (MTM), SeiT++'s self-supervised pre-training on
stored tokens (Lee et al., ECCV 2024, arXiv 2312.10105, §3.1), MAGE-style
(Li et al., CVPR 2023, "MAGE: MAsked Generative Encoder"). Facts from the
official ``models_mtm.py`` (``MaskedAutoencoderTokenViT``,
``mae_token_vit_base_patch16_dec512d4b_k2s2_vitvqgan_32``) and
``main_mtm_pretrain.py``.

``codes (B, H, W)`` (``H = W = img_size``, 28: the crop of the stored 32×32
tokens) →

1. **Token embedding**: learned ``nn.Embedding(num_codes, code_dim)`` →
   LayerNorm → dropout 0.1 (:class:`~.classifiers.TokenEmbedding`, init
   N(0, 0.02); not the VQ codebook) → ``(B, code_dim, H, W)``.
2. **Patches**: ``Conv2d(code_dim→embed_dim, kernel = stride = patch_size)``
   → ``N = (H / p)·(W / p)`` patches (196).
3. **Masking** (:func:`sample_masks`): one ratio ``r`` per batch from a
   normal (mean, std) truncated to ``[min, max]`` (:class:`MaskRatio`; the
   script's 0.45, 0.25 on [0.4, 1.0]); each sample masks the first
   ``⌈N·r⌉`` patches of a random ordering of its own, and the first
   ``⌈N·min⌉`` of those are **dropped** from the encoder input; the other
   masked patches are replaced by a learned ``mask_token`` before the
   position embedding is added. Counts are equal across the batch.
4. **Encoder**: class token + fixed 2-D sin-cos position embedding (MAE's,
   a zero row for the class token), ViT blocks (``qkv_bias``, LayerNorm
   eps 1e-6), LayerNorm.
5. **Decoder**: ``Linear(embed_dim→decoder_embed_dim)``; the sequence is
   scattered back to ``1 + N`` positions, **every masked or dropped
   position holding the encoder's class-token output** (MAGE); + a learned
   decoder position embedding; ``decoder_depth`` blocks with dropout /
   attention dropout 0.1; LayerNorm.
6. **Head** (:class:`MaskedTokenHead`, the official ``MlmLayer``): per patch
   ``Linear(decoder_embed_dim → code_dim·p²)``, unfolded into its ``p×p``
   tokens (``H×W`` positions), GELU, LayerNorm(code_dim), dot product with
   the *detached* token-embedding matrix + a learned bias → logits over the
   ``num_codes`` codes.
7. **Loss** (:func:`masked_token_loss`): cross-entropy (label smoothing a
   config key; the script's 0.0) averaged over each patch's ``p²`` tokens,
   then over the masked patches only (dropped and masked-kept alike).

Initialisation as the official ``initialize_weights``: linears
Xavier-uniform with zero biases (MAE), LayerNorms 1 / 0, ``cls_token``
N(0, 0.02), the patch convolution PyTorch's default (the official model
replaces it after initialising), ``mask_token`` and the decoder position
embedding zeros (the official code leaves both uninitialised).

Not reproduced: the TokenAdapt modules the official model carries frozen
in its state dict (here the data preprocessor owns them), the optional BCE
loss, and the unused fixed decoder position embedding.

**Parameter names** (the encoder's are :class:`~.classifiers.
TokenViTClassifier`'s, so a fine-tuning run loads them with
``pretrained=``): ``token_embed.*``, ``patch_embed.proj.*``, ``cls_token``,
``pos_embed`` (a persistent buffer, not trained), ``mask_token``,
``blocks.{i}.*``, ``norm.*``; decoder: ``decoder_embed.*``,
``decoder_pos_embed``, ``decoder_blocks.{i}.*``, ``decoder_norm.*``,
``mlm_head.{fc,norm}.*``, ``mlm_head.bias``.
"""
import math
from dataclasses import dataclass
from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from mmengine.evaluator import BaseMetric
from mmengine.model import BaseModel

from vistok.models.backbones.vit import (
    PatchEmbed,
    build_blocks,
    config_grid,
    grid_to_tokens,
    sincos_pos_embed_2d,
)
from vistok.models.generators.base import token_cross_entropy
from vistok.registry import METRICS, MODELS
from vistok.structures import DataSample
from .classifiers import TokenEmbedding, check_codes


def mask_count(num_patches: int, ratio: float) -> int:
    """``⌈num_patches · ratio⌉``, rounded to 9 decimals first so that float
    noise (``0.7 · 10 = 7.000000000000001``) does not add a patch."""
    return math.ceil(round(num_patches * ratio, 9))


@dataclass(frozen=True)
class MaskRatio:
    """The masking-ratio distribution: a normal of ``mean`` and ``std``
    truncated to ``[min, max]`` (the official ``scipy.stats.truncnorm``;
    ``main_mtm_pretrain.py``: 0.45, 0.25, [0.4, 1.0]; the model class's
    own defaults, 0.55, 0.25, [0.5, 1.0], are not used by the script).
    ``std = 0`` gives the constant ``mean``. ``min`` is also the dropped
    share (``⌈N·min⌉`` patches).
    """
    min: float = 0.4
    max: float = 1.0
    mean: float = 0.45
    std: float = 0.25

    def __post_init__(self):
        if not 0.0 < self.min <= self.max <= 1.0:
            raise ValueError(f'mask_ratio needs 0 < min <= max <= 1, got '
                             f'min={self.min}, max={self.max}')
        if self.std < 0:
            raise ValueError(f'mask_ratio.std must be >= 0, got {self.std}')
        if self.std == 0 and not self.min <= self.mean <= self.max:
            raise ValueError(f'mask_ratio.std=0 needs min <= mean <= max, '
                             f'got mean={self.mean} on [{self.min}, '
                             f'{self.max}]')

    @classmethod
    def of(cls, cfg: Union['MaskRatio', dict, None]) -> 'MaskRatio':
        """A :class:`MaskRatio` from itself, a dict of its fields or
        ``None`` (the defaults)."""
        if cfg is None:
            return cls()
        if isinstance(cfg, cls):
            return cfg
        if not isinstance(cfg, dict) or set(cfg) - {'min', 'max', 'mean',
                                                    'std'}:
            raise ValueError(f'mask_ratio must be a dict with keys among '
                             f'min, max, mean, std, got {cfg!r}')
        return cls(**cfg)

    def _bounds(self) -> Tuple[float, float]:
        """Standardised truncation points ``α, β``."""
        return ((self.min - self.mean) / self.std,
                (self.max - self.mean) / self.std)

    def sample(self, size: Sequence[int] = (),
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Ratios of shape ``size`` (float64), by inverting the CDF:
        ``r = mean + std·Φ⁻¹(Φ(α) + u·(Φ(β) − Φ(α)))``, ``u ~ U[0, 1)``,
        clamped into ``[min, max]`` against rounding."""
        device = generator.device if generator is not None else 'cpu'
        u = torch.rand(tuple(size), generator=generator, dtype=torch.float64,
                       device=device)
        if self.std == 0:
            return torch.full_like(u, self.mean)
        alpha, beta = (torch.tensor(b, dtype=torch.float64)
                       for b in self._bounds())
        lo, hi = torch.special.ndtr(alpha), torch.special.ndtr(beta)
        ratio = self.mean + self.std * torch.special.ndtri(lo + u * (hi - lo))
        return ratio.clamp(self.min, self.max)

    def expected(self) -> float:
        """Mean of the truncated normal:
        ``mean + std·(φ(α) − φ(β)) / (Φ(β) − Φ(α))``."""
        if self.std == 0:
            return self.mean
        alpha, beta = self._bounds()

        def pdf(x):
            return math.exp(-x * x / 2) / math.sqrt(2 * math.pi)

        def cdf(x):
            return 0.5 * math.erfc(-x / math.sqrt(2))

        mass = cdf(beta) - cdf(alpha)
        return self.mean + self.std * (pdf(alpha) - pdf(beta)) / mass


def sample_masks(batch: int,
                 num_patches: int,
                 ratio_cfg: Union[MaskRatio, dict, None] = None,
                 generator: Optional[torch.Generator] = None,
                 device: Optional[Union[str, torch.device]] = None,
                 ratio: Optional[float] = None
                 ) -> Tuple[torch.Tensor, torch.Tensor, float]:
    """SeiT++ / MAGE masks of a batch: ``(masked, dropped, ratio)``.

    One ``ratio`` for the batch (drawn from ``ratio_cfg``, or the given one,
    which must lie in ``[min, max]``); every sample ranks its patches by a
    random permutation of its own; ``masked`` (bool ``(batch,
    num_patches)``) holds its first ``⌈num_patches·ratio⌉`` patches and
    ``dropped`` the first ``⌈num_patches·min⌉`` of them, so ``dropped ⊆
    masked`` and every sample has the same counts. Random numbers come from
    ``generator`` (on its device) or the global RNG of ``device``; the masks
    are returned on ``device``.
    """
    cfg = MaskRatio.of(ratio_cfg)
    if batch < 1 or num_patches < 1:
        raise ValueError(f'batch and num_patches must be positive, got '
                         f'{batch} and {num_patches}')
    if ratio is None:
        ratio = float(cfg.sample(generator=generator))
    elif not cfg.min <= ratio <= cfg.max:
        raise ValueError(f'mask ratio {ratio} is outside mask_ratio '
                         f'[min={cfg.min}, max={cfg.max}]')
    num_masked = mask_count(num_patches, ratio)
    num_dropped = mask_count(num_patches, cfg.min)
    draw_on = generator.device if generator is not None else device
    noise = torch.rand(batch, num_patches, generator=generator,
                       device=draw_on)
    order = noise.argsort(dim=1)  # order[b, k]: the patch of rank k
    rank = torch.empty_like(order).scatter_(
        1, order,
        torch.arange(num_patches, device=order.device).expand(batch, -1))
    rank = rank.to(device) if device is not None else rank
    return rank < num_masked, rank < num_dropped, ratio


def patch_mask_to_tokens(masked: torch.Tensor, grid: Tuple[int, int],
                         patch_size: int) -> torch.Tensor:
    """Patch mask ``(B, h·w)`` → token mask ``(B, h·p, w·p)`` (each patch
    covers its ``p×p`` tokens)."""
    grid_mask = masked.reshape(masked.shape[0], *grid)
    return grid_mask.repeat_interleave(patch_size, 1).repeat_interleave(
        patch_size, 2)


def masked_token_loss(logits: torch.Tensor,
                      targets: torch.Tensor,
                      masked: torch.Tensor,
                      patch_size: int,
                      label_smoothing: float = 0.0) -> dict:
    """The MTM loss: cross-entropy of ``logits (B, H·W, V)`` (raster order)
    against ``targets (B, H, W)``, averaged over the ``p²`` tokens of every
    patch, then over the patches ``masked (B, (H/p)·(W/p))`` holds (the
    official ``forward_loss``). Returns ``dict(loss_ce, acc)`` (``acc``:
    top-1 over the tokens of masked patches, detached)."""
    batch, height, width = targets.shape
    grid = (height // patch_size, width // patch_size)
    if (grid[0] * patch_size, grid[1] * patch_size) != (height, width):
        raise ValueError(f'targets {tuple(targets.shape)} are not a whole '
                         f'number of {patch_size}x{patch_size} patches')
    if tuple(masked.shape) != (batch, grid[0] * grid[1]):
        raise ValueError(f'masked must be (B, num_patches) = ({batch}, '
                         f'{grid[0] * grid[1]}), got {tuple(masked.shape)}')
    if not masked.any():
        raise ValueError('masked_token_loss needs at least one masked patch')
    weights = patch_mask_to_tokens(masked, grid, patch_size).flatten(1)
    # every masked patch has p² tokens: the token-weighted mean is the mean
    # over masked patches of the per-patch mean
    return token_cross_entropy(logits, targets.flatten(1), weights.float(),
                               label_smoothing)


class MaskedTokenHead(nn.Module):
    """SeiT++'s ``MlmLayer``: decoder features of the patches ``(B, h·w,
    in_dim)`` → logits ``(B, h·p·w·p, num_codes)`` over the tokens in
    raster order.

    ``fc``: ``Linear(in_dim → p·p·code_dim)``, its output ordered (row in
    the patch, column in the patch, channel); GELU; ``norm``:
    LayerNorm(code_dim); product with the detached ``(num_codes,
    code_dim)`` embedding matrix; + ``bias (num_codes,)``.
    """

    def __init__(self, in_dim: int, code_dim: int, patch_size: int,
                 num_codes: int, norm_eps: float = 1e-5):
        super().__init__()
        self.code_dim = code_dim
        self.patch_size = patch_size
        self.fc = nn.Linear(in_dim, code_dim * patch_size * patch_size)
        self.act = nn.GELU()
        self.norm = nn.LayerNorm(code_dim, eps=norm_eps)
        self.bias = nn.Parameter(torch.zeros(num_codes))

    def forward(self, x: torch.Tensor, grid: Tuple[int, int],
                embedding: torch.Tensor) -> torch.Tensor:
        batch, p = x.shape[0], self.patch_size
        h = self.fc(x).reshape(batch, grid[0], grid[1], p, p, self.code_dim)
        h = h.permute(0, 1, 3, 2, 4, 5).reshape(batch, -1, self.code_dim)
        h = self.norm(self.act(h))
        return h @ embedding.detach().t().to(h.dtype) + self.bias


class MTMOutput(NamedTuple):
    """``logits (B, H·W, V)``, ``masked`` / ``dropped`` bool ``(B, N)``,
    the batch's mask ``ratio``."""
    logits: torch.Tensor
    masked: torch.Tensor
    dropped: torch.Tensor
    ratio: float


def _xavier_linears(module: nn.Module) -> None:
    """MAE's initialisation of linears: Xavier-uniform, zero bias."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


@MODELS.register_module()
class MaskedTokenModel(BaseModel):
    """SeiT++ MTM pre-training on integer codes ``(B, H, W)`` (see the
    module docstring for the network).

    Runner modes: ``'loss'`` → ``dict(loss_mtm, mtm_acc, mask_ratio)``
    (``mtm_acc``: top-1 over the tokens of masked patches); ``'predict'`` →
    :meth:`predict` (read by :class:`MaskedTokenAccuracy`); ``'tensor'`` →
    logits ``(B, H·W, num_codes)``.

    Args:
        num_codes: codes of the tokenizer (SeiT's ViT-VQGAN: 391).
        code_dim: width of the learned token embedding (32).
        img_size: token grid of the input (28).
        patch_size: tokens per patch side (2 → 14×14 patches).
        embed_dim, depth, num_heads, mlp_ratio, qkv_bias, norm_eps: encoder
            ViT (paper ViT-B: 768, 12, 12, 4, True, 1e-6).
        token_dropout: dropout of the token embedding (0.1).
        drop_path_rate: stochastic depth of the encoder (0: none in the
            official model).
        decoder_embed_dim, decoder_depth, decoder_num_heads: decoder (512,
            4, 16).
        decoder_dropout, decoder_attn_dropout: decoder dropout (0.1, 0.1).
        head_norm_eps: LayerNorm eps of the head (PyTorch's 1e-5, as the
            official ``MlmLayer``).
        mask_ratio: :class:`MaskRatio` or a dict of its fields.
        label_smoothing: of the token cross-entropy (0.0, the script's).
        eval_mask_ratio: the fixed ratio :meth:`predict` masks with
            (``None``: the mean of ``mask_ratio``'s distribution).
        eval_seed: seed of :meth:`predict` 's masks (each call draws with a
            fresh generator, so evaluation is deterministic).
        data_preprocessor: default ``TokenDataPreprocessor``.
        init_cfg: mmengine initialisation config.
    """

    def __init__(self,
                 num_codes: int = 391,
                 code_dim: int = 32,
                 img_size: Union[int, Sequence[int]] = 28,
                 patch_size: int = 2,
                 embed_dim: int = 768,
                 depth: int = 12,
                 num_heads: int = 12,
                 mlp_ratio: float = 4.0,
                 qkv_bias: bool = True,
                 norm_eps: float = 1e-6,
                 token_dropout: float = 0.1,
                 drop_path_rate: float = 0.0,
                 decoder_embed_dim: int = 512,
                 decoder_depth: int = 4,
                 decoder_num_heads: int = 16,
                 decoder_dropout: float = 0.1,
                 decoder_attn_dropout: float = 0.1,
                 head_norm_eps: float = 1e-5,
                 mask_ratio: Union[MaskRatio, dict, None] = None,
                 label_smoothing: float = 0.0,
                 eval_mask_ratio: Optional[float] = None,
                 eval_seed: int = 0,
                 data_preprocessor: Optional[Union[dict, nn.Module]] = None,
                 init_cfg: Optional[Union[dict, List[dict]]] = None):
        if data_preprocessor is None:
            data_preprocessor = dict(type='TokenDataPreprocessor')
        super().__init__(
            data_preprocessor=MODELS.build_or_take(data_preprocessor),
            init_cfg=init_cfg)
        self.num_codes = num_codes
        self.img_size = ((img_size, img_size) if isinstance(img_size, int)
                         else tuple(int(s) for s in img_size))
        self.patch_size = patch_size
        self.grid_size = config_grid(self.img_size, patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.mask_ratio = MaskRatio.of(mask_ratio)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f'label_smoothing must be in [0, 1), got '
                             f'{label_smoothing}')
        self.label_smoothing = label_smoothing
        self.eval_mask_ratio = (self.mask_ratio.expected()
                                if eval_mask_ratio is None else
                                float(eval_mask_ratio))
        if not (self.mask_ratio.min <= self.eval_mask_ratio
                <= self.mask_ratio.max):
            raise ValueError(f'eval_mask_ratio={eval_mask_ratio} is outside '
                             f'mask_ratio [{self.mask_ratio.min}, '
                             f'{self.mask_ratio.max}]')
        self.eval_seed = eval_seed

        # encoder
        self.token_embed = TokenEmbedding(num_codes, code_dim, token_dropout,
                                          norm_eps)
        self.patch_embed = PatchEmbed(code_dim, embed_dim, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.register_buffer('pos_embed', torch.cat([
            torch.zeros(1, embed_dim),
            sincos_pos_embed_2d(embed_dim, self.grid_size)
        ])[None])
        self.blocks = build_blocks(embed_dim, depth, num_heads, mlp_ratio,
                                   qkv_bias, 0.0, 0.0, drop_path_rate,
                                   norm_eps)
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        # decoder
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.decoder_pos_embed = nn.Parameter(
            torch.zeros(1, 1 + self.num_patches, decoder_embed_dim))
        self.decoder_blocks = build_blocks(
            decoder_embed_dim, decoder_depth, decoder_num_heads, mlp_ratio,
            qkv_bias, decoder_dropout, decoder_attn_dropout, 0.0, norm_eps)
        self.decoder_norm = nn.LayerNorm(decoder_embed_dim, eps=norm_eps)
        self.mlm_head = MaskedTokenHead(decoder_embed_dim, code_dim,
                                        patch_size, num_codes, head_norm_eps)

        self.apply(_xavier_linears)
        nn.init.normal_(self.cls_token, std=0.02)

    # --- network ----------------------------------------------------------
    def _check_masks(self, batch: int, masked: torch.Tensor,
                     dropped: torch.Tensor) -> None:
        for name, mask in (('masked', masked), ('dropped', dropped)):
            if mask.dtype != torch.bool or tuple(mask.shape) != (
                    batch, self.num_patches):
                raise ValueError(f'{name} must be bool (B, num_patches) = '
                                 f'({batch}, {self.num_patches}), got '
                                 f'{mask.dtype} {tuple(mask.shape)}')
        if (dropped & ~masked).any():
            raise ValueError('every dropped patch must be masked')
        if len(set(dropped.sum(1).tolist())) > 1:
            raise ValueError('every sample must drop the same number of '
                             'patches')

    def encode(self, codes: torch.Tensor, masked: torch.Tensor,
               dropped: torch.Tensor) -> torch.Tensor:
        """Encoder: codes ``(B, H, W)`` → ``(B, 1 + N − n_dropped,
        embed_dim)`` (class token, then the kept patches in raster order);
        masked kept patches enter as ``mask_token``."""
        batch = codes.shape[0]
        self._check_masks(batch, masked, dropped)
        x = grid_to_tokens(self.patch_embed(self.token_embed(codes)))
        x = torch.where(masked[..., None], self.mask_token.to(x.dtype), x)
        x = x + self.pos_embed[:, 1:].to(x.dtype)
        x = x[~dropped].reshape(batch, -1, x.shape[-1])
        cls = (self.cls_token + self.pos_embed[:, :1]).to(x.dtype)
        x = torch.cat([cls.expand(batch, -1, -1), x], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def decode(self, latent: torch.Tensor, masked: torch.Tensor,
               dropped: torch.Tensor) -> torch.Tensor:
        """Decoder and head: encoder output → logits ``(B, H·W,
        num_codes)``; masked and dropped positions start from the encoder's
        class-token output."""
        x = self.decoder_embed(latent)
        batch, dim = x.shape[0], x.shape[-1]
        cls = x[:, :1]
        patches = cls.expand(batch, self.num_patches, dim).clone()
        patches[~dropped] = x[:, 1:].reshape(-1, dim)
        patches = torch.where(masked[..., None], cls, patches)
        x = torch.cat([cls, patches], dim=1) + self.decoder_pos_embed
        for block in self.decoder_blocks:
            x = block(x)
        x = self.decoder_norm(x)
        return self.mlm_head(x[:, 1:], self.grid_size,
                             self.token_embed.embedding.weight)

    def forward_mtm(self,
                    codes: torch.Tensor,
                    ratio: Optional[float] = None,
                    generator: Optional[torch.Generator] = None
                    ) -> MTMOutput:
        """Draw the masks (:func:`sample_masks`; ``ratio``: a fixed one),
        encode, decode."""
        check_codes(codes, self.num_codes, self.img_size)
        masked, dropped, ratio = sample_masks(codes.shape[0],
                                              self.num_patches,
                                              self.mask_ratio, generator,
                                              codes.device, ratio)
        logits = self.decode(self.encode(codes, masked, dropped), masked,
                             dropped)
        return MTMOutput(logits, masked, dropped, ratio)

    def forward(self, inputs: torch.Tensor, data_samples=None,
                mode: str = 'tensor'):
        """Runner entry point (``data_samples`` are not used by the
        loss)."""
        if mode == 'loss':
            return self.loss(inputs, data_samples)
        if mode == 'predict':
            return self.predict(inputs, data_samples)
        if mode == 'tensor':
            return self.forward_mtm(inputs).logits
        raise ValueError(f'mode must be "tensor", "loss" or "predict", '
                         f'got {mode!r}')

    def loss(self, inputs: torch.Tensor, data_samples=None) -> dict:
        """``loss_mtm`` (:func:`masked_token_loss`), ``mtm_acc`` and the
        batch's ``mask_ratio`` (logged)."""
        out = self.forward_mtm(inputs)
        terms = masked_token_loss(out.logits, inputs, out.masked,
                                  self.patch_size, self.label_smoothing)
        return dict(loss_mtm=terms['loss_ce'], mtm_acc=terms['acc'],
                    mask_ratio=torch.tensor(out.ratio,
                                            device=inputs.device))

    @torch.no_grad()
    def predict(self, inputs: torch.Tensor,
                data_samples=None) -> List[DataSample]:
        """Masked-token accuracy on a held-out batch, with ``eval_mask_ratio``
        and masks from a generator seeded with ``eval_seed`` (the same masks
        for the same batch size at every call). One :class:`DataSample` per
        input with ``mtm_correct`` (correct top-1 tokens of its masked
        patches) and ``mtm_count`` (tokens of its masked patches)."""
        generator = torch.Generator().manual_seed(self.eval_seed)
        out = self.forward_mtm(inputs, self.eval_mask_ratio, generator)
        tokens = patch_mask_to_tokens(out.masked, self.grid_size,
                                      self.patch_size).flatten(1)
        hits = (out.logits.argmax(-1) == inputs.flatten(1)) & tokens
        return [
            DataSample(mtm_correct=int(h), mtm_count=int(n))
            for h, n in zip(hits.sum(1).tolist(), tokens.sum(1).tolist())
        ]


@METRICS.register_module()
class MaskedTokenAccuracy(BaseMetric):
    """Top-1 accuracy (percent) of the tokens of masked patches over the
    whole evaluation set, from :meth:`MaskedTokenModel.predict`'s
    ``mtm_correct`` / ``mtm_count``: reports ``mtm/accuracy``."""
    default_prefix = 'mtm'

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            correct, count = (sample.get(k, None)
                              for k in ('mtm_correct', 'mtm_count'))
            if correct is None or count is None:
                raise KeyError(f'MaskedTokenAccuracy needs mtm_correct and '
                               f'mtm_count in every data sample '
                               f'(MaskedTokenModel.predict), got '
                               f'{sorted(sample.keys())}')
            self.results.append((int(correct), int(count)))

    def compute_metrics(self, results: List[Tuple[int, int]]) -> dict:
        correct = sum(c for c, _ in results)
        count = sum(n for _, n in results)
        return dict(accuracy=100.0 * correct / max(count, 1))
