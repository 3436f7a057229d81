"""Batched geometric augmentation defined independently of resolution: a
flip, an affine map (rotation, translation, shear) and a crop box, all in
relative coordinates, applied by one ``grid_sample`` per batch.

Because the parameters are relative, the same draw applied to an image at
256 px and to a feature map at 64 px transforms both in the same way; this
is what training TokenAdapt needs (SeiT++, Lee et al., ECCV 2024: the pixel
augmentation A of an image and the same A in the f-space of its tokens).

Conventions: coordinates are normalised to ``[-1, 1]`` over the image
(``grid_sample`` with ``align_corners=False``: pixel centres at
``(2i + 1) / n - 1``), scaled by the aspect ratio so that rotations are
rotations on screen. Applying :class:`AffineCropParams` to an image means:
flip it horizontally (when ``flip``), then rotate it by ``angle`` degrees
counter-clockwise on screen about its centre, shear it by ``shear``
degrees (x then y), translate it by ``translate`` (fractions of its width
and height; +x right, +y down), and finally take the crop ``box`` (top,
left, height, width as fractions of the transformed image) resized to the
output size. Points that fall outside the source are filled with
``fill``.
"""
import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

INTERPOLATIONS = ('nearest', 'bilinear', 'bicubic')


@dataclass
class AffineCropParams:
    """Per-sample parameters (see the module docstring); every field has
    the batch as its first axis."""
    flip: torch.Tensor  # (B,) bool
    angle: torch.Tensor  # (B,) degrees, counter-clockwise on screen
    translate: torch.Tensor  # (B, 2) fractions of width, height
    shear: torch.Tensor  # (B, 2) degrees, x then y
    box: torch.Tensor  # (B, 4) top, left, height, width in [0, 1]

    @classmethod
    def identity(cls, batch: int, device=None) -> 'AffineCropParams':
        zeros = torch.zeros(batch, device=device)
        box = torch.tensor([0.0, 0.0, 1.0, 1.0], device=device)
        return cls(flip=zeros.bool(), angle=zeros.clone(),
                   translate=torch.zeros(batch, 2, device=device),
                   shear=torch.zeros(batch, 2, device=device),
                   box=box.expand(batch, 4).clone())


def random_resized_box(batch: int, scale: Sequence[float] = (0.08, 1.0),
                       ratio: Sequence[float] = (3 / 4, 4 / 3),
                       aspect: float = 1.0, tries: int = 10,
                       generator: Optional[torch.Generator] = None
                       ) -> torch.Tensor:
    """``(B, 4)`` relative boxes of RandomResizedCrop (Szegedy et al.
    2015; torchvision's rule in relative units): area fraction uniform in
    ``scale``, aspect ratio log-uniform in ``ratio``, ``tries`` attempts,
    then the whole image clipped to ``ratio`` (centre). ``aspect`` is the
    image's width / height."""
    boxes = torch.empty(batch, 4)
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for b in range(batch):
        for _ in range(tries):
            area = float(torch.empty(1).uniform_(*scale,
                                                 generator=generator))
            r = math.exp(float(torch.empty(1).uniform_(*log_ratio,
                                                       generator=generator)))
            # on screen: width / height = r; relative units divide by aspect
            w = math.sqrt(area * r / aspect)
            h = math.sqrt(area / r * aspect)
            if 0 < w <= 1 and 0 < h <= 1:
                top = float(torch.rand(1, generator=generator)) * (1 - h)
                left = float(torch.rand(1, generator=generator)) * (1 - w)
                boxes[b] = torch.tensor([top, left, h, w])
                break
        else:
            screen = aspect
            if screen < ratio[0]:
                w, h = 1.0, min(1.0, aspect / ratio[0])
            elif screen > ratio[1]:
                w, h = min(1.0, ratio[1] / aspect), 1.0
            else:
                w, h = 1.0, 1.0
            boxes[b] = torch.tensor([(1 - h) / 2, (1 - w) / 2, h, w])
    return boxes


def sample_affine_crop(batch: int, flip_prob: float = 0.5,
                       affine_prob: float = 0.5, op_prob: float = 0.5,
                       rotate: Sequence[float] = (-30.0, 30.0),
                       translate: Sequence[float] = (0.2, 0.2),
                       shear_x: Sequence[float] = (0.0, 15.0),
                       shear_y: Sequence[float] = (0.0, 15.0),
                       scale: Sequence[float] = (0.2, 1.0),
                       ratio: Sequence[float] = (3 / 4, 4 / 3),
                       aspect: float = 1.0,
                       generator: Optional[torch.Generator] = None
                       ) -> AffineCropParams:
    """Random parameters of SeiT++'s TokenAdapt augmentation, with the
    options and draws of
    :class:`~vistok.models.data_preprocessors.token_augment.RandomFlipAffine`
    (the released ``build_geo_transform(is_tokenadapt=True)``) followed by
    a RandomResizedCrop box (``scale``, ``ratio``;
    :func:`random_resized_box`): a horizontal flip with ``flip_prob``;
    with ``affine_prob`` the ops rotate (``U(rotate)`` degrees), translate
    x / y (``U(±translate)`` fractions), shear x / y (``U(shear_x)`` /
    ``U(shear_y)`` degrees), each on its own with ``op_prob``. Unlike
    ``RandomFlipAffine`` (one resampling per op, integer pixel shifts, as
    released) the ops compose into one map in relative units, so the same
    draw applies at any resolution (:func:`apply_affine_crop`)."""

    def uniform(bounds, n=1):
        low, high = bounds
        return low + torch.rand(batch, n, generator=generator) * (high - low)

    flip = torch.rand(batch, generator=generator) < flip_prob
    apply = torch.rand(batch, generator=generator) < affine_prob

    def gate(values):
        on = torch.rand(values.shape, generator=generator) < op_prob
        return values * (on & apply[:, None])

    angle = gate(uniform(rotate)).squeeze(1)
    moves = gate(torch.cat([uniform((-translate[0], translate[0])),
                            uniform((-translate[1], translate[1]))], 1))
    shears = gate(torch.cat([uniform(shear_x), uniform(shear_y)], 1))
    box = random_resized_box(batch, scale, ratio, aspect,
                             generator=generator)
    return AffineCropParams(flip=flip, angle=angle, translate=moves,
                            shear=shears, box=box)


def center_box(batch: int, fraction: float) -> torch.Tensor:
    """``(B, 4)`` centred boxes covering ``fraction`` of each side."""
    margin = (1 - fraction) / 2
    return torch.tensor([margin, margin, fraction,
                         fraction]).expand(batch, 4).clone()


def sampling_matrix(params: AffineCropParams, aspect: float) -> torch.Tensor:
    """``(B, 2, 3)`` ``theta`` for ``F.affine_grid``: output coordinates of
    the crop → source coordinates (normalised), for images of width /
    height ``aspect``."""
    batch = params.angle.shape[0]
    device = params.angle.device
    dtype = torch.float64

    def mat(rows):
        out = torch.zeros(batch, 3, 3, dtype=dtype, device=device)
        out[:, 2, 2] = 1
        for (i, j), value in rows.items():
            out[:, i, j] = value
        return out

    one = torch.ones(batch, dtype=dtype, device=device)
    top, left, height, width = params.box.to(dtype).unbind(1)
    # crop: output [-1, 1] -> box in the transformed image
    crop = mat({(0, 0): width, (0, 2): 2 * left + width - 1,
                (1, 1): height, (1, 2): 2 * top + height - 1})
    # normalised -> square (screen) coordinates and back
    to_screen = mat({(0, 0): aspect * one, (1, 1): one})
    from_screen = mat({(0, 0): one / aspect, (1, 1): one})
    angle = torch.deg2rad(params.angle.to(dtype))
    cos, sin = torch.cos(angle), torch.sin(angle)
    # counter-clockwise on screen with y pointing down
    rotation = mat({(0, 0): cos, (0, 1): sin, (1, 0): -sin, (1, 1): cos})
    shear_x, shear_y = torch.deg2rad(params.shear.to(dtype)).unbind(1)
    shear = mat({(0, 0): one, (0, 1): torch.tan(shear_x),
                 (1, 0): torch.tan(shear_y), (1, 1): one})
    tx, ty = (2 * params.translate.to(dtype)).unbind(1)
    translate = mat({(0, 0): one, (0, 2): tx, (1, 1): one, (1, 2): ty})
    forward = translate @ from_screen @ shear @ rotation @ to_screen
    flip = mat({(0, 0): torch.where(params.flip.to(device), -one, one),
                (1, 1): one})
    theta = flip @ torch.linalg.inv(forward) @ crop
    return theta[:, :2].float()


def apply_affine_crop(x: torch.Tensor, params: AffineCropParams,
                      size: Tuple[int, int], mode: str = 'bilinear',
                      fill: float = 0.0) -> torch.Tensor:
    """Apply ``params`` to ``x`` ``(B, C, H, W)`` (float) and resample to
    ``size`` ``(h, w)`` with ``mode`` (``'nearest'``, ``'bilinear'``,
    ``'bicubic'``); see the module docstring for the order of the
    operations."""
    if mode not in INTERPOLATIONS:
        raise ValueError(f'mode must be one of {INTERPOLATIONS}, got '
                         f'{mode!r}')
    if x.dim() != 4 or x.shape[0] != params.angle.shape[0]:
        raise ValueError(f'x must be (B, C, H, W) with B = '
                         f'{params.angle.shape[0]} parameter sets, got shape '
                         f'{tuple(x.shape)}')
    aspect = x.shape[-1] / x.shape[-2]
    theta = sampling_matrix(params, aspect).to(x.device)
    grid = F.affine_grid(theta, [x.shape[0], x.shape[1], *size],
                         align_corners=False)
    return F.grid_sample(x - fill, grid.to(x.dtype), mode=mode,
                         padding_mode='zeros', align_corners=False) + fill
