"""Progress of a long loop: a bar on a terminal, plain lines in a log.

``progress(iterable, total, desc)`` is what ``tools/`` use around the loops
that take time (tokenizing a dataset, drawing samples, writing shards):

* on an interactive terminal (``stream.isatty()``) it is a `tqdm
  <https://tqdm.github.io>`_ bar, redrawn in place with ``\\r``, with its
  rate and ETA;
* anywhere else (a log file, a pipe, a batch job's output) a bar would
  write one ``\\r`` frame per update into the log, so it prints a plain
  line instead, at most every ``interval`` seconds and at every
  ``step_percent`` of the total, plus a last line when the loop ends::

      export: 512/2000 (25.6%), 41.3 img/s, ETA 0:00:36
      export: 2000/2000 (100.0%), 40.8 img/s, done in 0:00:49

tqdm rather than mmengine's ``ProgressBar``: tqdm is already a runtime
requirement (and installed), takes ``initial`` for resumed work, accepts
an unknown total, knows its terminal width and redirects ``logging`` while
a bar is drawn (``tqdm.contrib.logging``); mmengine's bar needs a known
total and has no resume offset.
"""
import datetime
import sys
import time
from typing import Callable, Iterable, Optional, TextIO

from tqdm import tqdm

#: a periodic line at least this often (seconds) when not on a terminal
LINE_INTERVAL_S = 30.0
#: and one each time this share (percent) of a known total is done
LINE_STEP_PERCENT = 10.0


def is_interactive(stream: Optional[TextIO] = None) -> bool:
    """Whether ``stream`` (default: ``sys.stderr``) is a terminal."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, 'isatty', None)
    try:
        return bool(isatty()) if callable(isatty) else False
    except ValueError:  # a closed file
        return False


def format_seconds(seconds: float) -> str:
    """``H:MM:SS`` of a duration in seconds."""
    return str(datetime.timedelta(seconds=int(round(seconds))))


class PeriodicLines:
    """The non-terminal form of :func:`progress`: plain lines
    ``"desc: k/N (x%), rate unit/s, ETA H:MM:SS"``.

    It has the part of tqdm's interface the tools use: iterate over it,
    ``update(n)``, ``write(msg)``, ``close()``, and ``with``.

    Args:
        iterable: items to pass through (``None``: call :meth:`update`).
        total: number of items, or ``None`` when unknown (no % or ETA).
        desc: what is counted, at the start of each line.
        stream: where the lines go.
        unit: name of one item, in the rate.
        initial: items already done (a resumed run); the rate counts
            only the items done here.
        interval: a line at least every this many seconds.
        step_percent: and a line at each such share of ``total``.
        clock: seconds as a float (``time.monotonic``; a test passes its
            own).
    """

    def __init__(self, iterable: Optional[Iterable] = None,
                 total: Optional[int] = None, desc: str = '',
                 stream: Optional[TextIO] = None, unit: str = 'it',
                 initial: int = 0, interval: float = LINE_INTERVAL_S,
                 step_percent: float = LINE_STEP_PERCENT,
                 clock: Callable[[], float] = time.monotonic):
        if total is None and iterable is not None and \
                hasattr(iterable, '__len__'):
            total = len(iterable)
        if interval <= 0 or not 0 < step_percent <= 100:
            raise ValueError(f'interval must be > 0 s and step_percent in '
                             f'(0, 100], got {interval} and {step_percent}')
        self.iterable = iterable
        self.total = total
        self.desc = desc
        self.stream = stream
        self.unit = unit
        self.n = initial
        self.initial = initial
        self.interval = interval
        self.step_percent = step_percent
        self.clock = clock
        self.start = self.last_time = clock()
        self.last_step = self._step()
        self.closed = False

    def _step(self) -> int:
        if not self.total:
            return 0
        return int(100 * self.n / self.total // self.step_percent)

    def _out(self) -> TextIO:
        return sys.stderr if self.stream is None else self.stream

    def line(self, final: bool = False) -> str:
        """The progress line of the count so far."""
        elapsed = self.clock() - self.start
        done_here = self.n - self.initial
        rate = done_here / elapsed if elapsed > 0 else None
        prefix = f'{self.desc}: ' if self.desc else ''
        if self.total:
            count = (f'{self.n}/{self.total} '
                     f'({100 * self.n / self.total:.1f}%)')
        else:
            count = f'{self.n}'
        parts = [count, f'{rate:.3g} {self.unit}/s' if rate else
                 f'? {self.unit}/s']
        if final:
            parts.append(f'done in {format_seconds(elapsed)}')
        elif self.total:
            parts.append(f'ETA {format_seconds((self.total - self.n) / rate)}'
                         if rate else 'ETA ?')
        return prefix + ', '.join(parts)

    def emit(self, line: str) -> None:
        """Print one progress line to the stream."""
        print(line, file=self._out(), flush=True)

    @staticmethod
    def write(message: str, file: Optional[TextIO] = None) -> None:
        """Print ``message`` to ``file`` (default ``sys.stdout``), as
        ``tqdm.write`` does (which clears a bar first)."""
        print(message, file=sys.stdout if file is None else file,
              flush=True)

    def update(self, n: int = 1) -> None:
        """Count ``n`` more items; print a line when one is due."""
        self.n += n
        if self.total and self.n >= self.total:
            return  # close() prints the last line
        now, step = self.clock(), self._step()
        if now - self.last_time >= self.interval or step > self.last_step:
            self.last_time, self.last_step = now, step
            self.emit(self.line())

    def close(self) -> None:
        """Print the last line (once)."""
        if not self.closed:
            self.closed = True
            self.emit(self.line(final=True))

    def __iter__(self):
        if self.iterable is None:
            raise TypeError('PeriodicLines was made without an iterable: '
                            'call update() instead of iterating')
        try:
            for item in self.iterable:
                yield item
                self.update()
        finally:
            self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class _Silent(PeriodicLines):
    """:func:`progress` with ``disable=True``: counts, prints no progress
    (messages given to :meth:`write` are still printed, as with tqdm)."""

    def emit(self, line: str) -> None:
        pass


def progress(iterable: Optional[Iterable] = None,
             total: Optional[int] = None, desc: str = '',
             stream: Optional[TextIO] = None, unit: str = 'it',
             initial: int = 0, disable: bool = False, **line_options):
    """A progress display over ``iterable`` (or driven by ``update(n)``):
    a tqdm bar with rate and ETA when ``stream`` (default ``sys.stderr``)
    is a terminal, else :class:`PeriodicLines`.

    Either object is iterated over, updated (``update(n)``), written
    through (``write(msg)``: a message to stdout that does not break the
    bar) and
    closed (``close()`` or ``with``). ``disable``: show nothing (e.g. on
    ranks other than 0). ``line_options`` (``interval``, ``step_percent``,
    ``clock``) tune the plain lines.
    """
    if disable:
        return _Silent(iterable, total=total, desc=desc, stream=stream,
                       unit=unit, initial=initial, **line_options)
    if is_interactive(stream):
        return tqdm(iterable, total=total, desc=desc or None,
                    file=sys.stderr if stream is None else stream,
                    unit=unit, initial=initial, dynamic_ncols=True)
    return PeriodicLines(iterable, total=total, desc=desc, stream=stream,
                         unit=unit, initial=initial, **line_options)
