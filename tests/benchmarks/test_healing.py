"""Crash paths that heal: every way a run can be cut short or meet a damaged store, plugin or
checkpoint ends in one line (a warning the command survives, or one error) and the next run
finishes the suite with nothing lost.

Commands run as a user runs them, the installed ``growbench`` in a subprocess with warnings shown
(``PYTHONWARNINGS`` removed): warnings are where these paths used to crash.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from sqlalchemy import event
from sqlalchemy.engine import Engine

from growbench.benchmarks import checkpoint, executor, interrupts, leases
from growbench.benchmarks.executor import claim_and_train, load_datasets, run_suite
from growbench.benchmarks.store import StoreError, StoreUnreachableError, check_server
from growbench.benchmarks.suite import parse_suite
from growbench.benchmarks.tracking import (
    CellTracker,
    CheckpointPolicy,
    GuardedClient,
    SuiteTracker,
    experiment_name,
)
from growbench.cli import _once_per_command, one_line_warning
from tests.benchmarks.conftest import TINY_SUITE, mlflow_server, user_environment
from tests.conftest import install_distribution

# Five cells of one task, each long enough (6 epochs) to be cut in its middle.
SUITE = TINY_SUITE.replace('methods = ["none", "random-add"]', 'methods = ["random-add"]')
SUITE = SUITE.replace("seeds = 1", "seeds = 5").replace("epochs = 3", "epochs = 6")


def growbench(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """The installed command, run to its end."""
    return subprocess.run(
        [sys.executable, "-m", "growbench.cli", *args],
        cwd=cwd,
        env=user_environment(**(env or {})),
        capture_output=True,
        text=True,
        timeout=600,
    )


def start(*args: str, cwd: Path, env: dict | None = None) -> subprocess.Popen:
    """The installed command, started."""
    command = [sys.executable, "-m", "growbench.cli", *args]
    return subprocess.Popen(
        command,
        cwd=cwd,
        env=user_environment(**(env or {})),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def lines_with(text: str, words: str) -> list[str]:
    return [line for line in text.splitlines() if words in line]


def runs(uri: str, suite: str = "tiny") -> list:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(experiment_name(suite))
    return list(client.search_runs([experiment.experiment_id], "")) if experiment else []


def cell_statuses(uri: str, suite: str = "tiny") -> Counter:
    return Counter(
        run.info.status for run in runs(uri, suite) if run.data.tags.get(leases.ROLE) == "cell"
    )


# --------------------------------------------------------------------------- warnings
def test_the_warning_formatter_returns_one_line_once_per_command() -> None:
    text = one_line_warning(UserWarning("two\n  lines"), UserWarning, "x.py", 3)
    assert text == "growbench: warning: two lines\n"
    format_once = _once_per_command(set())
    assert format_once(UserWarning("two\n  lines"), UserWarning, "x.py", 3) == text
    assert format_once(UserWarning("two lines"), UserWarning, "y.py", 9) == ""  # shown already


def test_a_store_whose_creation_was_cut_short_is_repaired_with_one_warning(
    tmp_path, write_suite
) -> None:
    database = tmp_path / "mlflow.db"
    with sqlite3.connect(database) as db:  # what a creation killed in its first step leaves
        db.execute("create table experiments (experiment_id integer primary key, name text)")
        db.execute("create table _alembic_tmp_metrics (key text)")
    done = growbench("run", "--suite", str(write_suite()), "--tracking-uri",
                     f"sqlite:///{database}", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert len(lines_with(done.stderr, "growbench: warning: tracking store")) == 1
    assert cell_statuses(f"sqlite:///{database}") == Counter({"FINISHED": 2})


BROKEN = "raise ImportError('this plugin is broken')\n"


PLUGIN_KINDS = [
    ("growbench.methods", "methods", "random-add"),
    ("growbench.datasets", "datasets", "spirals"),
    ("growbench.models", "models", "mlp"),
]


def install_broken(site: Path, group: str) -> None:
    name = f"broken-{group.rsplit('.', 1)[1]}"
    install_distribution(site, name, "0.1", {"broken": f"{name.replace('-', '_')}:Thing"},
                         module=(name.replace("-", "_"), BROKEN), group=group)  # fmt: skip


@pytest.mark.parametrize(("group", "command", "listed"), PLUGIN_KINDS)
def test_a_broken_plugin_is_one_warning_and_its_listing_shows_the_rest(
    tmp_path, group, command, listed
) -> None:
    install_broken(tmp_path / "site", group)
    listing = growbench(command, cwd=tmp_path, env={"PYTHONPATH": str(tmp_path / "site")})
    assert listing.returncode == 0, listing.stderr
    assert listed in listing.stdout
    warned = lines_with(listing.stderr, "growbench: warning:")
    assert len(warned) == 1, listing.stderr
    assert "broken-" in warned[0]


def test_a_run_goes_on_past_a_broken_plugin_of_each_kind(tmp_path, write_suite) -> None:
    for group, _, _ in PLUGIN_KINDS:
        install_broken(tmp_path / "site", group)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    ran = growbench("run", "--suite", str(write_suite()), "--tracking-uri", uri, cwd=tmp_path,
                    env={"PYTHONPATH": str(tmp_path / "site")})  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert "Traceback" not in ran.stderr
    assert len(lines_with(ran.stderr, "growbench: warning:")) == len(PLUGIN_KINDS), ran.stderr
    assert cell_statuses(uri) == Counter({"FINISHED": 2})


LOCKED = """
import threading
from growbench.methods.random_add import RandomAdd

class Locked(RandomAdd):
    name = "scratch-locked"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.lock = threading.Lock()  # no checkpoint can hold it
"""


def test_a_grower_that_cannot_be_checkpointed_runs_without_checkpoints(
    tmp_path, write_suite
) -> None:
    site = tmp_path / "site"
    install_distribution(site, "locked-plugin", "0.1", {"scratch-locked": "locked_mod:Locked"},
                         module=("locked_mod", LOCKED))  # fmt: skip
    suite = write_suite(TINY_SUITE.replace('"random-add"]', '"scratch-locked"]'))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    ran = growbench("run", "--suite", str(suite), "--tracking-uri", uri,
                    "--checkpoint-seconds", "0", cwd=tmp_path,
                    env={"PYTHONPATH": str(site)})  # fmt: skip
    assert ran.returncode == 0, ran.stdout + ran.stderr
    warned = lines_with(ran.stderr, "growbench: warning:")
    assert len(warned) == 1, ran.stderr
    assert "no checkpoint saved" in warned[0]
    assert cell_statuses(uri) == Counter({"FINISHED": 2})


# -------------------------------------------------------------------- damaged checkpoints
def killed_cells(uri: str, suite_text: str) -> SuiteTracker:
    """Every cell of the suite trained to epoch 2 with a checkpoint each epoch, then
    interrupted (its run KILLED, its checkpoint kept)."""
    suite = parse_suite(suite_text, "tiny")
    tracker = SuiteTracker(uri, suite, "cpu", CheckpointPolicy(every=1, min_seconds=0))
    tracker.open()
    datasets = load_datasets(suite)
    real = CellTracker.epoch_done

    def stop_at_two(self, epoch, metrics):
        real(self, epoch, metrics)
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(CellTracker, "epoch_done", stop_at_two)
        for cell in suite.cells():
            with pytest.raises(KeyboardInterrupt):
                claim_and_train(tracker, cell, datasets[cell.task.name], "cpu")
    tracker.close("KILLED")
    return tracker


def artifact_file(client: MlflowClient, run, record: dict) -> Path:
    return (
        Path(client.get_run(run.info.run_id).info.artifact_uri.removeprefix("file://"))
        / (record["file"])
    )


def damage(client: MlflowClient, run, how: str) -> None:
    run_id = run.info.run_id
    record = json.loads(run.data.tags[leases.CHECKPOINT])
    path = artifact_file(client, run, record)
    if how == "tag-not-json":
        client.set_tag(run_id, leases.CHECKPOINT, "{not json")
    elif how == "tag-without-file":
        client.set_tag(run_id, leases.CHECKPOINT, json.dumps({"epoch": record["epoch"]}))
    elif how == "file-tampered":
        path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    elif how == "file-deleted":
        path.unlink()
    elif how == "does-not-fit":  # intact and signed, but another configuration's
        state = checkpoint.from_bytes(path.read_bytes())
        data = checkpoint.to_bytes({**state, "config_hash": "another"})
        path.write_bytes(data)
        client.set_tag(
            run_id, leases.CHECKPOINT, json.dumps({**record, "sha256": checkpoint.digest(data)})
        )


DAMAGES = ["tag-not-json", "tag-without-file", "file-tampered", "file-deleted", "does-not-fit"]


def test_a_damaged_checkpoint_is_one_warning_and_its_cell_starts_again(
    tmp_path, write_suite
) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = killed_cells(uri, SUITE)
    killed = [run for run in runs(uri) if run.info.status == "KILLED" and "seed" in str(run)]
    cells = sorted(
        (run for run in killed if run.data.tags.get(leases.ROLE) == "cell"),
        key=lambda run: int(run.data.tags["growbench.seed"]),
    )
    assert len(cells) == len(DAMAGES)
    for run, how in zip(cells, DAMAGES, strict=True):
        damage(tracker.client.client, run, how)
    ran = growbench("run", "--suite", str(write_suite(SUITE)), "--tracking-uri", uri,
                    cwd=tmp_path)  # fmt: skip
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "Traceback" not in ran.stderr
    warned = lines_with(ran.stderr, "growbench: warning:")
    assert len(warned) == len(DAMAGES), ran.stderr
    assert all("starts from epoch 0" in line for line in warned)
    assert "resumed" not in ran.stdout
    assert cell_statuses(uri)["FINISHED"] == len(DAMAGES)
    client = MlflowClient(uri)
    for run in cells:  # never offered again
        tags = client.get_run(run.info.run_id).data.tags
        assert leases.CHECKPOINT not in tags
        assert "growbench.checkpoint_refused" in tags


# ------------------------------------------------------------- a kill inside a commit
KILL_INSIDE_A_WRITE = """
import os, signal, sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("pragma cache_size = 2")  # dirty pages go to the file before the commit
db.execute("begin")
for step in range(3000):
    db.execute(
        "insert into metrics (key, value, timestamp, run_uuid, step, is_nan) "
        "values ('junk', 0, 0, 'none', ?, 0)",
        (step,),
    )
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_kill_inside_a_write_leaves_a_store_the_next_command_heals(tmp_path, write_suite) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    suite = write_suite()
    run_suite(parse_suite(TINY_SUITE, "tiny").select(["none"]), uri, "cpu")
    database = tmp_path / "mlflow.db"
    killed = subprocess.run([sys.executable, "-c", KILL_INSIDE_A_WRITE, str(database)])
    assert killed.returncode == -signal.SIGKILL
    assert (tmp_path / "mlflow.db-journal").exists()  # a hot journal, as SQLite leaves one
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        sqlite3.connect(f"file:{database}?mode=ro", uri=True).execute("select * from runs")
    for command in (["run", "--dry-run"], ["report"], ["run"]):
        done = growbench(*command, "--suite", str(suite), "--tracking-uri", uri, cwd=tmp_path)
        assert done.returncode == 0, (command, done.stderr)
        assert "error" not in done.stderr
    assert cell_statuses(uri) == Counter({"FINISHED": 2})
    with sqlite3.connect(database) as db:
        assert db.execute("select count(*) from metrics where key = 'junk'").fetchone() == (0,)


def test_a_store_with_damaged_pages_is_refused_untouched(tmp_path, empty_store_file) -> None:
    database = tmp_path / "mlflow.db"
    database.write_bytes(empty_store_file.read_bytes())
    with sqlite3.connect(database) as db:
        db.execute(
            "insert into runs (run_uuid, experiment_id, lifecycle_stage) values ('r', 0, 'active')"
        )
    data = bytearray(database.read_bytes())
    data[36:40] = (500).to_bytes(4, "big")  # the header's count of free pages, wrong: every
    # query still answers, only an integrity check sees it
    database.write_bytes(bytes(data))
    done = growbench("run", "--suite", "default", "--dry-run", "--tracking-uri",
                     f"sqlite:///{database}", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 2
    assert "integrity check" in done.stderr
    assert ".recover" in done.stderr
    assert database.read_bytes() == bytes(data)


def test_a_dry_run_or_a_report_on_a_missing_store_makes_nothing(tmp_path) -> None:
    uri = f"sqlite:///{tmp_path}/absent.db"
    done = growbench("run", "--suite", "default", "--dry-run", "--tracking-uri", uri, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    refused = growbench("report", "--suite", "default", "--tracking-uri", uri, "--out",
                        str(tmp_path / "report"), cwd=tmp_path)  # fmt: skip
    assert refused.returncode == 2
    assert sorted(path.name for path in tmp_path.iterdir()) == []


def test_stores_that_keep_nothing_or_are_deleted_are_refused(tmp_path, store) -> None:
    for uri in ("sqlite:///:memory:", "sqlite:///:memory:?cache=shared"):
        with pytest.raises(StoreError, match="in-memory"):
            SuiteTracker(uri, parse_suite(TINY_SUITE, "tiny"), "cpu").open()
    tracker = SuiteTracker(store, parse_suite(TINY_SUITE, "tiny"), "cpu")
    tracker.open()
    MlflowClient(store).delete_experiment(tracker.experiment_id)
    with pytest.raises(StoreError, match="is deleted"):
        SuiteTracker(store, parse_suite(TINY_SUITE, "tiny"), "cpu").open()


# ------------------------------------------------------------------- signals and claims
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("moment", [0, 1, 2])
def test_a_signal_at_any_point_of_a_claim_leaves_no_run_running(
    store, monkeypatch, signum, moment
) -> None:
    """``moment`` 0: as the claim reads the cell's runs; 1: right after it created its run;
    2: while it logs the run's params."""
    suite = parse_suite(TINY_SUITE, "tiny")
    tracker = SuiteTracker(store, suite, "cpu")
    tracker.open()
    calls = []

    def signal_on(call):
        def wrapped(*args, **kwargs):
            result = call(*args, **kwargs)
            calls.append(1)
            if len(calls) == moment + 1:
                signal.raise_signal(signum)
            return result

        return wrapped

    monkeypatch.setattr(leases, "runs_of", signal_on(leases.runs_of))
    if moment == 2:
        monkeypatch.setattr(CellTracker, "log_params", signal_on(CellTracker.log_params))
        calls.extend([1, 1])  # the two reads of the claim come first
    cell = suite.cells()[0]
    with interrupts.terminate_as_interrupt(), pytest.raises(KeyboardInterrupt):
        claim_and_train(tracker, cell, load_datasets(suite)[cell.task.name], "cpu")
    assert cell_statuses(store)["RUNNING"] == 0
    assert cell_statuses(store)["FINISHED"] == 0


def test_held_signals_come_after_the_block() -> None:
    order = []

    def block() -> None:
        with interrupts.held_signals():
            signal.raise_signal(signal.SIGINT)
            order.append("block ended")

    with pytest.raises(KeyboardInterrupt):
        block()
    assert order == ["block ended"]


@pytest.mark.parametrize("statement", ["INSERT INTO metrics", "UPDATE latest_metrics"])
def test_a_sigterm_inside_a_store_write_comes_after_it(store, statement) -> None:
    """A real SIGTERM delivered between two statements of one metrics batch (as one landed in
    a CI run, whose half-done transaction then kept sqlite locked): the batch is stored whole
    and ``Terminated`` is raised once the call returns; the run then closes KILLED."""
    client = GuardedClient(store)
    run_id = client.create_run(client.create_experiment("signals")).info.run_id
    tracker = CellTracker(client, run_id)
    tracker.epoch_done(0, {"loss": 1.0, "accuracy": 0.1})
    tracker.flush_metrics()  # the next batch updates latest_metrics
    fired = []

    def signal_after(conn, cursor, sql, *rest) -> None:
        if sql.startswith(statement) and not fired:
            fired.append(sql)
            signal.raise_signal(signal.SIGTERM)

    tracker.epoch_done(1, {"loss": 0.5, "accuracy": 0.2})
    event.listen(Engine, "after_cursor_execute", signal_after)
    try:
        with interrupts.terminate_as_interrupt(), pytest.raises(interrupts.Terminated):
            tracker.flush_metrics()
    finally:
        event.remove(Engine, "after_cursor_execute", signal_after)
    assert fired
    stored = MlflowClient(store).get_metric_history(run_id, "accuracy")
    assert [(metric.step, metric.value) for metric in stored] == [(0, 0.1), (1, 0.2)]
    tracker.kill()
    assert MlflowClient(store).get_run(run_id).info.status == "KILLED"


def test_a_servers_calls_are_not_held() -> None:
    """Ctrl-C must reach a call waiting on a (maybe hung) server."""
    reached = []

    class Slow:
        def set_tag(self, *args):
            signal.raise_signal(signal.SIGINT)
            reached.append("after the signal")

    client = GuardedClient("http://127.0.0.1:9")
    client.client = Slow()
    with pytest.raises(KeyboardInterrupt):
        client.set_tag("run", "key", "value")
    assert reached == []


SLOW_SUITE = SUITE.replace("seeds = 5", "seeds = 2").replace("epochs = 6", "epochs = 400")


def test_sigterm_mid_cell_closes_it_killed_with_its_checkpoint(tmp_path, write_suite) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    suite = write_suite(SLOW_SUITE)
    process = start("run", "--suite", str(suite), "--tracking-uri", uri,
                    "--checkpoint-seconds", "0", cwd=tmp_path)  # fmt: skip
    deadline = time.monotonic() + 300
    while not (tmp_path / "mlartifacts").exists() or not list(
        (tmp_path / "mlartifacts").rglob("state-*.pt")
    ):  # a checkpoint saved: the first cell is in its training
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _out, err = process.communicate(timeout=120)
    assert process.returncode == 143, err
    assert "Traceback" not in err
    assert lines_with(err, "growbench:") == [lines_with(err, "stopped by SIGTERM")[0]]
    every = runs(uri)
    assert Counter(run.info.status for run in every) == Counter({"KILLED": 2})  # cell and parent
    cell = next(run for run in every if run.data.tags[leases.ROLE] == "cell")
    assert leases.CHECKPOINT in cell.data.tags


# ----------------------------------------------------------------------- servers
def test_the_guarded_client_calls_a_dead_server_once() -> None:
    class Dead:
        calls = 0

        def set_tag(self, *args):
            Dead.calls += 1
            raise MlflowException("API request to http://x/api failed with exception refused")

    client = GuardedClient("http://127.0.0.1:9")
    client.client = Dead()
    for _ in range(3):
        with pytest.raises(StoreUnreachableError, match="stopped answering"):
            client.set_tag("run", "key", "value")
    assert Dead.calls == 1


def test_a_server_that_is_not_mlflow_is_named_as_such(tmp_path) -> None:
    handler = http.server.SimpleHTTPRequestHandler
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with pytest.raises(StoreError, match="not an MLflow tracking server"):
            check_server(uri)
        done = growbench("run", "--suite", "default", "--dry-run", "--tracking-uri", uri,
                         cwd=tmp_path)  # fmt: skip
    finally:
        server.shutdown()
    assert done.returncode == 2
    assert lines_with(done.stderr, "growbench: error:") == done.stderr.splitlines()


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["killed", "hung"])
def test_a_server_that_dies_or_hangs_mid_run_ends_in_one_line_and_a_rerun_finishes(
    tmp_path, write_suite, fault
) -> None:
    suite = write_suite(  # three cells of seconds each
        SUITE.replace("epochs = 6", "epochs = 40").replace("seeds = 5", "seeds = 3")
    )
    timeout = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "2"}  # a user's setting: a hung call gives up soon
    with mlflow_server(tmp_path / "server") as (uri, process):
        runner = start("run", "--suite", str(suite), "--tracking-uri", uri, cwd=tmp_path,
                       env=timeout)  # fmt: skip
        first = runner.stderr.readline()  # the first cell finished
        assert "[1/3]" in first, runner.communicate()
        if fault == "killed":
            os.killpg(process.pid, signal.SIGKILL)
        else:  # frozen: connections open, answers never come
            os.killpg(process.pid, signal.SIGSTOP)
        started = time.monotonic()
        _out, err = runner.communicate(timeout=300)
        if fault == "hung":
            os.killpg(process.pid, signal.SIGCONT)
        assert runner.returncode == 1, err
        assert "Traceback" not in err
        (line,) = lines_with(err, "growbench:")
        assert "stopped answering" in line
        assert uri in line
        assert "cell(s) of this stage" in line
        assert time.monotonic() - started < 120  # one call's retries, not one per error path
    with mlflow_server(tmp_path / "server") as (uri, _):
        rerun = growbench("run", "--suite", str(suite), "--tracking-uri", uri, cwd=tmp_path)
        assert rerun.returncode == 0, rerun.stderr
        assert cell_statuses(uri)["RUNNING"] == 0
        finished = Counter(
            run.data.tags[leases.HASH]
            for run in runs(uri)
            if run.info.status == "FINISHED" and leases.HASH in run.data.tags
        )
        assert list(finished.values()) == [1] * 3


def test_executor_names_the_cells_left_when_the_store_goes(store, monkeypatch) -> None:
    suite = parse_suite(SUITE, "tiny")
    lost = StoreUnreachableError("tracking server http://x stopped answering (gone)")

    def gone(*args, **kwargs):
        raise lost

    monkeypatch.setattr(executor, "claim_and_train", gone)
    with pytest.raises(StoreUnreachableError, match=r"5 cell\(s\) of this stage"):
        executor.run_suite(suite, store, "cpu")
