"""mmcv-style transforms registered in vistok's ``TRANSFORMS``.

mmcv's own (``Resize``, ``RandomFlip``, ``CenterCrop``, ...) live in
mmengine's root ``TRANSFORMS`` and are usable in vistok pipelines too.
Images are RGB everywhere in vistok.
"""
from .formatting import PackInputs
from .loading import LoadImageRGB, read_image_rgb
from .processing import (
    ADMRandomCrop,
    RandomCrop,
    RandomResizedCrop,
    ResizeShortEdge,
)

__all__ = [
    'ADMRandomCrop', 'LoadImageRGB', 'PackInputs', 'RandomCrop',
    'RandomResizedCrop', 'ResizeShortEdge', 'read_image_rgb'
]
