"""Progress on stderr: a tqdm bar on a terminal, plain lines anywhere else (a Ray job log, CI, ``nohup``).

A bar redrawn with carriage returns turns into thousands of updates on one line once stderr is a
file, and tqdm's clean-up leaves blank lines behind. So when stderr is not a terminal a bar prints
one line when it starts, one each time it passes another ``LINE_PERCENT`` % of its total (but not
within ``MIN_SECONDS`` of its last line, so a bar done in a second is two lines, not twenty) or when
``$RGM_PROGRESS_SECONDS`` (default ``DEFAULT_SECONDS``) have gone by since its last line, whichever
comes first, and a last one when it ends::

    generate plugin: 600/2000 img (30%), 1324 img/s, elapsed 00:00, ETA 00:01

Every bar of the package comes from here: :func:`progress_bar` (updated by hand; what stages take
as their ``progress`` argument) or :func:`progress` (wrapping an iterable). Both write to stderr, so
``--json`` output on stdout stays clean.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Any, Callable, Iterable, Iterator, TextIO, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
SECONDS_ENV = "RGM_PROGRESS_SECONDS"
DEFAULT_SECONDS = 30.0  # a quiet stretch of a long stage still shows it is alive, without flooding the log
LINE_PERCENT = 5.0
MIN_SECONDS = 1.0  # between two percent lines


def progress_bar(*, total: int | None, desc: str, unit: str = "it", initial: int = 0,
                 file: TextIO | None = None) -> "tqdm | LineProgress":
    """A manually-updated bar (``update(n)``, ``set_postfix(...)``, ``close()``, a context manager)
    with rate and ETA, on ``file`` (default: stderr): tqdm on a terminal, :class:`LineProgress` elsewhere."""
    file = file or sys.stderr
    if _is_terminal(file):
        return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=file, dynamic_ncols=True, leave=False)
    return LineProgress(total=total, desc=desc, unit=unit, initial=initial, file=file)


def progress(iterable: Iterable[T], *, desc: str, total: int | None = None, unit: str = "it",
             disable: bool = False, file: TextIO | None = None) -> Iterable[T]:
    """``iterable``, counted on a bar like :func:`progress_bar`'s (``total`` defaults to its length)."""
    if disable:
        return iterable
    file = file or sys.stderr
    if _is_terminal(file):
        return tqdm(iterable, desc=desc, total=total, unit=unit, file=file, dynamic_ncols=True, leave=False)
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    return _counted(iterable, LineProgress(total=total, desc=desc, unit=unit, file=file))


def _counted(iterable: Iterable[T], bar: "LineProgress") -> Iterator[T]:
    with bar:
        for item in iterable:
            yield item
            bar.update(1)


def _is_terminal(file: TextIO) -> bool:
    isatty = getattr(file, "isatty", None)
    return bool(isatty and isatty())


def line_interval() -> float:
    """Seconds between two lines of a bar that has not passed another ``LINE_PERCENT`` % (``$RGM_PROGRESS_SECONDS``)."""
    text = os.environ.get(SECONDS_ENV)
    if text is None:
        return DEFAULT_SECONDS
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not seconds > 0 or math.isinf(seconds):
        raise ValueError(f"{SECONDS_ENV} must be a number of seconds > 0, got {text!r}")
    return seconds


class LineProgress:
    """tqdm's manual-bar interface, printed as whole lines (see the module docstring).

    ``clock`` is injectable so tests can drive time; the interval is read from the environment once.
    """

    def __init__(self, *, total: int | None, desc: str, unit: str = "it", initial: int = 0,
                 file: TextIO | None = None, clock: Callable[[], float] = time.monotonic,
                 seconds: float | None = None) -> None:
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self._file = file or sys.stderr
        self._clock = clock
        self._seconds = line_interval() if seconds is None else seconds
        self._initial = initial
        self._started = self._last_time = clock()
        self._last_n: int | None = None
        self._last_step = self._step()
        self._postfix = ""
        self._closed = False
        self._write()

    def update(self, n: int = 1) -> None:
        if self._closed:
            return
        self.n += n
        now = self._clock()
        step = self._step()
        quiet = now - self._last_time
        if (step > self._last_step and quiet >= MIN_SECONDS) or quiet >= self._seconds:
            self._write(now)

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True, **kwargs: Any) -> None:
        """Values shown at the end of the following lines (tqdm's signature; ``refresh`` has no effect)."""
        items = {**(ordered_dict or {}), **kwargs}
        self._postfix = "".join(f", {key}={value}" for key, value in items.items())

    def close(self) -> None:
        """Print the final count unless the last line already showed it; later calls do nothing."""
        if not self._closed:
            self._closed = True
            if self.n != self._last_n:
                self._write()

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _step(self) -> int:
        """How many ``LINE_PERCENT`` steps of the total the count has passed (0 without a total)."""
        return int(100 * self.n / (self.total * LINE_PERCENT)) if self.total else 0

    def _write(self, now: float | None = None) -> None:
        now = self._clock() if now is None else now
        elapsed = now - self._started
        done = self.n - self._initial
        line = f"{self.desc}: {self.n}/{self.total} {self.unit} ({100 * self.n / self.total:.0f}%)" if self.total \
            else f"{self.desc}: {self.n} {self.unit}"
        if elapsed > 0 and done > 0:  # rate and ETA once there is something to measure
            rate = done / elapsed
            line += f", {rate:.0f}" if rate >= 100 else f", {rate:.3g}"
            line += f" {self.unit}/s, elapsed {tqdm.format_interval(elapsed)}"
            if self.total:
                line += f", ETA {tqdm.format_interval(max(self.total - self.n, 0) / rate)}"
        self._file.write(line + self._postfix + "\n")
        self._file.flush()
        self._last_time, self._last_n, self._last_step = now, self.n, self._step()
