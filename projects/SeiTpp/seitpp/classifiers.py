"""ViT classifiers on stored tokens: SeiT's (embedding-map input) and
SeiT++'s (code-index input).

**SeiT** (Park et al., ICCV 2023, arXiv 2303.11114, §3 "Stem-Adapter"; the
official ``models.py``, ``deit_{small,base}_token_32``): the 32-channel
codebook-embedding map of the ``28×28`` crop of the stored tokens →
Stem-Adapter ``Conv2d(32→dim, kernel 4, stride 2, padding 1)`` → ``14×14``
patches → timm ViT (``qkv_bias``, LayerNorm eps 1e-6) with a class token and
a learned position embedding over ``1 + 196`` positions → **global average
pooling of the patch tokens (the class token is left out), then the final
LayerNorm** → linear head. The official model is timm's
``VisionTransformer`` built with ``img_size = 28``, ``patch_size = 2`` and its
patch convolution replaced by the stem.

**SeiT++ fine-tuning** (Lee et al., ECCV 2024, arXiv 2312.10105; the official
``models_mtm.py`` ``deit_base_token_32``): integer codes ``(B, 28, 28)`` →
a *learned* token embedding (``nn.Embedding(391, 32)`` → LayerNorm(eps 1e-6)
→ dropout 0.1, BERT-style, init N(0, 0.02); not the VQ codebook) →
``Conv2d(32→dim, kernel 2, stride 2)`` → the same ViT with global average
pooling; drop-path 0.1 and a head initialised with a truncated normal of
σ = 2e-5 in the fine-tuning recipe (``main_mtm_finetune.py``). Its encoder is
initialised from the masked-token model (:mod:`.mtm`) whose module names it
shares.

The official code registers both under the one timm name
``deit_base_token_32``; here they are :class:`SeiTViTClassifier` and
:class:`TokenViTClassifier`.

**Parameter names** (the BEiT layer-decay rule, Bao et al. 2022, as used by
``util/lr_decay.py``: layer 0 = the embeddings, ``blocks.i`` = layer
``i + 1``, everything else = the top layer ``num_layers``):

=====================  ==================================================
``cls_token``          layer 0
``pos_embed``          layer 0
``patch_embed.proj.*``  layer 0 (the stem convolution)
``token_embed.*``      :class:`TokenViTClassifier` only; its layer is the
                       optimizer constructor's choice (0, or the top as
                       the official code, which leaves it out of the rule)
``blocks.{i}.*``       layer ``i + 1`` (``i < depth``)
``norm.*``             top (the LayerNorm after pooling)
``head.fc.*``          top
=====================  ==================================================

``num_layers = depth + 1`` (BEiT's ``num_layers``: the layer id of the top
group).

Initialisation (timm 0.5.4's ``VisionTransformer`` as the official code uses
it): ``cls_token`` / ``pos_embed`` truncated normal σ 0.02; block linears
truncated normal σ 0.02 (cut at ±2σ here, at ±2 in timm — equal in
practice), zero biases; LayerNorms 1 / 0; the stem convolution keeps
PyTorch's default (it replaces timm's patch convolution after timm's
initialisation); the head a truncated normal of σ ``head_init_std``
(0.02: timm; 2e-5: the SeiT++ fine-tuning recipe) with a zero bias.

Losses: cross-entropy with label smoothing against integer labels ``(B,)``
(timm's ``LabelSmoothingCrossEntropy`` equals PyTorch's ``label_smoothing``),
soft-target cross-entropy ``-Σ_c t_c log p_c`` against ``(B, C)`` float
targets (CutMix / Mixup targets, already smoothed; timm's
``SoftTargetCrossEntropy``).
"""
import math
import re
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModel

from vistok.models.backbones.vit import build_blocks, init_vit_weights
from vistok.registry import HEADS, MODELS
from vistok.structures import DataSample
from vistok.utils.partial_load import load_pretrained
from vistok.utils.weights import MissingWeightsError, load_state_dict_file

PRETRAINED_HOW_TO_GET = (
    'Point it to a checkpoint of a MaskedTokenModel pre-training run (its '
    'encoder is loaded: token_embed, patch_embed, cls_token, pos_embed, '
    'blocks, norm) or of a classifier of the same architecture.')

#: model keys an encoder checkpoint fills (regexes, ``re.fullmatch``)
ENCODER_KEYS = (r'token_embed\..*', r'patch_embed\..*', r'cls_token',
                r'pos_embed', r'blocks\..*', r'norm\..*')

Targets = Union[torch.Tensor, Sequence[DataSample], None]


class TokenEmbedding(nn.Module):
    """Learned embedding of integer codes, BERT-style (SeiT++'s
    ``BertEmbeddings`` in ``models_mtm.py``): ``nn.Embedding(num_codes,
    code_dim)`` (init N(0, ``init_std``)) → LayerNorm → dropout.

    ``codes (B, h, w)`` int → ``(B, code_dim, h, w)`` channel-first. Codes
    outside ``[0, num_codes)`` raise ``ValueError`` naming ``num_codes``.

    Names: ``embedding.weight`` (the ``(num_codes, code_dim)`` matrix the
    masked-token head ties to), ``norm.weight`` / ``norm.bias``.
    """

    def __init__(self,
                 num_codes: int,
                 code_dim: int,
                 dropout: float = 0.1,
                 norm_eps: float = 1e-6,
                 init_std: float = 0.02):
        super().__init__()
        if num_codes < 1 or code_dim < 1:
            raise ValueError(f'num_codes and code_dim must be positive, got '
                             f'{num_codes} and {code_dim}')
        self.num_codes = num_codes
        self.code_dim = code_dim
        self.embedding = nn.Embedding(num_codes, code_dim)
        self.norm = nn.LayerNorm(code_dim, eps=norm_eps)
        self.dropout = nn.Dropout(dropout)
        nn.init.normal_(self.embedding.weight, std=init_std)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        check_codes(codes, self.num_codes)
        embedded = self.dropout(self.norm(self.embedding(codes)))
        return embedded.permute(0, 3, 1, 2)


def check_codes(codes: torch.Tensor, num_codes: int,
                grid: Optional[Tuple[int, int]] = None) -> None:
    """``ValueError`` unless ``codes`` is an integer ``(B, h, w)`` tensor
    (of the ``grid`` when given) with values in ``[0, num_codes)``."""
    if (not torch.is_tensor(codes) or codes.dim() != 3
            or codes.dtype.is_floating_point or codes.dtype == torch.bool):
        raise ValueError(f'codes must be an integer tensor (B, h, w), got '
                         f'{type(codes).__name__} '
                         f'{getattr(codes, "dtype", "")} of shape '
                         f'{tuple(getattr(codes, "shape", ()))}')
    if grid is not None and tuple(codes.shape[1:]) != tuple(grid):
        raise ValueError(f'codes must be (B, {grid[0]}, {grid[1]}) (the '
                         f'config key img_size), got shape '
                         f'{tuple(codes.shape)}')
    if codes.numel() and codes.device.type != 'meta' and (
            codes.min() < 0 or codes.max() >= num_codes):
        raise ValueError(f'codes must be in [0, num_codes={num_codes}), got '
                         f'values in [{int(codes.min())}, '
                         f'{int(codes.max())}]')


def conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a convolution: ``⌊(size + 2p − k) / s⌋ + 1``."""
    return (size + 2 * padding - kernel) // stride + 1


def resize_pos_embed(pos_embed: torch.Tensor, grid: Tuple[int, int],
                     num_prefix: int = 1) -> torch.Tensor:
    """Bicubic resize of the patch part of ``pos_embed (1, num_prefix + M,
    D)`` (a square ``√M × √M`` grid) to ``grid``; the prefix (class token)
    rows are kept (the official ``util/pos_embed.interpolate_pos_embed``,
    from DeiT / MAE). Returns ``(1, num_prefix + h·w, D)``."""
    if pos_embed.dim() != 3 or pos_embed.shape[1] <= num_prefix:
        raise ValueError(f'pos_embed must be (1, {num_prefix} + M, D), got '
                         f'shape {tuple(pos_embed.shape)}')
    prefix, patches = pos_embed[:, :num_prefix], pos_embed[:, num_prefix:]
    side = math.isqrt(patches.shape[1])
    if side * side != patches.shape[1]:
        raise ValueError(f'pos_embed holds {patches.shape[1]} patch '
                         f'positions, not a square grid: cannot resize it '
                         f'to {tuple(grid)}')
    if (side, side) == tuple(grid):
        return pos_embed
    patches = patches.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    patches = F.interpolate(patches.float(), size=tuple(grid),
                            mode='bicubic', align_corners=False)
    patches = patches.permute(0, 2, 3, 1).flatten(1, 2).to(pos_embed.dtype)
    return torch.cat([prefix, patches], dim=1)


class StemEmbed(nn.Module):
    """The convolution from the input map to the patch grid (SeiT's
    Stem-Adapter, ``kernel 4, stride 2, padding 1``; SeiT++'s patch
    embedding, ``kernel 2, stride 2``): ``(B, C, H, W) → (B, D, h, w)``,
    ``h = ⌊(H + 2p − k) / s⌋ + 1``. Named ``proj`` inside, as timm's
    ``patch_embed.proj`` which the official models replace."""

    def __init__(self, in_channels: int, embed_dim: int, kernel_size: int,
                 stride: int, padding: int = 0):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=kernel_size,
                              stride=stride, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def classification_targets(data_samples: Targets, batch_size: int,
                           num_classes: int) -> torch.Tensor:
    """The targets of a batch: integer labels ``(B,)`` or soft targets
    ``(B, num_classes)``.

    ``data_samples`` is what the data preprocessor gives: a ``(B,)`` integer
    tensor (``TokenDataPreprocessor``), a ``(B, num_classes)`` float tensor
    (CutMix / Mixup targets), or a list of :class:`DataSample` with
    ``gt_label`` (one class index) or ``gt_score`` (``(num_classes,)``).
    """
    if data_samples is None:
        raise ValueError('the loss needs targets: data_samples must be '
                         'labels (B,), soft targets (B, num_classes) or a '
                         'list of DataSample with gt_label / gt_score')
    if not torch.is_tensor(data_samples):
        if len(data_samples) != batch_size:
            raise ValueError(f'got {len(data_samples)} data samples for a '
                             f'batch of {batch_size}')
        if all(s.get('gt_score', None) is not None for s in data_samples):
            data_samples = torch.stack(
                [torch.as_tensor(s.gt_score).float() for s in data_samples])
        else:
            labels = []
            for i, sample in enumerate(data_samples):
                label = sample.get('gt_label', None)
                if label is None or torch.as_tensor(label).numel() != 1:
                    raise ValueError(f'data sample {i} needs a gt_label (one '
                                     f'class index), got {label!r}')
                labels.append(torch.as_tensor(label).reshape(()))
            data_samples = torch.stack(labels).long()
    targets = data_samples
    if targets.dim() == 1 and not targets.dtype.is_floating_point:
        if targets.shape[0] != batch_size:
            raise ValueError(f'labels must be ({batch_size},), got shape '
                             f'{tuple(targets.shape)}')
        if targets.numel() and (targets.min() < 0
                                or targets.max() >= num_classes):
            raise ValueError(f'labels must be in [0, num_classes='
                             f'{num_classes}), got values in '
                             f'[{int(targets.min())}, {int(targets.max())}]')
        return targets.long()
    if targets.dim() == 2 and targets.dtype.is_floating_point:
        if tuple(targets.shape) != (batch_size, num_classes):
            raise ValueError(f'soft targets must be ({batch_size}, '
                             f'num_classes={num_classes}), got shape '
                             f'{tuple(targets.shape)}')
        return targets
    raise ValueError(f'targets must be integer labels (B,) or float soft '
                     f'targets (B, num_classes), got {targets.dtype} of '
                     f'shape {tuple(targets.shape)}')


def classification_loss(logits: torch.Tensor, targets: torch.Tensor,
                        label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy of ``logits (B, C)``, in fp32: with ``label_smoothing``
    against integer labels ``(B,)``; ``mean_b(−Σ_c t_bc log softmax(z_b)_c)``
    against soft targets ``(B, C)`` (their smoothing is already in them, so
    ``label_smoothing`` is not applied again)."""
    logits = logits.float()
    if targets.dim() == 1:
        return F.cross_entropy(logits, targets,
                               label_smoothing=label_smoothing)
    return -(targets.float() * logits.log_softmax(-1)).sum(-1).mean()


class _TokenViTClassifier(BaseModel):
    """What both classifiers share: stem convolution, class token, learned
    position embedding, ViT blocks, average pooling + LayerNorm, linear head,
    losses, ``predict`` and the encoder checkpoint loading. Subclasses
    implement :meth:`embed` (``inputs`` → ``(B, in_channels, H, W)``)."""

    def __init__(self, *, in_channels: int, img_size: Union[int, Sequence[
            int]], stem_kernel: int, stem_stride: int, stem_padding: int,
                 embed_dim: int, depth: int, num_heads: int,
                 mlp_ratio: float, qkv_bias: bool, norm_eps: float,
                 dropout: float, attn_dropout: float,
                 drop_path_rate: float, num_classes: int,
                 label_smoothing: float, head_init_std: float,
                 pretrained: Optional[str],
                 data_preprocessor: Optional[Union[dict, nn.Module]],
                 init_cfg: Optional[Union[dict, List[dict]]]):
        super().__init__(
            data_preprocessor=MODELS.build_or_take(data_preprocessor),
            init_cfg=init_cfg)
        self.img_size = ((img_size, img_size) if isinstance(img_size, int)
                         else tuple(int(s) for s in img_size))
        self.grid_size = tuple(
            conv_out(s, stem_kernel, stem_stride, stem_padding)
            for s in self.img_size)
        if min(self.grid_size) < 1:
            raise ValueError(
                f'img_size={self.img_size} gives no patches through the '
                f'stem (kernel {stem_kernel}, stride {stem_stride}, padding '
                f'{stem_padding})')
        if num_classes < 1:
            raise ValueError(f'num_classes must be positive, got '
                             f'{num_classes}')
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f'label_smoothing must be in [0, 1), got '
                             f'{label_smoothing}')
        self.in_channels = in_channels
        self.embed_dim = embed_dim
        self.depth = depth
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self.pretrained = pretrained
        num_patches = self.grid_size[0] * self.grid_size[1]

        self.patch_embed = StemEmbed(in_channels, embed_dim, stem_kernel,
                                     stem_stride, stem_padding)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(
            torch.zeros(1, 1 + num_patches, embed_dim))
        self.pos_drop = nn.Dropout(dropout)
        self.blocks = build_blocks(embed_dim, depth, num_heads, mlp_ratio,
                                   qkv_bias, dropout, attn_dropout,
                                   drop_path_rate, norm_eps)
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.head = HEADS.build(
            dict(type='LinearClsHead', in_channels=embed_dim,
                 num_classes=num_classes, norm=False))

        for tensor in (self.cls_token, self.pos_embed):
            nn.init.trunc_normal_(tensor, std=0.02, a=-0.04, b=0.04)
        self.blocks.apply(init_vit_weights)
        nn.init.trunc_normal_(self.head.fc.weight, std=head_init_std,
                              a=-2 * head_init_std, b=2 * head_init_std)
        nn.init.zeros_(self.head.fc.bias)

    @property
    def num_layers(self) -> int:
        """BEiT's layer count ``depth + 1``: ``cls_token`` / ``pos_embed`` /
        ``patch_embed`` are layer 0, ``blocks.i`` layer ``i + 1``, the rest
        (``norm``, ``head``) layer ``num_layers``."""
        return self.depth + 1

    # --- network ----------------------------------------------------------
    def embed(self, inputs: torch.Tensor) -> torch.Tensor:
        """``inputs`` → the stem's input map ``(B, in_channels, H, W)``."""
        raise NotImplementedError

    def extract_feat(self, inputs: torch.Tensor) -> torch.Tensor:
        """Pooled, normalised features ``(B, embed_dim)``: stem → class
        token + position embedding → blocks → mean of the patch tokens →
        LayerNorm."""
        x = self.patch_embed(self.embed(inputs))
        tokens = x.flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        tokens = self.pos_drop(
            torch.cat([cls, tokens], dim=1) + self.pos_embed)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens[:, 1:].mean(1))

    def forward(self,
                inputs: torch.Tensor,
                data_samples: Targets = None,
                mode: str = 'tensor'):
        """Runner entry point: ``'tensor'`` → logits ``(B, num_classes)``,
        ``'loss'`` → :meth:`loss`, ``'predict'`` → :meth:`predict`."""
        if mode == 'tensor':
            return self.head(self.extract_feat(inputs))
        if mode == 'loss':
            return self.loss(inputs, data_samples)
        if mode == 'predict':
            return self.predict(inputs, data_samples)
        raise ValueError(f'mode must be "tensor", "loss" or "predict", '
                         f'got {mode!r}')

    def loss(self, inputs: torch.Tensor, data_samples: Targets) -> dict:
        """``loss_cls``: :func:`classification_loss` of the logits against
        the batch's labels or soft targets
        (:func:`classification_targets`)."""
        logits = self.head(self.extract_feat(inputs))
        targets = classification_targets(data_samples, logits.shape[0],
                                         self.num_classes)
        return dict(loss_cls=classification_loss(
            logits, targets.to(logits.device), self.label_smoothing))

    @torch.no_grad()
    def predict(self, inputs: torch.Tensor,
                data_samples: Targets = None) -> List[DataSample]:
        """One :class:`DataSample` per input with ``pred_score`` (softmax
        ``(num_classes,)``), ``pred_label`` and, when labels are given,
        ``gt_label`` (a ``torch.long`` scalar; the argmax of soft targets,
        which are also kept as ``gt_score``) — what ``Accuracy`` reads.
        Incoming :class:`DataSample` s are filled in place."""
        scores = self.head(self.extract_feat(inputs)).float().softmax(1)
        if data_samples is None or torch.is_tensor(data_samples):
            given = data_samples
            data_samples = [DataSample() for _ in range(scores.shape[0])]
            if given is not None:
                targets = classification_targets(given, scores.shape[0],
                                                 self.num_classes)
                for sample, target in zip(data_samples, targets):
                    if target.dim():
                        sample.gt_score = target
                        target = target.argmax()
                    sample.gt_label = target
        for sample, score in zip(data_samples, scores):
            sample.pred_score = score
            sample.pred_label = score.argmax()
            label = sample.get('gt_label', None)
            if label is not None:
                sample.gt_label = torch.as_tensor(
                    label, device=score.device).reshape(()).long()
        return data_samples

    # --- weights ----------------------------------------------------------
    def init_weights(self) -> None:
        """mmengine's ``init_cfg`` (if any), then the encoder from
        ``pretrained`` (:meth:`load_encoder`) when it is set. The head keeps
        its construction-time initialisation."""
        super().init_weights()
        if self.pretrained is not None:
            self.load_encoder(self.pretrained)

    def load_encoder(self, checkpoint: Union[str, dict]):
        """Load the encoder tensors (:data:`ENCODER_KEYS` that this model
        has: every one of them must be in the checkpoint) from a
        :class:`~.mtm.MaskedTokenModel` or classifier checkpoint (a path or
        a state dict); the rest of the checkpoint (decoder, mask token,
        head) is ignored and the head keeps its values. A position embedding
        of another grid is resized bicubically (:func:`resize_pos_embed`).
        Returns the :class:`~vistok.utils.partial_load.LoadReport`.

        Raises:
            MissingWeightsError: the file does not exist (config key
                ``model.pretrained``).
            PartialLoadError: an encoder tensor is missing or of another
                shape.
        """
        if isinstance(checkpoint, str):
            try:
                state = load_state_dict_file(checkpoint, 'pretrained',
                                             PRETRAINED_HOW_TO_GET)
            except MissingWeightsError as err:
                raise err.with_prefix('model') from None
        else:
            state = dict(checkpoint)
        own = [k for k in self.state_dict()
               if any(re.fullmatch(p, k) for p in ENCODER_KEYS)]
        select = [re.escape(k) for k in own]
        if 'pos_embed' in state and 'pos_embed' in own:
            state['pos_embed'] = resize_pos_embed(state['pos_embed'],
                                                  self.grid_size)
        return load_pretrained(
            self, state, select=select,
            allow_missing=[r'head\..*'], key='model.pretrained',
            how_to_get=PRETRAINED_HOW_TO_GET)


@MODELS.register_module()
class SeiTViTClassifier(_TokenViTClassifier):
    """SeiT's classifier (``models.py`` ``deit_{small,base}_token_32``): the
    codebook-embedding map ``(B, code_dim, H, W)`` (``H = W = img_size``,
    28 for the 28×28 crop of 32×32 stored tokens; made by the data
    preprocessor) → Stem-Adapter ``Conv2d(code_dim→embed_dim, stem_kernel,
    stem_stride, stem_padding)`` → ViT with average pooling → logits.

    Paper sizes: ViT-B ``embed_dim=768, depth=12, num_heads=12``; ViT-S
    ``384, 12, 6``; ``mlp_ratio=4``; SeiT recipe ``drop_path_rate=0.1``,
    ``label_smoothing=0.1``.

    Args:
        num_classes: classes (ImageNet-1k: 1000).
        code_dim: channels of the embedding map (the codebook dimension,
            32 for SeiT's ViT-VQGAN).
        img_size: token grid of the input (int or ``(H, W)``).
        stem_kernel, stem_stride, stem_padding: the Stem-Adapter
            convolution (4, 2, 1).
        embed_dim, depth, num_heads, mlp_ratio, qkv_bias, norm_eps: ViT.
        dropout, attn_dropout: dropout after the position embedding and in
            the blocks / on attention weights (timm ``drop_rate``; 0).
        drop_path_rate: stochastic depth of the last block (linear rule).
        label_smoothing: of the hard-label loss.
        head_init_std: σ of the head's truncated-normal initialisation.
        pretrained: encoder checkpoint loaded by ``init_weights``
            (:meth:`load_encoder`); ``None``: none.
        data_preprocessor: config of the preprocessor that makes the
            embedding map (default: mmengine's ``BaseDataPreprocessor``,
            which passes ``inputs`` through).
        init_cfg: mmengine initialisation config.
    """

    def __init__(self,
                 num_classes: int = 1000,
                 code_dim: int = 32,
                 img_size: Union[int, Sequence[int]] = 28,
                 stem_kernel: int = 4,
                 stem_stride: int = 2,
                 stem_padding: int = 1,
                 embed_dim: int = 768,
                 depth: int = 12,
                 num_heads: int = 12,
                 mlp_ratio: float = 4.0,
                 qkv_bias: bool = True,
                 norm_eps: float = 1e-6,
                 dropout: float = 0.0,
                 attn_dropout: float = 0.0,
                 drop_path_rate: float = 0.1,
                 label_smoothing: float = 0.1,
                 head_init_std: float = 0.02,
                 pretrained: Optional[str] = None,
                 data_preprocessor: Optional[Union[dict, nn.Module]] = None,
                 init_cfg: Optional[Union[dict, List[dict]]] = None):
        if data_preprocessor is None:
            data_preprocessor = dict(type='BaseDataPreprocessor')
        super().__init__(
            in_channels=code_dim, img_size=img_size,
            stem_kernel=stem_kernel, stem_stride=stem_stride,
            stem_padding=stem_padding, embed_dim=embed_dim, depth=depth,
            num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
            norm_eps=norm_eps, dropout=dropout, attn_dropout=attn_dropout,
            drop_path_rate=drop_path_rate, num_classes=num_classes,
            label_smoothing=label_smoothing, head_init_std=head_init_std,
            pretrained=pretrained, data_preprocessor=data_preprocessor,
            init_cfg=init_cfg)

    def embed(self, inputs: torch.Tensor) -> torch.Tensor:
        """Checks that ``inputs`` is the float ``(B, code_dim, H, W)``
        embedding map of the configured ``img_size``."""
        if (not torch.is_tensor(inputs) or inputs.dim() != 4
                or not inputs.dtype.is_floating_point
                or inputs.shape[1] != self.in_channels
                or tuple(inputs.shape[2:]) != self.img_size):
            raise ValueError(
                f'SeiTViTClassifier takes the float codebook-embedding map '
                f'(B, code_dim={self.in_channels}, {self.img_size[0]}, '
                f'{self.img_size[1]}) (config keys code_dim, img_size), got '
                f'{getattr(inputs, "dtype", type(inputs).__name__)} of '
                f'shape {tuple(getattr(inputs, "shape", ()))}')
        return inputs


@MODELS.register_module()
class TokenViTClassifier(_TokenViTClassifier):
    """SeiT++'s fine-tuning classifier (``models_mtm.py``
    ``deit_base_token_32``): integer codes ``(B, H, W)`` (``img_size``, 28)
    → :class:`TokenEmbedding` (``token_embed``) → ``(B, code_dim, H, W)`` →
    ``Conv2d(code_dim→embed_dim, stem_kernel, stem_stride)`` (2, 2) → ViT
    with average pooling → logits.

    Paper sizes: ViT-B ``768, 12, 12``, ViT-S ``384, 12, 6``. Defaults are
    the fine-tuning recipe (``main_mtm_finetune.py``): ``drop_path_rate
    0.1``, ``label_smoothing 0.1``, ``head_init_std 2e-5``. ``pretrained``:
    a :class:`~.mtm.MaskedTokenModel` checkpoint (same module names for the
    encoder).

    Args:
        num_classes: classes (1000).
        num_codes: codes of the tokenizer (SeiT's ViT-VQGAN: 391).
        code_dim: width of the learned token embedding (32).
        token_dropout: dropout of the token embedding (0.1).
        other arguments: as :class:`SeiTViTClassifier`; the default data
            preprocessor is ``TokenDataPreprocessor``.
    """

    def __init__(self,
                 num_classes: int = 1000,
                 num_codes: int = 391,
                 code_dim: int = 32,
                 img_size: Union[int, Sequence[int]] = 28,
                 stem_kernel: int = 2,
                 stem_stride: int = 2,
                 stem_padding: int = 0,
                 embed_dim: int = 768,
                 depth: int = 12,
                 num_heads: int = 12,
                 mlp_ratio: float = 4.0,
                 qkv_bias: bool = True,
                 norm_eps: float = 1e-6,
                 token_dropout: float = 0.1,
                 dropout: float = 0.0,
                 attn_dropout: float = 0.0,
                 drop_path_rate: float = 0.1,
                 label_smoothing: float = 0.1,
                 head_init_std: float = 2e-5,
                 pretrained: Optional[str] = None,
                 data_preprocessor: Optional[Union[dict, nn.Module]] = None,
                 init_cfg: Optional[Union[dict, List[dict]]] = None):
        if data_preprocessor is None:
            data_preprocessor = dict(type='TokenDataPreprocessor')
        super().__init__(
            in_channels=code_dim, img_size=img_size,
            stem_kernel=stem_kernel, stem_stride=stem_stride,
            stem_padding=stem_padding, embed_dim=embed_dim, depth=depth,
            num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
            norm_eps=norm_eps, dropout=dropout, attn_dropout=attn_dropout,
            drop_path_rate=drop_path_rate, num_classes=num_classes,
            label_smoothing=label_smoothing, head_init_std=head_init_std,
            pretrained=pretrained, data_preprocessor=data_preprocessor,
            init_cfg=init_cfg)
        self.num_codes = num_codes
        self.token_embed = TokenEmbedding(num_codes, code_dim, token_dropout,
                                          norm_eps)

    def embed(self, inputs: torch.Tensor) -> torch.Tensor:
        """Integer codes ``(B, H, W)`` → ``(B, code_dim, H, W)``."""
        check_codes(inputs, self.num_codes, self.img_size)
        return self.token_embed(inputs)
