"""Models: the parts (quantizers, backbones, heads, losses, discriminators,
data preprocessors) and the algorithms built from them. Importing this package
registers everything in vistok's registries."""
from . import (
    backbones,
    classifiers,
    data_preprocessors,
    discriminators,
    generators,
    heads,
    losses,
    quantizers,
    segmentors,
    tokenizers,
)

__all__ = [
    'backbones', 'classifiers', 'data_preprocessors', 'discriminators',
    'generators', 'heads', 'losses', 'quantizers', 'segmentors', 'tokenizers'
]
