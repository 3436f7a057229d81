from .autocast_optim_wrapper import AutocastOptimWrapper
from .multi_part_constructor import MultiPartOptimWrapperConstructor
from .update import (NonFiniteGuard, NonFiniteLossError, all_reduce_gradients,
                     update_params)

__all__ = [
    'AutocastOptimWrapper', 'MultiPartOptimWrapperConstructor',
    'NonFiniteGuard', 'NonFiniteLossError', 'all_reduce_gradients',
    'update_params'
]
