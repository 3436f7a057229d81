from .checkpoint_hook import CheckpointHook
from .save_reconstructions_hook import SaveReconstructionsHook

__all__ = ['CheckpointHook', 'SaveReconstructionsHook']
