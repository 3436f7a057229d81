from .autocast_optim_wrapper import AutocastOptimWrapper
from .layer_decay_constructor import LayerDecayOptimWrapperConstructor
from .lr_scaling import effective_batch_size, lr_scale_factor
from .multi_part_constructor import MultiPartOptimWrapperConstructor

__all__ = [
    'AutocastOptimWrapper', 'LayerDecayOptimWrapperConstructor',
    'MultiPartOptimWrapperConstructor', 'effective_batch_size',
    'lr_scale_factor'
]
