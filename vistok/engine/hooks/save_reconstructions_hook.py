import os
import os.path as osp

import numpy as np
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from PIL import Image

from vistok.registry import HOOKS


def to_uint8_hwc(img) -> np.ndarray:
    """``(C, H, W)`` float image in [0, 255] -> ``(H, W, C)`` uint8."""
    arr = img.detach().float().clamp(0, 255).round().byte().cpu().numpy()
    arr = arr.transpose(1, 2, 0)
    return arr[..., 0] if arr.shape[-1] == 1 else arr


@HOOKS.register_module()
class SaveReconstructionsHook(Hook):
    """Write ``input | reconstruction`` image pairs of the test set as PNG.

    Reads ``gt_img`` and ``pred_img`` (``(C, H, W)``, [0, 255]) of each
    predicted :class:`~vistok.structures.DataSample`. Files are named by the
    sample's ``sample_idx`` (else rank and running number).

    Args:
        out_dir: directory; a relative path is taken inside the work dir.
        max_images: stop after this many images per rank (``None``: all).
    """

    priority = 'LOW'

    def __init__(self, out_dir: str, max_images=None):
        self.out_dir = out_dir
        self.max_images = max_images
        self._count = 0

    def before_test(self, runner) -> None:
        if not osp.isabs(self.out_dir):
            self.out_dir = osp.join(runner.work_dir, self.out_dir)
        os.makedirs(self.out_dir, exist_ok=True)
        self._count = 0

    def after_test_iter(self, runner, batch_idx, data_batch=None,
                        outputs=None) -> None:
        for sample in outputs or []:
            if self.max_images is not None and self._count >= self.max_images:
                return
            if 'pred_img' not in sample or 'gt_img' not in sample:
                continue
            pair = np.concatenate([to_uint8_hwc(sample.gt_img),
                                   to_uint8_hwc(sample.pred_img)], axis=1)
            name = sample.metainfo.get('sample_idx',
                                       f'rank{get_rank()}_{self._count}')
            Image.fromarray(pair).save(osp.join(self.out_dir, f'{name}.png'))
            self._count += 1
