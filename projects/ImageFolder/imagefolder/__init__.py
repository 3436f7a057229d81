"""ImageFolder (Li et al., ICLR 2025): importing this package registers its
tokenizer in vistok's MODELS."""
from .tokenizer import ImageFolderTokenizer

__all__ = ['ImageFolderTokenizer']
