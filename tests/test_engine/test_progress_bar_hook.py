"""ProgressBarHook: a bar over the test / val batches on a terminal only
(in a log, mmengine's LoggerHook already prints lines with the ETA)."""
import io
import logging
import sys
import types

import pytest

from vistok.engine.hooks import ProgressBarHook
from vistok.registry import HOOKS


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def fake_runner(num_batches):
    loop = types.SimpleNamespace(dataloader=[None] * num_batches)
    logger = logging.getLogger('vistok.tests.progress_bar_hook')
    logger.handlers = [logging.StreamHandler(sys.stdout)]  # its console
    return types.SimpleNamespace(test_loop=loop, val_loop=loop,
                                 logger=logger)


@pytest.mark.parametrize('mode', ['test', 'val'])
def test_bar_on_a_terminal_nothing_in_a_log(mode):
    runner = fake_runner(6)
    console = runner.logger.handlers[0]
    tty = FakeTTY()
    hook = HOOKS.build(dict(type='ProgressBarHook', stream=tty))
    getattr(hook, f'before_{mode}_epoch')(runner)
    # while the bar is drawn, console log lines go through tqdm.write
    assert console not in runner.logger.handlers
    for i in range(6):
        getattr(hook, f'after_{mode}_iter')(runner, i)
    getattr(hook, f'after_{mode}_epoch')(runner, {})
    out = tty.getvalue()
    assert '\r' in out and f'{mode}: 100%' in out and '6/6' in out
    assert 'batch/s' in out
    assert runner.logger.handlers == [console]  # console logging restored

    log = io.StringIO()
    hook = ProgressBarHook(stream=log)
    getattr(hook, f'before_{mode}_epoch')(runner)
    assert runner.logger.handlers == [console]
    for i in range(6):
        getattr(hook, f'after_{mode}_iter')(runner, i)
    getattr(hook, f'after_{mode}_epoch')(runner, {})
    assert log.getvalue() == ''
