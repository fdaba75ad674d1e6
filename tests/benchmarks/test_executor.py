"""A suite end to end against a real sqlite MLflow store: the run tree, what each run holds,
skipping finished cells, resuming after Ctrl-C, and failed cells that do not stop the suite."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

import growbench
from growbench.benchmarks import executor, runner
from growbench.benchmarks.executor import run_suite
from growbench.benchmarks.suite import SuiteError, flatten, load_suite, parse_suite
from growbench.benchmarks.summary import format_summary, summarise
from growbench.benchmarks.tracking import experiment_name
from growbench.methods import Grower, GrowthContext, GrowthEvent
from growbench.methods import registry as method_registry
from growbench.nn import GrowableNet
from tests.benchmarks.conftest import TINY_SUITE


def cell_runs(uri: str, suite: str = "tiny") -> list:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(experiment_name(suite))
    runs = client.search_runs([experiment.experiment_id], "tags.`growbench.role` = 'cell'")
    return sorted(runs, key=lambda run: run.info.start_time)


def parent_runs(uri: str, suite: str = "tiny") -> list:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(experiment_name(suite))
    return client.search_runs([experiment.experiment_id], "tags.`growbench.role` = 'suite'")


def artifact(uri: str, run_id: str, name: str) -> str:
    path = MlflowClient(uri).download_artifacts(run_id, name)
    return Path(path).read_text()


@pytest.fixture(scope="module")
def finished_store(tmp_path_factory: pytest.TempPathFactory, empty_store_file: Path):
    """The tiny suite (none, random-add, static) run once into a store of its own."""
    folder = tmp_path_factory.mktemp("finished")
    (folder / "mlflow.db").write_bytes(empty_store_file.read_bytes())
    uri = f"sqlite:///{folder}/mlflow.db"
    suite = parse_suite(TINY_SUITE.replace('"random-add"]', '"random-add", "static"]'), "tiny")
    outcome = run_suite(suite, uri, "cpu")
    return uri, suite, outcome


def test_cells_are_nested_runs_under_one_parent(finished_store) -> None:
    uri, suite, outcome = finished_store
    assert outcome.finished == [cell.label for cell in suite.cells()]
    assert outcome.failed == outcome.skipped == []
    parents = parent_runs(uri)
    assert len(parents) == 1
    assert parents[0].info.status == "FINISHED"
    runs = cell_runs(uri)
    assert [run.info.run_name for run in runs] == outcome.finished
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id


def test_cell_runs_hold_tags_params_metrics_and_artifacts(finished_store) -> None:
    uri, suite, _ = finished_store
    client = MlflowClient(uri)
    limits = set()
    for cell, run in zip(suite.cells(), cell_runs(uri), strict=True):
        tags, params = run.data.tags, run.data.params
        assert tags["growbench.method"] == cell.method
        assert tags["growbench.dataset"] == "spirals"
        assert tags["growbench.model"] == "mlp"
        assert tags["growbench.task"] == "spirals-mlp"
        assert tags["growbench.seed"] == "0"
        assert tags["growbench.config_hash"] == cell.config_hash()
        assert tags["growbench.device"] == "cpu"
        assert tags["growbench.git_commit"]
        assert tags["growbench.version.torch"]
        assert tags["growbench.version.growbench"]
        built_in = f"growbench {growbench.__version__}"
        for part in ("method", "dataset", "model"):
            assert tags[f"growbench.provider.{part}"] == built_in
        assert tags["growbench.git_dirty"] in ("true", "false", "unknown")
        for key, value in flatten(cell.resolved()).items():
            assert params[key] == value
        limits.add(float(params["budget.limit"]))
        if cell.method == "none":
            assert float(params["budget.limit"]) == 2 * json.loads(params["start.params"])
        steps = {
            key: [m.step for m in client.get_metric_history(run.info.run_id, key)]
            for key in ("train_loss", "test_loss", "test_accuracy", "params", "flops", "lr")
        }
        assert steps["train_loss"] == [1, 2, 3]
        assert steps["test_loss"] == steps["test_accuracy"] == steps["params"] == [0, 1, 2, 3]
        for key in ("train_seconds", "growth_seconds"):
            assert key in run.data.metrics
        events = json.loads(artifact(uri, run.info.run_id, "growth_events.json"))
        assert [event["epoch"] for event in events] == [1, 2]
        assert all("realised_loss_change" in event for event in events)
        architecture = json.loads(artifact(uri, run.info.run_id, "architecture.json"))
        assert architecture["params"] == run.data.metrics["params"]
    assert len(limits) == 1  # every method is held to the limit set by the common start net


def test_growth_happened_within_the_budget(finished_store) -> None:
    uri, _, _ = finished_store
    client = MlflowClient(uri)
    by_method = {run.data.tags["growbench.method"]: run for run in cell_runs(uri)}
    for method, run in by_method.items():
        history = client.get_metric_history(run.info.run_id, "params")
        params = [m.value for m in sorted(history, key=lambda m: m.step)]
        limit = float(run.data.params["budget.limit"])
        assert max(params) <= limit
        if method == "random-add":
            assert params[-1] > params[0]
        else:
            assert params[-1] == params[0]
    static_start = by_method["static"].data.metrics["params"]
    assert static_start > by_method["none"].data.metrics["params"]


def test_rerun_trains_nothing(finished_store, monkeypatch) -> None:
    uri, suite, _ = finished_store

    def no_training(*args, **kwargs):
        raise AssertionError("a finished cell was trained again")

    monkeypatch.setattr(executor, "run_cell", no_training)
    before = len(cell_runs(uri))
    outcome = run_suite(suite, uri, "cpu")
    assert outcome.finished == []
    assert outcome.skipped == [cell.label for cell in suite.cells()]
    assert len(cell_runs(uri)) == before
    assert len(parent_runs(uri)) == 1  # the parent is reused: one tree


def test_summary_reads_the_store(finished_store) -> None:
    uri, suite, _ = finished_store
    frame = summarise(uri, "tiny", suite.cells())
    assert list(frame["method"]) == ["none", "random-add", "static"]
    assert set(frame["task"]) == {"spirals-mlp"}
    assert list(frame["finished"]) == [1, 1, 1]
    assert frame["mean"].between(0, 100).all()
    more_seeds = summarise(uri, "tiny", suite.select(seeds=3).cells())
    assert list(more_seeds["missing"]) == [2, 2, 2]
    text = format_summary(more_seeds)
    assert "spirals-mlp: accuracy % (params)" in text
    assert "[2 missing]" in text
    assert list(summarise(uri, "tiny")["finished"]) == [1, 1, 1]  # from the runs' own tags
    assert summarise(uri, "no-such-suite").empty


def test_ctrl_c_kills_the_running_cell_and_a_rerun_resumes(store, monkeypatch) -> None:
    suite = parse_suite(TINY_SUITE.replace("seeds = 1", "seeds = 2"), "tiny")
    labels = [cell.label for cell in suite.cells()]
    real_run_cell = executor.run_cell
    calls = []

    class Interrupt(runner.CellObserver):
        def __init__(self, inner: runner.CellObserver) -> None:
            self.inner = inner

        def started(self, info):
            self.inner.started(info)

        def epoch_done(self, epoch, metrics):
            self.inner.epoch_done(epoch, metrics)
            if epoch == 1:
                raise KeyboardInterrupt

    def second_cell_interrupted(cell, dataset, device, observer, resume=None):
        calls.append(cell.label)
        if len(calls) == 2:
            observer = Interrupt(observer)
        return real_run_cell(cell, dataset, device, observer, resume)

    monkeypatch.setattr(executor, "run_cell", second_cell_interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_suite(suite, store, "cpu")
    runs = cell_runs(store)
    assert [(r.info.run_name, r.info.status) for r in runs] == [
        (labels[0], "FINISHED"),
        (labels[1], "KILLED"),
    ]
    assert parent_runs(store)[0].info.status == "KILLED"

    monkeypatch.setattr(executor, "run_cell", real_run_cell)
    outcome = run_suite(suite, store, "cpu")
    assert outcome.skipped == labels[:1]
    assert outcome.finished == labels[1:]
    finished = [r.info.run_name for r in cell_runs(store) if r.info.status == "FINISHED"]
    assert sorted(finished) == sorted(labels)
    parents = parent_runs(store)
    assert len(parents) == 1
    assert parents[0].info.status == "FINISHED"


class Explodes(Grower):
    name = "explodes"
    description = "test only: raises when asked to grow"

    def grow_step(self, net: GrowableNet, ctx: GrowthContext, event: GrowthEvent) -> None:
        raise RuntimeError("boom from a test method")


def test_failed_cells_keep_a_traceback_and_the_suite_goes_on(store, monkeypatch) -> None:
    monkeypatch.setitem(method_registry.METHODS.builtins, "explodes", Explodes)
    text = TINY_SUITE.replace('["none", "random-add"]', '["explodes", "none"]') + (
        '\n[[tasks]]\nname = "diverges"\ndataset = "spirals"\nmodel = "mlp"\n'
        "model_options = { widths = [4] }\n"
        "dataset_options = { n_train = 200, n_test = 100 }\ntraining = { lr = 1e30 }\n"
    )
    suite = parse_suite(text, "tiny")
    outcome = run_suite(suite, store, "cpu")
    assert outcome.finished == ["spirals-mlp/none/seed0"]
    assert outcome.failed == [
        "spirals-mlp/explodes/seed0",
        "diverges/explodes/seed0",
        "diverges/none/seed0",
    ]
    runs = {run.info.run_name: run for run in cell_runs(store)}
    for label in outcome.failed:
        assert runs[label].info.status == "FAILED"
    boom = artifact(store, runs["spirals-mlp/explodes/seed0"].info.run_id, "traceback.txt")
    assert "RuntimeError: boom from a test method" in boom
    nan = artifact(store, runs["diverges/none/seed0"].info.run_id, "traceback.txt")
    assert "NonFiniteLossError" in nan
    frame = summarise(store, "tiny", suite.cells()).set_index(["method", "task"])
    assert frame.loc[("explodes", "spirals-mlp"), "failed"] == 1
    assert frame.loc[("none", "spirals-mlp"), "finished"] == 1
    assert "[1 failed]" in format_summary(frame.reset_index())


def test_bad_data_options_stop_before_the_store_is_touched(write_suite, tmp_path) -> None:
    path = write_suite(TINY_SUITE.replace("n_train = 200", "n_train = 1"))
    with pytest.raises(SuiteError, match=r"tasks\[0\]\.dataset_options: spirals"):
        run_suite(load_suite(path), f"sqlite:///{tmp_path}/mlflow.db", "cpu")
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.toml"]


class ConvOnly(Grower):
    name = "conv-only"
    description = "test only: declares that it grows conv sites only"
    supported_kinds = frozenset({"Conv2d+BN"})


def test_cells_a_method_cannot_grow_are_reported_not_run(store, monkeypatch) -> None:
    monkeypatch.setitem(method_registry.METHODS.builtins, "conv-only", ConvOnly)
    suite = parse_suite(TINY_SUITE.replace('"random-add"]', '"conv-only"]'), "tiny")
    outcome = run_suite(suite, store, "cpu")
    assert outcome.finished == ["spirals-mlp/none/seed0"]
    assert outcome.unsupported == [
        "spirals-mlp/conv-only/seed0: method 'conv-only' can grow none of the sites: block0: "
        "site kind 'Linear' is not supported (supported: Conv2d+BN)"
    ]
    assert [run.info.run_name for run in cell_runs(store)] == outcome.finished
