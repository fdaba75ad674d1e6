"""Check the papers' claims against the suite's runs: one verdict per (claim, task).

Each method declares what its paper claims (``Grower.claims``, ``growbench.claims.Claim``).
``collect_claims`` gathers them from the registered methods and ``evaluate_claims`` tests each on
every task it concerns with one-sided paired t-tests over seeds, in both directions, so the report
can say plainly which claims our runs reproduce, which the data contradict, and which they cannot
decide: an under-powered test is *inconclusive*, never read as evidence against a paper, and the
report states the effect it could have detected and the seeds that would decide it.

Each row's interval matches its tests: its ends are the one-sided (1 − alpha) confidence bounds of
the advantage (a (1 − 2·alpha) two-sided interval, 90 % at alpha = 0.05), so a row is reproduced
exactly when the lower bound lies above the claim's boundary and contradicted exactly when the
upper bound lies below it; its ``p_verdict`` is the p of the test that decided the verdict.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import pandas as pd
from scipy import stats

from growbench.claims import SCORE, Claim, matched_static
from growbench.reports.statistics import (
    MAX_SEEDS,
    POWER,
    PairedTest,
    by_seed,
    describe_test,
    minimum_detectable_effect,
    paired,
    seeds_needed,
    task_direction,
)
from growbench.reports.tables import ACCURACY_SCORE

NO_TASK = "—"
REPRODUCED = "reproduced"
CONTRADICTED = "contradicted"
INCONCLUSIVE = "inconclusive"
NOT_ENOUGH = "not enough runs"
NOT_RUN = "not run"
CLAIM_COLUMNS = [
    "paper",
    "claim",
    "method",
    "baseline",
    "task",
    "metric",
    "metric_name",
    "relation",
    "margin",
    "alpha",
    "boundary",
    "test",
    "n_pairs",
    "method_mean",
    "baseline_mean",
    "diff",
    "diff_low",
    "diff_high",
    "p_value",
    "p_against",
    "p_verdict",
    "mde",
    "seeds_needed",
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
    such task gets one row, task "—", verdict "not run", and a reason naming what is missing (the
    claim's task, or which methods have no cells). ``diff`` is oriented: positive means the method
    is better, in the metric's units (``metric_name``: the task's score name for a "score" claim).

    Two one-sided paired tests at the claim's ``alpha`` against the claim's boundary (0 for
    "better", −margin × the baseline's mean for "non_inferior"): ``p_value`` for the claim (the
    advantage lies above the boundary), ``p_against`` for its opposite (below it: the method is
    significantly worse, or for non-inferiority its interval lies wholly beyond the margin).
    ``boundary`` is that boundary in the advantage's units. ``p_verdict`` is the p of the test that
    decided the verdict: ``p_against`` for a contradicted row, ``p_value`` otherwise (an
    inconclusive row shows the claim's p, which did not reach alpha).

    ``diff_low`` … ``diff_high``: the one-sided (1 − alpha) confidence bounds of ``diff``
    (together a (1 − 2·alpha) two-sided interval: 90 % at alpha = 0.05), the bounds the two tests
    use, so that reproduced ⇔ ``diff_low`` > ``boundary`` and contradicted ⇔ ``diff_high`` <
    ``boundary`` (when every difference is the same number both bounds are that number, as
    ``paired`` decides such a test by its sign).

    Verdicts: "not enough runs" below ``min_pairs`` paired finished seeds; else "reproduced" when
    ``p_value`` < alpha, "contradicted" when ``p_against`` < alpha, else "inconclusive". For an
    inconclusive row, ``mde`` is the smallest advantage beyond the boundary the test detects with
    80 % power at the observed paired standard deviation and seed count, and ``seeds_needed``
    the seeds at which the observed distance from the boundary would be decided with 80 % power
    (NaN when more than 1000 would be needed).
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


def sides(claim: Claim) -> tuple[tuple[str, str | None], tuple[str, str | None]]:
    """What the claim compares, as (method, reference subtracted from it or None) for the
    claim's method and for its baseline (see ``Claim.matched``)."""
    if not claim.matched:
        return (claim.method, None), (claim.baseline, None)
    if claim.baseline == "static":
        return (claim.method, None), (matched_static(claim.method), None)
    return (claim.method, matched_static(claim.method)), (
        claim.baseline,
        matched_static(claim.baseline),
    )


def _claim_tasks(cells: pd.DataFrame, claim: Claim) -> list[str]:
    scope = cells
    if claim.tasks:
        scope = cells[cells["task"].isin(claim.tasks) | cells["dataset"].isin(claim.tasks)]
    needed = [name for side in sides(claim) for name in side if name is not None]
    tasks = [set(scope.loc[scope["method"] == name, "task"]) for name in needed]
    return sorted(set.intersection(*tasks))


def _base_row(claim: Claim, task: str) -> dict[str, object]:
    return {
        "paper": claim.paper,
        "claim": claim.statement,
        "method": claim.method,
        "baseline": sides(claim)[1][0],
        "task": task,
        "metric": claim.metric,
        "metric_name": claim.metric if claim.metric != SCORE else math.nan,
        "relation": claim.relation,
        "margin": claim.margin,
        "alpha": claim.alpha,
        "boundary": math.nan,
        "test": describe_test("greater"),
        "n_pairs": 0,
        "method_mean": math.nan,
        "baseline_mean": math.nan,
        "diff": math.nan,
        "diff_low": math.nan,
        "diff_high": math.nan,
        "p_value": math.nan,
        "p_against": math.nan,
        "p_verdict": math.nan,
        "mde": math.nan,
        "seeds_needed": math.nan,
    }


def _not_run(cells: pd.DataFrame, claim: Claim) -> dict[str, object]:
    row = _base_row(claim, NO_TASK)
    row["verdict"] = NOT_RUN
    row["verdict_reason"] = _missing(cells, claim)
    return row


def _missing(cells: pd.DataFrame, claim: Claim) -> str:
    """What keeps a claim from being tested: its task was not run, or which of its methods have
    no cells (there or at all), or that they never ran on one task together."""
    needed = [name for side in sides(claim) for name in side if name is not None]
    ran_on = {name: sorted(set(cells.loc[cells["method"] == name, "task"])) for name in needed}
    scope, where = cells, " in this suite"
    if claim.tasks:
        scope = cells[cells["task"].isin(claim.tasks) | cells["dataset"].isin(claim.tasks)]
        where = f" on {_names(claim.tasks)}"
        if scope.empty:
            plural = len(claim.tasks) > 1
            text = (
                f"the claim's task{'s' * plural} {_names(claim.tasks)} "
                f"{'were' if plural else 'was'} not run in this suite"
            )
            present = [name for name in needed if ran_on[name]]
            if present:
                tasks = sorted({task for name in present for task in ran_on[name]})
                text += f" ({_names(present)} ran on {_names(tasks)})"
            never = [name for name in needed if not ran_on[name]]
            if never:
                text += f"; {_names(never)} {'were' if len(never) > 1 else 'was'} not run at all"
            return text
    absent = [name for name in needed if not (scope["method"] == name).any()]
    if not absent:
        return f"no task{where} has cells of all of {_names(needed)}; " + "; ".join(
            f"{name} ran on {_names(ran_on[name])}" for name in needed
        )
    text = f"{_names(absent)} {'were' if len(absent) > 1 else 'was'} not run{where}"
    elsewhere = [f"{name} ran on {_names(ran_on[name])}" for name in absent if ran_on[name]]
    return "; ".join([text, *elsewhere])


def _names(names: Sequence[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    names = list(names)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _side_by_seed(rows: pd.DataFrame, side: tuple[str, str | None], metric: str, task: str):
    """The side's metric per seed: the method's, minus its reference's when it has one."""
    method, reference = side
    values = by_seed(rows[rows["method"] == method], metric, f"{task}/{method}")
    if reference is None:
        return values, values
    adjusted = values - by_seed(rows[rows["method"] == reference], metric, f"{task}/{reference}")
    return adjusted.dropna(), values


def _evaluate(rows: pd.DataFrame, claim: Claim, task: str) -> dict[str, object]:
    row = _base_row(claim, task)
    if claim.metric == SCORE:
        names = rows["score_name"].dropna().unique()
        metric_text = str(names[0]) if len(names) == 1 else "score"
        row["metric_name"] = metric_text
        higher = task_direction(rows, task)
        if higher is None:
            row["verdict"] = NOT_ENOUGH
            row["verdict_reason"] = f"no finished cell of {task} states a score direction"
            return row
        unit = " pp" if len(names) == 1 and names[0] == ACCURACY_SCORE else ""
    else:
        higher = bool(claim.higher_is_better)
        unit = " s" if claim.metric in _SECONDS else ""
        metric_text = claim.metric
    sign = 1.0 if higher else -1.0
    mine, theirs_side = sides(claim)
    ours, _ = _side_by_seed(rows, mine, claim.metric, task)
    theirs, theirs_raw = _side_by_seed(rows, theirs_side, claim.metric, task)
    # Oriented so that larger is better; a non-inferiority test shifts the method by the margin,
    # a fraction of the baseline's own mean (not of its size-adjusted one) over the paired seeds.
    # The numbers reported come from the unshifted comparison (no rounding from the shift).
    plain = paired(sign * ours, sign * theirs, "greater")
    shift = 0.0
    if claim.relation == "non_inferior" and plain.n:
        common = theirs_raw.loc[theirs_raw.index.isin(ours.index.intersection(theirs.index))]
        shift = claim.margin * abs(float(common.mean()))
    test = paired(sign * ours + shift, sign * theirs, "greater") if shift else plain
    against = paired(sign * ours + shift, sign * theirs, "less")
    low, high = one_sided_bounds(plain, claim.alpha, constant="differences constant" in test.test)
    row.update(
        test=_test_text(test.test, claim, unit),
        n_pairs=test.n,
        method_mean=sign * plain.mean_a,
        baseline_mean=sign * plain.mean_b,
        diff=plain.mean_diff,
        diff_low=low,
        diff_high=high,
        boundary=-shift,
        p_value=test.p_value,
        p_against=against.p_value,
        p_verdict=test.p_value,
    )
    direction = "higher" if higher else "lower"
    over = theirs_side[0]
    if mine[1] is not None:
        over = f"{theirs_side[0]}, each less its matched static net"
    advantage = (
        f"advantage of {claim.method} over {over} ({direction} {metric_text} is better)"
        f" = {_num(row['diff'], unit)}"
    )
    if test.n >= 2:
        interval = f"{_percent(1 - 2 * claim.alpha)} % CI {_num(low, '')} … {_num(high, unit)}"
        advantage += f" ({interval})"
    seeds = f"{test.n} paired seed{'' if test.n == 1 else 's'}"
    if test.n < claim.min_pairs:
        row["verdict"] = NOT_ENOUGH
        if test.n == 0:
            row["verdict_reason"] = f"no seed has finished cells of both methods on {task}"
        else:
            row["verdict_reason"] = f"{advantage} over only {seeds} ({claim.min_pairs} needed)"
        return row
    boundary = _num(-shift, unit) if shift else "0"
    level = f"{claim.alpha:g}"
    bound = f"{_percent(1 - claim.alpha)} %"
    for_claim = f"p = {test.p_value:.2g} for advantage > {boundary}"
    for_opposite = f"p = {against.p_value:.2g} for advantage < {boundary}"
    if test.p_value < claim.alpha:
        row["verdict"] = REPRODUCED
        row["verdict_reason"] = (
            f"{advantage} over {seeds}: one-sided p = {test.p_value:.2g} < {level} for advantage "
            f"> {boundary} (the {bound} lower bound {_num(low, unit)} lies above {boundary}); "
            f"the opposite test: {for_opposite}"
        )
        return row
    if against.p_value < claim.alpha:
        row["verdict"] = CONTRADICTED
        row["p_verdict"] = against.p_value
        row["verdict_reason"] = (
            f"{advantage} over {seeds}: the data reject the claim, one-sided p = "
            f"{against.p_value:.2g} < {level} for advantage < {boundary} (the {bound} upper bound "
            f"{_num(high, unit)} lies below {boundary}); the claim's test: {for_claim}"
        )
        return row
    row["verdict"] = INCONCLUSIVE
    mde = minimum_detectable_effect(test.sd_diff, test.n, claim.alpha)
    distance = abs(test.mean_diff)  # the observed advantage's distance from the boundary
    needed = seeds_needed(distance, test.sd_diff, claim.alpha)
    row["mde"] = mde
    row["seeds_needed"] = math.nan if needed is None else needed
    decide = (
        f"about {needed} paired seeds would decide it at the observed effect"
        if needed is not None
        else f"the observed effect is too small to decide with {MAX_SEEDS} seeds"
    )
    row["verdict_reason"] = (
        f"{advantage} over {seeds}: the interval holds {boundary}, neither the claim "
        f"({for_claim}) nor its opposite ({for_opposite}) is significant at {level}; with "
        f"{test.n} seeds the test detects an advantage {_num(mde, unit).lstrip('+')} beyond its "
        f"boundary with {POWER * 100:.0f} % power; {decide}"
    )
    return row


def one_sided_bounds(test: PairedTest, alpha: float, constant: bool = False) -> tuple[float, float]:
    """The one-sided (1 − alpha) confidence bounds of ``test``'s mean difference: the lower bound
    for "the mean exceeds a boundary", the upper one for "it lies below" — the bounds the
    one-sided t-tests at ``alpha`` use, together a (1 − 2·alpha) two-sided interval. ``constant``
    (every difference the same number, tested by its sign): both bounds are that number. NaN
    below 2 pairs."""
    if test.n < 2:
        return math.nan, math.nan
    if constant:
        return test.mean_diff, test.mean_diff
    half = float(stats.t.ppf(1 - alpha, test.n - 1)) * test.sd_diff / math.sqrt(test.n)
    return test.mean_diff - half, test.mean_diff + half


def _percent(fraction: float) -> str:
    return f"{round(100 * fraction, 6):g}"


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


STABILITY_COLUMNS = ["claim", "task", "verdict", "other_verdict", "p_value", "other_p_value"]


def compare_verdicts(claims: pd.DataFrame, other: pd.DataFrame) -> pd.DataFrame:
    """The verdicts of the same claims on two sets of runs of one suite (another machine, thread
    count or seed set), side by side: one row per (claim, task) tested in either, with columns
    ``STABILITY_COLUMNS`` and ``moved`` (the verdicts differ) and ``flipped`` (one is
    *reproduced* and the other *contradicted*, the change a reader must never see).
    ``p_value`` and ``other_p_value`` are each verdict's own p (``p_verdict``: for a contradicted
    row the p of the opposite test; a table without that column gives its ``p_value``)."""
    keys = ["claim", "task"]
    kept = ["verdict", "p_value"]
    tested = []
    for frame in (claims, other):
        frame = frame.assign(p_value=frame.get("p_verdict", frame["p_value"]))
        tested.append(frame[frame["verdict"] != NOT_RUN][keys + kept])
    both = tested[0].merge(tested[1], on=keys, how="outer", suffixes=("", "_other"))
    both = both.rename(columns={"verdict_other": "other_verdict", "p_value_other": "other_p_value"})
    both[["verdict", "other_verdict"]] = both[["verdict", "other_verdict"]].fillna(NOT_RUN)
    both["moved"] = both["verdict"] != both["other_verdict"]
    decisive = {REPRODUCED, CONTRADICTED}
    both["flipped"] = [
        {mine, theirs} == decisive
        for mine, theirs in zip(both["verdict"], both["other_verdict"], strict=True)
    ]
    return both[[*STABILITY_COLUMNS, "moved", "flipped"]].reset_index(drop=True)
