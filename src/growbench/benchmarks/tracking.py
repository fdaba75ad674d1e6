"""MLflow tracking: one experiment per suite, a parent run per suite, a nested run per cell.

MLflow is the harness's record and its cache: a cell whose FINISHED run carries the same config
hash is never trained again, so an interrupted suite resumes where it stopped. The store is
``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` in the working
directory; with sqlite the artifacts go to ``mlartifacts/`` beside the database file. The store
and the experiment are created once, before any cell runs (sqlite's schema creation must not race).

Each cell run carries tags (``growbench.method``, ``.base_method`` (the registered method a
variant runs), ``.dataset``, ``.model``, ``.task``, ``.seed``, ``.config_hash``, ``.git_commit``,
``.git_dirty``, ``.device``, ``.version.*``, ``.machine.*``: CPU model, threads, BLAS,
accelerator; ``.provider.method``, ``.provider.dataset``, ``.provider.model``: the installed
package and version that supplies each), the
flattened resolved config as params plus the runner's facts (``budget.limit``, ``start.widths``,
``start.params``, ...), one ``log_batch`` of metrics per epoch (``step`` = epoch), and the
artifacts ``growth_events.json``, ``architecture.json`` and, when it failed, ``traceback.txt``.
Only the ``MlflowClient`` is used, never the fluent API's process-global active run.

The store's health (URI checks, creation under a lock, repair) is ``store``'s; who trains which
cell is ``leases``'s: ``SuiteTracker.claim`` hands out a cell only to one runner, and a
``CellTracker`` keeps its run's heartbeat and saves the cell's checkpoints as artifacts
(``checkpoint/state-a.pt`` and ``-b.pt`` in turn, the tag ``growbench.checkpoint`` naming the
complete one), which the next claimant of a killed cell resumes from.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run, RunTag, ViewType
from mlflow.exceptions import MlflowException

import growbench
from growbench.benchmarks import checkpoint
from growbench.benchmarks.interrupts import held_signals
from growbench.benchmarks.leases import CHECKPOINT, HASH, ROLE, ClaimOutcome, Heartbeat, claim_cell
from growbench.benchmarks.runner import CellObserver, CellResult
from growbench.benchmarks.store import (
    StoreError,
    StoreUnreachableError,
    check_uri,
    first_line,
    open_store,
    server_gone,
    sqlite_path,
    store_lock,
)
from growbench.benchmarks.suite import CellConfig, Suite
from growbench.provenance import git_commit, git_dirty, provider_tags

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
PARENT_TAG = "mlflow.parentRunId"
PARAMS_PER_CALL = 100  # MLflow's limit for one log_batch
METRICS_PER_CALL = 1000
# A cell's epoch metrics are sent in one batch at most this often (and whenever it checkpoints,
# ends, fails or is killed): one log_batch costs ~10 ms on sqlite and more through a server,
# which on the default suite's short epochs cost more than the epochs themselves.
METRIC_FLUSH_SECONDS = 5.0
HEALTH = "growbench.health"  # a finished cell's health flags, a JSON list (``health``)
# MLflow 3's UI shows an experiment as GenAI work (traces, an Overview page) or as model training
# (the runs table) by this tag; "custom_model_development" is its "Machine learning" kind. A
# suite's experiment gets it when made, and an older one without it (or with a GenAI kind) when
# a run opens it; another training kind a user chose in the UI is kept.
EXPERIMENT_KIND = "mlflow.experimentKind"
TRAINING_RUNS = "custom_model_development"


class GuardedClient:
    """An ``MlflowClient`` whose calls neither wait on a dead tracking server nor leave a local
    store locked.

    A server: the first time it fails to answer, that call raises one ``StoreUnreachableError``
    naming it, and so does every later call, at once. Without it the error path (the cell's
    ``fail``, the suite's ``close``) called the dead server again, each call waiting out its
    retries and timeouts (minutes when the server hangs) before a traceback.

    A database (sqlite, PostgreSQL, ...): Ctrl-C and SIGTERM are held over each call
    (``held_signals``) and raised when it returns. Raised inside a call, a signal cut a
    transaction in half about one time in ten in a measured loop of writes, and the half-done
    session kept sqlite's write lock: the run's own KILLED update then waited out the 20 s busy
    timeout and failed, leaving the cell and the suite RUNNING. A local call takes milliseconds,
    so nothing waits; a server's calls are not held (a hung one must not make Ctrl-C wait), and
    its transactions are its own.
    """

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.client = MlflowClient(uri)
        self.lost: StoreUnreachableError | None = None
        self._server = check_uri(uri) == "server"

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.client, name)
        if not callable(attribute):
            return attribute
        if not self._server:

            def held(*args: Any, **kwargs: Any) -> Any:
                with held_signals():
                    return attribute(*args, **kwargs)

            return held

        def call(*args: Any, **kwargs: Any) -> Any:
            if self.lost is not None:
                raise self.lost
            try:
                return attribute(*args, **kwargs)
            except Exception as exc:
                if not server_gone(exc):
                    raise
                self.lost = StoreUnreachableError(
                    f"tracking server {self.uri} stopped answering ({first_line(exc)}); "
                    "finished cells are kept in it: rerun the same command once it is back"
                )
                raise self.lost from None

        return call


def resolve_tracking_uri(uri: str | None = None) -> str:
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def experiment_name(suite_name: str) -> str:
    return f"growbench:{suite_name}"


def store_exists(uri: str) -> bool:
    """Whether reading the store could find anything: reading never creates a local store, and
    a damaged or unreachable one is one ``StoreError``."""
    return open_store(uri, create=False)


def artifact_location(uri: str, suite_name: str) -> str | None:
    """``mlartifacts/<suite>`` beside a sqlite database, so artifacts never land in the cwd."""
    path = sqlite_path(uri)
    if path is None:
        return None
    folder = re.sub(r"[^A-Za-z0-9._-]+", "_", suite_name)
    database = path.resolve()
    return (database.parent / "mlartifacts" / folder).as_uri()


# The tags of ``machine_tags``, by the cells-table column that reads them.
MACHINE_TAGS = {
    "cpu": "growbench.machine.cpu",
    "threads": "growbench.machine.threads",
    "blas": "growbench.machine.blas",
    "accelerator": "growbench.machine.accelerator",
}


def environment_tags(device: str) -> dict[str, str]:
    return {
        "growbench.git_commit": git_commit(),
        "growbench.git_dirty": git_dirty(),
        "growbench.device": device,
        "growbench.version.growbench": growbench.__version__,
        "growbench.version.torch": torch.__version__,
        "growbench.version.python": platform.python_version(),
        **machine_tags(device),
    }


def machine_tags(device: str) -> dict[str, str]:
    """The machine a cell ran on, as far as it moves float results: CPU model, torch's CPU
    threads, the BLAS torch was built with, and the accelerator (its name on CUDA)."""
    accelerator = device
    if device.startswith("cuda") and torch.cuda.is_available():
        accelerator = f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return {
        MACHINE_TAGS["cpu"]: cpu_model(),
        MACHINE_TAGS["threads"]: str(torch.get_num_threads()),
        MACHINE_TAGS["blas"]: _built_with("BLAS_INFO"),
        MACHINE_TAGS["accelerator"]: accelerator,
    }


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else what ``platform`` says)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _built_with(key: str) -> str:
    match = re.search(rf"{key}=([^,\s]+)", torch.__config__.show())
    return match.group(1) if match else "unknown"


def cell_runs(client: MlflowClient, experiment_id: str) -> Iterator[Run]:
    """Every cell run of the experiment, newest first, page by page."""
    token = None
    while True:
        page = client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{ROLE}` = 'cell'",
            run_view_type=ViewType.ACTIVE_ONLY,
            order_by=["attributes.start_time DESC"],
            page_token=token,
        )
        yield from page
        token = page.token
        if not token:
            return


def json_artifact(client: MlflowClient, run_id: str, path: str) -> Any:
    """A JSON artifact of the run, or None when it was never logged."""
    with tempfile.TemporaryDirectory() as folder:
        try:
            local = download_artifact(client, run_id, path, folder)
        except (MlflowException, OSError):
            return None
        return json.loads(Path(local).read_text())


def download_artifact(client: MlflowClient, run_id: str, path: str, folder: str) -> str:
    """``client.download_artifacts`` without MLflow's progress bar, which it draws for every
    file, however small (a report reads two per run; a log would fill with them)."""
    name = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(name)
    os.environ[name] = "false"
    try:
        return client.download_artifacts(run_id, path, folder)
    finally:
        if before is None:
            del os.environ[name]
        else:
            os.environ[name] = before


def final_widths(uri: str, suite_name: str, hashes: Iterable[str]) -> dict[str, dict[str, int]]:
    """Per config hash among ``hashes`` with a FINISHED run, the site widths its net ended with
    (``architecture.json``, sites in the net's order)."""
    runs = best_runs(uri, suite_name)
    if not runs:
        return {}  # and no client made: one would create a missing store
    client = GuardedClient(uri)
    widths = {}
    for config_hash in hashes:
        run = runs.get(config_hash)
        if run is None or run.info.status != "FINISHED":
            continue
        architecture = json_artifact(client, run.info.run_id, "architecture.json") or {}
        if "widths" in architecture:
            widths[config_hash] = {site: int(w) for site, w in architecture["widths"].items()}
    return widths


def best_runs(uri: str, suite_name: str) -> dict[str, Run]:
    """Per config hash, its newest FINISHED cell run, else its newest run of any other status
    (FAILED, KILLED, RUNNING); empty when the store or the experiment does not exist."""
    if not store_exists(uri):
        return {}
    client = GuardedClient(uri)
    experiment = client.get_experiment_by_name(experiment_name(suite_name))
    if experiment is None:
        return {}
    best: dict[str, Run] = {}
    for run in cell_runs(client, experiment.experiment_id):  # newest first
        config_hash = run.data.tags.get(HASH)
        if config_hash is None:
            continue
        known = best.get(config_hash)
        if known is None or (known.info.status != "FINISHED" and run.info.status == "FINISHED"):
            best[config_hash] = run
    return best


def finished_hashes(uri: str, suite_name: str) -> set[str]:
    """Config hashes of the suite's FINISHED cells; reads only, and creates no store."""
    if not store_exists(uri):
        return set()
    client = GuardedClient(uri)
    experiment = client.get_experiment_by_name(experiment_name(suite_name))
    if experiment is None:
        return set()
    return _finished(client, experiment.experiment_id)


def _finished(client: MlflowClient, experiment_id: str) -> set[str]:
    return {
        run.data.tags[HASH]
        for run in cell_runs(client, experiment_id)
        if run.info.status == "FINISHED" and HASH in run.data.tags
    }


@dataclass(frozen=True)
class CheckpointPolicy:
    """When a cell saves its state: after every ``every``-th epoch and after each growth round,
    but not within ``min_seconds`` of its last save (``every = 0``: never)."""

    every: int = 1
    min_seconds: float = 60.0

    def __post_init__(self) -> None:
        if self.every < 0:
            raise ValueError(f"--checkpoint-every must be 0 (never) or more, got {self.every}")
        if not 0 <= self.min_seconds < float("inf"):
            raise ValueError(
                f"--checkpoint-seconds must be a finite number >= 0, got {self.min_seconds}"
            )


class SuiteTracker:
    """The suite's experiment and parent run; claims cells and hands out one ``CellTracker``
    per claimed cell."""

    def __init__(
        self,
        uri: str,
        suite: Suite,
        device: str,
        checkpoints: CheckpointPolicy | None = None,
    ) -> None:
        self.uri, self.suite, self.device = uri, suite, device
        self.checkpoints = checkpoints or CheckpointPolicy()
        self.client: GuardedClient
        self.experiment_id = ""
        self.parent_id = ""
        self.run_tags: dict[str, str] = {}  # added to every cell run (a Ray task's id)

    def open(self) -> None:
        """Create (or repair) the store, the experiment and the parent run, or reopen the
        latest parent: all under the store's lock, so runners starting together make one."""
        open_store(self.uri, create=True)
        self.client = GuardedClient(self.uri)
        with store_lock(self.uri):
            self.experiment_id = self._experiment()
            self.parent_id = self._parent()
        if self.suite.text:
            self.client.log_text(self.parent_id, self.suite.text, "suite.toml")

    def attach(self, experiment_id: str, parent_id: str) -> None:
        """Use an experiment and parent run another process opened (a Ray worker's tracker)."""
        self.client = GuardedClient(self.uri)
        self.experiment_id, self.parent_id = experiment_id, parent_id

    def _experiment(self) -> str:
        name = experiment_name(self.suite.name)
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None and experiment.lifecycle_stage == "deleted":
            raise StoreError(
                f"experiment {name!r} is deleted in {self.uri} (its runs would be invisible); "
                f"restore it (`mlflow experiments restore --experiment-id "
                f"{experiment.experiment_id}`) or purge it (`mlflow gc --backend-store-uri "
                f"{self.uri}`), then rerun"
            )
        if experiment is not None:
            kind = experiment.tags.get(EXPERIMENT_KIND)
            if kind is None or kind.startswith("genai"):  # made before the tag, or set wrong
                self.client.set_experiment_tag(
                    experiment.experiment_id, EXPERIMENT_KIND, TRAINING_RUNS
                )
            return experiment.experiment_id
        try:
            return self.client.create_experiment(
                name,
                artifact_location=artifact_location(self.uri, self.suite.name),
                tags={EXPERIMENT_KIND: TRAINING_RUNS},
            )
        except MlflowException:  # another runner on the same server made it first
            experiment = self.client.get_experiment_by_name(name)
            if experiment is None:
                raise
            return experiment.experiment_id

    def _parent(self) -> str:
        parents = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{ROLE}` = 'suite'",
            order_by=["attributes.start_time ASC"],
            max_results=1,
        )
        if parents:
            self.client.update_run(parents[0].info.run_id, status="RUNNING")
            return parents[0].info.run_id
        tags = {ROLE: "suite", "growbench.suite": self.suite.name}
        if self.suite.description:
            tags["mlflow.note.content"] = self.suite.description
        run = self.client.create_run(self.experiment_id, tags=tags, run_name=self.suite.name)
        return run.info.run_id

    def finished_hashes(self) -> set[str]:
        return _finished(self.client, self.experiment_id)

    def claim(self, cell: CellConfig) -> tuple[ClaimOutcome, CellTracker | None]:
        """Claim ``cell`` for this runner (``leases.claim_cell``); when it is ours, its tracker
        (heartbeat running, params logged, the checkpoint to resume from loaded)."""
        task = cell.task
        tags = {
            ROLE: "cell",
            PARENT_TAG: self.parent_id,
            "growbench.suite": self.suite.name,
            "growbench.method": cell.method,
            "growbench.base_method": cell.registered_method,
            "growbench.dataset": task.dataset,
            "growbench.model": task.model,
            "growbench.task": task.name,
            "growbench.seed": str(cell.seed),
            **provider_tags(cell),
            HASH: cell.config_hash(),
            **environment_tags(self.device),
            **self.run_tags,
        }

        def create_run(extra: dict[str, str]) -> str:
            run = self.client.create_run(
                self.experiment_id, tags={**tags, **extra}, run_name=cell.label
            )
            return run.info.run_id

        claim = claim_cell(self.client, self.experiment_id, cell.config_hash(), create_run)
        if claim.status != "claimed":
            return claim, None
        tracker = CellTracker(self.client, claim.run_id, cell, self.checkpoints)
        try:
            tracker.log_params(cell.params())
            if claim.resume_from is not None:
                tracker.load_resume_state(claim.resume_from)
        except BaseException:
            tracker.kill()
            raise
        return claim, tracker

    def close(self, status: str) -> None:
        """End the parent run (not when its server stopped answering: nobody would hear)."""
        if self.client.lost is None:
            self.client.set_terminated(self.parent_id, status=status)


class CellTracker(CellObserver):
    """Logs one cell's run as the runner reports it, keeps its heartbeat and saves its
    checkpoints; ends it FINISHED, FAILED or KILLED. Epoch metrics are held and sent together
    (``METRIC_FLUSH_SECONDS``), always before a checkpoint is saved and when the run ends, so
    the store never holds a checkpoint ahead of its metrics; a hard kill loses at most those
    seconds of metrics of a run whose cell is trained again from its checkpoint anyway."""

    def __init__(
        self,
        client: MlflowClient | GuardedClient,
        run_id: str,
        cell: CellConfig | None = None,
        checkpoints: CheckpointPolicy | None = None,
    ) -> None:
        self.client, self.run_id, self.cell = client, run_id, cell
        self.checkpoints = checkpoints or CheckpointPolicy(every=0)
        self.events: list[dict[str, Any]] = []
        self.resume_state: dict[str, Any] | None = None
        self.resumed_from = ""  # the run whose checkpoint the cell goes on from
        self._last_save = time.monotonic()
        self._next_file = "a"
        self._heartbeat = Heartbeat(client, run_id)
        self._pending: list[Metric] = []
        self._last_flush = time.monotonic()

    def log_params(self, params: dict[str, str]) -> None:
        items = [Param(key, str(value)) for key, value in params.items()]
        for start in range(0, len(items), PARAMS_PER_CALL):
            self.client.log_batch(self.run_id, params=items[start : start + PARAMS_PER_CALL])

    def started(self, info: dict[str, Any]) -> None:
        self.log_params({key: json.dumps(value) for key, value in info.items()})

    def epoch_done(self, epoch: int, metrics: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        self._pending += [Metric(key, float(value), now, epoch) for key, value in metrics.items()]
        if time.monotonic() - self._last_flush >= METRIC_FLUSH_SECONDS:
            self.flush_metrics()

    def flush_metrics(self) -> None:
        """Send the held epoch metrics, in batches of MLflow's size."""
        pending, self._pending = self._pending, []
        for start in range(0, len(pending), METRICS_PER_CALL):
            self.client.log_batch(self.run_id, metrics=pending[start : start + METRICS_PER_CALL])
        self._last_flush = time.monotonic()

    def grew(self, record: dict[str, Any]) -> None:
        self.events.append(record)

    def resumed(self, epoch: int, history: list[dict[str, float]], events: list[dict]) -> None:
        """Log the metrics of the epochs the checkpoint had done, so this run holds them all."""
        now = int(time.time() * 1000)
        self._pending += [
            Metric(key, float(value), now, step)
            for step, metrics in enumerate(history)
            for key, value in metrics.items()
        ]
        self.flush_metrics()
        self.events = list(events)

    # ------------------------------------------------------------------- checkpoints
    def checkpoint(self, epoch: int, grew: bool, snapshot: Callable[[], dict[str, Any]]) -> None:
        policy = self.checkpoints
        if policy.every == 0 or (self.cell is not None and epoch >= self.cell.task.epochs):
            return
        if epoch % policy.every and not grew:
            return
        if time.monotonic() - self._last_save < policy.min_seconds:
            return
        self.flush_metrics()
        try:
            data = checkpoint.to_bytes(snapshot())
        except checkpoint.CheckpointError as exc:  # the cell still runs, without checkpoints
            warnings.warn(f"{self.run_id}: no checkpoint saved: {exc}", stacklevel=2)
            self.checkpoints = CheckpointPolicy(every=0)
            return
        name = f"state-{self._next_file}.pt"
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / name
            path.write_bytes(data)
            self.client.log_artifact(self.run_id, str(path), "checkpoint")
        record = {"file": f"checkpoint/{name}", "epoch": epoch, "sha256": checkpoint.digest(data)}
        self.client.set_tag(self.run_id, CHECKPOINT, json.dumps(record))
        self._next_file = "b" if self._next_file == "a" else "a"
        self._last_save = time.monotonic()

    def load_resume_state(self, run: Run) -> None:
        """The checkpoint ``run`` (a killed run of this cell) left, when it is complete and
        intact; otherwise the cell starts afresh, with a warning (``refuse_checkpoint``)."""
        self.resumed_from = run.info.run_id
        try:
            record = json.loads(run.data.tags[CHECKPOINT])
            with tempfile.TemporaryDirectory() as folder:
                local = download_artifact(self.client, run.info.run_id, record["file"], folder)
                data = Path(local).read_bytes()
            if checkpoint.digest(data) != record["sha256"]:
                raise checkpoint.CheckpointError("its checksum does not match")
            self.resume_state = checkpoint.from_bytes(data)
            epoch = int(record["epoch"])
        except StoreUnreachableError:
            raise
        except (
            OSError,
            MlflowException,
            checkpoint.CheckpointError,
            ValueError,  # the tag is not JSON, or its epoch not a number
            KeyError,  # the tag lacks a field
            TypeError,  # the tag is JSON but not a record
        ) as exc:
            self.refuse_checkpoint(f"{type(exc).__name__}: {exc}")
            return
        resumed = {"growbench.resumed_from": run.info.run_id, "growbench.resumed_epoch": epoch}
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in resumed.items()])

    def refuse_checkpoint(self, reason: str) -> None:
        """The checkpoint of the run this cell was to resume from cannot be used: warn, start
        from epoch 0, and take its tag off that run (marking why), so no later claim of the cell
        picks it again."""
        warnings.warn(
            f"cell run {self.resumed_from}: its checkpoint cannot be used ({reason}); the cell "
            "starts from epoch 0",
            stacklevel=3,
        )
        self.resume_state = None
        self.client.delete_tag(self.resumed_from, CHECKPOINT)
        self.client.set_tag(self.resumed_from, "growbench.checkpoint_refused", reason[:4000])
        for key in ("growbench.resumed_from", "growbench.resumed_epoch"):
            with contextlib.suppress(MlflowException):  # not set when the download failed
                self.client.delete_tag(self.run_id, key)

    # ------------------------------------------------------------------------- ending
    def finish(self, result: CellResult) -> None:
        self._heartbeat.stop()
        self.flush_metrics()
        self.client.log_dict(self.run_id, result.events, "growth_events.json")
        self.client.log_dict(self.run_id, result.architecture, "architecture.json")
        self.client.set_tag(self.run_id, HEALTH, json.dumps(list(result.health)))
        self.client.set_terminated(self.run_id, status="FINISHED")

    def fail(self, error: BaseException) -> None:
        self._heartbeat.stop()
        if self._store_lost():
            return
        self.flush_metrics()
        text = "".join(traceback.format_exception(error))
        self.client.log_text(self.run_id, text, "traceback.txt")
        self.client.log_dict(self.run_id, self.events, "growth_events.json")
        self.client.set_terminated(self.run_id, status="FAILED")

    def kill(self) -> None:
        self._heartbeat.stop()
        if not self._store_lost():
            self.flush_metrics()
            self.client.set_terminated(self.run_id, status="KILLED")

    def _store_lost(self) -> bool:
        return getattr(self.client, "lost", None) is not None
