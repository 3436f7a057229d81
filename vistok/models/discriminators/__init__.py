from .diffaug import DiffAugment
from .frozen_feature import FrozenFeatureDiscriminator
from .maskgit import BlurPool, MaskGITDiscriminator
from .patchgan import LocalBatchNorm, PatchGANDiscriminator

__all__ = [
    'DiffAugment', 'FrozenFeatureDiscriminator', 'BlurPool',
    'MaskGITDiscriminator', 'LocalBatchNorm', 'PatchGANDiscriminator'
]
