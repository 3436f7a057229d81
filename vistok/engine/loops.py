"""An iteration-based training loop that resumes exactly.

mmengine's ``IterBasedTrainLoop`` restores the data position on resume by
loading and discarding ``iter`` batches, which is slow and, when
augmentation draws from the global RNG, shifts every random stream. This
loop instead

* moves a resumable sampler (one with ``skip(n)``, e.g.
  :class:`vistok.datasets.samplers.ResumableInfiniteSampler`) to the right
  draw arithmetically and restarts the data iterator there; a stream (an
  ``IterableDataset`` with ``set_epoch`` and a length, e.g.
  :class:`vistok.datasets.WebDatasetShards`) restarts at the beginning of
  the epoch the run was in (see :func:`restart_stream`);
* then restores the RNG states saved in the checkpoint (by
  :class:`vistok.engine.runner.VistokRunner`), so dropout and every other
  random draw continue as if the run had never stopped;
* runs validation with the RNG states saved and restored around it, so
  evaluating does not change training.

Registered as ``IterBasedTrainLoop`` in vistok's ``LOOPS``: under
``default_scope='vistok'`` a config's ``train_cfg=dict(type=
'IterBasedTrainLoop', ...)`` gets this loop.
"""
import logging
from typing import Optional

from mmengine.dist import get_dist_info
from mmengine.logging import print_log
from mmengine.runner import IterBasedTrainLoop as MMEngineIterBasedTrainLoop
from mmengine.runner.loops import _InfiniteDataloaderIterator
from torch.utils.data import DataLoader, IterableDataset

from vistok.registry import LOOPS
from vistok.utils.rng import get_rng_state, set_rng_state


def restart_stream(dataloader: DataLoader,
                   batches_done: int) -> Optional[int]:
    """Restart a streaming dataset at the beginning of the epoch in which
    this rank drew its ``batches_done``-th batch, without reading the data
    before it; returns that epoch, or ``None`` if the dataset is not an
    ``IterableDataset`` with ``set_epoch`` and a length.

    Each rank streams ``len(dataset) / world_size`` samples per epoch (the
    length counts all ranks, as :class:`~vistok.datasets.WebDatasetShards`'
    ``num_samples``). The samples of the epoch drawn before the interruption
    are drawn again (the position inside an epoch is not kept). Persistent
    workers hold a copy of the dataset, so they are shut down and the next
    iterator starts new ones.
    """
    dataset = dataloader.dataset
    if not (isinstance(dataset, IterableDataset)
            and hasattr(dataset, 'set_epoch')):
        return None
    try:
        num_samples = len(dataset)
    except TypeError:
        return None
    _, world_size = get_dist_info()
    per_epoch = max(num_samples // world_size, 1)
    epoch = batches_done * dataloader.batch_size // per_epoch
    dataset.set_epoch(epoch)
    dataloader._iterator = None  # drop persistent workers (stale copies)
    return epoch


@LOOPS.register_module()
class IterBasedTrainLoop(MMEngineIterBasedTrainLoop):
    """Iteration-based training with exact resume (see module docstring)."""

    def run(self):
        self.runner.call_hook('before_train')
        self.runner.call_hook('before_train_epoch')
        if self._iter > 0:
            self._restore_position()
        while self._iter < self._max_iters and not self.stop_training:
            self.runner.model.train()
            data_batch = next(self.dataloader_iterator)
            self.run_iter(data_batch)
            self._decide_current_val_interval()
            if (self.runner.val_loop is not None
                    and self._iter >= self.val_begin
                    and (self._iter % self.val_interval == 0
                         or self._iter == self._max_iters)):
                rng_state = get_rng_state()
                self.runner.val_loop.run()
                set_rng_state(rng_state)
        self.runner.call_hook('after_train_epoch')
        self.runner.call_hook('after_train')
        return self.runner.model

    def _restore_position(self):
        sampler = self.dataloader.sampler
        restarted = hasattr(sampler, 'skip')
        if restarted:
            sampler.skip(self._iter * self.dataloader.batch_size)
        else:
            epoch = restart_stream(self.dataloader, self._iter)
            restarted = epoch is not None
            if restarted:
                print_log(
                    f'Resuming the stream at the beginning of its epoch '
                    f'{epoch}: the samples of that epoch drawn before the '
                    f'interruption are drawn again.', logger='current',
                    level=logging.WARNING)
        if restarted:
            self.dataloader_iterator = _InfiniteDataloaderIterator(
                self.dataloader)
        else:
            print_log(
                f'The sampler {type(sampler).__name__} cannot skip ahead: '
                f'loading and discarding {self._iter} batches to restore the '
                'data position (use ResumableInfiniteSampler for an exact, '
                'fast resume).', logger='current', level=logging.WARNING)
            for _ in range(self._iter):
                next(self.dataloader_iterator)
        state = getattr(self.runner, 'resumed_rng_state', None)
        if state is None:
            print_log('The checkpoint holds no RNG states: random streams '
                      'restart from the seed.', logger='current',
                      level=logging.WARNING)
        else:
            set_rng_state(state)
