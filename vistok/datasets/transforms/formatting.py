"""Packing a pipeline's result into what vistok models consume."""
from typing import Sequence

import numpy as np
import torch
from mmcv.transforms import BaseTransform

from vistok.registry import TRANSFORMS
from vistok.structures import DataSample


@TRANSFORMS.register_module()
class PackInputs(BaseTransform):
    """Pack ``results`` into ``dict(inputs=..., data_samples=...)``.

    * ``inputs``: ``results['img']`` (``(H, W, C)`` or gray ``(H, W)``,
      RGB, usually ``uint8``) as a ``(C, H, W)`` tensor of the same dtype.
    * ``data_samples``: a :class:`vistok.structures.DataSample` with
      ``gt_label`` (``torch.long`` scalar) when ``results`` has one and, as
      metainfo, those of ``meta_keys`` that ``results`` has.

    mmengine's ``pseudo_collate`` then makes lists of both and
    ``ImgDataPreprocessor(mean=[127.5] * 3, std=[127.5] * 3)`` stacks the
    images into a float ``(B, 3, H, W)`` batch in ``[-1, 1]``.
    """

    def __init__(self,
                 meta_keys: Sequence[str] = ('sample_idx', 'img_path',
                                             'ori_shape', 'img_shape')):
        self.meta_keys = tuple(meta_keys)

    def transform(self, results: dict) -> dict:
        img = results['img']
        if img.ndim == 2:
            img = img[..., None]
        inputs = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
        data_sample = DataSample()
        if 'gt_label' in results:
            data_sample.gt_label = torch.as_tensor(
                int(results['gt_label']), dtype=torch.long)
        data_sample.set_metainfo(
            {k: results[k] for k in self.meta_keys if k in results})
        return dict(inputs=inputs, data_samples=data_sample)

    def __repr__(self):
        return f'{type(self).__name__}(meta_keys={self.meta_keys})'
