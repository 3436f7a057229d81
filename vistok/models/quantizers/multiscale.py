"""Multi-scale residual quantization (VAR, Tian et al. 2024, "Visual
Autoregressive Modeling", Algorithms 1 and 2; ImageFolder, Li et al. 2025).

A ``(B, C, H, W)`` latent map is explained coarse to fine by ``n`` token maps
of sides ``scales = [s_1, ..., s_n]`` (``s_n = H = W``), all looked up in one
shared codebook. Each scale quantizes what the previous ones left over, so the
first maps already decode to a coarse version of the latent.
"""
import copy
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from vistok.registry import QUANTIZERS
from vistok.structures import QuantizerOutput
from .base import (
    BaseQuantizer,
    check_option_types,
    indices_level,
    straight_through,
    usage_stats,
)
from .vq import VectorQuantizer  # noqa: F401  (registers the default lookup)

#: VAR's tokenizer: vocabulary 4096, 32 channels, plain Euclidean look-up
#: of un-normalised codes (VAR's ``build_vae_var`` leaves
#: ``VectorQuantizer2(using_znorm=False)``, models/quant.py).
DEFAULT_QUANTIZER = dict(type='VectorQuantizer',
                         codebook_size=4096,
                         embed_dim=32,
                         use_l2_norm=False)

#: how quantizer dropout picks the dropped samples (see the class docstring)
DROPOUT_MODES = ('per_sample', 'first_fraction')
#: how ``loss_commitment`` combines the scales (see the class docstring)
COMMITMENT_REDUCTIONS = ('mean', 'sum')

#: indices of the first ``n`` scales: per-scale maps ``[(B, s_i, s_i)]`` or
#: the flat scale-major sequence ``(B, s_1² + ... + s_n²)``.
MultiScaleIndices = Union[List[torch.Tensor], torch.Tensor]


@QUANTIZERS.register_module()
class MultiScaleResidualQuantizer(BaseQuantizer):
    """VAR's multi-scale residual quantizer (VAR Alg. 1 encode, Alg. 2
    decode), with ImageFolder's quantizer dropout.

    **2-D only**: ``z`` is ``(B, C, H, W)`` with ``H == W == scales[-1]``.
    With ``r_1 = z`` and ``f̂_0 = 0``, for scale ``i = 1..n`` (VAR Alg. 1):

    * ``k_i = Q(area_downsample(r_i, s_i))`` — token map ``(B, s_i, s_i)``,
      looked up by the owned per-scale ``quantizer`` (VAR's Euclidean
      look-up by default);
    * ``h_i = Φ_i(bicubic_upsample(decode(k_i), H))``;
    * ``f̂_i = f̂_{i-1} + h_i`` and ``r_{i+1} = r_i - h_i``.

    Interpolation is skipped when a scale already has the grid size (VAR
    skips it at the last scale; an area or bicubic resize to the same size
    is the identity). The output is ``f̂_n`` in the straight-through form
    ``sg[f̂_n] + (z - sg[z])``; :meth:`decode` rebuilds ``f̂`` from the
    indices with the very same operations, so ``forward(z).quantized`` equals
    ``decode(indices)`` bit for bit. All of it runs in fp32 with autocast
    disabled (as VAR's quantizer does), so bf16 autocast does not change the
    indices.

    **Φ** (the ``φ_k`` of VAR Alg. 1, ``quant_resi`` in VAR's code):
    ``Φ(h) = (1 - ρ)·h + ρ·conv(h)`` with a ``phi_kernel_size`` conv,
    ``ρ = phi_ratio`` (0.5 in VAR). ``num_phi`` partially shared convs
    (VAR's ``share_quant_resi``; 4 in VAR and ImageFolder, ``num_phi = n``
    gives one per scale): scale ``i`` (0-based) uses the conv whose tick is
    nearest to ``i / (n - 1)``, with VAR's ticks
    ``linspace(1/(3k), 1 - 1/(3k), k)`` for ``k = 4`` and
    ``linspace(1/(2k), 1 - 1/(2k), k)`` otherwise, computed as VAR's code
    does (ties included) so its scale-to-conv assignment is reproduced.

    **Look-up**: the per-scale quantizer is built from ``quantizer`` and only
    its ``encode`` / ``decode`` are used, so the code added at a scale is
    exactly what it decodes to. The default ``VectorQuantizer(
    use_l2_norm=False)`` is the Euclidean look-up of un-normalised codes of
    VAR's released tokenizer (``using_znorm=False``). ``VectorQuantizer(
    use_l2_norm=True, l2_norm_output=False)`` is the cosine look-up that
    adds the raw codebook row, as ``VectorQuantizer2(using_znorm=True)`` of
    VAR's code and ImageFolder's configs do; ``VectorQuantizer(
    use_l2_norm=True)`` adds the l2-normalised codes instead (magnitudes
    are then carried by Φ and the encoder). Options of the inner quantizer
    that act in its own ``forward`` (its losses, EMA updates, restarts) are
    not used: the codebook learns from ``loss_codebook`` below, and an
    in-projection of the inner quantizer receives no gradient (the look-up
    is discrete), so reduce channels in the encoder instead.

    **Losses** (VAR's ``mean_vq_loss``), averaged over the scales of the
    running reconstructions ``f̂_i``, already weighted:

    * ``loss_codebook = codebook_weight · mean_i ‖f̂_i - sg[z]‖²`` trains the
      codebook and Φ;
    * ``loss_commitment = β · mean_i ‖z - sg[f̂_i]‖²`` with
      ``commitment_reduction='mean'`` (VAR), or ``β · Σ_i ‖z - sg[f̂_i]‖²``
      with ``'sum'`` (ImageFolder's ``quant.py`` adds the per-scale terms
      without dividing by the number of scales, while it averages the
      codebook term).

    Each squared error is over the real positions of the samples that keep
    scale ``i`` (ImageFolder's re-normalisation by the kept ratio). The
    ``'mean'`` terms pool those errors over all scales (sum of squared
    errors / number of kept elements); ``'sum'`` adds the per-scale masked
    means. Without dropout and mask ``'sum'`` is ``n`` × ``'mean'``. (The
    official codebook term is the mean of the per-scale masked means, which
    equals the pooled mean whenever every scale keeps the same elements,
    i.e. without quantizer dropout.)

    **Quantizer dropout** (ImageFolder's "folding"; SoundStream's quantizer
    dropout applied to scales): in training, a dropped sample keeps only its
    first ``m ~ U{start_scale..n}`` scales in ``f̂``. Which samples are
    dropped is ``dropout_mode``: ``'per_sample'`` drops each sample with
    probability ``dropout_ratio`` (the ratio holds for every batch size);
    ``'first_fraction'`` drops the first ``int(dropout_ratio·B)`` samples of
    the batch (ImageFolder's ``xqgan_model.py`` / ``quant.py``; none for
    ``B < 1/ratio``). The residual still subtracts every scale, so the
    indices do not depend on the draw. The draw ``(B,)`` is in
    ``stats['num_scales']`` (``n`` for kept samples and outside training)
    and ``forward(z).quantized`` equals
    ``decode(indices, num_scales=stats['num_scales'])``. A caller (e.g. a
    product quantizer sharing one draw between branches, as ImageFolder
    does) draws with :meth:`sample_num_scales` and passes ``num_scales``.

    **Mask** ``(B, H, W)`` (True = real position): padded positions still
    take part in the area down-sampling (they get indices and values and
    the indices never depend on the mask), but they are left out of both
    losses; a coarse token counts in the usage stats when its area contains
    at least one real position.

    **Indices**: ``encode(z)`` and ``forward(z).indices`` are the list of
    per-scale maps ``[(B, s_i, s_i)]``; :meth:`decode` takes the maps of the
    first ``m`` scales (early exit: a coarse reconstruction) or the flat
    scale-major, raster-order sequence ``(B, s_1² + ... + s_m²)`` that VAR's
    transformer consumes (:meth:`to_sequence` / :meth:`from_sequence`
    convert). :meth:`next_scale_inputs` gives VAR's teacher-forcing inputs.

    Args:
        scales: token-map sides, non-decreasing, each >= 1, the last one the
            grid size ``H == W`` of ``z``. VAR: ``[1, 2, 3, 4, 5, 6, 8, 10,
            13, 16]``; ImageFolder: ``[1, 1, 2, 3, 3, 4, 5, 6, 8, 11]``.
        quantizer: config of the per-scale quantizer that owns the shared
            ``K × D`` codebook (default: ``DEFAULT_QUANTIZER``, VAR's 4096 ×
            32 Euclidean look-up); any quantizer whose ``encode`` / ``decode``
            work on ``(B, C, s, s)`` maps fits.
        use_phi: apply the Φ blending convs (VAR); ``False`` adds the
            up-sampled codes as they are.
        num_phi: number ``k`` of partially shared Φ convs.
        phi_ratio: blending ratio ``ρ`` of Φ, in ``(0, 1]``.
        phi_kernel_size: odd kernel size of the Φ convs (3 in VAR).
        commitment_weight: ``β`` (0.25 in VAR).
        codebook_weight: weight of ``loss_codebook``.
        commitment_reduction: ``'mean'`` (VAR) or ``'sum'`` (ImageFolder)
            over the scales, see **Losses**.
        dropout_ratio: probability that a training sample is dropped to
            fewer scales (``'per_sample'``) or fraction of the batch that is
            (``'first_fraction'``); 0.1 in ImageFolder, 0 = off.
        dropout_mode: ``'per_sample'`` or ``'first_fraction'`` (ImageFolder),
            see **Quantizer dropout**.
        start_scale: smallest number of scales a dropped sample keeps
            (ImageFolder's ``start_drop`` = 3), in ``[1, n]``.
    """

    def __init__(self,
                 scales: Sequence[int] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16),
                 quantizer: Optional[dict] = None,
                 use_phi: bool = True,
                 num_phi: int = 4,
                 phi_ratio: float = 0.5,
                 phi_kernel_size: int = 3,
                 commitment_weight: float = 0.25,
                 codebook_weight: float = 1.0,
                 commitment_reduction: str = 'mean',
                 dropout_ratio: float = 0.0,
                 dropout_mode: str = 'per_sample',
                 start_scale: int = 1):
        check_option_types(scales=(scales, 'ints'),
                           quantizer=(quantizer, 'config?'),
                           use_phi=(use_phi, 'bool'),
                           num_phi=(num_phi, 'int'),
                           phi_ratio=(phi_ratio, 'real'),
                           phi_kernel_size=(phi_kernel_size, 'int'),
                           commitment_weight=(commitment_weight, 'real'),
                           codebook_weight=(codebook_weight, 'real'),
                           commitment_reduction=(commitment_reduction, 'str'),
                           dropout_ratio=(dropout_ratio, 'real'),
                           dropout_mode=(dropout_mode, 'str'),
                           start_scale=(start_scale, 'int'))
        scales = tuple(scales)
        if not scales or any(not isinstance(s, int) or s < 1 for s in scales):
            raise ValueError(
                f'scales must be a non-empty list of integers >= 1, got '
                f'{list(scales)}')
        if any(b < a for a, b in zip(scales, scales[1:])):
            raise ValueError(
                f'scales must be non-decreasing (coarse to fine), got '
                f'{list(scales)}')
        if not 0.0 <= dropout_ratio <= 1.0:
            raise ValueError(
                f'dropout_ratio must be in [0, 1], got {dropout_ratio}')
        if dropout_mode not in DROPOUT_MODES:
            raise ValueError(f'dropout_mode must be one of {DROPOUT_MODES}, '
                             f'got {dropout_mode!r}')
        if commitment_reduction not in COMMITMENT_REDUCTIONS:
            raise ValueError(f'commitment_reduction must be one of '
                             f'{COMMITMENT_REDUCTIONS}, got '
                             f'{commitment_reduction!r}')
        if not 1 <= start_scale <= len(scales):
            raise ValueError(f'start_scale must be in [1, len(scales)] = '
                             f'[1, {len(scales)}], got {start_scale}')
        if use_phi:
            if num_phi < 1:
                raise ValueError(f'num_phi must be >= 1, got {num_phi}')
            if not 0.0 < phi_ratio <= 1.0:
                raise ValueError(
                    f'phi_ratio must be in (0, 1], got {phi_ratio}')
            if phi_kernel_size < 1 or phi_kernel_size % 2 == 0:
                raise ValueError(f'phi_kernel_size must be odd and >= 1, got '
                                 f'{phi_kernel_size}')

        per_scale = QUANTIZERS.build(
            copy.deepcopy(DEFAULT_QUANTIZER if quantizer is
                          None else quantizer))
        super().__init__(per_scale.in_channels)
        self.quantizer = per_scale
        self.scales = scales
        self.grid_size = scales[-1]
        self.use_phi = use_phi
        self.phi_ratio = phi_ratio
        self.commitment_weight = commitment_weight
        self.codebook_weight = codebook_weight
        self.commitment_reduction = commitment_reduction
        self.dropout_ratio = dropout_ratio
        self.dropout_mode = dropout_mode
        self.start_scale = start_scale

        if use_phi:
            self.phi_convs = nn.ModuleList(
                nn.Conv2d(self.in_channels,
                          self.in_channels,
                          phi_kernel_size,
                          padding=phi_kernel_size // 2)
                for _ in range(num_phi))
            self.phi_index = self._phi_assignment(len(scales), num_phi)

    @staticmethod
    def _phi_assignment(num_scales: int, num_phi: int) -> List[int]:
        """Which Φ conv each scale uses: the one whose tick is nearest to the
        scale's position ``i / (n - 1)`` in ``[0, 1]`` (VAR's
        ``PhiPartiallyShared``, ticks as in the class docstring)."""
        margin = 1 / 3 / num_phi if num_phi == 4 else 1 / 2 / num_phi
        ticks = np.linspace(margin, 1 - margin, num_phi)
        positions = np.arange(num_scales) / max(num_scales - 1, 1)
        return [int(np.argmin(np.abs(ticks - p))) for p in positions]

    @property
    def codebook_size(self) -> int:
        return self.quantizer.codebook_size

    @property
    def sequence_length(self) -> int:
        """Length ``s_1² + ... + s_n²`` of the flat token sequence."""
        return sum(s * s for s in self.scales)

    # ------------------------------------------------------------ layouts
    def to_sequence(self, indices: List[torch.Tensor]) -> torch.Tensor:
        """Per-scale maps ``[(B, s_i, s_i)]`` -> the flat sequence
        ``(B, Σ s_i²)`` (scale-major, raster order inside a scale)."""
        return torch.cat([idx.flatten(1) for idx in self._as_maps(indices)],
                         dim=1)

    def from_sequence(self, sequence: torch.Tensor) -> List[torch.Tensor]:
        """Flat sequence ``(B, s_1² + ... + s_m²)`` -> the maps
        ``[(B, s_i, s_i)]`` of the first ``m`` scales."""
        lengths = np.cumsum([side * side for side in self.scales]).tolist()
        if sequence.dim() != 2 or sequence.shape[1] not in lengths:
            raise ValueError(
                f'indices as a sequence must be (B, L) with L a prefix sum '
                f'of the squared scales {lengths} (scales '
                f'{list(self.scales)}), got shape {tuple(sequence.shape)}')
        sides = self.scales[:lengths.index(sequence.shape[1]) + 1]
        chunks = sequence.split([side * side for side in sides], dim=1)
        return [
            chunk.reshape(-1, side, side)
            for chunk, side in zip(chunks, sides)
        ]

    def _as_maps(self, indices: MultiScaleIndices) -> List[torch.Tensor]:
        """Validate indices of the first ``m`` scales, as per-scale maps."""
        if isinstance(indices, torch.Tensor):
            return self.from_sequence(indices)
        maps = list(indices)
        if not 1 <= len(maps) <= len(self.scales):
            raise ValueError(
                f'indices must hold 1 to {len(self.scales)} scale maps '
                f'(scales {list(self.scales)}), got {len(maps)}')
        for i, (idx, side) in enumerate(zip(maps, self.scales)):
            if idx.dim() != 3 or idx.shape[1:] != (side, side):
                raise ValueError(
                    f'indices[{i}] must be (B, {side}, {side}) for scales '
                    f'{list(self.scales)}, got shape {tuple(idx.shape)}')
        return maps

    def token_levels(
            self, indices: MultiScaleIndices
    ) -> Dict[str, Tuple[torch.Tensor, int]]:
        """Tokens of each scale (see
        :func:`~vistok.models.quantizers.base.token_levels`): the map
        ``(B, s_i, s_i)`` of scale ``i`` under ``'scale{i}.'`` with the shared
        ``codebook_size``, as the stats count them; ``indices`` as for
        :meth:`decode`."""
        return {
            f'scale{i}.': (idx.long(), self.codebook_size)
            for i, idx in enumerate(self._as_maps(indices))
        }

    # ------------------------------------------------------------ checks
    def _check_input(self, z: torch.Tensor) -> None:
        if z.dim() != 4:
            raise ValueError(
                f'MultiScaleResidualQuantizer is 2-D: z must be (B, C, H, W), '
                f'got shape {tuple(z.shape)}')
        if z.shape[1] != self.in_channels:
            raise ValueError(
                f'z has {z.shape[1]} channels, expected in_channels='
                f'{self.in_channels} (z shape {tuple(z.shape)})')
        height, width = z.shape[2:]
        if height != width or height != self.grid_size:
            raise ValueError(
                f'scales {list(self.scales)} must end at the grid size: '
                f'z of shape {tuple(z.shape)} needs H == W == scales[-1] = '
                f'{self.grid_size}')

    def _check_num_scales(self, num_scales: torch.Tensor,
                          batch_size: int) -> None:
        if (num_scales.shape != (batch_size, )
                or num_scales.is_floating_point() or num_scales.min() < 1
                or num_scales.max() > len(self.scales)):
            raise ValueError(
                f'num_scales must be an integer tensor (B,) = ({batch_size},) '
                f'with values in [1, {len(self.scales)}], got shape '
                f'{tuple(num_scales.shape)} and values {num_scales.tolist()}')

    # ------------------------------------------------------------ the maths
    def _resize(self, x: torch.Tensor, side: int, mode: str) -> torch.Tensor:
        """Resize ``(B, C, h, w)`` to ``side × side``; the identity (skipped)
        when the size already matches."""
        if x.shape[-1] == side and x.shape[-2] == side:
            return x
        return F.interpolate(x, size=(side, side), mode=mode)

    def _scale_contribution(self, idx: torch.Tensor, i: int) -> torch.Tensor:
        """``h_i = Φ_i(bicubic_upsample(decode(k_i)))``, ``(B, C, H, W)``
        fp32, from the token map ``k_i`` ``(B, s_i, s_i)``."""
        h = self._resize(
            self.quantizer.decode(idx).float(), self.grid_size, 'bicubic')
        if self.use_phi:
            conv = self.phi_convs[self.phi_index[i]]
            h = (1 - self.phi_ratio) * h + self.phi_ratio * conv(h)
        return h

    @staticmethod
    def _accumulate(f_hat: torch.Tensor, h: torch.Tensor,
                    keep: Optional[torch.Tensor]) -> torch.Tensor:
        """``f̂ + h`` for the samples that keep this scale (``keep`` ``(B,)``
        bool, ``None`` = all); the same op in :meth:`forward` and
        :meth:`decode`, which is what makes them bit-identical."""
        if keep is None:
            return f_hat + h
        return torch.where(keep[:, None, None, None], f_hat + h, f_hat)

    def sample_num_scales(
            self,
            batch_size: int,
            device: Union[str, torch.device] = 'cpu') -> torch.Tensor:
        """A quantizer-dropout draw: per-sample number of kept scales
        ``(B,)`` long; ``n`` for every sample outside training or with
        ``dropout_ratio == 0``, otherwise the dropped samples (each with
        probability ``dropout_ratio`` for ``dropout_mode='per_sample'``, the
        first ``int(dropout_ratio · B)`` for ``'first_fraction'``) keep
        ``U{start_scale..n}`` scales and the others ``n``."""
        num = len(self.scales)
        full = torch.full((batch_size, ), num, dtype=torch.long, device=device)
        if not self.training or self.dropout_ratio == 0:
            return full
        if self.dropout_mode == 'first_fraction':
            # ImageFolder: n_dropout = int(B * codebook_drop)
            dropped = (torch.arange(batch_size, device=device) < int(
                batch_size * self.dropout_ratio))
        else:
            dropped = (torch.rand(batch_size, device=device)
                       < self.dropout_ratio)
        drawn = torch.randint(self.start_scale,
                              num + 1, (batch_size, ),
                              device=device)
        return torch.where(dropped, drawn, full)

    def forward(self,
                z: torch.Tensor,
                mask: Optional[torch.Tensor] = None,
                num_scales: Optional[torch.Tensor] = None) -> QuantizerOutput:
        """Quantize ``z`` ``(B, C, H, W)``; see the class docstring.

        Args:
            z: latent map, ``H == W == scales[-1]``.
            mask: optional bool ``(B, H, W)``, True = real position.
            num_scales: optional long ``(B,)`` quantizer-dropout draw (from
                :meth:`sample_num_scales`); drawn here when ``None``.
        """
        self._check_input(z)
        batch = z.shape[0]
        if mask is not None and (mask.dtype != torch.bool
                                 or mask.shape != (batch, *z.shape[2:])):
            raise ValueError(
                f'mask must be a bool tensor (B, H, W) = '
                f'{(batch, *z.shape[2:])}, got {mask.dtype} of shape '
                f'{tuple(mask.shape)}')
        if num_scales is None:
            num_scales = self.sample_num_scales(batch, z.device)
        self._check_num_scales(num_scales, batch)

        with torch.autocast(z.device.type, enabled=False):
            target = z.float()
            real = (torch.ones_like(target[:, :1])
                    if mask is None else mask[:, None].float())
            residual = target.detach()
            f_hat = torch.zeros_like(residual)
            maps, loss_codebook, loss_commitment, weight_sum = [], 0., 0., 0.
            stats = {}
            for i, side in enumerate(self.scales):
                idx = self.quantizer.encode(
                    self._resize(residual, side, 'area'))
                h = self._scale_contribution(idx, i)
                keep = i < num_scales
                f_hat = self._accumulate(f_hat, h, keep)
                residual = residual - h.detach()
                maps.append(idx)

                # losses on the running reconstruction f̂_i, over the real
                # positions of the samples that keep scale i
                weight = real * keep[:, None, None, None].float()
                scale_weight = weight.sum() * z.shape[1]
                loss_codebook = loss_codebook + (
                    weight * (f_hat - target.detach()).pow(2)).sum()
                commitment = (weight * (target - f_hat.detach()).pow(2)).sum()
                if self.commitment_reduction == 'sum':
                    commitment = commitment / scale_weight.clamp_min(1)
                loss_commitment = loss_commitment + commitment
                weight_sum = weight_sum + scale_weight

                counted = self._resize(real, side, 'area')[:, 0] > 0
                stats.update(
                    usage_stats(torch.bincount(idx[counted],
                                               minlength=self.codebook_size),
                                prefix=f'scale{i}.'))

        weight_sum = weight_sum.clamp_min(1)
        # 'sum' already divided each scale by its own kept elements
        commitment_denominator = (weight_sum if self.commitment_reduction
                                  == 'mean' else 1)
        loss = dict(loss_codebook=self.codebook_weight * loss_codebook /
                    weight_sum,
                    loss_commitment=self.commitment_weight * loss_commitment /
                    commitment_denominator)
        for key in ('perplexity', 'usage'):
            stats[key] = torch.stack([
                stats[f'scale{i}.{key}'] for i in range(len(self.scales))
            ]).mean()
        stats['num_scales'] = num_scales
        return QuantizerOutput(quantized=straight_through(z, f_hat),
                               indices=maps,
                               loss=loss,
                               stats=stats)

    @torch.no_grad()
    def encode(self, z: torch.Tensor) -> List[torch.Tensor]:
        """Per-scale token maps ``[(B, s_i, s_i)]`` of ``z`` ``(B, C, H, W)``
        (VAR Alg. 1); equal to ``forward(z).indices``."""
        self._check_input(z)
        with torch.autocast(z.device.type, enabled=False):
            residual = z.float()
            maps = []
            for i, side in enumerate(self.scales):
                idx = self.quantizer.encode(
                    self._resize(residual, side, 'area'))
                residual = residual - self._scale_contribution(idx, i)
                maps.append(idx)
        return maps

    def decode(self,
               indices: MultiScaleIndices,
               num_scales: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``f̂`` ``(B, C, H, W)`` fp32 from the indices of the first ``m``
        scales (VAR Alg. 2; ``m < n`` gives a coarse reconstruction).

        Args:
            indices: per-scale maps ``[(B, s_i, s_i)]`` or the flat sequence
                ``(B, s_1² + ... + s_m²)``.
            num_scales: optional per-sample number of kept scales ``(B,)``
                (a quantizer-dropout draw, ``stats['num_scales']``).
        """
        maps = self._as_maps(indices)
        if num_scales is not None:
            self._check_num_scales(num_scales, maps[0].shape[0])
        return self._reconstructions(maps, num_scales)[-1]

    def next_scale_inputs(self, indices: MultiScaleIndices) -> torch.Tensor:
        """VAR's teacher-forcing inputs (``idxBl_to_var_input``): after each
        of the given ``m`` scales, the running ``f̂`` area-down-sampled to the
        next scale, flattened channels-last and concatenated —
        ``(B, s_2² + ... + s_{m'}², C)`` fp32 with ``m' = min(m + 1, n)``;
        the first scale's input is the transformer's start token."""
        maps = self._as_maps(indices)
        f_hats = self._reconstructions(maps)[:len(self.scales) - 1]
        inputs = [
            self._resize(f_hat, side, 'area').flatten(2).transpose(1, 2)
            for f_hat, side in zip(f_hats, self.scales[1:])
        ]
        if not inputs:  # a single scale: nothing follows it
            return f_hats[0].new_zeros(maps[0].shape[0], 0, self.in_channels)
        return torch.cat(inputs, dim=1)

    def _reconstructions(
            self,
            maps: List[torch.Tensor],
            num_scales: Optional[torch.Tensor] = None) -> List[torch.Tensor]:
        """The running reconstructions ``[f̂_1, ..., f̂_m]`` (VAR Alg. 2),
        each ``(B, C, H, W)`` fp32, from validated per-scale maps."""
        f_hats = []
        with torch.autocast(maps[0].device.type, enabled=False):
            for i, idx in enumerate(maps):
                with indices_level(f'scale {i}'):
                    h = self._scale_contribution(idx, i)
                f_hat = f_hats[-1] if f_hats else torch.zeros_like(h)
                keep = None if num_scales is None else i < num_scales
                f_hats.append(self._accumulate(f_hat, h, keep))
        return f_hats
