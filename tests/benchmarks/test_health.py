"""Growth health: every growth event measures itself on the probe and on the next epoch, a broken
cell is flagged in one warning line of ``growbench run`` and in the report; growth phases
(``growth.last_epoch``) and the disjoint sets a growth round draws."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from growbench.benchmarks import health
from growbench.benchmarks.runner import _CellRun, growth_due, run_cell
from growbench.benchmarks.suite import SuiteError, parse_suite
from growbench.datasets import load_dataset
from tests.benchmarks.conftest import TINY_SUITE

BROKEN_SUITE = """
name = "broken-amplitude"
seeds = 1
epochs = 3
methods = ["tiny", "none"]

[method_options.tiny]
gamma_fixed = 30.0      # an amplitude thirty times the bound: wrecks the net

[growth]
stats_samples = 256
max_rounds = 1

[[tasks]]
dataset = "digits"
model = "mlp"
model_options = { widths = [4] }
"""


def cells(text: str = TINY_SUITE, **replacements: str):
    for old, new in replacements.items():
        text = text.replace(old, new)
    return {cell.method: cell for cell in parse_suite(text).cells()}


def test_thresholds() -> None:
    assert not health.destabilised(1.0, 2.9)
    assert health.destabilised(1.0, 3.1)
    assert health.destabilised(1.0, float("nan"))
    start = {"test_loss": 2.3, "test_accuracy": 0.1}
    fine = [start, {"test_loss": 0.5, "test_accuracy": 0.9}]
    assert health.cell_flags(fine, [], 10) == []
    at_chance = [start, {"test_loss": 2.3, "test_accuracy": 0.11}]
    assert health.cell_flags(at_chance, [], 10) == ["at chance (11.0 %)"]
    worse = [{"test_loss": 1.0}, {"test_loss": 1.2}]
    assert health.cell_flags(worse, [], None) == ["worse than its start net (test loss 1.2 vs 1)"]
    events = [{"health": {"destabilised": True}}, {"health": {"destabilised": False}}, {}]
    assert health.cell_flags(fine, events, 10) == ["1 destabilised growth event"]


@pytest.mark.parametrize(
    ("next_epoch", "flagged"),
    [
        ({"train_loss": 0.22, "test_loss": 0.35}, False),
        ({"train_loss": 0.22, "test_loss": 75.0}, True),  # broke during the epoch
        ({"train_loss": 0.7, "test_loss": 0.35}, True),
        ({"train_loss": 0.22, "test_loss": float("nan")}, True),
        ({"train_loss": 0.22}, False),  # a test loss not recorded is not judged
    ],
)
def test_an_event_is_destabilised_by_either_loss_of_the_next_epoch(next_epoch, flagged) -> None:
    record = {"health": {"train_loss_before": 0.22, "test_loss_before": 0.31}}
    health.after_next_epoch(record, next_epoch)
    assert record["health"]["destabilised"] is flagged
    assert record["health"]["next_train_loss"] == next_epoch["train_loss"]
    old = {"health": {"train_loss_before": 0.22}}  # an event recorded before test losses were
    health.after_next_epoch(old, {"train_loss": 0.22, "test_loss": 75.0})
    assert old["health"]["destabilised"] is False


def test_every_growth_event_records_its_health() -> None:
    result = run_cell(cells()["random-add"])
    assert [event["epoch"] for event in result.events] == [1, 2]
    for event in result.events:
        before, after = result.history[event["epoch"]], result.history[event["epoch"] + 1]
        record = event["health"]
        assert record["probe_samples"] == 25  # an eighth of the 200 training samples
        assert record["probe_loss_before"] > 0
        assert record["probe_loss_after"] > 0
        assert record["next_train_loss"] == after["train_loss"]
        assert record["test_loss_before"] == before["test_loss"]
        assert record["next_test_loss"] == after["test_loss"]
        assert record["destabilised"] is False
    assert result.health == []


def test_a_round_draws_disjoint_statistics_held_out_and_probe_sets() -> None:
    cell = cells()["random-add"]
    dataset = load_dataset(cell.task.dataset, **cell.task.dataset_options)
    run = _CellRun(cell, dataset, torch.device("cpu"), observer=None)
    sets = run._growth_sets(0)
    assert [len(targets) for _, targets in sets] == [64, 25, 25]
    rows = torch.cat([inputs for inputs, _ in sets])
    assert len(torch.unique(rows, dim=0)) == len(rows)
    again = run._growth_sets(0)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(sets, again, strict=True))
    assert not torch.equal(run._growth_sets(1)[0][0], sets[0][0])


def test_growth_stops_after_the_growth_phase() -> None:
    text = TINY_SUITE.replace("epochs = 3", "epochs = 10").replace("max_rounds = 2", "")
    phased = cells(text, **{"stats_samples = 64": "stats_samples = 64\nlast_epoch = 4"})
    assert [e for e in range(1, 11) if growth_due(phased["none"], e, 0)] == [1, 2, 3, 4]
    unphased = cells(text)["none"]
    assert [e for e in range(1, 11) if growth_due(unphased, e, 0)] == list(range(1, 10))
    with pytest.raises(SuiteError, match=r"growth\.last_epoch = 10 must be .*less than epochs"):
        cells(text, **{"stats_samples = 64": "stats_samples = 64\nlast_epoch = 10"})


def test_a_broken_cell_is_one_warning_line_of_growbench_run(tmp_path: Path) -> None:
    """As a user sees it: the installed command, warnings shown."""
    suite = tmp_path / "broken.toml"
    suite.write_text(BROKEN_SUITE)
    command = [sys.executable, "-m", "growbench.cli", "run", "--suite", str(suite)]
    command += ["--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--device", "cpu"]
    env = {key: value for key, value in os.environ.items() if key != "PYTHONWARNINGS"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "warning: cell" in line]
    assert len(warnings) == 1, done.stderr
    assert re.match(
        r"^growbench: warning: cell digits-mlp/tiny/seed0: 1 destabilised growth event; "
        r"worse than its start net \(test loss \S+ vs \S+\)$",
        warnings[0],
    )
    assert "Traceback" not in done.stderr
