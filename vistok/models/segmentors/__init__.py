"""Segmentation algorithms and post-processing."""
from .affinity_segmentor import AffinitySegmentor
from .multicut import Multicut
from .postprocess import WatershedAgglomeration, WatershedFragments
from .sliding_window import sliding_window_inference

__all__ = [
    'AffinitySegmentor', 'Multicut', 'WatershedAgglomeration',
    'WatershedFragments', 'sliding_window_inference'
]
