"""One claim per cell: runners sharing a store (processes, or machines on one server) never train
a cell twice, and a cell whose runner died is taken over.

The claim is the cell's MLflow run itself, so it needs nothing but the store. A run is *live*
while its runner is: it is RUNNING and carries its owner (``host:pid:start-time``) and a heartbeat
tag that a thread refreshes every ``lease / 4`` seconds. On the owner's own host a run is live
exactly while that process exists (a ``kill -9`` is seen at once); elsewhere, while its
heartbeat is younger than the lease (``GROWBENCH_LEASE_SECONDS``, default 300 s).

Claiming a cell (``claim_cell``): read the cell's runs; a FINISHED one means done, a live one
means another runner has it. Otherwise create our run, then read again: if no *other* FINISHED or
live run is visible, the cell is ours. Two claimants cannot both see only themselves (whoever
read second must see the first's run, which was written before that first read), so at most one
wins; when both see each other both withdraw (their runs are deleted) and retry after a random
pause. The winner closes the cell's stale RUNNING runs as KILLED, and the newest stale or KILLED
run that left a checkpoint is what the cell resumes from.
"""

from __future__ import annotations

import os
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from mlflow import MlflowClient
from mlflow.entities import Run, ViewType

ROLE = "growbench.role"
HASH = "growbench.config_hash"
OWNER = "growbench.owner"
HEARTBEAT = "growbench.heartbeat"
CHECKPOINT = "growbench.checkpoint"
DEFAULT_LEASE_SECONDS = 300.0
CLAIM_ATTEMPTS = 20


def lease_seconds() -> float:
    value = os.environ.get("GROWBENCH_LEASE_SECONDS")
    if value is None:
        return DEFAULT_LEASE_SECONDS
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"GROWBENCH_LEASE_SECONDS must be a positive number, got {value!r}")
    return seconds


def _process_start(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), so a reused pid is not taken
    for the runner that had it; empty where /proc is not there."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def this_owner() -> str:
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_process_start(pid)}"


def owner_alive(owner: str) -> bool | None:
    """Whether the process ``owner`` names still runs: True/False on this host, None elsewhere."""
    parts = owner.rsplit(":", 2)
    if len(parts) != 3:
        return None
    host, pid_text, started = parts
    if host != socket.gethostname() or not pid_text.isdigit():
        return None
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, owned by someone else
    return _process_start(pid) == started


def is_live(run: Run, lease: float, now: float | None = None) -> bool:
    """A RUNNING run whose runner is still there (see the module docstring)."""
    if run.info.status != "RUNNING":
        return False
    alive = owner_alive(run.data.tags.get(OWNER, ""))
    if alive is not None:
        return alive
    try:
        beat = float(run.data.tags.get(HEARTBEAT, "nan"))
    except ValueError:
        return False
    return (now if now is not None else time.time()) - beat < lease


def runs_of(client: MlflowClient, experiment_id: str, config_hash: str) -> list[Run]:
    """The cell's runs (not deleted), newest first."""
    return list(
        client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{ROLE}` = 'cell' and tags.`{HASH}` = '{config_hash}'",
            run_view_type=ViewType.ACTIVE_ONLY,
            order_by=["attributes.start_time DESC"],
            max_results=1000,
        )
    )


@dataclass
class ClaimOutcome:
    """What ``claim_cell`` decided: ``run_id`` is ours to train in (status ``claimed``), or the
    cell is ``done`` or ``held`` (by the live run ``other``). ``resume_from``: the newest run of
    the cell that died or was interrupted leaving a checkpoint."""

    status: str  # "claimed" | "done" | "held"
    run_id: str = ""
    other: str = ""
    resume_from: Run | None = None


def claim_cell(
    client: MlflowClient,
    experiment_id: str,
    config_hash: str,
    create_run: Callable[[dict[str, str]], str],
    lease: float | None = None,
) -> ClaimOutcome:
    """Claim the cell ``config_hash`` (see the module docstring); ``create_run(tags)`` makes the
    cell's run with the given extra tags and returns its id."""
    lease = lease_seconds() if lease is None else lease
    pause = random.Random(os.urandom(8))  # never the global RNG: it is the experiment's
    for attempt in range(CLAIM_ATTEMPTS):
        decided = _decided(runs_of(client, experiment_id, config_hash), lease, exclude="")
        if decided is not None:
            return decided
        run_id = create_run({OWNER: this_owner(), HEARTBEAT: f"{time.time():.3f}"})
        runs = runs_of(client, experiment_id, config_hash)
        if _decided(runs, lease, exclude=run_id) is None:
            return _won(client, run_id, runs, lease)
        client.delete_run(run_id)
        time.sleep(pause.uniform(0.05, 0.25) * (attempt + 1))
    raise RuntimeError(f"could not claim cell {config_hash[:12]} in {CLAIM_ATTEMPTS} attempts")


def _decided(runs: list[Run], lease: float, exclude: str) -> ClaimOutcome | None:
    """``done`` or ``held`` when another run settles the cell, else None (it is free)."""
    others = [run for run in runs if run.info.run_id != exclude]
    if any(run.info.status == "FINISHED" for run in others):
        return ClaimOutcome("done")
    live = [run for run in others if is_live(run, lease)]
    if live:
        return ClaimOutcome("held", other=live[0].info.run_id)
    return None


def _won(client: MlflowClient, run_id: str, runs: list[Run], lease: float) -> ClaimOutcome:
    resume_from = None
    for run in runs:  # newest first
        if run.info.run_id == run_id:
            continue
        status = run.info.status
        if status == "RUNNING" and not is_live(run, lease):
            client.set_tag(
                run.info.run_id, "growbench.closed", f"runner gone; reclaimed by {run_id}"
            )
            client.set_terminated(run.info.run_id, status="KILLED")
            status = "KILLED"
        if resume_from is None and status == "KILLED" and CHECKPOINT in run.data.tags:
            resume_from = run
    return ClaimOutcome("claimed", run_id=run_id, resume_from=resume_from)


class Heartbeat:
    """Refreshes a run's heartbeat tag from a daemon thread until stopped."""

    def __init__(self, client: MlflowClient, run_id: str, lease: float | None = None) -> None:
        self.client, self.run_id = client, run_id
        self.interval = (lease_seconds() if lease is None else lease) / 4
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="growbench-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.client.set_tag(self.run_id, HEARTBEAT, f"{time.time():.3f}")
            except Exception:
                continue

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
