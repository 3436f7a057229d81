from .token import TokenDataPreprocessor
from .volume import VolumeDataPreprocessor

__all__ = [
    'TokenDataPreprocessor', 'VolumeDataPreprocessor', 'build_data_preprocessor'
]


def build_data_preprocessor(cfg, default_type: str):
    """A data preprocessor module from ``cfg``: ``None`` builds
    ``default_type``, a dict is built from vistok's MODELS (so it resolves
    without a Runner's default scope), a module is returned as is."""
    import torch.nn as nn

    from vistok.registry import MODELS
    if isinstance(cfg, nn.Module):
        return cfg
    return MODELS.build(cfg if cfg is not None else dict(type=default_type))
