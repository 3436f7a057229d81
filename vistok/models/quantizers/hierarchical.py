"""Two-level hierarchical quantization with a pixel-unshuffled top map and a
residual bottom map: the HQ-VAE of You et al. 2022, "Locally Hierarchical
Auto-Regressive Modeling for Image Generation" (KakaoBrain's HQ-Transformer),
as used by UniCode (Zheng et al. 2024, "UniCode: Learning a Unified Codebook
for Multimodal Large Language Models", 8×8 + 16×16 = 320 tokens per 256 px
image; official code: ``src/vae/models/stage1/generator.py``,
``SimRQGAN2Generator``).
"""
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from vistok.registry import QUANTIZERS
from vistok.structures import QuantizerOutput
from .base import (
    BaseQuantizer,
    QuantizerCfg,
    check_latent,
    check_option_types,
    indices_level,
    merge_level_losses,
    merge_level_stats,
    run_quantizer,
    token_levels,
)

#: side of the block of bottom tokens under one top token
FACTOR = 2
CHILDREN = FACTOR * FACTOR
TOKEN_ORDERS = ('grouped', 'interleaved', 'legacy_raster_children')
#: how the two levels form ``quantized``: their sum (the shape of ``z``) or
#: UniCode's channel concatenation ``[top, bottom]`` (twice its channels)
COMBINES = ('sum', 'concat')


@QUANTIZERS.register_module()
class HierarchicalQuantizer(BaseQuantizer):
    """Top tokens on a 2× coarser grid, bottom tokens on the residual.

    2-D only: ``z`` ``(B, C, H, W)`` with even ``H`` and ``W``. With
    ``h, w = H/2, W/2``:

    * top: ``u = pixel_unshuffle(z, 2)`` ``(B, 4C, h, w)`` is quantized by
      the top quantizer (``in_channels = 4C``; any projections live inside
      it), ``t = pixel_shuffle(Q_top(u), 2)`` ``(B, C, H, W)``;
    * bottom: the residual ``r = z - t`` is quantized at the fine grid,
      ``b = Q_bottom(r)``; with ``shared_codebook`` the top quantizer is
      reused through 1×1 projections ``C -> 4C`` before and ``4C -> C``
      after it (UniCode's ``up_conv`` / ``down_conv``);
    * ``quantized = t + b`` (``combine='sum'``, shape of ``z``) or
      ``cat([t, b], 1)`` ``(B, 2C, H, W)`` (``combine='concat'``).

    As in UniCode's code, ``r`` is taken from the top level's
    straight-through output, not detached. Each level applies its own
    straight-through, so ``quantized`` is bit-identical to ``decode``
    (which repeats the same operations on the decoded levels), every
    projection receives the decoder gradient, and for levels without
    projections the gradient w.r.t. ``z`` is exactly the identity (the
    bottom path contributes ``∂r/∂z = I - I = 0``). Consequently the bottom
    commitment term trains the bottom code space, not the encoder (the
    same holds in UniCode's code).

    UniCode's HQ-VAE (``SimRQGAN2Generator`` with ``upsample='pixelshuffle'``
    in ``src/vae/models/stage1/generator.py``) is ``combine='concat'``: with
    its code width ``E`` (the LLM hidden size, 4096), ``quant_conv_b`` maps
    the encoder output to ``C = E/4`` channels at 16×16 (the tokenizer's
    ``quant_conv`` here), ``down_t = PixelUnshuffle(2)`` gives the ``E``
    channels at 8×8 that ``quantize_t`` takes, the bottom residual
    ``h_b - PixelShuffle(q_t)`` (``C`` channels) goes through ``up_conv``
    (1×1, ``C -> E``), the bottom quantizer (``quantize_t`` itself with
    ``shared_codebook``) and ``down_conv`` (1×1, ``E -> C``), and ``decode``
    feeds ``cat([PixelShuffle(q_t), q_b])`` (``2C = E/2`` channels,
    ``embed_dim_output``) to ``post_quant_conv_b`` (``2C -> z_channels``).
    Here ``up_conv`` / ``down_conv`` are ``bottom_in`` / ``bottom_out`` with
    ``shared_codebook``, or the projections of a bottom ``VectorQuantizer``
    with ``in_channels=C, embed_dim=4C``; :attr:`out_channels` (``2C``) is
    what the tokenizer's ``post_quant_conv`` takes. With the default
    ``combine='sum'`` the levels are added (the bottom level codes the
    residual) and ``quantized`` keeps the shape of ``z``.

    Indices are the tuple ``(top (B, h, w), bottom (B, H, W))``, exact for
    any even grid; :meth:`to_sequence` / :meth:`from_sequence` convert to
    and from the flat token sequence ``(B, 5hw)`` of ``token_order``
    (320 ids for UniCode's 8×8 + 16×16 grids at 256 px):

    * ``'grouped'``: the ``hw`` top tokens in raster order, then the bottom
      tokens block by block: the 2×2 children of top token 0 in raster
      order (``(0,0), (0,1), (1,0), (1,1)`` of the block), then those of
      top token 1, ...;
    * ``'interleaved'``: each top token followed by its four children in
      the same order (the 2×2 block under it);
    * ``'legacy_raster_children'``: UniCode's released layout — each top
      token ``i`` (raster order of the ``h × w`` grid) followed by bottom
      tokens ``4i .. 4i+3`` of the bottom map in raster order, i.e. four
      *consecutive raster positions* of the ``2h × 2w`` grid, not the 2×2
      block under the parent (on a 4×4 bottom grid the "children" of top
      token 0 are row 0, columns 0..3). Official code:
      ``data/process.py`` (``codes_t[img].unsqueeze(1)``,
      ``codes_b[img].reshape(64, 4)``, concatenated and flattened, the
      ``visual_tokens`` / ``<vistok>`` targets) and the vision tower
      ``src/model/multimodal_encoder/vae_encoder.py`` (``code_b.reshape(
      bsz, dim, -1, 4)``). Use it to read or write UniCode's token files.

    With separate codebooks the sequence uses one joint vocabulary of
    ``codebook_size = K_top + K_bottom`` ids: bottom ids are shifted by
    ``K_top`` (with a shared codebook both levels use the same ``K`` ids).

    ``mask`` (optional) is at the bottom resolution ``(B, H, W)``; a top
    token is real when any of its four children is. Loss terms of the same
    name are summed over the two levels (UniCode: top + bottom commitment);
    stats per level under ``'top.'`` / ``'bottom.'`` plus ``perplexity`` /
    ``usage`` averaged over the levels.

    Args:
        top_quantizer: config / module quantizing ``4C`` channels.
        bottom_quantizer: config / module quantizing ``C`` channels; must be
            ``None`` with ``shared_codebook``.
        shared_codebook: quantize both levels with the top quantizer.
        token_order: one of :data:`TOKEN_ORDERS` (see above).
        combine: ``'sum'`` (default) or ``'concat'`` (UniCode; see above).
    """

    def __init__(self,
                 top_quantizer: QuantizerCfg,
                 bottom_quantizer: Optional[QuantizerCfg] = None,
                 shared_codebook: bool = False,
                 token_order: str = 'grouped',
                 combine: str = 'sum'):
        check_option_types(top_quantizer=(top_quantizer, 'quantizer'),
                           bottom_quantizer=(bottom_quantizer, 'quantizer?'),
                           shared_codebook=(shared_codebook, 'bool'),
                           token_order=(token_order, 'str'),
                           combine=(combine, 'str'))
        if token_order not in TOKEN_ORDERS:
            raise ValueError(f'token_order must be one of {TOKEN_ORDERS}, '
                             f'got {token_order!r}')
        if combine not in COMBINES:
            raise ValueError(f'combine must be one of {COMBINES}, got '
                             f'{combine!r}')
        if shared_codebook != (bottom_quantizer is None):
            raise ValueError(
                'give bottom_quantizer exactly when shared_codebook is False'
                f', got shared_codebook={shared_codebook} and bottom_quantizer'
                f'={bottom_quantizer!r}')
        top = QUANTIZERS.build_or_take(top_quantizer)
        if top.in_channels % CHILDREN:
            raise ValueError(
                f'top_quantizer.in_channels must be {CHILDREN}·C (the '
                f'pixel-unshuffled channels), got {top.in_channels}')
        super().__init__(top.in_channels // CHILDREN)
        self.top = top
        self.shared_codebook = shared_codebook
        self.token_order = token_order
        self.combine = combine
        if shared_codebook:
            self.bottom_in = nn.Conv2d(self.in_channels, top.in_channels, 1)
            self.bottom_out = nn.Conv2d(top.in_channels, self.in_channels, 1)
        else:
            self.bottom = QUANTIZERS.build_or_take(bottom_quantizer)
            if self.bottom.in_channels != self.in_channels:
                raise ValueError(
                    f'bottom_quantizer.in_channels must be C = top_quantizer.'
                    f'in_channels / {CHILDREN} = {self.in_channels}, got '
                    f'{self.bottom.in_channels}')

    @property
    def codebook_size(self) -> int:
        """Vocabulary of :meth:`to_sequence`: ``K`` shared, else
        ``K_top + K_bottom``."""
        if self.shared_codebook:
            return self.top.codebook_size
        return self.top.codebook_size + self.bottom.codebook_size

    @property
    def out_channels(self) -> int:
        """Channels of ``quantized`` / ``decode``: ``C`` (``'sum'``) or
        ``2C`` (``'concat'``)."""
        return self.in_channels * (2 if self.combine == 'concat' else 1)

    def _combine(self, top_map: torch.Tensor,
                 bottom_map: torch.Tensor) -> torch.Tensor:
        if self.combine == 'concat':
            return torch.cat([top_map, bottom_map], 1)
        return top_map + bottom_map

    @property
    def bottom_offset(self) -> int:
        """Shift of bottom ids in the joint vocabulary of the sequence."""
        return 0 if self.shared_codebook else self.top.codebook_size

    def _check(self, z: torch.Tensor, mask: Optional[torch.Tensor]):
        if (z.dim() != 4 or z.shape[1] != self.in_channels
                or z.shape[2] % FACTOR or z.shape[3] % FACTOR):
            raise ValueError(
                f'z must be (B, {self.in_channels}, H, W) with even H and W '
                f'(HierarchicalQuantizer is 2-D only), got shape '
                f'{tuple(z.shape)}')
        check_latent(z, self.in_channels, mask)

    @staticmethod
    def _project(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        """1×1 projection in fp32, also under autocast (so the shared
        look-up sees fp32 inputs and bf16 cannot change its indices)."""
        with torch.autocast(x.device.type, enabled=False):
            return conv(x.float())

    def _bottom_forward(self, residual, mask) -> QuantizerOutput:
        if not self.shared_codebook:
            return run_quantizer(self.bottom, residual, mask=mask)
        out = run_quantizer(
            self.top, self._project(self.bottom_in, residual), mask=mask)
        out.quantized = self._project(self.bottom_out, out.quantized)
        return out

    def _bottom_encode(self, residual: torch.Tensor) -> torch.Tensor:
        if not self.shared_codebook:
            return self.bottom.encode(residual)
        return self.top.encode(self._project(self.bottom_in, residual))

    def _bottom_decode(self, indices: torch.Tensor) -> torch.Tensor:
        if not self.shared_codebook:
            return self.bottom.decode(indices)
        return self._project(self.bottom_out, self.top.decode(indices))

    def forward(self,
                z: torch.Tensor,
                mask: Optional[torch.Tensor] = None) -> QuantizerOutput:
        """Quantize ``z`` ``(B, C, H, W)`` into ``quantized`` ``(B,
        out_channels, H, W)``; ``mask`` ``(B, H, W)`` bool, True = real
        token (see the class docstring)."""
        self._check(z, mask)
        top_mask = None
        if mask is not None:
            top_mask = F.pixel_unshuffle(mask[:, None].float(),
                                         FACTOR).amax(1) > 0
        top = run_quantizer(self.top, F.pixel_unshuffle(z, FACTOR),
                            mask=top_mask)
        top_map = F.pixel_shuffle(top.quantized, FACTOR)
        bottom = self._bottom_forward(z - top_map, mask)
        levels = [top, bottom]
        return QuantizerOutput(
            quantized=self._combine(top_map, bottom.quantized),
            indices=(top.indices, bottom.indices),
            loss=merge_level_losses([out.loss for out in levels]),
            stats=merge_level_stats([out.stats for out in levels],
                                    ['top.', 'bottom.']))

    @torch.no_grad()
    def encode(self, z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(top (B, H/2, W/2), bottom (B, H, W))`` indices of ``z``
        ``(B, C, H, W)``."""
        self._check(z, None)
        top = self.top.encode(F.pixel_unshuffle(z, FACTOR))
        top_map = F.pixel_shuffle(self.top.decode(top), FACTOR)
        return top, self._bottom_encode(z - top_map)

    def decode(self, indices: Tuple[torch.Tensor,
                                    torch.Tensor]) -> torch.Tensor:
        """``(B, out_channels, H, W)`` from the ``(top, bottom)`` index
        maps."""
        top, bottom = indices
        if (top.dim() != 3 or bottom.shape !=
            (top.shape[0], FACTOR * top.shape[1], FACTOR * top.shape[2])):
            raise ValueError(
                f'indices must be (top (B, h, w), bottom (B, 2h, 2w)), got '
                f'shapes {tuple(top.shape)} and {tuple(bottom.shape)}')
        with indices_level('top'):
            top_map = F.pixel_shuffle(self.top.decode(top), FACTOR)
        with indices_level('bottom'):
            bottom_map = self._bottom_decode(bottom)
        return self._combine(top_map, bottom_map)

    def token_levels(
        self, indices: Tuple[torch.Tensor, torch.Tensor]
    ) -> Dict[str, Tuple[torch.Tensor, int]]:
        """Tokens of each level (see
        :func:`~vistok.models.quantizers.base.token_levels`): the top map
        ``(B, h, w)`` under ``'top.'`` and the bottom map ``(B, 2h, 2w)``
        under ``'bottom.'`` (level-local ids, no offset), each composed with
        its quantizer's own levels as the stats are."""
        top, bottom = indices
        bottom_quantizer = self.top if self.shared_codebook else self.bottom
        return {
            **token_levels(self.top, top, 'top.'),
            **token_levels(bottom_quantizer, bottom, 'bottom.')
        }

    @staticmethod
    def _ids_per_position(level: nn.Module) -> Optional[int]:
        """Trailing-axis length of a level's indices: a residual level's
        ``depth`` (indices ``(B, h, w, D)``), ``None`` for ``(B, h, w)``."""
        return getattr(level, 'depth', None)

    def _children(self, bottom: torch.Tensor) -> torch.Tensor:
        """Bottom map ``(B, 2h, 2w[, D])`` -> ``(B, hw, 4·D)``: the four
        "children" of each top token (raster order of the top grid) in the
        sense of ``token_order``, a child's ``D`` ids consecutive."""
        batch, height, width = bottom.shape[:3]
        h, w = height // FACTOR, width // FACTOR
        if self.token_order == 'legacy_raster_children':
            # UniCode: 4 consecutive raster positions of the bottom map
            return bottom.reshape(batch, h * w, -1)
        # the 2×2 block under each top token, raster order inside the block
        return bottom.reshape(batch, h, FACTOR, w, FACTOR, -1).permute(
            0, 1, 3, 2, 4, 5).reshape(batch, h * w, -1)

    def _bottom_map(self, children: torch.Tensor, h: int,
                    w: int) -> torch.Tensor:
        """Inverse of :meth:`_children`: ``(B, hw, 4·D)`` -> ``(B, 2h, 2w,
        D)``."""
        batch = children.shape[0]
        if self.token_order == 'legacy_raster_children':
            return children.reshape(batch, FACTOR * h, FACTOR * w, -1)
        return children.reshape(batch, h, w, FACTOR, FACTOR, -1).permute(
            0, 1, 3, 2, 4, 5).reshape(batch, FACTOR * h, FACTOR * w, -1)

    def to_sequence(
            self, indices: Tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """``(top (B, h, w[, D_t]), bottom (B, 2h, 2w[, D_b]))`` -> token
        sequence ``(B, (D_t + 4 D_b) hw)`` in ``token_order`` (see the class
        docstring), bottom ids shifted by :attr:`bottom_offset` (dropped ids
        stay negative). A residual level's depth ids of one position are
        consecutive."""
        top, bottom = indices
        batch, h, w = top.shape[:3]
        if tuple(bottom.shape[:3]) != (batch, FACTOR * h, FACTOR * w):
            raise ValueError(
                f'indices must be (top (B, h, w[, D]), bottom (B, 2h, 2w[, '
                f'D])), got shapes {tuple(top.shape)} and '
                f'{tuple(bottom.shape)}')
        children = self._children(bottom)
        children = torch.where(children >= 0, children + self.bottom_offset,
                               children)
        top = top.reshape(batch, h * w, -1)
        if self.token_order == 'grouped':
            return torch.cat([top.flatten(1), children.flatten(1)], 1)
        return torch.cat([top, children], -1).flatten(1)

    def from_sequence(
            self,
            sequence: torch.Tensor,
            size: Optional[Tuple[int, int]] = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Inverse of :meth:`to_sequence`. ``size`` ``(H, W)`` is the bottom
        grid; ``None`` assumes a square one."""
        batch, length = sequence.shape
        top_depth = self._ids_per_position(self.top)
        bottom_depth = self._ids_per_position(
            self.top if self.shared_codebook else self.bottom)
        per_top = (top_depth or 1) + CHILDREN * (bottom_depth or 1)
        if size is None:
            side = round((length // per_top)**0.5)
            h = w = side
        else:
            h, w = size[0] // FACTOR, size[1] // FACTOR
        if (length != per_top * h * w
                or (size is not None and tuple(size) != (FACTOR * h,
                                                         FACTOR * w))):
            raise ValueError(
                f'sequence of length {length} does not hold the tokens of a '
                f'{"square" if size is None else tuple(size)} bottom grid '
                f'with even sides ({per_top}·h·w tokens)')
        num_top = (top_depth or 1) * h * w
        if self.token_order == 'grouped':
            top, children = sequence.split([num_top, length - num_top], 1)
        else:
            tokens = sequence.reshape(batch, h * w, per_top)
            top, children = tokens.split(
                [top_depth or 1, per_top - (top_depth or 1)], -1)
        children = torch.where(children >= 0,
                               children - self.bottom_offset, children)
        bottom = self._bottom_map(children.reshape(batch, h * w, -1), h, w)
        top = top.reshape(batch, h, w, -1)
        if top_depth is None:
            top = top.squeeze(-1)
        if bottom_depth is None:
            bottom = bottom.squeeze(-1)
        return top, bottom
