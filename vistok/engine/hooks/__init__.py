from .checkpoint_hook import CheckpointHook
from .codebook_mix_hook import CodebookMixHook
from .codebook_usage_hook import CodebookUsageHook
from .reconstruction_grid_hook import ReconstructionGridHook
from .save_reconstructions_hook import SaveReconstructionsHook

__all__ = [
    'CheckpointHook', 'CodebookMixHook', 'CodebookUsageHook',
    'ReconstructionGridHook', 'SaveReconstructionsHook'
]
