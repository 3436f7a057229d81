"""Training machinery: runner, loops, hooks, optimizer wrappers, dist."""
from .hooks import *  # noqa: F401,F403
from .loops import IterBasedTrainLoop
from .model_wrappers import GradientSyncWrapper
from .optimizers import *  # noqa: F401,F403
from .runner import VistokRunner

__all__ = ['GradientSyncWrapper', 'IterBasedTrainLoop', 'VistokRunner']
