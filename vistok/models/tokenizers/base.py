"""What every image tokenizer shares: the training and evaluation recipe.

A tokenizer is a network (``images → tokens → images``) plus a recipe that
is the same for VQ-VAE, VQGAN, TiTok and their descendants: reconstruction
and perceptual terms, the quantizer's terms, an optional discriminator with
its own optimizer step (VQGAN, Esser et al. 2021, eq. 6-7), an EMA copy of
the generator, frozen parts, the non-finite-loss policy, ``predict`` for
the metrics and code counts for the usage hook. :class:`BaseTokenizer`
holds the recipe; a subclass supplies the network through public extension
points and overrides nothing else:

* :meth:`BaseTokenizer.build_network` (required): build the network's
  children from the network arguments of the config. It must set
  ``self.quantizer`` (a vistok quantizer: ``codebook_size``, ``encode``,
  ``decode``, a :class:`~vistok.structures.QuantizerOutput` forward);
* :meth:`~BaseTokenizer.encode`, :meth:`~BaseTokenizer.decode`,
  :meth:`~BaseTokenizer.reconstruct` (required): the tokenizer API, images
  in [-1, 1];
* :meth:`~BaseTokenizer.extra_loss_terms` (optional): terms added to the
  default generator step (ImageFolder's semantic loss);
* :meth:`~BaseTokenizer.generator_losses` (optional): the named loss terms
  of the generator step; the default is the pixel recipe above, helpers
  :meth:`~BaseTokenizer.quantizer_terms` and
  :meth:`~BaseTokenizer.merge_terms` build others (TiTok's proxy-code
  stage);
* :meth:`~BaseTokenizer.default_last_layer`,
  :attr:`~BaseTokenizer.default_reconstruction_loss`,
  :attr:`~BaseTokenizer.trains_on_pixels`,
  :attr:`~BaseTokenizer.NON_GENERATOR_PARTS` (optional): defaults of the
  recipe;
* :meth:`~BaseTokenizer.init_weights` (extend with ``super()``) and
  :meth:`~BaseTokenizer.init_inference_weights`: files to load before
  training / before inference.

See ``projects/example_project`` for a tokenizer in a plugin and
``vistok/models/tokenizers/titok.py`` for a larger one.
"""
import contextlib
import inspect
from abc import abstractmethod
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from mmengine.logging import MessageHub
from mmengine.model import BaseModel
from mmengine.optim import OptimWrapper, OptimWrapperDict

from vistok.models.data_preprocessors.image import image_preprocessor_cfg
from vistok.models.quantizers.base import (
    BaseQuantizer,
    flat_tokens,
    token_levels,
)
from vistok.models.utils import ModelEMA, NonFiniteGuard, update_params
from vistok.registry import DISCRIMINATORS, LOSSES, MODELS
from vistok.structures import DataSample, QuantizerOutput, TokenizerOutput
from vistok.utils.weights import MissingWeightsError

PartCfg = Union[dict, nn.Module]
LossCfg = Union[PartCfg, Sequence[PartCfg]]
LossDict = Dict[str, torch.Tensor]


def build_losses(cfgs: Optional[LossCfg], key: str
                 ) -> Tuple[nn.ModuleList, List[str]]:
    """A ModuleList of LOSSES and the config key of each (for errors)."""
    if cfgs is None:
        return nn.ModuleList(), []
    if isinstance(cfgs, (dict, nn.Module)):
        return nn.ModuleList([LOSSES.build_or_take(cfgs)]), [key]
    return (nn.ModuleList(LOSSES.build_or_take(cfg) for cfg in cfgs),
            [f'{key}[{i}]' for i in range(len(cfgs))])


def current_iteration() -> int:
    """The Runner's current training iteration (its message hub's
    ``'iter'``; 0 outside a Runner)."""
    return int(MessageHub.get_current_instance().get_info('iter', 0))


class BaseTokenizer(BaseModel):
    """The tokenizer recipe around a network built by
    :meth:`build_network` (see the module docstring for the extension
    points).

    The generator loss is VQ-VAE eq. 3 — reconstruction terms plus the
    quantizer's (already weighted) codebook / commitment / entropy terms —
    plus perceptual terms and, with a ``discriminator``, VQGAN's adversarial
    term (see :class:`~vistok.models.losses.AdversarialLoss`).

    Training (``train_step``): without a discriminator, one optimizer over
    the generator. With one, an ``OptimWrapperDict`` with ``generator`` and
    ``discriminator`` wrappers (build it with
    ``constructor='MultiPartOptimWrapperConstructor'``); each iteration
    updates the generator (the discriminator frozen), then — from the
    adversarial start iteration on — the discriminator on real images and
    the detached reconstructions. Gradients are averaged over ranks by the
    step itself (``syncs_gradients``), non-finite losses are skipped and
    counted (:class:`~vistok.models.utils.NonFiniteGuard`), and the EMA copy
    is updated after the steps. Gradient accumulation is per wrapper
    (``accumulative_counts`` in the generator's and the discriminator's
    wrapper configs): ``k`` accumulated iterations of batch ``b`` update
    both parts as one iteration of batch ``k·b``; a non-finite loss drops
    its optimizer's whole window, the other optimizer's window is dropped
    only if its own loss is non-finite too
    (:func:`~vistok.models.utils.update_params`). Every term is logged
    under its name (the discriminator's total as ``disc_loss_total``).

    Args (keyword only; every other keyword goes to :meth:`build_network`):
        reconstruction_loss: a LOSSES config or a list of them (pixel
            losses); each is logged under its ``loss_name``. Default
            :attr:`default_reconstruction_loss`.
        perceptual_loss: a LOSSES config or a list (LPIPS, timm-feature
            loss), called as ``loss(reconstruction, images)``. Together with
            the reconstruction terms they form taming's ``nll`` loss.
        discriminator: DISCRIMINATORS config; enables adversarial training.
        adversarial_loss: ``AdversarialLoss`` config (required with a
            discriminator): GAN objective, fixed or adaptive weight, start
            iteration, LeCam, R1.
        last_layer: name of the parameter the adaptive GAN weight is
            computed at; default :meth:`default_last_layer`.
        ema: ``dict(decay=..., interval=1, start_iter=0, use_for_val=True)``
            keeps a :class:`~vistok.models.utils.ModelEMA` of the generator
            parts inside the model; with ``use_for_val`` validation and
            testing (``predict``) run on the EMA weights.
        max_nonfinite_skips: abort once more updates than this had a
            non-finite loss.
        frozen_parts: names of children (e.g. ``('encoder', 'quantizer')``
            for decoder fine-tuning, TiTok stage 2) that are not trained:
            no gradients, always in eval mode, outside the optimizer and the
            EMA copy. A quantizer whose loss terms no trainable part feeds
            (frozen itself and behind a frozen encoder) adds no loss (TiTok
            stage 2's zeroed quantizer loss).
        data_preprocessor: an :class:`~vistok.models.data_preprocessors.
            ImagePreprocessor` config or module; default
            :data:`~vistok.models.data_preprocessors.image.
            DEFAULT_IMAGE_PREPROCESSOR` (uint8 RGB → [-1, 1]). Its
            ``to_pixels`` maps outputs back to [0, 255].
        init_cfg: mmengine weight-initialisation config.
    """

    #: children that are not part of the generator (not optimised by the
    #: generator's optimizer, not in the EMA copy)
    NON_GENERATOR_PARTS = ('data_preprocessor', 'reconstruction_losses',
                           'perceptual_losses', 'discriminator',
                           'adversarial_loss', 'ema')
    #: generator parts the EMA copy leaves out (trained, but not used for
    #: inference: e.g. a loss's projector beside a large frozen teacher)
    NON_EMA_PARTS = ()
    #: reconstruction loss when the config gives none
    default_reconstruction_loss = dict(type='L1Loss')
    #: ``train_step`` averages gradients over ranks itself
    syncs_gradients = True
    #: FSDP units (``vistok.engine.fsdp``): transformer blocks, conv stages
    FSDP_BLOCK_TYPES = ('TransformerBlock', 'ResolutionLevel', 'MidBlock')
    #: kept whole under FSDP: codebooks are small and written in the forward
    #: pass (k-means initialisation, restarts, EMA codebooks)
    FSDP_REPLICATED = ('quantizer', )

    def __init__(self,
                 *,
                 reconstruction_loss: Optional[LossCfg] = None,
                 perceptual_loss: Optional[LossCfg] = None,
                 discriminator: Optional[PartCfg] = None,
                 adversarial_loss: Optional[PartCfg] = None,
                 last_layer: Optional[str] = None,
                 ema: Optional[dict] = None,
                 max_nonfinite_skips: int = 10,
                 frozen_parts: Sequence[str] = (),
                 data_preprocessor: Optional[PartCfg] = None,
                 init_cfg: Optional[Union[dict, List[dict]]] = None,
                 **network):
        super().__init__(
            data_preprocessor=MODELS.build_or_take(
                image_preprocessor_cfg(data_preprocessor)),
            init_cfg=init_cfg)
        if not callable(getattr(self.data_preprocessor, 'to_pixels', None)):
            raise TypeError(
                f'model.data_preprocessor must map outputs back to pixels '
                f'(a to_pixels method, e.g. ImagePreprocessor), got '
                f'{type(self.data_preprocessor).__name__}')
        try:
            inspect.signature(self.build_network).bind(**network)
        except TypeError as err:
            raise TypeError(
                f'model ({type(self).__name__}): {err}; the network keys '
                f'are those of {type(self).__name__}.build_network, the '
                f'training keys those of BaseTokenizer') from None
        self.build_network(**network)

        self.reconstruction_losses, recon_keys = build_losses(
            reconstruction_loss or dict(self.default_reconstruction_loss),
            'model.reconstruction_loss')
        self.perceptual_losses, perceptual_keys = build_losses(
            perceptual_loss, 'model.perceptual_loss')
        self._loss_keys = recon_keys + perceptual_keys
        names = [loss.loss_name for loss in self.nll_losses()]
        if len(set(names)) != len(names):
            raise ValueError(f'reconstruction and perceptual losses need '
                             f'distinct loss_name values, got {names}')

        if (discriminator is None) != (adversarial_loss is None):
            raise ValueError('model.discriminator and model.adversarial_loss '
                             'must be given together')
        if discriminator is not None and not self.trains_on_pixels:
            raise ValueError(f'model.discriminator needs a model trained on '
                             f'pixels; this {type(self).__name__} is not '
                             f'(see its trains_on_pixels)')
        self.discriminator = DISCRIMINATORS.build_or_take(discriminator)
        self.adversarial_loss = LOSSES.build_or_take(adversarial_loss)
        self.last_layer = last_layer or self.default_last_layer()
        if self.discriminator is not None:
            try:
                self.get_parameter(self.last_layer)
            except AttributeError as err:
                raise ValueError(f'model.last_layer={self.last_layer!r} is '
                                 f'not a parameter of the model') from err

        trainable = sorted(self.generator_parts())
        unknown = set(frozen_parts) - set(trainable)
        if unknown:
            raise ValueError(
                f'model.frozen_parts {sorted(unknown)} are not generator '
                f'parts of the model: {trainable}')
        self.frozen_parts = tuple(frozen_parts)
        for name in self.frozen_parts:
            getattr(self, name).requires_grad_(False)

        ema = dict(ema or {})
        self.ema_for_val = ema.pop('use_for_val', True)
        self.ema = ModelEMA(self.ema_parts(), **ema) if ema else None
        self.nonfinite_guard = NonFiniteGuard(max_nonfinite_skips)
        self._code_counts: Dict[str, torch.Tensor] = {}

    # --- extension points ------------------------------------------------
    @abstractmethod
    def build_network(self, **network) -> None:
        """Build the network's children from the config's network keywords
        (every keyword the base constructor does not take). Must set
        ``self.quantizer``. Called by ``__init__`` before the training
        parts, since the EMA copies the generator."""

    @abstractmethod
    def encode(self, images: torch.Tensor):
        """Tokens of ``images`` ``(B, C, H, W)`` in [-1, 1]."""

    @abstractmethod
    def decode(self, tokens) -> torch.Tensor:
        """Images ``(B, C, H, W)`` in about [-1, 1] (not clamped) of
        ``tokens``."""

    @abstractmethod
    def reconstruct(self, images: torch.Tensor) -> TokenizerOutput:
        """Full pass on ``images`` ``(B, C, H, W)`` in [-1, 1]; the
        reconstruction must equal ``decode(encode(images))``."""

    def fsdp_gathered_parameters(self) -> List[str]:
        """Parameters read outside their module's forward: under FSDP
        their unit keeps its gathered weights until the backward pass
        (:mod:`vistok.engine.fsdp`). The adaptive GAN weight differentiates
        the losses at ``last_layer``."""
        return [self.last_layer] if self.discriminator is not None else []

    def default_last_layer(self) -> str:
        """The parameter of the adaptive GAN weight when the config names
        none: the last weight of ``self.decoder``."""
        decoder = getattr(self, 'decoder', None)
        weights = [] if decoder is None else [
            name for name, _ in decoder.named_parameters()
            if name.endswith('weight')
        ]
        return f'decoder.{weights[-1]}' if weights else ''

    @property
    def trains_on_pixels(self) -> bool:
        """Whether the generator step reconstructs images (what a
        discriminator needs)."""
        return True

    def init_inference_weights(self) -> None:
        """Fill, from their files, the frozen parts needed at inference
        (checkpoints do not hold frozen parts; ``load_tokenizer`` and
        testing a loaded model call this): by default the tables the
        quantizer and its EMA copy keep out of checkpoints (UniCode's LLM
        codebook with ``external_codebook_in_checkpoint=False``).
        Subclasses extend it with ``super().init_inference_weights()``."""
        for module in self.modules():
            if isinstance(module, BaseQuantizer) and not (
                    module.sub_quantizers()):
                module.init_inference_weights()

    def init_weights(self) -> None:
        """Initialise (and load the pretrained files of) the losses and the
        discriminator before anything else, then every other child in
        order, so a missing weights file fails before iteration 0 with its
        full config key (``model.encoder.weights_path``); then mmengine's
        ``init_cfg``. Subclasses extend it with ``super().init_weights()``.
        """
        owners = list(zip(self._loss_keys, self.nll_losses()))
        if self.discriminator is not None:
            owners.append(('model.discriminator', self.discriminator))
        if not self.init_cfg:  # else mmengine applies it before children
            owners += [(f'model.{name}', child)
                       for name, child in self.named_children()
                       if name not in ('reconstruction_losses',
                                       'perceptual_losses', 'discriminator')]
        for key, part in owners:
            if (hasattr(part, 'init_weights')
                    and not getattr(part, 'is_init', False)):
                try:
                    part.init_weights()
                except MissingWeightsError as err:
                    raise err.with_prefix(key) from None
                part.is_init = True
        super().init_weights()

    # --- parts ----------------------------------------------------------
    def generator_parts(self) -> Dict[str, nn.Module]:
        """The children trained by the generator's optimizer and averaged
        by the EMA: every child not in :attr:`NON_GENERATOR_PARTS` nor in
        ``frozen_parts``."""
        frozen = getattr(self, 'frozen_parts', ())
        return {
            name: module
            for name, module in self.named_children()
            if name not in self.NON_GENERATOR_PARTS and name not in frozen
        }

    def ema_parts(self) -> Dict[str, nn.Module]:
        """The generator parts the EMA copy averages (all but
        :attr:`NON_EMA_PARTS`)."""
        return {
            name: module
            for name, module in self.generator_parts().items()
            if name not in self.NON_EMA_PARTS
        }

    def train(self, mode: bool = True) -> 'BaseTokenizer':
        """Set the training mode; ``frozen_parts`` stay in eval mode."""
        super().train(mode)
        for name in getattr(self, 'frozen_parts', ()):
            getattr(self, name).eval()
        return self

    def optim_parts(self) -> Dict[str, nn.Module]:
        """Parts with their own optimizer (see
        ``MultiPartOptimWrapperConstructor``)."""
        parts = dict(generator=nn.ModuleDict(self.generator_parts()))
        if self.discriminator is not None:
            parts['discriminator'] = self.discriminator
        return parts

    def nll_losses(self) -> List[nn.Module]:
        """Reconstruction then perceptual losses (taming's ``nll``)."""
        return list(self.reconstruction_losses) + list(self.perceptual_losses)

    @property
    def codebook_size(self) -> int:
        return self.quantizer.codebook_size

    @contextlib.contextmanager
    def ema_weights(self, enabled: bool = True) -> Iterator[None]:
        """Run the block on the EMA copy of the generator (if the model
        keeps one and ``enabled``)."""
        if self.ema is None or not enabled:
            yield
        else:
            with self.ema.swapped_into(self):
                yield

    def forward(self,
                inputs: torch.Tensor,
                data_samples: Optional[List[DataSample]] = None,
                mode: str = 'tensor'):
        """Runner entry point; ``inputs`` ``(B, C, H, W)`` in [-1, 1].

        * ``'tensor'``: the :class:`TokenizerOutput`;
        * ``'loss'``: the generator's named losses (see :meth:`loss`);
        * ``'predict'``: list of :class:`DataSample` (see :meth:`predict`).
        """
        if mode == 'tensor':
            return self.reconstruct(inputs)
        if mode == 'loss':
            return self.loss(inputs)
        if mode == 'predict':
            return self.predict(inputs, data_samples)
        raise ValueError(f'mode must be "tensor", "loss" or "predict", '
                         f'got {mode!r}')

    # --- losses ----------------------------------------------------------
    def loss(self, inputs: torch.Tensor,
             iteration: Optional[int] = None) -> LossDict:
        """The generator's named losses (keys with ``'loss'`` are summed by
        mmengine) and detached scalar stats for ``inputs`` in [-1, 1]."""
        return self.generator_losses(inputs, iteration)[0]

    def generator_losses(self, inputs: torch.Tensor,
                         iteration: Optional[int] = None
                         ) -> Tuple[LossDict, Optional[torch.Tensor]]:
        """Named losses / stats of the generator step and the
        reconstruction the discriminator step sees (``None`` when the step
        makes no images: no discriminator allowed then, see
        :attr:`trains_on_pixels`). Default: reconstruction and perceptual
        terms, the quantizer's terms and, once active, the adversarial
        term."""
        if iteration is None:
            iteration = current_iteration()
        out = self.reconstruct(inputs)
        losses = {
            loss.loss_name: loss(out.reconstruction, inputs)
            for loss in self.nll_losses()
        }
        terms = self.quantizer_terms(out.quantizer)
        terms += self.extra_loss_terms(inputs, out, iteration)
        if (self.discriminator is not None
                and self.adversarial_loss.is_active(iteration)):
            nll = sum(losses.values())
            terms.append(self.adversarial_loss.generator_losses(
                self.adversarial_loss.logits(self.discriminator,
                                             out.reconstruction), nll,
                self.get_parameter(self.last_layer)))
        self.merge_terms(losses, terms)
        return losses, out.reconstruction

    def extra_loss_terms(self, inputs: torch.Tensor, out: TokenizerOutput,
                         iteration: int) -> List[LossDict]:
        """Named terms a tokenizer adds to the default generator step (e.g.
        ImageFolder's semantic regularisation), from the images in [-1, 1]
        and the step's :class:`TokenizerOutput`; their names must differ
        from the other terms'. None by default."""
        return []

    def quantizer_terms(self, quantized: QuantizerOutput) -> List[LossDict]:
        """The quantizer's (already weighted) loss terms and its detached
        scalar stats; in training its code counts are accumulated for
        :meth:`pop_code_counts`. With gradients on, terms that do not
        depend on any trainable parameter (a frozen quantizer behind a
        frozen encoder) are left out."""
        if self.training:
            self._accumulate_code_counts(quantized.stats)
        losses = quantized.loss
        if torch.is_grad_enabled():  # constants: nothing trainable feeds them
            losses = {k: v for k, v in losses.items() if v.requires_grad}
        return [losses, {
            name: value.detach()
            for name, value in quantized.stats.items() if value.ndim == 0
        }]

    @staticmethod
    def merge_terms(losses: LossDict, terms: Sequence[LossDict]) -> None:
        """Add ``terms`` to ``losses`` in place; a repeated name is an
        error."""
        for extra in terms:
            clash = losses.keys() & extra.keys()
            if clash:
                raise ValueError(f'duplicate log names {sorted(clash)}')
            losses.update(extra)

    # --- training --------------------------------------------------------
    def train_step(self, data, optim_wrapper) -> LossDict:
        """One generator update and (when adversarial training is active)
        one discriminator update; returns the log variables."""
        data = self.data_preprocessor(data, True)
        inputs = data['inputs']
        iteration = current_iteration()
        if isinstance(optim_wrapper, OptimWrapperDict):
            g_wrapper = optim_wrapper['generator']
            d_wrapper = optim_wrapper.optim_wrappers.get('discriminator')
        else:
            g_wrapper, d_wrapper = optim_wrapper, None
        if (self.discriminator is None) != (d_wrapper is None):
            raise ValueError(
                'a model with a discriminator needs optim_wrapper=dict('
                "constructor='MultiPartOptimWrapperConstructor', "
                'generator=..., discriminator=...); a model without one '
                'takes a single optimizer wrapper')

        if self.discriminator is not None:
            self.discriminator.requires_grad_(False)
        with g_wrapper.optim_context(self):
            losses, reconstruction = self.generator_losses(inputs, iteration)
        log_vars = self._update(g_wrapper, losses, self.generator_parts(),
                                'generator')
        if (self.discriminator is not None
                and self.adversarial_loss.is_active(iteration)):
            self.discriminator.requires_grad_(True)
            with d_wrapper.optim_context(self.discriminator):
                d_losses = self.adversarial_loss.discriminator_losses(
                    self.discriminator, inputs, reconstruction.detach())
            d_log = self._update(d_wrapper, d_losses,
                                 dict(discriminator=self.discriminator),
                                 'discriminator')
            d_log['disc_loss_total'] = d_log.pop('loss')
            log_vars.update(d_log)
        if self.ema is not None:
            self.ema.update_parameters(self.ema_parts(), iteration)
        return log_vars

    def _update(self, optim_wrapper: OptimWrapper, losses: LossDict,
                parts: Dict[str, nn.Module], name: str) -> LossDict:
        total, log_vars = self.parse_losses(losses)
        params = [p for part in parts.values() for p in part.parameters()]
        _, skipped = update_params(optim_wrapper, total, params, losses,
                                   self.nonfinite_guard, name)
        log_vars['nonfinite_skips'] = torch.tensor(float(skipped))
        return log_vars

    def _accumulate_code_counts(self, stats: LossDict) -> None:
        suffix = 'code_counts'
        for key, counts in stats.items():
            if key.endswith(suffix):
                prefix = key[:-len(suffix)]
                counts = counts.detach()
                if prefix in self._code_counts:
                    self._code_counts[prefix] = self._code_counts[prefix] + \
                        counts
                else:
                    self._code_counts[prefix] = counts.clone()

    def pop_code_counts(self) -> Dict[str, torch.Tensor]:
        """Per-level code histograms ``(K,)`` (keys: the quantizer's stats
        prefixes, ``''`` for one level) summed over the training iterations
        since the last call; resets them. Read by ``CodebookUsageHook``."""
        counts, self._code_counts = self._code_counts, {}
        return counts

    # --- inference -------------------------------------------------------
    def to_pixels(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` model-space images → pixels in [0, 255] (the
        data preprocessor's inverse, clamped)."""
        return self.data_preprocessor.to_pixels(images)

    @torch.no_grad()
    def predict(
            self,
            inputs: torch.Tensor,
            data_samples: Optional[List[DataSample]] = None
    ) -> List[DataSample]:
        """One :class:`DataSample` per image with ``pred_img`` and ``gt_img``
        (float ``(C, H, W)`` in ``[0, 255]``), ``tokens`` (the image's token
        sequence ``(L,)`` in the quantizer's joint vocabulary, see
        :func:`~vistok.models.quantizers.base.flat_tokens`) and metainfo
        ``codebook_size``. Runs on the EMA weights when configured
        (``ema.use_for_val``). Incoming ``data_samples`` are filled in
        place, so their metainfo is kept."""
        with self.ema_weights(self.ema_for_val):
            out = self.reconstruct(inputs)
        pred_imgs = self.to_pixels(out.reconstruction)
        gt_imgs = self.to_pixels(inputs)
        tokens = flat_tokens(self.quantizer, out.quantizer.indices)
        levels = token_levels(self.quantizer, out.quantizer.indices)
        sizes = {prefix: size for prefix, (_, size) in levels.items()}
        if data_samples is None:
            data_samples = [DataSample() for _ in range(inputs.shape[0])]
        for i, sample in enumerate(data_samples):
            sample.set_metainfo(dict(codebook_size=self.codebook_size,
                                     level_codebook_sizes=sizes))
            sample.pred_img = pred_imgs[i]
            sample.gt_img = gt_imgs[i]
            sample.tokens = tokens[i]
            sample.token_levels = {
                prefix: level[i]
                for prefix, (level, _) in levels.items()
            }
        return data_samples
