"""Vector quantization with a learned codebook (VQ-VAE, van den Oord et al.
2017, "Neural Discrete Representation Learning").

One class with keyword options; later tricks of the VQ family (EMA updates,
dead-code restart, k-means init, rotation trick, codebook mixing) are added
here as further options.
"""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from vistok.registry import QUANTIZERS
from vistok.structures import QuantizerOutput
from .base import (BaseQuantizer, flatten_channels_last,
                   perplexity_from_counts, straight_through,
                   unflatten_channels_first)


@QUANTIZERS.register_module()
class VectorQuantizer(BaseQuantizer):
    """Nearest-neighbour vector quantizer.

    Every position of ``z`` ``(B, C, *spatial)`` (any spatial rank) is a
    vector of the channel dim; it is replaced by its nearest code

    ``k = argmin_j ‖z - e_j‖² = argmin_j (‖z‖² - 2 z·e_j + ‖e_j‖²)``

    computed with a matmul in fp32 even under autocast. The training
    objective is VQ-VAE eq. 3 without the reconstruction term, each term
    already weighted:

    * ``loss_codebook = codebook_weight · ‖sg[z] - e‖²`` (mean squared),
      moves the codes towards the encoder outputs (left out when the codebook
      is frozen: it would have no gradient);
    * ``loss_commitment = β · ‖z - sg[e]‖²``, keeps the encoder committed.

    Both are computed in the code space, i.e. after the in-projection and
    the l2 normalisation when those are enabled. The straight-through
    estimator (VQ-VAE §3.1) is applied in the code space too, before the
    out-projection, so the in-projection receives the reconstruction
    gradient.

    Args:
        codebook_size: number of codes ``K``.
        embed_dim: dimension ``D`` of a code.
        in_channels: channels ``C`` of the input. ``None`` means ``D``;
            otherwise ``C != D`` adds linear projections ``C -> D`` before the
            look-up and ``D -> C`` after it (a low-dimensional code space,
            the "factorized codes" of ViT-VQGAN, Yu et al. 2022).
        use_l2_norm: l2-normalise both ``z`` and the codes before the
            look-up and use the normalised vectors as codes, so the look-up
            is a cosine-similarity argmax ("l2-normalized codes" of
            ViT-VQGAN; used by TiTok, LlamaGen and VAR).
        commitment_weight: ``β`` of VQ-VAE eq. 3.
        codebook_weight: weight of the codebook term of VQ-VAE eq. 3.
        frozen_codebook: keep the codebook fixed (no gradient, no
            ``loss_codebook``).
    """

    def __init__(self,
                 codebook_size: int,
                 embed_dim: int,
                 in_channels: Optional[int] = None,
                 use_l2_norm: bool = False,
                 commitment_weight: float = 0.25,
                 codebook_weight: float = 1.0,
                 frozen_codebook: bool = False):
        super().__init__(embed_dim if in_channels is None else in_channels)
        self.embed_dim = embed_dim
        self.use_l2_norm = use_l2_norm
        self.commitment_weight = commitment_weight
        self.codebook_weight = codebook_weight
        self.frozen_codebook = frozen_codebook

        # VQGAN's initialisation (Esser et al. 2021): U(-1/K, 1/K).
        self.codebook = nn.Parameter(
            torch.empty(codebook_size, embed_dim).uniform_(
                -1.0 / codebook_size, 1.0 / codebook_size),
            requires_grad=not frozen_codebook)

        if self.in_channels != embed_dim:
            self.project_in = nn.Linear(self.in_channels, embed_dim)
            self.project_out = nn.Linear(embed_dim, self.in_channels)
        else:
            self.project_in = nn.Identity()
            self.project_out = nn.Identity()

    @property
    def codebook_size(self) -> int:
        return self.codebook.shape[0]

    def code_vectors(self) -> torch.Tensor:
        """The codes as they are looked up, ``(K, D)`` fp32 (unit-norm with
        ``use_l2_norm``)."""
        with torch.autocast(self.codebook.device.type, enabled=False):
            codes = self.codebook.float()
            return F.normalize(codes, dim=-1) if self.use_l2_norm else codes

    def _to_code_space(self, z: torch.Tensor):
        """``(B, C, *spatial)`` -> fp32 code-space vectors ``(N, D)`` and the
        index shape ``(B, *spatial)``."""
        flat, index_shape = flatten_channels_last(z)
        flat = self.project_in(flat)
        with torch.autocast(flat.device.type, enabled=False):
            flat = flat.float()
            if self.use_l2_norm:
                flat = F.normalize(flat, dim=-1)
        return flat, index_shape

    def _from_code_space(self, flat: torch.Tensor,
                         index_shape: torch.Size) -> torch.Tensor:
        """Code-space vectors ``(N, D)`` -> ``(B, C, *spatial)``."""
        return unflatten_channels_first(self.project_out(flat), index_shape)

    @staticmethod
    def _nearest(flat: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code for each row of ``flat`` ``(N, D)``; the
        squared Euclidean distance is expanded as ``‖z‖² - 2 z·e + ‖e‖²``
        (a matmul, no ``cdist``) and computed in fp32."""
        with torch.autocast(flat.device.type, enabled=False):
            flat, codes = flat.float(), codes.float()
            distances = (flat.pow(2).sum(-1, keepdim=True) -
                         2 * flat @ codes.t() + codes.pow(2).sum(-1))
            return distances.argmin(-1)

    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """Indices ``(B, *spatial)`` of ``z`` ``(B, C, *spatial)``."""
        flat, index_shape = self._to_code_space(z)
        return self._nearest(flat, self.code_vectors()).reshape(index_shape)

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """Quantized latents ``(B, C, *spatial)`` of ``indices``
        ``(B, *spatial)``."""
        codes = self.code_vectors()[indices.reshape(-1)]
        return self._from_code_space(codes, indices.shape)

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        """Quantize ``z`` ``(B, C, *spatial)``; see the class docstring."""
        flat, index_shape = self._to_code_space(z)
        codes = self.code_vectors()
        indices = self._nearest(flat, codes)
        q = codes[indices]

        loss = dict(loss_commitment=self.commitment_weight *
                    F.mse_loss(flat, q.detach()))
        if not self.frozen_codebook:
            loss['loss_codebook'] = self.codebook_weight * F.mse_loss(
                q, flat.detach())

        code_counts = torch.bincount(indices, minlength=self.codebook_size)
        stats = dict(
            code_counts=code_counts,
            perplexity=perplexity_from_counts(code_counts))

        quantized = self._from_code_space(
            straight_through(flat, q), index_shape)
        return QuantizerOutput(
            quantized=quantized,
            indices=indices.reshape(index_shape),
            loss=loss,
            stats=stats)
