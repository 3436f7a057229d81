"""Segmentation algorithms and post-processing."""
from .affinity_segmentor import AffinitySegmentor
from .multicut import Multicut
from .sliding_window import sliding_window_inference
from .watershed import (
    DistanceTransformWatershed,
    WatershedAgglomeration,
    WatershedFragments,
)

__all__ = [
    'AffinitySegmentor', 'DistanceTransformWatershed', 'Multicut',
    'WatershedAgglomeration', 'WatershedFragments', 'sliding_window_inference'
]
