"""The figures of a comparison report, drawn from the tidy tables only (see ``tables``).

A report compares growth methods from several angles: final quality against size and compute,
training curves, final widths, time spent growing, and how well a method's growth criterion
predicts the loss change it causes. Each view is one PNG with one panel per task (tasks sorted,
in a grid of at most three columns chosen to leave as few cells empty as it can; unused cells are
removed), and every failed, killed, running or missing cell is named under its task's title, so
a gap in a plot is never silent. Only FINISHED cells are drawn.

Styles (``method_styles``): every method keeps one style in every figure of a report, and the
built-in methods keep theirs across reports. A style is a colour, a marker, a line style and a
bar hatch. The references ``static`` (near-black, star) and ``none`` (grey, hexagon) have fixed
styles; the other built-in methods take fixed places 0, 1, … of a cycle, and any other method
(plugin, variant) the next places in sorted order. Place i gets colour i mod 9 (matplotlib's
tab10 without its grey), marker i mod 7, hatch i mod 10 and line style i div 9 (solid,
dash-dot, dotted): no two of the first 189 places share colour, marker and line style, two
places of one colour differ in marker and hatch, and the built-ins differ in colour and hatch.
A matched static net ``static@X`` (the start net trained from scratch at the widths X ended
with) is drawn as X's reference, not as a contestant: X's colour and marker, but a hollow
marker, a dashed line and dashed whiskers (no method's own line is dashed) and a pale bar with
X's hatch and a dashed outline; it is listed right after X, the references first.

Legends list only what is drawn: one legend beside the figure when every panel draws the same
methods, else one beside each panel. Bars are told apart by colour and hatch (legend patches).
A loss is drawn on a log axis, and so is any quantity whose positive values span more than two
decades. Methods that end at nearly the same x of a Pareto view are set side by side (dodged)
so that no marker hides another. ``draw_figures`` leaves out a figure with nothing to draw (no
method inserted a layer, none predicted a loss change) and says why in one line; a figure
function called alone always writes its PNG.

Figures are byte-for-byte reproducible: an Agg canvas without pyplot, matplotlib's default rc
(a user's matplotlibrc cannot leak in), a size fixed by the data (panels, legend entries), fixed
dpi, sorted data and no ``Software`` metadata in the PNG.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import (
    FixedLocator,
    FuncFormatter,
    LogLocator,
    MaxNLocator,
    NullFormatter,
    NullLocator,
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


# ----------------------------------------------------------------------------- styles
class Style(NamedTuple):
    """How one method is drawn: line and marker colour, marker, line style, bar hatch, and
    whether markers and bars are filled (hollow: a matched static net)."""

    colour: str
    marker: str
    linestyle: str
    hatch: str
    filled: bool = True


MATCHED = "static@"  # a matched static net: "static@<method>"
REFERENCE_STYLES = {
    "static": Style("#262626", "*", "-", ""),
    "none": Style("#8c8c8c", "h", "-", ""),
}
# The built-in growth methods in their fixed places of the style cycle (new built-ins go last,
# so the others keep their styles).
BUILTIN_ORDER = (
    "fast-s2d",
    "firefly",
    "gradmax",
    "random-add",
    "random-split",
    "s2d",
    "senn",
    "signed-s2d",
    "tiny",
)
# tab10 without its grey (grey is kept for the references).
_COLOURS = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#bcbd22",
    "#17becf",
)
_MARKERS = ("o", "s", "^", "D", "v", "P", "X")  # 7, coprime with the 9 colours
# 10 hatches, coprime with the 9 colours: every built-in has its own.
_HATCHES = ("", "///", "\\\\\\", "xxx", "...", "+++", "---", "|||", "oo", "//..")
_LINESTYLES = ("-", "-.", ":")  # dashed is kept for the matched static nets


def _cycle_style(place: int) -> Style:
    return Style(
        _COLOURS[place % len(_COLOURS)],
        _MARKERS[place % len(_MARKERS)],
        _LINESTYLES[(place // len(_COLOURS)) % len(_LINESTYLES)],
        _HATCHES[place % len(_HATCHES)],
    )


def _matched_base(method: str) -> str | None:
    """``X`` for a matched static net ``static@X``, else None."""
    if method.startswith(MATCHED) and len(method) > len(MATCHED):
        return method[len(MATCHED) :]
    return None


def method_styles(methods: Iterable[str]) -> dict[str, Style]:
    """A distinct, deterministic style per method (see the module docstring): references and
    built-ins fixed, other methods in sorted order after them, ``static@X`` as X's reference."""
    names = {str(m) for m in methods}
    bases = {_matched_base(m) or m for m in names}
    others = sorted(bases - set(REFERENCE_STYLES) - set(BUILTIN_ORDER))
    places = {m: i for i, m in enumerate([*BUILTIN_ORDER, *others])}
    own = {m: REFERENCE_STYLES.get(m) or _cycle_style(places[m]) for m in bases}
    styles = {}
    for name in names:
        base = _matched_base(name)
        if base is None:
            styles[name] = own[name]
        else:
            colour, marker, _, hatch, _ = own[base]
            styles[name] = Style(colour, marker, "--", hatch, filled=False)
    return styles


def method_order(methods: Iterable[str]) -> list[str]:
    """Methods in drawing and legend order: references first, then by name with each matched
    static net ``static@X`` right after X."""

    def key(method: str) -> tuple[int, str, bool]:
        base = _matched_base(method)
        name = base or method
        reference = list(REFERENCE_STYLES).index(name) if name in REFERENCE_STYLES else 2
        return (reference, name, base is not None)

    return sorted({str(m) for m in methods}, key=key)


def _line_kwargs(style: Style) -> dict:
    """Keyword arguments of ``Axes.plot`` / ``errorbar`` for a method's line and marker."""
    return {
        "color": style.colour,
        "marker": style.marker,
        "markerfacecolor": style.colour if style.filled else "white",
        "markeredgecolor": style.colour,
    }


def _bar_kwargs(style: Style) -> dict:
    """Keyword arguments of ``Axes.bar`` / ``barh``: filled bars with a white hatch, a matched
    static net's bar pale with a hatch and dashed outline in its method's colour."""
    if style.filled:
        return {"facecolor": style.colour, "edgecolor": "white", "hatch": style.hatch, "lw": 0.5}
    return {
        "facecolor": _tint(style.colour),
        "edgecolor": style.colour,
        "hatch": style.hatch,
        "lw": 1.0,
        "ls": "--",
    }


def _tint(colour: str, share: float = 0.2) -> tuple[float, float, float]:
    """``colour`` mixed with white: ``share`` of the colour."""
    red, green, blue = mpl.colors.to_rgb(colour)
    return tuple(1 - share * (1 - c) for c in (red, green, blue))  # type: ignore[return-value]


def _handle(method: str, style: Style, kind: str) -> Artist:
    """The legend entry of ``method`` as the figure draws it: a line, a marker or a bar."""
    if kind == "bar":
        return Patch(label=method, **_bar_kwargs(style))
    line = {"ls": style.linestyle} if kind == "line" else {"ls": "none"}
    return Line2D([], [], label=method, **_line_kwargs(style), **line)


# ----------------------------------------------------------------------------- figures
class FigureInfo(NamedTuple):
    """One figure of the report: its file name, title and a one-line caption."""

    file: str
    title: str
    caption: str


class Drawn(NamedTuple):
    """What ``draw_figures`` did with one figure: ``path`` of the PNG, or None and a one-line
    ``reason`` why the figure was left out (e.g. "no method inserted a layer")."""

    info: FigureInfo
    path: Path | None
    reason: str = ""


_PARETO = (
    "Mean over finished seeds, 95 % Student-t intervals on both axes (on a log axis cut at a "
    "tenth of the mean); log x (log y for a loss). "
    "Methods ending at nearly the same x are set side by side so none hides another: a grey "
    "bar at the foot of the panel spans each such group, its tick at the group's mean x. Hollow "
    "markers and dashed whiskers: matched static nets."
)
FIGURES: tuple[FigureInfo, ...] = (
    FigureInfo("pareto_params.png", "Final score vs parameters", _PARETO),
    FigureInfo("pareto_flops.png", "Final score vs forward FLOPs per sample", _PARETO),
    FigureInfo(
        "pareto_compute.png",
        "Final score vs training compute",
        _PARETO.replace("Mean over finished seeds,", "Total training FLOPs; mean over seeds,"),
    ),
    FigureInfo(
        "score_vs_epoch.png",
        "Score during training",
        "Mean over finished seeds per epoch (0 = before training); shaded 95 % interval where a "
        "panel draws at most four methods; log y for a loss. Dashed: matched static nets.",
    ),
    FigureInfo(
        "params_vs_epoch.png",
        "Parameters during training",
        "Growth trajectories: mean parameters over finished seeds (shaded 95 % interval where a "
        "panel draws at most four methods); log y. Dashed: matched static nets.",
    ),
    FigureInfo(
        "widths.png",
        "Final width per site",
        "Mean final width of each site over finished seeds, whiskers from min to max; a site "
        "shows the methods whose nets have it. Hollow dashed bars: matched static nets.",
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
        "|ΔL| ≤ 1e-6: the function unchanged up to rounding) is counted per method under the "
        "panel, not drawn; so are other events where either rose.",
    ),
)
_INFO = {info.file: info for info in FIGURES}


def legend_label(cells: pd.DataFrame, task: str, method: str) -> str:
    """Return ``method`` with its not-finished cells of ``task`` counted, e.g. "a (1 failed)"."""
    counts = _gap_counts(cells, task, method)
    return f"{method} ({counts})" if counts else method


def _gap_counts(cells: pd.DataFrame, task: str, method: str) -> str:
    """The not-finished cells of ``task`` and ``method`` counted, e.g. "1 failed, 2 missing"."""
    rows = cells[(cells["task"] == task) & (cells["method"] == method)]
    counts = rows.loc[rows["status"] != FINISHED, "status"].str.lower().value_counts()
    known = [s for s in _STATUS_ORDER if s in counts.index]
    order = known + sorted(s for s in counts.index if s not in _STATUS_ORDER)
    return ", ".join(f"{counts[s]} {s}" for s in order)


def _gaps(cells: pd.DataFrame, task: str) -> str:
    """The task's cells without a finished run, grouped by count: "2 missing: a, b; 1 failed:
    c", or "every method: 2 missing" when all share one count."""
    methods = method_order(cells.loc[cells["task"] == task, "method"].dropna())
    groups: dict[str, list[str]] = {}
    for method in methods:
        counts = _gap_counts(cells, task, method)
        if counts:
            groups.setdefault(counts, []).append(method)
    if len(groups) == 1 and len(next(iter(groups.values()))) == len(methods) > 1:
        return f"every method: {next(iter(groups))}"
    return "; ".join(f"{counts}: {', '.join(names)}" for counts, names in sorted(groups.items()))


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


def _wants_log(values: Iterable[float], loss: bool = False) -> bool:
    """A log axis for ``values``: a loss with a positive value, or positive values spanning
    more than two decades."""
    drawn = np.asarray([v for v in values if math.isfinite(v) and v > 0], dtype=float)
    if not drawn.size:
        return False
    return loss or bool(drawn.max() > 100 * drawn.min())


def _note(ax: Axes, text: str) -> None:
    """Write ``text`` in the centre of an empty panel, wrapped to stay inside it; the panel
    loses its ticks, grid and axis labels (there is nothing to read off them)."""
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    ax.set_xlabel("")
    ax.set_ylabel("")
    lines = [w for line in text.split("\n") for w in textwrap.wrap(line, 48) or [""]]
    ax.text(
        0.5, 0.5, "\n".join(lines), transform=ax.transAxes, ha="center", va="center", color="0.4"
    )


@contextmanager
def _default_style() -> Iterator[None]:
    """Run with matplotlib's built-in defaults (rcParamsDefault) plus this module's few tweaks."""
    with mpl.rc_context():
        mpl.rcdefaults()
        mpl.rcParams.update(_RC)
        yield


def _grid(count: int) -> tuple[int, int]:
    """Rows and columns for ``count`` panels: at most ``_MAX_COLUMNS`` columns, fewest empty
    cells, then fewest rows."""
    if count <= _MAX_COLUMNS:
        return 1, max(count, 1)
    shapes = [
        (math.ceil(count / c) * c - count, math.ceil(count / c), c)
        for c in range(2, _MAX_COLUMNS + 1)
    ]
    _, rows, columns = min(shapes)
    return rows, columns


# Legend geometry at the "small" legend font (inches): per character, per entry, and the handle.
_CHAR_WIDTH, _ENTRY_HEIGHT, _HANDLE_WIDTH = 0.058, 0.165, 0.75


# Bars get larger legend patches, so that their hatch shows.
_LEGEND = {"bar": {"handleheight": 1.5, "handlelength": 2.5}, "line": {}, "marker": {}}


def _legend_columns(entries: int, height: float, kind: str) -> int:
    entry = _ENTRY_HEIGHT * (1.3 if kind == "bar" else 1.0)
    return max(1, math.ceil(entries * entry / max(height - 0.5, 1.0)))


def _legend_width(names: list[str], columns: int) -> float:
    return columns * (_HANDLE_WIDTH + _CHAR_WIDTH * max(len(n) for n in names)) + 0.15


# A panel draws one task and returns the methods it drew (the legend lists just those).
Panel = Callable[[Axes, str, dict[str, Style]], list[str]]


def _left_out(info: FigureInfo, out: Path, reason: str) -> Drawn:
    """Nothing drawn: no PNG (a stale one from an earlier build is removed) and the reason."""
    out.unlink(missing_ok=True)
    return Drawn(info, None, reason)


def _draw(
    file: str,
    cells: pd.DataFrame,
    frame: pd.DataFrame,
    out: Path,
    panel: Panel,
    legend: str | None,
    empty: str,
    keep_empty: bool,
) -> Drawn:
    """Draw one panel per task with ``panel(ax, task, styles)`` and save the figure at ``out``.

    Handles what every figure shares: the task grid, titles naming each task's cells without a
    finished run, the "no finished runs" note and the legend (``legend``: "line", "marker",
    "bar", or None where tick labels name the methods) of just the methods drawn. When no panel
    draws anything the figure is left out with the reason ``empty``, unless ``keep_empty``.
    """
    info = _INFO[file]
    methods = set(cells["method"].dropna()) | set(frame["method"].dropna())
    styles = method_styles(methods)
    tasks = sorted(set(cells["task"].dropna()) | set(frame["task"].dropna()))
    if not tasks and not keep_empty:
        return _left_out(info, out, "no runs")
    nrows, ncols = _grid(len(tasks))
    drawn: dict[str, list[str]] = {}
    title_lines = [0] * nrows
    with _default_style():
        fig = Figure(dpi=_DPI, layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        for index, (ax, task) in enumerate(zip(axes, tasks)):
            task_cells = cells[cells["task"] == task]
            # Cells without a finished run are named under the task's title, never dropped.
            gaps = _gaps(cells, task)
            title = [task, *textwrap.wrap("not finished — " + gaps, 56)] if gaps else [task]
            title_lines[index // ncols] = max(title_lines[index // ncols], len(title) - 1)
            ax.set_title("\n".join(title), fontsize="medium" if gaps else "large")
            if (task_cells["status"] == FINISHED).any():
                drawn[task] = method_order(panel(ax, task, styles))
            else:
                _note(ax, "no finished runs")
        for ax in axes[len(tasks) :]:
            fig.delaxes(ax)
        if not tasks:
            _note(axes[0], "no runs")
        if not any(drawn.values()) and not keep_empty:
            return _left_out(info, out, empty)
        beside_panels = beside_figure = 0.0  # legend widths (inches)
        sets = {tuple(names) for names in drawn.values() if names}
        if legend is not None and len(sets) == 1:
            names = list(next(iter(sets)))
            columns = _legend_columns(len(names), _PANEL_SIZE[1] * nrows, legend)
            handles = [_handle(m, styles[m], legend) for m in names]
            fig.legend(handles=handles, loc="outside right upper", ncols=columns, **_LEGEND[legend])
            beside_figure = _legend_width(names, columns)
        elif legend is not None:
            for ax, task in zip(axes, tasks):
                names = drawn.get(task) or []
                if names:
                    columns = _legend_columns(len(names), _PANEL_SIZE[1], legend)
                    ax.legend(
                        handles=[_handle(m, styles[m], legend) for m in names],
                        loc="upper left",
                        bbox_to_anchor=(1.02, 1.0),
                        borderaxespad=0.0,
                        ncols=columns,
                        **_LEGEND[legend],
                    )
                    beside_panels = max(beside_panels, _legend_width(names, columns))
        width = ncols * (_PANEL_SIZE[0] + beside_panels) + beside_figure
        height = nrows * _PANEL_SIZE[1] + 0.17 * sum(title_lines)
        fig.set_size_inches(width, height)
        fig.suptitle(info.title)
        fig.savefig(out, format="png", metadata={"Software": None})
    return Drawn(info, out)


def _log_axis(ax: Axes, which: str, values: Iterable[float]) -> None:
    """A log ``which`` ("x" or "y") axis in compact numbers (1.2k, 50M) with at least three
    labelled ticks in view and no minor labels (matplotlib's defaults overlap, or label nothing,
    on axes spanning less than a decade): ticks at powers of 10 when ``values`` (the positive
    data drawn) span more than 3 decades (every other, or fewer, power beyond 7 decades), else at
    1, 2, 5 × 10^k, else at every 1…9 × 10^k, and on an axis narrower than that at evenly spaced
    round numbers."""
    getattr(ax, f"set_{which}scale")("log")
    axis = getattr(ax, f"{which}axis")
    drawn = np.asarray([v for v in values if v > 0 and math.isfinite(v)], dtype=float)
    if drawn.size and drawn.max() > 1e3 * drawn.min():
        axis.set_major_locator(LogLocator(subs=(1.0,), numticks=8))
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


# ----------------------------------------------------------------------------- pareto
# Markers closer than this share of the data's log-x span are set side by side.
_DODGE_SHARE = 1 / 50
_ONE_X_STEP = 0.005  # decades between markers when every point sits at one x, whiskers too
_CUT = 0.9  # on a log axis a whisker reaching 0 stops at (1 - _CUT) × the mean


def dodge(xs: list[float], lows: list[float], highs: list[float]) -> list[float]:
    """Positive x positions moved apart so that markers closer than a step (``_DODGE_SHARE`` of
    the log span of ``lows``…``highs``, the whisker ends) sit a step apart, each cluster centred
    on its mean log x and kept in x order (ties: list order). Points already a step apart stay."""
    return _dodge(xs, lows, highs)[0]


def _dodge(
    xs: list[float], lows: list[float], highs: list[float]
) -> tuple[list[float], list[list[int]]]:
    """``dodge``'s positions and its clusters of more than one point (indices into ``xs``)."""
    if len(xs) < 2:
        return [float(x) for x in xs], []
    logs = np.log10(np.asarray(xs, dtype=float))
    ends = np.log10(np.asarray([v for v in [*lows, *highs, *xs] if v > 0], dtype=float))
    span = float(ends.max() - ends.min())  # the axis zooms to it: a step is a marker's width
    step = span * _DODGE_SHARE if span > 0 else _ONE_X_STEP
    clusters = [[i] for i in sorted(range(len(xs)), key=lambda i: (logs[i], i))]

    def extent(cluster: list[int]) -> tuple[float, float]:
        centre, half = float(np.mean(logs[cluster])), (len(cluster) - 1) / 2 * step
        return centre - half, centre + half

    merged = True
    while merged:
        merged = False
        for j in range(len(clusters) - 1):
            if extent(clusters[j + 1])[0] - extent(clusters[j])[1] < step * (1 - 1e-9):
                clusters[j : j + 2] = [clusters[j] + clusters[j + 1]]
                merged = True
                break
    moved = [float(x) for x in xs]
    for cluster in clusters:
        start = extent(cluster)[0]
        for k, i in enumerate(cluster):
            if len(cluster) > 1:
                moved[i] = float(10.0 ** (start + k * step))
    return moved, [cluster for cluster in clusters if len(cluster) > 1]


def _mark_groups(ax: Axes, xs: list[float], moved: list[float], groups: list[list[int]]) -> None:
    """Under each group of markers set side by side: a grey bar at the foot of the panel
    spanning the group, with a tick at the group's mean x (log scale), where the points lie."""
    foot = ax.get_xaxis_transform()  # x in data, y in axes fraction
    for group in groups:
        span = [moved[group[0]], moved[group[-1]]]
        centre = float(10.0 ** np.mean(np.log10([xs[i] for i in group])))
        ax.plot(span, [0.012, 0.012], transform=foot, color="0.55", lw=2.0, solid_capstyle="butt")
        ax.plot([centre], [0.012], transform=foot, color="0.2", marker="|", ms=9, mew=1.5)


def _pareto(
    cells: pd.DataFrame, x: str, xlabel: str, file: str, out: Path, keep_empty: bool = True
) -> Drawn:
    """Draw final score against the final value of cells column ``x``, one point per method."""
    cells = _tidy(cells, CELL_COLUMNS)

    def panel(ax: Axes, task: str, styles: dict[str, Style]) -> list[str]:
        task_cells = cells[cells["task"] == task]
        done = task_cells[task_cells["status"] == FINISHED]
        higher = _higher_is_better(task_cells)
        points = []
        for method in method_order(done["method"].unique()):
            rows = done[done["method"] == method]
            rows = rows[np.isfinite(rows["score"]) & np.isfinite(rows[x]) & (rows[x] > 0)]
            if not rows.empty:
                points.append((method, *_mean_half(rows[x]), *_mean_half(rows["score"])))
        ax.set_xlabel(xlabel)
        ax.set_ylabel(_score_label(task_cells))
        if not points:
            _note(ax, f"no finished run logged {x}")
            return []
        log_y = _wants_log([p[3] for p in points], loss=not higher)
        # On a log axis an interval reaching below zero is cut at a tenth of the mean.
        lower_x = [0.0 if math.isnan(hx) else min(hx, _CUT * mx) for _, mx, hx, _, _ in points]
        upper_x = [0.0 if math.isnan(hx) else hx for _, _, hx, _, _ in points]
        means = [p[1] for p in points]
        xs, groups = _dodge(
            means,
            [m - lo for m, lo in zip(means, lower_x)],
            [m + u for m, u in zip(means, upper_x)],
        )
        _mark_groups(ax, means, xs, groups)
        # Bars stay inside the score's range (0–100 %, a loss > 0): few seeds make wide
        # Student-t intervals.
        top = 100.0 if higher else math.inf
        for (method, _, hx, my, hy), at, low in zip(points, xs, lower_x):
            style = styles[method]
            xerr = None if math.isnan(hx) else [[low], [hx]]
            floor = _CUT * my if log_y else my
            yerr = None if math.isnan(hy) else [[min(hy, floor)], [min(hy, top - my)]]
            bars = ax.errorbar(
                [at],
                [my],
                xerr=xerr,
                yerr=yerr,
                **_line_kwargs(style),
                ls="none",
                markersize=6 if style.marker != "*" else 9,
                capsize=2,
                elinewidth=0.8,
                capthick=0.8,
                zorder=3 if style.filled else 2,
            )
            if not style.filled:
                for whisker in bars.lines[2]:
                    whisker.set_linestyle("--")
        _log_axis(ax, "x", xs)
        ends = {
            *means,
            *(m - lo for m, lo in zip(means, lower_x)),
            *(m + u for m, u in zip(means, upper_x)),
        }
        if len(ends) == 1 and len(means) > 1:
            # Every method at one x (no whiskers): that x is the only tick, the group in the
            # middle third of the axis, so that the side-by-side spread reads as no spread.
            centre = math.log10(means[0])
            half = 3 * (math.log10(max(xs)) - centre)
            ax.set_xlim(10 ** (centre - half), 10 ** (centre + half))
            ax.xaxis.set_major_locator(FixedLocator([means[0]]))
            ax.xaxis.set_minor_locator(NullLocator())
        if log_y:
            _log_axis(ax, "y", [p[3] for p in points])
        return [p[0] for p in points]

    return _draw(
        file, cells, cells, out, panel, "marker", f"no finished run logged {x}", keep_empty
    )


def pareto_params(cells: pd.DataFrame, out: Path) -> Path:
    """Final score vs final parameter count per method (mean, 95 % intervals on both axes)."""
    return _pareto(cells, "params", "final parameters", "pareto_params.png", out).path or out


def pareto_flops(cells: pd.DataFrame, out: Path) -> Path:
    """Final score vs final forward FLOPs per sample per method."""
    label = "final forward FLOPs per sample"
    return _pareto(cells, "flops", label, "pareto_flops.png", out).path or out


def pareto_compute(cells: pd.DataFrame, out: Path) -> Path:
    """Final score vs total training compute (``train_flops``) per method."""
    label = "training compute (FLOPs)"
    return _pareto(cells, "train_flops", label, "pareto_compute.png", out).path or out


# ----------------------------------------------------------------------------- curves
_BAND_METHODS = 4  # shaded intervals only where a panel draws at most this many methods
_MARKS = 8  # markers per line on a long curve


def _curves(
    cells: pd.DataFrame,
    history: pd.DataFrame,
    column: str,
    file: str,
    out: Path,
    keep_empty: bool = True,
) -> Drawn:
    """Draw history ``column`` against epoch: mean line over finished seeds, 95 % band."""
    cells = _tidy(cells, CELL_COLUMNS)
    history = _finished(cells, _tidy(history, HISTORY_COLUMNS))

    def panel(ax: Axes, task: str, styles: dict[str, Style]) -> list[str]:
        rows = history[(history["task"] == task) & np.isfinite(history[column])]
        task_cells = cells[cells["task"] == task]
        higher = _higher_is_better(task_cells)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(_score_label(task_cells) if column == "score" else "parameters")
        if rows.empty:
            _note(ax, f"no {column} logged")
            return []
        # Bands stay inside the quantity's range (few seeds make Student-t intervals wide).
        top = 100.0 if column == "score" and higher else np.inf
        loss = column == "params" or (column == "score" and not higher)
        log = _wants_log(rows[column], loss=loss)
        methods = method_order(rows["method"].unique())
        for j, method in enumerate(methods):
            per_epoch = rows[rows["method"] == method].groupby("epoch")[column]
            epochs = np.asarray(sorted(per_epoch.groups), dtype=float)
            summary = np.array(
                [_mean_half(per_epoch.get_group(e)) for e in sorted(per_epoch.groups)]
            )
            mean, half = summary[:, 0], np.nan_to_num(summary[:, 1])
            style = styles[method]
            # A few markers per line, staggered between methods so they do not pile up.
            every = max(1, len(epochs) // _MARKS)
            ax.plot(
                epochs,
                mean,
                **_line_kwargs(style),
                ls=style.linestyle,
                lw=1.3 if style.filled else 1.1,
                markersize=4 if style.marker != "*" else 6,
                markevery=(j % every, every),
                zorder=3 if style.filled else 2,
            )
            if len(methods) <= _BAND_METHODS:
                low, high = np.clip(mean - half, 0.0, top), np.clip(mean + half, 0.0, top)
                if log:  # a band reaching 0 is cut at a tenth of the mean
                    low = np.where(low > 0, low, (1 - _CUT) * mean)
                ax.fill_between(epochs, low, high, color=style.colour, alpha=0.15, lw=0)
        if log:
            _log_axis(ax, "y", rows[column])
        return methods

    return _draw(file, cells, history, out, panel, "line", f"no {column} logged", keep_empty)


def score_vs_epoch(cells: pd.DataFrame, history: pd.DataFrame, out: Path) -> Path:
    """Score against epoch per method: mean over finished seeds with a 95 % band."""
    return _curves(cells, history, "score", "score_vs_epoch.png", out).path or out


def params_vs_epoch(cells: pd.DataFrame, history: pd.DataFrame, out: Path) -> Path:
    """Parameters against epoch per method (growth trajectories), mean with a 95 % band."""
    return _curves(cells, history, "params", "params_vs_epoch.png", out).path or out


# ----------------------------------------------------------------------------- bars
def _site_widths(
    cells: pd.DataFrame, widths: pd.DataFrame, out: Path, keep_empty: bool = True
) -> Drawn:
    cells = _tidy(cells, CELL_COLUMNS)
    widths = _finished(cells, _tidy(widths, WIDTH_COLUMNS))

    def panel(ax: Axes, task: str, styles: dict[str, Style]) -> list[str]:
        rows = widths[(widths["task"] == task) & widths["width"].notna()]
        ax.set_xlabel("site")
        ax.set_ylabel("final width")
        if rows.empty:
            _note(ax, "no widths logged")
            return []
        # Sites by name (a name is one layer's origin, whichever position it ends at), in the
        # order of their first position in any net.
        first = rows.groupby("site")["site_index"].min()
        sites = sorted(first.index, key=lambda site: (first[site], site))
        methods = method_order(rows["method"].unique())
        per_site = {
            site: [m for m in methods if ((rows["site"] == site) & (rows["method"] == m)).any()]
            for site in sites
        }
        bar = min(0.8 / max(len(names) for names in per_site.values()), 0.3)
        for position, site in enumerate(sites):
            names = per_site[site]
            for j, method in enumerate(names):
                values = rows.loc[(rows["site"] == site) & (rows["method"] == method), "width"]
                mean = float(values.mean())
                spread = [[mean - values.min()], [values.max() - mean]]
                ax.bar(
                    position + bar * (j - (len(names) - 1) / 2),
                    mean,
                    bar,
                    yerr=spread,
                    capsize=2,
                    error_kw={"elinewidth": 0.8, "ecolor": "0.2"},
                    **_bar_kwargs(styles[method]),
                )
        rotate = len(sites) > 4 or max(len(s) for s in sites) > 12
        ax.set_xticks(
            range(len(sites)),
            sites,
            rotation=30 if rotate else 0,
            ha="right" if rotate else "center",
        )
        ax.grid(False, axis="x")
        return methods

    return _draw("widths.png", cells, widths, out, panel, "bar", "no widths logged", keep_empty)


def site_widths(cells: pd.DataFrame, widths: pd.DataFrame, out: Path) -> Path:
    """Final width per site, grouped bars per method (mean over seeds, min–max whisker)."""
    return _site_widths(cells, widths, out).path or out


def _barh(ax: Axes, methods: list[str]) -> None:
    """Method names on the y axis, top to bottom."""
    ax.set_yticks(range(len(methods)), methods)
    ax.set_ylim(len(methods) - 0.5, -0.5)
    ax.grid(False, axis="y")


def _layers_inserted(
    cells: pd.DataFrame, events: pd.DataFrame, out: Path, keep_empty: bool = True
) -> Drawn:
    cells = _tidy(cells, CELL_COLUMNS)
    events = _finished(cells, _tidy(events, EVENT_COLUMNS))
    inserted = events[events["layers_inserted"] > 0]

    def panel(ax: Axes, task: str, styles: dict[str, Style]) -> list[str]:
        done = cells[(cells["task"] == task) & (cells["status"] == FINISHED)]
        ax.set_xlabel("layers inserted per run")
        if (inserted["task"] != task).all():
            _note(ax, "no method inserted a layer in this task")
            return []
        counts = events[events["task"] == task].groupby(["method", "seed"])["layers_inserted"].sum()
        methods = method_order(done["method"].unique())
        for i, method in enumerate(methods):
            seeds = done.loc[done["method"] == method, "seed"]
            values = [float(counts.get((method, seed), 0)) for seed in seeds]
            mean = sum(values) / len(values)
            spread = [[mean - min(values)], [max(values) - mean]]
            ax.barh(i, mean, xerr=spread, capsize=3, **_bar_kwargs(styles[method]))
        _barh(ax, methods)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        return methods

    return _draw(
        "depth.png", cells, events, out, panel, None, "no method inserted a layer", keep_empty
    )


def layers_inserted(cells: pd.DataFrame, events: pd.DataFrame, out: Path) -> Path:
    """Layers inserted per finished cell, one panel per task (horizontal bars, min–max)."""
    return _layers_inserted(cells, events, out).path or out


def _growth_share(cells: pd.DataFrame, out: Path, keep_empty: bool = True) -> Drawn:
    cells = _tidy(cells, CELL_COLUMNS)

    def panel(ax: Axes, task: str, styles: dict[str, Style]) -> list[str]:
        done = cells[(cells["task"] == task) & (cells["status"] == FINISHED)]
        total = done["train_seconds"] + done["growth_seconds"]
        share = (100 * done["growth_seconds"] / total.where(total > 0)).to_numpy(dtype=float)
        methods = method_order(done["method"].unique())
        ax.set_xlabel("time spent growing (% of train + growth seconds)")
        drew = []
        for i, method in enumerate(methods):
            mean, half = _mean_half(share[(done["method"] == method).to_numpy()])
            if math.isnan(mean):
                continue
            xerr = None if math.isnan(half) else [[min(half, mean)], [half]]
            ax.barh(i, mean, xerr=xerr, capsize=3, **_bar_kwargs(styles[method]))
            drew.append(method)
        if not drew:
            _note(ax, "no finished run logged its seconds")
            return []
        _barh(ax, methods)
        return drew

    reason = "no finished run logged its train and growth seconds"
    return _draw("growth_share.png", cells, cells, out, panel, None, reason, keep_empty)


def growth_share(cells: pd.DataFrame, out: Path) -> Path:
    """Share of wall time spent growing per method, one panel per task (horizontal bars)."""
    return _growth_share(cells, out).path or out


# ----------------------------------------------------------------------------- prediction
def split_function_preserving(events: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``events`` split into the others and the function-preserving ones (predicted exactly 0,
    realised within ``FUNCTION_PRESERVED`` of 0: the function unchanged up to rounding)."""
    preserving = (events["predicted_loss_change"] == 0) & (
        events["realised_loss_change"].abs() <= FUNCTION_PRESERVED
    )
    return events[~preserving], events[preserving]


def _preserving_note(methods: pd.Series) -> str:
    """ "function-preserving, not drawn: a 24, b 3" for the methods of those events."""
    counts = methods.value_counts()
    # A non-breaking space keeps each name with its count when the line is wrapped.
    named = ", ".join(f"{m}\u00a0{counts[m]}" for m in method_order(counts.index))
    return f"function-preserving events (not drawn): {named}" if named else ""


def _prediction(
    cells: pd.DataFrame, events: pd.DataFrame, out: Path, keep_empty: bool = True
) -> Drawn:
    cells = _tidy(cells, CELL_COLUMNS)
    events = _finished(cells, _tidy(events, EVENT_COLUMNS))
    both = ["predicted_loss_change", "realised_loss_change"]
    events = events[np.isfinite(events[both].astype(float)).all(axis=1)]
    kept, unchanged = split_function_preserving(events)

    def panel(ax: Axes, task: str, styles: dict[str, Style]) -> list[str]:
        rows = kept[kept["task"] == task]
        notes = [_preserving_note(unchanged.loc[unchanged["task"] == task, "method"])]
        # Growth predicts a loss decrease: both axes show −ΔL on a log scale, so predictions
        # spanning decades stay readable; events outside it (a rise, or no change) are counted.
        drops = -rows[both].to_numpy(dtype=float)
        shown = (drops > 0).all(axis=1)
        hidden = int((~shown).sum())
        if hidden:
            notes.append(f"{hidden} event(s) with a predicted or realised rise (not drawn)")
        notes = [note for note in notes if note]
        if not shown.any():
            _note(ax, "\n".join(["no predicted loss decrease", *notes]))
            return []
        drew = []
        for method in method_order(rows["method"].unique()):
            own = drops[(rows["method"] == method).to_numpy() & shown]
            if not len(own):
                continue
            style = styles[method]
            colour = style.colour
            ax.scatter(
                own[:, 0],
                own[:, 1],
                s=18,
                marker=style.marker,
                facecolors=colour if style.filled else "white",
                edgecolors=colour,
                alpha=0.8,
                zorder=3,
            )
            drew.append(method)
        lo, hi = float(drops[shown].min()), float(drops[shown].max())
        ax.plot([lo, hi], [lo, hi], color="black", ls="--", lw=0.8, zorder=2)
        _log_axis(ax, "x", drops[shown].ravel())
        _log_axis(ax, "y", drops[shown].ravel())
        # Counts go under the axis label: never over a point, never outside the figure.
        notes = [line for note in notes for line in textwrap.wrap(note, 72)]
        ax.set_xlabel("\n".join(["predicted loss decrease −ΔL", *notes]))
        ax.set_ylabel("realised loss decrease −ΔL")
        return drew

    def reason() -> str:
        note = _preserving_note(unchanged["method"])
        return "no growth event predicted and realised a loss decrease" + (
            f" ({note})" if note else ""
        )

    return _draw("prediction.png", cells, events, out, panel, "marker", reason(), keep_empty)


def prediction(cells: pd.DataFrame, events: pd.DataFrame, out: Path) -> Path:
    """Predicted vs realised loss change per growth event, for methods that predict."""
    return _prediction(cells, events, out).path or out


# ----------------------------------------------------------------------------- all
def draw_figures(
    cells: pd.DataFrame,
    history: pd.DataFrame,
    events: pd.DataFrame,
    widths: pd.DataFrame,
    out_dir: Path,
) -> list[Drawn]:
    """Draw the figures of ``FIGURES`` into ``out_dir``, one ``Drawn`` per figure in that order:
    its path, or None and the one-line reason it was left out (nothing to draw)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    drawers: dict[str, Callable[[Path], Drawn]] = {
        "pareto_params.png": lambda p: _pareto(
            cells, "params", "final parameters", p.name, p, False
        ),
        "pareto_flops.png": lambda p: _pareto(
            cells, "flops", "final forward FLOPs per sample", p.name, p, False
        ),
        "pareto_compute.png": lambda p: _pareto(
            cells, "train_flops", "training compute (FLOPs)", p.name, p, False
        ),
        "score_vs_epoch.png": lambda p: _curves(cells, history, "score", p.name, p, False),
        "params_vs_epoch.png": lambda p: _curves(cells, history, "params", p.name, p, False),
        "widths.png": lambda p: _site_widths(cells, widths, p, False),
        "depth.png": lambda p: _layers_inserted(cells, events, p, False),
        "growth_share.png": lambda p: _growth_share(cells, p, False),
        "prediction.png": lambda p: _prediction(cells, events, p, False),
    }
    return [drawers[info.file](out_dir / info.file) for info in FIGURES]


def draw_all(
    cells: pd.DataFrame,
    history: pd.DataFrame,
    events: pd.DataFrame,
    widths: pd.DataFrame,
    out_dir: Path,
) -> list[Path]:
    """The paths ``draw_figures`` drew, in ``FIGURES`` order (figures left out are skipped)."""
    drawn = draw_figures(cells, history, events, widths, out_dir)
    return [d.path for d in drawn if d.path is not None]
