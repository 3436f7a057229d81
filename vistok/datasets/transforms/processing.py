"""Random square crops (mmcv has ``CenterCrop`` and ``Resize`` but no random
crop) and ADM's training crop. Randomness comes from the global
``np.random``, so the crops are reproducible under
:func:`vistok.utils.rng.seeded_rng` (see :mod:`vistok.datasets.base`).
Images are ``(H, W, C)`` or ``(H, W)`` arrays.
"""
import math
from typing import Sequence, Tuple

import mmcv
import numpy as np
from mmcv.transforms import BaseTransform
from mmcv.transforms.utils import cache_randomness

from vistok.registry import TRANSFORMS


def _crop(results: dict, x: int, y: int, w: int, h: int) -> None:
    results['img'] = results['img'][y:y + h, x:x + w]
    results['img_shape'] = (h, w)
    results['crop_bbox'] = np.array([x, y, x + w, y + h])


@TRANSFORMS.register_module()
class RandomCrop(BaseTransform):
    """Crop a random ``size`` x ``size`` window.

    Adds ``crop_bbox`` (``x0, y0, x1, y1``) and updates ``img`` and
    ``img_shape``. Raises ``ValueError`` when the image is smaller than the
    crop (put a ``Resize`` first).
    """

    def __init__(self, size: int):
        self.size = size

    @cache_randomness
    def _offset(self, height: int, width: int) -> Tuple[int, int]:
        return (np.random.randint(width - self.size + 1),
                np.random.randint(height - self.size + 1))

    def transform(self, results: dict) -> dict:
        height, width = results['img'].shape[:2]
        if height < self.size or width < self.size:
            raise ValueError(
                f'RandomCrop(size={self.size}) got a {height}x{width} image '
                f'({results.get("img_path", "no img_path")}); resize it first')
        x, y = self._offset(height, width)
        _crop(results, x, y, self.size, self.size)
        return results

    def __repr__(self):
        return f'{type(self).__name__}(size={self.size})'


@TRANSFORMS.register_module()
class RandomResizedCrop(BaseTransform):
    """Inception-style crop: a random area fraction and aspect ratio, resized
    to a ``size`` x ``size`` square (Szegedy et al., 2015; torchvision's
    algorithm, falling back to a central crop after ``max_attempts``).

    Args:
        size: output side.
        scale: range of the crop area as a fraction of the image area.
        ratio: range of the crop aspect ratio (width / height).
        max_attempts: rejection-sampling attempts before the fallback.
        interpolation, backend: ``mmcv.imresize`` options. The default PIL
            bicubic resize anti-aliases when downsampling; cv2 does not.
    """

    def __init__(self,
                 size: int,
                 scale: Sequence[float] = (0.08, 1.0),
                 ratio: Sequence[float] = (3 / 4, 4 / 3),
                 max_attempts: int = 10,
                 interpolation: str = 'bicubic',
                 backend: str = 'pillow'):
        self.size = size
        self.scale = tuple(scale)
        self.ratio = tuple(ratio)
        self.max_attempts = max_attempts
        self.interpolation = interpolation
        self.backend = backend

    @cache_randomness
    def _window(self, height: int, width: int) -> Tuple[int, int, int, int]:
        area = height * width
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(self.max_attempts):
            target_area = area * np.random.uniform(*self.scale)
            aspect = math.exp(np.random.uniform(*log_ratio))
            w = round(math.sqrt(target_area * aspect))
            h = round(math.sqrt(target_area / aspect))
            if 0 < w <= width and 0 < h <= height:
                return (np.random.randint(width - w + 1),
                        np.random.randint(height - h + 1), w, h)
        aspect = min(max(width / height, self.ratio[0]), self.ratio[1])
        w = min(width, round(height * aspect))
        h = min(height, round(width / aspect))
        return (width - w) // 2, (height - h) // 2, w, h

    def transform(self, results: dict) -> dict:
        height, width = results['img'].shape[:2]
        _crop(results, *self._window(height, width))
        results['img'] = mmcv.imresize(
            results['img'], (self.size, self.size),
            interpolation=self.interpolation, backend=self.backend)
        results['img_shape'] = (self.size, self.size)
        return results

    def __repr__(self):
        return (f'{type(self).__name__}(size={self.size}, scale={self.scale}, '
                f'ratio={self.ratio}, interpolation={self.interpolation!r}, '
                f'backend={self.backend!r})')


@TRANSFORMS.register_module()
class ResizeShortEdge(BaseTransform):
    """Resize so that the shorter side is ``size`` and the longer side is
    ``int(size * long / short)`` (truncated, not rounded), exactly
    torchvision's ``Resize(int)`` (``_compute_resized_output_size``); an
    image already of that size is returned unchanged, as torchvision (and
    PIL) do. On PIL with the default bicubic filter it equals torchvision's
    ``Resize(size, BICUBIC, antialias=True)`` on a PIL image bit for bit
    (PIL anti-aliases when downsampling): the first op of TiTok's training
    and evaluation transforms (bytedance/1d-tokenizer
    ``data/webdataset_reader.py`` ``ImageTransform``) and of the standard
    ImageNet evaluation protocol (before a centre crop).

    Args:
        size: target length of the shorter side.
        interpolation, backend: ``mmcv.imresize`` options (default PIL
            bicubic, the filter of TiTok's / LlamaGen's evaluation).
    """

    def __init__(self, size: int, interpolation: str = 'bicubic',
                 backend: str = 'pillow'):
        self.size = size
        self.interpolation = interpolation
        self.backend = backend

    def transform(self, results: dict) -> dict:
        height, width = results['img'].shape[:2]
        short, long = min(height, width), max(height, width)
        new_long = int(self.size * long / short)  # torchvision's rounding
        new_w, new_h = ((self.size, new_long) if width <= height else
                        (new_long, self.size))
        if (new_h, new_w) != (height, width):
            results['img'] = mmcv.imresize(
                results['img'], (new_w, new_h),
                interpolation=self.interpolation, backend=self.backend)
        results['img_shape'] = (new_h, new_w)
        return results

    def __repr__(self):
        return (f'{type(self).__name__}(size={self.size}, interpolation='
                f'{self.interpolation!r}, backend={self.backend!r})')


@TRANSFORMS.register_module()
class ADMRandomCrop(BaseTransform):
    """ADM's training crop (Dhariwal & Nichol 2021, guided-diffusion
    ``image_datasets.random_crop_arr``; the ImageNet recipe of LlamaGen and
    ImageFolder): draw the shorter side uniformly from the integers
    ``[ceil(size / max_crop_frac), ceil(size / min_crop_frac)]`` (256 px:
    256…320), halve the image with a box filter while its shorter side is
    at least twice that, resize it (PIL bicubic) to that shorter side, and
    take a random ``size`` × ``size`` crop (row offset drawn first, as ADM).

    Args:
        size: output side.
        min_crop_frac, max_crop_frac: ADM's crop fractions (0.8, 1.0).
    """

    def __init__(self, size: int, min_crop_frac: float = 0.8,
                 max_crop_frac: float = 1.0):
        if not 0 < min_crop_frac <= max_crop_frac <= 1:
            raise ValueError(f'need 0 < min_crop_frac <= max_crop_frac <= 1, '
                             f'got {min_crop_frac}, {max_crop_frac}')
        self.size = size
        self.min_crop_frac = min_crop_frac
        self.max_crop_frac = max_crop_frac
        self.short_side_range = (math.ceil(size / max_crop_frac),
                                 math.ceil(size / min_crop_frac))

    @cache_randomness
    def _short_side(self) -> int:
        low, high = self.short_side_range
        return int(np.random.randint(low, high + 1))

    @cache_randomness
    def _offset(self, height: int, width: int) -> Tuple[int, int]:
        crop_y = np.random.randint(height - self.size + 1)
        return np.random.randint(width - self.size + 1), crop_y

    def transform(self, results: dict) -> dict:
        short = self._short_side()
        img = results['img']
        while min(img.shape[:2]) >= 2 * short:
            img = mmcv.imresize(img, (img.shape[1] // 2, img.shape[0] // 2),
                                interpolation='box', backend='pillow')
        height, width = img.shape[:2]
        scale = short / min(height, width)
        new_w, new_h = round(width * scale), round(height * scale)
        results['img'] = mmcv.imresize(img, (new_w, new_h),
                                       interpolation='bicubic',
                                       backend='pillow')
        x, y = self._offset(new_h, new_w)
        _crop(results, x, y, self.size, self.size)
        return results

    def __repr__(self):
        return (f'{type(self).__name__}(size={self.size}, min_crop_frac='
                f'{self.min_crop_frac}, max_crop_frac={self.max_crop_frac})')

