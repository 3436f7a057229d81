from .pixel import PixelHead
from .token_logit import TokenLogitHead

__all__ = ['PixelHead', 'TokenLogitHead']
