"""A tokenizer in a plugin: the smallest complete one, written against the
public extension points of :class:`~vistok.models.tokenizers.base.
BaseTokenizer` only (the template for a paper's own tokenizer)."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from vistok.models.tokenizers.base import BaseTokenizer, PartCfg
from vistok.registry import MODELS, QUANTIZERS
from vistok.structures import TokenizerOutput


@MODELS.register_module()
class PatchTokenizer(BaseTokenizer):
    """One token per ``p × p`` patch: pixel-unshuffle (ESPCN, Shi et al.
    2016) → linear map to the quantizer's channels → quantizer → linear map
    back → pixel-shuffle. ``encode(images (B, C, H, W)) -> (B, H/p, W/p)``
    ids (for a plain VQ), ``decode`` the inverse; the training recipe
    (losses, discriminator, EMA, ``predict``) is the base class's.

    Network args (:meth:`build_network`):
        quantizer: QUANTIZERS config or module exposing ``in_channels``.
        patch_size: ``p``; ``H`` and ``W`` must be multiples of it.
        in_channels: image channels.
    """

    def build_network(self,
                      quantizer: PartCfg,
                      patch_size: int = 4,
                      in_channels: int = 3) -> None:
        self.patch_size = patch_size
        self.quantizer = QUANTIZERS.build_or_take(quantizer)
        patch_dim = in_channels * patch_size**2
        self.encoder = nn.Conv2d(patch_dim, self.quantizer.in_channels, 1)
        self.decoder = nn.Conv2d(self.quantizer.in_channels, patch_dim, 1)

    def _latent(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] % self.patch_size or \
                images.shape[-2] % self.patch_size:
            raise ValueError(f'image size {tuple(images.shape[-2:])} is not '
                             f'a multiple of model.patch_size='
                             f'{self.patch_size}')
        return self.encoder(F.pixel_unshuffle(images, self.patch_size))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.quantizer.encode(self._latent(images))

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(self.decoder(self.quantizer.decode(tokens)),
                               self.patch_size)

    def reconstruct(self, images: torch.Tensor) -> TokenizerOutput:
        latent = self._latent(images)
        quantized = self.quantizer(latent)
        reconstruction = F.pixel_shuffle(self.decoder(quantized.quantized),
                                         self.patch_size)
        return TokenizerOutput(reconstruction=reconstruction,
                               quantizer=quantized, latent=latent)
