"""Augmentations of EM volumes and the final packing transform.

The results dict holds ``raw`` (``(D, H, W)`` float32 in ``[0, 1]``) and
optionally ``labels`` (``(D, H, W)`` int64), as produced by
:class:`~vistok.datasets.em.volume_dataset.EMVolumeDataset`. Geometric
transforms move ``raw`` and ``labels`` identically (labels are never
interpolated); they must come before
:class:`~vistok.datasets.em.affinity.GenerateAffinities`. Intensity and
artefact transforms change ``raw`` only: the ground truth stays that of the
tissue.

The set follows the EM augmentations of Lee et al., 2017 ("Superhuman
accuracy on the SNEMI3D connectomics challenge") as packaged by
pytorch_connectomics and used by TokenUnify: flips / transposes,
rotations, grey-value jitter, elastic warps, missing sections,
misalignment and motion blur; plus TokenUnify's pre-training input
perturbations (Gaussian noise, Gaussian blur, cutout: from dbMiM, see
below). Randomness comes from the global
``np.random`` so that :class:`vistok.datasets.base.SeededDatasetMixin`
makes it a function of the draw's seed.
"""
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from mmcv.transforms import BaseTransform
from mmcv.transforms.utils import cache_randomness
from scipy import ndimage

from vistok.registry import TRANSFORMS
from vistok.structures import DataSample

#: keys of ``(D, H, W)`` volumes moved by geometric transforms
#: (``raw_target``: the unperturbed raw, see :func:`keep_raw_target`)
VOLUME_KEYS = ('raw', 'raw_target', 'labels')
#: keys of ``(C, D, H, W)`` affinity maps (after ``GenerateAffinities``)
AFFINITY_KEYS = ('gt_affinity', 'affinity_mask')


def _check_geometric(results: dict, name: str) -> None:
    if 'raw' not in results:
        raise KeyError(f'{name} needs `raw` in the results')
    if any(key in results for key in AFFINITY_KEYS):
        raise RuntimeError(
            f'{name} moves voxels but the results already hold affinities; '
            f'put GenerateAffinities after the geometric augmentations')


def _swap_yx(results: dict) -> None:
    """Keep ``crop_size`` / ``padding`` consistent after a y/x swap."""
    for key in ('crop_size', 'padding'):
        if key in results:
            z, y, x = results[key]
            results[key] = (z, x, y)


def _shift_yx(volume: np.ndarray, dy: int, dx: int, fill) -> np.ndarray:
    """``out[..., y, x] = volume[..., y - dy, x - dx]``, ``fill`` where
    that is outside."""
    height, width = volume.shape[-2:]
    out = np.full_like(volume, fill)
    dst = (slice(max(dy, 0), height + min(dy, 0)),
           slice(max(dx, 0), width + min(dx, 0)))
    src = (slice(max(-dy, 0), height + min(-dy, 0)),
           slice(max(-dx, 0), width + min(-dx, 0)))
    out[(Ellipsis, *dst)] = volume[(Ellipsis, *src)]
    return out


@TRANSFORMS.register_module()
class EMRandomFlip(BaseTransform):
    """Flip along z, y and x and transpose y / x, each independently with
    probability ``prob``: the 16 symmetries of an anisotropic volume
    (z stays z).

    Args:
        prob: probability of each of the four operations.
        flip_z, flip_y, flip_x, transpose_yx: enable each operation.
    """

    def __init__(self, prob: float = 0.5, flip_z: bool = True,
                 flip_y: bool = True, flip_x: bool = True,
                 transpose_yx: bool = True):
        self.prob = prob
        self.enabled = np.array([flip_z, flip_y, flip_x, transpose_yx])

    @cache_randomness
    def _draw(self) -> np.ndarray:
        return (np.random.rand(4) < self.prob) & self.enabled

    def transform(self, results: dict) -> dict:
        _check_geometric(results, type(self).__name__)
        flip_z, flip_y, flip_x, transpose = self._draw()
        index = (slice(None, None, -1 if flip_z else 1),
                 slice(None, None, -1 if flip_y else 1),
                 slice(None, None, -1 if flip_x else 1))
        for key in VOLUME_KEYS:
            if key in results:
                volume = results[key][index]
                if transpose:
                    volume = volume.transpose(0, 2, 1)
                results[key] = np.ascontiguousarray(volume)
        if transpose:
            _swap_yx(results)
        return results

    def __repr__(self):
        flags = dict(zip(('flip_z', 'flip_y', 'flip_x', 'transpose_yx'),
                         self.enabled.tolist()))
        return f'{type(self).__name__}(prob={self.prob}, {flags})'


@TRANSFORMS.register_module()
class EMRandomRotate90(BaseTransform):
    """With probability ``prob``, rotate in-plane (y, x) by ``k`` x 90
    degrees, ``k`` uniform in {1, 2, 3}."""

    def __init__(self, prob: float = 0.5):
        self.prob = prob

    @cache_randomness
    def _draw(self) -> int:
        apply = np.random.rand() < self.prob
        k = int(np.random.randint(1, 4))
        return k if apply else 0

    def transform(self, results: dict) -> dict:
        _check_geometric(results, type(self).__name__)
        k = self._draw()
        for key in VOLUME_KEYS:
            if key in results:
                results[key] = np.ascontiguousarray(
                    np.rot90(results[key], k, axes=(1, 2)))
        if k % 2:
            _swap_yx(results)
        return results

    def __repr__(self):
        return f'{type(self).__name__}(prob={self.prob})'


@TRANSFORMS.register_module()
class EMElasticDeform(BaseTransform):
    """Small in-plane elastic deformation (Simard et al., 2003): a
    displacement field of uniform(-1, 1) noise smoothed by a Gaussian of
    ``sigma`` pixels and scaled by ``alpha``, the same for every slice
    (sections deform, the stack does not shear). ``raw`` is resampled
    linearly, ``labels`` by nearest neighbour (``scipy.ndimage
    .map_coordinates``); mirrored at the borders.

    Args:
        alpha: displacement scale in pixels (TokenUnify's config: 16).
        sigma: smoothing of the field in pixels (TokenUnify's config: 4).
        prob: probability of applying it.
    """

    def __init__(self, alpha: float = 16.0, sigma: float = 4.0,
                 prob: float = 0.5):
        self.alpha = alpha
        self.sigma = sigma
        self.prob = prob

    @cache_randomness
    def _field(self, height: int, width: int) -> Optional[np.ndarray]:
        if np.random.rand() >= self.prob:
            return None
        noise = np.random.uniform(-1, 1, (2, height, width))
        return np.stack([ndimage.gaussian_filter(n, self.sigma) * self.alpha
                         for n in noise])

    def transform(self, results: dict) -> dict:
        _check_geometric(results, type(self).__name__)
        height, width = results['raw'].shape[1:]
        field = self._field(height, width)
        if field is None:
            return results
        coords = np.mgrid[:height, :width].astype(np.float64) + field
        for key, order in (('raw', 1), ('raw_target', 1), ('labels', 0)):
            if key in results:
                volume = results[key]
                results[key] = np.stack([
                    ndimage.map_coordinates(section, coords, order=order,
                                            mode='reflect')
                    for section in volume]).astype(volume.dtype)
        return results

    def __repr__(self):
        return (f'{type(self).__name__}(alpha={self.alpha}, '
                f'sigma={self.sigma}, prob={self.prob})')


@TRANSFORMS.register_module()
class EMMisalignment(BaseTransform):
    """Section misalignment: with probability ``prob``, shift in-plane by
    ``(dy, dx)`` (each uniform in ``[-max_shift, max_shift]``) either one
    section (a "slip", probability ``slip_prob``) or every section from a
    random z on (a translation). ``raw`` and ``labels`` move together (the
    labels follow the tissue); uncovered voxels get 0 (raw) and 0
    (unlabelled). Read a context ``padding >= max_shift`` and crop it away
    afterwards (:class:`EMCenterCrop`) to keep them out of the sample.

    Args:
        max_shift: largest shift in pixels.
        slip_prob: probability that only one section moves.
        prob: probability of applying it.
    """

    def __init__(self, max_shift: int = 8, slip_prob: float = 0.5,
                 prob: float = 0.5):
        self.max_shift = int(max_shift)
        self.slip_prob = slip_prob
        self.prob = prob

    @cache_randomness
    def _draw(self, depth: int) -> Optional[Tuple[int, int, int, int]]:
        apply = np.random.rand() < self.prob
        slip = np.random.rand() < self.slip_prob
        dy, dx = np.random.randint(-self.max_shift, self.max_shift + 1, 2)
        position = np.random.rand()
        if not apply:
            return None
        if slip:
            start = int(position * depth)
            return start, start + 1, int(dy), int(dx)
        if depth < 2:  # nothing to misalign against
            return None
        return 1 + int(position * (depth - 1)), depth, int(dy), int(dx)

    def transform(self, results: dict) -> dict:
        _check_geometric(results, type(self).__name__)
        draw = self._draw(results['raw'].shape[0])
        if draw is None:
            return results
        start, stop, dy, dx = draw
        for key in VOLUME_KEYS:
            if key in results:
                volume = results[key].copy()
                volume[start:stop] = _shift_yx(volume[start:stop], dy, dx, 0)
                results[key] = volume
        return results

    def __repr__(self):
        return (f'{type(self).__name__}(max_shift={self.max_shift}, '
                f'slip_prob={self.slip_prob}, prob={self.prob})')


@TRANSFORMS.register_module()
class EMCenterCrop(BaseTransform):
    """Centre-crop ``raw``, ``labels`` and any affinity maps to ``size``
    (default ``results['crop_size']``), removing the context ``padding``
    that :class:`~vistok.datasets.em.volume_dataset.EMVolumeDataset` read
    around the crop; sets ``padding`` to zeros."""

    def __init__(self, size: Optional[Sequence[int]] = None):
        self.size = None if size is None else tuple(int(s) for s in size)

    def transform(self, results: dict) -> dict:
        size = self.size or tuple(results['crop_size'])
        shape = results['raw'].shape
        if any(s > d for s, d in zip(size, shape)):
            raise ValueError(f'EMCenterCrop(size={size}) is larger than the '
                             f'volume {shape}')
        start = [(d - s) // 2 for s, d in zip(size, shape)]
        window = tuple(slice(b, b + s) for b, s in zip(start, size))
        for key in VOLUME_KEYS + AFFINITY_KEYS:
            if key in results:
                results[key] = np.ascontiguousarray(
                    results[key][(Ellipsis, *window)])
        results['padding'] = (0, 0, 0)
        return results

    def __repr__(self):
        return f'{type(self).__name__}(size={self.size})'


@TRANSFORMS.register_module()
class EMIntensityJitter(BaseTransform):
    """Grey-value jitter of ``raw``: ``clip((raw - 0.5) * c + 0.5 + b, 0,
    1) ** g`` with contrast ``c`` and brightness ``b`` uniform in their
    ranges and gamma ``g`` log-uniform in its range, drawn once for the
    volume or per section.

    Args:
        contrast, brightness, gamma: ``(low, high)`` ranges.
        per_section: draw ``c, b, g`` for each z-section separately.
        prob: probability of applying it.
    """

    def __init__(self,
                 contrast: Sequence[float] = (0.75, 1.25),
                 brightness: Sequence[float] = (-0.15, 0.15),
                 gamma: Sequence[float] = (0.75, 1.33),
                 per_section: bool = False,
                 prob: float = 0.5):
        self.contrast = tuple(contrast)
        self.brightness = tuple(brightness)
        self.gamma = tuple(gamma)
        self.per_section = per_section
        self.prob = prob

    @cache_randomness
    def _draw(self, depth: int):
        apply = np.random.rand() < self.prob
        n = depth if self.per_section else 1
        contrast = np.random.uniform(*self.contrast, n)
        brightness = np.random.uniform(*self.brightness, n)
        gamma = np.exp(np.random.uniform(*np.log(self.gamma), n))
        if not apply:
            return None
        return [v.astype(np.float32)[:, None, None]
                for v in (contrast, brightness, gamma)]

    def transform(self, results: dict) -> dict:
        draw = self._draw(results['raw'].shape[0])
        if draw is not None:
            contrast, brightness, gamma = draw
            raw = (results['raw'] - 0.5) * contrast + 0.5 + brightness
            results['raw'] = np.clip(raw, 0, 1, dtype=np.float32)**gamma
        return results

    def __repr__(self):
        return (f'{type(self).__name__}(contrast={self.contrast}, '
                f'brightness={self.brightness}, gamma={self.gamma}, '
                f'per_section={self.per_section}, prob={self.prob})')


@TRANSFORMS.register_module()
class EMMissingSection(BaseTransform):
    """Missing sections: with probability ``prob``, ``num_sections``
    distinct random z-sections of ``raw`` are filled with ``fill_value``
    (``mode='constant'``, a lost section) or replaced by their neighbour
    (``mode='previous'``: the previous section, the next one for z = 0; a
    section duplicated by the acquisition). Labels are unchanged.
    """

    MODES = ('constant', 'previous')

    def __init__(self, num_sections: int = 1, mode: str = 'constant',
                 fill_value: float = 0.0, prob: float = 0.5):
        if mode not in self.MODES:
            raise ValueError(f'mode={mode!r}; choose from {self.MODES}')
        self.num_sections = int(num_sections)
        self.mode = mode
        self.fill_value = fill_value
        self.prob = prob

    @cache_randomness
    def _draw(self, depth: int) -> Optional[np.ndarray]:
        apply = np.random.rand() < self.prob
        sections = np.random.permutation(depth)[:self.num_sections]
        return np.sort(sections) if apply else None

    def transform(self, results: dict) -> dict:
        raw = results['raw']
        sections = self._draw(raw.shape[0])
        if sections is None:
            return results
        raw = raw.copy()
        for z in sections:
            if self.mode == 'constant':
                raw[z] = self.fill_value
            elif raw.shape[0] > 1:
                raw[z] = results['raw'][z - 1 if z > 0 else 1]
        results['raw'] = raw
        return results

    def __repr__(self):
        return (f'{type(self).__name__}(num_sections={self.num_sections}, '
                f'mode={self.mode!r}, fill_value={self.fill_value}, '
                f'prob={self.prob})')


@TRANSFORMS.register_module()
class EMMotionBlur(BaseTransform):
    """In-plane motion blur of one (or ``num_sections``) random z-sections
    of ``raw``: a box filter of odd length uniform in ``kernel_size``
    along y or x (random), mirrored at the borders. Labels are unchanged.
    """

    def __init__(self, kernel_size: Sequence[int] = (3, 11),
                 num_sections: int = 1, prob: float = 0.5):
        low, high = (int(k) for k in kernel_size)
        if low < 1 or low // 2 > (high - 1) // 2:
            raise ValueError(f'kernel_size must be (low, high) with 1 <= low '
                             f'and an odd length in between, got '
                             f'{tuple(kernel_size)}')
        self.kernel_size = (low, high)
        self.num_sections = int(num_sections)
        self.prob = prob

    @cache_randomness
    def _draw(self, depth: int):
        apply = np.random.rand() < self.prob
        sections = np.random.permutation(depth)[:self.num_sections]
        low, high = self.kernel_size
        sizes = 2 * np.random.randint(low // 2, (high - 1) // 2 + 1,
                                      len(sections)) + 1
        axes = np.random.randint(1, 3, len(sections))
        return list(zip(sections, sizes, axes)) if apply else []

    def transform(self, results: dict) -> dict:
        draws = self._draw(results['raw'].shape[0])
        if draws:
            raw = results['raw'].copy()
            for z, size, axis in draws:
                raw[z] = ndimage.uniform_filter1d(
                    raw[z], int(size), axis=int(axis) - 1, mode='mirror')
            results['raw'] = raw
        return results

    def __repr__(self):
        return (f'{type(self).__name__}(kernel_size={self.kernel_size}, '
                f'num_sections={self.num_sections}, prob={self.prob})')


@TRANSFORMS.register_module()
class PackEMInputs(BaseTransform):
    """Pack an EM sample into ``dict(inputs=..., data_samples=...)``.

    * ``inputs``: ``results['raw']`` as a float32 ``(1, D, H, W)`` tensor.
    * ``data_samples``: a :class:`vistok.structures.DataSample` with, when
      present, ``gt_affinity`` and ``affinity_mask`` (float32
      ``(C, D, H, W)``), ``gt_label`` (int64 ``(D, H, W)``, from
      ``labels``), ``gt_volume`` (float32 ``(1, D, H, W)``, from
      ``raw_target``: the unperturbed input of a pipeline with input
      perturbations) and the metainfo ``meta_keys`` that ``results`` has.

    :class:`vistok.models.data_preprocessors.volume.VolumeDataPreprocessor`
    stacks the inputs into ``(B, 1, D, H, W)``.
    """

    def __init__(self,
                 meta_keys: Sequence[str] = ('sample_idx', 'volume_name',
                                             'crop_origin', 'crop_size',
                                             'volume_shape')):
        self.meta_keys = tuple(meta_keys)

    def transform(self, results: dict) -> dict:
        raw = np.ascontiguousarray(results['raw'], dtype=np.float32)
        data_sample = DataSample()
        for key in AFFINITY_KEYS:
            if key in results:
                data_sample.set_field(torch.from_numpy(
                    np.ascontiguousarray(results[key], dtype=np.float32)),
                    key)
        if 'labels' in results:
            data_sample.gt_label = torch.from_numpy(
                np.ascontiguousarray(results['labels'], dtype=np.int64))
        if 'raw_target' in results:
            target = np.ascontiguousarray(results['raw_target'],
                                          dtype=np.float32)
            if target.shape != raw.shape:
                raise ValueError(f'raw_target has shape {target.shape} but '
                                 f'raw {raw.shape}: a transform changed '
                                 f'one without the other')
            data_sample.gt_volume = torch.from_numpy(target)[None]
        data_sample.set_metainfo(
            {k: results[k] for k in self.meta_keys if k in results})
        return dict(inputs=torch.from_numpy(raw)[None],
                    data_samples=data_sample)

    def __repr__(self):
        return f'{type(self).__name__}(meta_keys={self.meta_keys})'


# --- pre-training input perturbations ---------------------------------------
# TokenUnify's pre-training providers (``dataloader/data_provider_pretraining
# .py`` and ``..._autoregress.py``, ydchen0806/TokenUnify@221674f) perturb
# the input (never the target) with ``if random.random() > 0.5:
# apply_perturbations(...)``, which picks ONE of the enabled perturbations
# uniformly (``random.choice``); only Gaussian noise, Gaussian blur and
# cutout can be enabled, by ``config/pretraining_all.yaml``. TokenUnify's
# release lacks that config and the module implementing them
# (``utils/consistency_aug_perturbations.py``); the numbers below are
# therefore **from dbMiM, not TokenUnify's release**: the same author's
# ydchen0806/dbMiM ships both (module at commit 939d70f, config
# ``config/pretraining_all.yaml`` at commit fdd9443; both deleted in later
# commits).
#
# The target stays clean: every perturbation first records the unperturbed
# ``raw`` as ``raw_target`` (:func:`keep_raw_target`, also when it does not
# fire, so every sample of the pipeline has one); geometric transforms move
# both; :class:`PackEMInputs` packs it as ``gt_volume``, the pre-trainer's
# regression target.

#: dbMiM ``pretraining_all.yaml``: ``min_noise_std`` / ``max_noise_std``
DBMIM_NOISE_STD = (0.01, 0.2)
#: dbMiM ``pretraining_all.yaml``: ``min_kernel_size`` / ``max_kernel_size``
DBMIM_BLUR_KERNEL = (3, 9)
#: dbMiM ``pretraining_all.yaml``: ``min_sigma`` / ``max_sigma``
DBMIM_BLUR_SIGMA = (0.0, 2.0)
#: dbMiM ``Cutout`` for every ``model_type`` but ``'mala'`` (its
#: ``pretraining_all.yaml`` has ``model_type: 'SWINUNETR'``): box sizes
#: z in [5, 10], y = x in [10, 20], 60 to 100 boxes, all inclusive
DBMIM_CUTOUT_SIZE_Z = (5, 10)
DBMIM_CUTOUT_SIZE_YX = (10, 20)
DBMIM_CUTOUT_COUNT = (60, 100)
#: OpenCV's fixed kernels for ``sigma <= 0`` (``cv::getGaussianKernel``,
#: opencv-python 5.0 as pinned; checked in the tests); other sizes use
#: OpenCV's ``sigma = 0.3 * ((ksize - 1) / 2 - 1) + 0.8``
_CV2_SMALL_KERNELS = {
    1: (1.0, ),
    3: (0.25, 0.5, 0.25),
    5: (0.0625, 0.25, 0.375, 0.25, 0.0625),
    7: (0.03125, 0.109375, 0.21875, 0.28125, 0.21875, 0.109375, 0.03125),
    9: (0.015625, 0.05078125, 0.1171875, 0.19921875, 0.234375, 0.19921875,
        0.1171875, 0.05078125, 0.015625),
}


def _check_range(value, name: str, low_bound: float = 0.0) -> tuple:
    pair = tuple(value) if isinstance(value, (list, tuple)) else None
    if (pair is None or len(pair) != 2 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool)
            for v in pair) or not low_bound <= pair[0] <= pair[1]):
        raise ValueError(f'{name} must be a (low, high) pair with '
                         f'{low_bound} <= low <= high, got {value!r}')
    return pair


def _check_prob(prob) -> float:
    if isinstance(prob, bool) or not 0.0 <= prob <= 1.0:
        raise ValueError(f'prob must be in [0, 1], got {prob!r}')
    return float(prob)


def keep_raw_target(results: dict) -> None:
    """Record the unperturbed ``raw`` as ``raw_target`` unless an earlier
    perturbation did (no copy: perturbations write new arrays)."""
    if 'raw' not in results:
        raise KeyError('input perturbations need `raw` in the results')
    results.setdefault('raw_target', results['raw'])


def gaussian_kernel_1d(size: int, sigma: float) -> np.ndarray:
    """OpenCV's ``getGaussianKernel(size, sigma)``: normalised
    ``exp(-(i - (size - 1) / 2)**2 / (2 sigma**2))``; for ``sigma <= 0``
    OpenCV's fixed kernels (``size <= 9``) or ``sigma = 0.3 * ((size - 1)
    / 2 - 1) + 0.8``."""
    if sigma <= 0:
        if size in _CV2_SMALL_KERNELS:
            return np.array(_CV2_SMALL_KERNELS[size])
        sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8
    x = np.arange(size) - (size - 1) / 2
    kernel = np.exp(-x**2 / (2 * sigma * sigma))
    return kernel / kernel.sum()


@TRANSFORMS.register_module()
class EMGaussianNoise(BaseTransform):
    """Additive Gaussian noise on ``raw``, from dbMiM, not TokenUnify's
    release (``GaussNoise`` with ``norm_mode='trunc'`` as its pre-training
    provider builds it): ``clip(raw + N(0, std**2), 0, 1)`` per voxel, with
    ``std`` uniform in ``std_range`` once per sample. Labels unchanged.

    Args:
        std_range: ``(low, high)`` of the noise std (dbMiM: 0.01, 0.2).
        prob: probability of applying it (0.5, the probability of the
            official perturbation step; use 1.0 inside
            :class:`EMRandomPerturbation`).
    """

    def __init__(self, std_range: Sequence[float] = DBMIM_NOISE_STD,
                 prob: float = 0.5):
        self.std_range = _check_range(std_range, 'std_range')
        self.prob = _check_prob(prob)

    @cache_randomness
    def _draw(self) -> Optional[float]:
        apply = np.random.rand() < self.prob
        std = float(np.random.uniform(*self.std_range))
        return std if apply else None

    def transform(self, results: dict) -> dict:
        keep_raw_target(results)
        std = self._draw()
        if std is not None:
            raw = results['raw']
            noise = np.random.standard_normal(raw.shape).astype(np.float32)
            results['raw'] = np.clip(raw + np.float32(std) * noise, 0, 1,
                                     dtype=np.float32)
        return results

    def __repr__(self):
        return (f'{type(self).__name__}(std_range={self.std_range}, '
                f'prob={self.prob})')


@TRANSFORMS.register_module()
class EMGaussianBlur(BaseTransform):
    """In-plane Gaussian blur of every z-section of ``raw``, from dbMiM,
    not TokenUnify's release (``GaussBlur`` / ``add_gauss_blur``:
    ``cv2.GaussianBlur(section, (k, k), sigma)`` then a clip to [0, 1]):
    an odd kernel size ``k = 2 * randint(low // 2, high // 2) + 1`` (dbMiM:
    3, 5, 7 or 9) and ``sigma`` uniform in ``sigma_range`` (dbMiM: 0 to 2;
    ``sigma <= 0`` means OpenCV's default for ``k``), once per sample. The
    separable kernel is :func:`gaussian_kernel_1d` and the border is
    OpenCV's default ``BORDER_REFLECT_101`` (scipy's ``'mirror'``). Labels
    unchanged.

    Args:
        kernel_size: ``(low, high)`` kernel sizes (dbMiM: 3, 9).
        sigma_range: ``(low, high)`` of sigma in pixels (dbMiM: 0, 2).
        prob: probability of applying it.
    """

    def __init__(self, kernel_size: Sequence[int] = DBMIM_BLUR_KERNEL,
                 sigma_range: Sequence[float] = DBMIM_BLUR_SIGMA,
                 prob: float = 0.5):
        low, high = _check_range(kernel_size, 'kernel_size', 1)
        if not (isinstance(low, int) and isinstance(high, int)):
            raise ValueError(f'kernel_size must hold ints, got '
                             f'{kernel_size!r}')
        self.kernel_size = (low, high)
        self.sigma_range = _check_range(sigma_range, 'sigma_range')
        self.prob = _check_prob(prob)

    @cache_randomness
    def _draw(self) -> Optional[Tuple[int, float]]:
        apply = np.random.rand() < self.prob
        low, high = self.kernel_size
        size = 2 * int(np.random.randint(low // 2, high // 2 + 1)) + 1
        sigma = float(np.random.uniform(*self.sigma_range))
        return (size, sigma) if apply else None

    def transform(self, results: dict) -> dict:
        keep_raw_target(results)
        draw = self._draw()
        if draw is not None:
            kernel = gaussian_kernel_1d(*draw)
            raw = np.asarray(results['raw'], dtype=np.float32)
            for axis in (1, 2):
                raw = ndimage.correlate1d(raw, kernel, axis=axis,
                                          mode='mirror')
            results['raw'] = np.clip(raw, 0, 1, dtype=np.float32)
        return results

    def __repr__(self):
        return (f'{type(self).__name__}(kernel_size={self.kernel_size}, '
                f'sigma_range={self.sigma_range}, prob={self.prob})')


@TRANSFORMS.register_module()
class EMCutout(BaseTransform):
    """Cutout of ``raw``, from dbMiM, not TokenUnify's release (``Cutout``
    / ``gen_mask``, the non-``'mala'`` sizes): ``count`` boxes of one size
    ``(size_z, size_yx, size_yx)``, all drawn once per sample uniformly in
    their inclusive ranges, each at a uniform position inside the volume,
    are set to ``fill_value`` (dbMiM multiplies by a 0 / 1 mask: 0).
    Boxes may overlap. A box larger than the volume is clipped to it
    (INFERRED: dbMiM's ``random.randint`` would fail). Labels unchanged.

    Args:
        size_z, size_yx: ``(low, high)`` box sizes in voxels
            (dbMiM: 5-10 and 10-20).
        count: ``(low, high)`` number of boxes (dbMiM: 60-100).
        fill_value: value of the cut voxels.
        prob: probability of applying it.
    """

    def __init__(self, size_z: Sequence[int] = DBMIM_CUTOUT_SIZE_Z,
                 size_yx: Sequence[int] = DBMIM_CUTOUT_SIZE_YX,
                 count: Sequence[int] = DBMIM_CUTOUT_COUNT,
                 fill_value: float = 0.0, prob: float = 0.5):
        for name, value in (('size_z', size_z), ('size_yx', size_yx),
                            ('count', count)):
            pair = _check_range(value, name, 1)
            if not all(isinstance(v, int) for v in pair):
                raise ValueError(f'{name} must hold ints, got {value!r}')
            setattr(self, name, pair)
        self.fill_value = float(fill_value)
        self.prob = _check_prob(prob)

    @cache_randomness
    def _draw(self, shape: Sequence[int]) -> Optional[np.ndarray]:
        """``(count, 6)`` boxes ``(z0, y0, x0, dz, dy, dx)`` or None."""
        apply = np.random.rand() < self.prob
        count = int(np.random.randint(self.count[0], self.count[1] + 1))
        size_z = int(np.random.randint(self.size_z[0], self.size_z[1] + 1))
        size_yx = int(np.random.randint(self.size_yx[0],
                                        self.size_yx[1] + 1))
        if not apply:
            return None
        size = np.minimum((size_z, size_yx, size_yx), shape)
        starts = np.random.randint(0, np.asarray(shape) - size + 1,
                                   (count, 3))
        return np.concatenate([starts, np.broadcast_to(size, (count, 3))],
                              axis=1)

    def transform(self, results: dict) -> dict:
        keep_raw_target(results)
        boxes = self._draw(results['raw'].shape)
        if boxes is not None:
            raw = np.array(results['raw'], dtype=np.float32)
            for z, y, x, dz, dy, dx in boxes:
                raw[z:z + dz, y:y + dy, x:x + dx] = self.fill_value
            results['raw'] = raw
        return results

    def __repr__(self):
        return (f'{type(self).__name__}(size_z={self.size_z}, '
                f'size_yx={self.size_yx}, count={self.count}, '
                f'fill_value={self.fill_value}, prob={self.prob})')


@TRANSFORMS.register_module()
class EMRandomPerturbation(BaseTransform):
    """With probability ``prob``, apply ONE of ``transforms``, chosen
    uniformly: TokenUnify's pre-training perturbation step
    (``if random.random() > 0.5: apply_perturbations(...)`` with
    ``random.choice`` over the enabled perturbations,
    ``dataloader/data_provider_pretraining.py``, TokenUnify@221674f). Each
    of ``n`` children is thus applied with probability ``prob / n`` (1/6
    for the official three); give the children ``prob=1.0``, their own
    probability multiplies.

    Args:
        transforms: transform configs (built with vistok's ``TRANSFORMS``)
            or callables.
        prob: probability of applying one of them.
    """

    def __init__(self, transforms: Sequence, prob: float = 0.5):
        if not transforms:
            raise ValueError('EMRandomPerturbation needs at least one '
                             'transform')
        self.transforms = [TRANSFORMS.build(t) if isinstance(t, dict) else t
                           for t in transforms]
        self.prob = _check_prob(prob)

    @cache_randomness
    def _draw(self) -> Optional[int]:
        apply = np.random.rand() < self.prob
        choice = int(np.random.randint(len(self.transforms)))
        return choice if apply else None

    def transform(self, results: dict) -> dict:
        keep_raw_target(results)
        choice = self._draw()
        if choice is None:
            return results
        return self.transforms[choice](results)

    def __repr__(self):
        return (f'{type(self).__name__}(transforms={self.transforms}, '
                f'prob={self.prob})')
