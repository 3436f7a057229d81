"""Token generators (AR, MaskGIT, VAR) and their samplers."""
from .ar import ARGenerator
from .base import BaseGenerator, ClassEmbedding, token_cross_entropy
from .maskgit import MASK_SCHEDULES, MaskGITGenerator, mask_schedule
from .sampling import (
    GUIDANCE_SCHEDULES,
    TokenSampler,
    filter_logits,
    guidance_scale,
    sample_logits,
)
from .var import VARGenerator

__all__ = [
    'ARGenerator', 'BaseGenerator', 'ClassEmbedding', 'token_cross_entropy',
    'MASK_SCHEDULES', 'MaskGITGenerator', 'mask_schedule',
    'GUIDANCE_SCHEDULES', 'TokenSampler', 'filter_logits', 'guidance_scale',
    'sample_logits', 'VARGenerator'
]
