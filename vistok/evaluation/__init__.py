"""Evaluation: importing this package registers vistok's metrics."""
from .metrics import PSNR, CodebookUsage

__all__ = ['PSNR', 'CodebookUsage']
