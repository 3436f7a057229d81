from .image import (
    DEFAULT_IMAGE_PREPROCESSOR,
    PIXEL_MAX,
    ImagePreprocessor,
    image_preprocessor_cfg,
)
from .token import TokenDataPreprocessor
from .token_embedding import TokenEmbeddingPreprocessor
from .volume import VolumeDataPreprocessor

__all__ = [
    'DEFAULT_IMAGE_PREPROCESSOR', 'ImagePreprocessor', 'PIXEL_MAX',
    'TokenDataPreprocessor', 'TokenEmbeddingPreprocessor',
    'VolumeDataPreprocessor',
    'image_preprocessor_cfg'
]
