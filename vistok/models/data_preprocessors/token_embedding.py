"""Stored tokens → augmented codes or embedding maps for token classifiers
(SeiT, Park et al., ICCV 2023, arXiv 2303.11114; SeiT++, Lee et al., ECCV
2024, arXiv 2312.10105).

The augmentation of the official code (``naver-ai/seit``: ``token_
transform.py``, ``engine_mtm.py``, ``main_mtm_finetune.py``,
``main_seit.py``) re-done on the batch's device, per sample, with one
explicit probability per random choice; the transforms themselves are in
:mod:`.token_augment`.
"""
import math
import os.path as osp
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
from mmengine.model import BaseDataPreprocessor

from vistok.datasets.seit_format import read_seit_codebook
from vistok.models.utils.frozen import freeze_as_buffers, load_frozen_weights
from vistok.models.utils.tokenizer_loading import (
    encode_images,
    prepare_tokenizer,
    resolve_use_ema,
)
from vistok.registry import MODELS
from vistok.utils.partial_load import prefix_rules
from vistok.utils.weights import MissingWeightsError, load_state_dict_file
from .token_augment import (
    EmbeddingMixup,
    RandomFlipAffine,
    center_crop,
    color_adapt,
    emb_noise,
    embed_codes,
    requantize,
    resized_crop,
    resized_crop_codes,
    sample_rrc_boxes,
)

#: where a data preprocessor sits in a config (named in errors)
KEY = 'model.data_preprocessor'
CODEBOOK_HOW_TO_GET = (
    'SeiT publishes its ImageNet-1k tokens with their codebook '
    '(codebook.ckpt, a bare (391, 32) tensor) at '
    'https://github.com/naver-ai/seit/releases; for tokens of a vistok '
    'tokenizer, save its codes (tokenizer.quantizer.code_vectors()) with '
    'vistok.datasets.seit_format.write_seit_codebook.')
TOKEN_ADAPT_HOW_TO_GET = (
    'Convert the released TokenAdapt weights (weights/tokenadapt.ckpt of '
    'naver-ai/seit) with projects/SeiTpp/tools/convert_tokenadapt.py, '
    'or train f / g with the TokenAdapt recipe of projects/SeiTpp (its '
    'checkpoints hold them as token_adapt.f / token_adapt.g).')
#: prefix of the TokenAdapt tensors in a checkpoint of the model that
#: trained them (SeiT++'s ``TokenAdaptTrainer``, child ``token_adapt``)
TOKEN_ADAPT_PREFIX = 'token_adapt.'
TOKENIZER_HOW_TO_GET = (
    'Set it to a checkpoint of the tokenizer that tokenizer.config builds '
    '(a training checkpoint, its state_dict is used, or a .safetensors '
    'export); every tensor of the tokenizer must be in it.')
#: timm Mixup of the base part: SeiT++ fine-tuning (main_mtm_finetune.py:
#: CutMix 1.0, mixup 0, prob 1, switch 0.5, 'batch', smoothing 0.1)
DEFAULT_MIXUP = dict(mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.1)
#: timm Mixup of the TokenAdapt part, in f-space (engine_mtm.py's
#: ``mixup_ta_fn``: mixup 0.8 + CutMix 1.0, smoothing 0.1)
DEFAULT_TOKEN_ADAPT_MIXUP = dict(mixup_alpha=0.8, cutmix_alpha=1.0,
                                 label_smoothing=0.1)
#: RandomFlipAffine of the TokenAdapt part (build_geo_transform)
DEFAULT_TOKEN_ADAPT_AUG = dict(flip_prob=0.5, affine_prob=0.5, op_prob=0.5,
                               rotate=(-30.0, 30.0), translate=(0.2, 0.2),
                               shear_x=(0.0, 15.0), shear_y=(0.0, 15.0))


def token_adapt_weights(state: dict) -> dict:
    """The TokenAdapt tensors of a ``token_adapt_checkpoint``'s state dict:
    as they are (``f.*``, ``g.*``: a converted official file) or, when keys
    carry :data:`TOKEN_ADAPT_PREFIX` (a checkpoint of the model that
    trained them, ``token_adapt.f.*``, ``token_adapt.g.*``), those keys
    with the prefix stripped (the others, e.g. a data preprocessor's, are
    left out)."""
    strip = prefix_rules({TOKEN_ADAPT_PREFIX: ''})[0]  # no catch-all rule
    renamed = ((strip.apply(key), value) for key, value in state.items())
    return {new[0]: value for new, value in renamed if new} or state


def _take(tensor: Optional[torch.Tensor],
          index: torch.Tensor) -> Optional[torch.Tensor]:
    return None if tensor is None else tensor[index]


@MODELS.register_module()
class TokenEmbeddingPreprocessor(BaseDataPreprocessor):
    """Batches of stored tokens → augmented codes or embedding maps and
    labels / soft targets, on the batch's device.

    **Input**: mmengine's ``pseudo_collate`` of stored-token samples
    (``SeiTTokenDataset``, ``CompactTokenDataset``, ``TokenShardDataset``):
    ``dict(indices=[(h, w) int per sample] or (B, h, w), gt_label=[...])``;
    or, with ``tokenizer``, images ``dict(inputs=[(3, H, W) uint8],
    data_samples=[DataSample(gt_label)])`` (e.g. ``ImageFolderDataset``
    resized bicubic to 256 for the robustness rows), tokenised online first.

    **Output** (the contract the token classifiers consume)::

        dict(inputs=x, data_samples=targets)

    * ``x``: ``output='codes'``: ``(B, c, c)`` int64 codes (SeiT++: the map
      after augmentation is re-quantised by cosine, :func:`requantize`, as
      ``convert_to_codes``); ``output='embedding'``: the ``(B, D, c, c)``
      float embedding map (SeiT's classifier input). ``c = crop_size``.
    * ``targets``: ``(B,)`` int64 class ids; in training with CutMix /
      Mixup (``mixup``) ``(B, num_classes)`` float soft targets (label
      smoothing included: train with soft-target CE); ``None`` when the
      samples have no ``gt_label``.

    **Training** (``training=True``), per batch:

    1. codebook embedding ``(B, D, h, w)`` (``color_order='before_crop'``:
       Emb-Noise / ColorAdapt here, on the full map, as SeiT++);
    2. a random ``token_adapt_ratio`` share of the samples takes the
       TokenAdapt path (``token_adapt``), the rest the base path;
    3. base: RandomResizedCrop to ``crop_size`` (``crop_mode='embedding'``:
       bicubic on the embedding map, the paper's, equal to SeiT's one-hot
       route; ``'index'``: nearest on the codes, before embedding),
       (``'after_crop'``: colour, as SeiT), CutMix / Mixup;
    4. TokenAdapt: ``f`` on the full map ``(B', D, s·h, s·w)``,
       :class:`RandomFlipAffine`, RRC to ``s · crop_size``, CutMix / Mixup
       in f-space (``token_adapt_mixup``), ``g`` → arg-max codes →
       embedding (``'after_crop'``: colour);
    5. both parts back in the input order (targets aligned), re-quantised
       for ``output='codes'``.

    **Evaluation**: the centre ``crop_size`` crop of the codes (SeiT's
    ``CC``), embedded (and re-quantised for ``'codes'``, as the official
    ``evaluate`` does; a code maps to itself unless another code has the
    same direction).

    **Colour**: one uniform draw per sample picks Emb-Noise with
    ``noise_prob``, ColorAdapt with ``color_adapt_prob``, else nothing.
    The official code draws one transform per *batch* (``RandomChoice``)
    that then acts on ``int(B · 0.5)`` samples, so its per-sample rates
    are products: SeiT++ fine-tuning Emb-Noise 0.75 × 0.5 = 0.375 and
    ColorAdapt 0.25 × 0.5 = 0.125 (the defaults), SeiT (``main_seit.py``)
    0.5 × 0.5 = 0.25 and 0.25 × 0.5 = 0.125, MTM pre-training 0 and 0.
    ColorAdapt's partner is a random permutation of the batch (officially
    the mirrored index).

    **Files** are read by :meth:`load_weights`, which ``init_weights`` (the
    Runner, before iteration 0) and the first batch call; constructors read
    none (DESIGN §6). The codebook, the TokenAdapt module and the tokenizer
    are frozen *non-persistent buffers*: no parameters, never in a
    classifier's state dict or checkpoint (they come from their files).

    Randomness: torch's global RNG on the batch's device only.

    Args:
        codebook_file: SeiT's ``codebook.ckpt`` (a bare ``(K, D)`` tensor;
            SeiT's is 391 × 32); or
        codebook: the ``(K, D)`` codebook itself (tensor or nested list).
        output: ``'codes'`` (SeiT++) or ``'embedding'`` (SeiT).
        crop_size: side of the output grid (paper: 28 of the stored 32).
        crop_mode: training crop ``'embedding'`` (bicubic on the embedding
            map) or ``'index'`` (nearest on the codes).
        rrc_scale / rrc_ratio: RandomResizedCrop area and aspect ranges
            (fine-tuning and SeiT 0.08; MTM pre-training 0.2), shared by the
            TokenAdapt crop.
        color_order: ``'before_crop'`` (SeiT++: on the full embedded batch,
            needs ``crop_mode='embedding'`` when colour is on) or
            ``'after_crop'`` (SeiT: on each part's cropped map, before its
            CutMix).
        noise_prob / noise_scale / noise_std: Emb-Noise (see above).
        color_adapt_prob / color_adapt_eps: ColorAdapt (σ = unbiased std +
            eps).
        num_classes: classes of the soft targets (ImageNet-1k: 1000).
        mixup: :class:`EmbeddingMixup` options of the base part (timm
            ``Mixup`` keywords; ``num_classes`` comes from ``num_classes``),
            ``None``: no mixing, hard labels out. Default
            ``DEFAULT_MIXUP``.
        token_adapt: MODELS config (or module) of the TokenAdapt network:
            ``f(z)`` ``(B, D, h, w)`` → ``(B, D, s·h, s·w)``, ``g(x)``
            ``(B, D, H, W)`` → code logits ``(B, K, H/s, W/s)``, ``scale``
            = s (2 in the paper). ``None``: off.
        token_adapt_checkpoint: its weights (a local file; required with
            ``token_adapt``): a converted official file (``f.*``, ``g.*``)
            or a checkpoint of the model that trained it (SeiT++'s
            ``TokenAdaptTrainer``: ``token_adapt.f.*``, ``token_adapt.g.*``,
            the prefix is stripped, see :func:`token_adapt_weights`).
        token_adapt_ratio: share of the batch on the TokenAdapt path
            (official: half, ``chunk(2)``); rounded to an even count when
            samples are mixed.
        token_adapt_aug: :class:`RandomFlipAffine` options (default
            ``DEFAULT_TOKEN_ADAPT_AUG``, the official values).
        token_adapt_mixup: :class:`EmbeddingMixup` options in f-space; set
            exactly when ``mixup`` is (both parts give the same kind of
            target). Default ``DEFAULT_TOKEN_ADAPT_MIXUP``.
        tokenizer: ``dict(config=..., checkpoint=..., use_ema=None)`` to
            tokenise image batches: ``config`` a vistok config file (its
            ``model``) or a model config dict, ``checkpoint`` its weights,
            ``use_ema`` as :func:`vistok.apis.tokenize`. Built and loaded by
            :meth:`load_weights`, then frozen.
        non_blocking: asynchronous host-to-device copies.
    """
    OUTPUTS = ('codes', 'embedding')
    CROP_MODES = ('embedding', 'index')
    COLOR_ORDERS = ('before_crop', 'after_crop')

    def __init__(self,
                 codebook_file: Optional[str] = None,
                 codebook: Optional[Union[torch.Tensor, Sequence]] = None,
                 output: str = 'codes',
                 crop_size: int = 28,
                 crop_mode: str = 'embedding',
                 rrc_scale: Sequence[float] = (0.08, 1.0),
                 rrc_ratio: Sequence[float] = (3 / 4, 4 / 3),
                 color_order: str = 'before_crop',
                 noise_prob: float = 0.375,
                 noise_scale: float = 1.0,
                 noise_std: float = 1.0,
                 color_adapt_prob: float = 0.125,
                 color_adapt_eps: float = 1e-5,
                 num_classes: int = 1000,
                 mixup: Optional[dict] = DEFAULT_MIXUP,
                 token_adapt: Optional[Union[dict, nn.Module]] = None,
                 token_adapt_checkpoint: Optional[str] = None,
                 token_adapt_ratio: float = 0.5,
                 token_adapt_aug: dict = DEFAULT_TOKEN_ADAPT_AUG,
                 token_adapt_mixup: Optional[dict] = DEFAULT_TOKEN_ADAPT_MIXUP,
                 tokenizer: Optional[dict] = None,
                 non_blocking: bool = False):
        super().__init__(non_blocking=non_blocking)
        for name, value, allowed in (
            ('output', output, self.OUTPUTS),
            ('crop_mode', crop_mode, self.CROP_MODES),
            ('color_order', color_order, self.COLOR_ORDERS)):
            if value not in allowed:
                raise ValueError(f'{KEY}.{name} must be one of {allowed}, '
                                 f'got {value!r}')
        for name, prob in (('noise_prob', noise_prob),
                           ('color_adapt_prob', color_adapt_prob),
                           ('token_adapt_ratio', token_adapt_ratio)):
            if not 0 <= prob <= 1:
                raise ValueError(f'{KEY}.{name} must be in [0, 1], got '
                                 f'{prob}')
        if noise_prob + color_adapt_prob > 1:
            raise ValueError(
                f'{KEY}.noise_prob + color_adapt_prob must be <= 1 (one '
                f'colour transform per sample), got {noise_prob} + '
                f'{color_adapt_prob}')
        if crop_size < 1:
            raise ValueError(f'{KEY}.crop_size must be >= 1, got {crop_size}')
        if not (len(rrc_scale) == 2 and 0 < rrc_scale[0] <= rrc_scale[1]):
            raise ValueError(f'{KEY}.rrc_scale must be (low, high) with 0 < '
                             f'low <= high, got {rrc_scale}')
        if not (len(rrc_ratio) == 2 and 0 < rrc_ratio[0] <= rrc_ratio[1]):
            raise ValueError(f'{KEY}.rrc_ratio must be (low, high) with 0 < '
                             f'low <= high, got {rrc_ratio}')
        self.use_color = noise_prob > 0 or color_adapt_prob > 0
        if (self.use_color and crop_mode == 'index'
                and color_order == 'before_crop'):
            raise ValueError(
                f"{KEY}.color_order='before_crop' needs crop_mode="
                f"'embedding' (an index crop comes before the embedding); "
                f"use color_order='after_crop'")
        self.output, self.crop_size, self.crop_mode = (output, crop_size,
                                                       crop_mode)
        self.rrc_scale, self.rrc_ratio = tuple(rrc_scale), tuple(rrc_ratio)
        self.color_order = color_order
        self.noise_prob, self.noise_scale, self.noise_std = (noise_prob,
                                                             noise_scale,
                                                             noise_std)
        self.color_adapt_prob = color_adapt_prob
        self.color_adapt_eps = color_adapt_eps
        self.num_classes = num_classes
        self.mixup = (None if mixup is None else EmbeddingMixup(
            num_classes, **self._mixup_options(mixup, 'mixup')))

        self.codebook_file = codebook_file
        if (codebook is None) == (codebook_file is None):
            raise ValueError(f'set exactly one of {KEY}.codebook_file (SeiT\'s'
                             f' codebook.ckpt) and {KEY}.codebook')
        if codebook is not None:
            codebook = torch.as_tensor(codebook, dtype=torch.float)
            self._check_codebook(codebook, f'{KEY}.codebook')
        self.register_buffer('codebook', codebook, persistent=False)

        self.token_adapt_ratio = token_adapt_ratio
        self.token_adapt_checkpoint = token_adapt_checkpoint
        self.token_adapt = self.token_adapt_aug = self.token_adapt_mixup = None
        if token_adapt is not None:
            self._build_token_adapt(token_adapt, token_adapt_aug,
                                    token_adapt_mixup)

        self.tokenizer_cfg = self._check_tokenizer_cfg(tokenizer)
        self.tokenizer = None  # built by load_weights
        self.use_ema = False
        self.weights_loaded = False

    # --- construction helpers -------------------------------------------
    @staticmethod
    def _mixup_options(options: dict, name: str) -> dict:
        options = dict(options)
        if 'num_classes' in options:
            raise ValueError(f'{KEY}.{name} must not set num_classes: it is '
                             f'{KEY}.num_classes')
        return options

    @staticmethod
    def _check_codebook(codebook: torch.Tensor, source: str) -> None:
        if codebook.dim() != 2 or min(codebook.shape) < 1:
            raise ValueError(f'{source}: the codebook must be (K, D), got '
                             f'shape {tuple(codebook.shape)}')

    def _build_token_adapt(self, token_adapt, aug: dict,
                           mixup: Optional[dict]) -> None:
        module = MODELS.build_or_take(token_adapt)
        scale = getattr(module, 'scale', None)
        if not (callable(getattr(module, 'f', None))
                and callable(getattr(module, 'g', None))
                and isinstance(scale, int) and scale >= 1):
            raise TypeError(f'{KEY}.token_adapt must build a module with '
                            f'f(z), g(x) and an integer scale >= 1, got '
                            f'{type(module).__name__}')
        if (mixup is None) != (self.mixup is None):
            raise ValueError(
                f'{KEY}.mixup and {KEY}.token_adapt_mixup must both be set '
                f'or both be None: both parts of the batch must give the '
                f'same kind of target (soft or hard)')
        module.is_init = True  # its weights come from the checkpoint
        self.token_adapt = freeze_as_buffers(module)
        self.token_adapt_aug = RandomFlipAffine(**aug)
        self.token_adapt_mixup = (None if mixup is None else EmbeddingMixup(
            self.num_classes,
            **self._mixup_options(mixup, 'token_adapt_mixup')))

    @staticmethod
    def _check_tokenizer_cfg(tokenizer: Optional[dict]) -> Optional[dict]:
        if tokenizer is None:
            return None
        if not isinstance(tokenizer, dict) or 'config' not in tokenizer:
            raise TypeError(f'{KEY}.tokenizer must be dict(config=..., '
                            f'checkpoint=..., use_ema=None), got '
                            f'{tokenizer!r}')
        unknown = set(tokenizer) - {'config', 'checkpoint', 'use_ema'}
        if unknown:
            raise ValueError(f'{KEY}.tokenizer: unknown keys '
                             f'{sorted(unknown)} (config, checkpoint, '
                             f'use_ema)')
        return dict(tokenizer)

    # --- files ---------------------------------------------------------------
    def init_weights(self) -> None:
        """Read the files before training (the Runner calls this)."""
        self.load_weights()

    def init_inference_weights(self) -> None:
        """Read the files before testing a loaded model."""
        self.load_weights()

    def load_weights(self) -> None:
        """Read the codebook file, the TokenAdapt weights and the tokenizer
        once; a missing file raises :class:`MissingWeightsError` naming it
        and its config key."""
        if self.weights_loaded:
            return
        if self.codebook is None:
            if (self.codebook_file is None
                    or not osp.isfile(self.codebook_file)):
                raise MissingWeightsError(self.codebook_file,
                                          f'{KEY}.codebook_file',
                                          CODEBOOK_HOW_TO_GET)
            codebook = read_seit_codebook(self.codebook_file).float()
            self._check_codebook(codebook, self.codebook_file)
            self.codebook = codebook.to(self.device)
        if self.token_adapt is not None:
            state = load_state_dict_file(self.token_adapt_checkpoint,
                                         f'{KEY}.token_adapt_checkpoint',
                                         TOKEN_ADAPT_HOW_TO_GET)
            load_frozen_weights(self.token_adapt,
                                token_adapt_weights(state),
                                self.token_adapt_checkpoint)
        if self.tokenizer_cfg is not None and self.tokenizer is None:
            self.tokenizer = self._load_tokenizer()
        self.weights_loaded = True

    def _load_tokenizer(self) -> nn.Module:
        """Build the tokenizer of ``tokenizer.config``, freeze it and fill
        it from ``tokenizer.checkpoint`` (as ``vistok.apis.load_tokenizer``:
        both through :func:`~vistok.models.utils.tokenizer_loading.
        prepare_tokenizer`)."""
        tokenizer = prepare_tokenizer(
            self.tokenizer_cfg['config'], self.tokenizer_cfg.get('checkpoint'),
            freeze=True, checkpoint_key=f'{KEY}.tokenizer.checkpoint',
            how_to_get=TOKENIZER_HOW_TO_GET,
            config_key=f'{KEY}.tokenizer.config')
        self.use_ema = resolve_use_ema(tokenizer,
                                       self.tokenizer_cfg.get('use_ema'),
                                       f'{KEY}.tokenizer.use_ema')
        return tokenizer.to(self.device)

    # --- batch in ------------------------------------------------------------
    def _codes_of(self, data: dict) -> torch.Tensor:
        """The ``(B, h, w)`` int64 codes of a token or image batch."""
        if data.get('indices') is not None:
            indices = data['indices']
            codes = (indices if torch.is_tensor(indices) else torch.stack(
                [torch.as_tensor(t) for t in indices]))
            codes = codes.to(self.device)
        elif data.get('inputs') is not None:
            if self.tokenizer is None:
                raise ValueError(f'an image batch (inputs) needs '
                                 f'{KEY}.tokenizer to tokenise it')
            codes = self._tokenize(data['inputs'])
        else:
            raise KeyError(f'{type(self).__name__} needs a batch with '
                           f'indices (stored tokens) or inputs (images), got '
                           f'keys {sorted(data)}')
        if codes.is_floating_point() or codes.dim() != 3:
            raise ValueError(f'indices must be integer code maps (B, h, w), '
                             f'got {codes.dtype} of shape '
                             f'{tuple(codes.shape)}')
        codes = codes.long()
        num_codes = len(self.codebook)
        if codes.numel() and (codes.min() < 0 or codes.max() >= num_codes):
            raise ValueError(f'indices must lie in [0, {num_codes}) for the '
                             f'{tuple(self.codebook.shape)} codebook, got '
                             f'[{int(codes.min())}, {int(codes.max())}]')
        if min(codes.shape[1:]) < self.crop_size:
            raise ValueError(f'{KEY}.crop_size={self.crop_size} exceeds the '
                             f'{tuple(codes.shape[1:])} token grid')
        return codes

    @torch.no_grad()
    def _tokenize(self, images) -> torch.Tensor:
        """Codes of images, as ``vistok.apis.tokenize``
        (:func:`~vistok.models.utils.tokenizer_loading.encode_images`: the
        tokenizer's own preprocessor, then ``encode``, on its EMA weights
        with ``use_ema``)."""
        tokenizer = self.tokenizer
        if tokenizer.data_preprocessor.device != self.device:
            tokenizer.to(self.device)  # BaseModel.to moves its preprocessor
        codes = encode_images(tokenizer, images, self.use_ema)
        if not torch.is_tensor(codes):
            raise TypeError(f'{KEY}.tokenizer must give one (B, h, w) code '
                            f'map, got a {type(codes).__name__}')
        return codes

    def _labels_of(self, data: dict, num: int) -> Optional[torch.Tensor]:
        labels = data.get('gt_label')
        if labels is None and data.get('data_samples') is not None:
            found = [getattr(s, 'gt_label', None)
                     for s in data['data_samples']]
            labels = None if any(v is None for v in found) else found
        if labels is None:
            return None
        labels = (labels if torch.is_tensor(labels) else torch.stack(
            [torch.as_tensor(v) for v in labels]))
        labels = labels.to(self.device).long().view(-1)
        if len(labels) != num:
            raise ValueError(f'{len(labels)} labels for {num} samples')
        return labels

    # --- forward ------------------------------------------------------------
    @torch.no_grad()
    def forward(self, data: dict, training: bool = False) -> dict:
        """Batch → ``dict(inputs=codes or embedding map, data_samples=
        labels or soft targets or None)`` (see the class docstring)."""
        self.load_weights()
        data = self.cast_data(data)
        codes = self._codes_of(data)
        labels = self._labels_of(data, len(codes))
        if training:
            x, targets = self._train(codes, labels)
        else:
            x = embed_codes(center_crop(codes, self.crop_size), self.codebook)
            targets = labels
        if self.output == 'codes':
            x = requantize(x, self.codebook)
        return dict(inputs=x, data_samples=targets)

    def _color(self, x: torch.Tensor) -> torch.Tensor:
        """Emb-Noise or ColorAdapt or nothing, one draw per sample."""
        if not self.use_color or len(x) == 0:
            return x
        draw = torch.rand(len(x), device=x.device)
        noise = draw < self.noise_prob
        adapt = ~noise & (draw < self.noise_prob + self.color_adapt_prob)
        out = x
        if self.noise_prob > 0:
            out = emb_noise(x, self.noise_scale, self.noise_std, noise)
        if self.color_adapt_prob > 0:
            partner = torch.randperm(len(x), device=x.device)
            adapted = color_adapt(x, partner, self.color_adapt_eps, adapt)
            out = torch.where(adapt.view(-1, 1, 1, 1), adapted, out)
        return out

    def _token_adapt_count(self, num: int) -> int:
        if self.token_adapt is None:
            return 0
        if self.mixup is None:
            return int(math.floor(num * self.token_adapt_ratio + 0.5))
        if num % 2:
            raise ValueError(
                f'CutMix / Mixup with TokenAdapt needs an even batch (both '
                f'parts are mixed in pairs), got {num}: use an even '
                f'batch_size and drop_last=True')
        return 2 * int(math.floor(num * self.token_adapt_ratio / 2 + 0.5))

    def _train(self, codes: torch.Tensor, labels: Optional[torch.Tensor]):
        if self.mixup is not None and labels is None:
            raise ValueError(f'{KEY}.mixup needs gt_label in the samples; '
                             f'set it to None for unlabelled training (MTM '
                             f'pre-training)')
        if labels is not None and self.mixup is not None and (
                labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f'gt_label must lie in [0, {KEY}.num_classes='
                             f'{self.num_classes}), got [{int(labels.min())}'
                             f', {int(labels.max())}]')
        emb = None
        if self.crop_mode == 'embedding' or self.token_adapt is not None:
            emb = embed_codes(codes, self.codebook)
            if self.color_order == 'before_crop':
                emb = self._color(emb)
        num_ta = self._token_adapt_count(len(codes))
        if num_ta == 0:
            return self._base(codes, emb, labels)
        order = torch.randperm(len(codes), device=codes.device)
        ta, base = order[:num_ta], order[num_ta:]
        base_x, base_y = self._base(codes[base], _take(emb, base),
                                    _take(labels, base))
        ta_x, ta_y = self._token_adapt(emb[ta], _take(labels, ta))
        x = base_x.new_empty(len(codes), *base_x.shape[1:])
        x[base], x[ta] = base_x, ta_x
        if base_y is None:
            return x, None
        targets = base_y.new_empty(len(codes), *base_y.shape[1:])
        targets[base], targets[ta] = base_y, ta_y
        return x, targets

    def _rrc_boxes(self, num: int, grid, device) -> torch.Tensor:
        return sample_rrc_boxes(num, tuple(grid), self.rrc_scale,
                                self.rrc_ratio, device)

    def _base(self, codes, emb, labels):
        """Base path: RRC, (colour), CutMix / Mixup."""
        boxes = self._rrc_boxes(len(codes), codes.shape[-2:], codes.device)
        if self.crop_mode == 'index':
            x = embed_codes(resized_crop_codes(codes, boxes, self.crop_size),
                            self.codebook)
        else:
            x = resized_crop(emb, boxes, self.crop_size, mode='bicubic')
        if self.color_order == 'after_crop':
            x = self._color(x)
        if self.mixup is not None:
            x, labels = self.mixup(x, labels)
        return x, labels

    def _token_adapt(self, emb, labels):
        """TokenAdapt path: f, flip / affine, RRC to s·crop, CutMix / Mixup
        in f-space, g, arg-max codes, embedding, (colour)."""
        scale, (num, dim, height, width) = self.token_adapt.scale, emb.shape
        lifted = self.token_adapt.f(emb)
        if tuple(lifted.shape) != (num, dim, scale * height, scale * width):
            raise ValueError(
                f'{KEY}.token_adapt: f must map (B, D, h, w) = '
                f'{tuple(emb.shape)} to (B, D, {scale}h, {scale}w), got '
                f'{tuple(lifted.shape)}')
        lifted = self.token_adapt_aug(lifted)
        boxes = self._rrc_boxes(num, lifted.shape[-2:], emb.device)
        lifted = resized_crop(lifted, boxes, scale * self.crop_size,
                              mode='bicubic')
        if self.token_adapt_mixup is not None:
            lifted, labels = self.token_adapt_mixup(lifted, labels)
        logits = self.token_adapt.g(lifted)
        expected = (num, len(self.codebook), self.crop_size, self.crop_size)
        if tuple(logits.shape) != expected:
            raise ValueError(f'{KEY}.token_adapt: g must give code logits '
                             f'{expected} (B, K, crop, crop), got '
                             f'{tuple(logits.shape)}')
        x = embed_codes(logits.argmax(1), self.codebook)
        if self.color_order == 'after_crop':
            x = self._color(x)
        return x, labels
