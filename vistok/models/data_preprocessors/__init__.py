from .token import TokenDataPreprocessor
from .volume import VolumeDataPreprocessor

__all__ = ['TokenDataPreprocessor', 'VolumeDataPreprocessor']
