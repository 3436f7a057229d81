"""Training machinery: runner, loops, hooks, optimizer wrappers, dist."""
from .hooks import *  # noqa: F401,F403
from .loops import IterBasedTrainLoop
from .optimizers import *  # noqa: F401,F403
from .runner import VistokRunner

__all__ = ['IterBasedTrainLoop', 'VistokRunner']
