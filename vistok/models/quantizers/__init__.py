"""The quantizer zoo: one family per file, all registered in ``QUANTIZERS``
and usable as plain ``nn.Module``s (contract in :mod:`.base`)."""
from .base import BaseQuantizer, token_levels, usage_stats
from .fsq import FiniteScalarQuantizer
from .hierarchical import HierarchicalQuantizer
from .lfq import LookupFreeQuantizer
from .multiscale import MultiScaleResidualQuantizer
from .product import ProductQuantizer
from .residual import ResidualQuantizer
from .vq import VectorQuantizer

__all__ = [
    'BaseQuantizer', 'token_levels', 'usage_stats', 'FiniteScalarQuantizer',
    'HierarchicalQuantizer', 'LookupFreeQuantizer',
    'MultiScaleResidualQuantizer', 'ProductQuantizer', 'ResidualQuantizer',
    'VectorQuantizer'
]
