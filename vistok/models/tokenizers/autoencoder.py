"""Encoder → quantizer → decoder image tokenizer (VQ-VAE, van den Oord et al.
2017; the VQGAN layout of Esser et al. 2021 without the GAN)."""
import copy
from typing import Dict, List, Optional, Sequence, Union

import torch
import torch.nn as nn
from mmengine.model import BaseModel

from vistok.models.quantizers.base import flat_tokens
from vistok.registry import BACKBONES, LOSSES, MODELS, QUANTIZERS
from vistok.structures import DataSample, TokenizerOutput

#: maps CHW uint8 RGB images in [0, 255] to [-1, 1]
DEFAULT_DATA_PREPROCESSOR = dict(
    type='ImgDataPreprocessor', mean=[127.5] * 3, std=[127.5] * 3)
#: value range of ``pred_img`` / ``gt_img`` in ``predict`` mode
PIXEL_MAX = 255.0

PartCfg = Union[dict, nn.Module]
LossCfg = Union[PartCfg, Sequence[PartCfg]]


def _build(registry, part: PartCfg) -> nn.Module:
    """Build a part from its config, or take an already built module."""
    return part if isinstance(part, nn.Module) else registry.build(part)


@MODELS.register_module()
class AutoencoderTokenizer(BaseModel):
    """An image tokenizer trained with reconstruction + quantizer losses.

    ``x (B, C, H, W)`` in [-1, 1] → ``encoder`` → ``quant_conv`` (1×1) →
    ``quantizer`` → ``post_quant_conv`` (1×1) → ``decoder`` → reconstruction
    ``(B, C, H, W)``; the tokens are the quantizer indices ``(B, h, w)``.
    The total loss is VQ-VAE eq. 3: the reconstruction terms plus the
    quantizer's (already weighted) codebook / commitment terms.

    Training uses mmengine's default ``BaseModel.train_step`` (one optimizer).

    Args:
        encoder: BACKBONES config (or module) exposing ``out_channels``.
        quantizer: QUANTIZERS config (or module) exposing ``in_channels``.
        decoder: BACKBONES config (or module) exposing ``in_channels``.
        reconstruction_loss: a LOSSES config or a list of them; each is
            logged under its ``loss_name``. Defaults to ``L1Loss``.
        use_quant_conv: 1×1 conv from the encoder's ``out_channels`` to the
            quantizer's ``in_channels`` (taming's ``quant_conv``). Without it
            the two must be equal.
        use_post_quant_conv: 1×1 conv from the quantizer's ``in_channels`` to
            the decoder's ``in_channels`` (taming's ``post_quant_conv``).
            Without it the two must be equal.
        data_preprocessor: defaults to :data:`DEFAULT_DATA_PREPROCESSOR`
            (stacks CHW uint8 RGB images and maps them to [-1, 1]).
        init_cfg: mmengine weight-initialisation config.
    """

    def __init__(self,
                 encoder: PartCfg,
                 quantizer: PartCfg,
                 decoder: PartCfg,
                 reconstruction_loss: Optional[LossCfg] = None,
                 use_quant_conv: bool = True,
                 use_post_quant_conv: bool = True,
                 data_preprocessor: Optional[PartCfg] = None,
                 init_cfg: Optional[Union[dict, List[dict]]] = None):
        if data_preprocessor is None:
            data_preprocessor = copy.deepcopy(DEFAULT_DATA_PREPROCESSOR)
        super().__init__(
            data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.encoder = _build(BACKBONES, encoder)
        self.quantizer = _build(QUANTIZERS, quantizer)
        self.decoder = _build(BACKBONES, decoder)
        self.quant_conv = self._channel_adapter(
            use_quant_conv, self.encoder.out_channels,
            self.quantizer.in_channels, 'encoder.out_channels',
            'quantizer.in_channels')
        self.post_quant_conv = self._channel_adapter(
            use_post_quant_conv, self.quantizer.in_channels,
            self.decoder.in_channels, 'quantizer.in_channels',
            'decoder.in_channels')

        if reconstruction_loss is None:
            reconstruction_loss = dict(type='L1Loss')
        if isinstance(reconstruction_loss, (dict, nn.Module)):
            reconstruction_loss = [reconstruction_loss]
        self.reconstruction_losses = nn.ModuleList(
            _build(LOSSES, cfg) for cfg in reconstruction_loss)
        names = [loss.loss_name for loss in self.reconstruction_losses]
        if len(set(names)) != len(names):
            raise ValueError(f'reconstruction losses need distinct '
                             f'loss_name values, got {names}')

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

    @property
    def codebook_size(self) -> int:
        return self.quantizer.codebook_size

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Tokens ``(B, h, w)`` of ``images`` ``(B, C, H, W)`` in [-1, 1]."""
        return self.quantizer.encode(self.quant_conv(self.encoder(images)))

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, H, W)`` in about [-1, 1] (not clamped) of
        ``tokens`` ``(B, h, w)``."""
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

    def forward(self,
                inputs: torch.Tensor,
                data_samples: Optional[List[DataSample]] = None,
                mode: str = 'tensor'):
        """Runner entry point; ``inputs`` ``(B, C, H, W)`` in [-1, 1].

        * ``'tensor'``: the :class:`TokenizerOutput`;
        * ``'loss'``: dict of named losses (reconstruction terms and the
          quantizer's terms) plus the quantizer's scalar stats (e.g.
          ``perplexity``) for logging;
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

    def loss(self, inputs: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Named losses for ``inputs`` ``(B, C, H, W)`` in [-1, 1] (keys with
        ``'loss'`` are summed by mmengine) and detached scalar stats."""
        out = self.reconstruct(inputs)
        losses = {
            loss.loss_name: loss(out.reconstruction, inputs)
            for loss in self.reconstruction_losses
        }
        scalar_stats = {
            name: value.detach()
            for name, value in out.quantizer.stats.items() if value.ndim == 0
        }
        for terms in (out.quantizer.loss, scalar_stats):
            clash = losses.keys() & terms.keys()
            if clash:
                raise ValueError(f'duplicate log names {sorted(clash)}')
            losses.update(terms)
        return losses

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
        ``codebook_size``. Incoming ``data_samples`` are filled in
        place, so their metainfo is kept."""
        out = self.reconstruct(inputs)
        pred_imgs = self.to_pixels(out.reconstruction)
        gt_imgs = self.to_pixels(inputs)
        tokens = flat_tokens(self.quantizer, out.quantizer.indices)
        if data_samples is None:
            data_samples = [DataSample() for _ in range(inputs.shape[0])]
        for i, sample in enumerate(data_samples):
            sample.set_metainfo(dict(codebook_size=self.codebook_size))
            sample.pred_img = pred_imgs[i]
            sample.gt_img = gt_imgs[i]
            sample.tokens = tokens[i]
        return data_samples
