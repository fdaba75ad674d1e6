"""Tests of the report figures: every PNG is written, reproducible to the byte, and honest
about failed and missing cells, also on empty tables and tasks without a finished run."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from growbench.reports import figures
from growbench.reports.tables import (
    ACCURACY_SCORE,
    CELL_COLUMNS,
    EVENT_COLUMNS,
    HISTORY_COLUMNS,
    LOSS_SCORE,
    WIDTH_COLUMNS,
)

TASKS = {"cls": (ACCURACY_SCORE, True), "reg": (LOSS_SCORE, False)}
METHODS = ["alpha", "beta", "gamma"]
SEEDS = [0, 1, 2]
# (task, method, seed) -> status; everything else FINISHED.
STATUS = {("cls", "beta", 1): "FAILED", ("cls", "gamma", 2): "MISSING"}
NAN = math.nan


def _status(task: str, method: str, seed: int) -> str:
    return STATUS.get((task, method, seed), "FINISHED")


def make_frames() -> dict[str, pd.DataFrame]:
    """Two tasks, three methods, three seeds; one failed and one missing cell in "cls"."""
    cells, history, events, widths = [], [], [], []
    for task, (score_name, higher) in TASKS.items():
        for m, method in enumerate(METHODS):
            for seed in SEEDS:
                status = _status(task, method, seed)
                done = status == "FINISHED"
                base = 80.0 + 3 * m + seed if higher else 0.5 - 0.05 * m + 0.01 * seed
                params = 1000.0 * (m + 1) + 50 * seed
                numbers = {
                    "score": base,
                    "params": params,
                    "flops": 2 * params,
                    "train_flops": 3e5 * (m + 1),
                    "train_seconds": 10.0 + seed,
                    "growth_seconds": 1.0 + m,
                    "epochs": 3,
                }
                cells.append(
                    {
                        "task": task,
                        "method": method,
                        "seed": seed,
                        "dataset": "ds",
                        "model": "mlp",
                        "status": status,
                        "run_id": f"{task}-{method}-{seed}",
                        "score_name": score_name,
                        "higher_is_better": higher,
                        **(numbers if done else {}),
                    }
                )
                if status == "MISSING":
                    continue
                for epoch in range(4):
                    p = params * (0.4 + 0.2 * epoch)
                    history.append(
                        {
                            **dict(zip(HISTORY_COLUMNS, [task, method, seed, epoch])),
                            "score": base * (0.5 + epoch / 6),
                            "params": p,
                            "flops": 2 * p,
                            "train_flops": 3e4 * epoch,
                            "train_seconds": float(epoch),
                            "growth_seconds": 0.1 * epoch,
                        }
                    )
                predicted = [-0.1 * (seed + 1), -0.001] if method != "gamma" else [NAN, NAN]
                for rnd, pred in enumerate(predicted):
                    real = -0.08 * (seed + 1) if rnd == 0 else 0.0005
                    layers = int(method == "beta" and rnd == 0)
                    health = [1.0, 1.0 + real, 0.5, 0.6, False]  # probe before/after, next losses
                    row = [task, method, seed, rnd, rnd + 1, True, 4, layers, pred, real, 0.2]
                    events.append([*row, "", *health])
                for index, site in enumerate(["fc1", "fc2"]):
                    widths.append([task, method, seed, site, index, 8 + 4 * m + seed + index])
    return {
        "cells": pd.DataFrame(cells).reindex(columns=CELL_COLUMNS),
        "history": pd.DataFrame(history).reindex(columns=HISTORY_COLUMNS),
        "events": pd.DataFrame(events, columns=EVENT_COLUMNS),
        "widths": pd.DataFrame(widths, columns=WIDTH_COLUMNS),
    }


def _draw(frames: dict[str, pd.DataFrame], out: Path) -> list[Path]:
    return figures.draw_all(
        frames["cells"], frames["history"], frames["events"], frames["widths"], out
    )


def _is_png(path: Path) -> bool:
    return path.read_bytes().startswith(b"\x89PNG")


@pytest.fixture(scope="module")
def drawn(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return _draw(make_frames(), tmp_path_factory.mktemp("first"))


def test_every_figure_is_a_png(drawn: list[Path]):
    assert [p.name for p in drawn] == [info.file for info in figures.FIGURES]
    assert all(_is_png(p) for p in drawn)


def test_figures_are_byte_identical_when_redrawn(drawn: list[Path], tmp_path: Path):
    again = _draw(make_frames(), tmp_path)
    for first, second in zip(drawn, again):
        assert first.read_bytes() == second.read_bytes(), first.name


def test_row_order_does_not_change_the_figure(drawn: list[Path], tmp_path: Path):
    frames = {k: v.sample(frac=1.0, random_state=3) for k, v in make_frames().items()}
    again = _draw(frames, tmp_path)
    for first, second in zip(drawn, again):
        assert first.read_bytes() == second.read_bytes(), first.name


def test_legend_label_counts_cells_not_finished():
    cells = make_frames()["cells"]
    assert figures.legend_label(cells, "cls", "alpha") == "alpha"
    assert figures.legend_label(cells, "cls", "beta") == "beta (1 failed)"
    assert figures.legend_label(cells, "cls", "gamma") == "gamma (1 missing)"
    assert figures.legend_label(cells, "reg", "beta") == "beta"
    extra = pd.DataFrame(
        {
            "task": ["t"] * 4,
            "method": ["m"] * 4,
            "status": ["MISSING", "KILLED", "FAILED", "MISSING"],
        }
    )
    assert figures.legend_label(extra, "t", "m") == "m (1 failed, 1 killed, 2 missing)"


def test_task_with_no_finished_cell_and_empty_tables(tmp_path: Path):
    frames = make_frames()
    failed = frames["cells"][frames["cells"]["task"] == "cls"].assign(task="dead", status="FAILED")
    for column in ["score", "params", "flops", "train_flops"]:
        failed[column] = np.nan
    frames["cells"] = pd.concat([frames["cells"], failed], ignore_index=True)
    frames["events"] = frames["events"].iloc[0:0]
    assert figures.legend_label(frames["cells"], "dead", "gamma") == "gamma (3 failed)"
    assert all(_is_png(p) for p in _draw(frames, tmp_path / "dead"))
    empty = {
        "cells": pd.DataFrame(columns=CELL_COLUMNS),
        "history": pd.DataFrame(columns=HISTORY_COLUMNS),
        "events": pd.DataFrame(columns=EVENT_COLUMNS),
        "widths": pd.DataFrame(columns=WIDTH_COLUMNS),
    }
    assert all(_is_png(p) for p in _draw(empty, tmp_path / "empty"))


@pytest.mark.parametrize(
    ("low", "high", "at_least"),
    [(2e12, 5e12, 3), (1.1e6, 1.3e6, 3), (3.0, 4e5, 3), (0.9, 1.1, 3), (1e3, 9e3, 3)],
)
def test_log_ticks_label_at_least_three_round_numbers_in_view(low, high, at_least):
    ticks = figures._log_ticks(low, high)
    assert len(ticks) >= at_least
    assert all(low <= t <= high for t in ticks)
    assert ticks == sorted(ticks)
    labels = [figures._compact(t) for t in ticks]
    assert len(set(labels)) == len(labels)  # distinct labels, none repeated by rounding


def test_a_narrow_compute_axis_gets_labelled_ticks():
    """Training compute of one task often spans less than a factor 3 (pareto_compute.png)."""
    from matplotlib.figure import Figure

    ax = Figure().subplots()
    values = [2.1e12, 2.6e12, 3.4e12]
    ax.plot(values, [90, 91, 92], "o")
    figures._log_axis(ax, "x", values)
    low, high = ax.get_xlim()
    shown = [t for t in ax.xaxis.get_majorticklocs() if low <= t <= high]
    assert len(shown) >= 3
    formatter = ax.xaxis.get_major_formatter()
    assert all(formatter(t, 0) for t in shown)


def test_function_preserving_events_are_named_not_counted_as_rises(tmp_path: Path):
    frames = make_frames()
    events = frames["events"]
    gamma = events["method"] == "gamma"  # no prediction so far: make it function-preserving
    events.loc[gamma, "predicted_loss_change"] = 0.0
    events.loc[gamma, "realised_loss_change"] = np.where(
        events.loc[gamma, "round"] == 0, 3e-9, -2e-9
    )
    kept, unchanged = figures.split_function_preserving(events)
    assert set(unchanged["method"]) == {"gamma"}
    assert "gamma" not in set(kept["method"])
    assert len(kept) + len(unchanged) == len(events)
    real_rise = events.assign(realised_loss_change=1e-3, predicted_loss_change=0.0)
    assert figures.split_function_preserving(real_rise)[1].empty  # a real change is not hidden
    path = figures.prediction(frames["cells"], events, tmp_path / "prediction.png")
    assert _is_png(path)
    only_preserving = events[gamma]
    assert _is_png(figures.prediction(frames["cells"], only_preserving, tmp_path / "p2.png"))
