"""Classifiers: algorithms that predict a class per image (the linear probe
of a frozen tokenizer)."""
from .linear_probe import LinearProbe

__all__ = ['LinearProbe']
