"""Tests of how the report figures tell methods apart and what they leave out: a distinct,
deterministic style per method past ten methods, matched static nets drawn as references,
legends of only what a panel draws, log axes for losses, no empty grid cells, notes inside
their panel, side-by-side markers where methods share an x, and figures with nothing to draw
left out with a reason."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from growbench.reports import figures
from growbench.reports.tables import (
    ACCURACY_SCORE,
    CELL_COLUMNS,
    EVENT_COLUMNS,
    HISTORY_COLUMNS,
    LOSS_SCORE,
    WIDTH_COLUMNS,
)

PLUGINS = [f"plugin-{letter}" for letter in "abcdefghijklm"]  # 13 more: 24 methods in all
MANY = ["static", "none", *figures.BUILTIN_ORDER, *PLUGINS]
MATCHED = ["static@firefly", "static@tiny", "static@plugin-c", "static@plugin-m"]


def make_frames(
    tasks: dict[str, bool],
    methods: list[str],
    seeds: tuple[int, ...] = (0, 1),
    layers: bool = False,
    predict: bool = True,
    widths_for: dict[str, list[str]] | None = None,
) -> dict[str, pd.DataFrame]:
    """Finished cells of ``methods`` on ``tasks`` (name -> higher is better); a loss task has
    losses over four decades. ``layers``: "firefly" inserts a layer; ``predict``: non-static
    methods predict their loss drops; ``widths_for``: task -> the methods with widths."""
    cells, history, events, widths = [], [], [], []
    for task, higher in tasks.items():
        for m, method in enumerate(methods):
            for seed in seeds:
                score = 80.0 + 0.1 * m + seed if higher else 10.0 ** (-m % 5) * (1 + 0.1 * seed)
                params = 1000.0 + seed  # every method ends at the budget
                cells.append(
                    {
                        "task": task,
                        "method": method,
                        "seed": seed,
                        "status": "FINISHED",
                        "score_name": ACCURACY_SCORE if higher else LOSS_SCORE,
                        "higher_is_better": higher,
                        "score": score,
                        "params": params,
                        "flops": 2 * params,
                        "train_flops": 1e6 * (1 + 0.01 * m),
                        "train_seconds": 10.0,
                        "growth_seconds": 1.0 + m % 3,
                    }
                )
                for epoch in range(3):
                    history.append(
                        {
                            **dict(zip(HISTORY_COLUMNS, [task, method, seed, epoch])),
                            "score": score * (1 + 0.1 * (2 - epoch)),
                            "params": params * (0.5 + 0.25 * epoch),
                        }
                    )
                grows = not method.startswith(("static", "none"))
                if grows:
                    inserted = int(layers and method == "firefly")
                    pred = -0.01 * (m + 1) if predict else np.nan
                    row = [task, method, seed, 0, 1, True, 2, inserted, pred, 0.8 * pred, 0.1]
                    events.append([*row, "", 1.0, 0.9, 0.9, 0.9, False])
                if widths_for is None or method in widths_for.get(task, []):
                    widths.append([task, method, seed, "fc1", 0, 8 + m % 4])
    return {
        "cells": pd.DataFrame(cells).reindex(columns=CELL_COLUMNS),
        "history": pd.DataFrame(history).reindex(columns=HISTORY_COLUMNS),
        "events": pd.DataFrame(events, columns=EVENT_COLUMNS),
        "widths": pd.DataFrame(widths, columns=WIDTH_COLUMNS),
    }


@pytest.fixture
def saved(monkeypatch: pytest.MonkeyPatch) -> list[Figure]:
    """Every figure saved while the test runs, still open for inspection."""
    figures_saved: list[Figure] = []
    original = Figure.savefig

    def savefig(self: Figure, *args, **kwargs):
        figures_saved.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return figures_saved


def _legend_labels(fig: Figure) -> list[list[str]]:
    """The labels of each legend of ``fig``: the figure's, then each panel's."""
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
    return [[text.get_text() for text in legend.get_texts()] for legend in legends]


# ----------------------------------------------------------------------------- styles
def test_24_methods_get_24_distinct_styles_and_matched_nets_share_their_colour():
    styles = figures.method_styles([*MANY, *MATCHED])
    assert len(MANY) == 24
    triples = {(s.colour, s.marker, s.linestyle) for m, s in styles.items() if m in MANY}
    assert len(triples) == 24
    assert len({(s.colour, s.marker, s.linestyle) for s in styles.values()}) == 28
    for matched in MATCHED:
        base = styles[matched.removeprefix("static@")]
        own = styles[matched]
        assert (own.colour, own.marker) == (base.colour, base.marker)
        assert own.linestyle == "--" != base.linestyle
        assert base.filled
        assert not own.filled
    # Dashed is the matched nets' alone; two methods of one colour differ in marker and hatch.
    assert all(s.linestyle != "--" for m, s in styles.items() if m in MANY)
    for a in MANY:
        for b in MANY:
            if a < b and styles[a].colour == styles[b].colour:
                assert styles[a].marker != styles[b].marker
                assert styles[a].hatch != styles[b].hatch


def test_styles_are_deterministic_and_built_ins_keep_theirs_in_every_report():
    names = [*MANY, *MATCHED]
    first = figures.method_styles(names)
    shuffled = names.copy()
    random.Random(4).shuffle(shuffled)
    assert figures.method_styles(shuffled) == first
    # A report with fewer methods (or a matched net without its method) keeps the built-ins'.
    few = figures.method_styles(["static@senn", "tiny", "plugin-z", "none"])
    assert few["tiny"] == first["tiny"]
    assert few["none"] == first["none"]
    assert few["static@senn"].colour == first["senn"].colour
    assert figures.method_styles(["tiny"])["tiny"] == first["tiny"]


def test_every_built_in_method_has_a_fixed_place():
    from growbench.methods import builtin  # noqa: F401  (registers the built-ins)
    from growbench.methods.registry import METHODS

    fixed = {*figures.REFERENCE_STYLES, *figures.BUILTIN_ORDER}
    assert set(METHODS.builtins) == fixed
    assert len(figures.BUILTIN_ORDER) == len(set(figures.BUILTIN_ORDER))


def test_method_order_puts_references_first_and_matched_nets_after_their_method():
    order = figures.method_order(["tiny", "static@tiny", "alpha", "none", "static", "static@alpha"])
    assert order == ["static", "none", "alpha", "static@alpha", "tiny", "static@tiny"]


# ----------------------------------------------------------------------------- dodge
def test_dodge_sets_markers_at_one_x_side_by_side_and_leaves_others():
    xs = [1000.0] * 9 + [50.0]
    moved = figures.dodge(xs, xs, xs)
    logs = np.log10(moved[:9])
    steps = np.diff(logs)
    assert np.all(steps > 0)  # in list order (ties), a step apart
    assert np.allclose(steps, steps[0])
    assert np.isclose(logs.mean(), 3.0)  # centred on the true x
    assert moved[9] == 50.0
    assert figures.dodge([10.0, 1000.0], [10.0, 1000.0], [10.0, 1000.0]) == [10.0, 1000.0]
    # Nearly equal x keep their order.
    near = figures.dodge([100.0, 100.1, 99.9], [90.0] * 3, [110.0] * 3)
    assert near[2] < near[0] < near[1]


# ----------------------------------------------------------------------------- figures
def test_matched_nets_are_dashed_and_hollow_in_their_methods_colour(tmp_path: Path, saved):
    frames = make_frames({"cls": True}, ["static", "tiny", "static@tiny"])
    figures.score_vs_epoch(frames["cells"], frames["history"], tmp_path / "s.png")
    ax = saved[-1].axes[0]
    lines = [line for line in ax.get_lines() if len(line.get_xdata()) == 3]
    tiny, matched = lines[1], lines[2]  # drawing order: static, tiny, static@tiny
    assert matched.get_color() == tiny.get_color()
    assert matched.get_linestyle() == "--"
    assert tiny.get_linestyle() == "-"
    assert matched.get_markerfacecolor() == "white"
    assert tiny.get_markerfacecolor() == tiny.get_color()
    figures.pareto_params(frames["cells"], tmp_path / "p.png")
    legend = saved[-1].legends[0]
    handles = dict(zip([t.get_text() for t in legend.get_texts()], legend.legend_handles))
    assert handles["static@tiny"].get_markerfacecolor() == "white"
    assert handles["static@tiny"].get_color() == handles["tiny"].get_color()


def test_legends_list_only_the_methods_a_panel_draws(tmp_path: Path, saved):
    methods = ["static", "none", "firefly", "tiny", "static@tiny"]
    widths_for = {"a": ["static", "firefly"], "b": methods}
    frames = make_frames({"a": True, "b": True}, methods, widths_for=widths_for)
    figures.site_widths(frames["cells"], frames["widths"], tmp_path / "w.png")
    labels = _legend_labels(saved[-1])
    assert sorted(labels) == sorted([["static", "firefly"], methods])
    # Every panel draws the same methods: one legend beside the figure.
    figures.pareto_params(frames["cells"], tmp_path / "p.png")
    assert _legend_labels(saved[-1]) == [methods]
    # Bars are told apart by hatch as well as colour, and their legend shows bars.
    figures.site_widths(frames["cells"], frames["widths"], tmp_path / "w.png")
    fig = saved[-1]
    hatches = {patch.get_hatch() for ax in fig.axes for patch in ax.patches}
    assert len(hatches) >= 3
    handle = fig.axes[1].get_legend().legend_handles[0]
    assert handle.get_hatch() is not None or handle.get_facecolor() is not None
    assert type(handle).__name__ in {"Patch", "Rectangle"}


def test_loss_panels_and_wide_ranges_are_on_log_axes(tmp_path: Path, saved):
    frames = make_frames({"acc": True, "loss": False}, ["static", "none", "tiny"])
    figures.score_vs_epoch(frames["cells"], frames["history"], tmp_path / "s.png")
    scales = {ax.get_title(): ax.get_yscale() for ax in saved[-1].axes}
    assert scales == {"acc": "linear", "loss": "log"}
    figures.pareto_params(frames["cells"], tmp_path / "p.png")
    scales = {ax.get_title(): ax.get_yscale() for ax in saved[-1].axes}
    assert scales == {"acc": "linear", "loss": "log"}
    assert figures._wants_log([1.0, 500.0])
    assert not figures._wants_log([1.0, 50.0])
    assert figures._wants_log([0.2, 0.3], loss=True)
    assert not figures._wants_log([0.0], loss=True)


@pytest.mark.parametrize(("tasks", "shape"), [(1, (1, 1)), (2, (1, 2)), (4, (2, 2)), (5, (2, 3))])
def test_the_grid_leaves_no_empty_panel(tmp_path: Path, saved, tasks, shape):
    assert figures._grid(tasks) == shape
    frames = make_frames({f"t{i}": True for i in range(tasks)}, ["static", "tiny"])
    figures.growth_share(frames["cells"], tmp_path / "g.png")
    assert len(saved[-1].axes) == tasks


def test_notes_stay_inside_their_panel_and_off_the_points(tmp_path: Path, saved):
    frames = make_frames({"a": True, "b": False}, ["static", "gradmax", "tiny"])
    events = frames["events"]
    # "a": every event function-preserving (a note only); "b": points plus counted notes.
    on_a = events["task"] == "a"
    events.loc[on_a, "predicted_loss_change"] = 0.0
    events.loc[on_a, "realised_loss_change"] = 1e-9
    events.loc[(events["task"] == "b") & (events["seed"] == 1), "realised_loss_change"] = 0.5
    preserving = (events["task"] == "b") & (events["method"] == "gradmax") & (events["seed"] == 0)
    events.loc[preserving, "predicted_loss_change"] = 0.0
    events.loc[preserving, "realised_loss_change"] = -2e-9
    figures.prediction(frames["cells"], events, tmp_path / "p.png")
    fig = saved[-1]
    renderer = fig.canvas.get_renderer()
    by_title = {ax.get_title(): ax for ax in fig.axes}
    points = by_title["b"]
    assert not points.texts  # counts go under the axis label, never over a point
    assert "rise (not drawn)" in points.get_xlabel()
    assert "function-preserving" in points.get_xlabel()
    box = by_title["a"].get_window_extent(renderer)
    for text in by_title["a"].texts:
        inner = text.get_window_extent(renderer)
        assert box.x0 <= inner.x0, text.get_text()
        assert inner.x1 <= box.x1, text.get_text()
    figure_box = fig.bbox
    label = points.xaxis.label.get_window_extent(renderer)
    assert figure_box.x0 <= label.x0
    assert label.x1 <= figure_box.x1


def test_figures_with_nothing_to_draw_are_left_out_with_a_reason(tmp_path: Path):
    frames = make_frames({"a": True, "b": False}, ["static", "none", "gradmax"], predict=False)
    stale = tmp_path / "depth.png"
    stale.write_bytes(b"old")
    drawn = figures.draw_figures(
        frames["cells"], frames["history"], frames["events"], frames["widths"], tmp_path
    )
    assert [d.info for d in drawn] == list(figures.FIGURES)
    left_out = {d.info.file: d.reason for d in drawn if d.path is None}
    assert left_out.keys() == {"depth.png", "prediction.png"}
    assert left_out["depth.png"] == "no method inserted a layer"
    assert "\n" not in left_out["prediction.png"]
    assert not stale.exists()
    assert all(d.path.read_bytes().startswith(b"\x89PNG") for d in drawn if d.path)
    paths = figures.draw_all(
        frames["cells"], frames["history"], frames["events"], frames["widths"], tmp_path
    )
    assert [p.name for p in paths] == [d.info.file for d in drawn if d.path]
    # A layer inserted anywhere draws the figure; a figure function alone always draws.
    layered = make_frames({"a": True}, ["static", "firefly"], layers=True)
    again = figures.draw_figures(
        layered["cells"], layered["history"], layered["events"], layered["widths"], tmp_path
    )
    assert {d.info.file for d in again if d.path is None} == set()
    empty_path = figures.layers_inserted(frames["cells"], frames["events"], tmp_path / "d.png")
    assert empty_path.read_bytes().startswith(b"\x89PNG")


def test_many_methods_redraw_byte_for_byte(tmp_path: Path):
    frames = make_frames({"a": True, "b": False}, [*MANY, *MATCHED], seeds=(0,), layers=True)
    first = figures.draw_all(
        frames["cells"], frames["history"], frames["events"], frames["widths"], tmp_path / "1"
    )
    shuffled = {k: v.sample(frac=1.0, random_state=7) for k, v in frames.items()}
    second = figures.draw_all(
        shuffled["cells"],
        shuffled["history"],
        shuffled["events"],
        shuffled["widths"],
        tmp_path / "2",
    )
    assert [p.name for p in first] == [p.name for p in second]
    assert len(first) == len(figures.FIGURES)
    for a, b in zip(first, second):
        assert a.read_bytes() == b.read_bytes(), a.name
