"""Datasets over single-file token stores: the SeiT format
(:mod:`~vistok.datasets.seit_format`) and the compact entropy-coded format
(:mod:`~vistok.datasets.compact_format`), with the class-list and
class-balanced subsets of the token-training papers (SeiT, Park et al.,
ICCV 2023, and SeiT++, Lee et al., ECCV 2024: ImageNet at reduced storage
budgets, and the SeiT++ augmentation ablation on ImageNet-100).

Both datasets return :class:`~vistok.datasets.TokenShardDataset`'s sample
dict, so a config swaps one store for another without touching the
pipeline::

    dict(indices=<int64 tensor, or list / tuple of per-level int64 tensors>,
         sample_idx=<int>, gt_label=<int, when the store has labels>)

Codes stay integers (``int64``, never one-hot or float) and files are
opened lazily in each process (DataLoader worker).

Subsets, shared by both datasets (:func:`select_images`), applied in this
order to the file's images:

1. ``classes``: keep the images whose label is in a class list (a file or a
   list; see :func:`read_class_list`), in file order. With
   ``remap_labels`` (default when ``classes`` is given) ``gt_label``
   becomes the class's position in the list, ``0 .. C - 1`` (the
   ImageNet-100 convention: a 100-way classifier).
2. ``subset_fraction``: a class-balanced subset; see :func:`select_images`
   for the exact rule.

``dataset.positions`` holds the selected images' positions in the file
(``int64``, ascending); ``len(dataset) == len(dataset.positions)``.
"""
import math
import os
import os.path as osp
import re
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from vistok.registry import DATASETS
from .base import apply_pipeline, build_pipeline
from .compact_format import CompactTokenFile
from .seit_format import (
    SeiTFormatError,
    SeiTTokenFile,
    index_file_for,
    read_seit_index,
    read_seit_labels,
)

#: the released SeiT tokens: 32 x 32 grids of a 391-code ViT-VQGAN
#: (256 x 256 images, patch 8; SeiT ``datasets.py``)
SEIT_GRID = (32, 32)
_INT_RE = re.compile(r'[+-]?\d+')

ClassSpec = Union[str, os.PathLike, Sequence[Union[int, str]]]


# --- class lists and subsets (shared by both datasets) ---------------------
def _is_path(value) -> bool:
    return isinstance(value, (str, os.PathLike))


def _read_lines(path: str, argument: str) -> List[str]:
    if not osp.isfile(path):
        raise FileNotFoundError(f'{argument}={path!r} does not exist')
    with open(path) as f:
        return f.read().splitlines()


def read_class_names(class_names: ClassSpec) -> dict:
    """``{name: class id}`` of a class-name file (line ``k`` names class
    ``k``; its first whitespace-separated field is the name, so ImageNet's
    ``LOC_synset_mapping.txt`` lines ``n01440764 tench, Tinca tinca`` work
    as well as bare synset lists) or of a list of names (position = id).
    Trailing blank lines are ignored; a blank line inside or a repeated
    name is a ``ValueError`` naming the file and line."""
    if _is_path(class_names):
        path = os.fspath(class_names)
        lines = _read_lines(path, 'class_names')
        while lines and not lines[-1].strip():
            lines.pop()
        where = [f'class_names file {path} line {k + 1}'
                 for k in range(len(lines))]
        names = [line.split()[0] if line.strip() else '' for line in lines]
    else:
        names = [str(name).strip() for name in class_names]
        where = [f'class_names[{k}]' for k in range(len(names))]
    table = {}
    for k, name in enumerate(names):
        if not name:
            raise ValueError(f'{where[k]} is blank: line k must name class '
                             f'k (class ids are line numbers - 1)')
        if name in table:
            raise ValueError(f'{where[k]}: class name {name!r} repeats '
                             f'{where[table[name]]}')
        table[name] = k
    return table


def read_class_list(classes: ClassSpec,
                    class_names: Optional[ClassSpec] = None
                    ) -> Tuple[List[int], List[str]]:
    """Resolve a class list to class ids.

    Args:
        classes: a file with one class per line (blank lines and ``#``
            comments ignored), or a list. An entry is an integer class id or
            a class name (e.g. an ImageNet wnid ``n01558993``) looked up in
            ``class_names``.
        class_names: a file or list naming the classes (see
            :func:`read_class_names`); needed only for names.

    Returns:
        ``(ids, where)``: the class ids in list order, and for each where it
        came from (``'classes file <path> line <n>'`` or ``'classes[k]'``),
        for error messages.

    Raises:
        FileNotFoundError: a file does not exist (the message names the
            argument).
        ValueError: a name without ``class_names``, an unknown name, a
            duplicate class, an entry that is neither, or an empty list
            (naming the file and line).
    """
    if _is_path(classes):
        path = os.fspath(classes)
        entries = []
        for k, line in enumerate(_read_lines(path, 'classes')):
            text = line.split('#', 1)[0].strip()
            if text:
                entries.append((text, f'classes file {path} line {k + 1}'))
        source = f'classes file {path}'
    elif isinstance(classes, (Sequence, np.ndarray)):
        entries = [(c, f'classes[{k}]') for k, c in enumerate(classes)]
        source = 'classes'
    else:
        raise TypeError(f'classes must be a file path or a list of class '
                        f'ids / names, got {type(classes).__name__}')
    if not entries:
        raise ValueError(f'{source} lists no class')
    table = None
    ids, where, first_seen = [], [], {}
    for entry, origin in entries:
        if isinstance(entry, (int, np.integer)) and not isinstance(
                entry, bool):
            class_id = int(entry)
        elif isinstance(entry, str) and _INT_RE.fullmatch(entry.strip()):
            class_id = int(entry)
        elif isinstance(entry, str) and len(entry.split()) == 1:
            name = entry.strip()
            if class_names is None:
                raise ValueError(
                    f'{origin}: {name!r} is a class name, which needs '
                    f'class_names (a file with one class name per line, '
                    f'line k naming class k, e.g. ImageNet\'s synset list)')
            if table is None:
                table = read_class_names(class_names)
            if name not in table:
                raise ValueError(f'{origin}: unknown class name {name!r} '
                                 f'(not in class_names)')
            class_id = table[name]
        else:
            raise ValueError(f'{origin}: expected one integer class id or '
                             f'one class name, got {entry!r}')
        if class_id in first_seen:
            raise ValueError(f'{origin}: class {entry!r} (id {class_id}) is '
                             f'listed twice (first at '
                             f'{first_seen[class_id]})')
        first_seen[class_id] = origin
        ids.append(class_id)
        where.append(origin)
    return ids, where


def round_half_up(value: float) -> int:
    """``value`` rounded to the nearest integer, halves up, exactly on the
    float64 value (``floor(v) + (v - floor(v) >= 0.5)``; ``v - floor(v)``
    is exact, unlike ``floor(v + 0.5)``)."""
    low = math.floor(value)
    return low + int(value - low >= 0.5)


def _check_fraction(fraction) -> float:
    valid = (isinstance(fraction, (float, int, np.floating, np.integer))
             and not isinstance(fraction, bool))
    if not valid or not 0 < float(fraction) <= 1:
        raise ValueError(f'subset_fraction must be a number in (0, 1], got '
                         f'{fraction!r}')
    return float(fraction)


def select_images(labels: Optional[np.ndarray],
                  classes: Optional[ClassSpec] = None,
                  fraction: Optional[float] = None, seed: int = 0,
                  class_names: Optional[ClassSpec] = None,
                  labels_from: str = 'the labels') -> np.ndarray:
    """Positions (in file order) of the images a class list and a
    class-balanced fraction select.

    1. ``classes`` (:func:`read_class_list`): the images whose label is one
       of the listed classes, in file order; every listed class must have an
       image (else ``ValueError`` naming the file and line).
    2. ``fraction``: for each class ``c`` (ascending class id, the id in the
       labels, not the remapped one) with ``n_c`` images left after step 1,
       keep ``k_c = max(1, round_half_up(fraction * n_c))`` of them, where
       ``fraction * n_c`` is the float64 product rounded to the nearest
       integer with halves rounded up (:func:`round_half_up`; e.g. 0.5 of 3
       images keeps 2, 0.5 of 5 keeps 3 where ``round`` would keep 2, 0.1
       of 4 keeps 1 and 0.01 of 10 keeps 1). The kept
       images are the class's images (in file order) at the first ``k_c``
       entries of ``np.random.default_rng([seed, c]).permutation(n_c)``,
       so a class's draw does not depend on the other classes. The result
       is sorted back to file order. ``fraction`` must be in ``(0, 1]``; 1
       keeps every image.

    Args:
        labels: ``(N,)`` integer labels of the file's images, or None (then
            ``classes`` and ``fraction`` must be None).
        classes, class_names: the class list (see :func:`read_class_list`).
        fraction: the dataset's ``subset_fraction``.
        seed: the dataset's ``subset_seed`` (a non-negative int).
        labels_from: where labels would come from, named in the error when
            they are missing (e.g. ``'label_file'``).

    Returns:
        ``int64`` positions, ascending.
    """
    if labels is None:
        if classes is not None or fraction is not None:
            given = [name for name, value in (('classes', classes),
                                              ('subset_fraction', fraction))
                     if value is not None]
            raise ValueError(f'{" and ".join(given)}: selecting by class '
                             f'needs per-image labels, but there are none: '
                             f'pass {labels_from}')
        raise ValueError('labels is None and nothing is selected: without '
                         'classes or subset_fraction every image is kept')
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f'labels must be a 1-D integer array, got '
                         f'{labels.dtype} of shape {labels.shape}')
    positions = np.arange(labels.size, dtype=np.int64)
    if classes is not None:
        ids, where = read_class_list(classes, class_names)
        present = np.isin(np.asarray(ids, dtype=np.int64), labels)
        if not present.all():
            k = int(np.flatnonzero(~present)[0])
            raise ValueError(f'{where[k]}: no image has class {ids[k]} '
                             f'(in {labels_from})')
        positions = positions[np.isin(labels, ids)]
    if fraction is None:
        return positions
    fraction = _check_fraction(fraction)
    if not (isinstance(seed, (int, np.integer)) and seed >= 0):
        raise ValueError(f'subset_seed must be a non-negative int, got '
                         f'{seed!r}')
    selected = labels[positions]
    if selected.size and selected.min() < 0:
        raise ValueError(f'subset_fraction needs non-negative class ids, '
                         f'{labels_from} has {int(selected.min())}')
    # group by class (a stable sort keeps file order inside a class)
    by_class = np.argsort(selected, kind='stable')
    class_ids, starts = np.unique(selected[by_class], return_index=True)
    kept = []
    for c, members in zip(class_ids.tolist(),
                          np.split(positions[by_class], starts[1:])):
        k = max(1, round_half_up(fraction * members.size))
        order = np.random.default_rng([int(seed), c]).permutation(
            members.size)
        kept.append(members[order[:k]])
    return np.sort(np.concatenate(kept)) if kept else positions


def remap_to_class_list(labels: np.ndarray,
                        class_ids: Sequence[int]) -> np.ndarray:
    """Each label's position in ``class_ids`` (``int64``); every label
    must be listed (as after :func:`select_images` with that list)."""
    labels = np.asarray(labels, dtype=np.int64)
    ids = np.asarray(class_ids, dtype=np.int64)
    order = np.argsort(ids, kind='stable')
    found = np.minimum(np.searchsorted(ids[order], labels), ids.size - 1)
    remapped = order[found]
    missing = np.flatnonzero(ids[remapped] != labels)
    if missing.size:
        raise ValueError(f'label {int(labels[missing[0]])} is not in the '
                         f'class list {list(class_ids)}')
    return remapped.astype(np.int64)


# --- datasets ---------------------------------------------------------------
def _require_file(path, argument: str) -> str:
    path = os.fspath(path)
    if not osp.isfile(path):
        raise FileNotFoundError(f'{argument}={path!r} does not exist')
    return path


class _TokenFileDataset(Dataset):
    """The selection, sample dict and pipeline shared by the token-file
    datasets; subclasses set ``self.source`` and ``self.pipeline`` (built
    transforms, see :func:`vistok.datasets.base.apply_pipeline`) and
    implement ``_read(position)`` (the image's indices, as stored) and
    ``_sample_idx(position)``."""

    def _select(self, labels: Optional[np.ndarray], num_images: int,
                classes, class_names, subset_fraction, subset_seed: int,
                remap_labels: Optional[bool], labels_from: str) -> None:
        if remap_labels and classes is None:
            raise ValueError('remap_labels=True needs classes (the class '
                             'list whose positions become the labels)')
        if classes is None and subset_fraction is None:
            self.positions = np.arange(num_images, dtype=np.int64)
        else:
            self.positions = select_images(labels, classes, subset_fraction,
                                           subset_seed, class_names,
                                           labels_from)
        self.labels = None
        if labels is not None:
            self.labels = np.asarray(labels, dtype=np.int64)[self.positions]
            if classes is not None and remap_labels in (None, True):
                ids, _ = read_class_list(classes, class_names)
                self.labels = remap_to_class_list(self.labels, ids)

    def __len__(self) -> int:
        return int(self.positions.size)

    def __getitem__(self, idx: int) -> dict:
        n = len(self)
        if not -n <= idx < n:
            raise IndexError(f'index {idx} out of range for {n} selected '
                             f'images of {self.source}')
        draw, idx = idx, int(idx) % n  # a SeededIndex seeds the pipeline
        position = int(self.positions[idx])
        out = dict(indices=self._read(position),
                   sample_idx=self._sample_idx(position))
        if self.labels is not None:
            out['gt_label'] = int(self.labels[idx])
        return apply_pipeline(self.pipeline, out, draw)

    def _read(self, position: int):
        raise NotImplementedError

    def _sample_idx(self, position: int) -> int:
        return position


def _as_tensor(codes: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(codes, dtype=np.int64))


@DATASETS.register_module()
class SeiTTokenDataset(_TokenFileDataset):
    """Map-style dataset over a SeiT token split (see
    :mod:`~vistok.datasets.seit_format`), giving
    :class:`~vistok.datasets.TokenShardDataset`'s sample dict:
    ``indices`` is the image's ``int64`` codes shaped ``grid``,
    ``sample_idx`` its position in the file (the SeiT format stores no
    sample index), ``gt_label`` its label when ``label_file`` is given.

    Loading: the index and label files are read at construction; the token
    file is decompressed into memory (as SeiT does, about 1.4 GB for
    ImageNet-1k) on the first access **in each process** and is never
    pickled, so a DataLoader with the spawn start method sends each worker
    only the small state and each worker loads its own copy; with fork, a
    stream already loaded in the parent is shared copy-on-write. Each
    image's escapes (and, with ``grid``, its code count) are checked when
    it is read; ``validate`` checks the whole file at that first load.

    Args:
        token_file: the ``*-token.data.bin.gz`` file.
        label_file: the ``*-label.txt`` file (one class id per line).
        index_file: default: ``token_file`` with ``data.bin`` replaced by
            ``index.npy`` (SeiT's rule).
        grid: the token grid of an image, default :data:`SEIT_GRID` (the
            released 32 x 32 ViT-VQGAN tokens); None gives flat
            ``(L,)`` codes.
        classes: a class-list file or list (ids, or names resolved through
            ``class_names``; see :func:`read_class_list`): keep only these
            classes' images, in file order.
        class_names: a file or list naming class ids (line / position k =
            class k), e.g. ImageNet's synset list; needed for names.
        subset_fraction: keep a class-balanced fraction in ``(0, 1]`` of
            each class's images (after ``classes``; rule in
            :func:`select_images`). Needs labels.
        subset_seed: seed of that draw (non-negative int).
        remap_labels: ``gt_label`` = the class's position in ``classes``
            (``0 .. C - 1``). Default: True when ``classes`` is given;
            False keeps the file's labels.
        validate: check every image when the token file is loaded.
        pipeline: transform configs (built with vistok's ``TRANSFORMS``) or
            callables run on each sample dict, under the draw's seed when
            the index is a :class:`~vistok.datasets.SeededIndex` (see
            :func:`vistok.datasets.base.apply_pipeline`); None: the stored
            sample as it is.

    Raises:
        FileNotFoundError: a file is missing (naming the argument and path).
        SeiTFormatError: the files break the format or disagree.
    """

    def __init__(self, token_file: str, label_file: Optional[str] = None,
                 index_file: Optional[str] = None,
                 grid: Optional[Sequence[int]] = SEIT_GRID,
                 classes: Optional[ClassSpec] = None,
                 class_names: Optional[ClassSpec] = None,
                 subset_fraction: Optional[float] = None,
                 subset_seed: int = 0, remap_labels: Optional[bool] = None,
                 validate: bool = False,
                 pipeline: Optional[Sequence[Union[dict, Callable]]] = None):
        self.pipeline = build_pipeline(pipeline or ())
        self.token_file = _require_file(token_file, 'token_file')
        self.index_file = _require_file(
            index_file if index_file is not None else
            index_file_for(self.token_file),
            'index_file' if index_file is not None else
            'index_file (derived from token_file)')
        self.label_file = (None if label_file is None else _require_file(
            label_file, 'label_file'))
        self.grid = tuple(int(g) for g in grid) if grid else None
        self.validate = validate
        self.source = self.token_file
        num_images = read_seit_index(self.index_file).size - 1
        labels = None
        if self.label_file is not None:
            labels = read_seit_labels(self.label_file)
            if labels.size != num_images:
                raise SeiTFormatError(
                    f'label_file {self.label_file} has {labels.size} labels '
                    f'but index_file {self.index_file} indexes '
                    f'{num_images} images')
        self._select(labels, num_images, classes, class_names,
                     subset_fraction, subset_seed, remap_labels,
                     'label_file')
        self._file = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state['_file'] = None  # the stream is loaded again in each process
        return state

    @property
    def token_store(self) -> SeiTTokenFile:
        """The :class:`SeiTTokenFile`, loaded on first use in this
        process."""
        if self._file is None:
            self._file = SeiTTokenFile(self.token_file,
                                       index_file=self.index_file,
                                       grid=self.grid,
                                       validate=self.validate)
        return self._file

    def _read(self, position: int) -> torch.Tensor:
        return _as_tensor(self.token_store[position])


@DATASETS.register_module()
class CompactTokenDataset(_TokenFileDataset):
    """Map-style dataset over a compact token file (see
    :mod:`~vistok.datasets.compact_format`), giving
    :class:`~vistok.datasets.TokenShardDataset`'s sample dict:
    ``indices`` has the file's structure (a tensor, or a list / tuple of
    per-level tensors shaped as the header's ``levels``), ``int64``;
    ``sample_idx`` comes from the file's ``sample_idx`` section when it has
    one, else it is the position in the file; ``gt_label`` from its
    ``labels`` section when present.

    The file is memory-mapped; :class:`CompactTokenFile` drops the map when
    pickled and maps the file again in each process (DataLoader worker).
    Each image's checksum is checked when it is read.

    Args:
        filename: the compact token file.
        classes: a class-list file or list (ids, or names resolved through
            ``class_names``; see :func:`read_class_list`): keep only these
            classes' images, in file order.
        class_names: a file or list naming class ids (line / position k =
            class k), e.g. ImageNet's synset list; needed for names.
        subset_fraction: keep a class-balanced fraction in ``(0, 1]`` of
            each class's images (after ``classes``; rule in
            :func:`select_images`). Needs labels.
        subset_seed: seed of that draw (non-negative int).
        remap_labels: ``gt_label`` = the class's position in ``classes``
            (``0 .. C - 1``). Default: True when ``classes`` is given;
            False keeps the file's labels.
        pipeline: transform configs (built with vistok's ``TRANSFORMS``) or
            callables run on each sample dict, under the draw's seed when
            the index is a :class:`~vistok.datasets.SeededIndex` (see
            :func:`vistok.datasets.base.apply_pipeline`); None: the stored
            sample as it is.

    Raises:
        FileNotFoundError: the file is missing (naming the argument).
        CompactFormatError: the file breaks the format or is damaged.
    """

    def __init__(self, filename: str, classes: Optional[ClassSpec] = None,
                 class_names: Optional[ClassSpec] = None,
                 subset_fraction: Optional[float] = None,
                 subset_seed: int = 0, remap_labels: Optional[bool] = None,
                 pipeline: Optional[Sequence[Union[dict, Callable]]] = None):
        self.pipeline = build_pipeline(pipeline or ())
        self.filename = _require_file(filename, 'filename')
        self.source = self.filename
        self.token_store = CompactTokenFile(self.filename)
        store = self.token_store
        labels = None if store.labels is None else np.array(store.labels)
        self._select(labels, len(store), classes, class_names,
                     subset_fraction, subset_seed, remap_labels,
                     f'a compact file with labels ({self.filename} has no '
                     f'labels section)')

    def _read(self, position: int):
        levels = self.token_store.split_levels(self.token_store[position])
        if isinstance(levels, np.ndarray):
            return _as_tensor(levels)
        return type(levels)(_as_tensor(level) for level in levels)

    def _sample_idx(self, position: int) -> int:
        sample_idx = self.token_store.sample_idx
        return position if sample_idx is None else int(sample_idx[position])
