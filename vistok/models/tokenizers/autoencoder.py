"""Encoder → quantizer → decoder image tokenizer: VQ-VAE (van den Oord et al.
2017) and, with a discriminator, VQGAN (Esser et al. 2021)."""
import torch
import torch.nn as nn

from vistok.registry import BACKBONES, MODELS, QUANTIZERS
from vistok.structures import TokenizerOutput
from .base import BaseTokenizer, PartCfg


def channel_adapter(enabled: bool, in_channels: int, out_channels: int,
                    in_name: str, out_name: str,
                    kernel_size: int = 1) -> nn.Module:
    """A ``kernel_size`` conv (odd; padded to keep the spatial size) from
    ``in_channels`` to ``out_channels`` when ``enabled``, else an identity
    (the two must then be equal; the error names the config keys)."""
    if enabled:
        return nn.Conv2d(in_channels, out_channels, kernel_size,
                         padding=kernel_size // 2)
    if in_channels != out_channels:
        raise ValueError(
            f'{in_name}={in_channels} differs from {out_name}='
            f'{out_channels}: enable the 1x1 conv between them or make '
            f'them equal')
    return nn.Identity()


@MODELS.register_module()
class AutoencoderTokenizer(BaseTokenizer):
    """An image tokenizer: ``x (B, C, H, W)`` in [-1, 1] → ``encoder`` →
    ``quant_conv`` (1×1 by default) → ``quantizer`` → ``post_quant_conv``
    (1×1 by default) → ``decoder`` → reconstruction ``(B, C, H, W)``; the
    tokens are the quantizer indices (``(B, h, w)`` for plain VQ).

    The network is this class's; training (losses, discriminator, EMA,
    frozen parts, ``train_step``) and evaluation (``predict``) are
    :class:`~vistok.models.tokenizers.base.BaseTokenizer`'s, whose keyword
    arguments it takes too (default reconstruction loss: L1; adaptive GAN
    weight at ``decoder.conv_out.weight``, taming's last layer).

    Network args (:meth:`build_network`):
        encoder: BACKBONES config (or module) exposing ``out_channels``.
        quantizer: QUANTIZERS config (or module) exposing ``in_channels``
            and ``out_channels`` (every ``BaseQuantizer``).
        decoder: BACKBONES config (or module) exposing ``in_channels``.
        use_quant_conv: a conv (1×1 by default) from the encoder's
            ``out_channels`` to the quantizer's ``in_channels`` (taming's
            ``quant_conv``). Without it the two must be equal.
        use_post_quant_conv: a conv (1×1 by default) from the quantizer's
            ``out_channels`` (its ``in_channels`` except for a quantizer
            that changes them, e.g. ``HierarchicalQuantizer(combine=
            'concat')``: ``2·C``) to the decoder's ``in_channels`` (taming's
            ``post_quant_conv``).
        quant_conv_kernel_size: odd kernel size of ``quant_conv`` and
            ``post_quant_conv`` (padding ``k // 2`` keeps the grid): 1 in
            taming, 3 in VAR's ``VQVAE`` (``quant_conv_ks=3``,
            ``models/vqvae.py``).
    """

    def build_network(self,
                      encoder: PartCfg,
                      quantizer: PartCfg,
                      decoder: PartCfg,
                      use_quant_conv: bool = True,
                      use_post_quant_conv: bool = True,
                      quant_conv_kernel_size: int = 1) -> None:
        if (not isinstance(quant_conv_kernel_size, int)
                or quant_conv_kernel_size < 1
                or quant_conv_kernel_size % 2 == 0):
            raise ValueError(
                f'quant_conv_kernel_size must be an odd positive integer '
                f'(the conv keeps the grid size), got '
                f'{quant_conv_kernel_size!r}')
        if quant_conv_kernel_size != 1 and not (use_quant_conv
                                                or use_post_quant_conv):
            raise ValueError(
                f'quant_conv_kernel_size={quant_conv_kernel_size} has no '
                f'effect: use_quant_conv and use_post_quant_conv are both '
                f'False')
        self.encoder = BACKBONES.build_or_take(encoder)
        self.quantizer = QUANTIZERS.build_or_take(quantizer)
        self.decoder = BACKBONES.build_or_take(decoder)
        self.quant_conv = channel_adapter(
            use_quant_conv, self.encoder.out_channels,
            self.quantizer.in_channels, 'encoder.out_channels',
            'quantizer.in_channels', quant_conv_kernel_size)
        self.post_quant_conv = channel_adapter(
            use_post_quant_conv, self.quantizer.out_channels,
            self.decoder.in_channels, 'quantizer.out_channels',
            'decoder.in_channels', quant_conv_kernel_size)

    def default_last_layer(self) -> str:
        """taming's: the decoder's last conv."""
        return 'decoder.conv_out.weight'

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
