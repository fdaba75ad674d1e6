"""The Ray executor for real: a local Ray cluster (2 CPUs) and a real ``mlflow server`` on
127.0.0.1, a ``growbench run --executor ray`` driver in its own process, and workers killed with
SIGKILL while they train: once (Ray retries the task, which goes on from the checkpoint) and
twice (the cell ends FAILED, the driver exits 1, and a second driver finishes it). The results
equal an in-process run's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest
from mlflow import MlflowClient

from growbench.benchmarks import leases
from growbench.benchmarks.executor import run_suite
from growbench.benchmarks.suite import parse_suite
from growbench.benchmarks.tracking import experiment_name
from growbench.cli import main
from tests.benchmarks.conftest import mlflow_server, user_environment

pytest.importorskip("ray")

SUITE = """
name = "on-ray"
seeds = 2
epochs = 12
methods = ["none", "random-split"]

[training]
lr = 0.1
batch_size = 32

[growth]
every = 3
stats_samples = 128

[[tasks]]
dataset = "spirals"
dataset_options = { n_train = 5000, n_test = 300 }
model = "mlp"
model_options = { widths = [8] }
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real tracking server with its own sqlite store and artifact folder."""
    with mlflow_server(tmp_path_factory.mktemp("server")) as (uri, _):
        yield uri


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    uri = f"sqlite:///{tmp_path_factory.mktemp('reference')}/mlflow.db"
    run_suite(parse_suite(SUITE, "on-ray"), uri, "cpu")
    return final_metrics(uri)


def cell_runs(uri: str) -> list:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(experiment_name("on-ray"))
    if experiment is None:
        return []
    return list(client.search_runs([experiment.experiment_id], "tags.`growbench.role` = 'cell'"))


def final_metrics(uri: str) -> dict:
    return {
        run.data.tags[leases.HASH]: {
            k: v for k, v in run.data.metrics.items() if not k.endswith("seconds")
        }
        for run in cell_runs(uri)
        if run.info.status == "FINISHED"
    }


class WorkerKiller(threading.Thread):
    """Watches the store; SIGKILLs the worker training a chosen cell once it has saved a
    checkpoint, as many times as asked for that cell."""

    def __init__(self, uri: str, kills: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.uri, self.wanted, self.done = uri, dict(kills), Counter()
        self.killed_runs: set[str] = set()
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.2) and self.done != Counter(self.wanted):
            try:
                runs = cell_runs(self.uri)
            except Exception:
                continue
            for run in runs:
                label = run.info.run_name
                if (
                    run.info.status == "RUNNING"
                    and self.done[label] < self.wanted.get(label, 0)
                    and leases.CHECKPOINT in run.data.tags
                    and run.info.run_id not in self.killed_runs
                ):
                    pid = int(run.data.tags[leases.OWNER].split(":")[1])
                    os.kill(pid, signal.SIGKILL)
                    self.killed_runs.add(run.info.run_id)
                    self.done[label] += 1


def driver(suite: Path, uri: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "growbench.cli", "run", "--suite", str(suite)]
    command += ["--tracking-uri", uri, "--executor", "ray", "--device", "cpu"]
    command += ["--checkpoint-seconds", "0", "--cpus-per-cell", "1"]
    env = user_environment(RAY_ENABLE_UV_RUN_RUNTIME_ENV="0")
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.slow
def test_ray_workers_killed_mid_cell_are_retried_then_failed(server, reference, tmp_path):
    suite = tmp_path / "on-ray.toml"
    suite.write_text(SUITE)
    once, twice = "spirals-mlp/random-split/seed0", "spirals-mlp/none/seed1"
    killer = WorkerKiller(server, {once: 1, twice: 2})
    killer.start()
    first = driver(suite, server)
    killer.stop.set()
    killer.join()
    assert killer.done == Counter({once: 1, twice: 2}), first.stderr[-3000:]
    assert first.returncode == 1, first.stderr[-3000:]
    assert f"1 of 4 cells failed: {twice}" in first.stderr
    by_label = {}
    for run in cell_runs(server):
        by_label.setdefault(run.info.run_name, []).append(run)
    assert sorted(r.info.status for r in by_label[once]) == ["FINISHED", "KILLED"]
    resumed = next(r for r in by_label[once] if r.info.status == "FINISHED")
    assert "growbench.resumed_from" in resumed.data.tags  # the retry went on from a checkpoint
    assert sorted(r.info.status for r in by_label[twice]) == ["FAILED", "KILLED"]

    second = driver(suite, server)  # the driver is resumable: it trains only what is missing
    assert second.returncode == 0, second.stderr[-3000:]
    assert "1 cells trained, 3 already done, 0 failed" in second.stdout
    finished = Counter(
        r.data.tags[leases.HASH] for r in cell_runs(server) if r.info.status == "FINISHED"
    )
    assert list(finished.values()) == [1, 1, 1, 1]
    assert final_metrics(server) == reference


def test_a_sqlite_store_is_refused_for_a_cluster_of_several_machines(tmp_path, capsys) -> None:
    (tmp_path / "s.toml").write_text(SUITE)
    argv = ["run", "--suite", str(tmp_path / "s.toml"), "--executor", "ray"]
    argv += ["--address", "auto", "--tracking-uri", f"sqlite:///{tmp_path}/x.db"]
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "workers on other machines cannot share" in err
    assert "mlflow server --host 0.0.0.0" in err
    assert not (tmp_path / "x.db").exists()


@pytest.mark.parametrize(
    ("flag", "value", "words"),
    [("--cpus-per-cell", "0", "--cpus-per-cell"), ("--gpus-per-cell", "-1", "--gpus-per-cell")],
)
def test_bad_resources_are_refused(flag, value, words, tmp_path, capsys) -> None:
    (tmp_path / "s.toml").write_text(SUITE)
    with pytest.raises(SystemExit) as stopped:
        main(["run", "--suite", str(tmp_path / "s.toml"), "--executor", "ray", flag, value])
    assert stopped.value.code == 2
    assert words in capsys.readouterr().err
