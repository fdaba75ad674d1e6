"""The report's summary: Pareto fronts of score against cost, the best method and the cheapest near
it, matched static nets as references, reports of a selection, and the MLflow experiment kind.

Pareto and margin rules are checked on synthetic cells tables (numbers chosen here); selections
and the experiment tag on a real sqlite store written by the harness's own trackers.
"""

from __future__ import annotations

import importlib.util
import math
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from growbench.benchmarks.suite import parse_suite
from growbench.benchmarks.tracking import (
    EXPERIMENT_KIND,
    TRAINING_RUNS,
    SuiteTracker,
    experiment_name,
)
from growbench.cli import main
from growbench.reports import build
from growbench.reports.claims import CLAIM_COLUMNS
from growbench.reports.statistics import (
    matched_comparison,
    near_best,
    pareto_optimal,
    ranking,
)
from growbench.reports.tables import ACCURACY_SCORE, CELL_COLUMNS, LOSS_SCORE, read_tables
from tests.reports.test_report import SUITE, fill_store

ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------ synthetic cells tables
def make_cells(results: dict, task: str = "digits-mlp", higher: bool = True) -> pd.DataFrame:
    """One FINISHED row per (method, seed): ``results`` maps a method to its params and its
    per-seed scores (None: the seed's cell FAILED)."""
    records = []
    for method, (params, scores) in results.items():
        for seed, score in enumerate(scores):
            done = score is not None
            records.append(
                {
                    "task": task,
                    "method": method,
                    "seed": seed,
                    "base_method": "static" if method.startswith("static@") else method,
                    "dataset": "digits" if higher else "teacher-student",
                    "model": "mlp",
                    "status": "FINISHED" if done else "FAILED",
                    "run_id": f"{method}-{seed}",
                    "score_name": ACCURACY_SCORE if higher else LOSS_SCORE,
                    "higher_is_better": higher,
                    "score": score if done else math.nan,
                    "params": params if done else math.nan,
                    "flops": 2 * params if done else math.nan,
                    # training compute: growing methods train smaller nets for a while
                    "train_flops": (50 if method in ("grow", "twin") else 100) * params,
                    "train_seconds": 1.0,
                    "growth_seconds": 0.1,
                    "growth_share": 0.1,
                    "epochs": 10,
                    "budget_fraction": params / 1000,
                    "health": "",
                }
            )
    return pd.DataFrame.from_records(records, columns=CELL_COLUMNS)


# static: the budget net; grow and twin tie exactly; lazy is dominated by grow (worse, same size);
# none is the cheapest; static@grow scores best of all but is a reference, never on a front.
ACCURACY = {
    "static": (1000.0, [92.0, 93.0, 94.0]),
    "grow": (600.0, [91.0, 92.5, 93.0]),
    "twin": (600.0, [91.0, 92.5, 93.0]),
    "lazy": (600.0, [85.0, 86.0, 87.0]),
    "none": (100.0, [70.0, 71.0, 72.0]),
    "static@grow": (600.0, [99.0, 99.0, 99.0]),
}
LOSS = {
    "static": (1000.0, [0.100, 0.102, 0.098]),  # mean 0.1
    "grow": (600.0, [0.104, 0.104, 0.105]),  # within 5 % of 0.1
    "lazy": (300.0, [0.200, 0.210, 0.190]),
    "none": (100.0, [0.900, 0.950, 1.000]),
    "static@grow": (600.0, [0.050, 0.050, 0.050]),
}


# ----------------------------------------------------------------------- pure functions
def test_pareto_front_keeps_ties_and_drops_dominated_points():
    # (score, cost): a and b tie; c is better and dearer; d is worse at a higher cost than a;
    # e has c's score at a higher cost; f is the cheapest; g has no score.
    scores = [90.0, 90.0, 95.0, 89.0, 95.0, 80.0, math.nan]
    costs = [100.0, 100.0, 200.0, 150.0, 300.0, 50.0, 10.0]
    front = pareto_optimal(scores, costs, higher_is_better=True)
    assert front.tolist() == [True, True, True, False, False, True, False]
    # The same points as losses (lower is better): now f (80) is best and cheapest.
    as_loss = pareto_optimal(scores, costs, higher_is_better=False)
    assert as_loss.tolist() == [False, False, False, False, False, True, False]
    # Mirrored losses give the accuracy front back.
    assert pareto_optimal([-s for s in scores], costs, False).tolist() == front.tolist()


def test_pareto_front_edge_cases():
    assert pareto_optimal([], [], True).tolist() == []
    assert pareto_optimal([1.0], [math.nan], True).tolist() == [False]
    # an equal score at an equal cost never dominates; a lower cost at an equal score does
    assert pareto_optimal([5.0, 5.0, 5.0], [1.0, 1.0, 2.0], True).tolist() == [True, True, False]
    # means equal but for float rounding tie (0.1 + 0.2 != 0.3)
    assert pareto_optimal([0.1 + 0.2, 0.3], [1.0, 1.0], True).tolist() == [True, True]
    assert pareto_optimal([1.0, 1.0], [0.1 + 0.2, 0.3], False).tolist() == [True, True]
    # a better score at an equal cost dominates, in either direction
    assert pareto_optimal([5.0, 6.0], [1.0, 1.0], True).tolist() == [False, True]
    assert pareto_optimal([5.0, 6.0], [1.0, 1.0], False).tolist() == [True, False]
    with pytest.raises(ValueError):
        pareto_optimal([1.0, 2.0], [1.0], True)


def test_near_best_uses_points_for_accuracy_and_a_fraction_for_loss():
    best, threshold, near = near_best([92.0, 91.0, 90.99, math.nan], higher_is_better=True)
    assert (best, threshold) == (92.0, 91.0)
    assert near.tolist() == [True, True, False, False]
    best, threshold, near = near_best([0.2, 0.21, 0.2101, 0.5], higher_is_better=False)
    assert best == 0.2
    assert threshold == pytest.approx(0.21)
    assert near.tolist() == [True, True, False, False]
    assert math.isnan(near_best([math.nan], True)[0])


# ------------------------------------------------------------- rankings and the summary
def test_ranking_marks_the_front_and_leaves_matched_nets_out():
    table = ranking(make_cells(ACCURACY), "digits-mlp").set_index("method")
    assert "static@grow" not in table.index
    assert table["pareto_params"].to_dict() == {
        "static": True,
        "grow": True,
        "twin": True,  # tied with grow: both on the front
        "lazy": False,
        "none": True,
    }
    # in training compute static (100 × 1000) costs more than grow (50 × 600) for a better score
    assert table.loc["static", "pareto_train_flops"]
    with_matched = ranking(make_cells(ACCURACY), "digits-mlp", matched=True)
    assert with_matched["method"].iloc[0] == "static@grow"
    assert with_matched.set_index("method")["pareto_params"].sum() == 2  # static@grow, none


def test_ranking_front_for_a_loss_task():
    cells = make_cells(LOSS, "teacher-student-mlp", higher=False)
    table = ranking(cells, "teacher-student-mlp").set_index("method")
    assert list(table.index) == ["static", "grow", "lazy", "none"]
    assert table["pareto_params"].all()  # each cheaper method has a worse (higher) loss
    cells.loc[cells["method"] == "lazy", "params"] = 2000.0  # now dearer and worse than static
    table = ranking(cells, "teacher-student-mlp").set_index("method")
    assert not table.loc["lazy", "pareto_params"]


def test_summary_names_fronts_best_and_cheapest_within_the_margin():
    cells = pd.concat(
        [make_cells(ACCURACY), make_cells(LOSS, "teacher-student-mlp", higher=False)],
        ignore_index=True,
    )
    claims = pd.DataFrame(
        {"verdict": ["reproduced", "reproduced", "inconclusive", "contradicted", "not run"]},
        columns=CLAIM_COLUMNS,
    )
    text = "\n".join(build._summary_section(cells, claims))
    assert text.startswith("## Summary")
    assert "within 1 point of the best accuracy" in text
    assert "within 5 % of the best loss" in text
    row = next(line for line in text.splitlines() if line.startswith("| digits-mlp |"))
    assert "`static` (93)" in row
    assert "`none` 100, `grow` 600, `twin` 600, `static` 1k" in row
    assert "`lazy`" not in row
    assert "static@grow" not in text.split("take part")[1]
    digits = next(line for line in text.splitlines() if line.startswith("- **digits-mlp**"))
    # grow and twin (mean 92.17) are within 1 point of static (93), tied: both are named
    assert "best `static` (93); within 1 point of it (≥ 92)" in digits
    assert "`grow`, `twin` in parameters (600), FLOPs (1.2k) and training compute (30k)" in digits
    loss = next(line for line in text.splitlines() if line.startswith("- **teacher-student"))
    assert "lower is better" in loss
    assert "within 5 % of it (≤ 0.105)" in loss
    assert "`grow` in parameters (600)" in loss
    assert (
        "**Claims:** 4 (claim, task) verdicts: 2 reproduced, 1 contradicted, 1 inconclusive; "
        "1 claim not tested" in text
    )


def test_the_ranking_section_has_a_pareto_column_and_no_matched_rows():
    text = "\n".join(build._ranking_section(make_cells(ACCURACY), "digits-mlp"))
    assert "| rank | method | seeds | test accuracy % (95 % CI) | Pareto front |" in text
    lazy = next(line for line in text.splitlines() if "| `lazy` |" in line)
    assert lazy.split(" | ")[4] == "—"
    none = next(line for line in text.splitlines() if "| `none` |" in line)
    assert none.split(" | ")[4] == "params, FLOPs, compute"
    assert "static@grow" not in text


def test_matched_nets_get_their_own_paired_table_and_one_correct_description():
    cells = make_cells(ACCURACY)
    table = matched_comparison(cells, "digits-mlp")
    assert list(table["method"]) == ["grow"]
    row = table.iloc[0]
    assert row["pairs"] == 3
    assert row["diff"] == pytest.approx(np.mean([91.0, 92.5, 93.0]) - 99.0)
    assert row["params"] == row["matched_params"] == 600.0
    assert row["p"] < 0.05
    section = "\n".join(build._matched_section(cells))
    assert section.startswith("## Matched static nets")
    assert "| `grow` | `static@grow` | 3 |" in section
    methods = "\n".join(build._methods_section(cells))
    assert "budget-size" not in methods.split("static@grow")[1]
    assert "variant of `static`" not in methods
    assert "at the final widths that `<method>`'s cell of the same task and seed" in methods
    assert methods.count("static@grow") == 1


def test_matched_comparison_pairs_only_common_seeds():
    results = {"grow": (600.0, [90.0, 91.0, None]), "static@grow": (600.0, [89.0, None, 92.0])}
    row = matched_comparison(make_cells(results), "digits-mlp").iloc[0]
    assert row["pairs"] == 1
    assert row["diff"] == pytest.approx(1.0)
    assert math.isnan(row["p"])


# --------------------------------------------------------------------- selections (store)
@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    folder = tmp_path_factory.mktemp("summary-store")
    uri = f"sqlite:///{folder}/mlflow.db"
    fill_store(uri, parse_suite(SUITE, "hand-made"))
    suite_file = folder / "hand-made.toml"
    suite_file.write_text(SUITE)
    return uri, suite_file


def test_a_report_of_a_selection_says_so_and_counts_no_cell_outside_it(store, tmp_path: Path):
    uri, suite_file = store
    out = tmp_path / "out"
    argv = ["report", "--suite", str(suite_file), "--tracking-uri", uri, "--out", str(out)]
    assert main([*argv, "--methods", "static,none", "--seeds", "2"]) == 0
    cells = read_tables(out).cells
    assert set(cells["seed"]) == {0, 1}
    assert set(cells["method"]) == {"static", "none"}
    assert (cells["status"] == "FINISHED").all()  # the MISSING and FAILED cells lie outside
    text = (out / "report.md").read_text()
    lines = text.splitlines()
    assert lines[2].startswith("**Selection:** this report covers only methods `static`, `none`")
    assert "(2 of 4); seeds 0, 1 (the suite's: 0–2)" in lines[2]
    assert "--methods static,none --seeds 2`" in text
    assert "**Cells:** 8 — 8 finished." in text
    assert "None: every cell finished." in text


def test_a_full_report_has_no_selection_line_and_starts_with_the_summary(store, tmp_path: Path):
    uri, suite_file = store
    out = tmp_path / "full"
    assert (
        main(["report", "--suite", str(suite_file), "--tracking-uri", uri, "--out", str(out)]) == 0
    )
    text = (out / "report.md").read_text()
    assert "**Selection:**" not in text
    assert text.index("## Summary") < text.index("## Methods") < text.index("## Ranking")
    assert "| digits-mlp | " in text.split("## Summary")[1].split("## Methods")[0]


def test_selection_note_is_empty_for_the_whole_suite():
    suite = parse_suite(SUITE, "hand-made")
    assert build.selection_note(suite, suite) == ""
    assert build.selection_note(suite, suite.select(None, None, 3)) == ""
    note = build.selection_note(suite, suite.select(None, ["digits"], 5))
    assert "tasks digits-mlp (1 of 2); seeds 0–4 (the suite's: 0–2)" in note


# ------------------------------------------------------------------------- nox benchmark
def load_noxfile(monkeypatch) -> types.ModuleType:
    """noxfile.py with a stand-in ``nox`` module (nox itself is not installed in the venv)."""
    fake = types.ModuleType("nox")
    fake.options = types.SimpleNamespace()
    fake.Session = object
    fake.session = lambda *args, **kwargs: args[0] if args and callable(args[0]) else (lambda f: f)
    monkeypatch.setitem(sys.modules, "nox", fake)
    spec = importlib.util.spec_from_file_location("growbench_noxfile", ROOT / "noxfile.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_nox_benchmark_passes_the_selection_to_its_report(monkeypatch):
    noxfile = load_noxfile(monkeypatch)
    calls = []
    monkeypatch.setattr(noxfile, "_run", lambda session, *args: calls.append(args))
    posargs = ["--methods", "none,tiny", "--datasets=digits", "--seeds", "2", "--threads", "2"]
    noxfile.benchmark(types.SimpleNamespace(posargs=[*posargs, "--tracking-uri", "sqlite:///s"]))
    run, report = calls
    assert run[:2] == ("growbench", "run")
    assert report == (
        "growbench",
        "report",
        *("--suite", "default", "--methods", "none,tiny", "--tasks", "digits"),
        *("--seeds", "2", "--tracking-uri", "sqlite:///s"),
    )
    calls.clear()
    noxfile.benchmark(types.SimpleNamespace(posargs=["--suite", "x", "--smoke"]))
    assert len(calls) == 1  # a smoke run makes no report


# ------------------------------------------------------------------- MLflow experiment kind
def test_experiments_are_tagged_as_training_runs_new_and_old(tmp_path: Path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    suite = parse_suite(SUITE, "hand-made")
    other = parse_suite(SUITE.replace('"hand-made"', '"older"'), "older")
    kept = parse_suite(SUITE.replace('"hand-made"', '"kept"'), "kept")
    client = MlflowClient(uri)
    client.create_experiment(experiment_name("older"))  # made before growbench tagged them
    client.create_experiment(experiment_name("kept"), tags={EXPERIMENT_KIND: "classification"})
    for each in (suite, other, kept):
        tracker = SuiteTracker(uri, each, "cpu")
        tracker.open()
        tracker.close("FINISHED")

    def kind(name: str) -> str | None:
        return (
            MlflowClient(uri)
            .get_experiment_by_name(experiment_name(name))
            .tags.get(EXPERIMENT_KIND)
        )

    assert TRAINING_RUNS == "custom_model_development"  # MLflow 3's "Machine learning" kind
    assert kind("hand-made") == TRAINING_RUNS
    assert kind("older") == TRAINING_RUNS
    assert kind("kept") == "classification"  # a training kind a user chose stays
    client.set_experiment_tag(
        client.get_experiment_by_name(experiment_name("older")).experiment_id,
        EXPERIMENT_KIND,
        "genai_development",
    )
    tracker = SuiteTracker(uri, other, "cpu")
    tracker.open()
    tracker.close("FINISHED")
    assert kind("older") == TRAINING_RUNS
