"""One optimizer update for algorithms with their own ``train_step`` (G/D
training): gradient synchronisation across ranks and the non-finite-loss
policy.

Algorithms that alternate several optimizers (a generator and a
discriminator) cannot run inside one ``DistributedDataParallel`` forward;
they run unwrapped on every rank (:class:`~vistok.engine.model_wrappers.
GradientSyncWrapper`) and average their gradients here
(:func:`~vistok.utils.dist.all_reduce_gradients`), after the backward
pass and before the step.

Gradient accumulation (``accumulative_counts=k`` in an optimizer wrapper's
config) is mmengine's: each call back-propagates ``loss / k`` and the
wrapper steps after every ``k``-th call (a *window*, aligned with the
Runner's iterations), so ``k`` accumulated batches of ``b`` are one batch
of ``k·b``. A non-finite loss inside a window drops the whole window (see
:func:`update_params`): the large batch would have had a non-finite loss
too, and its update would have been skipped.
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
    non-finite losses were skipped in this run (``max_skips=0`` aborts at
    the first). The decision is taken jointly by all ranks. With gradient
    accumulation the guard also remembers, per optimizer wrapper, whether
    its current window was dropped (:func:`update_params`)."""

    def __init__(self, max_skips: int = 10):
        if max_skips < 0:
            raise ValueError(f'max_nonfinite_skips must be >= 0, got '
                             f'{max_skips}')
        self.max_skips = max_skips
        self.skipped = 0
        self._dropped_windows = set()

    def drop_window(self, optim_wrapper: OptimWrapper) -> None:
        """Mark ``optim_wrapper``'s current accumulation window dropped."""
        self._dropped_windows.add(id(optim_wrapper))

    def window_dropped(self, optim_wrapper: OptimWrapper) -> bool:
        """Whether ``optim_wrapper``'s current window was dropped."""
        return id(optim_wrapper) in self._dropped_windows

    def end_window(self, optim_wrapper: OptimWrapper) -> None:
        """Forget ``optim_wrapper``'s window (it ended)."""
        self._dropped_windows.discard(id(optim_wrapper))

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


def count_without_backward(optim_wrapper: OptimWrapper) -> None:
    """Advance ``optim_wrapper``'s accumulation counter by one call without
    a backward pass, so that its windows stay aligned with the iterations.
    mmengine keeps the counter in ``OptimWrapper._inner_count`` and
    documents that every ``update_params`` call must increment it
    (``OptimWrapper`` class docstring); ``backward`` is where it does."""
    optim_wrapper._inner_count += 1


def update_params(optim_wrapper: OptimWrapper, loss: torch.Tensor,
                  params: Iterable[torch.nn.Parameter],
                  terms: Optional[Dict[str, torch.Tensor]] = None,
                  guard: Optional[NonFiniteGuard] = None,
                  name: str = 'total') -> Tuple[bool, int]:
    """``OptimWrapper.update_params`` with gradient averaging over ranks and
    the non-finite guard: scale for accumulation, backward, and — when the
    wrapper's accumulation says so — all-reduce, step (gradient clipping
    happens inside), zero the gradients.

    Non-finite losses (checked with ``guard``): the call is counted by the
    guard and the *window* it belongs to is dropped — the gradients already
    accumulated in it are discarded, the window's remaining losses are
    checked but not back-propagated, and at the window's end no step is
    taken; the next window starts with zero gradients at its usual
    boundary (every call advances the wrapper's counter, back-propagated
    or not). Without accumulation (``accumulative_counts=1``) a window is
    one call: the update is skipped. So ``k`` accumulated batches behave as
    one batch ``k`` times larger in both cases. Each optimizer wrapper (a
    generator's, a discriminator's) follows this for its own loss.

    Returns ``(used, skipped)``: whether this loss was back-propagated
    (finite, in a window not dropped), and the run's skip count."""
    if guard is not None and not guard.is_finite(loss, terms or {}, name):
        guard.drop_window(optim_wrapper)
    dropped = guard is not None and guard.window_dropped(optim_wrapper)
    if dropped:
        count_without_backward(optim_wrapper)
    else:
        optim_wrapper.backward(optim_wrapper.scale_loss(loss))
    if optim_wrapper.should_update():
        if dropped:
            guard.end_window(optim_wrapper)
        else:
            all_reduce_gradients(params)
            optim_wrapper.step()
        optim_wrapper.zero_grad()
    return not dropped, guard.skipped if guard is not None else 0
