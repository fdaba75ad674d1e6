"""Kills inside SQLite's writes: a runner killed in the middle of a write transaction (pages of the
store already changed on disk, the journal hot) at ten seeded points of a run, from the store's
creation to the last cell, each followed by one clean run of the installed ``growbench`` with
warnings shown. Every cell ends with exactly one FINISHED run and the metrics of an uninterrupted
run; nothing is left RUNNING. (``sqlite_killer.py`` is the kill switch.)
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from mlflow import MlflowClient

from growbench.benchmarks import leases
from growbench.benchmarks.executor import run_suite
from growbench.benchmarks.suite import parse_suite
from growbench.benchmarks.tracking import experiment_name
from tests.benchmarks.conftest import TINY_SUITE, user_environment

SUITE = (
    TINY_SUITE.replace('name = "tiny"', 'name = "faults"')
    .replace("seeds = 1", "seeds = 2")
    .replace("epochs = 3", "epochs = 4")
)
CELLS = 4
KILL_POINTS = 10
KILLER = Path(__file__).with_name("sqlite_killer.py")


def command(suite: Path, uri: str) -> list[str]:
    return ["run", "--suite", str(suite), "--tracking-uri", uri, "--checkpoint-seconds", "0"]


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = user_environment()
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def final_metrics(uri: str) -> dict[str, dict[str, float]]:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(experiment_name("faults"))
    cells = client.search_runs([experiment.experiment_id], "tags.`growbench.role` = 'cell'")
    assert not [run for run in cells if run.info.status == "RUNNING"]
    finished = [run for run in cells if run.info.status == "FINISHED"]
    assert sorted(Counter(run.data.tags[leases.HASH] for run in finished).values()) == [1] * CELLS
    return {
        run.data.tags[leases.HASH]: {
            key: value for key, value in run.data.metrics.items() if not key.endswith("seconds")
        }
        for run in finished
    }


@pytest.mark.slow
def test_kills_inside_sqlite_writes_heal_on_the_next_run(tmp_path) -> None:
    suite = tmp_path / "faults.toml"
    suite.write_text(SUITE)
    reference_uri = f"sqlite:///{tmp_path}/reference.db"
    run_suite(parse_suite(SUITE, "faults"), reference_uri, "cpu")
    reference = final_metrics(reference_uri)

    counting = run([str(KILLER), "0", *command(suite, f"sqlite:///{tmp_path}/count.db")], tmp_path)
    assert counting.returncode == 0, counting.stderr
    writes = int(counting.stderr.rsplit("writes: ", 1)[1])
    points = sorted(random.Random(20261205).sample(range(1, writes + 1), KILL_POINTS))

    def kill_then_heal(point: int) -> tuple[bool, subprocess.CompletedProcess]:
        """One kill at ``point`` on a fresh store, then one clean run on it."""
        folder = tmp_path / f"kill-{point}"
        folder.mkdir()
        uri = f"sqlite:///{folder}/mlflow.db"
        killed = run([str(KILLER), str(point), *command(suite, uri)], folder)
        assert killed.returncode == -signal.SIGKILL, (point, killed.stderr)
        hot_journal = (folder / "mlflow.db-journal").exists()
        return hot_journal, run(["-m", "growbench.cli", *command(suite, uri)], folder)

    with ThreadPoolExecutor(max_workers=2) as pool:  # two stores at a time: one per core
        outcomes = list(pool.map(kill_then_heal, points))
    for point, (hot_journal, clean) in zip(points, outcomes, strict=True):
        assert hot_journal, point  # the kill was inside a write, as SQLite's crash is
        assert clean.returncode == 0, (point, clean.stderr)
        assert "Traceback" not in clean.stderr
        folder = tmp_path / f"kill-{point}"
        assert final_metrics(f"sqlite:///{folder}/mlflow.db") == reference, point
