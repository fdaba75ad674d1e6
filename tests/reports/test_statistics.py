"""Intervals, paired tests and rankings of ``growbench.reports.statistics``."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from growbench.reports.statistics import mean_interval, paired, ranking
from growbench.reports.tables import ACCURACY_SCORE, CELL_COLUMNS


def test_mean_interval_matches_hand_computation():
    # values 1, 2, 3, 6: mean 3, sample sd sqrt(14/3), t(0.975, 3) = 3.182446305284263
    interval = mean_interval([1.0, 2.0, math.nan, 3.0, 6.0])
    half = 3.182446305284263 * math.sqrt(14 / 3) / 2
    assert interval.n == 4
    assert interval.mean == pytest.approx(3.0)
    assert interval.low == pytest.approx(3.0 - half)
    assert interval.high == pytest.approx(3.0 + half)


@pytest.mark.parametrize("values", [[], [math.nan], [2.5], [2.5, math.nan]])
def test_mean_interval_has_nan_bounds_below_two_values(values):
    interval = mean_interval(values)
    assert interval.n == sum(not math.isnan(v) for v in values)
    assert math.isnan(interval.low)
    assert math.isnan(interval.high)
    if interval.n:
        assert interval.mean == 2.5


@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
def test_paired_matches_scipy_on_common_seeds(alternative):
    a = pd.Series([80.0, 82.0, 81.0, 85.0, math.nan], index=[0, 1, 2, 3, 4])
    b = pd.Series([79.0, 80.5, 81.5, 83.0, 70.0, 60.0], index=[3, 0, 1, 2, 4, 5])
    result = paired(a, b, alternative)
    xs = np.array([80.0, 82.0, 81.0, 85.0])
    ys = np.array([80.5, 81.5, 83.0, 79.0])
    expected = stats.ttest_rel(xs, ys, alternative=alternative)
    assert result.n == 4
    assert result.p_value == pytest.approx(expected.pvalue)
    assert result.mean_a == pytest.approx(xs.mean())
    assert result.mean_b == pytest.approx(ys.mean())
    assert result.mean_diff == pytest.approx((xs - ys).mean())
    sem = (xs - ys).std(ddof=1) / 2
    t = stats.t.ppf(0.975, 3)
    assert result.low == pytest.approx((xs - ys).mean() - t * sem)
    assert result.high == pytest.approx((xs - ys).mean() + t * sem)
    sides = "two-sided" if alternative == "two-sided" else "one-sided"
    assert result.test == f"paired t-test (scipy.stats.ttest_rel), {sides}"


def test_paired_with_fewer_than_two_pairs_has_nan_p():
    result = paired(pd.Series([1.0, 2.0], index=[0, 1]), pd.Series([0.5], index=[1]), "greater")
    assert result.n == 1
    assert result.mean_diff == pytest.approx(1.5)
    assert math.isnan(result.p_value)
    assert math.isnan(result.low)
    empty = paired(pd.Series([1.0], index=[0]), pd.Series([1.0], index=[1]))
    assert empty.n == 0
    assert math.isnan(empty.mean_diff)
    assert math.isnan(empty.p_value)


@pytest.mark.parametrize(
    ("shift", "alternative", "p"),
    [
        (1.0, "greater", 0.0),
        (1.0, "less", 1.0),
        (1.0, "two-sided", 0.0),
        (-1.0, "greater", 1.0),
        (-1.0, "less", 0.0),
        (-1.0, "two-sided", 0.0),
        (0.0, "greater", 1.0),
        (0.0, "less", 1.0),
        (0.0, "two-sided", 1.0),
    ],
)
def test_paired_zero_variance_differences_follow_the_rule(shift, alternative, p):
    b = pd.Series([1.0, 2.0, 3.0])
    result = paired(b + shift, b, alternative)
    assert result.p_value == p
    assert result.mean_diff == pytest.approx(shift)
    assert result.low == pytest.approx(shift)
    assert result.high == pytest.approx(shift)
    assert "differences constant" in result.test


def test_paired_rejects_repeated_seeds_and_unknown_alternatives():
    with pytest.raises(ValueError, match="repeated seeds"):
        paired(pd.Series([1.0, 2.0], index=[0, 0]), pd.Series([1.0], index=[0]))
    with pytest.raises(ValueError, match="alternative"):
        paired(pd.Series([1.0]), pd.Series([1.0]), "bigger")  # type: ignore[arg-type]


def _cells(rows, higher=True, score_name=ACCURACY_SCORE):
    records = []
    for method, seed, status, score in rows:
        done = status == "FINISHED"
        records.append(
            {
                "task": "digits-mlp",
                "method": method,
                "seed": seed,
                "dataset": "digits",
                "model": "mlp",
                "status": status,
                "run_id": f"{method}-{seed}",
                "score_name": score_name,
                "higher_is_better": higher,
                "score": score if done else math.nan,
                "params": 100.0 if done else math.nan,
                "flops": 200.0 if done else math.nan,
                "train_flops": 3000.0 if done else math.nan,
                "train_seconds": 1.0 if done else math.nan,
                "growth_seconds": 0.1 if done else math.nan,
                "growth_share": 0.1 if done else math.nan,
                "epochs": 20 if done else math.nan,
            }
        )
    return pd.DataFrame.from_records(records, columns=CELL_COLUMNS)


RANKING_ROWS = [
    ("static", 0, "FINISHED", 90.0),
    ("static", 1, "FINISHED", 91.0),
    ("static", 2, "FINISHED", 92.0),
    ("none", 0, "FINISHED", 80.0),
    ("none", 1, "FINISHED", 82.0),
    ("none", 2, "FINISHED", 81.0),
    ("s2d", 0, "FINISHED", 89.0),
    ("s2d", 1, "FINISHED", 91.5),
    ("s2d", 2, "MISSING", math.nan),
    ("broken", 0, "FAILED", math.nan),
    ("broken", 1, "KILLED", math.nan),
    ("broken", 2, "RUNNING", math.nan),
]


def test_ranking_orders_best_first_and_keeps_methods_without_scores_last():
    table = ranking(_cells(RANKING_ROWS), "digits-mlp")
    assert list(table["method"]) == ["static", "s2d", "none", "broken"]
    broken = table.iloc[-1]
    assert (broken["finished"], broken["failed"], broken["missing"]) == (0, 3, 0)
    assert all(math.isnan(broken[c]) for c in ("score", "low", "params", "diff_vs_static"))
    s2d = table.set_index("method").loc["s2d"]
    assert (s2d["finished"], s2d["failed"], s2d["missing"]) == (2, 0, 1)
    assert s2d["score"] == pytest.approx(90.25)
    assert s2d["params"] == 100.0
    assert s2d["growth_share"] == pytest.approx(0.1)


def test_ranking_compares_with_references_by_paired_seeds():
    table = ranking(_cells(RANKING_ROWS), "digits-mlp").set_index("method")
    assert math.isnan(table.loc["static", "diff_vs_static"])
    assert math.isnan(table.loc["static", "p_vs_static"])
    assert math.isnan(table.loc["none", "p_vs_none"])
    # s2d − static over seeds 0 and 1: −1.0 and +0.5
    assert table.loc["s2d", "diff_vs_static"] == pytest.approx(-0.25)
    expected = stats.ttest_rel([89.0, 91.5], [90.0, 91.0]).pvalue
    assert table.loc["s2d", "p_vs_static"] == pytest.approx(expected)
    assert table.loc["none", "diff_vs_static"] == pytest.approx(-10.0)
    assert table.loc["static", "diff_vs_none"] == pytest.approx(10.0)


def test_ranking_puts_the_lowest_loss_first_and_skips_absent_references():
    rows = [("a", 0, "FINISHED", 0.5), ("b", 0, "FINISHED", 0.2), ("c", 0, "FAILED", math.nan)]
    table = ranking(_cells(rows, higher=False, score_name="test loss"), "digits-mlp")
    assert list(table["method"]) == ["b", "a", "c"]
    assert not any(column.startswith(("diff_vs_", "p_vs_")) for column in table.columns)
    with pytest.raises(ValueError, match="no cells"):
        ranking(_cells(rows), "spirals-mlp")


def test_paired_treats_differences_equal_up_to_rounding_as_constant():
    a = pd.Series([0.1 + 0.2, 0.7 + 0.1, 0.4 + 0.5])
    b = pd.Series([0.3, 0.8, 0.9])
    assert np.ptp((a - b).to_numpy()) > 0  # float rounding, not a real spread
    result = paired(a, b, "two-sided")
    assert result.p_value == 1.0
    assert "differences constant" in result.test
    assert paired(a + 0.5, b, "greater").p_value == 0.0
