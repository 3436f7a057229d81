from .codebook_usage import CodebookUsage
from .psnr import PSNR

__all__ = ['PSNR', 'CodebookUsage']
