import contextlib
import logging
import sys

from mmengine.dist import get_rank
from mmengine.hooks import Hook
from tqdm.contrib.logging import logging_redirect_tqdm

from vistok.registry import HOOKS
from vistok.utils.progress import is_interactive, progress


@HOOKS.register_module()
class ProgressBarHook(Hook):
    """A progress bar (rate, ETA) over the test and validation loops, on
    an interactive terminal only.

    In a log (not a terminal) it draws nothing: mmengine's ``LoggerHook``
    already writes ``Iter(test) [k/N]  eta: ...  time: ...`` every
    ``default_hooks.logger.interval`` iterations there. While the bar is
    drawn, the runner's console log lines are printed above it
    (``tqdm.contrib.logging``) instead of through it. Only rank 0 draws.
    ``tools/test.py`` adds it.

    Args:
        stream: where the bar goes (default: ``sys.stderr`` when the loop
            starts).
    """

    priority = 'VERY_LOW'

    def __init__(self, stream=None):
        self.stream = stream
        self._bar = None
        self._redirect = contextlib.ExitStack()

    def _start(self, runner, dataloader, mode: str) -> None:
        stream = sys.stderr if self.stream is None else self.stream
        if get_rank() != 0 or not is_interactive(stream):
            return
        self._bar = progress(total=len(dataloader), desc=mode, unit='batch',
                             stream=stream)
        if any(isinstance(handler, logging.StreamHandler)
               and handler.stream in (sys.stdout, sys.stderr)
               for handler in runner.logger.handlers):
            # its console lines above the bar (tqdm.write), not through it
            self._redirect.enter_context(
                logging_redirect_tqdm([runner.logger]))

    def _step(self) -> None:
        if self._bar is not None:
            self._bar.update()

    def _stop(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self._redirect.close()

    def before_test_epoch(self, runner) -> None:
        self._start(runner, runner.test_loop.dataloader, 'test')

    def after_test_iter(self, runner, batch_idx, data_batch=None,
                        outputs=None) -> None:
        self._step()

    def after_test_epoch(self, runner, metrics=None) -> None:
        self._stop()

    def before_val_epoch(self, runner) -> None:
        self._start(runner, runner.val_loop.dataloader, 'val')

    def after_val_iter(self, runner, batch_idx, data_batch=None,
                       outputs=None) -> None:
        self._step()

    def after_val_epoch(self, runner, metrics=None) -> None:
        self._stop()
