"""Runners that are killed, interrupted or run side by side, as real ``growbench run`` processes
on real sqlite stores: nothing is lost, nothing is trained twice, and the results are those of one
uninterrupted run.

* fault injection: ten runners killed with SIGKILL at seeded random moments (while importing,
  creating the store, claiming or training) on a fresh store, then one run to the end;
* two runners started together, on a fresh store and on an existing one;
* the claim protocol itself, interleaved by hand, and leases of runners on other hosts;
* stores left damaged: repaired when they hold no runs, refused untouched when they do.
"""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from contextlib import closing
from pathlib import Path

import pytest
from mlflow import MlflowClient

from growbench.benchmarks import leases
from growbench.benchmarks.executor import run_suite
from growbench.benchmarks.store import StoreError, StoreRepairedWarning, open_store
from growbench.benchmarks.suite import load_suite, parse_suite
from growbench.benchmarks.summary import format_summary, summarise
from growbench.benchmarks.tracking import SuiteTracker, experiment_name
from tests.benchmarks.conftest import TINY_SUITE, user_environment

SUITE = """
name = "crash"
seeds = 4
epochs = 12
methods = ["none", "random-split", "s2d", "random-add"]

[training]
lr = 0.1
batch_size = 32

[growth]
every = 2
stats_samples = 128

[[tasks]]
dataset = "spirals"
dataset_options = { n_train = 5000, n_test = 300 }
model = "mlp"
model_options = { widths = [8] }
"""
CELLS = 16


def runner(suite: Path, uri: str, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "growbench.cli", "run", "--suite", str(suite)]
    command += ["--tracking-uri", uri, "--device", "cpu", "--checkpoint-seconds", "0", *extra]
    env = user_environment()
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )


def cell_runs(uri: str, suite: str = "crash") -> list:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(experiment_name(suite))
    return list(client.search_runs([experiment.experiment_id], "tags.`growbench.role` = 'cell'"))


def statuses(uri: str) -> Counter:
    return Counter(run.info.status for run in cell_runs(uri))


def finished_per_cell(uri: str) -> Counter:
    return Counter(
        run.data.tags[leases.HASH] for run in cell_runs(uri) if run.info.status == "FINISHED"
    )


def final_metrics(uri: str) -> dict[str, dict[str, float]]:
    return {
        run.data.tags[leases.HASH]: {
            key: value for key, value in run.data.metrics.items() if not key.endswith("seconds")
        }
        for run in cell_runs(uri)
        if run.info.status == "FINISHED"
    }


@pytest.fixture
def suite_file(tmp_path: Path) -> Path:
    path = tmp_path / "crash.toml"
    path.write_text(SUITE)
    return path


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> tuple[str, float]:
    """The crash suite run once, uninterrupted, in this process: its store and its seconds."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('reference')}/mlflow.db"
    started = time.perf_counter()
    run_suite(parse_suite(SUITE, "crash"), uri, "cpu")
    return uri, time.perf_counter() - started


@pytest.fixture(scope="module")
def reference(reference_run) -> str:
    return reference_run[0]


def kill_moments(suite: Path, uri: str, training_seconds: float) -> list[float]:
    """Ten seeded moments to kill a runner at, scaled to this machine: five while it starts
    (imports, store, plan: timed by a dry run on an existing store, as every runner but the
    first meets it; creating a fresh store takes seconds more, and counting those would let the
    "starting" kills train) and five while it trains, each of those at most a tenth of the whole
    training in, so that the ten together can never finish the suite."""
    assert runner(suite, uri, "--dry-run").wait() == 0  # creates the store
    started = time.perf_counter()
    assert runner(suite, uri, "--dry-run").wait() == 0
    startup = time.perf_counter() - started
    moments = random.Random(20261202)
    starting = [moments.uniform(0.5, startup) for _ in range(5)]
    training = [startup + moments.uniform(0.0, training_seconds / 10) for _ in range(5)]
    return [moment for pair in zip(starting, training, strict=True) for moment in pair]


def checkpointed_runs(uri: str) -> set[str]:
    """The runs that hold a checkpoint tag, read straight from the sqlite file (cheap enough to
    poll every few milliseconds while a runner writes)."""
    with closing(sqlite3.connect(uri.removeprefix("sqlite:///"), timeout=30)) as db:
        rows = db.execute("SELECT run_uuid FROM tags WHERE key = ?", (leases.CHECKPOINT,))
        return {run for (run,) in rows}


def kill_after_a_new_checkpoint(suite: Path, uri: str) -> None:
    """A runner killed as soon as it has saved a checkpoint of a run that held none before, so
    that the next runner must go on from it (a cell of the crash suite trains ten more epochs
    after its first checkpoint, long past the few milliseconds between two polls)."""
    before = checkpointed_runs(uri)
    process = runner(suite, uri)
    deadline = time.monotonic() + 120
    while not checkpointed_runs(uri) - before:
        assert process.poll() is None, "the runner ended without saving a checkpoint"
        assert time.monotonic() < deadline, "no checkpoint within two minutes"
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.communicate()


@pytest.mark.slow
def test_runners_killed_at_random_moments_lose_nothing(suite_file, tmp_path, reference_run) -> None:
    reference, training_seconds = reference_run
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    kills = 0
    for moment in kill_moments(suite_file, f"sqlite:///{tmp_path}/dry.db", training_seconds):
        process = runner(suite_file, uri)
        time.sleep(moment)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.communicate()
    assert kills == 10  # every moment fell inside a run (the suite was never done), none after
    kill_after_a_new_checkpoint(suite_file, uri)  # random moments need not fall after one
    final = runner(suite_file, uri)
    output, _ = final.communicate()
    assert final.returncode == 0, output
    assert statuses(uri)["RUNNING"] == 0
    assert list(finished_per_cell(uri).values()) == [1] * CELLS
    assert final_metrics(uri) == final_metrics(reference)
    cells = load_suite(suite_file).cells()
    assert format_summary(summarise(uri, "crash", cells)) == format_summary(
        summarise(reference, "crash", cells)
    )
    resumed = [run for run in cell_runs(uri) if "growbench.resumed_from" in run.data.tags]
    assert resumed, "no cell went on from a checkpoint"


@pytest.mark.slow
@pytest.mark.parametrize("store", ["fresh", "existing"])
def test_two_runners_side_by_side_train_each_cell_once(
    suite_file, tmp_path, reference, store
) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    if store == "existing":
        first = runner(suite_file, uri, "--methods", "none", "--seeds", "1")
        assert first.wait() == 0
    processes = [runner(suite_file, uri), runner(suite_file, uri)]
    outputs = [process.communicate()[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    assert statuses(uri) == Counter({"FINISHED": CELLS})
    assert list(finished_per_cell(uri).values()) == [1] * CELLS
    assert final_metrics(uri) == final_metrics(reference)
    trained = sum(int(output.split(" cells trained")[0].rsplit(" ", 1)[1]) for output in outputs)
    assert trained == CELLS - (store == "existing")  # the first runner did one


# -------------------------------------------------------------------- the claim protocol
@pytest.fixture
def opened(store) -> SuiteTracker:
    tracker = SuiteTracker(store, parse_suite(TINY_SUITE, "tiny"), "cpu")
    tracker.open()
    return tracker


def test_interleaved_claimants_never_both_win(opened, monkeypatch) -> None:
    """B creates its run between A's two reads: A sees B and withdraws (as B, seeing A, would);
    once B is gone A wins, and a later claimant finds the cell held, then done."""
    client, experiment = opened.client, opened.experiment_id
    config_hash = opened.suite.cells()[0].config_hash()
    live = {leases.OWNER: leases.this_owner(), leases.HEARTBEAT: str(time.time())}
    created, rival = [], []

    def create(tags):
        if not rival:  # B's run lands at the same moment as A's
            rival.append(
                client.create_run(
                    experiment, tags={leases.ROLE: "cell", leases.HASH: config_hash, **live}
                ).info.run_id
            )
        run = client.create_run(
            experiment, tags={leases.ROLE: "cell", leases.HASH: config_hash, **tags}
        )
        created.append(run.info.run_id)
        return run.info.run_id

    monkeypatch.setattr(leases, "CLAIM_ATTEMPTS", 1)
    with pytest.raises(RuntimeError, match="could not claim"):
        leases.claim_cell(client, experiment, config_hash, create)
    assert client.get_run(created[-1]).info.lifecycle_stage == "deleted"  # A withdrew
    client.delete_run(rival[0])  # and so does B
    won = leases.claim_cell(client, experiment, config_hash, create)
    assert won.status == "claimed"
    again = leases.claim_cell(client, experiment, config_hash, create)
    assert (again.status, again.other) == ("held", won.run_id)
    client.set_terminated(won.run_id, "FINISHED")
    assert leases.claim_cell(client, experiment, config_hash, create).status == "done"


def test_a_dead_owner_is_reclaimed_and_its_run_closed(opened) -> None:
    client, experiment = opened.client, opened.experiment_id
    config_hash = opened.suite.cells()[0].config_hash()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    owner = f"{leases.socket.gethostname()}:{dead.pid}:0"
    tags = {leases.ROLE: "cell", leases.HASH: config_hash, leases.OWNER: owner}
    stale = client.create_run(experiment, tags={**tags, leases.HEARTBEAT: str(time.time())})

    def create(extra):
        return client.create_run(experiment, tags={**tags, **extra}).info.run_id

    claim = leases.claim_cell(client, experiment, config_hash, create)
    assert claim.status == "claimed"
    closed = client.get_run(stale.info.run_id)
    assert closed.info.status == "KILLED"
    assert "reclaimed by" in closed.data.tags["growbench.closed"]


def test_leases_of_other_hosts_expire_with_their_heartbeat(opened) -> None:
    run = opened.client.create_run(
        opened.experiment_id,
        tags={leases.OWNER: "elsewhere:12:34", leases.HEARTBEAT: f"{time.time() - 100:.3f}"},
    )
    run = opened.client.get_run(run.info.run_id)
    assert leases.owner_alive("elsewhere:12:34") is None
    assert leases.is_live(run, lease=300.0)
    assert not leases.is_live(run, lease=60.0)
    assert leases.owner_alive(leases.this_owner()) is True


def test_the_heartbeat_thread_refreshes_the_tag(opened) -> None:
    run = opened.client.create_run(opened.experiment_id, tags={leases.HEARTBEAT: "0"})
    beat = leases.Heartbeat(opened.client, run.info.run_id, lease=0.2)
    time.sleep(0.4)
    beat.stop()
    seen = float(opened.client.get_run(run.info.run_id).data.tags[leases.HEARTBEAT])
    assert time.time() - seen < 5


# ------------------------------------------------------------------------ damaged stores
def test_a_half_created_store_without_runs_is_moved_aside_and_made_again(tmp_path) -> None:
    database = tmp_path / "mlflow.db"
    with sqlite3.connect(database) as db:  # what a creation killed in its first step leaves
        db.execute("create table experiments (experiment_id integer primary key, name text)")
        db.execute("create table _alembic_tmp_metrics (key text)")
    uri = f"sqlite:///{database}"
    with pytest.raises(StoreError, match="holds no runs: `growbench run` will move it aside"):
        open_store(uri, create=False)
    with pytest.warns(StoreRepairedWarning, match="moved it to"):
        assert open_store(uri, create=True)
    assert len(list(tmp_path.glob("mlflow.db.damaged-*"))) == 1
    assert MlflowClient(uri).search_experiments()  # the fresh store opens


def test_a_damaged_store_with_runs_is_refused_and_left_alone(tmp_path, empty_store_file) -> None:
    database = tmp_path / "mlflow.db"
    database.write_bytes(empty_store_file.read_bytes())
    with sqlite3.connect(database) as db:
        db.execute(
            "insert into runs (run_uuid, experiment_id, lifecycle_stage) values ('r', 0, 'active')"
        )
        db.execute("update alembic_version set version_num = 'not-a-revision'")
    before = database.read_bytes()
    with pytest.raises(StoreError, match="it was left as it is: back it up"):
        open_store(f"sqlite:///{database}", create=True)
    assert database.read_bytes() == before
