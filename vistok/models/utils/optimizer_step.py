"""One optimizer update for algorithms with their own ``train_step`` (G/D
training): gradient synchronisation across ranks and the non-finite-loss
policy.

Algorithms that alternate several optimizers (a generator and a
discriminator) cannot run inside one ``DistributedDataParallel`` forward;
they run unwrapped on every rank (:class:`~vistok.engine.model_wrappers.
GradientSyncWrapper`) and average their gradients here
(:func:`~vistok.utils.dist.all_reduce_gradients`), after the backward
pass and before the step.
"""
import logging
from typing import Dict, Iterable, Optional, Tuple

import torch
from mmengine.logging import print_log
from mmengine.optim import OptimWrapper

from vistok.utils.dist import all_reduce_gradients, all_reduce_sum_


class NonFiniteLossError(FloatingPointError):
    """Too many iterations had a non-finite loss."""


class NonFiniteGuard:
    """The one policy for non-finite losses: skip the update, count it, warn
    with the offending terms, and abort once more than ``max_skips``
    updates were skipped in this run (``max_skips=0`` aborts at the first).
    The decision is taken jointly by all ranks."""

    def __init__(self, max_skips: int = 10):
        if max_skips < 0:
            raise ValueError(f'max_nonfinite_skips must be >= 0, got '
                             f'{max_skips}')
        self.max_skips = max_skips
        self.skipped = 0

    def is_finite(self, loss: torch.Tensor, terms: Dict[str, torch.Tensor],
                  name: str) -> bool:
        """Check ``loss`` (on every rank); on a non-finite value count and
        warn (or raise :class:`NonFiniteLossError` past the limit)."""
        bad = torch.tensor(float(not torch.isfinite(loss).all()))
        if float(all_reduce_sum_(bad)) == 0:
            return True
        self.skipped += 1
        culprits = sorted(k for k, v in terms.items()
                          if not torch.isfinite(torch.as_tensor(v)).all())
        where = culprits or 'on another rank'
        message = (f'non-finite {name} loss (terms {where}): update skipped '
                   f'({self.skipped} skipped so far, limit '
                   f'max_nonfinite_skips={self.max_skips})')
        if self.skipped > self.max_skips:
            raise NonFiniteLossError(message + '; aborting. Lower the '
                                     'learning rate, enable gradient '
                                     'clipping, or check the data.')
        print_log(message, logger='current', level=logging.WARNING)
        return False


def update_params(optim_wrapper: OptimWrapper, loss: torch.Tensor,
                  params: Iterable[torch.nn.Parameter],
                  terms: Optional[Dict[str, torch.Tensor]] = None,
                  guard: Optional[NonFiniteGuard] = None,
                  name: str = 'total') -> Tuple[bool, int]:
    """``OptimWrapper.update_params`` with gradient averaging over ranks and
    the non-finite guard: scale for accumulation, backward, and — when the
    wrapper's accumulation says so — all-reduce, step (gradient clipping
    happens inside), zero the gradients. Returns ``(updated, skipped)``:
    whether the loss was used, and the run's skip count."""
    if guard is not None and not guard.is_finite(loss, terms or {}, name):
        optim_wrapper.zero_grad()
        return False, guard.skipped
    optim_wrapper.backward(optim_wrapper.scale_loss(loss))
    if optim_wrapper.should_update():
        all_reduce_gradients(params)
        optim_wrapper.step()
        optim_wrapper.zero_grad()
    return True, guard.skipped if guard is not None else 0
