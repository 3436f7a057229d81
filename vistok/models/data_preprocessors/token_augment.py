"""Batch transforms on token maps and their codebook embeddings (SeiT, Park
et al., ICCV 2023, arXiv 2303.11114; SeiT++, Lee et al., ECCV 2024, arXiv
2312.10105), used by
:class:`~vistok.models.data_preprocessors.TokenEmbeddingPreprocessor`.

Tensor layout: integer code maps are ``(B, h, w)``, embedding maps
``(B, D, h, w)`` (channel first). Every random draw comes from torch's
global RNG on the batch's device (timm's ``Mixup`` draws from numpy: it is
seeded from a torch draw, see :class:`EmbeddingMixup`), one draw per sample
where the official code (``naver-ai/seit`` ``token_transform.py``) draws
once per batch; nothing is modified in place.
"""
import contextlib
import math
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from vistok.models.utils.code_search import nearest_code

Size = Union[int, Sequence[int]]
#: RandomResizedCrop attempts before the centre-crop fallback (torchvision)
RRC_ATTEMPTS = 10


def _pair(size: Size) -> Tuple[int, int]:
    return (size, size) if isinstance(size, int) else tuple(size)


def random_mask(num: int, prob: float,
                device: Optional[torch.device] = None) -> torch.Tensor:
    """``(num,)`` bool: each sample selected independently with ``prob``."""
    return torch.rand(num, device=device) < prob


# --- codes <-> embeddings ----------------------------------------------------
def embed_codes(codes: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Codebook embedding ``(B, h, w)`` int codes → ``(B, D, h, w)``: what
    SeiT computes as one-hot ``(K, h, w)`` ``@ codebook`` (``Codebook``)."""
    if codes.is_floating_point() or codes.is_complex():
        raise TypeError(f'codes must be an integer tensor, got {codes.dtype}')
    return F.embedding(codes.long(), codebook).movedim(-1, 1)


def requantize(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Nearest code by cosine: ``(B, D, h, w)`` → ``(B, h, w)`` int64.

    The map vectors and the codebook are l2-normalised, then
    :func:`~vistok.models.utils.code_search.nearest_code` (blocks of rows,
    never the ``N × K`` matrix) takes the Euclidean nearest, i.e. the
    largest cosine; ties go to the lowest index. SeiT's ``convert_to_codes``
    (``util/misc.py``) computes the same argmin on normalised vectors with
    the full matrix.
    """
    if x.dim() < 2 or x.shape[1] != codebook.shape[1]:
        raise ValueError(f'the embedding map must be (B, {codebook.shape[1]}'
                         f', *grid) for a (K, D) = {tuple(codebook.shape)} '
                         f'codebook, got shape {tuple(x.shape)}')
    flat = x.movedim(1, -1).reshape(-1, x.shape[1])
    indices = nearest_code(F.normalize(flat.float(), dim=-1),
                           F.normalize(codebook.float(), dim=-1))
    return indices.view(x.shape[0], *x.shape[2:])


# --- crops -------------------------------------------------------------
def sample_rrc_boxes(num: int,
                     grid: Size,
                     scale: Sequence[float] = (0.08, 1.0),
                     ratio: Sequence[float] = (3 / 4, 4 / 3),
                     device: Optional[torch.device] = None) -> torch.Tensor:
    """Boxes of RandomResizedCrop for ``num`` samples of a ``grid`` map:
    ``(num, 4)`` int64 ``(top, left, height, width)``.

    torchvision's rule (``RandomResizedCrop.get_params``, which SeiT's
    ``RRC`` copies), vectorised: up to ``RRC_ATTEMPTS`` tries of an area
    ``U(scale) · h·w`` and a log-uniform aspect ratio in ``ratio``; the first
    box that fits is kept, else the centre crop of the whole map clipped to
    ``ratio``. The offsets are uniform over the valid positions.
    """
    height, width = _pair(grid)
    opts = dict(device=device, dtype=torch.float64)
    draws = torch.rand(num, RRC_ATTEMPTS, 2, **opts)
    area = height * width * (scale[0] + (scale[1] - scale[0]) * draws[..., 0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * draws[..., 1])
    w = torch.round(torch.sqrt(area * aspect))
    h = torch.round(torch.sqrt(area / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.int().argmax(1, keepdim=True)  # first attempt that fits
    in_ratio = width / height
    if in_ratio < min(ratio):
        fall_w, fall_h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fall_w, fall_h = int(round(height * max(ratio))), height
    else:
        fall_w, fall_h = width, height
    found = fits.any(1)
    h = torch.where(found, h.gather(1, first)[:, 0], float(fall_h))
    w = torch.where(found, w.gather(1, first)[:, 0], float(fall_w))
    offsets = torch.rand(num, 2, **opts)
    top = torch.floor(offsets[:, 0] * (height - h + 1))
    left = torch.floor(offsets[:, 1] * (width - w + 1))
    return torch.stack([top, left, h, w], dim=1).long()


def resized_crop(x: torch.Tensor, boxes: torch.Tensor, size: Size,
                 mode: str = 'bicubic') -> torch.Tensor:
    """Crop box ``i`` of ``boxes`` ``(B, 4)`` (top, left, height, width) from
    sample ``i`` of ``x`` ``(B, C, H, W)`` and resize it to ``size`` with
    ``F.interpolate`` (``align_corners=False``, no antialiasing, as SeiT's
    ``RRC``). Bicubic resizing is linear, so on an embedding map it equals
    SeiT's one-hot crop-and-resize followed by ``@ codebook``."""
    size = _pair(size)
    if len(x) != len(boxes):
        raise ValueError(f'{len(boxes)} boxes for a batch of {len(x)}')
    if len(x) == 0:
        return x.new_empty(0, x.shape[1], *size)
    opts = {} if mode == 'nearest' else dict(align_corners=False)
    out = [
        F.interpolate(sample[None, :, top:top + h, left:left + w],
                      size=size, mode=mode, **opts)
        for sample, (top, left, h, w) in zip(x, boxes.tolist())
    ]
    return torch.cat(out)


def resized_crop_codes(codes: torch.Tensor, boxes: torch.Tensor,
                       size: Size) -> torch.Tensor:
    """:func:`resized_crop` of integer code maps ``(B, h, w)`` with nearest
    resampling (torch's ``'nearest'``, torchvision's ``NEAREST``): every
    output code is one of the input codes."""
    out = resized_crop(codes[:, None].float(), boxes, size, mode='nearest')
    return out[:, 0].to(codes.dtype)


def center_crop(x: torch.Tensor, size: Size) -> torch.Tensor:
    """The centre ``size`` crop of the last two axes (SeiT's ``CC``: offset
    ``(H - h) // 2``)."""
    crop_h, crop_w = _pair(size)
    height, width = x.shape[-2:]
    if crop_h > height or crop_w > width:
        raise ValueError(f'cannot centre-crop {crop_h}x{crop_w} from a '
                         f'{height}x{width} grid')
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    return x[..., top:top + crop_h, left:left + crop_w]


# --- colour: Emb-Noise and ColorAdapt ------------------------------------
def emb_noise(x: torch.Tensor, scale: float = 1.0, std: float = 1.0,
              mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """SeiT's Emb-Noise (``Noise``): ``x + N(0,1)·scale`` per sample and
    channel ``+ N(0,1)·std`` per element, on the samples of ``mask`` ``(B,)``
    (all when ``None``). Returns a new tensor (the official ``x += noise``
    modified its input)."""
    num, channels = x.shape[:2]
    ones = (1, ) * (x.dim() - 2)
    noise = (torch.randn(num, channels, *ones, device=x.device,
                         dtype=x.dtype) * scale + torch.randn_like(x) * std)
    if mask is not None:
        noise = noise * mask.view(num, 1, *ones).to(x.dtype)
    return x + noise


def color_adapt(x: torch.Tensor, partner: torch.Tensor, eps: float = 1e-5,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """ColorAdapt (SeiT++ §3.3): AdaIN with the statistics of a partner,
    ``σ(y)·(x − μ(x))/σ(x) + μ(y)`` per sample and channel, ``y =
    x[partner]``.

    ``μ`` is the mean and ``σ`` the *unbiased* standard deviation over the
    spatial axes plus ``eps`` (in both places: σ is one function). The
    official ``ColorAdapt`` (``token_transform.py``) uses the unbiased
    ``std`` without any eps, so a constant channel gives inf / NaN there;
    here it gives ``μ(y)``. Samples outside ``mask`` ``(B,)`` are returned
    unchanged; ``partner`` is a ``(B,)`` index (e.g. a random permutation;
    the official partner is the mirrored index ``flip(0)``).
    """
    dims = tuple(range(2, x.dim()))
    if math.prod(x.shape[2:]) < 2:
        raise ValueError(f'ColorAdapt needs at least two positions per '
                         f'channel for an unbiased std, got shape '
                         f'{tuple(x.shape)}')
    mean = x.mean(dims, keepdim=True)
    sigma = x.std(dims, keepdim=True) + eps
    out = sigma[partner] * (x - mean) / sigma + mean[partner]
    if mask is None:
        return out
    return torch.where(mask.view(-1, *(1, ) * (x.dim() - 1)), out, x)


class EmbNoise(nn.Module):
    """:func:`emb_noise` on each sample with probability ``prob``."""

    def __init__(self, prob: float = 0.5, scale: float = 1.0,
                 std: float = 1.0):
        super().__init__()
        self.prob, self.scale, self.std = prob, scale, std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = random_mask(len(x), self.prob, x.device)
        return emb_noise(x, self.scale, self.std, mask)


class ColorAdapt(nn.Module):
    """:func:`color_adapt` on each sample with probability ``prob``, the
    partner of sample ``i`` being ``perm[i]`` for a random permutation of
    the batch (a sample may draw itself: then only ``eps`` changes it)."""

    def __init__(self, prob: float = 0.5, eps: float = 1e-5):
        super().__init__()
        self.prob, self.eps = prob, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = random_mask(len(x), self.prob, x.device)
        partner = torch.randperm(len(x), device=x.device)
        return color_adapt(x, partner, self.eps, mask)


# --- geometry in TokenAdapt's f-space -----------------------------------
class RandomFlipAffine(nn.Module):
    """SeiT++'s geometric augmentation of the TokenAdapt half
    (``build_geo_transform(is_tokenadapt=True)``), per sample: horizontal
    flip with ``flip_prob``; then, with ``affine_prob`` (the official
    ``RandomApply``), the sequence rotate → translate-x → translate-y →
    shear-x → shear-y, each with its own ``op_prob`` (the official ops'
    ``p=0.5``; an op thus fires with ``affine_prob · op_prob``). Each op is
    one ``torchvision`` affine resampling (``interpolation``, official
    ``2`` = bilinear; ``fill`` outside), with torchvision's ``RandomAffine``
    draws: angle ``U(rotate)`` degrees, translations ``round(U(±t·size))``
    pixels, shears ``U(shear_x)`` / ``U(shear_y)`` degrees (the official
    ``ShearX(15)`` is ``shear=[0, 15]``, i.e. ``U(0, 15)``, not ±15).
    The official transforms draw once for the whole half batch.

    Args:
        flip_prob / affine_prob / op_prob: probabilities above.
        rotate: angle range in degrees.
        translate: ``(tx, ty)``: maximal shift as a fraction of width /
            height.
        shear_x / shear_y: shear ranges in degrees.
        interpolation: ``'bilinear'`` or ``'nearest'``.
        fill: value outside the map.
    """
    OPS = ('rotate', 'translate_x', 'translate_y', 'shear_x', 'shear_y')

    def __init__(self,
                 flip_prob: float = 0.5,
                 affine_prob: float = 0.5,
                 op_prob: float = 0.5,
                 rotate: Sequence[float] = (-30.0, 30.0),
                 translate: Sequence[float] = (0.2, 0.2),
                 shear_x: Sequence[float] = (0.0, 15.0),
                 shear_y: Sequence[float] = (0.0, 15.0),
                 interpolation: str = 'bilinear',
                 fill: float = 0.0):
        super().__init__()
        for name, prob in (('flip_prob', flip_prob),
                           ('affine_prob', affine_prob),
                           ('op_prob', op_prob)):
            if not 0 <= prob <= 1:
                raise ValueError(f'{name} must be in [0, 1], got {prob}')
        if interpolation not in ('bilinear', 'nearest'):
            raise ValueError(f"interpolation must be 'bilinear' or "
                             f"'nearest', got {interpolation!r}")
        self.flip_prob, self.affine_prob = flip_prob, affine_prob
        self.op_prob, self.interpolation, self.fill = (op_prob, interpolation,
                                                       fill)
        self.rotate, self.translate = tuple(rotate), tuple(translate)
        self.shear_x, self.shear_y = tuple(shear_x), tuple(shear_y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, C, H, W)`` → the same shape."""
        num, height, width = len(x), x.shape[-2], x.shape[-1]
        flip = random_mask(num, self.flip_prob, x.device)
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        fire = random_mask(num, self.affine_prob, x.device)[:, None] & (
            torch.rand(num, len(self.OPS), device=x.device) < self.op_prob)
        u = torch.rand(num, len(self.OPS), device=x.device,
                       dtype=torch.float64)
        lows = u.new_tensor([self.rotate[0], -self.translate[0] * width,
                             -self.translate[1] * height, self.shear_x[0],
                             self.shear_y[0]])
        highs = u.new_tensor([self.rotate[1], self.translate[0] * width,
                              self.translate[1] * height, self.shear_x[1],
                              self.shear_y[1]])
        values = (lows + (highs - lows) * u).tolist()
        rows = fire.any(1).nonzero()[:, 0].tolist()
        if not rows:
            return x
        from torchvision.transforms.v2 import InterpolationMode
        from torchvision.transforms.v2 import functional as TF
        mode = InterpolationMode(self.interpolation)
        fired = fire.tolist()
        out = x.clone()
        for i in rows:
            sample = x[i]
            for op, on in enumerate(fired[i]):
                if not on:
                    continue
                angle, translate, shear = 0.0, [0, 0], [0.0, 0.0]
                value = values[i][op]
                if op == 0:
                    angle = value
                elif op in (1, 2):  # torchvision rounds shifts to pixels
                    translate[op - 1] = int(round(value))
                else:
                    shear[op - 3] = value
                sample = TF.affine(sample, angle=angle, translate=translate,
                                   scale=1.0, shear=shear,
                                   interpolation=mode, fill=self.fill)
            out[i] = sample
        return out


# --- CutMix / Mixup ----------------------------------------------------
@contextlib.contextmanager
def numpy_rng_from_torch(device: Optional[torch.device] = None):
    """Seed numpy's global RNG from one draw of torch's RNG (on ``device``)
    for the block, then restore numpy's state: numpy-based libraries (timm's
    ``Mixup``) then depend on torch's RNG only."""
    seed = int(torch.randint(0, 2**32 - 1, (1, ), device=device).item())
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


class EmbeddingMixup(nn.Module):
    """CutMix / Mixup of an embedding map with label smoothing: timm's
    ``Mixup`` (as SeiT / SeiT++ use it), with a random partner.

    timm mixes sample ``i`` with ``B-1-i`` (``flip(0)``); here the batch is
    shuffled by a random permutation first and un-shuffled after, so the
    partners are random and the output keeps the input order. timm's numpy
    draws are seeded from torch's RNG (:func:`numpy_rng_from_torch`).

    Args:
        num_classes: number of classes of the soft targets.
        mixup_alpha / cutmix_alpha / cutmix_minmax / prob / switch_prob /
            mode / label_smoothing / correct_lam: timm ``Mixup`` arguments.
            Defaults: SeiT++ fine-tuning's base half (``main_mtm_
            finetune.py``: CutMix 1.0, no mixup, smoothing 0.1).
    """

    def __init__(self,
                 num_classes: int,
                 mixup_alpha: float = 0.0,
                 cutmix_alpha: float = 1.0,
                 cutmix_minmax: Optional[Sequence[float]] = None,
                 prob: float = 1.0,
                 switch_prob: float = 0.5,
                 mode: str = 'batch',
                 label_smoothing: float = 0.1,
                 correct_lam: bool = True):
        super().__init__()
        from timm.data import Mixup
        if num_classes < 1:
            raise ValueError(f'num_classes must be >= 1, got {num_classes}')
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self.mixup = Mixup(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha,
                           cutmix_minmax=cutmix_minmax, prob=prob,
                           switch_prob=switch_prob, mode=mode,
                           correct_lam=correct_lam,
                           label_smoothing=label_smoothing,
                           num_classes=num_classes)

    def forward(self, x: torch.Tensor, labels: torch.Tensor):
        """``x`` ``(B, C, H, W)``, ``labels`` ``(B,)`` class ids →
        ``(mixed x, soft targets (B, num_classes) float)``; ``B`` must be
        even (timm pairs the samples)."""
        num = len(x)
        if num % 2:
            raise ValueError(f'CutMix / Mixup pairs samples: the batch (or '
                             f'its part) must be even, got {num}')
        if len(labels) != num:
            raise ValueError(f'{len(labels)} labels for {num} samples')
        if num == 0:
            return x, x.new_zeros(0, self.num_classes, dtype=torch.float)
        perm = torch.randperm(num, device=x.device)
        with numpy_rng_from_torch(x.device):
            mixed, target = self.mixup(x[perm], labels[perm])  # x[perm] copies
        inverse = torch.argsort(perm)
        return mixed[inverse], target[inverse]
