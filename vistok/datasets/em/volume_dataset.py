"""EM volumes in HDF5 files, read lazily one crop at a time.

Each training sample reads only its window of the volume with h5py slicing
(TokenUnify's official loaders read the whole volume for every sample; see
``bench/em_loader.py``). HDF5 handles are opened on first use in each
process and never inherited through ``fork`` or pickled, so DataLoader
workers each open their own. The crop origin is drawn from the global numpy
RNG, which :class:`vistok.datasets.base.SeededDatasetMixin` seeds per draw:
crops and augmentation are a function of the sampler's seed, whatever the
number of workers.

Volumes are ``(D, H, W)`` = ``(z, y, x)``. Supported layouts:

* CREMI: one file per volume with ``volumes/raw`` and
  ``volumes/labels/neuron_ids`` (the defaults of ``raw_key`` /
  ``label_key``); unlabelled voxels carry ``0xFFFFFFFFFFFFFFFD``
  (uint64 max - 2), mapped to 0 here.
* AC3 / AC4 / MEC (TokenUnify's files): separate ``*_inputs.h5`` and
  ``*_labels.h5`` files with the key ``main``: give a volume as
  ``dict(raw='AC4_inputs.h5', labels='AC4_labels.h5', raw_key='main',
  label_key='main')``.
* NIfTI (``.nii`` / ``.nii.gz``, e.g. the non-EM volumes of TokenUnify's
  pre-training corpus): read lazily through nibabel's array proxy
  (:class:`NiftiVolume`); ``raw_key`` / ``label_key`` name no dataset there
  (any non-None key reads the file's one array). nibabel is optional
  (``pip install nibabel``).
"""
import glob
import os
import os.path as osp
from numbers import Integral
from typing import List, Optional, Sequence, Tuple, Union

import h5py
import numpy as np
from mmengine.dataset import BaseDataset
from mmengine.dataset.base_dataset import force_full_init

from vistok.registry import DATASETS
from ..base import SeededDatasetMixin, build_pipeline

#: CREMI's id of unlabelled voxels (uint64 max - 2)
CREMI_UNLABELLED = 0xFFFFFFFFFFFFFFFD
UINT32_MAX = 0xFFFFFFFF
NORMALIZE_MODES = ('dtype', 'minmax', None)
TEST_CROPS = ('whole', 'grid')
VOLUME_SAMPLING = ('uniform', 'size')
#: voxels read at once when scanning a volume for its min / max
MINMAX_BLOCK_VOXELS = 1 << 26

Region = Tuple[Tuple[int, int], Tuple[int, int], Tuple[int, int]]


def resolve_region(shape: Sequence[int], valid_region) -> Region:
    """``valid_region`` (three ``(start, stop)`` pairs with python slice
    semantics, ``None`` for a whole axis; or ``None`` for the whole volume)
    as explicit bounds inside ``shape``."""
    if valid_region is None:
        valid_region = (None, None, None)

    def is_pair(pair) -> bool:
        return pair is None or (
            isinstance(pair, (list, tuple)) and len(pair) == 2 and all(
                v is None or isinstance(v, Integral)
                and not isinstance(v, bool) for v in pair))

    if (not isinstance(valid_region, (list, tuple)) or len(valid_region) != 3
            or not all(is_pair(pair) for pair in valid_region)):
        raise ValueError(f'valid_region must hold three (start, stop) pairs '
                         f'(z, y, x) of ints or None, got {valid_region!r}')
    bounds = []
    for axis, (size, pair) in enumerate(zip(shape, valid_region)):
        start, stop, _ = slice(*(pair or (None, None))).indices(size)
        if stop <= start:
            raise ValueError(f'valid_region {valid_region!r} is empty along '
                             f'axis {axis} of a volume of shape {shape}')
        bounds.append((start, stop))
    return tuple(bounds)


def read_window(read_block, region: Region, origin: Sequence[int],
                size: Sequence[int]) -> np.ndarray:
    """The ``size`` window at ``origin`` of the volume restricted to
    ``region``: the part inside ``region`` is read with
    ``read_block(slices)``, the rest mirrored from it (numpy's ``'reflect'``
    padding), so nothing outside ``region`` is ever read."""
    lo = [min(max(o, r0), r1) for o, (r0, r1) in zip(origin, region)]
    hi = [max(min(o + s, r1), r0)
          for o, s, (r0, r1) in zip(origin, size, region)]
    if any(stop <= start for start, stop in zip(lo, hi)):
        raise ValueError(f'window at {tuple(origin)} of size {tuple(size)} '
                         f'does not overlap the region {region}')
    block = read_block(
        tuple(slice(start, stop) for start, stop in zip(lo, hi)))
    pad = [(start - o, o + s - stop)
           for o, s, start, stop in zip(origin, size, lo, hi)]
    if any(before or after for before, after in pad):
        block = np.pad(block, pad, mode='reflect')
    return block


NIFTI_SUFFIXES = ('.nii', '.nii.gz')
#: NIfTI stores (i, j, k) = (x, y, z); this permutation reads it as (z, y, x)
NIFTI_ZYX = (2, 1, 0)


def is_nifti(path: str) -> bool:
    return path.lower().endswith(NIFTI_SUFFIXES)


class NiftiVolume:
    """A 3-D NIfTI volume read lazily: slicing reads only the requested
    block through nibabel's ``ArrayProxy`` (``img.dataobj``; for ``.nii``
    a memory map / seek, for ``.nii.gz`` a streamed decompression), scaled
    by the header's ``scl_slope`` / ``scl_inter`` as nibabel does; the
    volume is never loaded whole (TokenUnify's reader calls
    ``get_fdata()`` on every sample, ``dataloader/
    data_provider_pretraining.py``).

    ``axes`` permutes the stored axes into the volume's ``(D, H, W)``:
    the default :data:`NIFTI_ZYX` reads NIfTI's ``(x, y, z)`` as vistok's
    ``(z, y, x)`` (as dbMiM's reader, ``np.transpose(img, (2, 1, 0))``);
    ``(0, 1, 2)`` keeps the stored order, as TokenUnify's release (the
    transpose is commented out there). 4-D volumes (TokenUnify picks a
    random 4th index) are refused.

    Args:
        path: ``.nii`` or ``.nii.gz`` file.
        axes: permutation of ``(0, 1, 2)``.
    """

    def __init__(self, path: str, axes: Sequence[int] = NIFTI_ZYX):
        try:
            import nibabel
        except ImportError:
            raise ImportError(f'reading the NIfTI volume {path} needs '
                              f'nibabel: pip install nibabel') from None
        if sorted(axes) != [0, 1, 2]:
            raise ValueError(f'nifti_axes must be a permutation of (0, 1, '
                             f'2), got {tuple(axes)!r}')
        if not osp.isfile(path):
            raise FileNotFoundError(f'EM volume file {path} does not exist')
        try:
            self.proxy = nibabel.load(path).dataobj
        except Exception as err:  # nibabel raises several types
            raise OSError(f'cannot open {path} as a NIfTI file '
                          f'({err})') from None
        if len(self.proxy.shape) != 3:
            raise ValueError(f'NIfTI file {path} has shape '
                             f'{self.proxy.shape}; EM volumes are 3-D')
        self.path = path
        self.axes = tuple(int(a) for a in axes)
        self.ndim = 3
        self.shape = tuple(self.proxy.shape[a] for a in self.axes)
        # dtype after the header's scaling, as slices return it
        self.dtype = self[(slice(0, 1), ) * 3].dtype

    def __getitem__(self, slices: Tuple[slice, ...]) -> np.ndarray:
        stored = [None] * 3
        for axis, sl in zip(self.axes, slices):
            stored[axis] = sl
        block = np.asarray(self.proxy[tuple(stored)])
        return np.ascontiguousarray(block.transpose(
            np.argsort(self.axes)))


def _open_h5(path: str) -> h5py.File:
    if not osp.isfile(path):
        raise FileNotFoundError(f'EM volume file {path} does not exist')
    try:
        return h5py.File(path, 'r')
    except OSError as err:
        raise OSError(f'cannot open {path} as an HDF5 file ({err})') from None


def _h5_dataset(h5file: h5py.File, path: str, key: str) -> h5py.Dataset:
    node = h5file.get(key)
    if not isinstance(node, h5py.Dataset):
        names = []
        h5file.visititems(lambda name, obj: names.append(name)
                          if isinstance(obj, h5py.Dataset) else None)
        what = 'a group' if node is not None else 'missing'
        raise KeyError(f'HDF5 file {path}: key {key!r} is {what}; its '
                       f'datasets are {names} (set raw_key / label_key)')
    if node.ndim != 3:
        raise ValueError(f'HDF5 file {path}: dataset {key!r} has shape '
                         f'{node.shape}; EM volumes are (D, H, W)')
    return node


@DATASETS.register_module()
class EMVolumeDataset(SeededDatasetMixin, BaseDataset):
    """Random crops (training) or whole volumes / a grid of crops (test) of
    EM volumes stored in HDF5 files.

    Each item, before the pipeline, is a dict with

    * ``raw``: ``(d, h, w)`` float32 intensities in ``[0, 1]`` (see
      ``normalize``), where ``(d, h, w) = crop_size + 2 * padding``;
    * ``labels`` (when the volume has labels): ``(d, h, w)`` int64 ids with
      0 = background / unlabelled, every id < 2**32;
    * ``crop_origin`` (``(z, y, x)`` of the crop without the padding, in
      voxels of the stored volume), ``crop_size``, ``padding``,
      ``volume_name``, ``volume_idx``, ``volume_shape``, ``sample_idx``.

    The window may reach outside the ``valid_region`` (padding, or a region
    smaller than the crop): that part is mirrored from the inside, never
    read from the file (so a train / test split along z does not leak).
    Put :class:`~vistok.datasets.em.transforms.EMCenterCrop` in the
    pipeline to remove the padding after the geometric augmentations, and
    end it with :class:`~vistok.datasets.em.transforms.PackEMInputs`.

    Args:
        volumes: volume files: a path (a glob pattern is expanded, sorted)
            holding raw and labels, a list of glob patterns expanded
            together (an error only if none matches; e.g. TokenUnify's
            pre-training corpus ``['*hdf/*.h5', '*hdf/*.nii.gz']``), or a
            dict with ``raw`` (path, pattern or list of patterns) and
            optionally ``labels`` (path, default: the raw file),
            ``raw_key``, ``label_key``, ``name``, ``valid_region`` and
            ``clip_max`` overriding the dataset-wide values for that volume.
        crop_size: ``(D, H, W)`` of a crop (TokenUnify: 16 x 160 x 160).
        samples_per_epoch: ``len(dataset)`` in training (TokenUnify's
            fine-tuning uses 10000); each draw picks a volume and a crop.
        raw_key: HDF5 dataset of the raw intensities.
        label_key: HDF5 dataset of the neuron ids; ``None`` for unlabelled
            volumes (pre-training).
        data_root: prefix of relative paths.
        valid_region: ``((z0, z1), (y0, y1), (x0, x1))`` with python slice
            semantics (``None`` = whole axis), e.g. ``((0, 100), None,
            None)`` for CREMI's first 100 training slices.
        padding: ``(z, y, x)`` voxels of context read on each side of a crop.
        normalize: ``'dtype'`` divides integer raw by its dtype's maximum
            (uint8 / 255); ``'minmax'`` maps the region's min / max
            (computed once, block by block, at initialisation) to 0 / 1 as
            TokenUnify's pre-training loader does; ``None`` keeps the
            stored values (float volumes already in [0, 1]).
        clip_max: raw intensities above it are set to it before
            ``normalize``, whose range is then that of the clipped values
            (``'dtype'``: ``[0, min(clip_max, dtype max)]``). ``255``
            reproduces TokenUnify's MEC test volume: ``Provider_valid``
            (``src/provider_valid.py``, ydchen0806/TokenUnify@221674f,
            branch ``'wafer'``) reads wafer 4 as ``np.where(data > 255,
            255, data.astype('uint8'))`` and divides by 255, whatever the
            stored dtype (for unsigned volumes, the same values). ``None``:
            no clip.
        unlabelled_ids: label ids meaning "unlabelled", set to 0.
        relabel_consecutive: renumber each crop's ids to ``0, 1, ..., n``
            (0 stays 0); needed when ids exceed uint32, else an error.
        volume_sampling: training draws a volume uniformly (``'uniform'``,
            as TokenUnify) or in proportion to its region's voxel count
            (``'size'``).
        test_crops: in ``test_mode``, one sample per volume holding its
            whole region (``'whole'``; the segmentor then runs its sliding
            window) or a fixed grid of crops (``'grid'``).
        grid_stride: ``(z, y, x)`` stride of the grid (default
            ``crop_size``); the last crop of an axis ends at the region's
            end.
        nifti_axes: stored axes of NIfTI volumes read as ``(D, H, W)``
            (see :class:`NiftiVolume`; ``(0, 1, 2)`` = TokenUnify's
            release).
        pipeline, test_mode, lazy_init, max_refetch: as in
            ``mmengine.dataset.BaseDataset``.
    """

    def __init__(self,
                 volumes: Sequence[Union[str, dict]],
                 crop_size: Sequence[int] = (16, 160, 160),
                 samples_per_epoch: int = 10000,
                 raw_key: str = 'volumes/raw',
                 label_key: Optional[str] = 'volumes/labels/neuron_ids',
                 data_root: str = '',
                 valid_region=None,
                 padding: Sequence[int] = (0, 0, 0),
                 normalize: Optional[str] = 'dtype',
                 clip_max: Optional[float] = None,
                 unlabelled_ids: Sequence[int] = (CREMI_UNLABELLED, ),
                 relabel_consecutive: bool = False,
                 volume_sampling: str = 'uniform',
                 test_crops: str = 'whole',
                 grid_stride: Optional[Sequence[int]] = None,
                 nifti_axes: Sequence[int] = NIFTI_ZYX,
                 pipeline=(),
                 test_mode: bool = False,
                 lazy_init: bool = False,
                 max_refetch: int = 1000):
        self.crop_size = self._triple(crop_size, 'crop_size', minimum=1)
        self.padding = self._triple(padding, 'padding', minimum=0)
        self.grid_stride = self._triple(grid_stride or crop_size,
                                        'grid_stride', minimum=1)
        for name, value, choices in (
                ('normalize', normalize, NORMALIZE_MODES),
                ('test_crops', test_crops, TEST_CROPS),
                ('volume_sampling', volume_sampling, VOLUME_SAMPLING)):
            if value not in choices:
                raise ValueError(f'{name}={value!r}; choose from {choices}')
        if samples_per_epoch < 1:
            raise ValueError(f'samples_per_epoch must be >= 1, got '
                             f'{samples_per_epoch}')
        self.volume_specs = list(volumes)
        self.samples_per_epoch = int(samples_per_epoch)
        self.raw_key = raw_key
        self.label_key = label_key
        self.valid_region = valid_region
        self.normalize = normalize
        self.clip_max = self._check_clip_max(clip_max, 'clip_max')
        self.unlabelled_ids = tuple(int(i) for i in unlabelled_ids)
        self.relabel_consecutive = relabel_consecutive
        self.volume_sampling = volume_sampling
        self.test_crops = test_crops
        self.nifti_axes = tuple(nifti_axes)
        self.volumes: List[dict] = []
        self._handles_pid = None
        self._files, self._datasets = {}, {}
        super().__init__(
            data_root=data_root,
            data_prefix=dict(),
            serialize_data=False,
            pipeline=build_pipeline(pipeline),
            test_mode=test_mode,
            lazy_init=lazy_init,
            max_refetch=max_refetch)

    @staticmethod
    def _triple(value, name: str, minimum: int) -> Tuple[int, int, int]:
        """``value`` as three ints ``>= minimum``, else a ``ValueError``
        naming ``name`` (no silent rounding of ``3.5`` or parsing of
        ``'16'``)."""
        items = (None if isinstance(value, (str, bytes))
                 or not hasattr(value, '__len__') else list(value))
        if (items is None or len(items) != 3 or any(
                not isinstance(v, Integral) or isinstance(v, bool)
                or v < minimum for v in items)):
            raise ValueError(f'{name} must be three (z, y, x) ints >= '
                             f'{minimum}, got {value!r}')
        return tuple(int(v) for v in items)

    @staticmethod
    def _check_clip_max(value, name: str) -> Optional[float]:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float,
                                                             np.number)):
            raise ValueError(f'{name} must be a number or None, got '
                             f'{value!r}')
        return float(value)

    # --- volumes -------------------------------------------------------
    def _expand_specs(self) -> List[dict]:
        """``volumes`` as dicts with joined paths, glob patterns expanded."""
        root = self.data_root or ''
        specs = []
        for entry in self.volume_specs:
            spec = (dict(raw=entry) if isinstance(entry, (str, list, tuple))
                    else dict(entry))
            if 'raw' not in spec:
                raise ValueError(f'volume entry {entry!r} has no `raw` path')
            patterns = spec['raw']
            patterns = ([patterns] if isinstance(patterns, str)
                        else list(patterns))
            patterns = [osp.join(root, p) for p in patterns]
            paths = patterns
            if len(patterns) > 1 or glob.has_magic(patterns[0]):
                if spec.get('labels') or spec.get('name'):
                    raise ValueError(f'volume entry {entry!r}: a glob '
                                     f'pattern cannot take `labels` / `name`')
                paths = sorted({path for p in patterns
                                for path in glob.glob(p)})
                if not paths:
                    raise FileNotFoundError(
                        f'no EM volume file matches {" or ".join(patterns)}')
            labels = spec.get('labels')
            specs.extend(
                dict(spec, raw=path,
                     labels=osp.join(root, labels) if labels else path)
                for path in paths)
        if not specs:
            raise ValueError('EMVolumeDataset got no volumes')
        return specs

    def _load_volumes(self) -> List[dict]:
        """Describe each volume (shape, region, keys, normalisation range);
        files are opened in this process and closed again."""
        volumes = []
        for spec in self._expand_specs():
            raw_key = spec.get('raw_key', self.raw_key)
            label_key = spec.get('label_key', self.label_key)
            label_path = spec['labels']
            shape, dtype = self._describe(spec['raw'], raw_key)
            if label_key is not None:
                labels_shape, labels_dtype = self._describe(
                    label_path, label_key)
                if labels_shape != shape:
                    raise ValueError(
                        f'labels {label_path}:{label_key} have shape '
                        f'{labels_shape} but raw {spec["raw"]}:'
                        f'{raw_key} has shape {shape}')
                if labels_dtype.kind not in 'iu':
                    raise ValueError(
                        f'labels {label_path}:{label_key} are '
                        f'{labels_dtype}, not integer ids')
            base = osp.basename(spec['raw'])
            name = spec.get('name') or (
                base[:-len('.gz')] if base.lower().endswith('.gz')
                else base).rsplit('.', 1)[0]
            volumes.append(dict(
                name=name, shape=tuple(shape), dtype=np.dtype(dtype),
                region=resolve_region(
                    shape, spec.get('valid_region', self.valid_region)),
                raw_path=spec['raw'], raw_key=raw_key,
                label_path=label_path if label_key is not None else None,
                label_key=label_key,
                clip_max=self._check_clip_max(
                    spec.get('clip_max', self.clip_max),
                    f'clip_max of volume {name}')))
        return volumes

    def _describe(self, path: str, key: str) -> Tuple[tuple, np.dtype]:
        """Shape and dtype of ``path:key`` (HDF5) or of a NIfTI file."""
        if is_nifti(path):
            volume = NiftiVolume(path, self.nifti_axes)
            return volume.shape, np.dtype(volume.dtype)
        with _open_h5(path) as f:
            dataset = _h5_dataset(f, path, key)
            return tuple(dataset.shape), np.dtype(dataset.dtype)

    def _read_block(self, volume_idx: int, kind: str,
                    slices: Tuple[slice, ...]) -> np.ndarray:
        """Read ``slices`` of volume ``volume_idx``'s ``kind`` (``'raw'``
        or ``'labels'``) as a new array."""
        volume = self.volumes[volume_idx]
        path = volume['raw_path' if kind == 'raw' else 'label_path']
        key = volume['raw_key' if kind == 'raw' else 'label_key']
        try:
            return self._h5(path, key)[slices]
        except OSError as err:
            raise OSError(f'reading {key!r} of {path} at {slices} failed '
                          f'({err}); the file may be corrupt') from None

    def _h5(self, path: str, key: str) -> h5py.Dataset:
        """This process's handle of ``path:key`` (a :class:`NiftiVolume`
        for NIfTI files), opened on first use."""
        if self._handles_pid != os.getpid():  # new process: fresh handles
            self._files, self._datasets = {}, {}
            self._handles_pid = os.getpid()
        dataset = self._datasets.get((path, key))
        if dataset is None and is_nifti(path):
            dataset = NiftiVolume(path, self.nifti_axes)
            self._datasets[(path, key)] = dataset
        if dataset is None:
            if path not in self._files:
                self._files[path] = _open_h5(path)
            dataset = _h5_dataset(self._files[path], path, key)
            self._datasets[(path, key)] = dataset
        return dataset

    def __getstate__(self):
        state = self.__dict__.copy()
        state.update(_files={}, _datasets={}, _handles_pid=None)
        return state

    def _raw_range(self, volume_idx: int) -> Tuple[float, float]:
        """Intensity mapped to 0 and to 1 by ``normalize``, after the
        volume's ``clip_max``."""
        volume = self.volumes[volume_idx]
        clip = volume['clip_max']
        if self.normalize is None:
            return 0.0, 1.0
        if self.normalize == 'dtype':
            if volume['dtype'].kind not in 'iu':
                raise ValueError(
                    f'raw of volume {volume["name"]} is {volume["dtype"]}: '
                    f"normalize='dtype' needs integers; use 'minmax' or "
                    f'None')
            top = float(np.iinfo(volume['dtype']).max)
            return 0.0, top if clip is None else min(top, clip)
        (z0, z1), (y0, y1), (x0, x1) = volume['region']
        step = max(1, MINMAX_BLOCK_VOXELS // ((y1 - y0) * (x1 - x0)))
        lo, hi = np.inf, -np.inf
        for z in range(z0, z1, step):
            block = self._read_block(
                volume_idx, 'raw',
                (slice(z, min(z + step, z1)), slice(y0, y1), slice(x0, x1)))
            lo, hi = min(lo, float(block.min())), max(hi, float(block.max()))
        if clip is not None:
            lo, hi = min(lo, clip), min(hi, clip)
        return lo, hi

    # --- mmengine BaseDataset ------------------------------------------
    def load_data_list(self) -> List[dict]:
        """Describe the volumes (``self.volumes``) and return the fixed
        samples of ``test_mode`` (training crops are drawn on the fly, so
        the list is empty then)."""
        self.volumes = self._load_volumes()
        for idx, volume in enumerate(self.volumes):
            volume['raw_range'] = self._raw_range(idx)
        if not self.test_mode:
            return []
        samples = []
        for idx, volume in enumerate(self.volumes):
            region = volume['region']
            if self.test_crops == 'whole':
                samples.append(dict(
                    volume_idx=idx, crop_origin=tuple(r0 for r0, _ in region),
                    crop_size=tuple(r1 - r0 for r0, r1 in region)))
                continue
            axes = [self._grid_starts(r, c, s) for r, c, s in zip(
                region, self.crop_size, self.grid_stride)]
            samples.extend(
                dict(volume_idx=idx, crop_origin=(z, y, x),
                     crop_size=self.crop_size)
                for z in axes[0] for y in axes[1] for x in axes[2])
        return samples

    @staticmethod
    def _grid_starts(bounds: Tuple[int, int], size: int,
                     stride: int) -> List[int]:
        start, stop = bounds
        if stop - start <= size:  # one crop, centred (mirrored beyond)
            return [start - (size - (stop - start)) // 2]
        starts = list(range(start, stop - size + 1, stride))
        if starts[-1] != stop - size:
            starts.append(stop - size)
        return starts

    def __len__(self) -> int:
        if self.test_mode:
            return super().__len__()
        return self.samples_per_epoch

    def _random_crop(self) -> dict:
        """A volume and a crop origin drawn from the global numpy RNG."""
        if self.volume_sampling == 'uniform':
            idx = int(np.random.randint(len(self.volumes)))
        else:
            sizes = np.array([np.prod([r1 - r0 for r0, r1 in v['region']])
                              for v in self.volumes], dtype=np.float64)
            idx = int(np.random.choice(len(self.volumes),
                                       p=sizes / sizes.sum()))
        origin = []
        for (start, stop), size in zip(self.volumes[idx]['region'],
                                       self.crop_size):
            if stop - start >= size:
                origin.append(start + int(np.random.randint(
                    stop - start - size + 1)))
            else:
                origin.append(start - (size - (stop - start)) // 2)
        return dict(volume_idx=idx, crop_origin=tuple(origin),
                    crop_size=self.crop_size)

    @force_full_init
    def get_data_info(self, idx: int) -> dict:
        if self.test_mode:
            info = super().get_data_info(idx)
        else:
            info = dict(self._random_crop(), sample_idx=idx)
        return self.load_crop(info)

    def load_crop(self, info: dict) -> dict:
        """Read ``info``'s window (``volume_idx``, ``crop_origin``,
        ``crop_size`` plus ``self.padding``) into the item described in the
        class docstring."""
        idx = info['volume_idx']
        volume = self.volumes[idx]
        origin = [o - p for o, p in zip(info['crop_origin'], self.padding)]
        size = [c + 2 * p for c, p in zip(info['crop_size'], self.padding)]
        raw = read_window(lambda s: self._read_block(idx, 'raw', s),
                          volume['region'], origin, size)
        lo, hi = volume['raw_range']
        raw = raw.astype(np.float32)
        if volume['clip_max'] is not None:
            raw = np.minimum(raw, np.float32(volume['clip_max']))
        raw = (raw - np.float32(lo)) / np.float32(hi - lo) if hi > lo else \
            np.zeros_like(raw)
        results = dict(
            info, raw=raw, padding=self.padding, volume_name=volume['name'],
            volume_shape=volume['shape'])
        if volume['label_key'] is not None:
            labels = read_window(lambda s: self._read_block(idx, 'labels', s),
                                 volume['region'], origin, size)
            results['labels'] = self._clean_labels(labels, volume)
        return results

    def _clean_labels(self, labels: np.ndarray, volume: dict) -> np.ndarray:
        """Unlabelled ids to 0, optional consecutive ids, as int64."""
        limits = np.iinfo(labels.dtype)
        for uid in self.unlabelled_ids:
            if limits.min <= uid <= limits.max:
                labels[labels == labels.dtype.type(uid)] = 0
        where = f'{volume["label_path"]}:{volume["label_key"]}'
        if limits.min < 0 and labels.min() < 0:
            raise ValueError(f'labels {where} hold negative ids')
        if self.relabel_consecutive:
            ids, inverse = np.unique(labels, return_inverse=True)
            return (inverse.reshape(labels.shape) +
                    int(ids[0] != 0)).astype(np.int64)
        if labels.max() > UINT32_MAX:
            raise ValueError(
                f'labels {where} hold ids above uint32 ({labels.max()}); '
                f'set relabel_consecutive=True or add them to '
                f'unlabelled_ids')
        return labels.astype(np.int64)
