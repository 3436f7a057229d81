import torch
import torch.nn.functional as F

from vistok.models.quantizers.base import (
    BaseQuantizer,
    flatten_channels_last,
    straight_through,
    unflatten_channels_first,
)
from vistok.registry import QUANTIZERS
from vistok.structures import QuantizerOutput


@QUANTIZERS.register_module()
class RandomProjectionQuantizer(BaseQuantizer):
    """BEST-RQ's random-projection quantizer (Chiu et al. 2022, §3.1),
    extended with a decoder so it satisfies vistok's quantizer contract.

    A frozen random matrix ``P`` (``D x C``, Xavier-normal) projects each
    latent vector; the index is the nearest entry of a frozen random
    l2-normalised codebook ``c_k`` (``K x D``) to ``normalize(P z)``.
    ``decode`` maps a code back with the pseudo-inverse, ``P^+ c_k``. Nothing
    is learned, so ``loss`` is empty.

    Args:
        in_channels: latent channels ``C``; input ``(B, C, *spatial)``.
        codebook_size: ``K``.
        code_dim: ``D``.
        seed: seed of the random projection and codebook.
    """

    def __init__(self, in_channels: int, codebook_size: int, code_dim: int,
                 seed: int = 0):
        super().__init__(in_channels)
        g = torch.Generator().manual_seed(seed)
        std = (2.0 / (in_channels + code_dim))**0.5
        projection = torch.randn(code_dim, in_channels, generator=g) * std
        codebook = F.normalize(torch.randn(codebook_size, code_dim,
                                           generator=g), dim=-1)
        self.register_buffer('projection', projection)
        self.register_buffer('projection_pinv', torch.linalg.pinv(projection))
        self.register_buffer('codebook', codebook)

    @property
    def codebook_size(self) -> int:
        return self.codebook.shape[0]

    def encode(self, z: torch.Tensor) -> torch.Tensor:
        flat, index_shape = flatten_channels_last(z)
        with torch.autocast(device_type=z.device.type, enabled=False):
            projected = F.normalize(flat.float() @ self.projection.T, dim=-1)
            # unit vectors: nearest in l2 == largest dot product
            indices = (projected @ self.codebook.T).argmax(dim=-1)
        return indices.reshape(index_shape)

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        vectors = self.codebook[indices.reshape(-1)] @ self.projection_pinv.T
        return unflatten_channels_first(vectors, indices.shape)

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        indices = self.encode(z)
        q = self.decode(indices).to(z.dtype)
        counts = torch.bincount(indices.reshape(-1),
                                minlength=self.codebook_size)
        return QuantizerOutput(
            quantized=straight_through(z, q), indices=indices,
            stats=dict(code_counts=counts))
