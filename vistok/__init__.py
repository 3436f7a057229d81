"""vistok: visual tokenizers and token-based visual learning.

Importing ``vistok`` is cheap on purpose; the registries live in
:mod:`vistok.registry` and the parts in :mod:`vistok.models`.
"""
from .version import __version__

__all__ = ['__version__']
