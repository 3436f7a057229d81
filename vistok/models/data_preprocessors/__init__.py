from .image import (
    DEFAULT_IMAGE_PREPROCESSOR,
    PIXEL_MAX,
    ImagePreprocessor,
    image_preprocessor_cfg,
)
from .token import TokenDataPreprocessor
from .volume import VolumeDataPreprocessor

__all__ = [
    'DEFAULT_IMAGE_PREPROCESSOR', 'ImagePreprocessor', 'PIXEL_MAX',
    'TokenDataPreprocessor', 'VolumeDataPreprocessor',
    'image_preprocessor_cfg'
]
