"""Progress as a person at a terminal wants it, and as a log file wants it.

On a terminal, long work shows tqdm bars (a suite's cells, a cell's epochs, the cells a report
reads, a download). Piped into a file (CI logs, ``nohup``), redrawn bars are noise, and nested
ones flood the log: there, bars are off and a suite prints one line per finished cell instead
(``cell_line``). Every bar of the package is made by ``bar``, so the rule lives here once.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from tqdm.auto import tqdm


def on_terminal(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (default: standard error, where progress goes) is a terminal."""
    stream = sys.stderr if stream is None else stream
    return bool(getattr(stream, "isatty", lambda: False)())


def bar(iterable: Any = None, *, progress: bool = True, **options: Any) -> tqdm:
    """A tqdm bar on standard error, shown only when ``progress`` is asked for and standard
    error is a terminal (otherwise a silent pass-through)."""
    return tqdm(iterable, disable=not (progress and on_terminal()), file=sys.stderr, **options)


def cell_line(done: int, total: int, label: str, status: str, score: str, seconds: float) -> str:
    """The log line of one finished cell: ``[3/12] task/method/seedN finished: acc 97.5 %,
    4.1 s``."""
    parts = [f"[{done}/{total}] {label} {status}"]
    if score:
        parts[0] += f": {score}"
    parts.append(f"{seconds:.1f} s")
    return ", ".join(parts)


def log_line(text: str) -> None:
    """One line on standard error, above any bars (tqdm redraws them below it), flushed at once:
    a log must show it as it happens."""
    tqdm.write(text, file=sys.stderr)
    sys.stderr.flush()
