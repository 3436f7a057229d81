"""Template plugin: importing this package registers its modules."""
from .random_projection_quantizer import RandomProjectionQuantizer

__all__ = ['RandomProjectionQuantizer']
