"""Check the papers' claims against the suite's runs: one verdict per (claim, task).

Each method declares what its paper claims (``Grower.claims``, ``growbench.claims.Claim``).
``collect_claims`` gathers them from the registered methods and ``evaluate_claims`` tests each on
every task it concerns with a one-sided paired t-test over seeds, so the report can say plainly
which claims our runs reproduce, which they do not, and where there are too few runs to tell.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import pandas as pd

from growbench.claims import SCORE, Claim
from growbench.reports.statistics import by_seed, describe_test, paired, task_direction
from growbench.reports.tables import ACCURACY_SCORE

NO_TASK = "—"
REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
NOT_ENOUGH = "not enough runs"
NOT_RUN = "not run"
CLAIM_COLUMNS = [
    "paper",
    "claim",
    "method",
    "baseline",
    "task",
    "metric",
    "relation",
    "margin",
    "test",
    "n_pairs",
    "method_mean",
    "baseline_mean",
    "diff",
    "diff_low",
    "diff_high",
    "p_value",
    "verdict",
    "verdict_reason",
]
_SECONDS = ("growth_seconds", "train_seconds")


def collect_claims(methods: Mapping[str, type] | Iterable[str] | None = None) -> list[Claim]:
    """The ``claims`` of the given methods (default: every registered one), by method name.

    ``methods`` is a mapping name → Grower class or an iterable of registered names. A claim
    declared by several classes appears once.
    """
    from growbench.methods.registry import available_methods, get_method

    if methods is None:
        methods = available_methods()
    if not isinstance(methods, Mapping):
        methods = {name: get_method(name) for name in methods}
    found: list[Claim] = []
    for name in sorted(methods):
        for claim in getattr(methods[name], "claims", ()):
            if not isinstance(claim, Claim):
                raise TypeError(f"method {name!r} declares a claim that is not a Claim: {claim!r}")
            if claim not in found:
                found.append(claim)
    return found


def evaluate_claims(cells: pd.DataFrame, claims: Sequence[Claim]) -> pd.DataFrame:
    """One row per (claim, task) with the paired test and its verdict (columns CLAIM_COLUMNS).

    Tasks: those named by ``claim.tasks`` (task or dataset names), else all; of these, the ones
    where both the method and the baseline have at least one cell (any status). A claim with no
    such task gets one row, task "—", verdict "not run". ``diff`` is oriented: positive means the
    method is better, in the metric's units. Verdicts: "not enough runs" below ``min_pairs``
    paired finished seeds; else "reproduced" when the one-sided p < ``alpha``, else "not
    reproduced".
    """
    rows: list[dict[str, object]] = []
    for claim in claims:
        if claim.metric != SCORE and claim.metric not in cells.columns:
            raise ValueError(f"claim {claim.statement!r}: cells have no column {claim.metric!r}")
        tasks = _claim_tasks(cells, claim)
        if not tasks:
            rows.append(_not_run(cells, claim))
            continue
        for task in tasks:
            rows.append(_evaluate(cells[cells["task"] == task], claim, task))
    return pd.DataFrame.from_records(rows, columns=CLAIM_COLUMNS)


def _claim_tasks(cells: pd.DataFrame, claim: Claim) -> list[str]:
    scope = cells
    if claim.tasks:
        scope = cells[cells["task"].isin(claim.tasks) | cells["dataset"].isin(claim.tasks)]
    with_method = set(scope.loc[scope["method"] == claim.method, "task"])
    with_baseline = set(scope.loc[scope["method"] == claim.baseline, "task"])
    return sorted(with_method & with_baseline)


def _base_row(claim: Claim, task: str) -> dict[str, object]:
    return {
        "paper": claim.paper,
        "claim": claim.statement,
        "method": claim.method,
        "baseline": claim.baseline,
        "task": task,
        "metric": claim.metric,
        "relation": claim.relation,
        "margin": claim.margin,
        "test": describe_test("greater"),
        "n_pairs": 0,
        "method_mean": math.nan,
        "baseline_mean": math.nan,
        "diff": math.nan,
        "diff_low": math.nan,
        "diff_high": math.nan,
        "p_value": math.nan,
    }


def _not_run(cells: pd.DataFrame, claim: Claim) -> dict[str, object]:
    where = f" on {', '.join(claim.tasks)}" if claim.tasks else ""
    row = _base_row(claim, NO_TASK)
    row["verdict"] = NOT_RUN
    row["verdict_reason"] = f"no task{where} has cells of both {claim.method} and {claim.baseline}"
    return row


def _evaluate(rows: pd.DataFrame, claim: Claim, task: str) -> dict[str, object]:
    row = _base_row(claim, task)
    if claim.metric == SCORE:
        higher = task_direction(rows, task)
        if higher is None:
            row["verdict"] = NOT_ENOUGH
            row["verdict_reason"] = f"no finished cell of {task} states a score direction"
            return row
        names = rows["score_name"].dropna().unique()
        unit = " pp" if len(names) == 1 and names[0] == ACCURACY_SCORE else ""
        metric_text = str(names[0]) if len(names) == 1 else "score"
    else:
        higher = bool(claim.higher_is_better)
        unit = " s" if claim.metric in _SECONDS else ""
        metric_text = claim.metric
    sign = 1.0 if higher else -1.0
    ours = by_seed(rows[rows["method"] == claim.method], claim.metric, f"{task}/{claim.method}")
    theirs = by_seed(
        rows[rows["method"] == claim.baseline], claim.metric, f"{task}/{claim.baseline}"
    )
    # Oriented so that larger is better; a non-inferiority test shifts the method by the margin,
    # a fraction of the baseline's mean over the paired seeds.
    # The numbers reported come from the unshifted comparison (no rounding from the shift).
    plain = test = paired(sign * ours, sign * theirs, "greater")
    shift = 0.0
    if claim.relation == "non_inferior" and test.n:
        shift = claim.margin * abs(test.mean_b)
        test = paired(sign * ours + shift, sign * theirs, "greater")
    row.update(
        test=_test_text(test.test, claim, unit),
        n_pairs=test.n,
        method_mean=sign * plain.mean_a,
        baseline_mean=sign * plain.mean_b,
        diff=plain.mean_diff,
        diff_low=plain.low,
        diff_high=plain.high,
        p_value=test.p_value,
    )
    direction = "higher" if higher else "lower"
    advantage = (
        f"advantage of {claim.method} over {claim.baseline} ({direction} {metric_text} is better)"
        f" = {_num(row['diff'], unit)}"
    )
    if test.n >= 2:
        advantage += f" (95 % CI {_num(row['diff_low'], '')} … {_num(row['diff_high'], unit)})"
    seeds = f"{test.n} paired seed{'' if test.n == 1 else 's'}"
    if test.n < claim.min_pairs:
        row["verdict"] = NOT_ENOUGH
        if test.n == 0:
            row["verdict_reason"] = f"no seed has finished cells of both methods on {task}"
        else:
            row["verdict_reason"] = f"{advantage} over only {seeds} ({claim.min_pairs} needed)"
        return row
    reproduced = test.p_value < claim.alpha
    row["verdict"] = REPRODUCED if reproduced else NOT_REPRODUCED
    hypothesis = "" if shift == 0 else f" for advantage > {_num(-shift, unit)}"
    comparison = "<" if reproduced else "≥"
    row["verdict_reason"] = (
        f"{advantage} over {seeds}, one-sided p = {test.p_value:.2g} {comparison} "
        f"{claim.alpha:g}{hypothesis}"
    )
    return row


def _test_text(base: str, claim: Claim, unit: str) -> str:
    if claim.relation == "better":
        return f"{base}; H1: {claim.method} better than {claim.baseline}"
    return (
        f"{base}; H1: {claim.method} worse than {claim.baseline} by less than "
        f"{claim.margin:.0%} of {claim.baseline}'s mean"
    )


def _num(value: object, unit: str) -> str:
    """A signed number with about 3 significant digits and a true minus sign."""
    x = float(value)  # type: ignore[arg-type]
    if math.isnan(x):
        return "n/a"
    text = f"{x:+,.0f}" if abs(x) >= 1000 else f"{x:+.3g}"
    return text.replace("-", "−") + unit
