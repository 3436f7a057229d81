from .linear_cls import LinearClsHead
from .pixel import PixelHead
from .token_logit import TokenLogitHead

__all__ = ['LinearClsHead', 'PixelHead', 'TokenLogitHead']
