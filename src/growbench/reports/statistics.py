"""The statistics behind a report's rankings and claims: intervals and paired tests over seeds.

Seeds are paired across methods (the same seed gives the same data order and initialisation), so
two methods are compared by the per-seed differences of their numbers, never by two independent
means. Everything here works on the ``cells`` table of ``growbench.reports.tables`` and states
which test it ran, so a report can print it beside the number.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from scipy import optimize, stats

from growbench.claims import MATCHED_PREFIX

Alternative = Literal["two-sided", "greater", "less"]
ALTERNATIVES = ("two-sided", "greater", "less")
FINISHED = "FINISHED"
NOT_DONE = ("FAILED", "KILLED", "RUNNING")
MISSING = "MISSING"
CONFIDENCE = 0.95
POWER = 0.8  # the power at which a report states the effect and seeds that would decide a claim
MAX_SEEDS = 1000  # seeds_needed's search stops here ("more than 1000": the effect is too small)
SHORT_OF_BUDGET = 0.9  # a cell that ended below this fraction of its budget is flagged
ROUNDING = 1e-12  # differences spread less than this × the values' size count as constant
# The costs a method's final score is weighed against (Pareto fronts), by the cells-table column.
COSTS = {"params": "parameters", "flops": "FLOPs", "train_flops": "training compute"}
TIE = 1e-9  # means this close (relative) are equal: two means of one set of values can differ
# in their last bits with the order of the sum
ACCURACY_MARGIN = 1.0  # near the best: within this many points of the best mean accuracy %
LOSS_MARGIN = 0.05  # near the best: within this fraction of the best mean loss (lower is better)


@dataclass(frozen=True)
class Interval:
    """A mean with its 95 % Student-t interval over ``n`` values (NaN bounds when n < 2)."""

    mean: float
    low: float
    high: float
    n: int


@dataclass(frozen=True)
class PairedTest:
    """A paired t-test of ``a`` against ``b`` over the ``n`` seeds both have.

    ``mean_diff`` is the mean of a − b, ``sd_diff`` the standard deviation of a − b (ddof 1),
    ``low``/``high`` the mean's 95 % two-sided Student-t interval, ``p_value`` the test's p for
    the alternative named in ``test``.
    """

    n: int
    mean_a: float
    mean_b: float
    mean_diff: float
    sd_diff: float
    low: float
    high: float
    p_value: float
    test: str


def mean_interval(values: Iterable[float], confidence: float = CONFIDENCE) -> Interval:
    """Mean and Student-t interval of ``values``, NaNs ignored."""
    array = np.asarray(list(values), dtype=float)
    array = array[~np.isnan(array)]
    n = int(array.size)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = float(array.mean())
    if n < 2:
        return Interval(mean, math.nan, math.nan, n)
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * float(array.std(ddof=1)) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n)


def aligned(a: pd.Series, b: pd.Series) -> tuple[pd.Series, pd.Series]:
    """``a`` and ``b`` restricted to the seeds (index values) where both are not NaN, sorted."""
    for name, series in (("a", a), ("b", b)):
        if series.index.has_duplicates:
            raise ValueError(f"paired: series {name} has repeated seeds in its index")
    a = pd.to_numeric(a, errors="coerce").dropna()
    b = pd.to_numeric(b, errors="coerce").dropna()
    common = a.index.intersection(b.index).sort_values()
    return a.loc[common].astype(float), b.loc[common].astype(float)


def describe_test(alternative: Alternative) -> str:
    """The text naming the test ``paired`` runs for ``alternative``."""
    sides = "two-sided" if alternative == "two-sided" else "one-sided"
    return f"paired t-test (scipy.stats.ttest_rel), {sides}"


def paired(a: pd.Series, b: pd.Series, alternative: Alternative = "two-sided") -> PairedTest:
    """Paired t-test of ``a`` against ``b`` (series indexed by seed) on the seeds both have.

    ``alternative`` is scipy's: ``"greater"`` tests mean(a − b) > 0. With n < 2 the p-value is
    NaN. When every difference is the same number d (zero variance up to float rounding, where
    scipy returns NaN or an unreliable p) the p-value is set by rule: one-sided, 0.0 if d lies
    strictly on the alternative's side of 0, else 1.0; two-sided, 0.0 if d ≠ 0, else 1.0 (a d
    within rounding of 0 counts as 0). ``test`` then says so.
    """
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {ALTERNATIVES}, got {alternative!r}")
    a, b = aligned(a, b)
    n = len(a)
    diff = (a - b).to_numpy()
    interval = mean_interval(diff)
    test = describe_test(alternative)
    mean_a = float(a.mean()) if n else math.nan
    mean_b = float(b.mean()) if n else math.nan
    if n < 2:
        p_value = math.nan
    elif np.ptp(diff) <= (tol := ROUNDING * max(np.abs(a).max(), np.abs(b).max())):
        d = float(diff.mean())
        d = 0.0 if abs(d) <= tol else d
        if alternative == "greater":
            p_value = 0.0 if d > 0 else 1.0
        elif alternative == "less":
            p_value = 0.0 if d < 0 else 1.0
        else:
            p_value = 0.0 if d != 0 else 1.0
        test += "; differences constant, p set by their sign"
    else:
        p_value = float(stats.ttest_rel(a.to_numpy(), b.to_numpy(), alternative=alternative).pvalue)
    return PairedTest(
        n=n,
        mean_a=mean_a,
        mean_b=mean_b,
        mean_diff=interval.mean,
        sd_diff=float(diff.std(ddof=1)) if n >= 2 else math.nan,
        low=interval.low,
        high=interval.high,
        p_value=p_value,
        test=test,
    )


def one_sided_power(effect: float, sd: float, n: int, alpha: float) -> float:
    """The power of the one-sided paired t-test at level ``alpha`` over ``n`` seeds (H1: the mean
    difference > 0) when the true mean difference is ``effect`` and its standard deviation ``sd``.

    Exact, through the noncentral t distribution: the statistic is t(n − 1) with noncentrality
    effect·√n / sd, and the test rejects above the (1 − alpha) quantile of the central t. With
    sd = 0 every difference equals ``effect``: power 1 if it is > 0, else 0 (``paired``'s rule).
    """
    if n < 2:
        return math.nan
    if sd == 0:
        return 1.0 if effect > 0 else 0.0
    critical = float(stats.t.ppf(1 - alpha, n - 1))
    return float(stats.nct.sf(critical, n - 1, effect * math.sqrt(n) / sd))


def minimum_detectable_effect(sd: float, n: int, alpha: float, power: float = POWER) -> float:
    """The smallest true mean difference that the one-sided paired test at ``alpha`` over ``n``
    seeds detects with probability ``power``, at a paired standard deviation ``sd`` (NaN when
    n < 2 or sd is not a number; 0 when sd is 0)."""
    if n < 2 or not math.isfinite(sd):
        return math.nan
    if sd == 0:
        return 0.0
    high = sd
    while one_sided_power(high, sd, n, alpha) < power:
        high *= 2
    return float(optimize.brentq(lambda d: one_sided_power(d, sd, n, alpha) - power, 0.0, high))


def seeds_needed(effect: float, sd: float, alpha: float, power: float = POWER) -> int | None:
    """The fewest paired seeds at which the one-sided test at ``alpha`` detects a true mean
    difference ``effect`` (> 0) with probability ``power`` at standard deviation ``sd``; None
    when more than MAX_SEEDS would be needed (or the effect is not positive)."""
    if not (math.isfinite(effect) and math.isfinite(sd)) or effect <= 0:
        return None
    if sd == 0:
        return 2
    if one_sided_power(effect, sd, MAX_SEEDS, alpha) < power:
        return None
    low, high = 2, MAX_SEEDS  # power grows with n: bisect for the first n that reaches it
    while low < high:
        middle = (low + high) // 2
        if one_sided_power(effect, sd, middle, alpha) >= power:
            high = middle
        else:
            low = middle + 1
    return low


def task_direction(rows: pd.DataFrame, task: str) -> bool | None:
    """The task's ``higher_is_better`` (None when no row states it)."""
    values = {_as_bool(value) for value in rows["higher_is_better"] if not _is_missing(value)}
    if len(values) > 1:
        raise ValueError(f"task {task!r} mixes higher_is_better values")
    return values.pop() if values else None


def by_seed(rows: pd.DataFrame, column: str, what: str) -> pd.Series:
    """``column`` of the FINISHED rows, indexed by seed (one row per seed expected)."""
    done = rows[rows["status"] == FINISHED]
    series = pd.Series(
        pd.to_numeric(done[column], errors="coerce").to_numpy(float), index=done["seed"].to_numpy()
    )
    if series.index.has_duplicates:
        raise ValueError(f"{what} has more than one row for one seed")
    return series


def flagged(cells: pd.DataFrame) -> pd.Series:
    """Which of ``cells`` carry a health flag (tables of older runs have no such column)."""
    if "health" not in cells.columns:
        return pd.Series(False, index=cells.index)
    return (cells["health"].astype("string").fillna("") != "").astype(bool)


def flagged_count(cells: pd.DataFrame) -> int:
    return int(flagged(cells).sum())


def is_matched(methods: Iterable[str]) -> np.ndarray:
    """Which of ``methods`` name a matched static net (``static@<method>``): a per-cell
    reference, the start net trained from scratch at the widths that method's cell of the same
    seed ended with, not a method of its own."""
    return np.array([str(m).startswith(MATCHED_PREFIX) for m in methods], dtype=bool)


def pareto_optimal(
    scores: Sequence[float], costs: Sequence[float], higher_is_better: bool
) -> np.ndarray:
    """For each point (score, cost), whether it lies on the Pareto front: no other point has a
    score at least as good at a cost no greater, with a better score or a lower cost.

    Equal points do not dominate each other, so ties stay on the front together (numbers within
    ``TIE`` of each other, relative, count as equal); a point with a missing (NaN) or infinite
    score or cost is never on the front and dominates nothing.
    """
    score = np.asarray(scores, dtype=float)
    cost = np.asarray(costs, dtype=float)
    if score.shape != cost.shape or score.ndim != 1:
        raise ValueError(f"pareto_optimal: {score.shape} scores against {cost.shape} costs")
    gain = score if higher_is_better else -score  # higher gain is better either way
    valid = np.isfinite(gain) & np.isfinite(cost)
    front = np.zeros(len(score), dtype=bool)
    with np.errstate(invalid="ignore"):
        for i in np.flatnonzero(valid):
            gain_tie = TIE * np.maximum(np.abs(gain), abs(gain[i]))
            cost_tie = TIE * np.maximum(np.abs(cost), abs(cost[i]))
            no_worse = (gain >= gain[i] - gain_tie) & (cost <= cost[i] + cost_tie)
            strictly = (gain > gain[i] + gain_tie) | (cost < cost[i] - cost_tie)
            front[i] = not bool((valid & no_worse & strictly).any())
    return front


def tied(a: float, b: float) -> bool:
    """Whether two means are equal up to ``TIE`` (relative): float summation order aside."""
    return math.isclose(a, b, rel_tol=TIE)


def near_best(scores: Sequence[float], higher_is_better: bool) -> tuple[float, float, np.ndarray]:
    """The best of ``scores`` (NaN ignored), the threshold of "near the best" and which scores
    reach it: within ``ACCURACY_MARGIN`` points of the best when higher is better (accuracy in
    %), within ``LOSS_MARGIN`` of the best's size when lower is better (a loss)."""
    score = np.asarray(scores, dtype=float)
    if not np.isfinite(score).any():
        return math.nan, math.nan, np.zeros(len(score), dtype=bool)
    finite = np.isfinite(score)
    if higher_is_better:
        best = float(np.nanmax(score))
        threshold = best - ACCURACY_MARGIN
        slack = TIE * max(abs(threshold), abs(best))
        return best, threshold, finite & (np.where(finite, score, 0) >= threshold - slack)
    best = float(np.nanmin(score))
    threshold = best + LOSS_MARGIN * abs(best)
    slack = TIE * max(abs(threshold), abs(best))
    return best, threshold, finite & (np.where(finite, score, 0) <= threshold + slack)


def matched_comparison(cells: pd.DataFrame, task: str) -> pd.DataFrame:
    """Each method of ``task`` against its matched static nets ``static@<method>``, paired by
    seed (method − matched net, two-sided paired t-test): one row per method that has matched
    cells, columns method, matched, pairs, score and matched_score (means over the paired
    seeds), diff, low, high (its 95 % interval), p, params and matched_params (mean final
    parameters over the paired seeds)."""
    rows = cells[cells["task"] == task]
    columns = ["method", "matched", "pairs", "score", "matched_score", "diff", "low", "high", "p"]
    columns += ["params", "matched_params"]
    records = []
    for matched in sorted(rows.loc[is_matched(rows["method"]), "method"].unique()):
        method = matched[len(MATCHED_PREFIX) :]
        own, net = rows[rows["method"] == method], rows[rows["method"] == matched]
        if own.empty:
            continue
        test = paired(
            by_seed(own, "score", f"{task}/{method}"), by_seed(net, "score", f"{task}/{matched}")
        )
        size = paired(
            by_seed(own, "params", f"{task}/{method}"),
            by_seed(net, "params", f"{task}/{matched}"),
        )
        records.append(
            {
                "method": method,
                "matched": matched,
                "pairs": test.n,
                "score": test.mean_a,
                "matched_score": test.mean_b,
                "diff": test.mean_diff,
                "low": test.low,
                "high": test.high,
                "p": test.p_value,
                "params": size.mean_a,
                "matched_params": size.mean_b,
            }
        )
    return pd.DataFrame.from_records(records, columns=columns)


def ranking(
    cells: pd.DataFrame,
    task: str,
    references: Sequence[str] = ("static", "none"),
    matched: bool = False,
) -> pd.DataFrame:
    """One row per method of ``task``, best mean score first (methods without scores last);
    matched static nets (``is_matched``) are references, left out unless ``matched``.

    Columns: method, finished, failed (FAILED, KILLED or RUNNING cells), missing, score with its
    95 % interval (low, high), the means of params, flops, train_flops, growth_share and
    budget_fraction, short_of_budget (finished cells that ended below 90 % of the budget),
    flagged (finished cells with a health flag), and
    for each reference ``r`` among the task's methods ``diff_vs_<r>`` (mean paired score
    difference method − r) and ``p_vs_<r>`` (two-sided paired t-test), NaN in the reference's
    own row; and for each cost of ``COSTS`` ``pareto_<cost>``: whether the method's mean score
    and mean cost lie on the Pareto front of the table's rows (``pareto_optimal``).
    """
    rows = cells[cells["task"] == task]
    if rows.empty:
        raise ValueError(f"no cells for task {task!r}")
    if not matched:
        rows = rows[~is_matched(rows["method"])]
        if rows.empty:
            raise ValueError(f"task {task!r} has only matched static nets")
    higher = task_direction(rows, task)
    methods = sorted(rows["method"].unique())
    present = [ref for ref in references if ref in methods]
    scores = {m: by_seed(rows[rows["method"] == m], "score", f"{task}/{m}") for m in methods}
    records = []
    for method in methods:
        own = rows[rows["method"] == method]
        done = own[own["status"] == FINISHED]
        interval = mean_interval(scores[method].to_numpy())
        record = {
            "method": method,
            "finished": len(done),
            "failed": int(own["status"].isin(NOT_DONE).sum()),
            "missing": int((own["status"] == MISSING).sum()),
            "score": interval.mean,
            "low": interval.low,
            "high": interval.high,
        }
        for column in ("params", "flops", "train_flops", "growth_share", "budget_fraction"):
            record[column] = mean_interval(pd.to_numeric(done[column], errors="coerce")).mean
        fraction = pd.to_numeric(done["budget_fraction"], errors="coerce")
        record["short_of_budget"] = int((fraction < SHORT_OF_BUDGET).sum())
        record["flagged"] = flagged_count(done)
        for ref in present:
            if method == ref:
                record[f"diff_vs_{ref}"] = record[f"p_vs_{ref}"] = math.nan
                continue
            test = paired(scores[method], scores[ref], "two-sided")
            record[f"diff_vs_{ref}"] = test.mean_diff
            record[f"p_vs_{ref}"] = test.p_value
        records.append(record)
    table = pd.DataFrame.from_records(records)
    for cost in COSTS:
        table[f"pareto_{cost}"] = pareto_optimal(table["score"], table[cost], higher is not False)
    table = table.sort_values(
        ["score", "method"], ascending=[higher is False, True], na_position="last"
    )
    return table.reset_index(drop=True)


def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _as_bool(value: object) -> bool:
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if isinstance(value, int | float | np.integer | np.floating) and value in (0, 1):
        return bool(value)
    raise ValueError(f"higher_is_better must be a boolean, got {value!r}")
