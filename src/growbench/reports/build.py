"""Write a suite's report: tables from MLflow, then figures, rankings and claims from the tables.

``write_report`` reads the store (never trains), writes the four CSV tables into the report
folder, reads them back and builds everything from those files only (``build_report``), so the
report shows exactly what the tables hold and can be rebuilt from them alone. Nothing in it
depends on the clock or the machine, so the same runs give byte-identical files.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from growbench.benchmarks.suite import Suite
from growbench.benchmarks.tracking import best_runs
from growbench.reports import figures
from growbench.reports.claims import collect_claims, evaluate_claims
from growbench.reports.statistics import ranking
from growbench.reports.tables import (
    ReportTables,
    expected_cells,
    read_runs,
    read_tables,
    write_tables,
)

REFERENCES = ("static", "none")
REPORT_FILE = "report.md"
PAIRED_TEST = "p from a paired t-test over seeds (`scipy.stats.ttest_rel`, two-sided)"


def write_report(tracking_uri: str, suite: Suite, out: Path, progress: bool = False) -> Path:
    """Read the suite's runs into ``out``'s tables and build the report there."""
    writable_folder(out)
    if not best_runs(tracking_uri, suite.name):
        raise ValueError(
            f"no runs of suite {suite.name!r} in {tracking_uri}; run "
            f"`growbench run --suite {suite.name}` first (or pass --tracking-uri)"
        )
    write_tables(read_runs(tracking_uri, suite.name, expected_cells(suite), progress), out)
    return build_report(out, suite.name, suite.description)


def writable_folder(folder: Path) -> None:
    """Make ``folder`` (and its parents), or one ``ValueError`` saying why it cannot be."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(
            f"report folder {folder}: cannot be made ({exc.strerror or exc}); pass another --out"
        ) from None


def build_report(folder: Path, suite_name: str, description: str = "") -> Path:
    """Figures and ``report.md`` in ``folder`` from the CSV tables there (and nothing else)."""
    tables = read_tables(folder)
    ran = tables.cells[tables.cells["status"] != "UNSUPPORTED"]
    figures.draw_all(ran, tables.history, tables.events, tables.widths, folder)
    claims = evaluate_claims(ran, collect_claims())
    text = _markdown(tables, ran, claims, suite_name, description)
    path = folder / REPORT_FILE
    path.write_text(text, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- markdown
def _markdown(
    tables: ReportTables,
    ran: pd.DataFrame,
    claims: pd.DataFrame,
    suite_name: str,
    description: str,
) -> str:
    cells = tables.cells
    counts = cells["status"].value_counts()
    lines = [
        f"# growbench report: suite `{suite_name}`",
        "",
        *([description, ""] if description else []),
        f"Built by `growbench report --suite {suite_name}` from the runs in the MLflow store; "
        "rebuilding never trains. Every number below comes from the tables beside this file: "
        "[cells.csv](cells.csv) (one row per cell), [history.csv](history.csv) (per epoch), "
        "[events.csv](events.csv) (per growth event), [widths.csv](widths.csv) (final widths).",
        "",
        f"**Cells:** {len(cells)} — "
        + ", ".join(f"{counts[status]} {status.lower()}" for status in sorted(counts.index))
        + ". Intervals are 95 % Student-t intervals over seeds; comparisons are paired by seed "
        "(same seed: same initial weights and data order).",
        "",
    ]
    lines += _methods_section(ran)
    for spec in figures.FIGURES:
        lines += [f"## {spec.title}", "", f"![{spec.title}]({spec.file})", "", spec.caption, ""]
    lines += [
        "## Ranking per task",
        "",
        f"Δ = method − reference (`static`, `none`) in the task's score, {PAIRED_TEST}.",
        "",
    ]
    for task in sorted(ran["task"].unique()):
        lines += _ranking_section(ran, task)
    lines += _claims_section(claims)
    lines += _unfinished_section(cells)
    return "\n".join(lines).rstrip() + "\n"


def _methods_section(cells: pd.DataFrame) -> list[str]:
    """Each method of the report with its description and its notes (what is ours)."""
    from growbench.methods.registry import get_method

    lines = ["## Methods", ""]
    for name in sorted(cells["method"].dropna().unique()):
        try:
            cls = get_method(name)
        except (KeyError, ValueError):
            lines.append(f"- `{name}`: not registered where this report was built.")
            continue
        notes = "".join(f" *Note:* {note}" for note in getattr(cls, "notes", ()))
        description = (cls.description or "no description").rstrip(".")
        lines.append(f"- `{name}`: {description}.{notes}")
    return [*lines, ""]


def _ranking_section(cells: pd.DataFrame, task: str) -> list[str]:
    rows = cells[cells["task"] == task]
    score_name = rows["score_name"].iloc[0]
    better = "higher" if bool(rows["higher_is_better"].iloc[0]) else "lower"
    table = ranking(cells, task, REFERENCES)
    header = ["rank", "method", "seeds", f"{score_name} (95 % CI)", "params", "FLOPs"]
    header += ["train compute (FLOPs)", "growth time %"]
    references = [r for r in REFERENCES if f"diff_vs_{r}" in table.columns]
    header += [f"vs `{r}`: Δ (p)" for r in references]
    body = []
    for rank, row in enumerate(table.itertuples(index=False), start=1):
        finished = int(row.finished)
        seeds = f"{finished}" + "".join(
            f", {int(getattr(row, what))} {what}"
            for what in ("failed", "missing")
            if int(getattr(row, what))
        )
        cell = [
            str(rank) if finished else "—",
            f"`{row.method}`",
            seeds,
            _interval(row.score, row.low, row.high),
            _count(row.params),
            _count(row.flops),
            _count(row.train_flops),
            _number(100 * row.growth_share, ".1f"),
        ]
        for reference in references:
            diff, p = getattr(row, f"diff_vs_{reference}"), getattr(row, f"p_vs_{reference}")
            cell.append("—" if _missing(diff) else f"{diff:+.3g} ({_p(p)})")
        body.append(cell)
    return [f"### {task} — {score_name}, {better} is better", "", *_table(header, body), ""]


def _claims_section(claims: pd.DataFrame) -> list[str]:
    lines = [
        "## The papers' claims",
        "",
        "Each claim is declared beside its method's code (`claims` on the plugin class) and "
        "tested on the runs above, per task. Δ is oriented so that positive favours the claim's "
        "method; verdicts use the claim's own test and level.",
        "",
    ]
    if claims.empty:
        return [*lines, "No method declares a claim.", ""]
    header = ["paper", "claim", "task", "method vs baseline", "pairs", "Δ (95 % CI)", "p"]
    header += ["verdict"]
    body = []
    for row in claims.itertuples(index=False):
        body.append(
            [
                row.paper,
                row.claim,
                row.task,
                f"`{row.method}` vs `{row.baseline}`",
                str(int(row.n_pairs)),
                _interval(row.diff, row.diff_low, row.diff_high, signed=True),
                _p(row.p_value),
                f"**{row.verdict}**",
            ]
        )
    lines += _table(header, body)
    lines += ["", "Reasons:", ""]
    lines += [f"- {row.claim} ({row.task}): {row.verdict_reason}" for row in claims.itertuples()]
    return [*lines, ""]


def _unfinished_section(cells: pd.DataFrame) -> list[str]:
    left = cells[cells["status"] != "FINISHED"]
    lines = ["## Cells without a finished run", ""]
    if left.empty:
        return [*lines, "None: every cell finished.", ""]
    header = ["task", "method", "seed", "status", "MLflow run"]
    body = [
        [row.task, f"`{row.method}`", str(row.seed), row.status, row.run_id or "—"]
        for row in left.itertuples(index=False)
    ]
    note = (
        "FAILED runs keep their traceback as the artifact `traceback.txt`; MISSING cells have no "
        "run yet (run the suite again to train only those); UNSUPPORTED cells are tasks whose "
        "layers the method cannot grow."
    )
    return [*lines, *_table(header, body), "", note, ""]


# ------------------------------------------------------------------------------ format
def _table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + [
        "| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in body
    ]


def _missing(value: float | None) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _number(value: float, spec: str = ".4g") -> str:
    return "—" if _missing(value) else format(value, spec)


def _interval(mean: float, low: float, high: float, signed: bool = False) -> str:
    if _missing(mean):
        return "—"
    sign = "+" if signed else ""
    text = format(mean, f"{sign}.4g")
    if not (_missing(low) or _missing(high)):
        text += f" ({low:{sign}.4g} … {high:{sign}.4g})"
    return text


def _count(value: float) -> str:
    if _missing(value):
        return "—"
    for size, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:.3g}{suffix}"
    return f"{value:.0f}"


def _p(value: float) -> str:
    if _missing(value):
        return "p n/a"
    return "p < 0.001" if value < 1e-3 else f"p = {value:.3f}"
