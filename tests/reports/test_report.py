"""``growbench report`` on a real sqlite MLflow store holding hand-made runs.

The runs are written by the harness's own trackers (the layout a report reads is the layout a
suite writes), with numbers chosen here, so every table entry can be checked against them: a
FAILED cell, a MISSING cell and a claim with too few seeds included. Regenerating gives
byte-identical files.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from growbench.benchmarks.runner import CellResult
from growbench.benchmarks.suite import Suite, load_suite, parse_suite
from growbench.benchmarks.tracking import SuiteTracker
from growbench.cli import main
from growbench.reports import build, figures
from growbench.reports.build import build_report, write_report
from growbench.reports.claims import collect_claims, compare_verdicts, evaluate_claims
from growbench.reports.tables import read_tables

SUITE = """
name = "hand-made"
description = "Hand-made runs for the report tests."
seeds = 3
epochs = 2
methods = ["none", "static", "s2d", "random-split"]

[[tasks]]
dataset = "digits"
model = "mlp"
model_options = { widths = [8] }

[[tasks]]
dataset = "teacher-student"
model = "mlp"
model_options = { widths = [5], activation = "relu" }
"""
FAILED = ("digits-mlp", "s2d", 2)  # its run fails in epoch 2
MISSING = ("teacher-student-mlp", "random-split", 1)  # never run
FLAGGED = ("teacher-student-mlp", "s2d", 0)  # its growth destabilised training
FLAGS = ["1 destabilised growth event"]


def final_accuracy(method: str, seed: int) -> float:
    base = {"none": 0.80, "static": 0.90, "s2d": 0.88, "random-split": 0.85}[method]
    return base + 0.01 * seed


def final_loss(method: str, seed: int) -> float:
    base = {"none": 0.70, "static": 0.30, "s2d": 0.40, "random-split": 0.50}[method]
    return base - 0.02 * seed


def metrics(cell, epoch: int) -> dict[str, float]:
    """What the runner would log after ``epoch`` (made-up, distinct per cell and epoch)."""
    classification = cell.task.dataset == "digits"
    grown = cell.method in ("s2d", "random-split", "static") and epoch > 0
    params = 600.0 + (300 if grown else 0) + cell.seed
    values = {
        "test_loss": final_loss(cell.method, cell.seed) + 0.1 * (2 - epoch),
        "params": params,
        "flops": 2 * params,
        "train_flops": 3 * 2 * params * 100 * epoch,
        "train_seconds": 1.0 * epoch,
        "growth_seconds": 0.25 * epoch if grown else 0.0,
    }
    if classification:
        values["test_accuracy"] = final_accuracy(cell.method, cell.seed) - 0.1 * (2 - epoch)
    if epoch:
        values["train_loss"] = 1.0 / epoch
    return values


def event(cell) -> dict:
    predicted = -0.05 if cell.method == "s2d" else None
    flagged = (cell.task.name, cell.method, cell.seed) == FLAGGED
    return {
        "health": {
            "probe_loss_before": 1.0,
            "probe_loss_after": 1.5 if flagged else 0.9,
            "next_train_loss": 40.0 if flagged else 0.5,
            "destabilised": flagged,
        },
        "round": 0,
        "epoch": 1,
        "units_added": {"block0": 2},
        "layers_inserted": ["block0+1"] if cell.method == "s2d" else [],
        "predicted_loss_change": predicted,
        "realised_loss_change": -0.04 - 0.001 * cell.seed,
        "wall_seconds": 0.25,
        "stop_reason": None,
    }


def fill_store(uri: str, suite: Suite) -> dict[tuple[str, str, int], str]:
    """Log every cell but MISSING, FAILED's as a failure; return run ids by cell."""
    tracker = SuiteTracker(uri, suite, "cpu")
    tracker.open()
    run_ids = {}
    for cell in suite.cells():
        key = (cell.task.name, cell.method, cell.seed)
        if key == MISSING:
            continue
        _, cell_tracker = tracker.claim(cell)
        run_ids[key] = cell_tracker.run_id
        cell_tracker.started({"budget.limit": 1200})
        history = []
        for epoch in range(3):
            if key == FAILED and epoch == 2:
                cell_tracker.fail(RuntimeError("made-up failure"))
                break
            history.append(metrics(cell, epoch))
            cell_tracker.epoch_done(epoch, history[-1])
            if epoch == 1:
                cell_tracker.grew(event(cell))
        else:
            width = 10 if cell.method != "none" else 8
            architecture = {"widths": {"block0": width + cell.seed}}
            flags = FLAGS if key == FLAGGED else []
            result = CellResult(cell, {}, history, [event(cell)], architecture, flags)
            cell_tracker.finish(result)
    tracker.close("FINISHED")
    return run_ids


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Suite, dict]:
    folder = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{folder}/mlflow.db"
    suite = parse_suite(SUITE, "hand-made")
    return uri, suite, fill_store(uri, suite)


@pytest.fixture(scope="module")
def report(store, tmp_path_factory: pytest.TempPathFactory) -> Path:
    uri, suite, _ = store
    folder = tmp_path_factory.mktemp("report")
    write_report(uri, suite, folder)
    return folder


def test_every_file_is_written(report: Path):
    names = {path.name for path in report.iterdir()}
    expected = {"report.md", "cells.csv", "history.csv", "events.csv", "widths.csv"}
    expected |= {spec.file for spec in figures.FIGURES}
    assert expected <= names
    for spec in figures.FIGURES:
        assert (report / spec.file).read_bytes().startswith(b"\x89PNG")
        assert f"]({spec.file})" in (report / "report.md").read_text()


def test_cells_hold_the_runs_numbers(store, report: Path):
    uri, suite, run_ids = store
    cells = read_tables(report).cells.set_index(["task", "method", "seed"])
    assert len(cells) == len(suite.cells())
    for cell in suite.cells():
        key = (cell.task.name, cell.method, cell.seed)
        row = cells.loc[key]
        if key == MISSING:
            assert row.status == "MISSING"
            assert row.run_id == ""
            assert math.isnan(row.score)
            continue
        assert row.run_id == run_ids[key]
        if key == FAILED:
            assert row.status == "FAILED"
            assert math.isnan(row.score)
            assert math.isnan(row.params)
            continue
        assert row.status == "FINISHED"
        final = metrics(cell, 2)
        if cell.task.dataset == "digits":
            assert row.score_name == "test accuracy %"
            assert bool(row.higher_is_better)
            assert row.score == pytest.approx(100 * final["test_accuracy"], rel=1e-12)
        else:
            assert row.score_name == "test loss"
            assert not bool(row.higher_is_better)
            assert row.score == pytest.approx(final["test_loss"], rel=1e-12)
        for name in ("params", "flops", "train_flops", "train_seconds", "growth_seconds"):
            assert getattr(row, name) == pytest.approx(final[name], rel=1e-12)
        spent = final["train_seconds"] + final["growth_seconds"]
        assert row.growth_share == pytest.approx(final["growth_seconds"] / spent)
        # The same value, read straight from MLflow.
        logged = MlflowClient(uri).get_run(run_ids[key]).data.metrics
        assert row.params == logged["params"]


def test_history_events_and_widths_hold_the_runs_numbers(store, report: Path):
    _, suite, _ = store
    tables = read_tables(report)
    history = tables.history.set_index(["task", "method", "seed", "epoch"])
    events = tables.events.set_index(["task", "method", "seed"])
    widths = tables.widths.set_index(["task", "method", "seed", "site"])
    for cell in suite.cells():
        key = (cell.task.name, cell.method, cell.seed)
        if key == MISSING:
            assert key not in events.index
            continue
        epochs = 2 if key == FAILED else 3
        for epoch in range(epochs):
            assert history.loc[(*key, epoch)].params == metrics(cell, epoch)["params"]
        assert (*key, 2) in history.index or key == FAILED
        row = events.loc[key]
        assert row.units_added == 2
        assert row.layers_inserted == (1 if cell.method == "s2d" else 0)
        assert row.realised_loss_change == event(cell)["realised_loss_change"]
        if cell.method == "s2d":
            assert row.predicted_loss_change == -0.05
        else:
            assert math.isnan(row.predicted_loss_change)
        if key != FAILED:  # a failed run has no final architecture
            expected = (10 if cell.method != "none" else 8) + cell.seed
            assert widths.loc[(*key, "block0")].width == expected
    assert len(tables.history) == sum(3 for _ in suite.cells()) - 3 - 1


def test_ranking_and_claims_in_the_report(report: Path):
    text = (report / "report.md").read_text()
    # static's accuracy on digits: 90, 91, 92 % -> mean 91.
    assert "| `static` | 3 | 91 (" in text
    # s2d's digits cell of seed 2 failed: 2 finished, 1 failed, still listed.
    assert "| `s2d` | 2, 1 failed |" in text
    assert "FAILED" in text
    assert "MISSING" in text
    claims = text[text.index("## The papers' claims") :]
    s2d_row = next(line for line in claims.splitlines() if "`s2d` vs `random-split`" in line)
    assert "digits-mlp" in s2d_row
    assert "not enough runs" in s2d_row
    # On teacher-student every s2d seed finished and beats random-split, but random-split's
    # seed 1 is missing: 2 pairs again.
    assert claims.count("not enough runs") >= 2


def test_regenerating_gives_identical_files(store, report: Path, tmp_path: Path):
    uri, suite, _ = store
    write_report(uri, suite, tmp_path)
    for path in report.iterdir():
        assert (tmp_path / path.name).read_bytes() == path.read_bytes(), path.name
    # From the tables alone, too.
    build_report(tmp_path, suite.name, suite.description)
    for path in report.iterdir():
        assert (tmp_path / path.name).read_bytes() == path.read_bytes(), path.name


def test_cli_writes_the_report_and_refuses_an_unknown_suite(store, tmp_path: Path, capsys):
    uri, _suite, _ = store
    suite_file = tmp_path / "hand-made.toml"
    suite_file.write_text(SUITE)
    out = tmp_path / "out"
    assert (
        main(["report", "--suite", str(suite_file), "--tracking-uri", uri, "--out", str(out)]) == 0
    )
    assert (out / "report.md").exists()
    other = tmp_path / "other.toml"
    other.write_text(SUITE.replace('"hand-made"', '"other"'))
    with pytest.raises(SystemExit) as exit_info:
        main(["report", "--suite", str(other), "--tracking-uri", uri, "--out", str(out)])
    assert exit_info.value.code == 2
    assert "no runs of suite 'other'" in capsys.readouterr().err


def test_tables_round_trip(report: Path):
    tables = read_tables(report)
    assert set(tables.cells["status"]) == {"FINISHED", "FAILED", "MISSING"}
    assert pd.api.types.is_integer_dtype(tables.cells["seed"])


def test_methods_section_gives_descriptions_and_what_is_ours():
    cells = pd.DataFrame({"method": ["firefly", "none", "no-such-method", "firefly"]})
    text = "\n".join(build._methods_section(cells))
    assert text.count("- `firefly`:") == 1
    assert "Depth growth (`depth = true`) is ours" in text
    assert "- `none`:" in text
    assert "- `no-such-method`: not registered" in text


def test_shared_ranks_give_ties_one_rank():
    scores = pd.Series([92.0, 90.0, 90.0, 88.0, math.nan])
    assert build.shared_ranks(scores) == [1, 2, 2, 4, 0]
    assert build.shared_ranks(pd.Series([1.0, 1.0, 1.0])) == [1, 1, 1]
    assert build.shared_ranks(pd.Series([], dtype=float)) == []


def test_claims_of_methods_not_in_the_suite_are_one_line(report: Path):
    text = (report / "report.md").read_text()
    claims = text[text.index("## The papers' claims") :]
    assert "| not run |" not in claims
    assert "**not run**" not in claims
    lines = [line for line in claims.splitlines() if line.startswith("Not tested")]
    assert len(lines) == 1
    assert "`tiny` vs `static@tiny`" in lines[0]  # a same-size claim names its matched net
    assert "`firefly` vs `s2d`" in lines[0]


def test_the_ranking_shows_the_size_reached_against_the_budget(report: Path):
    text = (report / "report.md").read_text()
    assert "size / budget" in text
    # none ends at 600 + seed params of a 1200 budget: 50 %, all three seeds below 90 %
    none_row = next(line for line in text.splitlines() if line.startswith("| 4 | `none` | 3 |"))
    assert "| 50 % (3 below 90 %) |" in none_row


def test_cli_report_filters_methods_and_tasks(store, tmp_path: Path, capsys, monkeypatch):
    uri, _suite, _ = store
    suite_file = tmp_path / "hand-made.toml"
    suite_file.write_text(SUITE)
    monkeypatch.chdir(tmp_path)
    argv = ["report", "--suite", "hand-made.toml", "--tracking-uri", uri]
    assert main([*argv, "--methods", "static,none", "--tasks", "digits-mlp"]) == 0
    out = tmp_path / "reports" / "hand-made-selection"  # never over the full report
    cells = read_tables(out).cells
    assert set(cells["method"]) == {"static", "none"}
    assert set(cells["task"]) == {"digits-mlp"}
    text = (out / "report.md").read_text()
    command = "growbench report --suite hand-made.toml --methods static,none --tasks digits-mlp"
    assert f"Built by `{command}`" in text
    assert "| `s2d` |" not in text
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--tasks", "nope"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "--tasks: 'nope'" in err


def test_built_by_names_a_packaged_suite_by_name_and_a_file_by_path(tmp_path: Path):
    assert build.report_command(load_suite("default")) == "growbench report --suite default"
    path = tmp_path / "my suite.toml"
    path.write_text(SUITE)
    command = build.report_command(load_suite(path), ["s2d"], None)
    assert command == f"growbench report --suite '{path}' --methods s2d"


def test_a_second_store_adds_the_verdict_stability_section(store, tmp_path: Path, monkeypatch):
    """The same suite with static's scores below none's in a second store: the report counts
    the verdicts that differ, names them, and keeps the second store's tables beside it."""
    uri, suite, _ = store
    other = f"sqlite:///{tmp_path}/other.db"
    scores = {"none": 0.8, "static": 0.7, "s2d": 0.88, "random-split": 0.85}
    monkeypatch.setattr(
        "tests.reports.test_report.final_accuracy",
        lambda method, seed: scores[method] + 0.01 * seed * (1 + (method == "static")),
    )
    fill_store(other, suite)
    suite_file = tmp_path / "hand-made.toml"
    suite_file.write_text(SUITE)
    out = tmp_path / "out"
    argv = ["report", "--suite", str(suite_file), "--tracking-uri", uri, "--out", str(out)]
    assert main([*argv, "--compare-uri", other]) == 0
    assert (out / build.COMPARE_FOLDER / "cells.csv").exists()
    text = (out / "report.md").read_text()
    section = text.split("## Verdict stability", 1)[1]
    here = read_tables(out).cells
    there = read_tables(out / build.COMPARE_FOLDER).cells
    claims = [
        evaluate_claims(cells[cells["status"] != "UNSUPPORTED"], collect_claims())
        for cells in (here, there)
    ]
    compared = compare_verdicts(*claims)
    moved = compared[compared["moved"]]
    assert "digits-mlp" in set(moved[moved["flipped"]]["task"])  # static now loses to none
    assert f"**{len(moved)} of {len(compared)}**" in section
    assert f"**{int(compared['flipped'].sum())}** flip" in section
    for row in moved.itertuples():
        assert f"| {row.claim} | {row.task} | {row.verdict} |" in section
    assert "1 torch thread" in section
    assert "--compare-uri <second store>" in text


def test_health_section_and_marks(report: Path):
    text = (report / "report.md").read_text()
    section = text.split("## Growth health")[1].split("\n## ")[0]
    task = section.split("### teacher-student-mlp")[1]
    s2d = next(line for line in task.splitlines() if line.startswith("| `s2d`"))
    assert s2d == "| `s2d` | 3 | 1 | 1 of 3 | 1 of 3 (seed 0: 1 destabilised growth event) |"
    digits = section.split("### digits-mlp")[1].split("###")[0]
    assert "| `s2d` | 3 | 0 | 0 of 3 | 0 of 2 |" in digits  # seed 2 failed after growing
    ranking = text.split("### teacher-student-mlp")[1]
    assert "| `s2d` | 3, 1 flagged |" in ranking
    cells = read_tables(report).cells
    flagged = cells[cells["health"] != ""]
    assert list(zip(flagged["task"], flagged["method"], flagged["seed"])) == [FLAGGED]
    events = read_tables(report).events
    assert int(events["destabilised"].sum()) == 1
