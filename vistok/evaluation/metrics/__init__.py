from .accuracy import Accuracy
from .codebook_usage import CodebookUsage
from .fid import FrechetInceptionDistance, fid_protocol_fingerprint
from .lpips import LPIPSMetric
from .psnr import PSNR
from .segmentation import VOI, AdaptedRandError
from .ssim import SSIM, ssim

__all__ = [
    'Accuracy', 'PSNR', 'SSIM', 'ssim', 'CodebookUsage',
    'FrechetInceptionDistance', 'fid_protocol_fingerprint', 'LPIPSMetric',
    'VOI', 'AdaptedRandError'
]
