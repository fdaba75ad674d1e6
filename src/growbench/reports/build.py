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
    CONTRADICTED,
    INCONCLUSIVE,
    NOT_ENOUGH,
    NOT_RUN,
    REPRODUCED,
    collect_claims,
    compare_verdicts,
    evaluate_claims,
)
from growbench.reports.statistics import (
    ACCURACY_MARGIN,
    COSTS,
    LOSS_MARGIN,
    MAX_SEEDS,
    flagged,
    flagged_count,
    is_matched,
    matched_comparison,
    near_best,
    ranking,
    tied,
)
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
    selection: str = "",
) -> Path:
    """Read the suite's runs into ``out``'s tables and build the report there.

    ``command`` is the command line that rebuilds the report, printed in it (default: the one
    ``report_command`` gives for the suite). ``compare_uri``, a second store holding the same
    suite run elsewhere (another machine or thread count), adds its tables under
    ``out/compare/`` and a section on how many verdicts differ between the two. ``suite`` may be
    a selection of a suite (``Suite.select``): only its cells are read, and ``selection``
    (``selection_note``) says so at the top of the report."""
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
    command = command or report_command(suite)
    return build_report(out, suite.name, suite.description, command, selection)


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
    seeds: int | None = None,
) -> str:
    """The ``growbench report`` command that builds this report, with its filters (the stores
    are not named: they are paths on the machine that made it)."""
    parts = ["growbench report --suite", suite_argument(suite)]
    if methods:
        parts += ["--methods", ",".join(methods)]
    if tasks:
        parts += ["--tasks", ",".join(tasks)]
    if seeds is not None:
        parts += ["--seeds", str(seeds)]
    if compared:
        parts.append("--compare-uri <second store>")
    return " ".join(parts)


def selection_note(full: Suite, chosen: Suite) -> str:
    """One line saying how ``chosen`` (``full.select(...)``) narrows the suite ``full``; "" when
    it runs the same methods, tasks and seeds."""
    parts = []
    if set(chosen.methods) != set(full.methods):
        names = ", ".join(f"`{m}`" for m in chosen.methods)
        parts.append(f"methods {names} ({len(chosen.methods)} of {len(full.methods)})")
    tasks = [task.name for task in chosen.tasks]
    if set(tasks) != {task.name for task in full.tasks}:
        parts.append(f"tasks {', '.join(tasks)} ({len(tasks)} of {len(full.tasks)})")
    if set(chosen.seeds) != set(full.seeds):
        parts.append(f"seeds {_seed_range(chosen.seeds)} (the suite's: {_seed_range(full.seeds)})")
    if not parts:
        return ""
    return (
        f"**Selection:** this report covers only {'; '.join(parts)}, with their matched static "
        "nets; the suite's other cells are left out, not counted missing."
    )


def _seed_range(seeds: Sequence[int]) -> str:
    ordered = sorted(seeds)
    if len(ordered) > 2 and ordered == list(range(ordered[0], ordered[-1] + 1)):
        return f"{ordered[0]}–{ordered[-1]}"
    return ", ".join(str(seed) for seed in ordered)


def writable_folder(folder: Path) -> None:
    """Make ``folder`` (and its parents), or one ``ValueError`` saying why it cannot be."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(
            f"report folder {folder}: cannot be made ({exc.strerror or exc}); pass another --out"
        ) from None


def build_report(
    folder: Path, suite_name: str, description: str = "", command: str = "", selection: str = ""
) -> Path:
    """Figures and ``report.md`` in ``folder`` from the CSV tables there (and nothing else).
    ``command`` (default ``growbench report --suite <suite_name>``) is printed as the command
    that rebuilds it; ``selection``, when the tables hold a selection of the suite, is the line
    under the title that says which (``selection_note``)."""
    tables = read_tables(folder)
    ran = tables.cells[tables.cells["status"] != "UNSUPPORTED"]
    drawn = figures.draw_figures(ran, tables.history, tables.events, tables.widths, folder)
    claims = evaluate_claims(ran, collect_claims())
    command = command or f"growbench report --suite {suite_name}"
    text = _markdown(tables, ran, claims, suite_name, description, command, selection, drawn)
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
    selection: str = "",
    drawn: Sequence[figures.Drawn] = (),
) -> str:
    cells = tables.cells
    counts = cells["status"].value_counts()
    lines = [
        f"# growbench report: suite `{suite_name}`",
        "",
        *([selection, ""] if selection else []),
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
    lines += _summary_section(ran, claims)
    lines += _methods_section(ran)
    for figure in drawn:
        spec = figure.info
        if figure.path is None:  # nothing to draw: one line says why
            lines += [f"## {spec.title}", "", f"Not drawn: {figure.reason}.", ""]
            continue
        lines += [f"## {spec.title}", "", f"![{spec.title}]({spec.file})", "", spec.caption, ""]
    lines += [
        "## Ranking per task",
        "",
        f"Δ = method − reference (`static`, `none`) in the task's score, {PAIRED_TEST}. "
        "Size / budget: the final size (in the budget's metric) as a share of the budget's "
        "limit, mean over finished seeds; a method that stops short of it is compared at a "
        "smaller size than `static` (see [Matched static nets](#matched-static-nets) where the "
        "suite runs them), and its cells below 90 % are counted. Pareto front: the costs "
        f"({_cost_names()}) against which the method's mean score lies on the Pareto front "
        "(see [Summary](#summary)). Matched static nets are references, not ranked.",
        "",
    ]
    for task in sorted(ran["task"].unique()):
        lines += _ranking_section(ran, task)
    lines += _matched_section(ran)
    lines += _health_section(ran, tables.events)
    lines += _claims_section(claims, ran)
    lines += _unfinished_section(cells)
    return "\n".join(lines).rstrip() + "\n"


def _methods_section(cells: pd.DataFrame) -> list[str]:
    """Each method of the report with its description and its notes (what is ours); a variant
    names the method it runs and its options; the matched static nets are one line."""
    from growbench.methods.registry import get_method

    lines = ["## Methods", ""]
    names = sorted(cells["method"].dropna().unique())
    for name in (n for n, m in zip(names, is_matched(names)) if not m):
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
    matched = [n for n, m in zip(names, is_matched(names)) if m]
    if matched:
        lines.append(
            f"- {', '.join(f'`{n}`' for n in matched)}: matched static nets, references rather "
            f"than methods. `static@<method>` is the start net trained from scratch, like "
            "`static`, at the final widths that `<method>`'s cell of the same task and seed "
            "reached: one net per cell, so its widths vary from seed to seed (`widths.csv`). "
            "They are compared with their methods in [Matched static nets](#matched-static-nets)."
        )
    return [*lines, ""]


def _ranking_section(cells: pd.DataFrame, task: str) -> list[str]:
    rows = cells[cells["task"] == task]
    score_name = rows["score_name"].iloc[0]
    better = "higher" if bool(rows["higher_is_better"].iloc[0]) else "lower"
    table = ranking(cells, task, REFERENCES)
    header = ["rank", "method", "seeds", f"{score_name} (95 % CI)", "Pareto front", "params"]
    header += ["FLOPs"]
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
        fronts = [COST_LABELS[c] for c in COSTS if bool(getattr(row, f"pareto_{c}"))]
        cell = [
            str(rank) if finished and rank else "—",
            f"`{row.method}`",
            seeds,
            _interval(row.score, row.low, row.high),
            ", ".join(fronts) or "—",
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


# The costs of ``statistics.COSTS`` as the report's tables name them.
COST_LABELS = {"params": "params", "flops": "FLOPs", "train_flops": "compute"}


def _cost_names() -> str:
    return ", ".join(f"{COST_LABELS[c]} = {name}" for c, name in COSTS.items())


def _margin_text(higher: bool) -> str:
    if higher:
        unit = " point" + "s" * (ACCURACY_MARGIN != 1)
        return f"{ACCURACY_MARGIN:g}{unit}"
    return f"{100 * LOSS_MARGIN:g} %"


def _summary_section(cells: pd.DataFrame, claims: pd.DataFrame) -> list[str]:
    """Per task, the Pareto fronts of mean final score against each cost, the best method and
    the cheapest near it; then the claims' verdicts counted."""
    lines = [
        "## Summary",
        "",
        "Per task, each method's final score (mean over finished seeds) against each cost "
        f"({', '.join(COSTS.values())}: the mean final parameters, forward FLOPs per sample and "
        "total training FLOPs). A method is on the **Pareto front** of a cost when no other "
        "method has a mean score at least as good at a mean cost no greater, with a better "
        "score or a lower cost (equal points share the front); the front is listed from the "
        "cheapest up, each method with its cost. **Best**: the best mean score at the suite's "
        "budget. **Near the best**: a mean within "
        f"{_margin_text(True)} of the best accuracy (test accuracy %), or within "
        f"{_margin_text(False)} of the best loss (test loss); the cheapest such method per "
        "cost is named. References `static` (the budget-size net trained from scratch) and "
        "`none` (the start net, never grown) take part; matched static nets do not. Means "
        "only: the rankings below give intervals and paired tests.",
        "",
    ]
    header = ["task", "best (mean score)"] + [f"Pareto front: {name}" for name in COSTS.values()]
    body, sentences = [], []
    for task in sorted(cells["task"].unique()):
        rows = cells[cells["task"] == task]
        if is_matched(rows["method"]).all():
            continue
        table = ranking(cells, task, REFERENCES)
        table = table[table["score"].notna()]
        if table.empty:
            continue
        higher = bool(rows["higher_is_better"].iloc[0])
        score_name = rows["score_name"].iloc[0]
        best_score, threshold, near = near_best(table["score"], higher)
        best = table[[tied(score, best_score) for score in table["score"]]]["method"]
        best_text = ", ".join(f"`{m}`" for m in best) + f" ({best_score:.4g})"
        fronts = []
        for cost in COSTS:
            front = table[table[f"pareto_{cost}"]].sort_values([cost, "method"])
            fronts.append(
                ", ".join(f"`{r.method}` {_count(getattr(r, cost))}" for r in front.itertuples())
            )
        body.append([task, best_text, *fronts])
        sentences.append(
            _summary_sentence(task, score_name, higher, table[near], best_text, threshold)
        )
    if body:
        lines += [*_table(header, body), "", *sentences, ""]
    lines += _verdict_counts(claims)
    return lines


def _summary_sentence(
    task: str, score_name: str, higher: bool, near: pd.DataFrame, best: str, threshold: float
) -> str:
    """One task's line: its best method, and the cheapest near it in each cost."""
    better = "higher" if higher else "lower"
    bound = "≥" if higher else "≤"
    cheapest: dict[str, list[str]] = {}
    for cost, name in COSTS.items():
        priced = near[near[cost].notna()]
        if priced.empty:
            continue
        low = priced[cost].min()
        tie = priced[[tied(value, low) for value in priced[cost]]]  # the cheapest, and ties
        top = tie["score"].max() if higher else tie["score"].min()
        names = sorted(m for m, v in zip(tie["method"], tie["score"]) if tied(v, top))
        key = ", ".join(f"`{m}`" for m in names)
        cheapest.setdefault(key, []).append(f"{name} ({_count(low)})")
    parts = [f"{methods} in {_and(costs)}" for methods, costs in cheapest.items()]
    return (
        f"- **{task}** ({score_name}, {better} is better): best {best}; within "
        f"{_margin_text(higher)} of it ({bound} {threshold:.4g}) the cheapest is "
        f"{'; '.join(parts) or 'none'}."
    )


def _and(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _verdict_counts(claims: pd.DataFrame) -> list[str]:
    """The claims' verdicts counted (the claims section below has them one by one)."""
    if claims.empty:
        return ["**Claims:** no method declares a claim.", ""]
    verdicts = claims["verdict"].value_counts()
    tested = claims[claims["verdict"] != NOT_RUN]
    order = [REPRODUCED, CONTRADICTED, INCONCLUSIVE, NOT_ENOUGH]
    order += sorted(v for v in verdicts.index if v not in (*order, NOT_RUN))
    counts = ", ".join(f"{int(verdicts[v])} {v}" for v in order if v in verdicts.index)
    text = f"**Claims:** {len(tested)} (claim, task) verdicts: {counts or 'none'}"
    if NOT_RUN in verdicts.index:
        untested = int(verdicts[NOT_RUN])
        text += f"; {untested} claim{'s' * (untested != 1)} not tested (what they need was not run)"
    return [text + " — see [The papers' claims](#the-papers-claims).", ""]


def _matched_section(cells: pd.DataFrame) -> list[str]:
    """Each growing method against its matched static nets, per task: paired by seed."""
    tables = [(task, matched_comparison(cells, task)) for task in sorted(cells["task"].unique())]
    tables = [(task, table) for task, table in tables if not table.empty]
    if not tables:
        return []
    lines = [
        "## Matched static nets",
        "",
        "`static@<method>` is the start net trained from scratch at the final widths that "
        "`<method>`'s cell of the same task and seed reached (one net per cell): the same "
        "architecture, without growing. Δ = method − its matched net, mean over the seeds where "
        f"both finished, with its 95 % interval, {PAIRED_TEST}; a positive Δ in accuracy (a "
        "negative one in loss) means growing beat training that architecture from scratch. "
        "Params: mean final parameters over those seeds (equal by construction). A cell that "
        "inserted layers has no matched net.",
        "",
    ]
    for task, table in tables:
        rows = cells[cells["task"] == task]
        score_name = rows["score_name"].iloc[0]
        better = "higher" if bool(rows["higher_is_better"].iloc[0]) else "lower"
        header = ["method", "matched net", "pairs", score_name, f"matched net's {score_name}"]
        header += ["Δ (95 % CI)", "p", "params"]
        body = [
            [
                f"`{row.method}`",
                f"`{row.matched}`",
                str(int(row.pairs)),
                _number(row.score),
                _number(row.matched_score),
                _interval(row.diff, row.low, row.high, signed=True),
                _p(row.p),
                _count(row.params),
            ]
            for row in table.itertuples(index=False)
        ]
        lines += [f"### {task} — {score_name}, {better} is better", "", *_table(header, body), ""]
    return lines


def shared_ranks(scores: pd.Series) -> list[int]:
    """Competition ranks of ``scores`` sorted best first ("1, 2, 2, 4"): equal means (up to
    float rounding, ``statistics.tied``) share a rank; a missing score gets 0 (no rank)."""
    ranks: list[int] = []
    for position, score in enumerate(scores, start=1):
        if _missing(score):
            ranks.append(0)
        elif ranks and ranks[-1] and tied(score, scores.iloc[position - 2]):
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
        "A growth event is *destabilised* when the next epoch's training or test loss is not "
        f"finite or exceeds {health.DESTABILISED_FACTOR:g}× the same loss of the epoch before "
        "it; *probe up*: "
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
    # the claims' levels: one for all gives the interval and bounds in numbers (90 %, 95 %)
    levels = sorted(set(claims.loc[claims["verdict"] != NOT_RUN, "alpha"])) if len(claims) else []
    alpha = f"{levels[0]:g}" if len(levels) == 1 else "its level α"
    bound = f"{100 * (1 - levels[0]):g} %" if len(levels) == 1 else "1 − α"
    ci = f"{100 * (1 - 2 * levels[0]):g} %" if len(levels) == 1 else "1 − 2α"
    lines = [
        "## The papers' claims",
        "",
        "Each claim is declared beside its method's code (`claims` on the plugin class) and "
        "tested on the runs above, per task, in the metric the row names, by two one-sided paired "
        f"t-tests at the claim's level ({alpha}): one for the claim (Δ above the boundary), one "
        "for its opposite (Δ below it). Δ is oriented so that positive favours the claim's "
        "method; the boundary is 0, or for a non-inferiority claim minus its margin (a fraction "
        f"of the baseline's mean). The interval beside Δ is the {ci} interval whose ends are the "
        f"one-sided {bound} confidence bounds those tests use. **reproduced**: the claim's test "
        "rejects, i.e. the lower bound lies above the boundary; **contradicted**: the opposite "
        "test rejects, i.e. the upper bound lies below it (the method is significantly worse, or "
        "for a non-inferiority claim worse by more than the margin); **inconclusive**: neither, "
        "the interval holds the boundary, and the last column says what would decide it: the "
        "smallest advantage beyond the boundary the test detects with 80 % power at the observed "
        "paired spread, and the seeds that would decide the observed effect. p is the one-sided p "
        "of the test that decided the verdict (the opposite test's for a contradicted row, the "
        "claim's otherwise); each reason below gives both.",
        "",
    ]
    if claims.empty:
        return [*lines, "No method declares a claim.", ""]
    tested = claims[claims["verdict"] != NOT_RUN]
    header = ["paper", "claim", "task", "method vs baseline", "metric", "pairs"]
    header += [f"Δ ({ci} CI)", "boundary", "p", "verdict"]
    header += ["80 % power: detectable Δ; seeds to decide"]
    body = []
    for row in tested.itertuples(index=False):
        body.append(
            [
                row.paper,
                row.claim,
                row.task,
                f"`{row.method}` vs `{row.baseline}`",
                "—" if _missing(row.metric_name) else str(row.metric_name),
                str(int(row.n_pairs)),
                _interval(row.diff, row.diff_low, row.diff_high, signed=True),
                _boundary(row.boundary),
                _p(row.p_verdict),
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
        absent = "; ".join(
            f"{row.claim} (`{row.method}` vs `{row.baseline}`): {row.verdict_reason}"
            for row in untested.itertuples()
        )
        lines += [f"Not tested: {absent}.", ""]
    return lines


def _boundary(value: float) -> str:
    """The value a claim's Δ is tested against: 0, or minus a non-inferiority margin."""
    if _missing(value):
        return "—"
    return "0" if value == 0 else format(value, ".4g")


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
