"""Token generators (AR, MaskGIT, VAR) and their samplers."""
from .sampling import (GUIDANCE_SCHEDULES, TokenSampler, filter_logits,
                       guidance_scale, sample_logits)

__all__ = [
    'GUIDANCE_SCHEDULES', 'TokenSampler', 'filter_logits', 'guidance_scale',
    'sample_logits'
]
