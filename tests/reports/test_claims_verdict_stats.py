"""The claims table's numbers agree with its verdicts: the interval is the pair of one-sided bounds
the tests use, the p shown is the p of the test that decided, and a claim that was not tested says
what is missing."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from growbench.claims import Claim
from growbench.methods import available_methods
from growbench.reports import build
from growbench.reports.claims import evaluate_claims
from growbench.reports.tables import ACCURACY_SCORE, CELL_COLUMNS, LOSS_SCORE
from tests.reports.conftest import cell_record

PAPER = "Someone et al. 2024, arXiv:0000.00000"
TASKS = {  # task → (dataset, score name, higher is better)
    "digits-mlp": ("digits", ACCURACY_SCORE, True),
    "digits-cnn": ("digits", ACCURACY_SCORE, True),
    "fashion-mnist-mlp": ("fashion-mnist", ACCURACY_SCORE, True),
    "teacher-student-mlp": ("teacher-student", LOSS_SCORE, False),
}
BASE = {"digits-mlp": 90.0, "digits-cnn": 95.0, "fashion-mnist-mlp": 85.0}
BASE_LOSS = 0.5
WOBBLE = [0.3, -0.2, 0.1, -0.4, 0.25, 0.0, -0.1, 0.2]  # the baseline's spread over seeds


def cells_of(results: dict[tuple[str, str], list[float]]) -> pd.DataFrame:
    """A cells table: (task, method) → the score per seed (seed = position), all FINISHED."""
    records = []
    for (task, method), scores in results.items():
        dataset, score_name, higher = TASKS[task]
        for seed, score in enumerate(scores):
            model = task.rsplit("-", 1)[1]
            records.append(
                cell_record(task, method, seed, dataset, score_name, higher, score, model=model)
            )
    return pd.DataFrame.from_records(records, columns=CELL_COLUMNS)


def pair(task: str, advantages: list[float]) -> dict[tuple[str, str], list[float]]:
    """Scores of a method "m" and a baseline "b" on ``task`` whose per-seed advantage of m over b
    (oriented: positive is better) is ``advantages``."""
    n = len(advantages)
    if TASKS[task][2]:
        baseline = [BASE[task] + w for w in WOBBLE[:n]]
        method = [b + a for b, a in zip(baseline, advantages, strict=True)]
    else:
        baseline = [BASE_LOSS + w / 10 for w in WOBBLE[:n]]
        method = [b - a for b, a in zip(baseline, advantages, strict=True)]
    return {(task, "m"): method, (task, "b"): baseline}


D, TS, NI = "digits-mlp", "teacher-student-mlp", "non_inferior"
# (name, task, relation, margin, alpha, per-seed advantages, expected verdict)
CASES = [
    ("clear win", D, "better", 0.0, 0.05, [1.0, 1.4, 0.8, 1.2, 1.1], "reproduced"),
    ("clear loss", D, "better", 0.0, 0.05, [-1.0, -1.5, -0.7, -1.2], "contradicted"),
    # the 95 % two-sided interval of these holds 0, the one-sided test at 0.05 still rejects
    ("narrow loss", D, "better", 0.0, 0.05, [-0.2, -0.6, -0.4], "contradicted"),
    ("noise", D, "better", 0.0, 0.05, [0.5, -0.4, 0.3, -0.6, 0.1], "inconclusive"),
    ("lower loss", TS, "better", 0.0, 0.05, [0.02, 0.03, 0.025], "reproduced"),
    ("higher loss", TS, "better", 0.0, 0.05, [-0.02, -0.03, -0.01], "contradicted"),
    ("within margin", D, NI, 0.01, 0.05, [-0.1, -0.2, 0.05, 0.0], "reproduced"),
    ("beyond margin", D, NI, 0.01, 0.05, [-3.0, -4.5, -4.0], "contradicted"),
    ("near margin", D, NI, 0.01, 0.05, [-0.2, -1.8, -0.4, -1.5], "inconclusive"),
    ("loss margin", TS, NI, 0.02, 0.05, [0.0, -0.002, 0.001], "reproduced"),
    ("constant win", D, "better", 0.0, 0.05, [0.5, 0.5, 0.5], "reproduced"),
    ("constant tie", D, "better", 0.0, 0.05, [0.0, 0.0, 0.0], "inconclusive"),
    ("level 0.1", D, "better", 0.0, 0.1, [0.6, -0.1, 0.5, 0.2], "reproduced"),
]


def evaluate_case(task, relation, margin, alpha, advantages) -> pd.Series:
    claim = Claim(PAPER, "m against b", "m", "b", relation=relation, margin=margin, alpha=alpha)
    table = evaluate_claims(cells_of(pair(task, advantages)), [claim])
    assert len(table) == 1
    return table.iloc[0]


@pytest.mark.parametrize(
    ("task", "relation", "margin", "alpha", "advantages", "verdict"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_the_interval_is_the_tests_one_sided_bounds_and_agrees_with_the_verdict(
    task, relation, margin, alpha, advantages, verdict
):
    row = evaluate_case(task, relation, margin, alpha, advantages)
    assert row["verdict"] == verdict
    diffs = np.asarray(advantages)
    n = len(diffs)
    assert row["diff"] == pytest.approx(diffs.mean())
    # the boundary: 0, or minus the margin as a fraction of the baseline's mean
    baseline = pair(task, advantages)[(task, "b")]
    assert row["boundary"] == pytest.approx(-margin * abs(np.mean(baseline)))
    assert row["alpha"] == alpha
    # the bounds: one-sided (1 − alpha) each, i.e. a (1 − 2 alpha) two-sided interval
    if np.ptp(diffs) == 0:
        expected_low = expected_high = diffs.mean()
    else:
        half = stats.t.ppf(1 - alpha, n - 1) * diffs.std(ddof=1) / math.sqrt(n)
        expected_low, expected_high = diffs.mean() - half, diffs.mean() + half
        ci = stats.t.interval(1 - 2 * alpha, n - 1, diffs.mean(), stats.sem(diffs))
        assert (row["diff_low"], row["diff_high"]) == pytest.approx(ci)
    assert row["diff_low"] == pytest.approx(expected_low, abs=1e-12)
    assert row["diff_high"] == pytest.approx(expected_high, abs=1e-12)
    # reproduced ⇔ the lower bound clears the boundary; contradicted ⇔ the upper bound falls
    # below it; inconclusive ⇔ the interval holds it
    low, high, boundary = row["diff_low"], row["diff_high"], row["boundary"]
    assert (row["verdict"] == "reproduced") == (low > boundary)
    assert (row["verdict"] == "contradicted") == (high < boundary)
    assert (row["verdict"] == "inconclusive") == (low <= boundary <= high)
    # the shown p is the deciding test's, and it is below alpha exactly when the verdict is decided
    deciding = row["p_against"] if verdict == "contradicted" else row["p_value"]
    assert row["p_verdict"] == deciding
    assert (row["p_verdict"] < alpha) == (verdict != "inconclusive")
    # each reason gives both one-sided p's
    reason = row["verdict_reason"]
    boundary_text = "0" if boundary == 0 else f"{boundary:+.3g}".replace("-", "−")
    claim_p, opposite_p = f"p = {row['p_value']:.2g}", f"p = {row['p_against']:.2g}"
    assert reason.index(claim_p) < reason.index(f"for advantage > {boundary_text}")
    assert reason.index(opposite_p) < reason.index(f"for advantage < {boundary_text}")
    assert f"{100 * (1 - 2 * alpha):g} % CI" in reason


def test_a_contradicted_row_shows_the_opposite_tests_p_not_the_claims():
    """The reader's case: "p = 0.980" beside **contradicted**."""
    row = evaluate_case("digits-mlp", "better", 0.0, 0.05, [-0.2, -0.6, -0.4])
    assert row["verdict"] == "contradicted"
    assert row["p_value"] > 0.95
    assert row["p_verdict"] == row["p_against"] < 0.05
    assert row["p_value"] + row["p_against"] == pytest.approx(1.0)
    # a 95 % two-sided interval would hold 0 here; the interval shown does not
    two_sided = stats.t.interval(0.95, 2, row["diff"], stats.sem([-0.2, -0.6, -0.4]))
    assert two_sided[0] < 0 < two_sided[1]
    assert row["diff_high"] < 0
    assert "the data reject the claim" in row["verdict_reason"]
    assert "upper bound" in row["verdict_reason"]


def test_the_rendered_table_shows_the_deciding_p_and_the_matching_interval():
    cells = cells_of(
        {
            **pair("digits-mlp", [-0.2, -0.6, -0.4]),
            **{("digits-cnn", m): v for (_, m), v in pair("digits-cnn", [0.2] * 3).items()},
        }
    )
    claims = [
        Claim(PAPER, "m beats b", "m", "b", tasks=("digits-mlp",)),
        Claim(PAPER, "m within 1 % of b", "m", "b", relation="non_inferior", margin=0.01),
    ]
    table = evaluate_claims(cells, claims)
    text = "\n".join(build._claims_section(table, cells))
    assert "| Δ (90 % CI) | boundary | p | verdict |" in text
    assert "one-sided 95 % confidence bounds" in text
    assert "p is the one-sided p of the test that decided the verdict" in text
    lines = [line for line in text.splitlines() if line.startswith("| Someone")]
    contradicted = next(line for line in lines if "m beats b" in line)
    row = table[table["claim"] == "m beats b"].iloc[0]
    assert "**contradicted**" in contradicted
    assert f"| {build._p(row['p_against'])} |" in contradicted
    assert f"| {build._p(row['p_value'])} |" not in contradicted
    assert f"({row['diff_low']:+.4g} … {row['diff_high']:+.4g})" in contradicted
    assert "| test accuracy % |" in contradicted
    assert "| 0 |" in contradicted  # the boundary of a "better" claim
    margin = next(line for line in lines if "m within 1 % of b" in line and "digits-cnn" in line)
    baseline = np.mean([95.0 + w for w in WOBBLE[:3]])
    assert f"| {-0.01 * baseline:.4g} |" in margin  # minus 1 % of the baseline's mean
    reasons = [line for line in text.splitlines() if line.startswith("- m beats b")]
    assert len(reasons) == 1
    assert f"p = {row['p_value']:.2g}" in reasons[0]
    assert f"p = {row['p_against']:.2g}" in reasons[0]


def test_a_claim_whose_task_did_not_run_says_so():
    """gradmax and random-add ran 24 cells each, but not on the claim's task."""
    results = {}
    for task in ("digits-mlp", "digits-cnn", "fashion-mnist-mlp"):
        results[(task, "gradmax")] = [BASE[task] + w for w in WOBBLE]
        results[(task, "random-add")] = [BASE[task] - w for w in WOBBLE]
    cells = cells_of(results)
    assert len(cells[cells["method"] == "gradmax"]) == 24
    claim = Claim(
        PAPER, "gradmax beats random-add", "gradmax", "random-add", tasks=("teacher-student",)
    )
    row = evaluate_claims(cells, [claim]).iloc[0]
    assert row["verdict"] == "not run"
    assert row["verdict_reason"] == (
        "the claim's task teacher-student was not run in this suite (gradmax and random-add ran "
        "on digits-cnn, digits-mlp and fashion-mnist-mlp)"
    )
    text = "\n".join(build._claims_section(evaluate_claims(cells, [claim]), cells))
    line = next(line for line in text.splitlines() if line.startswith("Not tested"))
    assert "the claim's task teacher-student was not run" in line
    assert "want of cells" not in line


def test_a_claim_not_run_names_the_missing_methods():
    cells = cells_of(
        {
            **pair("digits-mlp", [0.1, 0.2, 0.3]),
            ("teacher-student-mlp", "m"): [0.1, 0.2, 0.3],
            ("digits-cnn", "c"): [90.0, 91.0, 92.0],
        }
    )
    claims = [
        Claim(PAPER, "tiny at equal size", "tiny", "static", matched=True),
        Claim(PAPER, "m on teacher-student", "m", "b", tasks=("teacher-student",)),
        Claim(PAPER, "m against c", "m", "c"),
        Claim(PAPER, "m against b, few seeds", "m", "b", min_pairs=4),
        Claim(PAPER, "gradmax on spirals", "gradmax", "b", tasks=("spirals",)),
    ]
    table = evaluate_claims(cells, claims).set_index("claim")
    reasons = table["verdict_reason"]
    assert reasons["tiny at equal size"] == "tiny and static@tiny were not run in this suite"
    assert reasons["gradmax on spirals"] == (
        "the claim's task spirals was not run in this suite (b ran on digits-mlp); "
        "gradmax was not run at all"
    )
    assert (
        reasons["m on teacher-student"] == "b was not run on teacher-student; b ran on digits-mlp"
    )
    assert reasons["m against c"] == (
        "no task in this suite has cells of all of m and c; m ran on digits-mlp and "
        "teacher-student-mlp; c ran on digits-cnn"
    )
    # too few seeds is another verdict with its own reason, never "not run"
    assert table.loc["m against b, few seeds", "verdict"] == "not enough runs"
    assert "only 3 paired seeds (4 needed)" in reasons["m against b, few seeds"]


def test_senns_statement_names_the_metric_it_is_tested_on():
    (claim,) = available_methods()["senn"].claims
    assert claim.metric == "score"  # the task's score: accuracy or loss, per task
    assert "reach the loss" not in claim.statement
    assert "test accuracy on classification tasks" in claim.statement
    assert "test loss on regression tasks" in claim.statement
    assert "1 %" in claim.statement
    assert claim.margin == 0.01
