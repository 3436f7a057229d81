"""Local pretrained weights: one clear error when a file is missing.

Constructors never read files (DESIGN §6): a part that needs external weights
keeps the path as an argument and loads it in ``init_weights()``, which the
Runner calls before iteration 0 (the test / export tools call it too).
"""
import os.path as osp
from typing import Dict, Optional

import torch

from vistok.utils.checkpoint import (
    load_checkpoint_file,
    load_safetensors_file,
)


class MissingWeightsError(FileNotFoundError):
    """A pretrained weights file is missing.

    The message names the file, the config key that sets it and how to
    obtain it. ``key`` is relative to the part that needs the file (e.g.
    ``trunk_path``); an algorithm owning the part prefixes it with
    :meth:`with_prefix` so that the user sees the full config key
    (``model.perceptual_loss.trunk_path``).
    """

    def __init__(self, path: Optional[str], key: str, how_to_get: str):
        self.path, self.key, self.how_to_get = path, key, how_to_get
        where = ('is not set' if path is None else
                 f'{path!r} does not exist')
        super().__init__(f'Pretrained weights file {where} (config key '
                         f'`{key}`). {how_to_get}')

    def with_prefix(self, prefix: str) -> 'MissingWeightsError':
        """The same error with ``prefix.`` in front of the config key."""
        return MissingWeightsError(self.path, f'{prefix}.{self.key}',
                                   self.how_to_get)


def require_file(path: Optional[str], key: str, how_to_get: str) -> str:
    """Return ``path`` if it is an existing file, else raise
    :class:`MissingWeightsError` naming ``key`` and ``how_to_get``."""
    if path is None or not osp.isfile(osp.expanduser(path)):
        raise MissingWeightsError(path, key, how_to_get)
    return osp.expanduser(path)


def load_state_dict_file(path: Optional[str], key: str,
                         how_to_get: str) -> Dict[str, torch.Tensor]:
    """Load a state dict from a local ``.pth`` / ``.pt`` / ``.bin`` (safe
    ``torch.load``, tensors mapped to the CPU) or ``.safetensors`` file;
    ``{'state_dict': ...}`` and ``{'model': ...}`` wrappers are
    unwrapped. A damaged file raises
    :class:`~vistok.utils.checkpoint.CheckpointLoadError` naming it."""
    path = require_file(path, key, how_to_get)
    if path.endswith('.safetensors'):
        return load_safetensors_file(path)
    state = load_checkpoint_file(path, map_location='cpu')
    for wrapper in ('state_dict', 'model'):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    return state
