"""Linear probing of a frozen tokenizer: how much class information its
quantized features carry linearly (ImageFolder, Li et al. 2025,
"ImageFolder: Autoregressive Image Generation with Folded Tokens", ablation
table, "linear probing" column: 58.0 top-1 on ImageNet vs 11.3 for VAR's
tokenizer).

The protocol, from the official code (``tokenizer/tokenizer_image/``):
``xqgan_model.py`` ``img_to_sem_feat`` takes the quantized map ``f̂`` of the
*last* product branch (the one the semantic loss regularises) at the last
scale; ``linear_probing.py`` averages features over the token positions
and trains ``BatchNorm1d(C, affine=False, eps=1e-6)`` + ``Linear(C,
classes)`` with cross-entropy on the frozen tokenizer (its EMA weights when
the checkpoint has them). That script as published feeds the
pre-quantization ``quant_conv`` output (its quantizer line is commented
out); the quantized map, which is what the tokens carry, is probed here.

Recipe for the configs (notes B.4): AdamW, 10 epochs, cosine schedule;
the official script's defaults are lr 1e-4, weight decay 1e-4, one
warm-up epoch (its ``--lr_scheduler cosine`` flag is unused: it builds a
timm step schedule). Images are normalised as for the tokenizer.
"""
import copy
from typing import List, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModel

from vistok.models.data_preprocessors.image import image_preprocessor_cfg
from vistok.models.utils.frozen import freeze_as_buffers
from vistok.models.utils.tokenizer_loading import (
    prepare_tokenizer,
    resolve_use_ema,
    tokenizer_inference,
)
from vistok.registry import HEADS, MODELS
from vistok.structures import DataSample

TOKENIZER_HOW_TO_GET = (
    'Set model.tokenizer_checkpoint to a checkpoint of the tokenizer that '
    'model.tokenizer builds: a training checkpoint (.pth, its state_dict is '
    'used) or a .safetensors export of it. Every tensor of the tokenizer '
    'must be in it (extra tensors are ignored).')

#: head of the probe when the config gives none (ImageFolder's)
DEFAULT_HEAD = dict(type='LinearClsHead', norm=True, norm_eps=1e-6)


@MODELS.register_module()
class LinearProbe(BaseModel):
    """A linear classifier on the frozen quantized features of a tokenizer.

    ``images (B, 3, H, W)`` → data preprocessor (the tokenizer's by
    default) → frozen tokenizer → quantized map ``(B, Σ_p C_p, *spatial)``
    → channel group of branch ``branch`` ``(B, C_b, *spatial)`` → mean over
    the positions ``(B, C_b)`` → ``head`` (``BatchNorm1d(affine=False)`` +
    ``Linear`` to ``num_classes``) → logits.

    The quantized map is the tokenizer's public API: ``tokenizer.quantizer.
    decode(tokenizer.encode(images))``, which equals ``tokenizer.
    reconstruct(images).quantizer.quantized`` (the quantizer contract,
    DESIGN §6) without running the decoder. It is computed under
    ``torch.no_grad()``.

    **The tokenizer is frozen** (:func:`~vistok.models.utils.frozen.
    freeze_as_buffers`): its tensors are non-persistent buffers, so they
    are not parameters (no optimizer, gradient or weight decay touches
    them), not in the probe's state dict (probe checkpoints hold the head
    only) and it stays in eval mode (no BatchNorm / codebook EMA updates,
    no quantizer dropout). :meth:`init_weights` (before training) and
    :meth:`init_inference_weights` (before testing a loaded probe) fill it
    from ``tokenizer_checkpoint``; the tokenizer's own ``init_weights``
    (its loss networks' files) is never called.

    Args:
        tokenizer: MODELS config of the tokenizer, e.g. the ``model`` of
            its training config, or a module (taken as it is and frozen in
            place). It must expose ``encode`` and ``quantizer``
            (``decode``, ``in_channels``).
        num_classes: number of classes.
        tokenizer_checkpoint: its weights (see ``TOKENIZER_HOW_TO_GET``);
            loaded by :meth:`init_weights`, a missing file raises
            :class:`~vistok.utils.weights.MissingWeightsError` naming
            ``model.tokenizer_checkpoint``.
        branch: index of the product-quantization branch probed (negative
            counts from the end; ImageFolder's semantic branch is the last,
            ``-1``). A single-branch tokenizer is probed whole.
        num_branches: number of branches ``P`` of the quantized map.
            ``None``: the quantizer's (``num_branches`` / ``branch_channels``
            of a :class:`~vistok.models.quantizers.ProductQuantizer`, else
            1). Given for a quantizer that does not say, its channels are
            split into ``P`` equal groups.
        use_ema: probe the tokenizer's EMA weights (``True``), its trained
            weights (``False``) or as its validation does (``None``: the EMA
            when it keeps one with ``ema.use_for_val``).
        head: HEADS config of the classifier without ``in_channels`` /
            ``num_classes`` (those come from the branch width and
            ``num_classes``); default ``DEFAULT_HEAD``.
        data_preprocessor: images → model input; default: a copy of the
            tokenizer's (the normalisation it was trained with).
        init_cfg: mmengine weight-initialisation config (of the head).
    """

    def __init__(self,
                 tokenizer: Union[dict, nn.Module],
                 num_classes: int,
                 tokenizer_checkpoint: Optional[str] = None,
                 branch: int = -1,
                 num_branches: Optional[int] = None,
                 use_ema: Optional[bool] = None,
                 head: Optional[dict] = None,
                 data_preprocessor: Optional[Union[dict, nn.Module]] = None,
                 init_cfg: Optional[Union[dict, List[dict]]] = None):
        tokenizer = MODELS.build_or_take(tokenizer)
        quantizer = getattr(tokenizer, 'quantizer', None)
        if not (callable(getattr(tokenizer, 'encode', None))
                and callable(getattr(quantizer, 'decode', None))
                and isinstance(getattr(quantizer, 'in_channels', None), int)):
            raise TypeError(
                f'model.tokenizer must build a tokenizer with encode() and a '
                f'quantizer (decode(), in_channels), got '
                f'{type(tokenizer).__name__}')
        if data_preprocessor is None:
            data_preprocessor = copy.deepcopy(
                getattr(tokenizer, 'data_preprocessor', None))
        super().__init__(
            data_preprocessor=MODELS.build_or_take(
                image_preprocessor_cfg(data_preprocessor)),
            init_cfg=init_cfg)

        self.branch_channels = self._branch_channels(quantizer, num_branches)
        num = len(self.branch_channels)
        if not -num <= branch < num:
            raise ValueError(f'model.branch={branch} is not a branch index of '
                             f'the {num} branches (channel groups '
                             f'{self.branch_channels})')
        self.branch = branch % num
        self.in_channels = self.branch_channels[self.branch]
        self.num_classes = num_classes

        self.use_ema = resolve_use_ema(tokenizer, use_ema, 'model.use_ema')
        self.tokenizer_checkpoint = tokenizer_checkpoint
        # never run the tokenizer's own init_weights (its loss networks'
        # files): its weights come from tokenizer_checkpoint
        tokenizer.is_init = True
        self.tokenizer = freeze_as_buffers(tokenizer)

        head = dict(DEFAULT_HEAD if head is None else head)
        clash = {'in_channels', 'num_classes'} & head.keys()
        if clash:
            raise ValueError(f'model.head must not set {sorted(clash)}: they '
                             f'are the probed branch width and '
                             f'model.num_classes')
        self.head = HEADS.build(
            dict(head, in_channels=self.in_channels, num_classes=num_classes))

    @staticmethod
    def _branch_channels(quantizer: nn.Module,
                         num_branches: Optional[int]) -> List[int]:
        """Channel widths of the branches of the quantized map."""
        own = getattr(quantizer, 'branch_channels', None)
        if own is not None:
            own = list(own)
            if num_branches not in (None, len(own)):
                raise ValueError(
                    f'model.num_branches={num_branches}, but the tokenizer\'s '
                    f'{type(quantizer).__name__} has {len(own)} branches '
                    f'(channel groups {own})')
            return own
        channels = getattr(quantizer, 'out_channels', quantizer.in_channels)
        num_branches = 1 if num_branches is None else num_branches
        if num_branches < 1 or channels % num_branches:
            raise ValueError(
                f'model.num_branches={num_branches} does not split the '
                f'{channels} quantized channels of the tokenizer\'s '
                f'{type(quantizer).__name__} into equal groups')
        return [channels // num_branches] * num_branches

    # --- weights ---------------------------------------------------------
    def init_weights(self) -> None:
        """The head's initialisation (mmengine's), then the frozen tokenizer
        from ``tokenizer_checkpoint``."""
        super().init_weights()
        self.init_inference_weights()

    def init_inference_weights(self) -> None:
        """Fill the frozen tokenizer from ``tokenizer_checkpoint`` (probe
        checkpoints do not hold it), then the frozen parts its checkpoints
        do not hold either through its own ``init_inference_weights()``
        (e.g. TiTok's teacher), as ``load_tokenizer`` does (both through
        :func:`~vistok.models.utils.tokenizer_loading.prepare_tokenizer`).
        :class:`MissingWeightsError` names ``model.tokenizer_checkpoint``
        (or the tokenizer's key under ``model.tokenizer``) when a file is
        unset or missing."""
        prepare_tokenizer(self.tokenizer, self.tokenizer_checkpoint,
                          checkpoint_key='model.tokenizer_checkpoint',
                          how_to_get=TOKENIZER_HOW_TO_GET,
                          model_key='model.tokenizer')

    # --- features and logits ---------------------------------------------
    @torch.no_grad()
    def extract_feat(self, inputs: torch.Tensor) -> torch.Tensor:
        """Pooled features ``(B, C_b)`` of the probed branch for ``inputs``
        (the data preprocessor's output, e.g. ``(B, 3, H, W)`` in
        [-1, 1])."""
        with tokenizer_inference(self.tokenizer, self.use_ema):
            quantized = self.tokenizer.quantizer.decode(
                self.tokenizer.encode(inputs))
        if quantized.dim() < 3 or quantized.shape[1] != sum(
                self.branch_channels):
            raise ValueError(
                f'the tokenizer\'s quantized map must be (B, '
                f'{sum(self.branch_channels)}, *spatial) (branch channel '
                f'groups {self.branch_channels}), got shape '
                f'{tuple(quantized.shape)}')
        group = quantized.split(self.branch_channels, dim=1)[self.branch]
        return group.flatten(2).float().mean(2)

    def forward(self,
                inputs: torch.Tensor,
                data_samples: Optional[List[DataSample]] = None,
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

    @staticmethod
    def labels_of(data_samples: Optional[Sequence[DataSample]],
                  batch_size: int) -> torch.Tensor:
        """``gt_label`` of every sample as a ``(B,)`` long tensor."""
        given = None if data_samples is None else len(data_samples)
        if given != batch_size:
            raise ValueError(f'the loss needs one data sample with gt_label '
                             f'per image ({batch_size}), got {given}')
        labels = []
        for i, sample in enumerate(data_samples):
            label = sample.get('gt_label', None)
            if label is None or torch.as_tensor(label).numel() != 1:
                raise ValueError(f'data sample {i} needs a gt_label (one '
                                 f'class index), got {label!r}')
            labels.append(torch.as_tensor(label).reshape(()))
        return torch.stack(labels).long()

    def loss(self, inputs: torch.Tensor,
             data_samples: Sequence[DataSample]) -> dict:
        """``loss_cls``: cross-entropy of the logits to the samples'
        ``gt_label``."""
        logits = self.head(self.extract_feat(inputs))
        labels = self.labels_of(data_samples, inputs.shape[0])
        return dict(loss_cls=F.cross_entropy(logits, labels.to(
            logits.device)))

    @torch.no_grad()
    def predict(self,
                inputs: torch.Tensor,
                data_samples: Optional[List[DataSample]] = None
                ) -> List[DataSample]:
        """One :class:`DataSample` per image with ``pred_score`` (softmax
        probabilities ``(num_classes,)``), ``pred_label`` (its argmax) and
        ``gt_label`` (the incoming one as a ``torch.long`` scalar, when
        given). Incoming samples are filled in place."""
        scores = self.head(self.extract_feat(inputs)).softmax(1)
        if data_samples is None:
            data_samples = [DataSample() for _ in range(inputs.shape[0])]
        for sample, score in zip(data_samples, scores):
            sample.pred_score = score
            sample.pred_label = score.argmax()
            label = sample.get('gt_label', None)
            if label is not None:
                sample.gt_label = torch.as_tensor(
                    label, device=score.device).reshape(()).long()
        return data_samples
