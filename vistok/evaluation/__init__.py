"""Evaluation: importing this package registers vistok's metrics and feature
extractors."""
from .feature_extractors import (
    FeatureExtractor,
    InceptionV3Compat,
    PytorchFIDInception,
    RandomConvFeatures,
)
from .metrics import (
    PSNR,
    SSIM,
    VOI,
    Accuracy,
    AdaptedRandError,
    CodebookUsage,
    FrechetInceptionDistance,
    LPIPSMetric,
)

__all__ = [
    'Accuracy', 'PSNR', 'SSIM', 'VOI', 'AdaptedRandError', 'CodebookUsage',
    'FrechetInceptionDistance', 'LPIPSMetric',
    'FeatureExtractor', 'InceptionV3Compat', 'PytorchFIDInception',
    'RandomConvFeatures'
]
