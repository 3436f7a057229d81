"""The photographs that ship inside scikit-image, as a tiny real-image
dataset that needs no download.

``PHOTOS`` lists the ``skimage.data`` images that load offline from the
scikit-image wheel and are photographs or micrographs. Left out: those that
need ``pooch`` and a download (``brain``, ``cells3d``, ``eagle``, ``kidney``,
``lily``, ``skin``, ...), synthetic ones (``checkerboard``, ``colorwheel``,
``logo``, ``binary_blobs``, ``shepp_logan_phantom``, ``horse``), ``cat``
(the same picture as ``chelsea``) and the 25x25 ``lfw_subset`` stack.
"""
import functools
from typing import Optional, Sequence

import numpy as np

from vistok.registry import DATASETS
from .base import BaseImageDataset

PHOTOS = ('astronaut', 'brick', 'camera', 'cell', 'chelsea', 'clock',
          'coffee', 'coins', 'grass', 'gravel', 'hubble_deep_field',
          'immunohistochemistry', 'microaneurysms', 'moon', 'page', 'retina',
          'rocket', 'text')


@functools.lru_cache(maxsize=None)
def load_photo(name: str) -> np.ndarray:
    """``skimage.data.<name>()`` as a read-only ``(H, W, 3)`` ``uint8`` RGB
    array (gray photos are repeated over the three channels); cached per
    process."""
    import skimage.data
    img = getattr(skimage.data, name)()
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = np.ascontiguousarray(img[..., :3], dtype=np.uint8)
    img.flags.writeable = False
    return img


@DATASETS.register_module()
class SkimagePhotoDataset(BaseImageDataset):
    """Real photos from ``skimage.data`` (all offline, 102 to 1411 pixels a
    side); the pipeline usually crops / resizes them to the training size.

    Each item (before the pipeline) is a dict with ``img`` (``(H, W, 3)``
    ``uint8`` RGB, a fresh copy), ``img_shape`` and ``ori_shape``
    (``(H, W)``), ``gt_label`` (position of the photo in ``names``, which are
    also the dataset's ``classes``), ``photo_name`` and ``sample_idx``.

    Args:
        names: photos to use, a subset of ``PHOTOS`` (default: all).
        repeat: the list of photos is repeated this many times, so an epoch
            can hold more than the ~20 photos.
        pipeline, test_mode, lazy_init, indices: as in
            ``mmengine.dataset.BaseDataset``.
        serialize_data: off by default: the list is tiny and mmengine's
            serialisation runs a ``gc.collect()`` (~0.2 s) per dataset.
    """

    def __init__(self,
                 names: Optional[Sequence[str]] = None,
                 repeat: int = 1,
                 pipeline=(),
                 test_mode: bool = False,
                 lazy_init: bool = False,
                 indices=None,
                 serialize_data: bool = False):
        names = PHOTOS if names is None else tuple(names)
        unknown = [n for n in names if n not in PHOTOS]
        if unknown:
            raise ValueError(f'SkimagePhotoDataset: unknown or non-offline '
                             f'photos {unknown}; choose from {PHOTOS}')
        if repeat < 1:
            raise ValueError(f'repeat must be >= 1, got {repeat}')
        self.names = names
        self.repeat = repeat
        super().__init__(
            metainfo=dict(classes=names),
            pipeline=pipeline,
            test_mode=test_mode,
            lazy_init=lazy_init,
            indices=indices,
            serialize_data=serialize_data)

    def load_data_list(self):
        return [dict(photo_name=name, gt_label=label)
                for _ in range(self.repeat)
                for label, name in enumerate(self.names)]

    def get_data_info(self, idx: int) -> dict:
        info = super().get_data_info(idx)
        info['img'] = load_photo(info['photo_name']).copy()
        info['img_shape'] = info['ori_shape'] = info['img'].shape[:2]
        return info
