"""Encoder → quantizer → decoder image tokenizer: VQ-VAE (van den Oord et al.
2017) and, with a discriminator, VQGAN (Esser et al. 2021)."""
import contextlib
import copy
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from mmengine.logging import MessageHub
from mmengine.model import BaseModel
from mmengine.optim import OptimWrapper, OptimWrapperDict

from vistok.models.utils.optimizer_step import NonFiniteGuard, update_params
from vistok.models.utils.ema import ModelEMA
from vistok.models.quantizers.base import flat_tokens, token_levels
from vistok.registry import (BACKBONES, DISCRIMINATORS, LOSSES, MODELS,
                             QUANTIZERS)
from vistok.structures import DataSample, QuantizerOutput, TokenizerOutput
from vistok.utils.weights import MissingWeightsError

#: maps CHW uint8 RGB images in [0, 255] to [-1, 1]
DEFAULT_DATA_PREPROCESSOR = dict(
    type='ImgDataPreprocessor', mean=[127.5] * 3, std=[127.5] * 3)
#: value range of ``pred_img`` / ``gt_img`` in ``predict`` mode
PIXEL_MAX = 255.0

PartCfg = Union[dict, nn.Module]
LossCfg = Union[PartCfg, Sequence[PartCfg]]


def build_part(registry, part: PartCfg) -> nn.Module:
    """Build a part from its config, or take an already built module."""
    return part if isinstance(part, nn.Module) else registry.build(part)


def build_losses(cfgs: Optional[LossCfg], key: str
                  ) -> Tuple[nn.ModuleList, List[str]]:
    """A ModuleList of LOSSES and the config key of each (for errors)."""
    if cfgs is None:
        return nn.ModuleList(), []
    if isinstance(cfgs, (dict, nn.Module)):
        return nn.ModuleList([build_part(LOSSES, cfgs)]), [key]
    return (nn.ModuleList(build_part(LOSSES, cfg) for cfg in cfgs),
            [f'{key}[{i}]' for i in range(len(cfgs))])


def current_iteration() -> int:
    """The Runner's current training iteration (its message hub's
    ``'iter'``; 0 outside a Runner)."""
    return int(MessageHub.get_current_instance().get_info('iter', 0))


@MODELS.register_module()
class AutoencoderTokenizer(BaseModel):
    """An image tokenizer: ``x (B, C, H, W)`` in [-1, 1] → ``encoder`` →
    ``quant_conv`` (1×1) → ``quantizer`` → ``post_quant_conv`` (1×1) →
    ``decoder`` → reconstruction ``(B, C, H, W)``; the tokens are the
    quantizer indices (``(B, h, w)`` for plain VQ).

    The generator loss is VQ-VAE eq. 3 — reconstruction terms plus the
    quantizer's (already weighted) codebook / commitment / entropy terms —
    plus perceptual terms and, with a ``discriminator``, VQGAN's adversarial
    term (eq. 6-7, see :class:`~vistok.models.losses.AdversarialLoss`).

    Training (``train_step``): without a discriminator, one optimizer over
    the generator. With one, an ``OptimWrapperDict`` with ``generator`` and
    ``discriminator`` wrappers (build it with
    ``constructor='MultiPartOptimWrapperConstructor'``); each iteration
    updates the generator (the discriminator frozen), then — from the
    adversarial start iteration on — the discriminator on real images and
    the detached reconstructions. Gradients are averaged over ranks by the
    step itself (``syncs_gradients``), non-finite losses are skipped and
    counted (:class:`~vistok.engine.optimizers.NonFiniteGuard`), and the EMA
    copy is updated after the steps. Every term is logged under its name
    (the discriminator's total as ``disc_loss_total``).

    Args:
        encoder: BACKBONES config (or module) exposing ``out_channels``.
        quantizer: QUANTIZERS config (or module) exposing ``in_channels``.
        decoder: BACKBONES config (or module) exposing ``in_channels``.
        reconstruction_loss: a LOSSES config or a list of them (pixel
            losses); each is logged under its ``loss_name``. Default L1.
        perceptual_loss: a LOSSES config or a list (LPIPS, timm-feature
            loss), called as ``loss(reconstruction, images)``. Together with
            the reconstruction terms they form taming's ``nll`` loss.
        discriminator: DISCRIMINATORS config; enables adversarial training.
        adversarial_loss: ``AdversarialLoss`` config (required with a
            discriminator): GAN objective, fixed or adaptive weight, start
            iteration, LeCam, R1.
        last_layer: name of the parameter the adaptive GAN weight is
            computed at (taming: the decoder's last conv).
        ema: ``dict(decay=..., interval=1, start_iter=0, use_for_val=True)``
            keeps a :class:`~vistok.models.utils.ema.ModelEMA` of the generator
            parts inside the model; with ``use_for_val`` validation and
            testing (``predict``) run on the EMA weights.
        max_nonfinite_skips: abort once more updates than this had a
            non-finite loss.
        use_quant_conv: 1×1 conv from the encoder's ``out_channels`` to the
            quantizer's ``in_channels`` (taming's ``quant_conv``). Without it
            the two must be equal.
        use_post_quant_conv: 1×1 conv from the quantizer's ``in_channels`` to
            the decoder's ``in_channels`` (taming's ``post_quant_conv``).
        frozen_parts: names of children (e.g. ``('encoder', 'quantizer')``
            for decoder fine-tuning, TiTok stage 2) that are not trained:
            no gradients, always in eval mode, outside the optimizer and the
            EMA copy. A quantizer whose loss terms no trainable part feeds
            (frozen itself and behind a frozen encoder) adds no loss (TiTok
            stage 2's zeroed quantizer loss).
        data_preprocessor: defaults to :data:`DEFAULT_DATA_PREPROCESSOR`
            (stacks CHW uint8 RGB images and maps them to [-1, 1]).
        init_cfg: mmengine weight-initialisation config.
    """

    #: children that are not part of the generator (not optimised by the
    #: generator's optimizer, not in the EMA copy)
    NON_GENERATOR_PARTS = ('data_preprocessor', 'reconstruction_losses',
                           'perceptual_losses', 'discriminator',
                           'adversarial_loss', 'ema')
    #: ``train_step`` averages gradients over ranks itself
    syncs_gradients = True

    def __init__(self,
                 encoder: PartCfg,
                 quantizer: PartCfg,
                 decoder: PartCfg,
                 reconstruction_loss: Optional[LossCfg] = None,
                 perceptual_loss: Optional[LossCfg] = None,
                 discriminator: Optional[PartCfg] = None,
                 adversarial_loss: Optional[PartCfg] = None,
                 last_layer: str = 'decoder.conv_out.weight',
                 ema: Optional[dict] = None,
                 max_nonfinite_skips: int = 10,
                 use_quant_conv: bool = True,
                 use_post_quant_conv: bool = True,
                 frozen_parts: Sequence[str] = (),
                 data_preprocessor: Optional[PartCfg] = None,
                 init_cfg: Optional[Union[dict, List[dict]]] = None):
        if data_preprocessor is None:
            data_preprocessor = copy.deepcopy(DEFAULT_DATA_PREPROCESSOR)
        super().__init__(
            data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.encoder = build_part(BACKBONES, encoder)
        self.quantizer = build_part(QUANTIZERS, quantizer)
        self.decoder = build_part(BACKBONES, decoder)
        self.quant_conv = self._channel_adapter(
            use_quant_conv, self.encoder.out_channels,
            self.quantizer.in_channels, 'encoder.out_channels',
            'quantizer.in_channels')
        self.post_quant_conv = self._channel_adapter(
            use_post_quant_conv, self.quantizer.in_channels,
            self.decoder.in_channels, 'quantizer.in_channels',
            'decoder.in_channels')

        self.build_training_parts(reconstruction_loss or dict(type='L1Loss'),
                                  perceptual_loss, discriminator,
                                  adversarial_loss, last_layer, ema,
                                  max_nonfinite_skips, frozen_parts)

    @staticmethod
    def _channel_adapter(enabled: bool, in_channels: int, out_channels: int,
                         in_name: str, out_name: str) -> nn.Module:
        if enabled:
            return nn.Conv2d(in_channels, out_channels, 1)
        if in_channels != out_channels:
            raise ValueError(
                f'{in_name}={in_channels} differs from {out_name}='
                f'{out_channels}: enable the 1x1 conv between them or make '
                f'them equal')
        return nn.Identity()

    def build_training_parts(self, reconstruction_loss: LossCfg,
                             perceptual_loss: Optional[LossCfg],
                             discriminator: Optional[PartCfg],
                             adversarial_loss: Optional[PartCfg],
                             last_layer: str, ema: Optional[dict],
                             max_nonfinite_skips: int,
                             frozen_parts: Sequence[str] = ()) -> None:
        """Losses, discriminator, frozen parts, EMA copy and non-finite
        guard (the constructor arguments of the same names). Called at the
        end of ``__init__`` — by subclasses too, once their network exists —
        since the EMA copies the generator parts."""
        self.reconstruction_losses, recon_keys = build_losses(
            reconstruction_loss, 'model.reconstruction_loss')
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
        self.discriminator = (None if discriminator is None else
                              build_part(DISCRIMINATORS, discriminator))
        self.adversarial_loss = (None if adversarial_loss is None else
                                 build_part(LOSSES, adversarial_loss))
        self.last_layer = last_layer
        if self.discriminator is not None:
            try:
                self.get_parameter(last_layer)
            except AttributeError as err:
                raise ValueError(f'model.last_layer={last_layer!r} is not a '
                                 f'parameter of the model') from err

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
        self.ema = ModelEMA(self.generator_parts(), **ema) if ema else None
        self.nonfinite_guard = NonFiniteGuard(max_nonfinite_skips)
        self._code_counts: Dict[str, torch.Tensor] = {}

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

    def train(self, mode: bool = True) -> 'AutoencoderTokenizer':
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

    def init_weights(self) -> None:
        """Initialise (and load the pretrained files of) the losses and the
        discriminator before anything else, so a missing weights file fails
        before iteration 0 with its full config key."""
        owners = list(zip(self._loss_keys, self.nll_losses()))
        if self.discriminator is not None:
            owners.append(('model.discriminator', self.discriminator))
        for key, part in owners:
            if hasattr(part, 'init_weights'):
                try:
                    part.init_weights()
                except MissingWeightsError as err:
                    raise err.with_prefix(key) from None
                part.is_init = True
        super().init_weights()

    @property
    def codebook_size(self) -> int:
        return self.quantizer.codebook_size

    # --- tokenizer API ---------------------------------------------------
    def encode(self, images: torch.Tensor):
        """Tokens (the quantizer's indices; ``(B, h, w)`` for plain VQ) of
        ``images`` ``(B, C, H, W)`` in [-1, 1]."""
        return self.quantizer.encode(self.quant_conv(self.encoder(images)))

    def decode(self, tokens) -> torch.Tensor:
        """Images ``(B, C, H, W)`` in about [-1, 1] (not clamped) of
        ``tokens``."""
        latent = self.quantizer.decode(tokens)
        return self.decoder(self.post_quant_conv(latent))

    def reconstruct(self, images: torch.Tensor) -> TokenizerOutput:
        """Full pass on ``images`` ``(B, C, H, W)`` in [-1, 1]; ``latent`` is
        the quantizer input ``(B, C_q, h, w)``."""
        latent = self.quant_conv(self.encoder(images))
        quantized = self.quantizer(latent)
        reconstruction = self.decoder(
            self.post_quant_conv(quantized.quantized))
        return TokenizerOutput(
            reconstruction=reconstruction, quantizer=quantized, latent=latent)

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
    def loss(self, inputs: torch.Tensor, iteration: Optional[int] = None
             ) -> Dict[str, torch.Tensor]:
        """The generator's named losses (keys with ``'loss'`` are summed by
        mmengine) and detached scalar stats for ``inputs`` in [-1, 1]."""
        return self._generator_losses(inputs, iteration)[0]

    def _generator_losses(self, inputs: torch.Tensor,
                          iteration: Optional[int] = None
                          ) -> Tuple[Dict[str, torch.Tensor], torch.Tensor]:
        """Named losses / stats and the reconstruction."""
        if iteration is None:
            iteration = current_iteration()
        out = self.reconstruct(inputs)
        losses = {
            loss.loss_name: loss(out.reconstruction, inputs)
            for loss in self.nll_losses()
        }
        terms = self._quantizer_terms(out.quantizer)
        if (self.discriminator is not None
                and self.adversarial_loss.is_active(iteration)):
            nll = sum(losses.values())
            terms.append(self.adversarial_loss.generator_losses(
                self.discriminator(out.reconstruction), nll,
                self.get_parameter(self.last_layer)))
        self._merge_terms(losses, terms)
        return losses, out.reconstruction

    def _quantizer_terms(self, quantized: QuantizerOutput
                         ) -> List[Dict[str, torch.Tensor]]:
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
    def _merge_terms(losses: Dict[str, torch.Tensor],
                     terms: Sequence[Dict[str, torch.Tensor]]) -> None:
        """Add ``terms`` to ``losses`` in place; a repeated name is an
        error."""
        for extra in terms:
            clash = losses.keys() & extra.keys()
            if clash:
                raise ValueError(f'duplicate log names {sorted(clash)}')
            losses.update(extra)

    # --- training --------------------------------------------------------
    def train_step(self, data, optim_wrapper) -> Dict[str, torch.Tensor]:
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
            losses, reconstruction = self._generator_losses(inputs, iteration)
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
            self.ema.update_parameters(self.generator_parts(), iteration)
        return log_vars

    def _update(self, optim_wrapper: OptimWrapper,
                losses: Dict[str, torch.Tensor], parts: Dict[str, nn.Module],
                name: str) -> Dict[str, torch.Tensor]:
        total, log_vars = self.parse_losses(losses)
        params = [p for part in parts.values() for p in part.parameters()]
        _, skipped = update_params(optim_wrapper, total, params, losses,
                                   self.nonfinite_guard, name)
        log_vars['nonfinite_skips'] = torch.tensor(float(skipped))
        return log_vars

    def _accumulate_code_counts(self, stats: Dict[str, torch.Tensor]) -> None:
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
        """Undo the normalisation of an ``ImgDataPreprocessor``
        (``x · std + mean``) on ``(B, C, H, W)`` and clamp to
        ``[0, PIXEL_MAX]``."""
        preprocessor = self.data_preprocessor
        if getattr(preprocessor, '_enable_normalize', False):
            images = images * preprocessor.std + preprocessor.mean
        return images.clamp(0, PIXEL_MAX)

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
