"""Stopping a runner cleanly: SIGTERM is Ctrl-C, and a few short steps are never cut in half.

A cluster scheduler, ``docker stop`` or ``kill`` sends SIGTERM first, and Python's default for it
is to die on the spot, leaving the cell's run and the suite's parent RUNNING until another runner
notices. ``terminate_as_interrupt`` makes SIGTERM raise ``Terminated`` (a ``KeyboardInterrupt``),
so every path that closes a run on Ctrl-C (the cell KILLED with its checkpoint, the parent
KILLED) closes it on SIGTERM too. ``held_signals`` delays both signals over a step that creates a
run and hands it back (a claim): interrupted in its middle, the run would exist with nobody left
to close it; delayed, the step ends, its owner holds the run, and the signal is raised then.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

STOPPING = (signal.SIGINT, signal.SIGTERM)
TERMINATED_STATUS = 128 + signal.SIGTERM  # a shell's exit status for a SIGTERM'd process
INTERRUPTED_STATUS = 128 + signal.SIGINT


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: handled everywhere as Ctrl-C is."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """While the block runs, SIGTERM raises ``Terminated`` (only the main thread can set
    handlers; elsewhere the block runs as it is)."""
    if not _main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def held_signals() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, then deliver the first one that came to
    the handler that was there before (so Ctrl-C still raises, just after the block)."""
    if not _main_thread():
        yield
        return
    arrived: list[int] = []
    previous = {signum: signal.signal(signum, _recorder(arrived)) for signum in STOPPING}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if arrived:
            signal.raise_signal(arrived[0])


def _recorder(arrived: list[int]) -> Any:
    def record(signum: int, frame: Any) -> None:
        arrived.append(signum)

    return record
