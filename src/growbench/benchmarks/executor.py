"""Run a suite's cells in this process: check and load everything, then train what is missing.

The order is what keeps a store clean and a suite resumable: the suite is checked and every
dataset loaded (a bad option or a missing file stops here, before MLflow is touched), then the
store, experiment and parent run are created once (under the store's lock), the cells already
FINISHED with the same config hash are skipped, and each other cell is claimed (``leases``) just
before it trains: one FINISHED since the start or held by a live runner elsewhere is skipped, one
killed earlier goes on from its checkpoint. A cell that raises or diverges is FAILED (with its
traceback) and the suite goes on; Ctrl-C (or SIGTERM, see ``interrupts``) marks the running cell
KILLED (its checkpoint kept), closes the parent and re-raises, and the finished cells stay
finished. A tracking server that stops answering ends the run with one ``StoreUnreachableError``
naming the cells left, without calling the server again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from growbench.benchmarks.checkpoint import CheckpointError
from growbench.benchmarks.interrupts import held_signals
from growbench.benchmarks.leases import lease_seconds
from growbench.benchmarks.runner import (
    CellObserver,
    CellResult,
    cpu_threads,
    resolve_device,
    run_cell,
)
from growbench.benchmarks.store import StoreUnreachableError, check_store_uri
from growbench.benchmarks.suite import CellConfig, Suite, SuiteError, Task, unsupported_reason
from growbench.benchmarks.tracking import (
    CellTracker,
    CheckpointPolicy,
    SuiteTracker,
    final_widths,
    finished_hashes,
)
from growbench.datasets import Dataset, load_dataset
from growbench.nn import build_model
from growbench.progress import bar, cell_line, log_line, on_terminal


@dataclass
class PlannedCell:
    cell: CellConfig
    status: str  # "todo" | "done" | "unsupported"
    reason: str = ""


@dataclass
class SuiteOutcome:
    finished: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # already finished before this run
    unsupported: list[str] = field(default_factory=list)
    held: list[str] = field(default_factory=list)  # being trained by another runner
    resumed: list[str] = field(default_factory=list)  # went on from a checkpoint

    def add(self, cell: CellOutcome) -> None:
        lists = {"finished": self.finished, "failed": self.failed, "done": self.skipped}
        lists.get(cell.status, self.held).append(cell.label)
        if cell.resumed_from is not None:
            self.resumed.append(f"{cell.label} (from epoch {cell.resumed_from})")


def load_datasets(suite: Suite, device: torch.device | str = "cpu") -> dict[str, Dataset]:
    """Every task's data, by task name, loaded once per (dataset, options) and moved to ``device``.

    The datasets' own checks (option values, missing files) run here; a bad option becomes a
    ``SuiteError`` naming the task's field, a missing file stays a ``FileNotFoundError``.
    """
    loaded: dict[str, Dataset] = {}
    by_task = {}
    for task in suite.tasks:
        key = json.dumps([task.dataset, task.dataset_options], sort_keys=True, default=str)
        if key not in loaded:
            loaded[key] = _load(task).to(device)
            _check_model(task, loaded[key])
        by_task[task.name] = loaded[key]
    return by_task


def _load(task: Task) -> Dataset:
    try:
        return load_dataset(task.dataset, **task.dataset_options)
    except (TypeError, ValueError) as exc:
        raise SuiteError(f"{task.path}.dataset_options: {exc}") from None


def _check_model(task: Task, dataset: Dataset) -> None:
    try:
        task.model_config(dataset.spec)
    except ValueError as exc:
        raise SuiteError(f"{task.path}: {exc}") from None


def plan(suite: Suite, done: set[str]) -> list[PlannedCell]:
    """Each cell with what a run would do with it: ``todo``, ``done`` or ``unsupported``."""
    nets = {task.name: build_model(task.model_config()) for task in suite.tasks}
    planned = []
    for cell in suite.cells():
        reason = unsupported_reason(cell.make_grower(), nets[cell.task.name])
        planned.append(_planned(cell, reason, done))
    return planned


def plan_matched(suite: Suite, tracking_uri: str, done: set[str]) -> list[PlannedCell]:
    """The matched static cells (``Suite.matched_cell``) of the suite's growing cells that have
    FINISHED in the store, planned like ``plan``; a cell not finished yet has none so far."""
    growing = [cell for cell in suite.cells() if cell.method in suite.matched]
    if not growing:
        return []
    finals = final_widths(tracking_uri, suite.name, [cell.config_hash() for cell in growing])
    sites = {task.name: list(build_model(task.model_config()).widths()) for task in suite.tasks}
    planned = []
    for cell in growing:
        widths = finals.get(cell.config_hash())
        if widths is not None:
            matched, reason = suite.matched_cell(cell, widths, sites[cell.task.name])
            planned.append(_planned(matched, reason, done))
    return planned


def _planned(cell: CellConfig, unsupported: str | None, done: set[str]) -> PlannedCell:
    if unsupported is not None:
        return PlannedCell(cell, "unsupported", unsupported)
    return PlannedCell(cell, "done" if cell.config_hash() in done else "todo")


def stages(
    suite: Suite, tracker: SuiteTracker, outcome: SuiteOutcome
) -> Iterator[list[CellConfig]]:
    """The cells to train, stage by stage: the suite's cells, then (planned only once those
    have run) the matched static cells of its growing cells. Cells already done or unsupported
    go into ``outcome``."""
    yield _todo(plan(suite, tracker.finished_hashes()), outcome)
    if suite.matched:
        yield _todo(plan_matched(suite, tracker.uri, tracker.finished_hashes()), outcome)


def _todo(planned: list[PlannedCell], outcome: SuiteOutcome) -> list[CellConfig]:
    outcome.skipped += [p.cell.label for p in planned if p.status == "done"]
    outcome.unsupported += [
        f"{p.cell.label}: {p.reason}" for p in planned if p.status == "unsupported"
    ]
    return [p.cell for p in planned if p.status == "todo"]


def dry_run(
    suite: Suite, tracking_uri: str, device: torch.device | str = "cpu"
) -> tuple[list[PlannedCell], list[str]]:
    """Say what a run would do (its cells, and the matched static cells of the growing cells
    finished so far) and what data it needs (one line per dataset: ready, or what is missing and
    how to get it); writes nothing anywhere."""
    resolve_device(device)
    done = finished_hashes(tracking_uri, suite.name)
    planned = plan(suite, done) + plan_matched(suite, tracking_uri, done)
    return planned, data_status(suite)


def data_status(suite: Suite) -> list[str]:
    """One line per distinct (dataset, options) of the suite: loaded and checked, or why not."""
    lines, seen = [], set()
    for task in suite.tasks:
        key = json.dumps([task.dataset, task.dataset_options], sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        options = f" {task.dataset_options}" if task.dataset_options else ""
        try:
            data = _load(task)
            _check_model(task, data)
        except FileNotFoundError as exc:
            lines.append(f"MISSING  {task.dataset}{options}: {' '.join(str(exc).split())}")
            continue
        lines.append(
            f"ready    {task.dataset}{options}: {data.num_train} train / {data.num_test} test"
        )
    return lines


def run_suite(
    suite: Suite,
    tracking_uri: str,
    device: torch.device | str = "cpu",
    progress: bool = False,
    threads: int | None = 1,
    checkpoints: CheckpointPolicy | None = None,
) -> SuiteOutcome:
    """Train every cell of ``suite`` not yet FINISHED in the store at ``tracking_uri``.

    ``threads`` is torch's intra-op CPU thread count while the suite runs (None: unchanged);
    one is fastest for the small nets of the CPU suites, see ``runner.cpu_threads``.
    ``checkpoints`` says when cells save their state (default ``CheckpointPolicy()``).
    """
    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be at least 1, got {threads}")
    lease_seconds()  # a bad GROWBENCH_LEASE_SECONDS fails here, not at the first claim
    check_store_uri(tracking_uri)  # a bad or unreachable store fails before the data loads
    device = resolve_device(device)
    datasets = load_datasets(suite, device)
    tracker = SuiteTracker(tracking_uri, suite, str(device), checkpoints)
    tracker.open()
    status = "FAILED"
    try:
        with cpu_threads(threads):
            outcome = _run_cells(suite, tracker, datasets, device, progress)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracker.close(status)
    return outcome


def _run_cells(
    suite: Suite,
    tracker: SuiteTracker,
    datasets: dict[str, Dataset],
    device: torch.device,
    progress: bool,
) -> SuiteOutcome:
    outcome = SuiteOutcome()
    for todo in stages(suite, tracker, outcome):
        cells = bar(todo, progress=progress, desc=suite.name, unit="cell")
        for done, cell in enumerate(cells, start=1):
            cells.set_postfix_str(cell.label)
            try:
                result = claim_and_train(tracker, cell, datasets[cell.task.name], device, progress)
            except StoreUnreachableError as exc:
                left = len(todo) - done + 1
                raise StoreUnreachableError(
                    f"{exc}; {left} cell(s) of this stage were left, from {cell.label} on"
                ) from None
            outcome.add(result)
            report_cell(result, done, len(todo), progress)
    return outcome


def report_cell(result: CellOutcome, done: int, total: int, progress: bool) -> None:
    """A failed cell is always one line, and so is a finished cell with a health flag; off a
    terminal, so is every finished one (the bars that show them on a terminal are off there)."""
    if result.status == "failed":
        log_line(f"growbench: cell {result.label} FAILED: {result.detail}")
        return
    if result.status == "finished" and progress and not on_terminal():
        log_line(cell_line(done, total, result.label, "finished", result.score, result.seconds))
    if result.health:
        log_line(f"growbench: warning: cell {result.label}: {'; '.join(result.health)}")


@dataclass
class CellOutcome:
    """What became of one cell in one runner: ``finished``, ``failed`` (``detail``: the error),
    ``done`` (FINISHED elsewhere meanwhile) or ``held`` (another live runner has it)."""

    label: str
    status: str
    detail: str = ""
    resumed_from: int | None = None  # the epoch of the checkpoint it went on from
    score: str = ""  # a finished cell's final score, as its log line shows it
    seconds: float = 0.0  # the wall time this runner spent on the cell
    health: tuple[str, ...] = ()  # a finished cell's health flags (``health.cell_flags``)


def claim_and_train(
    tracker: SuiteTracker,
    cell: CellConfig,
    dataset: Dataset,
    device: torch.device,
    progress: bool = False,
) -> CellOutcome:
    """Claim ``cell``; when it is ours, train it (from its checkpoint, if a killed run left
    one) and end its run FINISHED or FAILED. Ctrl-C ends it KILLED and propagates; an error of
    the store itself propagates too (the next cells would meet it as well)."""
    cell_tracker = None
    started = time.perf_counter()
    try:
        with held_signals():  # a claim cut in half would leave a run nobody closes
            claim, cell_tracker = tracker.claim(cell)
        if cell_tracker is None:
            return CellOutcome(cell.label, claim.status)
        observer = _ProgressObserver(cell_tracker, cell, progress)
        try:
            result = _train(cell_tracker, cell, dataset, device, observer)
        finally:
            observer.close()
    except KeyboardInterrupt:
        if cell_tracker is not None:
            cell_tracker.kill()
        raise
    except StoreUnreachableError:
        if cell_tracker is not None:
            cell_tracker.kill()  # stops its heartbeat; the dead server is not called
        raise
    except Exception as exc:
        if cell_tracker is None:
            raise
        with held_signals():
            cell_tracker.fail(exc)
        seconds = time.perf_counter() - started
        resumed_from = _resumed_epoch(cell_tracker)
        return CellOutcome(cell.label, "failed", str(exc), resumed_from, seconds=seconds)
    with held_signals():
        cell_tracker.finish(result)
    resumed_from = _resumed_epoch(cell_tracker)
    seconds = time.perf_counter() - started
    score = final_score(result.final)
    flags = tuple(result.health)
    return CellOutcome(cell.label, "finished", "", resumed_from, score, seconds, flags)


def _train(
    cell_tracker: CellTracker,
    cell: CellConfig,
    dataset: Dataset,
    device: torch.device,
    observer: CellObserver,
) -> CellResult:
    """``run_cell`` from the checkpoint the claim found, or from epoch 0 when that checkpoint
    does not fit the cell (one warning, and the checkpoint is never offered again)."""
    resume = cell_tracker.resume_state
    if resume is not None:
        try:
            return run_cell(cell, dataset, device, observer, resume)
        except CheckpointError as exc:  # raised while loading it, before anything was logged
            cell_tracker.refuse_checkpoint(str(exc))
    return run_cell(cell, dataset, device, observer)


def _resumed_epoch(cell_tracker: CellTracker) -> int | None:
    resume = cell_tracker.resume_state
    return None if resume is None else resume["epoch"]


def final_score(metrics: dict[str, float]) -> str:
    """A cell's final score in a few characters: test accuracy, else test loss."""
    if "test_accuracy" in metrics:
        return f"acc {100 * metrics['test_accuracy']:.2f} %"
    return f"test loss {metrics['test_loss']:.4g}"


class _ProgressObserver(CellObserver):
    """Forwards to the cell's tracker and moves an epoch progress bar."""

    def __init__(self, tracker: CellTracker, cell: CellConfig, progress: bool) -> None:
        self.tracker = tracker
        self.bar = bar(
            total=cell.task.epochs, progress=progress, desc=cell.label, unit="epoch", leave=False
        )

    def started(self, info: dict[str, Any]) -> None:
        self.tracker.started(info)

    def epoch_done(self, epoch: int, metrics: dict[str, float]) -> None:
        self.tracker.epoch_done(epoch, metrics)
        if epoch > 0:
            shown = {"loss": f"{metrics['train_loss']:.4g}"}
            if "test_accuracy" in metrics:
                shown["acc"] = f"{100 * metrics['test_accuracy']:.1f}%"
            else:
                shown["test"] = f"{metrics['test_loss']:.4g}"
            self.bar.set_postfix(shown, refresh=False)
            self.bar.update()

    def grew(self, record: dict[str, Any]) -> None:
        self.tracker.grew(record)

    def resumed(self, epoch: int, history: list[dict[str, float]], events: list[dict]) -> None:
        self.tracker.resumed(epoch, history, events)
        self.bar.update(epoch)

    def checkpoint(self, epoch: int, grew: bool, snapshot: Any) -> None:
        self.tracker.checkpoint(epoch, grew, snapshot)

    def close(self) -> None:
        self.bar.close()
