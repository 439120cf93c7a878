"""Progress of long computations on stderr: a tqdm bar on a terminal, plain lines elsewhere.

A bar redraws itself with carriage returns; written into a file, a CI log or a pipe those
become one long line of overwritten states. :class:`ProgressBar` therefore draws a tqdm bar
only where it can be redrawn (a terminal, or a Jupyter kernel, where tqdm shows a widget),
and otherwise writes a plain line when a stage begins, at most one every ``interval``
seconds while it runs, and one when it ends: no carriage return, ever.

Both show the stage, the count and, where the total is known, the total and an estimate of
the time left (an upper bound for an optimizer, which may converge before its budget).
tqdm is imported only when a bar is drawn.
"""

from __future__ import annotations

import sys
import time
from typing import IO

__all__ = ["ProgressBar", "is_interactive"]


def is_interactive(stream: IO | None = None) -> bool:
    """Whether ``stream`` (default ``sys.stderr``) shows a redrawn bar as one line: a
    terminal, or the stderr of a Jupyter kernel."""
    stream = sys.stderr if stream is None else stream
    try:
        if stream.isatty():
            return True
    except (AttributeError, ValueError):      # no isatty, or a closed stream
        return False
    return stream is sys.stderr and "ipykernel" in sys.modules


def _seconds(s: float) -> str:
    if s < 60:
        return f"{s:.0f} s"
    if s < 3600:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


class ProgressBar:
    """A progress display with tqdm's interface (``update``, ``set_postfix``, ``reset``,
    ``set_description``, ``close``) that never writes a carriage return off a terminal.

    Parameters
    ----------
    desc : str
        What is progressing (``"fit"``, ``"starts"``), the label of every line.
    total : int, optional
        The count at which the work ends, where known (an optimizer's iteration budget,
        the number of tasks); shown with an estimate of the time left.
    unit : str
        What is counted (``"it"``, ``"task"``).
    stream : file, optional
        Where to write (default ``sys.stderr``).
    interval : float
        Seconds between the plain lines written while a stage runs (off a terminal).
    leave : bool
        Keep a terminal bar on screen when it closes.
    """

    def __init__(self, desc: str, total: int | None = None, unit: str = "it",
                 stream: IO | None = None, interval: float = 10.0, leave: bool = False):
        self.desc, self.total, self.unit = desc, total, unit
        self.stream = sys.stderr if stream is None else stream
        self.interval = float(interval)
        self.n = 0
        self.postfix: dict[str, object] = {}
        self.t_start = self.t_stage = time.perf_counter()
        self._last_line = self.t_start
        self._closed = False
        self._bar = None
        if is_interactive(self.stream):
            from tqdm.auto import tqdm
            self._bar = tqdm(total=total, desc=desc, unit=unit, leave=leave,
                             dynamic_ncols=True, file=self.stream)

    @property
    def interactive(self) -> bool:
        """Whether a tqdm bar is drawn (else plain lines are written)."""
        return self._bar is not None

    def _line(self, text: str) -> None:
        try:
            print(f"{self.desc}: {text}", file=self.stream, flush=True)
        except (OSError, ValueError):     # a closed or broken stream must not end the work
            pass
        self._last_line = time.perf_counter()

    def _status(self) -> str:
        elapsed = time.perf_counter() - self.t_stage
        count = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        parts = [f"{count} {self.unit}"]
        parts += [f"{k} {v}" for k, v in self.postfix.items()]
        parts.append(f"{_seconds(elapsed)} elapsed")
        if self.total and 0 < self.n < self.total:
            left = elapsed / self.n * (self.total - self.n)
            parts.append(f"at most ~{_seconds(left)} left")
        return ", ".join(parts)

    def update(self, n: int = 1) -> None:
        """Count ``n`` more units of work."""
        self.n += n
        if self.total is not None and self.n > self.total:
            # the total was a budget the work may exceed (an optimizer's continuation
            # rounds): show the count alone rather than a wrong fraction and time left
            self.total = None
            if self._bar is not None:
                self._bar.total = None
        if self._bar is not None:
            self._bar.update(n)
        elif time.perf_counter() - self._last_line >= self.interval:
            self._line(self._status())

    def set_postfix(self, refresh: bool = True, **info) -> None:
        """Show ``info`` (e.g. ``loss="1.2e-3"``) after the count."""
        self.postfix.update(info)
        if self._bar is not None:
            self._bar.set_postfix(refresh=refresh, **{k: str(v) for k, v in
                                                      self.postfix.items()})

    def set_description(self, desc: str) -> None:
        """Change the label (a new stage's name)."""
        self.desc = desc
        if self._bar is not None:
            self._bar.set_description(desc)

    def reset(self, total: int | None = None, stage: str | None = None) -> None:
        """A new stage begins: the count restarts at 0 of ``total``; off a terminal, a line
        names the ``stage`` and its budget."""
        self.n, self.total = 0, total
        self.t_stage = time.perf_counter()
        if self._bar is not None:
            self._bar.reset(total=total)
            if stage is not None:
                self._bar.set_description(f"{self.desc} [{stage}]")
        elif stage is not None:
            budget = f" (up to {total} {self.unit})" if total else ""
            self._line(f"{stage}{budget}")

    def close(self, final: str | None = None) -> None:
        """End the display; off a terminal, a last line says where the work ended (the
        count, ``final`` or the postfix, the time taken)."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
            return
        elapsed = time.perf_counter() - self.t_start
        text = f"ended after {self.n} {self.unit}" if self.total is None else \
            f"ended after {self.n}/{self.total} {self.unit}"
        extra = final if final is not None else ", ".join(f"{k} {v}" for k, v in
                                                           self.postfix.items())
        self._line(text + (f", {extra}" if extra else "") + f" in {_seconds(elapsed)}")
