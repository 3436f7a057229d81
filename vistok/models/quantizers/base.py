"""The quantizer interface (DESIGN §6) and the math every quantizer shares.

A quantizer maps a channel-first latent ``z`` of shape ``(B, C, *spatial)``
(any spatial rank: ``(B, C, H, W)`` images, ``(B, C, D, H, W)`` volumes,
``(B, C, N)`` token sequences) to discrete indices ``(B, *spatial)`` and back.
"""
from abc import ABCMeta, abstractmethod
from typing import Tuple

import torch
import torch.nn as nn

from vistok.structures import QuantizerOutput


def flatten_channels_last(z: torch.Tensor) -> Tuple[torch.Tensor, torch.Size]:
    """Move channels last and flatten every other axis.

    Args:
        z: ``(B, C, *spatial)``.

    Returns:
        ``(flat, index_shape)``: ``flat`` is ``(B * prod(spatial), C)`` and
        ``index_shape`` is ``(B, *spatial)``, the shape of the indices.
    """
    channels_last = z.movedim(1, -1)
    return channels_last.reshape(-1, z.shape[1]), channels_last.shape[:-1]


def unflatten_channels_first(flat: torch.Tensor,
                             index_shape: torch.Size) -> torch.Tensor:
    """Inverse of :func:`flatten_channels_last`: ``(N, C)`` vectors and the
    index shape ``(B, *spatial)`` give a contiguous ``(B, C, *spatial)``."""
    return flat.reshape(*index_shape, flat.shape[-1]).movedim(-1,
                                                              1).contiguous()


def straight_through(z: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Straight-through estimator of VQ-VAE (van den Oord et al. 2017, §3.1):
    ``sg[q] + (z - sg[z])``.

    The forward value is ``q`` bit for bit (``z - z.detach()`` is exactly
    zero, unlike ``z + (q - z).detach()``); the backward pass copies the
    gradient of the output to ``z`` only. ``q`` enters as a constant, so a
    codebook learns from its own loss term, not from the decoder.
    """
    return q.detach() + (z - z.detach())


def usage_stats(counts: torch.Tensor, prefix: str = '') -> dict:
    """The one place codebook usage statistics are computed.

    From a code histogram ``counts`` ``(K,)`` (fp32 math, detached):
    ``code_counts`` (the histogram), ``usage`` (fraction of the ``K`` codes
    used at least once), ``entropy`` (natural log, ``0 log 0 = 0``) and
    ``perplexity = exp(entropy)`` (``K`` for uniform use, 1 for a single
    code). Quantizers with several levels report each level under a prefix,
    e.g. ``'depth0.'``, ``'scale3.'``, ``'branch1.'``.
    """
    counts = counts.detach()
    probs = counts.float() / counts.sum().clamp_min(1)
    # p·log(max(p, tiny)): 0 for p = 0, and ~10x faster than xlogy on sparse
    # histograms (log(0) is slow)
    entropy = -(probs * probs.clamp_min(torch.finfo(probs.dtype).tiny).log()
                ).sum()
    stats = dict(code_counts=counts,
                 usage=(counts > 0).float().mean(),
                 entropy=entropy,
                 perplexity=entropy.exp())
    return {prefix + k: v for k, v in stats.items()}


def perplexity_from_counts(counts: torch.Tensor) -> torch.Tensor:
    """``exp(H(p))`` of the code histogram ``counts`` ``(K,)`` (see
    :func:`usage_stats`)."""
    return usage_stats(counts)['perplexity']


class BaseQuantizer(nn.Module, metaclass=ABCMeta):
    """Interface of every vistok quantizer.

    Contract (DESIGN §6):

    * ``forward(z) -> QuantizerOutput(quantized, indices, loss, stats)`` for
      ``z`` of shape ``(B, C, *spatial)`` with ``C == self.in_channels``.
      ``quantized`` has the shape of ``z`` and is written as the
      straight-through ``q + (z - z.detach())`` (see :func:`straight_through`)
      so that its value is bit-identical to ``decode(indices)``. ``loss``
      holds named, already-weighted terms whose names contain ``'loss'``;
      ``stats`` holds detached usage material (e.g. ``code_counts`` ``(K,)``
      and a scalar ``perplexity``).
    * ``encode(z) -> indices`` of shape ``(B, *spatial)`` (integer codes).
    * ``decode(indices) -> z_q`` of shape ``(B, C, *spatial)``;
      ``decode(encode(z))`` equals ``forward(z).quantized`` exactly.
    * Distance and entropy math runs in fp32 even under autocast.

    Args:
        in_channels: channel count ``C`` of the latents this quantizer takes.
    """

    def __init__(self, in_channels: int):
        super().__init__()
        self.in_channels = in_channels

    @property
    @abstractmethod
    def codebook_size(self) -> int:
        """Number of distinct codes ``K``."""

    @abstractmethod
    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        """Quantize ``z`` ``(B, C, *spatial)``."""

    @abstractmethod
    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """Indices ``(B, *spatial)`` of ``z`` ``(B, C, *spatial)``."""

    @abstractmethod
    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """Quantized latents ``(B, C, *spatial)`` of ``indices``."""


def flat_tokens(quantizer: nn.Module, indices) -> torch.Tensor:
    """A ``(B, L)`` token sequence in the quantizer's joint vocabulary (ids in
    ``[0, quantizer.codebook_size)``, negative for dropped positions) from
    whatever its ``indices`` are: the quantizer's own ``to_sequence``
    (multi-scale, hierarchical), branch offsets (product), or the index tensor
    flattened (raster order, trailing depth axis last)."""
    if hasattr(quantizer, 'to_sequence'):
        return quantizer.to_sequence(indices)
    if hasattr(quantizer, 'offset_indices'):
        indices = quantizer.offset_indices(indices)
    if torch.is_tensor(indices):
        return indices.flatten(1)
    return torch.cat([level.flatten(1) for level in indices], dim=1)
