"""``growbench`` with a kill switch inside SQLite: ``python sqlite_killer.py N ARGS...`` runs
``growbench ARGS...`` and sends itself SIGKILL at the start of the N-th write statement (INSERT,
UPDATE, DELETE) that is not the first of its transaction: by then that transaction has changed
pages, and with a two-page cache SQLite has already spilled some of them into the database file,
so the kill leaves what a crash in the middle of a commit leaves, a hot journal and a half-written
file. ``N = 0`` kills nothing and prints the number of such statements the run made.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import sys

from sqlalchemy import event
from sqlalchemy.pool import Pool

WRITES = ("INSERT", "UPDATE", "DELETE")


def arm(target: int, counted: list[int]) -> None:
    def on_connect(connection, record) -> None:
        if not isinstance(connection, sqlite3.Connection):
            return
        connection.execute("pragma cache_size = 2")
        in_transaction = [0]  # writes so far in the open transaction

        def trace(statement: str) -> None:
            if not connection.in_transaction:
                in_transaction[0] = 0
                return
            if not statement.lstrip().upper().startswith(WRITES):
                return
            in_transaction[0] += 1
            if in_transaction[0] < 2:
                return
            counted[0] += 1
            if counted[0] == target:
                os.kill(os.getpid(), signal.SIGKILL)

        connection.set_trace_callback(trace)

    event.listen(Pool, "connect", on_connect)


def main() -> int:
    target = int(sys.argv[1])
    counted = [0]
    arm(target, counted)
    from growbench.cli import main as growbench

    try:
        status = growbench(sys.argv[2:])
    except SystemExit as exit:
        status = exit.code
    if target == 0:
        print(f"writes: {counted[0]}", file=sys.stderr)
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
