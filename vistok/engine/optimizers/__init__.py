from .autocast_optim_wrapper import AutocastOptimWrapper
from .multi_part_constructor import MultiPartOptimWrapperConstructor

__all__ = ['AutocastOptimWrapper', 'MultiPartOptimWrapperConstructor']
