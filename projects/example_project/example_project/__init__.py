"""Template plugin: importing this package registers its modules."""
from .patch_tokenizer import PatchTokenizer
from .random_projection_quantizer import RandomProjectionQuantizer

__all__ = ['PatchTokenizer', 'RandomProjectionQuantizer']
