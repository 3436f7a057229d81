"""vistok.utils.progress: a tqdm bar on a terminal, periodic plain lines
(count, %, rate, ETA) anywhere else."""
import io

import pytest
from tqdm import tqdm

from vistok.utils.progress import PeriodicLines, is_interactive, progress


class FakeTTY(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self):
        return True


class FakeClock:
    """Seconds that advance only when told (``tick``)."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_log_gets_a_line_per_step_with_rate_eta_and_final_count():
    log, clock = io.StringIO(), FakeClock()
    bar = progress(total=20, desc='export', stream=log, unit='img',
                   step_percent=25, interval=1000, clock=clock)
    assert isinstance(bar, PeriodicLines) and not is_interactive(log)
    for _ in range(20):
        clock.now += 1.0  # one image a second
        bar.update()
    bar.close()
    bar.close()  # a second close prints nothing more
    assert log.getvalue().splitlines() == [
        'export: 5/20 (25.0%), 1 img/s, ETA 0:00:15',
        'export: 10/20 (50.0%), 1 img/s, ETA 0:00:10',
        'export: 15/20 (75.0%), 1 img/s, ETA 0:00:05',
        'export: 20/20 (100.0%), 1 img/s, done in 0:00:20']
    assert '\r' not in log.getvalue()


def test_log_lines_every_interval_without_total_and_after_resume():
    log, clock = io.StringIO(), FakeClock()

    def items():
        for i in range(25):
            clock.now += 1.0
            yield i

    assert list(progress(items(), stream=log, unit='chunk', interval=10,
                         clock=clock)) == list(range(25))
    assert log.getvalue().splitlines() == [
        '10, 1 chunk/s', '20, 1 chunk/s', '25, 1 chunk/s, done in 0:00:25']

    # resumed at 60 of 100: the rate counts only what this run did
    log = io.StringIO()
    bar = progress(total=100, initial=60, stream=log, step_percent=10,
                   interval=1000, clock=clock)
    clock.now += 5.0
    bar.update(10)  # 10 items in 5 s: 2 it/s, 30 left
    assert log.getvalue() == '70/100 (70.0%), 2 it/s, ETA 0:00:15\n'


def test_terminal_gets_a_tqdm_bar_redrawn_in_place():
    tty = FakeTTY()
    bar = progress(range(50), desc='export', stream=tty, unit='img')
    assert isinstance(bar, tqdm) and is_interactive(tty)
    assert list(bar) == list(range(50))
    out = tty.getvalue()
    assert '\r' in out and 'export' in out and '50/50' in out
    assert 'img/s' in out and '<' in out  # rate and "elapsed<ETA"


def test_disabled_counts_but_shows_nothing(capsys):
    log = io.StringIO()
    bar = progress(range(7), total=7, stream=log, disable=True)
    assert list(bar) == list(range(7)) and bar.n == 7
    bar.write('still said')  # messages pass, as with tqdm.write
    assert log.getvalue() == '' and capsys.readouterr().out == 'still said\n'


def test_bad_line_options_are_refused():
    with pytest.raises(ValueError, match='step_percent'):
        progress(total=3, stream=io.StringIO(), step_percent=0)
