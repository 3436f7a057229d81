from .token import TokenDataPreprocessor

__all__ = ['TokenDataPreprocessor']
