"""Progress of long jobs: a live bar on a terminal, periodic plain lines anywhere else.

rich draws its bars only on a terminal; with the output in a file (CI, ``nohup``, a cluster
job's log) it prints nothing until the end, so a 30-minute job looks hung. Here the same job
prints a plain line every ``VQCAUSAL_PROGRESS_SECONDS`` (default 30) seconds instead::

    stage 1: 1,200/6,000 (20%)  10.3/s  ETA 7m46s  loss 0.0123

and a last one at the end when the job took that long. ``VQCAUSAL_PROGRESS=off`` silences both.
rich has no such mode (its ``Progress`` on a non-terminal only redraws at exit), hence this
small writer; on a terminal the bar is rich's own.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from typing import Any, TextIO

DEFAULT_SECONDS = 30.0


def enabled() -> bool:
    return os.environ.get("VQCAUSAL_PROGRESS", "on").lower() not in ("off", "0", "no")


def interval() -> float:
    try:
        return max(float(os.environ.get("VQCAUSAL_PROGRESS_SECONDS", DEFAULT_SECONDS)), 0.0)
    except ValueError:
        return DEFAULT_SECONDS


def duration(seconds: float) -> str:
    """1h02m, 7m46s, 12s."""
    seconds = max(int(round(seconds)), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _fields(fields: dict[str, Any]) -> str:
    return "  ".join(
        f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items()
    )


class Progress:
    """``with Progress("stage 1", total=6000) as bar: bar.advance(loss=0.01)``.

    ``completed`` starts the count part-way (a resumed run); ``transient`` removes the bar
    from a terminal when done (sub-jobs), ``disable`` shows nothing (other processes of a
    distributed run)."""

    def __init__(
        self,
        description: str,
        total: int,
        completed: int = 0,
        transient: bool = False,
        disable: bool = False,
        stream: TextIO | None = None,
    ) -> None:
        self.description, self.total, self.completed = description, total, completed
        self.transient, self.stream = transient, stream or sys.stderr
        self.fields: dict[str, Any] = {}
        self.show = enabled() and not disable
        self.live = self.show and self.stream.isatty()
        self._rich: Any = None
        self._task: Any = None

    def __enter__(self) -> Progress:
        self.started = self.last_line = time.monotonic()
        self.first = self.completed
        self.lines = 0
        if self.live:
            from rich.console import Console
            from rich.progress import BarColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self._rich = RichProgress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TextColumn("{task.fields[extra]}"),
                TimeRemainingColumn(),
                console=Console(file=self.stream),
                transient=self.transient,
            )
            self._rich.__enter__()
            self._task = self._rich.add_task(
                self.description, total=self.total, completed=self.completed, extra=""
            )
        return self

    def advance(self, n: int = 1, **fields: Any) -> None:
        self.update(self.completed + n, **fields)

    def update(self, completed: int, **fields: Any) -> None:
        self.completed = completed
        self.fields.update(fields)
        if self._rich is not None:
            self._rich.update(self._task, completed=completed, extra=_fields(self.fields))
        elif self.show and time.monotonic() - self.last_line >= interval():
            self._line()

    def line(self) -> str:
        """The plain progress line: count, share, rate, ETA and the fields."""
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = (self.completed - self.first) / elapsed
        parts = [f"{self.description}: {self.completed:,}/{self.total:,}"]
        if self.total:
            parts[0] += f" ({100 * self.completed / self.total:.0f}%)"
        if rate > 0:
            parts.append(f"{rate:.3g}/s")
            if self.completed < self.total:
                parts.append(f"ETA {duration((self.total - self.completed) / rate)}")
        else:
            parts.append(f"{duration(elapsed)} so far")
        if self.fields:
            parts.append(_fields(self.fields))
        return "  ".join(parts)

    def _line(self) -> None:
        print(self.line(), file=self.stream, flush=True)
        self.last_line = time.monotonic()
        self.lines += 1
        self.printed = self.completed

    def __exit__(self, *exc: object) -> None:
        if self._rich is not None:
            self._rich.__exit__(*exc)
            return
        long = self.lines or time.monotonic() - self.started >= interval()
        if self.show and long and getattr(self, "printed", None) != self.completed:
            self._line()


@contextlib.contextmanager
def section(
    job: str, index: int, count: int, name: str, stream: TextIO | None = None
) -> Iterator[None]:
    """One named section of a job of ``count``: a spinner on a terminal, else a line as it
    starts and one with its time as it ends (``evaluate [2/6] factor oracle: 41s``)."""
    stream = stream or sys.stderr
    head = f"{job} [{index}/{count}] {name}"
    started = time.monotonic()
    if not enabled():
        yield
        return
    if stream.isatty():
        from rich.console import Console

        with Console(file=stream).status(head):
            yield
    else:
        print(f"{head} ...", file=stream, flush=True)
        yield
    print(f"{head}: {duration(time.monotonic() - started)}", file=stream, flush=True)
