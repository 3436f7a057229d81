from .base import BaseQuantizer
from .vq import VectorQuantizer

__all__ = ['BaseQuantizer', 'VectorQuantizer']
