"""An iteration-based training loop that resumes exactly.

mmengine's ``IterBasedTrainLoop`` restores the data position on resume by
loading and discarding ``iter`` batches, which is slow and, when
augmentation draws from the global RNG, shifts every random stream. This
loop instead

* moves a resumable sampler (one with ``skip(n)``, e.g.
  :class:`vistok.datasets.samplers.ResumableInfiniteSampler`) to the right
  draw arithmetically and restarts the data iterator there;
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

from mmengine.logging import print_log
from mmengine.runner import IterBasedTrainLoop as MMEngineIterBasedTrainLoop
from mmengine.runner.loops import _InfiniteDataloaderIterator

from vistok.registry import LOOPS
from vistok.utils.rng import get_rng_state, set_rng_state


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
        if hasattr(sampler, 'skip'):
            sampler.skip(self._iter * self.dataloader.batch_size)
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
