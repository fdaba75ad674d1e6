"""The figures of a comparison report, drawn from the tidy tables only (see ``tables``).

A report compares growth methods from several angles: final quality against size and compute,
training curves, final widths, time spent growing, and how well a method's growth criterion
predicts the loss change it causes. Each view is one PNG with one panel per task (tasks sorted),
every method in one fixed colour and marker (sorted method order) so figures can be read side by
side, and every failed, killed, running or missing cell counted in the legend, so a gap in a plot
is never silent. Only FINISHED cells are drawn.

Figures are byte-for-byte reproducible: an Agg canvas without pyplot, matplotlib's default rc
(a user's matplotlibrc cannot leak in), fixed size and dpi, sorted data and no ``Software``
metadata in the PNG.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import (
    FixedLocator,
    FuncFormatter,
    LogLocator,
    MaxNLocator,
    NullFormatter,
)

from growbench.reports.statistics import mean_interval
from growbench.reports.tables import (
    CELL_COLUMNS,
    EVENT_COLUMNS,
    HISTORY_COLUMNS,
    KEY,
    WIDTH_COLUMNS,
)

FINISHED = "FINISHED"
# Order of the not-finished counts in a legend label; other statuses follow alphabetically.
_STATUS_ORDER = ["failed", "killed", "running", "missing"]
# matplotlib's tab10 colours and a set of markers; method i (sorted) gets colour i, marker i.
_COLOURS = [
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
]
_MARKERS = ["o", "s", "^", "D", "v", "P", "X"]
_DPI = 100
_PANEL_SIZE = (5.0, 4.0)  # inches per panel
_MAX_COLUMNS = 3
# A growth event that predicts no change and changes the loss by at most this much preserved
# the network's function (float rounding moves the loss by ~1e-9).
FUNCTION_PRESERVED = 1e-6
# Columns drawn as numbers; read as float so a column of NaN (or of text) never breaks a plot.
_NUMERIC = {
    "score",
    "params",
    "flops",
    "train_flops",
    "train_seconds",
    "growth_seconds",
    "predicted_loss_change",
    "realised_loss_change",
    "width",
    "layers_inserted",
}
_RC = {"font.size": 9, "axes.grid": True, "grid.alpha": 0.3, "legend.fontsize": "small"}


class FigureInfo(NamedTuple):
    """One figure of the report: its file name, title and a one-line caption."""

    file: str
    title: str
    caption: str


FIGURES: tuple[FigureInfo, ...] = (
    FigureInfo(
        "pareto_params.png",
        "Final score vs parameters",
        "Mean over finished seeds, 95 % Student-t intervals on both axes; log x.",
    ),
    FigureInfo(
        "pareto_flops.png",
        "Final score vs forward FLOPs per sample",
        "Mean over finished seeds, 95 % Student-t intervals on both axes; log x.",
    ),
    FigureInfo(
        "pareto_compute.png",
        "Final score vs training compute",
        "Mean over finished seeds of score and total training FLOPs, 95 % intervals; log x.",
    ),
    FigureInfo(
        "score_vs_epoch.png",
        "Score during training",
        "Mean over finished seeds per epoch (0 = before training), shaded 95 % interval.",
    ),
    FigureInfo(
        "params_vs_epoch.png",
        "Parameters during training",
        "Growth trajectories: mean parameters over finished seeds, shaded 95 % interval; log y.",
    ),
    FigureInfo(
        "widths.png",
        "Final width per site",
        "Mean final width of each site over finished seeds, whiskers from min to max.",
    ),
    FigureInfo(
        "depth.png",
        "Layers inserted (depth growth)",
        "Layers each method inserted over a finished run, mean over seeds, whiskers from min to "
        "max; methods that grow only wider show 0.",
    ),
    FigureInfo(
        "growth_share.png",
        "Time spent growing",
        "One panel per task: growth / (train + growth) seconds in %, mean and 95 % interval "
        "over finished cells.",
    ),
    FigureInfo(
        "prediction.png",
        "Predicted vs realised loss change",
        "Each growth event of a finished run of a method that predicts: predicted vs realised loss "
        "decrease on log axes, y = x dashed. Function-preserving growth (predicted 0, realised "
        "|ΔL| ≤ 1e-6: the function unchanged up to rounding) is named per method in the panel, "
        "not drawn; other events where either rose are counted, not drawn.",
    ),
)
_INFO = {info.file: info for info in FIGURES}


def legend_label(cells: pd.DataFrame, task: str, method: str) -> str:
    """Return ``method`` with its not-finished cells of ``task`` counted, e.g. "a (1 failed)"."""
    rows = cells[(cells["task"] == task) & (cells["method"] == method)]
    counts = rows.loc[rows["status"] != FINISHED, "status"].str.lower().value_counts()
    known = [s for s in _STATUS_ORDER if s in counts.index]
    order = known + sorted(s for s in counts.index if s not in _STATUS_ORDER)
    parts = [f"{counts[s]} {s}" for s in order]
    return f"{method} ({', '.join(parts)})" if parts else method


def _mean_half(values: Iterable[float]) -> tuple[float, float]:
    """Mean and half-width of the 95 % Student-t interval (NaN half-width below 2 values)."""
    interval = mean_interval(values)
    return interval.mean, (interval.high - interval.mean)


def _tidy(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Return ``frame`` with every expected column present and rows in a fixed order."""
    frame = frame.reindex(columns=[*columns, *(c for c in frame.columns if c not in columns)])
    for column in _NUMERIC.intersection(frame.columns):
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(float)
    order = [c for c in [*KEY, "epoch", "round", "site_index", "site"] if c in frame.columns]
    return frame.sort_values(order, kind="mergesort").reset_index(drop=True)


def _finished(cells: pd.DataFrame, frame: pd.DataFrame) -> pd.DataFrame:
    """Return the rows of ``frame`` that belong to a FINISHED cell."""
    done = cells.loc[cells["status"] == FINISHED, KEY].drop_duplicates()
    if frame.empty or done.empty:
        return frame.iloc[0:0]
    return frame.merge(done.astype(frame[KEY].dtypes.to_dict()), on=KEY, how="inner")


def _score_label(task_cells: pd.DataFrame) -> str:
    """Return the task's score name with its direction, e.g. "test loss (lower is better)"."""
    named = task_cells.dropna(subset=["score_name"])
    if named.empty:
        return "score"
    higher = _higher_is_better(named)
    return f"{named.iloc[0]['score_name']} ({'higher' if higher else 'lower'} is better)"


def _higher_is_better(task_cells: pd.DataFrame) -> bool:
    """The task's score direction (an accuracy): True, False, or True-like text from a CSV."""
    if task_cells.empty:
        return True
    value = task_cells.iloc[0]["higher_is_better"]
    return str(value).strip().lower() in ("true", "1", "1.0")


def _note(ax: Axes, text: str) -> None:
    """Write ``text`` in the centre of a panel."""
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="0.4")


@contextmanager
def _default_style() -> Iterator[None]:
    """Run with matplotlib's built-in defaults (rcParamsDefault) plus this module's few tweaks."""
    with mpl.rc_context():
        mpl.rcdefaults()
        mpl.rcParams.update(_RC)
        yield


Panel = Callable[[Axes, str, dict[str, tuple[str, str]]], None]


def _draw(
    file: str,
    cells: pd.DataFrame,
    frame: pd.DataFrame,
    out: Path,
    panel: Panel,
    only: set[str] | None = None,
) -> Path:
    """Draw one panel per task with ``panel(ax, task, styles)`` and save the figure at ``out``.

    Handles what every figure shares: the task grid, titles naming each task's cells without a
    finished run (method and counts), the "no finished runs" note, and one legend of every
    method (those in ``only`` when given) beside the panels.
    """
    methods = sorted(set(cells["method"].dropna()) | set(frame["method"].dropna()))
    styles = {m: (_COLOURS[i % 10], _MARKERS[i % len(_MARKERS)]) for i, m in enumerate(methods)}
    tasks = sorted(set(cells["task"].dropna()) | set(frame["task"].dropna()))
    ncols = min(max(len(tasks), 1), _MAX_COLUMNS)
    nrows = max(math.ceil(len(tasks) / ncols), 1)
    with _default_style():
        fig = Figure(
            figsize=(_PANEL_SIZE[0] * ncols, _PANEL_SIZE[1] * nrows), dpi=_DPI, layout="constrained"
        )
        FigureCanvasAgg(fig)
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        for ax, task in zip(axes, tasks):
            task_cells = cells[cells["task"] == task]
            # Cells without a finished run are named under the task's title, never dropped.
            gaps = [
                legend_label(cells, task, m)
                for m in sorted(set(task_cells["method"]))
                if (task_cells.loc[task_cells["method"] == m, "status"] != FINISHED).any()
            ]
            ax.set_title(task + ("\nnot finished: " + "; ".join(gaps) if gaps else ""))
            if (task_cells["status"] == FINISHED).any():
                panel(ax, task, styles)
            else:
                _note(ax, "no finished runs")
                ax.set_xticks([])
                ax.set_yticks([])
        handles = [
            Line2D([], [], color=styles[m][0], marker=styles[m][1], label=m)
            for m in methods
            if only is None or m in only
        ]
        if handles:
            fig.legend(handles=handles, loc="outside right upper")
        for ax in axes[len(tasks) :]:
            ax.set_axis_off()
        if not tasks:
            _note(axes[0], "no runs")
        fig.suptitle(_INFO[file].title)
        fig.savefig(out, format="png", metadata={"Software": None})
    return out


def _log_axis(ax: Axes, which: str, values: Iterable[float]) -> None:
    """A log ``which`` ("x" or "y") axis in compact numbers (1.2k, 50M) with at least three
    labelled ticks in view and no minor labels (matplotlib's defaults overlap, or label nothing,
    on axes spanning less than a decade): ticks at powers of 10 when ``values`` (the positive
    data drawn) span more than 3 decades, else at 1, 2, 5 × 10^k, else at every 1…9 × 10^k, and on
    an axis narrower than that at evenly spaced round numbers."""
    getattr(ax, f"set_{which}scale")("log")
    axis = getattr(ax, f"{which}axis")
    drawn = np.asarray([v for v in values if v > 0 and math.isfinite(v)], dtype=float)
    if drawn.size and drawn.max() > 1e3 * drawn.min():
        axis.set_major_locator(LogLocator(subs=(1.0,)))
    else:
        low, high = getattr(ax, f"get_{which}lim")()
        axis.set_major_locator(FixedLocator(_log_ticks(low, high)))
    axis.set_major_formatter(FuncFormatter(lambda value, _: _compact(value)))
    axis.set_minor_formatter(NullFormatter())


def _log_ticks(low: float, high: float) -> list[float]:
    """Round tick positions in [low, high] (low > 0): at least three when the range allows."""
    if not (0 < low < high and math.isfinite(high)):
        return []
    decades = range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
    for subs in ((1,), (1, 2, 5), tuple(range(1, 10))):
        ticks = [m * 10.0**k for k in decades for m in subs if low <= m * 10.0**k <= high]
        if len(ticks) >= 3:
            return ticks
    return [float(t) for t in MaxNLocator(nbins=4).tick_values(low, high) if low <= t <= high]


def _compact(value: float) -> str:
    for size, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:g}{suffix}"
    return f"{value:g}"


def _pareto(cells: pd.DataFrame, x: str, xlabel: str, file: str, out: Path) -> Path:
    """Draw final score against the final value of cells column ``x``, one point per method."""
    cells = _tidy(cells, CELL_COLUMNS)

    def panel(ax: Axes, task: str, styles: dict[str, tuple[str, str]]) -> None:
        task_cells = cells[cells["task"] == task]
        done = task_cells[task_cells["status"] == FINISHED]
        plotted = False
        for method in sorted(done["method"].unique()):
            rows = done[done["method"] == method]
            rows = rows[np.isfinite(rows["score"]) & np.isfinite(rows[x]) & (rows[x] > 0)]
            if rows.empty:
                continue
            mx, hx = _mean_half(rows[x])
            my, hy = _mean_half(rows["score"])
            # On the log axis an interval reaching below zero is cut at 1 % of the mean.
            xerr = None if math.isnan(hx) else [[min(hx, 0.99 * mx)], [hx]]
            # Bars stay inside the score's range (0–100 %, a loss ≥ 0): few seeds make wide
            # Student-t intervals.
            top = 100.0 if _higher_is_better(task_cells) else math.inf
            yerr = None if math.isnan(hy) else [[min(hy, my)], [min(hy, top - my)]]
            colour, marker = styles[method]
            ax.errorbar(
                [mx], [my], xerr=xerr, yerr=yerr, color=colour, marker=marker, capsize=3, ls="none"
            )
            plotted = True
        if plotted:
            _log_axis(ax, "x", done[x])
        else:
            _note(ax, f"no finished run logged {x}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(_score_label(task_cells))

    return _draw(file, cells, cells, out, panel)


def pareto_params(cells: pd.DataFrame, out: Path) -> Path:
    """Final score vs final parameter count per method (mean, 95 % intervals on both axes)."""
    return _pareto(cells, "params", "final parameters", "pareto_params.png", out)


def pareto_flops(cells: pd.DataFrame, out: Path) -> Path:
    """Final score vs final forward FLOPs per sample per method."""
    return _pareto(cells, "flops", "final forward FLOPs per sample", "pareto_flops.png", out)


def pareto_compute(cells: pd.DataFrame, out: Path) -> Path:
    """Final score vs total training compute (``train_flops``) per method."""
    return _pareto(cells, "train_flops", "training compute (FLOPs)", "pareto_compute.png", out)


def _curves(
    cells: pd.DataFrame, history: pd.DataFrame, column: str, file: str, out: Path, log: bool
) -> Path:
    """Draw history ``column`` against epoch: mean line over finished seeds, 95 % band."""
    cells = _tidy(cells, CELL_COLUMNS)
    history = _finished(cells, _tidy(history, HISTORY_COLUMNS))

    def panel(ax: Axes, task: str, styles: dict[str, tuple[str, str]]) -> None:
        rows = history[(history["task"] == task) & np.isfinite(history[column])]
        # Bands stay inside the quantity's range (few seeds make Student-t intervals wide).
        task_cells = cells[cells["task"] == task]
        accuracy = column == "score" and _higher_is_better(task_cells)
        top = 100.0 if accuracy else np.inf
        if rows.empty:
            _note(ax, f"no {column} logged")
        for method in sorted(rows["method"].unique()):
            per_epoch = rows[rows["method"] == method].groupby("epoch")[column]
            epochs = np.asarray(sorted(per_epoch.groups), dtype=float)
            summary = np.array(
                [_mean_half(per_epoch.get_group(e)) for e in sorted(per_epoch.groups)]
            )
            mean, half = summary[:, 0], np.nan_to_num(summary[:, 1])
            colour, marker = styles[method]
            ax.plot(epochs, mean, color=colour, marker=marker, markersize=3)
            low, high = np.clip(mean - half, 0.0, top), np.clip(mean + half, 0.0, top)
            ax.fill_between(epochs, low, high, color=colour, alpha=0.15, lw=0)
        if log and (rows[column] > 0).any():
            _log_axis(ax, "y", rows[column])
        ax.set_xlabel("epoch")
        ax.set_ylabel(
            _score_label(cells[cells["task"] == task]) if column == "score" else "parameters"
        )

    return _draw(file, cells, history, out, panel)


def score_vs_epoch(cells: pd.DataFrame, history: pd.DataFrame, out: Path) -> Path:
    """Score against epoch per method: mean over finished seeds with a 95 % band."""
    return _curves(cells, history, "score", "score_vs_epoch.png", out, log=False)


def params_vs_epoch(cells: pd.DataFrame, history: pd.DataFrame, out: Path) -> Path:
    """Parameters against epoch per method (growth trajectories), mean with a 95 % band."""
    return _curves(cells, history, "params", "params_vs_epoch.png", out, log=True)


def site_widths(cells: pd.DataFrame, widths: pd.DataFrame, out: Path) -> Path:
    """Final width per site, grouped bars per method (mean over seeds, min–max whisker)."""
    cells = _tidy(cells, CELL_COLUMNS)
    widths = _finished(cells, _tidy(widths, WIDTH_COLUMNS))

    def panel(ax: Axes, task: str, styles: dict[str, tuple[str, str]]) -> None:
        rows = widths[(widths["task"] == task) & widths["width"].notna()]
        if rows.empty:
            _note(ax, "no widths logged")
            return
        sites = list(
            rows[["site_index", "site"]]
            .drop_duplicates()
            .sort_values(["site_index", "site"])
            .itertuples(index=False, name=None)
        )
        position = {site: i for i, site in enumerate(sites)}
        methods = sorted(rows["method"].unique())
        bar = 0.8 / len(methods)
        for j, method in enumerate(methods):
            per_site = rows[rows["method"] == method].groupby(["site_index", "site"])["width"]
            summary = per_site.agg(["mean", "min", "max"]).sort_index()
            xs = [position[site] - 0.4 + bar * (j + 0.5) for site in summary.index]
            spread = [summary["mean"] - summary["min"], summary["max"] - summary["mean"]]
            ax.bar(xs, summary["mean"], bar, color=styles[method][0], yerr=spread, capsize=2)
        labels = [str(site) for _, site in sites]
        ax.set_xticks(
            range(len(sites)),
            labels,
            rotation=45 if len(sites) > 4 else 0,
            ha="right" if len(sites) > 4 else "center",
        )
        ax.set_xlabel("site")
        ax.set_ylabel("final width")

    return _draw("widths.png", cells, widths, out, panel)


def layers_inserted(cells: pd.DataFrame, events: pd.DataFrame, out: Path) -> Path:
    """Layers inserted per finished cell, one panel per task (horizontal bars, min–max)."""
    cells = _tidy(cells, CELL_COLUMNS)
    events = _finished(cells, _tidy(events, EVENT_COLUMNS))

    def panel(ax: Axes, task: str, styles: dict[str, tuple[str, str]]) -> None:
        done = cells[(cells["task"] == task) & (cells["status"] == FINISHED)]
        counts = events[events["task"] == task].groupby(["method", "seed"])["layers_inserted"].sum()
        methods = sorted(done["method"].unique())
        for i, method in enumerate(methods):
            seeds = done.loc[done["method"] == method, "seed"]
            values = [float(counts.get((method, seed), 0)) for seed in seeds]
            mean = sum(values) / len(values)
            spread = [[mean - min(values)], [max(values) - mean]]
            ax.barh(i, mean, color=styles[method][0], xerr=spread, capsize=3)
        ax.set_yticks(range(len(methods)), methods)
        ax.invert_yaxis()
        ax.set_xlabel("layers inserted per run")

    return _draw("depth.png", cells, events, out, panel)


def growth_share(cells: pd.DataFrame, out: Path) -> Path:
    """Share of wall time spent growing per method, one panel per task (horizontal bars)."""
    cells = _tidy(cells, CELL_COLUMNS)

    def panel(ax: Axes, task: str, styles: dict[str, tuple[str, str]]) -> None:
        done = cells[(cells["task"] == task) & (cells["status"] == FINISHED)]
        total = done["train_seconds"] + done["growth_seconds"]
        share = (100 * done["growth_seconds"] / total.where(total > 0)).to_numpy(dtype=float)
        methods = sorted(done["method"].unique())
        for i, method in enumerate(methods):
            mean, half = _mean_half(share[(done["method"] == method).to_numpy()])
            if math.isnan(mean):
                continue
            xerr = None if math.isnan(half) else [[min(half, mean)], [half]]
            ax.barh(i, mean, color=styles[method][0], xerr=xerr, capsize=3)
        ax.set_yticks(range(len(methods)), methods)
        ax.invert_yaxis()
        ax.set_xlabel("time spent growing (% of train + growth seconds)")

    return _draw("growth_share.png", cells, cells, out, panel)


def split_function_preserving(events: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``events`` split into the others and the function-preserving ones (predicted exactly 0,
    realised within ``FUNCTION_PRESERVED`` of 0: the function unchanged up to rounding)."""
    preserving = (events["predicted_loss_change"] == 0) & (
        events["realised_loss_change"].abs() <= FUNCTION_PRESERVED
    )
    return events[~preserving], events[preserving]


def prediction(cells: pd.DataFrame, events: pd.DataFrame, out: Path) -> Path:
    """Predicted vs realised loss change per growth event, for methods that predict."""
    cells = _tidy(cells, CELL_COLUMNS)
    events = _finished(cells, _tidy(events, EVENT_COLUMNS))
    both = ["predicted_loss_change", "realised_loss_change"]
    events = events[np.isfinite(events[both].astype(float)).all(axis=1)]
    kept, unchanged = split_function_preserving(events)

    def panel(ax: Axes, task: str, styles: dict[str, tuple[str, str]]) -> None:
        rows = kept[kept["task"] == task]
        same = unchanged[unchanged["task"] == task]["method"].value_counts().sort_index()
        notes = [
            f"{method}: {count} event(s) function-preserving (predicted 0, |realised| ≤ 1e-6)"
            for method, count in same.items()
        ]
        if rows.empty:
            _note(ax, "\n".join(notes) if notes else "no predicted growth events")
            ax.set_xticks([])
            ax.set_yticks([])
            return
        # Growth predicts a loss decrease: both axes show −ΔL on a log scale, so predictions
        # spanning decades stay readable; events outside it (a rise, or no change) are counted.
        drops = -rows[both].to_numpy(dtype=float)
        shown = (drops > 0).all(axis=1)
        for method in sorted(rows["method"].unique()):
            own = drops[(rows["method"] == method).to_numpy() & shown]
            colour, marker = styles[method]
            ax.scatter(own[:, 0], own[:, 1], s=18, color=colour, marker=marker, alpha=0.8)
        if shown.any():
            lo, hi = float(drops[shown].min()), float(drops[shown].max())
            ax.plot([lo, hi], [lo, hi], color="black", ls="--", lw=0.8)
            _log_axis(ax, "x", drops[shown].ravel())
            _log_axis(ax, "y", drops[shown].ravel())
        hidden = int((~shown).sum())
        if hidden:
            notes.append(f"{hidden} event(s) with a predicted or realised rise not shown")
        if notes:
            ax.text(
                0.98,
                0.02,
                "\n".join(notes),
                transform=ax.transAxes,
                ha="right",
                va="bottom",
                fontsize=7,
            )
        ax.set_xlabel("predicted loss decrease −ΔL")
        ax.set_ylabel("realised loss decrease −ΔL")

    return _draw("prediction.png", cells, events, out, panel, only=set(kept["method"]))


def draw_all(
    cells: pd.DataFrame,
    history: pd.DataFrame,
    events: pd.DataFrame,
    widths: pd.DataFrame,
    out_dir: Path,
) -> list[Path]:
    """Draw every figure of ``FIGURES`` into ``out_dir`` and return their paths in that order."""
    out_dir.mkdir(parents=True, exist_ok=True)
    drawers: dict[str, Callable[[Path], Path]] = {
        "pareto_params.png": lambda p: pareto_params(cells, p),
        "pareto_flops.png": lambda p: pareto_flops(cells, p),
        "pareto_compute.png": lambda p: pareto_compute(cells, p),
        "score_vs_epoch.png": lambda p: score_vs_epoch(cells, history, p),
        "params_vs_epoch.png": lambda p: params_vs_epoch(cells, history, p),
        "widths.png": lambda p: site_widths(cells, widths, p),
        "depth.png": lambda p: layers_inserted(cells, events, p),
        "growth_share.png": lambda p: growth_share(cells, p),
        "prediction.png": lambda p: prediction(cells, events, p),
    }
    return [drawers[info.file](out_dir / info.file) for info in FIGURES]
