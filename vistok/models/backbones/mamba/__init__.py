"""Mamba backbones: a pure-PyTorch selective scan with its own backward pass
and a causal depthwise conv1d (mamba-ssm / causal-conv1d kernels used on CUDA
when importable), and the forward / bidirectional / tri-oriented Mamba
mixer."""
from .causal_conv1d import causal_conv1d
from .mixer import MambaMixer, deinterleave, interleave
from .selective_scan import selective_scan, selective_scan_reference

__all__ = [
    'causal_conv1d', 'selective_scan', 'selective_scan_reference',
    'MambaMixer', 'interleave', 'deinterleave'
]
