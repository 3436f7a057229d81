"""Image loading. Images are RGB everywhere in vistok."""
import io
from typing import Optional

import numpy as np
from mmcv.transforms import BaseTransform
from mmengine import fileio
from PIL import Image

from vistok.registry import TRANSFORMS


def read_image_rgb(data: bytes) -> np.ndarray:
    """Decode encoded image bytes (any format PIL reads) to an ``(H, W, 3)``
    ``uint8`` RGB array; palette, gray and alpha images are converted."""
    with Image.open(io.BytesIO(data)) as image:
        return np.array(image.convert('RGB'), dtype=np.uint8)


@TRANSFORMS.register_module()
class LoadImageRGB(BaseTransform):
    """Read ``results['img_path']`` with PIL as an RGB image.

    Unlike mmcv's ``LoadImageFromFile`` (BGR by default), the result is
    **RGB**: ``img`` is ``(H, W, 3)`` ``uint8``. Adds ``img``, ``img_shape``
    and ``ori_shape`` (``(H, W)``).

    Args:
        backend_args: mmengine file backend arguments (``None``: local disk).
    """

    def __init__(self, backend_args: Optional[dict] = None):
        self.backend_args = backend_args

    def transform(self, results: dict) -> dict:
        path = results['img_path']
        try:
            data = fileio.get(path, backend_args=self.backend_args)
            img = read_image_rgb(data)
        except Exception as err:
            raise OSError(f'LoadImageRGB cannot read image {path!r}: '
                          f'{type(err).__name__}: {err}') from err
        results['img'] = img
        results['img_shape'] = results['ori_shape'] = img.shape[:2]
        return results

    def __repr__(self):
        return f'{type(self).__name__}(backend_args={self.backend_args})'
