"""How training meets signals: SIGTERM stops it as Ctrl-C does, and no signal splits a step.

A step moves the weights (``optimizer.step()``) and then the step counter; a checkpoint taken
between the two would label the new weights with the old step, so a resume would train that
step twice. ``deferred_signals`` holds SIGINT and SIGTERM for the length of one step and
delivers them, through whatever handler was installed, once the step is whole.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

#: the signals a step holds back (Ctrl-C, and what schedulers and ``timeout`` send)
HELD = (signal.SIGINT, signal.SIGTERM)


def _in_main_thread() -> bool:
    # only the main thread may set handlers (training inside a worker thread skips them)
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (schedulers, ``timeout``, ``docker stop``, ``kill``) stops training as Ctrl-C
    does: a checkpoint and the resume command, instead of a silent death."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    if not _in_main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold SIGINT and SIGTERM while the block runs, then deliver them as they would have been.

    Signals whose handler is "ignore" stay ignored (a Ray worker runs tasks with SIGINT
    ignored). A second signal during the block is delivered at once, so a step stuck waiting
    (a data worker that hangs) can still be stopped.
    """
    if not _in_main_thread():
        yield
        return
    caught: list[int] = []
    previous = {
        signum: handler
        for signum in HELD
        if (handler := signal.getsignal(signum)) is not signal.SIG_IGN and handler is not None
    }

    def restore() -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    def hold(signum: int, frame: object) -> None:
        caught.append(signum)
        if len(caught) > 1:  # asked twice: stop waiting for the step
            restore()
            signal.raise_signal(signum)

    for signum in previous:
        signal.signal(signum, hold)
    try:
        yield
    finally:
        if len(caught) <= 1:
            restore()
    if len(caught) == 1:
        signal.raise_signal(caught[0])
