"""Synthetic serial-section EM volumes with neuron labels, embedded (no
download) so EM configs and tests run on a fresh machine.

The generator draws cells as an anisotropic 3-D Voronoi tessellation of
random seeds (the z resolution of serial-section EM is coarser, so a cell
spans fewer slices than pixels in-plane), warps the cell boundaries with a
smooth in-plane displacement field, paints dark membranes along the in-plane
cell boundaries, grey cytoplasm with low-frequency texture and dark
organelle blobs (mitochondria-like), then blurs in-plane and adds per-slice
brightness jitter and Gaussian noise. Everything is vectorised numpy /
scipy: a 32 x 160 x 160 volume takes a fraction of a second.

Label convention: neuron-segmentation ground truth such as CREMI's assigns
every voxel to a neuron, membranes included (no gaps), and the affinity
target then makes the gaps (boundary widening, see
:func:`vistok.datasets.em.affinity.widen_label_boundaries`). That is the
default here (``membrane_label='assign'``); ``'zero'`` labels membrane
voxels 0 instead, as in AC3 / AC4-style ground truth.
"""
from typing import Optional, Sequence, Tuple, Union

import h5py
import numpy as np
from scipy import ndimage

from vistok.registry import DATASETS
from .volume_dataset import CREMI_UNLABELLED, EMVolumeDataset, resolve_region

MEMBRANE_LABELS = ('assign', 'zero')


class SyntheticEMVolume:
    """Seeded generator of ``(raw, labels)`` EM-like volumes.

    ``SyntheticEMVolume(**options)(shape, seed)`` returns ``raw``
    (``(D, H, W)`` uint8) and ``labels`` (``(D, H, W)`` uint32, ids
    ``1..n`` with some possibly absent after warping; 0 only on membranes
    with ``membrane_label='zero'``). Intensities are on the 0-255 scale.

    Args:
        cell_spacing: mean ``(z, y, x)`` distance between cell seeds in
            voxels; a smaller z value than y / x mimics the coarser z
            resolution (cells cross few slices).
        boundary_warp: amplitude (voxels) of the smooth in-plane
            displacement that bends the flat Voronoi faces.
        warp_sigma: ``(z, y, x)`` Gaussian smoothing of that displacement.
        membrane_width: in-plane width (voxels) of the dark membranes.
        membrane_intensity: mean grey value of membranes.
        cytoplasm_intensity: range of a cell's mean grey value.
        texture_strength: standard deviation of the intra-cellular texture.
        texture_sigma: ``(z, y, x)`` smoothing of the texture noise (low
            frequency).
        organelles_per_cell: mean number of organelle blobs per cell.
        organelle_radius: range of blob radii (in-plane voxels; the z
            radius is scaled like the cells).
        organelle_intensity: range of a blob's grey value.
        blur_sigma: ``(z, y, x)`` Gaussian blur of the image (anisotropic:
            sections are imaged one by one, so z is usually 0).
        slice_brightness_std: standard deviation of a per-slice offset
            (section-to-section contrast variation).
        noise_std: standard deviation of the final Gaussian noise.
        membrane_label: ``'assign'`` (membrane voxels keep their cell's id)
            or ``'zero'``.
    """

    def __init__(self,
                 cell_spacing: Sequence[float] = (8.0, 24.0, 24.0),
                 boundary_warp: float = 2.0,
                 warp_sigma: Sequence[float] = (2.0, 6.0, 6.0),
                 membrane_width: int = 2,
                 membrane_intensity: float = 50.0,
                 cytoplasm_intensity: Sequence[float] = (140.0, 200.0),
                 texture_strength: float = 12.0,
                 texture_sigma: Sequence[float] = (1.0, 3.0, 3.0),
                 organelles_per_cell: float = 1.0,
                 organelle_radius: Sequence[float] = (2.0, 5.0),
                 organelle_intensity: Sequence[float] = (70.0, 110.0),
                 blur_sigma: Sequence[float] = (0.0, 0.8, 0.8),
                 slice_brightness_std: float = 5.0,
                 noise_std: float = 6.0,
                 membrane_label: str = 'assign'):
        if membrane_label not in MEMBRANE_LABELS:
            raise ValueError(f'membrane_label={membrane_label!r}; choose '
                             f'from {MEMBRANE_LABELS}')
        if membrane_width < 1:
            raise ValueError(f'membrane_width must be >= 1, got '
                             f'{membrane_width}')
        self.cell_spacing = np.asarray(cell_spacing, np.float64)
        self.boundary_warp = boundary_warp
        self.warp_sigma = tuple(warp_sigma)
        self.membrane_width = int(membrane_width)
        self.membrane_intensity = membrane_intensity
        self.cytoplasm_intensity = tuple(cytoplasm_intensity)
        self.texture_strength = texture_strength
        self.texture_sigma = tuple(texture_sigma)
        self.organelles_per_cell = organelles_per_cell
        self.organelle_radius = tuple(organelle_radius)
        self.organelle_intensity = tuple(organelle_intensity)
        self.blur_sigma = tuple(blur_sigma)
        self.slice_brightness_std = slice_brightness_std
        self.noise_std = noise_std
        self.membrane_label = membrane_label

    def __call__(self, shape: Sequence[int],
                 seed: Union[int, Sequence[int]] = 0
                 ) -> Tuple[np.ndarray, np.ndarray]:
        """Generate one ``shape`` volume from ``seed`` (an int or a
        sequence of ints, as ``numpy.random.default_rng`` takes)."""
        shape = tuple(int(s) for s in shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f'shape must be (D, H, W), got {shape}')
        rng = np.random.default_rng(seed)
        labels, num_cells = self._cells(shape, rng)
        membrane = self._membranes(labels)
        texture = self._smooth_noise(shape, self.texture_sigma, rng)
        low, high = self.cytoplasm_intensity
        cell_mean = rng.uniform(low, high, num_cells + 1).astype(np.float32)
        raw = cell_mean[labels] + self.texture_strength * texture
        self._paint_organelles(raw, labels, membrane, num_cells, rng)
        raw[membrane] = (self.membrane_intensity
                         + 0.5 * self.texture_strength * texture[membrane])
        if any(self.blur_sigma):
            raw = ndimage.gaussian_filter(raw, self.blur_sigma)
        raw += self.slice_brightness_std * rng.standard_normal(
            (shape[0], 1, 1), dtype=np.float32)
        raw += self.noise_std * rng.standard_normal(shape, dtype=np.float32)
        raw = np.clip(np.rint(raw), 0, 255).astype(np.uint8)
        if self.membrane_label == 'zero':
            labels[membrane] = 0
        return raw, labels.astype(np.uint32)

    def _cells(self, shape, rng) -> Tuple[np.ndarray, int]:
        """Voronoi cells of random seeds under the metric scaled by
        ``cell_spacing``, warped in-plane; ids ``1..num_cells``."""
        volume = np.prod(np.asarray(shape) / self.cell_spacing)
        num_voxels = int(np.prod(shape))
        num_seeds = min(max(2, int(round(volume))), num_voxels)
        flat = rng.choice(num_voxels, size=num_seeds, replace=False)
        seed_ids = np.zeros(shape, np.int32)
        seed_ids.flat[flat] = np.arange(1, num_seeds + 1)
        # exact nearest seed of every voxel (distance transform indices)
        nearest = ndimage.distance_transform_edt(
            seed_ids == 0, sampling=1.0 / self.cell_spacing,
            return_distances=False, return_indices=True)
        labels = seed_ids[tuple(nearest)]
        if self.boundary_warp > 0:  # read each voxel's id a bit aside
            grid = list(np.indices(shape, sparse=True))
            for axis in (1, 2):
                shift = self._smooth_noise(shape, self.warp_sigma, rng)
                grid[axis] = np.clip(
                    grid[axis] + np.rint(self.boundary_warp * shift).astype(
                        np.int64), 0, shape[axis] - 1)
            labels = labels[tuple(grid)]
        return labels, num_seeds

    def _membranes(self, labels: np.ndarray) -> np.ndarray:
        """In-plane cell boundaries, ``membrane_width`` voxels wide."""
        # mark the first voxel of each pair of in-plane neighbours that
        # differ, then grow it to `width` voxels centred on the boundary
        edge = np.zeros(labels.shape, bool)
        edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
        edge[:, :, :-1] |= labels[:, :, :-1] != labels[:, :, 1:]
        width = self.membrane_width
        return ndimage.maximum_filter(edge, size=(1, width, width))

    def _paint_organelles(self, raw, labels, membrane, num_cells,
                          rng) -> None:
        """Dark round blobs, each inside the cell holding its centre."""
        count = rng.poisson(self.organelles_per_cell * num_cells)
        if count == 0:
            return
        shape = labels.shape
        centres = rng.choice(np.prod(shape), size=min(count, np.prod(shape)),
                             replace=False)
        blob_ids = np.zeros(shape, np.int32)
        blob_ids.flat[centres] = np.arange(1, len(centres) + 1)
        # organelles are squashed in z like the cells
        sampling = (self.cell_spacing[1] / self.cell_spacing[0], 1.0, 1.0)
        distance, nearest = ndimage.distance_transform_edt(
            blob_ids == 0, sampling=sampling, return_indices=True)
        which = blob_ids[tuple(nearest)]
        radius = np.concatenate(
            [[0.0], rng.uniform(*self.organelle_radius, len(centres))])
        grey = np.concatenate(
            [[0.0], rng.uniform(*self.organelle_intensity, len(centres))])
        centre_cell = np.concatenate([[0], labels.flat[centres]])
        inside = ((distance < radius[which]) & (labels == centre_cell[which])
                  & ~membrane)
        if inside.any():  # keep half of the texture inside the blobs
            raw[inside] = grey[which[inside]] + 0.5 * (
                raw[inside] - raw[inside].mean())

    @staticmethod
    def _smooth_noise(shape, sigma, rng) -> np.ndarray:
        """Gaussian-smoothed white noise rescaled to unit standard
        deviation, float32."""
        noise = ndimage.gaussian_filter(
            rng.standard_normal(shape, dtype=np.float32), sigma)
        return noise / max(float(noise.std()), 1e-6)


def write_synthetic_h5(path: str,
                       shape: Sequence[int] = (32, 160, 160),
                       seed: int = 0,
                       raw_key: str = 'volumes/raw',
                       label_key: Optional[str] = 'volumes/labels/neuron_ids',
                       chunks: Optional[Sequence[int]] = None,
                       resolution: Sequence[float] = (40.0, 4.0, 4.0),
                       unlabelled_border: int = 0,
                       **generator_options) -> str:
    """Write a :class:`SyntheticEMVolume` as an HDF5 file in CREMI's layout:
    ``raw_key`` uint8 and ``label_key`` uint64 (``None``: no labels), both
    with a ``resolution`` attribute (nm, z y x) and ``chunks`` (``None``:
    contiguous). ``unlabelled_border`` voxels along the in-plane border get
    CREMI's unlabelled id, as the CREMI files have. Returns ``path``."""
    raw, labels = SyntheticEMVolume(**generator_options)(shape, seed)
    chunks = None if chunks is None else tuple(chunks)
    with h5py.File(path, 'w') as f:
        data = f.create_dataset(raw_key, data=raw, chunks=chunks)
        data.attrs['resolution'] = np.asarray(resolution, np.float64)
        if label_key is not None:
            ids = labels.astype(np.uint64)
            if unlabelled_border:
                border = np.ones(ids.shape[1:], bool)
                border[unlabelled_border:-unlabelled_border,
                       unlabelled_border:-unlabelled_border] = False
                ids[:, border] = CREMI_UNLABELLED
            data = f.create_dataset(label_key, data=ids, chunks=chunks)
            data.attrs['resolution'] = np.asarray(resolution, np.float64)
    return path


@DATASETS.register_module()
class SyntheticEMDataset(EMVolumeDataset):
    """:class:`EMVolumeDataset` over :class:`SyntheticEMVolume` volumes
    generated in memory at initialisation (volume ``i`` from the seed
    ``(seed, i)``), so EM configs run without any file. Items, crops, test
    modes and the pipeline are exactly those of :class:`EMVolumeDataset`
    (the crop logic is shared; only the storage differs). Raw is uint8, so
    ``normalize='dtype'`` maps it to ``[0, 1]``.

    Args:
        volume_shape: ``(D, H, W)`` of each generated volume.
        num_volumes: number of volumes (``volume_name`` is
            ``'synthetic_<i>'``).
        seed: dataset seed; another seed gives other volumes.
        generator: keyword arguments of :class:`SyntheticEMVolume`.
        with_labels: ``False`` drops the labels (pre-training).
        **kwargs: :class:`EMVolumeDataset` arguments (``crop_size``,
            ``samples_per_epoch``, ``valid_region``, ``padding``,
            ``normalize``, ``pipeline``, ``test_mode``, ...), except the
            file-related ``volumes``, ``raw_key``, ``label_key`` and
            ``data_root``.
    """

    def __init__(self,
                 volume_shape: Sequence[int] = (32, 160, 160),
                 num_volumes: int = 1,
                 seed: int = 0,
                 generator: Optional[dict] = None,
                 with_labels: bool = True,
                 **kwargs):
        if num_volumes < 1:
            raise ValueError(f'num_volumes must be >= 1, got {num_volumes}')
        self.volume_shape = tuple(int(s) for s in volume_shape)
        self.num_volumes = int(num_volumes)
        self.seed = seed
        self.generator = SyntheticEMVolume(**(generator or {}))
        self.with_labels = with_labels
        self._arrays = {}
        super().__init__(
            volumes=[f'synthetic_{i}' for i in range(num_volumes)],
            raw_key='raw',
            label_key='labels' if with_labels else None,
            **kwargs)

    def _load_volumes(self):
        volumes = []
        for i, name in enumerate(self.volume_specs):
            raw, labels = self.generator(self.volume_shape, (self.seed, i))
            self._arrays[(i, 'raw')] = raw
            if self.with_labels:
                self._arrays[(i, 'labels')] = labels
            volumes.append(dict(
                name=name, shape=raw.shape, dtype=raw.dtype,
                region=resolve_region(raw.shape, self.valid_region),
                raw_path=None, raw_key=self.raw_key, label_path=None,
                label_key=self.label_key, clip_max=self.clip_max))
        return volumes

    def _read_block(self, volume_idx, kind, slices):
        return self._arrays[(volume_idx, kind)][slices].copy()
