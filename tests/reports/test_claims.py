"""Claims: the ``Claim`` record, gathering them from methods, and testing them on cells."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from scipy import stats

from growbench.claims import Claim
from growbench.methods import available_methods
from growbench.reports.claims import (
    CLAIM_COLUMNS,
    collect_claims,
    compare_verdicts,
    evaluate_claims,
)
from growbench.reports.tables import ACCURACY_SCORE, CELL_COLUMNS, LOSS_SCORE
from tests.reports.conftest import cell_record

PAPER = "Someone et al. 2024, arXiv:0000.00000"
TASKS = {  # task → (dataset, score name, higher is better)
    "digits-mlp": ("digits", ACCURACY_SCORE, True),
    "teacher-student-mlp": ("teacher-student", LOSS_SCORE, False),
    "spirals-mlp": ("spirals", ACCURACY_SCORE, True),
}
# (task, method) → per-seed (score, growth_seconds); None = the seed's cell FAILED.
RESULTS = {
    ("digits-mlp", "s2d"): [(90.0, 5.0), (91.0, 5.2), (92.0, 4.9)],
    ("digits-mlp", "random-split"): [(88.0, 0.5), (88.5, 0.4), (90.2, 0.6)],
    ("digits-mlp", "signed-s2d"): [(89.9, 6.0), (90.8, 6.1), (92.05, 6.2)],
    ("digits-mlp", "fast-s2d"): [(87.0, 1.0), (86.5, 1.3), (88.0, 1.1)],
    ("digits-mlp", "gradmax"): [(70.0, 1.0), (71.0, 1.0), (72.0, 1.0)],
    ("digits-mlp", "random-add"): [(80.0, 1.0), (81.0, 1.0), (82.0, 1.0)],
    ("teacher-student-mlp", "gradmax"): [(0.10, 1.0), (0.12, 1.0), (0.11, 1.0)],
    ("teacher-student-mlp", "random-add"): [(0.30, 1.0), (0.35, 1.0), (0.31, 1.0)],
    ("spirals-mlp", "s2d"): [(95.0, 1.0), (96.0, 1.0), None],
    ("spirals-mlp", "random-split"): [(90.0, 1.0), (91.0, 1.0), (92.0, 1.0)],
}


def make_cells() -> pd.DataFrame:
    records = []
    for (task, method), seeds in RESULTS.items():
        dataset, score_name, higher = TASKS[task]
        for seed, result in enumerate(seeds):
            score, growth = result if result is not None else (math.nan, math.nan)
            status = "FINISHED" if result is not None else "FAILED"
            records.append(
                cell_record(
                    task,
                    method,
                    seed,
                    dataset,
                    score_name,
                    higher,
                    score,
                    status=status,
                    growth_seconds=growth,
                )
            )
    return pd.DataFrame.from_records(records, columns=CELL_COLUMNS)


def claim(method: str, baseline: str, **options) -> Claim:
    return Claim(PAPER, f"{method} against {baseline}", method, baseline, **options)


def evaluate(*claims: Claim) -> pd.DataFrame:
    table = evaluate_claims(make_cells(), claims)
    assert list(table.columns) == CLAIM_COLUMNS
    return table


def test_a_clear_win_is_reproduced_with_oriented_numbers():
    row = evaluate(claim("s2d", "random-split", tasks=("digits-mlp",))).iloc[0]
    assert row["verdict"] == "reproduced"
    assert row["n_pairs"] == 3
    assert row["method_mean"] == pytest.approx(91.0)
    assert row["baseline_mean"] == pytest.approx((88.0 + 88.5 + 90.2) / 3)
    assert row["diff"] == pytest.approx(91.0 - (88.0 + 88.5 + 90.2) / 3)
    assert row["diff_low"] < row["diff"] < row["diff_high"]
    expected = stats.ttest_rel([90.0, 91.0, 92.0], [88.0, 88.5, 90.2], alternative="greater")
    assert row["p_value"] == pytest.approx(expected.pvalue)
    assert row["test"].startswith("paired t-test (scipy.stats.ttest_rel), one-sided")
    assert "over 3 paired seeds" in row["verdict_reason"]
    assert " pp" in row["verdict_reason"]
    assert "< 0.05" in row["verdict_reason"]


def test_a_clear_loss_contradicts_the_claim():
    row = evaluate(claim("gradmax", "random-add", tasks=("digits",))).iloc[0]
    assert row["task"] == "digits-mlp"
    assert row["verdict"] == "contradicted"
    assert row["diff"] == pytest.approx(-10.0)
    assert row["p_value"] == 1.0  # constant −10: the rule, not scipy's NaN
    assert row["p_against"] == 0.0
    assert "the data reject the claim" in row["verdict_reason"]
    assert "−10" in row["verdict_reason"]
    assert math.isnan(row["mde"])
    assert math.isnan(row["seeds_needed"])


def test_a_noisy_difference_is_inconclusive_with_its_power_figures():
    """signed-s2d vs s2d on digits: differences −0.1, −0.2, +0.05, neither test rejects."""
    row = evaluate(claim("signed-s2d", "s2d", tasks=("digits-mlp",))).iloc[0]
    assert row["verdict"] == "inconclusive"
    diffs = [-0.1, -0.2, 0.05]
    assert row["p_value"] == pytest.approx(stats.ttest_1samp(diffs, 0.0, alternative="greater")[1])
    assert row["p_against"] == pytest.approx(stats.ttest_1samp(diffs, 0.0, alternative="less")[1])
    sd = stats.tstd(diffs)
    critical = stats.t.ppf(0.95, 2)
    # the MDE is where the noncentral t puts 80 % of the statistic above the critical value
    assert stats.nct.sf(critical, 2, row["mde"] * math.sqrt(3) / sd) == pytest.approx(0.8)
    needed = int(row["seeds_needed"])
    effect = abs(sum(diffs) / 3)
    power = lambda n: stats.nct.sf(stats.t.ppf(0.95, n - 1), n - 1, effect * math.sqrt(n) / sd)  # noqa: E731
    assert power(needed) >= 0.8 > power(needed - 1)
    reason = row["verdict_reason"]
    assert "neither the claim" in reason
    assert "80 % power" in reason
    assert f"about {needed} paired seeds would decide it" in reason


def test_every_shared_task_is_tested_and_two_seeds_are_not_enough():
    table = evaluate(claim("s2d", "random-split")).set_index("task")
    assert sorted(table.index) == ["digits-mlp", "spirals-mlp"]
    row = table.loc["spirals-mlp"]
    assert row["verdict"] == "not enough runs"
    assert row["n_pairs"] == 2
    assert row["diff"] == pytest.approx(5.0)
    assert "only 2 paired seeds (3 needed)" in row["verdict_reason"]
    assert table.loc["digits-mlp", "verdict"] == "reproduced"
    relaxed = evaluate(claim("s2d", "random-split", tasks=("spirals",), min_pairs=2)).iloc[0]
    assert relaxed["verdict"] == "reproduced"


def test_non_inferiority_shifts_by_the_margin():
    """The margin is a fraction of the baseline's mean: s2d's digits mean is 91 %."""
    within = claim("signed-s2d", "s2d", relation="non_inferior", margin=0.005)
    tight = claim("signed-s2d", "s2d", relation="non_inferior", margin=0.0001, tasks=("digits",))
    table = evaluate(within, tight)
    diffs = [-0.1, -0.2, 0.05]
    for (_, row), margin in zip(table.iterrows(), (0.005, 0.0001)):
        assert row["task"] == "digits-mlp"
        assert row["diff"] == pytest.approx(sum(diffs) / 3)
        shifted = [d + margin * 91.0 for d in diffs]
        expected = stats.ttest_1samp(shifted, 0.0, alternative="greater").pvalue
        assert row["p_value"] == pytest.approx(expected)
        assert "worse than s2d by less than" in row["test"]
    assert list(table["verdict"]) == ["reproduced", "inconclusive"]
    assert "for advantage > −0.455 pp" in table.iloc[0]["verdict_reason"]
    far = evaluate(claim("fast-s2d", "s2d", relation="non_inferior", margin=0.005)).iloc[0]
    assert far["verdict"] == "contradicted"  # ≈ 3.8 pp worse: wholly beyond the 0.455 pp margin
    shifted = [-3.0 + 0.455, -4.5 + 0.455, -4.0 + 0.455]
    assert far["p_against"] == pytest.approx(
        stats.ttest_1samp(shifted, 0.0, alternative="less").pvalue
    )
    assert "for advantage < −0.455 pp" in far["verdict_reason"]


def test_a_lower_is_better_metric_is_oriented():
    less_time = claim("fast-s2d", "s2d", metric="growth_seconds", higher_is_better=False)
    row = evaluate(less_time).iloc[0]
    assert row["verdict"] == "reproduced"
    assert row["method_mean"] == pytest.approx(1.1 + 1 / 30)
    assert row["diff"] == pytest.approx((5.0 + 5.2 + 4.9) / 3 - (1.0 + 1.3 + 1.1) / 3)
    assert " s " in row["verdict_reason"]
    assert "lower growth_seconds is better" in row["verdict_reason"]
    more_time = claim("s2d", "fast-s2d", metric="growth_seconds", higher_is_better=False)
    assert evaluate(more_time).iloc[0]["verdict"] == "contradicted"


def test_a_loss_task_counts_lower_loss_as_better_and_filters_by_dataset():
    table = evaluate(claim("gradmax", "random-add", tasks=("teacher-student",)))
    assert list(table["task"]) == ["teacher-student-mlp"]
    row = table.iloc[0]
    assert row["verdict"] == "reproduced"
    assert row["method_mean"] == pytest.approx(0.11)
    assert row["diff"] == pytest.approx((0.30 + 0.35 + 0.31) / 3 - 0.11)
    assert "lower test loss is better" in row["verdict_reason"]
    backwards = evaluate(claim("random-add", "gradmax", tasks=("teacher-student-mlp",))).iloc[0]
    assert backwards["verdict"] == "contradicted"
    assert backwards["diff"] < 0


def test_a_claim_whose_methods_never_ran_is_not_run():
    table = evaluate(
        claim("tiny", "static"),
        claim("s2d", "random-split", tasks=("teacher-student",)),
    )
    assert list(table["task"]) == ["—", "—"]
    assert list(table["verdict"]) == ["not run", "not run"]
    assert table["n_pairs"].tolist() == [0, 0]
    assert "on teacher-student" in table.iloc[1]["verdict_reason"]


def test_empty_claims_give_an_empty_table():
    assert evaluate().empty


def test_an_unknown_metric_column_is_an_error():
    with pytest.raises(ValueError, match="no column"):
        evaluate(claim("s2d", "random-split", metric="joules", higher_is_better=False))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"paper": ""}, "paper"),
        ({"statement": "two\nlines"}, "one line"),
        ({"baseline": "s2d"}, "itself"),
        ({"relation": "worse"}, "relation"),
        ({"relation": "non_inferior", "margin": -1.0}, "margin"),
        ({"relation": "non_inferior", "margin": math.inf}, "margin"),
        ({"margin": 0.5}, "non_inferior"),
        ({"tasks": "digits"}, "tuple"),
        ({"tasks": ("",)}, "tasks"),
        ({"min_pairs": 1}, "min_pairs"),
        ({"alpha": 1.5}, "alpha"),
        ({"metric": "growth_seconds"}, "higher_is_better"),
        ({"higher_is_better": True}, "None for metric 'score'"),
    ],
)
def test_claim_validation(options, message):
    fields = {"paper": PAPER, "statement": "s", "method": "s2d", "baseline": "random-split"}
    with pytest.raises(ValueError, match=message):
        Claim(**{**fields, **options})


def test_claim_tasks_become_a_tuple():
    made = Claim(PAPER, "s", "a", "b", tasks=["x", "y"])  # type: ignore[arg-type]
    assert made.tasks == ("x", "y")


def test_collect_claims_gathers_the_registered_methods_claims():
    claims = collect_claims()
    assert len(claims) == len(set(claims))
    pairs = {(c.method, c.baseline, c.metric) for c in claims}
    assert ("s2d", "random-split", "score") in pairs
    assert ("tiny", "static", "score") in pairs
    assert all("arXiv:" in c.paper for c in claims if c.method != "static")
    methods = available_methods()
    assert [c.method for c in claims] == sorted(c.method for c in claims)
    assert collect_claims(["tiny"]) == list(methods["tiny"].claims)
    assert collect_claims({"a": methods["s2d"], "b": methods["s2d"]}) == list(methods["s2d"].claims)


def test_compare_verdicts_counts_moves_and_flips():
    def frame(verdicts: dict[str, str]) -> pd.DataFrame:
        rows = [
            {"claim": claim, "task": "t", "verdict": verdict, "p_value": 0.01}
            for claim, verdict in verdicts.items()
        ]
        return pd.DataFrame(rows)

    here = frame({"a": "reproduced", "b": "reproduced", "c": "inconclusive", "d": "not run"})
    there = frame({"a": "reproduced", "b": "contradicted", "c": "reproduced", "e": "inconclusive"})
    compared = compare_verdicts(here, there).set_index("claim")
    assert list(compared.index) == ["a", "b", "c", "e"]  # d was tested on neither side
    assert compared["moved"].to_dict() == {"a": False, "b": True, "c": True, "e": True}
    assert compared["flipped"].to_dict() == {"a": False, "b": True, "c": False, "e": False}
    assert compared.loc["e", "verdict"] == "not run"
