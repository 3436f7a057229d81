from .checkpoint_hook import CheckpointHook
from .codebook_mix_hook import CodebookMixHook
from .codebook_usage_hook import CodebookUsageHook
from .progress_bar_hook import ProgressBarHook
from .reconstruction_grid_hook import ReconstructionGridHook
from .run_summary_hook import RunSummaryHook
from .save_reconstructions_hook import SaveReconstructionsHook

__all__ = [
    'CheckpointHook', 'CodebookMixHook', 'CodebookUsageHook',
    'ProgressBarHook', 'ReconstructionGridHook', 'RunSummaryHook',
    'SaveReconstructionsHook'
]
