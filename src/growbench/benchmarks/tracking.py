"""MLflow tracking: one experiment per suite, a parent run per suite, a nested run per cell.

MLflow is the harness's record and its cache: a cell whose FINISHED run carries the same config
hash is never trained again, so an interrupted suite resumes where it stopped. The store is
``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` in the working
directory; with sqlite the artifacts go to ``mlartifacts/`` beside the database file. The store
and the experiment are created once, before any cell runs (sqlite's schema creation must not race).

Each cell run carries tags (``growbench.method``, ``.dataset``, ``.model``, ``.task``, ``.seed``,
``.config_hash``, ``.git_commit``, ``.device``, ``.version.*``), the flattened resolved config as
params plus the runner's facts (``budget.limit``, ``start.widths``, ``start.params``, ...), one
``log_batch`` of metrics per epoch (``step`` = epoch), and the artifacts ``growth_events.json``,
``architecture.json`` and, when it failed, ``traceback.txt``. Only the ``MlflowClient`` is used,
never the fluent API's process-global active run.
"""

from __future__ import annotations

import json
import os
import platform
import re
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run, ViewType

import growbench
from growbench.benchmarks.runner import CellObserver, CellResult
from growbench.benchmarks.suite import CellConfig, Suite

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
ROLE = "growbench.role"
HASH = "growbench.config_hash"
PARENT_TAG = "mlflow.parentRunId"
PARAMS_PER_CALL = 100  # MLflow's limit for one log_batch


def resolve_tracking_uri(uri: str | None = None) -> str:
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def experiment_name(suite_name: str) -> str:
    return f"growbench:{suite_name}"


def _local_path(uri: str) -> Path | None:
    """The file or folder a local store lives in; None for a server."""
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///"))
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(parsed.path)
    if parsed.scheme == "" or len(parsed.scheme) == 1:  # a plain path (or a Windows drive)
        return Path(uri)
    return None


def store_exists(uri: str) -> bool:
    """Whether reading the store could find anything (reading never creates a local store)."""
    path = _local_path(uri)
    return path is None or path.exists()


def artifact_location(uri: str, suite_name: str) -> str | None:
    """``mlartifacts/<suite>`` beside a sqlite database, so artifacts never land in the cwd."""
    if not uri.startswith("sqlite:///"):
        return None
    folder = re.sub(r"[^A-Za-z0-9._-]+", "_", suite_name)
    database = Path(uri.removeprefix("sqlite:///")).resolve()
    return (database.parent / "mlartifacts" / folder).as_uri()


def git_commit() -> str:
    """The commit growbench's source tree is at, read from ``.git`` (no git process), or unknown."""
    for folder in Path(growbench.__file__).resolve().parents:
        git = folder / ".git"
        if git.is_file():  # a worktree: ".git" names the real git dir
            git = (folder / git.read_text().removeprefix("gitdir:").strip()).resolve()
        if git.is_dir():
            return _read_head(git)
    return "unknown"


def _read_head(git: Path) -> str:
    try:
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return head
        ref = head.removeprefix("ref:").strip()
        if (git / ref).is_file():
            return (git / ref).read_text().strip()
        packed = git / "packed-refs"
        if packed.is_file():
            for line in packed.read_text().splitlines():
                if line.endswith(f" {ref}"):
                    return line.split()[0]
    except OSError:
        pass
    return "unknown"


def environment_tags(device: str) -> dict[str, str]:
    return {
        "growbench.git_commit": git_commit(),
        "growbench.device": device,
        "growbench.version.growbench": growbench.__version__,
        "growbench.version.torch": torch.__version__,
        "growbench.version.python": platform.python_version(),
    }


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


def best_runs(uri: str, suite_name: str) -> dict[str, Run]:
    """Per config hash, its newest FINISHED cell run, else its newest run of any other status
    (FAILED, KILLED, RUNNING); empty when the store or the experiment does not exist."""
    if not store_exists(uri):
        return {}
    client = MlflowClient(uri)
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
    client = MlflowClient(uri)
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


class SuiteTracker:
    """The suite's experiment and parent run; hands out one ``CellTracker`` per cell."""

    def __init__(self, uri: str, suite: Suite, device: str) -> None:
        self.uri, self.suite, self.device = uri, suite, device
        self.client = MlflowClient(uri)
        self.experiment_id = ""
        self.parent_id = ""

    def open(self) -> None:
        """Create the store, the experiment and the parent run (or reopen the latest parent)."""
        name = experiment_name(self.suite.name)
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            self.experiment_id = self.client.create_experiment(
                name,
                artifact_location=artifact_location(self.uri, self.suite.name),
                # MLflow 3's UI opens an experiment on its GenAI pages unless told it holds
                # model training runs.
                tags={"mlflow.experimentKind": "custom_model_development"},
            )
        else:
            self.experiment_id = experiment.experiment_id
        parents = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{ROLE}` = 'suite'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if parents:
            self.parent_id = parents[0].info.run_id
            self.client.update_run(self.parent_id, status="RUNNING")
        else:
            tags = {ROLE: "suite", "growbench.suite": self.suite.name}
            if self.suite.description:
                tags["mlflow.note.content"] = self.suite.description
            run = self.client.create_run(self.experiment_id, tags=tags, run_name=self.suite.name)
            self.parent_id = run.info.run_id
        if self.suite.text:
            self.client.log_text(self.parent_id, self.suite.text, "suite.toml")

    def finished_hashes(self) -> set[str]:
        return _finished(self.client, self.experiment_id)

    def start_cell(self, cell: CellConfig) -> CellTracker:
        task = cell.task
        tags = {
            ROLE: "cell",
            PARENT_TAG: self.parent_id,
            "growbench.suite": self.suite.name,
            "growbench.method": cell.method,
            "growbench.dataset": task.dataset,
            "growbench.model": task.model,
            "growbench.task": task.name,
            "growbench.seed": str(cell.seed),
            HASH: cell.config_hash(),
            **environment_tags(self.device),
        }
        run = self.client.create_run(self.experiment_id, tags=tags, run_name=cell.label)
        tracker = CellTracker(self.client, run.info.run_id)
        tracker.log_params(cell.params())
        return tracker

    def close(self, status: str) -> None:
        self.client.set_terminated(self.parent_id, status=status)


class CellTracker(CellObserver):
    """Logs one cell's run as the runner reports it; ends it FINISHED, FAILED or KILLED."""

    def __init__(self, client: MlflowClient, run_id: str) -> None:
        self.client, self.run_id = client, run_id
        self.events: list[dict[str, Any]] = []

    def log_params(self, params: dict[str, str]) -> None:
        items = [Param(key, str(value)) for key, value in params.items()]
        for start in range(0, len(items), PARAMS_PER_CALL):
            self.client.log_batch(self.run_id, params=items[start : start + PARAMS_PER_CALL])

    def started(self, info: dict[str, Any]) -> None:
        self.log_params({key: json.dumps(value) for key, value in info.items()})

    def epoch_done(self, epoch: int, metrics: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(key, float(value), now, epoch) for key, value in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def grew(self, record: dict[str, Any]) -> None:
        self.events.append(record)

    def finish(self, result: CellResult) -> None:
        self.client.log_dict(self.run_id, result.events, "growth_events.json")
        self.client.log_dict(self.run_id, result.architecture, "architecture.json")
        self.client.set_terminated(self.run_id, status="FINISHED")

    def fail(self, error: BaseException) -> None:
        text = "".join(traceback.format_exception(error))
        self.client.log_text(self.run_id, text, "traceback.txt")
        self.client.log_dict(self.run_id, self.events, "growth_events.json")
        self.client.set_terminated(self.run_id, status="FAILED")

    def kill(self) -> None:
        self.client.set_terminated(self.run_id, status="KILLED")
