"""What every class-conditional token generator (AR, MaskGIT, VAR) shares.

* :class:`ClassEmbedding`: class ids → vectors, with a learned "null" class
  (id ``num_classes``) used for label dropout in training and for the
  unconditional branch of classifier-free guidance (Ho & Salimans 2022).
* :func:`token_cross_entropy`: the (optionally position-weighted) token
  cross-entropy and accuracy, in fp32 under autocast.
* :class:`BaseGenerator`: the Runner contract — ``forward(inputs,
  data_samples, mode)`` with ``'loss' | 'predict' | 'tensor'`` — and the
  batched conditional / unconditional forward for guidance
  (:meth:`BaseGenerator.guidance_labels`, :meth:`BaseGenerator.guided`).

Token structures are those of :class:`TokenDataPreprocessor`: a ``(B,
*grid)`` int64 tensor, or a list of them (one per scale / level). Logits are
sequence-major ``(B, N, V)`` (``N`` positions in the generator's order,
``V`` = ``vocab_size``), as in every GPT.
"""
from abc import abstractmethod
from typing import Dict, List, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModel

from vistok.models.data_preprocessors.token import TokenDataPreprocessor
from vistok.models.generators.sampling import TokenSampler
from vistok.registry import MODELS, SAMPLERS
from vistok.structures import DataSample

Tokens = Union[torch.Tensor, Sequence[torch.Tensor]]
SamplerCfg = Union[dict, TokenSampler]


class ClassEmbedding(nn.Module):
    """Class ids ``(B,)`` → embeddings ``(B, dim)`` with ``num_classes + 1``
    entries; entry ``num_classes`` is the learned null class.

    In training, each label is replaced by the null class with probability
    ``dropout_prob`` (classifier-free guidance training, Ho & Salimans 2022
    §3.2; LlamaGen's and VAR's ``class_dropout_prob`` / ``cond_drop_rate``).

    Args:
        num_classes: number of real classes (0: unconditional, only null).
        dim: embedding width.
        dropout_prob: label dropout probability in training.
    """

    def __init__(self, num_classes: int, dim: int, dropout_prob: float = 0.1):
        super().__init__()
        if num_classes < 0:
            raise ValueError(f'num_classes must be >= 0, got {num_classes}')
        if not 0.0 <= dropout_prob <= 1.0:
            raise ValueError(f'dropout_prob must be in [0, 1], got '
                             f'{dropout_prob}')
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob
        self.embedding = nn.Embedding(num_classes + 1, dim)

    @property
    def null_class(self) -> int:
        return self.num_classes

    def drop_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """``labels`` with each entry replaced by the null class with
        probability ``dropout_prob`` (only in training)."""
        if not self.training or self.dropout_prob == 0:
            return labels
        drop = torch.rand(labels.shape, device=labels.device) < \
            self.dropout_prob
        return labels.masked_fill(drop, self.null_class)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        if labels.dtype != torch.long or labels.dim() != 1:
            raise ValueError(f'labels must be a (B,) int64 tensor, got '
                             f'{tuple(labels.shape)} {labels.dtype}')
        if labels.numel() and (labels.min() < 0
                               or labels.max() > self.null_class):
            raise ValueError(f'labels must be in [0, {self.null_class}] '
                             f'({self.null_class} = null class), got '
                             f'[{labels.min()}, {labels.max()}]')
        return self.embedding(self.drop_labels(labels))


def token_cross_entropy(logits: torch.Tensor,
                        targets: torch.Tensor,
                        weights: Optional[torch.Tensor] = None,
                        label_smoothing: float = 0.0
                        ) -> Dict[str, torch.Tensor]:
    """Cross-entropy of ``logits (B, N, V)`` against ``targets (B, N)``,
    averaged with per-position ``weights (B, N)`` (``None``: all 1), in fp32.

    Returns ``dict(loss_ce=..., acc=...)``; ``acc`` (detached) is the
    top-1 accuracy over the positions with a positive weight.
    """
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f'logits {tuple(logits.shape)} do not match '
                         f'targets {tuple(targets.shape)} (expected '
                         f'(B, N, V) and (B, N))')
    with torch.autocast(device_type=logits.device.type, enabled=False):
        ce = F.cross_entropy(logits.float().flatten(0, -2), targets.flatten(),
                             reduction='none',
                             label_smoothing=label_smoothing)
        ce = ce.view(targets.shape)
        hit = (logits.detach().argmax(-1) == targets).float()
        if weights is None:
            return dict(loss_ce=ce.mean(), acc=hit.mean())
        weights = weights.float()
        counted = (weights > 0).float()
        total = weights.sum().clamp_min(torch.finfo(torch.float32).tiny)
        return dict(loss_ce=(ce * weights).sum() / total,
                    acc=(hit * counted).sum() / counted.sum().clamp_min(1))


def batch_size_of(tokens: Tokens) -> int:
    """Batch size of a token structure (tensor or per-level list)."""
    return (tokens if torch.is_tensor(tokens) else tokens[0]).shape[0]


class BaseGenerator(BaseModel):
    """A class-conditional generator over a tokenizer's indices.

    Subclasses build their network, set ``token_shape`` (the indices
    structure they generate, e.g. the grid ``(h, w)``) and implement
    :meth:`logits`, :meth:`loss` and :meth:`generate`.

    Guidance is batched: :meth:`guidance_labels` appends the null class to
    the labels only when ``sampler.uses_guidance`` (the caller repeats its
    other inputs, e.g. with :meth:`guidance_repeat`), and :meth:`guided`
    splits the ``(2B, ...)`` logits and combines them with
    ``sampler.guide``. With guidance disabled the batch is the conditional
    one alone, so sampling equals the conditional model exactly.

    Args:
        num_classes: number of classes; id ``num_classes`` is the null class.
        vocab_size: number of token ids the generator predicts.
        class_dropout_prob: label dropout probability in training.
        sampler: SAMPLERS config (or :class:`TokenSampler`) used by
            ``predict`` and by :meth:`generate` when no sampler is given.
        data_preprocessor: MODELS config (vistok scope) or module; default
            :class:`TokenDataPreprocessor`.
        init_cfg: mmengine initialisation config.
    """

    #: FSDP units (``vistok.engine.fsdp``): the transformer blocks
    FSDP_BLOCK_TYPES = ('TransformerBlock', 'AdaLNSelfAttn')


    token_shape: Union[Sequence[int], Sequence[Sequence[int]]]

    def __init__(self,
                 num_classes: int,
                 vocab_size: int,
                 class_dropout_prob: float = 0.1,
                 sampler: SamplerCfg = dict(type='TokenSampler'),
                 data_preprocessor: Optional[Union[dict, nn.Module]] = None,
                 init_cfg: Optional[dict] = None):
        if data_preprocessor is None:
            data_preprocessor = TokenDataPreprocessor()
        elif isinstance(data_preprocessor, dict):
            data_preprocessor = MODELS.build(data_preprocessor)
        super().__init__(data_preprocessor=data_preprocessor,
                         init_cfg=init_cfg)
        if vocab_size < 1:
            raise ValueError(f'vocab_size must be >= 1, got {vocab_size}')
        self.num_classes = num_classes
        self.vocab_size = vocab_size
        self.class_dropout_prob = class_dropout_prob
        self.sampler = self.build_sampler(sampler)

    #: named architectures of a subclass (name -> dict of sizes)
    arch_zoo: Dict[str, dict] = {}

    @classmethod
    def resolve_arch(cls, arch: Union[str, dict],
                     required: Sequence[str]) -> dict:
        """The sizes of ``arch``: a name in :attr:`arch_zoo` or a dict that
        must hold every key in ``required``."""
        if isinstance(arch, str):
            if arch not in cls.arch_zoo:
                raise ValueError(f'arch must be one of {sorted(cls.arch_zoo)}'
                                 f' or a dict, got {arch!r}')
            arch = cls.arch_zoo[arch]
        missing = set(required) - set(arch)
        if missing:
            raise ValueError(f'arch dict misses {sorted(missing)}')
        return arch

    def _check_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(B, *token_shape)`` → ``(B, N)`` raster order; anything else
        is a ``ValueError`` naming the shape."""
        if not torch.is_tensor(tokens) or \
                tuple(tokens.shape[1:]) != self.token_shape:
            shape = tuple(tokens.shape) if torch.is_tensor(tokens) else \
                type(tokens).__name__
            raise ValueError(f'tokens must be (B, *token_shape) = (B, '
                             f'{", ".join(map(str, self.token_shape))}), '
                             f'got {shape}')
        return tokens.flatten(1)

    @staticmethod
    def build_sampler(sampler: SamplerCfg) -> TokenSampler:
        """A :class:`TokenSampler` from a SAMPLERS config or itself."""
        return sampler if isinstance(sampler, TokenSampler) else \
            SAMPLERS.build(sampler)

    @property
    def null_class(self) -> int:
        """The class id of the unconditional branch."""
        return self.num_classes

    # --- the contract subclasses implement ----------------------------
    @abstractmethod
    def logits(self, tokens: Tokens, labels: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits ``(B, N, V)`` for ``tokens`` and
        ``labels (B,)`` (no label dropout outside training)."""

    @abstractmethod
    def loss(self, tokens: Tokens,
             labels: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Named losses (``loss_ce``) and detached stats (``acc``)."""

    @abstractmethod
    def generate(self,
                 labels: torch.Tensor,
                 sampler: Optional[TokenSampler] = None,
                 generator: Optional[torch.Generator] = None,
                 **kwargs) -> Tokens:
        """Sample tokens in the ``token_shape`` structure for ``labels (B,)``;
        deterministic for a seeded ``generator``."""

    # --- Runner entry point -------------------------------------------
    def forward(self,
                inputs: Tokens,
                data_samples: Optional[torch.Tensor] = None,
                mode: str = 'loss'):
        """``inputs``: token structure, ``data_samples``: labels ``(B,)``
        (``None``: the null class, i.e. the unconditional model).

        * ``'loss'``: :meth:`loss`;
        * ``'predict'``: one :class:`DataSample` per label with generated
          ``tokens`` and ``gt_label`` (the class sampled for);
        * ``'tensor'``: :meth:`logits`.
        """
        labels = self.labels_or_null(data_samples, batch_size_of(inputs),
                                     self.device_of(inputs))
        if mode == 'loss':
            return self.loss(inputs, labels)
        if mode == 'tensor':
            return self.logits(inputs, labels)
        if mode == 'predict':
            return self.predict(labels)
        raise ValueError(f'mode must be "loss", "predict" or "tensor", '
                         f'got {mode!r}')

    @torch.no_grad()
    def predict(self, labels: torch.Tensor,
                generator: Optional[torch.Generator] = None
                ) -> List[DataSample]:
        """Generate with the configured sampler; one :class:`DataSample`
        per label with ``tokens`` (``token_shape`` structure of one sample)
        and ``gt_label``."""
        tokens = self.generate(labels, generator=generator)
        samples = []
        for i, label in enumerate(labels):
            sample = DataSample(gt_label=label)
            sample.tokens = tokens[i] if torch.is_tensor(tokens) else \
                type(tokens)(level[i] for level in tokens)
            samples.append(sample)
        return samples

    # --- shared helpers -----------------------------------------------
    @staticmethod
    def device_of(tokens: Tokens) -> torch.device:
        return (tokens if torch.is_tensor(tokens) else tokens[0]).device

    def labels_or_null(self, labels: Optional[torch.Tensor], batch_size: int,
                       device: torch.device) -> torch.Tensor:
        """``labels`` as ``(B,)`` int64, or the null class when ``None``."""
        if labels is None:
            return torch.full((batch_size, ), self.null_class,
                              dtype=torch.long, device=device)
        labels = torch.as_tensor(labels, device=device).long().view(-1)
        if labels.shape[0] != batch_size:
            raise ValueError(f'{labels.shape[0]} labels for a batch of '
                             f'{batch_size} token samples')
        return labels

    def guidance_labels(self, labels: torch.Tensor,
                        sampler: TokenSampler) -> torch.Tensor:
        """``[labels; null]`` ``(2B,)`` when ``sampler.uses_guidance``, else
        ``labels`` unchanged."""
        if not sampler.uses_guidance:
            return labels
        return torch.cat([labels, torch.full_like(labels, self.null_class)])

    @staticmethod
    def guidance_repeat(x: torch.Tensor,
                        sampler: TokenSampler) -> torch.Tensor:
        """``x (B, ...)`` repeated to ``(2B, ...)`` to go with
        :meth:`guidance_labels` (unchanged without guidance)."""
        return torch.cat([x, x]) if sampler.uses_guidance else x

    @staticmethod
    def guided(logits: torch.Tensor, sampler: TokenSampler,
               progress: float) -> torch.Tensor:
        """Guided logits ``(B, ...)`` from the batched ``(2B, ...)``
        conditional / unconditional logits at ``progress`` ∈ [0, 1]
        (``logits`` unchanged without guidance)."""
        if not sampler.uses_guidance:
            return logits
        cond, uncond = logits.chunk(2)
        return sampler.guide(cond, uncond, progress)
