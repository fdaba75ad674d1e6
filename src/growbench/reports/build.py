"""Write a suite's report: tables from MLflow, then figures, rankings and claims from the tables.

``write_report`` reads the store (never trains), writes the four CSV tables into the report
folder, reads them back and builds everything from those files only (``build_report``), so the
report shows exactly what the tables hold and can be rebuilt from them alone. Nothing in it
depends on the clock or the machine, so the same runs give byte-identical files.
"""

from __future__ import annotations

import json
import math
import shlex
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from growbench.benchmarks import health
from growbench.benchmarks.suite import Suite, packaged_suites, resolve_suite_path
from growbench.benchmarks.tracking import best_runs
from growbench.reports import figures
from growbench.reports.claims import (
    INCONCLUSIVE,
    NOT_RUN,
    collect_claims,
    compare_verdicts,
    evaluate_claims,
)
from growbench.reports.statistics import MAX_SEEDS, flagged, flagged_count, ranking
from growbench.reports.tables import (
    ReportTables,
    expected_cells,
    read_runs,
    read_tables,
    write_tables,
)

REFERENCES = ("static", "none")
REPORT_FILE = "report.md"
COMPARE_FOLDER = "compare"  # the tables of a second store of the same suite (``--compare-uri``)
PAIRED_TEST = "p from a paired t-test over seeds (`scipy.stats.ttest_rel`, two-sided)"


def write_report(
    tracking_uri: str,
    suite: Suite,
    out: Path,
    progress: bool = False,
    command: str = "",
    compare_uri: str | None = None,
) -> Path:
    """Read the suite's runs into ``out``'s tables and build the report there.

    ``command`` is the command line that rebuilds the report, printed in it (default: the one
    ``report_command`` gives for the suite). ``compare_uri``, a second store holding the same
    suite run elsewhere (another machine or thread count), adds its tables under
    ``out/compare/`` and a section on how many verdicts differ between the two."""
    stores = [(tracking_uri, out)]
    if compare_uri is not None:
        stores.append((compare_uri, out / COMPARE_FOLDER))
    for uri, _ in stores:  # before any folder is made: a refused report leaves nothing behind
        if not best_runs(uri, suite.name):
            raise ValueError(
                f"no runs of suite {suite.name!r} in {uri}; run "
                f"`growbench run --suite {suite_argument(suite)}` first (or pass --tracking-uri)"
            )
    for _, folder in stores:
        writable_folder(folder)
    for uri, folder in stores:
        expected = expected_cells(suite, uri)
        write_tables(read_runs(uri, suite.name, expected, progress), folder)
    return build_report(out, suite.name, suite.description, command or report_command(suite))


def suite_argument(suite: Suite) -> str:
    """What to pass as ``--suite`` to name this suite again: its name when it is the packaged
    suite of that name, else the file it was read from."""
    if suite.name in packaged_suites() and Path(suite.source) == resolve_suite_path(suite.name):
        return suite.name
    if suite.source.startswith("<"):  # parsed from a string: no file to name
        return suite.name
    return shlex.quote(suite.source)


def report_command(
    suite: Suite,
    methods: Sequence[str] | None = None,
    tasks: Sequence[str] | None = None,
    compared: bool = False,
) -> str:
    """The ``growbench report`` command that builds this report, with its filters (the stores
    are not named: they are paths on the machine that made it)."""
    parts = ["growbench report --suite", suite_argument(suite)]
    if methods:
        parts += ["--methods", ",".join(methods)]
    if tasks:
        parts += ["--tasks", ",".join(tasks)]
    if compared:
        parts.append("--compare-uri <second store>")
    return " ".join(parts)


def writable_folder(folder: Path) -> None:
    """Make ``folder`` (and its parents), or one ``ValueError`` saying why it cannot be."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(
            f"report folder {folder}: cannot be made ({exc.strerror or exc}); pass another --out"
        ) from None


def build_report(folder: Path, suite_name: str, description: str = "", command: str = "") -> Path:
    """Figures and ``report.md`` in ``folder`` from the CSV tables there (and nothing else).
    ``command`` (default ``growbench report --suite <suite_name>``) is printed as the command
    that rebuilds it."""
    tables = read_tables(folder)
    ran = tables.cells[tables.cells["status"] != "UNSUPPORTED"]
    figures.draw_all(ran, tables.history, tables.events, tables.widths, folder)
    claims = evaluate_claims(ran, collect_claims())
    command = command or f"growbench report --suite {suite_name}"
    text = _markdown(tables, ran, claims, suite_name, description, command)
    if (folder / COMPARE_FOLDER / "cells.csv").exists():
        other = read_tables(folder / COMPARE_FOLDER).cells
        other = other[other["status"] != "UNSUPPORTED"]
        text += "\n" + "\n".join(
            _stability_section(claims, evaluate_claims(other, collect_claims()), ran, other)
        )
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
    command: str,
) -> str:
    cells = tables.cells
    counts = cells["status"].value_counts()
    lines = [
        f"# growbench report: suite `{suite_name}`",
        "",
        *([description, ""] if description else []),
        f"Built by `{command}` from the runs in the MLflow store; "
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
        f"Δ = method − reference (`static`, `none`) in the task's score, {PAIRED_TEST}. "
        "Size / budget: the final size (in the budget's metric) as a share of the budget's "
        "limit, mean over finished seeds; a method that stops short of it is compared at a "
        "smaller size than `static` (see its matched static net `static@<method>` where the "
        "suite runs one), and its cells below 90 % are counted.",
        "",
    ]
    for task in sorted(ran["task"].unique()):
        lines += _ranking_section(ran, task)
    lines += _health_section(ran, tables.events)
    lines += _claims_section(claims, ran)
    lines += _unfinished_section(cells)
    return "\n".join(lines).rstrip() + "\n"


def _methods_section(cells: pd.DataFrame) -> list[str]:
    """Each method of the report with its description and its notes (what is ours); a variant
    names the method it runs and its options."""
    from growbench.methods.registry import get_method

    lines = ["## Methods", ""]
    for name in sorted(cells["method"].dropna().unique()):
        own = cells[cells["method"] == name]
        base = next((b for b in own.get("base_method", ()) if b), name)
        options = next((o for o in own.get("variant_options", ()) if o), "")
        variant = ""
        if base != name:
            settings = ", ".join(f"{k} = {v!r}" for k, v in json.loads(options or "{}").items())
            variant = f"variant of `{base}`" + (f" with {settings}" if settings else "") + ". "
        try:
            cls = get_method(base)
        except (KeyError, ValueError):
            lines.append(f"- `{name}`: {variant}not registered where this report was built.")
            continue
        notes = "".join(f" *Note:* {note}" for note in getattr(cls, "notes", ()))
        description = (cls.description or "no description").rstrip(".")
        lines.append(f"- `{name}`: {variant}{description}.{notes}")
    return [*lines, ""]


def _ranking_section(cells: pd.DataFrame, task: str) -> list[str]:
    rows = cells[cells["task"] == task]
    score_name = rows["score_name"].iloc[0]
    better = "higher" if bool(rows["higher_is_better"].iloc[0]) else "lower"
    table = ranking(cells, task, REFERENCES)
    header = ["rank", "method", "seeds", f"{score_name} (95 % CI)", "params", "FLOPs"]
    header += ["size / budget", "train compute (FLOPs)", "growth time %"]
    references = [r for r in REFERENCES if f"diff_vs_{r}" in table.columns]
    header += [f"vs `{r}`: Δ (p)" for r in references]
    body = []
    ranks = shared_ranks(table["score"])
    for rank, row in zip(ranks, table.itertuples(index=False)):
        finished = int(row.finished)
        seeds = f"{finished}" + "".join(
            f", {int(getattr(row, what))} {what}"
            for what in ("failed", "missing", "flagged")
            if int(getattr(row, what))
        )
        cell = [
            str(rank) if finished and rank else "—",
            f"`{row.method}`",
            seeds,
            _interval(row.score, row.low, row.high),
            _count(row.params),
            _count(row.flops),
            _budget_share(row.budget_fraction, int(row.short_of_budget)),
            _count(row.train_flops),
            _number(100 * row.growth_share, ".1f"),
        ]
        for reference in references:
            diff, p = getattr(row, f"diff_vs_{reference}"), getattr(row, f"p_vs_{reference}")
            cell.append("—" if _missing(diff) else f"{diff:+.3g} ({_p(p)})")
        body.append(cell)
    return [f"### {task} — {score_name}, {better} is better", "", *_table(header, body), ""]


def shared_ranks(scores: pd.Series) -> list[int]:
    """Competition ranks of ``scores`` sorted best first ("1, 2, 2, 4"): equal means share a
    rank; a missing score gets 0 (no rank)."""
    ranks: list[int] = []
    for position, score in enumerate(scores, start=1):
        if _missing(score):
            ranks.append(0)
        elif ranks and ranks[-1] and score == scores.iloc[position - 2]:
            ranks.append(ranks[-1])
        else:
            ranks.append(position)
    return ranks


def _health_section(cells: pd.DataFrame, events: pd.DataFrame) -> list[str]:
    """Per task: each growing method's events that destabilised training or raised the loss on
    the probe, and its cells with a health flag (the flags in words)."""
    lines = [
        "## Growth health",
        "",
        "A growth event is *destabilised* when the next epoch's training loss is not finite or "
        f"exceeds {health.DESTABILISED_FACTOR:g}× the loss of the epoch before it; *probe up*: "
        "the loss on the probe (training samples outside the statistics and held-out sets, "
        "never seen by the method) rose across the step by more than "
        f"{100 * health.PROBE_TOLERANCE:g} % of itself. A cell is flagged when a growth "
        "event destabilised it, when it ends within "
        f"{100 * health.CHANCE_MARGIN:g} points of chance, or when its final test loss exceeds "
        f"{health.WORSE_FACTOR:g}× its untrained start's. Flagged cells count as *flagged* in "
        "the rankings' seeds and are marked ⚠ in the claims.",
        "",
    ]
    grew = events[events["grew"].astype(bool)] if not events.empty else events
    for task in sorted(cells["task"].unique()):
        rows, body = cells[cells["task"] == task], []
        for method in sorted(rows["method"].unique()):
            own = grew[(grew["task"] == task) & (grew["method"] == method)] if len(grew) else grew
            done = rows[(rows["method"] == method) & (rows["status"] == "FINISHED")]
            marked = done[flagged(done)]
            if own.empty and marked.empty:
                continue
            before = pd.to_numeric(own["probe_loss_before"], errors="coerce")
            after = pd.to_numeric(own["probe_loss_after"], errors="coerce")
            measured = int((before.notna() & after.notna()).sum())
            words = "; ".join(
                f"seed {int(cell.seed)}: {cell.health}" for cell in marked.itertuples()
            )
            body.append(
                [
                    f"`{method}`",
                    str(len(own)),
                    str(int(own["destabilised"].astype(bool).sum())),
                    f"{int((after > before * (1 + health.PROBE_TOLERANCE)).sum())} of {measured}"
                    if measured
                    else "—",
                    f"{len(marked)} of {len(done)}" + (f" ({words})" if words else ""),
                ]
            )
        if body:
            header = ["method", "growth events", "destabilised", "probe up", "cells flagged"]
            lines += [f"### {task}", "", *_table(header, body), ""]
    return lines


def _claims_section(claims: pd.DataFrame, cells: pd.DataFrame | None = None) -> list[str]:
    lines = [
        "## The papers' claims",
        "",
        "Each claim is declared beside its method's code (`claims` on the plugin class) and "
        "tested on the runs above, per task, with the claim's own level. Δ is oriented so that "
        "positive favours the claim's method. **reproduced**: the one-sided paired test for the "
        "claim rejects; **contradicted**: the test in the opposite direction rejects (the method "
        "is significantly worse, or for a non-inferiority claim its interval lies wholly beyond "
        "the margin); **inconclusive**: neither, and the last column says what would decide it: "
        "the smallest advantage beyond the claim's boundary the test detects with 80 % power at "
        "the observed paired spread, and the seeds that would decide the observed effect.",
        "",
    ]
    if claims.empty:
        return [*lines, "No method declares a claim.", ""]
    tested = claims[claims["verdict"] != NOT_RUN]
    header = ["paper", "claim", "task", "method vs baseline", "pairs", "Δ (95 % CI)", "p"]
    header += ["verdict", "80 % power: detectable Δ; seeds to decide"]
    body = []
    for row in tested.itertuples(index=False):
        body.append(
            [
                row.paper,
                row.claim,
                row.task,
                f"`{row.method}` vs `{row.baseline}`",
                str(int(row.n_pairs)),
                _interval(row.diff, row.diff_low, row.diff_high, signed=True),
                _p(row.p_value),
                f"**{row.verdict}**" + _flag_mark(cells, row),
                _power(row),
            ]
        )
    if body:
        lines += _table(header, body)
        lines += ["", "Reasons:", ""]
        lines += [
            f"- {row.claim} ({row.task}): {row.verdict_reason}" for row in tested.itertuples()
        ]
        lines.append("")
    untested = claims[claims["verdict"] == NOT_RUN]
    if not untested.empty:
        absent = ", ".join(
            f"{row.claim} (`{row.method}` vs `{row.baseline}`)" for row in untested.itertuples()
        )
        lines += [f"Not tested, for want of cells of both methods in this suite: {absent}.", ""]
    return lines


def _flag_mark(cells: pd.DataFrame | None, claim: object) -> str:
    """ " ⚠ N flagged" when cells of the claim's method or baseline on its task carry a health
    flag (the Growth health section says which)."""
    if cells is None:
        return ""
    rows = cells[
        (cells["task"] == claim.task)
        & cells["method"].isin([claim.method, claim.baseline])
        & (cells["status"] == "FINISHED")
    ]
    count = flagged_count(rows)
    return f" ⚠ {count} flagged" if count else ""


def _stability_section(
    claims: pd.DataFrame, other_claims: pd.DataFrame, ran: pd.DataFrame, other: pd.DataFrame
) -> list[str]:
    """How many verdicts the same suite gives on a second store (``compare/``), and which."""
    compared = compare_verdicts(claims, other_claims)
    moved = compared[compared["moved"]]
    flipped = int(compared["flipped"].sum())
    lines = [
        "## Verdict stability",
        "",
        f"The same suite, run a second time into another store ([compare/](compare/cells.csv)): "
        f"here on {_machine(ran)}; there on {_machine(other)}. Float reductions differ between "
        "thread counts and machines, so scores move a little; a verdict should not. "
        f"**{len(moved)} of {len(compared)}** (claim, task) verdicts differ; **{flipped}** "
        "flip between *reproduced* and *contradicted*.",
        "",
    ]
    if moved.empty:
        return lines
    header = ["claim", "task", "verdict here", "p here", "verdict there", "p there"]
    body = [
        [
            row.claim,
            row.task,
            row.verdict,
            _p(row.p_value),
            row.other_verdict,
            _p(row.other_p_value),
        ]
        for row in moved.itertuples(index=False)
    ]
    return [*lines, *_table(header, body), ""]


def _machine(cells: pd.DataFrame) -> str:
    """The machines a table's cells ran on, as "N torch thread(s), CPU" (each kind once)."""
    recorded = cells.dropna(subset=["threads"]) if "threads" in cells.columns else cells[:0]
    if recorded.empty:
        return "an unrecorded machine"
    kinds = recorded[["threads", "cpu"]].drop_duplicates()
    return "; ".join(
        f"{int(threads)} torch thread{'s' * (int(threads) != 1)}, {cpu}"
        for threads, cpu in kinds.itertuples(index=False)
    )


def _power(row: object) -> str:
    if row.verdict != INCONCLUSIVE:
        return "—"
    needed = row.seeds_needed
    seeds = f"> {MAX_SEEDS}" if _missing(needed) else f"{int(needed)}"
    return f"{_number(row.mde, '.3g')}; {seeds} seeds"


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


def _budget_share(fraction: float, short: int) -> str:
    """The mean final size as a % of the budget, flagging the cells that ended below 90 %."""
    if _missing(fraction):
        return "—"
    return f"{100 * fraction:.0f} %" + (f" ({short} below 90 %)" if short else "")


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
