"""Run a suite's cells on a Ray cluster: one Ray task per cell, every worker logging to one
tracking store.

The driver does what the in-process executor does before training (checks the suite and the
store, makes the experiment and parent run, skips FINISHED cells), then submits one task per
remaining cell with its resources (``cpus_per_cell``, ``gpus_per_cell``; fractions pack several
cells on one GPU). Each task loads its cell's data on its worker (from the worker's own
``$GROWBENCH_DATA``), claims the cell through the store exactly as an in-process runner does
(``leases``), and trains it with checkpoints, so:

* two drivers, or a driver and in-process runners, never train a cell twice;
* a worker that dies is retried once by Ray (``max_retries=1``); the retry takes over the dead
  attempt's run and goes on from its checkpoint; a second death ends the cell FAILED;
* a driver that dies or is interrupted loses nothing finished: run it again. On a local cluster
  its workers die with it and the next driver reclaims their cells at once; on a multi-node
  cluster a dead worker's cell is reclaimed when its lease runs out (``GROWBENCH_LEASE_SECONDS``).

Across machines the store must be a tracking server (or a database URL): a sqlite file lives on
one disk, so it is refused unless the cluster is the local one this driver starts. Ray is an
optional dependency (``pip install 'growbench[ray]'``).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any

import torch

from growbench.benchmarks.executor import (
    CellOutcome,
    SuiteOutcome,
    claim_and_train,
    load_datasets,
    report_cell,
    stages,
)
from growbench.benchmarks.leases import HASH, ROLE, lease_seconds
from growbench.benchmarks.runner import DEVICES, cpu_threads, resolve_device
from growbench.benchmarks.store import bound_http_retries, check_store_uri, check_uri
from growbench.benchmarks.suite import CellConfig, Suite
from growbench.benchmarks.tracking import CheckpointPolicy, SuiteTracker
from growbench.progress import bar

TASK_TAG = "growbench.ray_task"
SERVER_HOWTO = (
    "start a tracking server that every node can reach, e.g. `mlflow server --host 0.0.0.0 "
    "--port 5000 --backend-store-uri sqlite:///mlflow.db`, and pass --tracking-uri "
    "http://HOST:5000"
)


@dataclass(frozen=True)
class RayResources:
    """What one cell's task asks Ray for."""

    cpus_per_cell: float = 1.0
    gpus_per_cell: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.cpus_per_cell) and self.cpus_per_cell > 0):
            raise ValueError(f"--cpus-per-cell must be a number > 0, got {self.cpus_per_cell}")
        if not (math.isfinite(self.gpus_per_cell) and self.gpus_per_cell >= 0):
            raise ValueError(f"--gpus-per-cell must be a number >= 0, got {self.gpus_per_cell}")


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ValueError(
            "--executor ray needs Ray: pip install 'growbench[ray]' (on every node)"
        ) from None
    return ray


def check_ray_setup(tracking_uri: str, address: str | None, device: str) -> None:
    """What can be refused before anything is written."""
    if check_uri(tracking_uri) == "sqlite" and address is not None:
        raise ValueError(
            f"--tracking-uri {tracking_uri} is a sqlite file, which workers on other machines "
            f"cannot share; {SERVER_HOWTO}"
        )
    if device.split(":")[0] not in DEVICES:
        raise ValueError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    lease_seconds()
    check_store_uri(tracking_uri)


def run_suite_on_ray(
    suite: Suite,
    tracking_uri: str,
    device: str = "auto",
    address: str | None = None,
    resources: RayResources | None = None,
    threads: int = 1,
    checkpoints: CheckpointPolicy | None = None,
    progress: bool = False,
    num_cpus: int | None = None,
) -> SuiteOutcome:
    """Train every cell of ``suite`` not yet FINISHED, one Ray task per cell (module docstring).

    ``address``: None starts a local cluster (``num_cpus`` CPUs, default all), ``"auto"`` or
    ``HOST:PORT`` joins a running one. ``device`` is resolved on each worker (``auto``: cuda
    where the worker has one); ``threads`` is torch's CPU thread count in each task.
    """
    resources = resources or RayResources()
    if threads < 1:
        raise ValueError(f"--threads must be at least 1, got {threads}")
    ray = _import_ray()
    check_ray_setup(tracking_uri, address, device)
    if address is None:
        load_datasets(suite)  # a local cluster reads this machine's data: check it now
    tracker = SuiteTracker(tracking_uri, suite, device, checkpoints)
    tracker.open()
    started = not ray.is_initialized()
    if started:
        ray.init(
            address=address,
            num_cpus=num_cpus if address is None else None,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    status = "FAILED"
    try:
        outcome = _run_tasks(ray, suite, tracker, device, resources, threads, progress)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracker.close(status)
        if started:
            ray.shutdown()
    return outcome


def _run_tasks(
    ray: Any,
    suite: Suite,
    tracker: SuiteTracker,
    device: str,
    resources: RayResources,
    threads: int,
    progress: bool,
) -> SuiteOutcome:
    outcome = SuiteOutcome()
    remote = ray.remote(_train_on_worker).options(
        num_cpus=resources.cpus_per_cell,
        num_gpus=resources.gpus_per_cell,
        max_retries=1,  # a worker that dies is retried once
        retry_exceptions=False,  # a cell that raises is FAILED by the worker itself
    )
    context = (tracker.uri, suite, tracker.experiment_id, tracker.parent_id, device, threads)
    for todo in stages(suite, tracker, outcome):
        pending = {remote.remote(*context, tracker.checkpoints, cell): cell for cell in todo}
        cells = bar(total=len(pending), progress=progress, desc=suite.name, unit="cell")
        done = 0
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                cell = pending.pop(ready[0])
                try:
                    result = ray.get(ready[0])
                except ray.exceptions.RayError as exc:  # the worker died twice, or Ray failed
                    result = CellOutcome(cell.label, "failed", _first_line(exc))
                    _close_dead_runs(tracker, cell, result.detail)
                outcome.add(result)
                cells.update()
                done += 1
                report_cell(result, done, len(todo), progress)
        except KeyboardInterrupt:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        finally:
            cells.close()
    return outcome


def _close_dead_runs(tracker: SuiteTracker, cell: CellConfig, reason: str) -> None:
    """End FAILED the runs the cell's dead task left RUNNING (found by the task's tag)."""
    client = tracker.client
    runs = client.search_runs(
        [tracker.experiment_id],
        filter_string=f"tags.`{ROLE}` = 'cell' and tags.`{HASH}` = '{cell.config_hash()}'",
    )
    for run in runs:
        if run.info.status == "RUNNING" and TASK_TAG in run.data.tags:
            client.log_text(
                run.info.run_id, f"the Ray worker died twice: {reason}\n", "traceback.txt"
            )
            client.set_tag(run.info.run_id, "growbench.closed", "Ray worker died twice")
            client.set_terminated(run.info.run_id, status="FAILED")


def _first_line(error: BaseException) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[0][:300] if lines else type(error).__name__


_DATA_CACHE: dict[str, Any] = {}  # the last dataset a worker process loaded, by task options


def _train_on_worker(
    uri: str,
    suite: Suite,
    experiment_id: str,
    parent_id: str,
    device_name: str,
    threads: int,
    checkpoints: CheckpointPolicy,
    cell: CellConfig,
) -> CellOutcome:
    """One cell, in a Ray worker: its data, a claim, training (``claim_and_train``)."""
    import ray

    bound_http_retries()
    device = resolve_device(device_name)
    try:
        dataset = _dataset(suite, cell, device)
    except (ValueError, FileNotFoundError) as exc:
        return CellOutcome(cell.label, "failed", f"on {os.uname().nodename}: {exc}")
    tracker = SuiteTracker(uri, suite, str(device), checkpoints)
    tracker.attach(experiment_id, parent_id)
    tracker.run_tags = {TASK_TAG: ray.get_runtime_context().get_task_id() or ""}
    with cpu_threads(threads):
        return claim_and_train(tracker, cell, dataset, device)


def _dataset(suite: Suite, cell: CellConfig, device: torch.device) -> Any:
    task = next(task for task in suite.tasks if task.name == cell.task.name)
    key = repr((task.dataset, sorted(task.dataset_options.items()), str(device)))
    if key not in _DATA_CACHE:
        _DATA_CACHE.clear()  # one dataset at a time per worker process
        single = dataclasses.replace(suite, tasks=(task,))
        _DATA_CACHE[key] = load_datasets(single, device)[task.name]
    return _DATA_CACHE[key]
