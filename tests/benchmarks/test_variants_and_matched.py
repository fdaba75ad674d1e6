"""Variants (one method under several names and options) and matched static nets (``static``
at the widths a growing cell ended with): parsed from a suite, run end to end, and reported."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from growbench.benchmarks.executor import run_suite
from growbench.benchmarks.suite import SuiteError, parse_suite
from growbench.benchmarks.tracking import best_runs
from growbench.claims import Claim
from growbench.reports.build import write_report
from growbench.reports.claims import evaluate_claims
from growbench.reports.tables import read_tables

TASK = '[[tasks]]\ndataset = "digits"\nmodel = "mlp"\nmodel_options = { widths = [4] }\n'
SUITE = f"""
name = "matched"
seeds = 2
epochs = 3
methods = ["none", "random-add", "add-more"]
matched_static = true

[growth]
first_epoch = 1
every = 1
max_rounds = 2

[variants.add-more]
method = "random-add"
options = {{ growth_ratio = 1.0 }}

{TASK}
"""


def parse(text: str):
    return parse_suite(text, "t")


def test_a_variant_is_a_method_of_its_own_with_its_base_and_options():
    suite = parse(SUITE)
    assert suite.methods == ("none", "random-add", "add-more")
    cells = {cell.method: cell for cell in suite.cells() if cell.seed == 0}
    variant, base = cells["add-more"], cells["random-add"]
    assert variant.base_method == "random-add"
    assert variant.registered_method == "random-add"
    assert variant.method_options["growth_ratio"] == 1.0
    assert base.method_options["growth_ratio"] == 0.3
    assert variant.method_code == base.method_code
    assert variant.config_hash() != base.config_hash()
    assert variant.resolved()["method"]["base"] == "random-add"
    assert "base" not in base.resolved()["method"]  # a plain method's hash is as before
    assert type(variant.make_grower()).__name__ == type(base.make_grower()).__name__
    assert variant.make_grower().config.growth_ratio == 1.0
    # matched_static = true: the growing methods, variants included, not the fixed `none`
    assert suite.matched == ("random-add", "add-more")
    assert suite.select(["none", "add-more"]).matched == ("add-more",)
    assert set(suite.select(["none", "add-more"]).variants) == {"add-more"}


def test_star_takes_the_variants_too():
    suite = parse(SUITE.replace('methods = ["none", "random-add", "add-more"]', 'methods = "*"'))
    assert "add-more" in suite.methods
    assert "random-add" in suite.methods


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("[variants.add-more]", "[variants.s2d]"), "'s2d' is a registered method"),
        (('method = "random-add"', 'method = "nope"'), "variants.add-more.method: unknown"),
        (('method = "random-add"\n', ""), "variants.add-more.method is required"),
        (("growth_ratio = 1.0", "growth_ratio = -1.0"), "growth_ratio must be greater than 0"),
        (("growth_ratio = 1.0", "ratio = 1.0"), "has no option 'ratio'"),
        (('method = "random-add"', 'method = "random-add"\ncolour = 1'), "colour"),
        (("[variants.add-more]", '[variants."bad name"]'), "variants.bad name"),
        (("matched_static = true", 'matched_static = ["none"]'), "'none' never grows"),
        (("matched_static = true", 'matched_static = ["s2d"]'), "not among the suite's"),
        (("matched_static = true", 'matched_static = "yes"'), "true, false or a list"),
        (
            (
                "[variants.add-more]",
                "[method_options.add-more]\ngrowth_ratio = 1.0\n[variants.add-more]",
            ),
            "'add-more' is a variant",
        ),
    ],
)
def test_bad_variants_and_matched_static_are_one_clear_error(change, message):
    old, new = change
    assert old in SUITE
    with pytest.raises(SuiteError) as error:
        parse(SUITE.replace(old, new, 1))
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_matched_cell_takes_the_final_widths_and_refuses_a_deepened_net():
    suite = parse(SUITE)
    grown = next(c for c in suite.cells() if c.method == "random-add" and c.seed == 1)
    matched, reason = suite.matched_cell(grown, {"block0": 9}, ["block0"])
    assert reason is None
    assert matched.method == "static@random-add"
    assert matched.base_method == "static"
    assert matched.seed == 1
    assert matched.task == grown.task
    assert matched.method_options["widths"] == [9]
    assert matched.make_grower().config.widths == [9]
    other, _ = suite.matched_cell(grown, {"block0": 10}, ["block0"])
    assert other.config_hash() != matched.config_hash()
    deeper, reason = suite.matched_cell(grown, {"block0": 9, "block0+1": 4}, ["block0"])
    assert "inserted layers (block0+1)" in reason
    assert deeper.method == "static@random-add"


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("matched")
    uri = f"sqlite:///{folder}/mlflow.db"
    suite = parse(SUITE)
    outcome = run_suite(suite, uri, "cpu")
    return uri, suite, outcome, folder


def _architecture(client: MlflowClient, run_id: str) -> dict:
    path = client.download_artifacts(run_id, "architecture.json")
    return json.loads(Path(path).read_text())


def test_the_matched_static_nets_are_trained_at_the_grown_widths(ran):
    uri, suite, outcome, _ = ran
    assert not outcome.failed
    matched = sorted(label for label in outcome.finished if "static@" in label)
    assert matched == [
        f"digits-mlp/static@{method}/seed{seed}"
        for method in ("add-more", "random-add")
        for seed in (0, 1)
    ]
    assert len(outcome.finished) == len(suite.cells()) + 4
    client = MlflowClient(uri)
    runs = {
        (r.data.tags["growbench.method"], int(r.data.tags["growbench.seed"])): r
        for r in best_runs(uri, suite.name).values()
    }
    for method in ("random-add", "add-more"):
        for seed in (0, 1):
            grown = _architecture(client, runs[(method, seed)].info.run_id)
            same = _architecture(client, runs[(f"static@{method}", seed)].info.run_id)
            assert same["widths"] == grown["widths"]
            assert same["params"] == grown["params"]
            assert runs[(f"static@{method}", seed)].data.tags["growbench.base_method"] == "static"
    assert runs[("add-more", 0)].data.tags["growbench.base_method"] == "random-add"
    assert runs[("add-more", 0)].data.params["method.options.growth_ratio"] == "1.0"
    # the variant grew more than its base with the default ratio
    wider = _architecture(client, runs[("add-more", 0)].info.run_id)["widths"]["block0"]
    assert wider > _architecture(client, runs[("random-add", 0)].info.run_id)["widths"]["block0"]
    again = run_suite(suite, uri, "cpu")  # every cell, matched ones included, is done
    assert again.finished == []
    assert len(again.skipped) == len(suite.cells()) + 4


def test_the_report_shows_variants_and_matched_nets_side_by_side(ran):
    uri, suite, _, folder = ran
    out = folder / "report"
    write_report(uri, suite, out)
    cells = read_tables(out).cells
    assert set(cells["method"]) == {
        "none",
        "random-add",
        "add-more",
        "static@random-add",
        "static@add-more",
    }
    assert (cells["status"] == "FINISHED").all()
    base = cells.drop_duplicates("method").set_index("method")["base_method"]
    assert base["add-more"] == "random-add"
    assert base["static@add-more"] == "static"
    options = cells.drop_duplicates("method").set_index("method")["variant_options"]
    assert json.loads(options["add-more"]) == {"growth_ratio": 1.0}
    assert json.loads(options["static@random-add"])["widths"]
    assert options["none"] == ""
    assert cells["threads"].notna().all()
    assert (cells["cpu"] != "").all()
    assert cells["budget_fraction"].between(0, 1.0 + 1e-9).all()
    text = (out / "report.md").read_text()
    assert "- `add-more`: variant of `random-add` with growth_ratio = 1.0." in text
    # matched nets are references: described once, compared in their own section, not ranked
    assert "- `static@add-more`, `static@random-add`: matched static nets" in text
    assert "| `random-add` | `static@random-add` | 2 |" in text.split("## Matched static nets")[1]
    assert "| `static@random-add` |" not in text.split("## Matched static nets")[0]
    assert "| `add-more` |" in text
    assert "| `random-add` |" in text
    # a same-size claim is tested against the matched nets, seed by seed
    same_size = Claim("p", "random-add reaches its own size", "random-add", "static",
                      relation="non_inferior", margin=0.5, min_pairs=2, matched=True)  # fmt: skip
    row = evaluate_claims(cells, [same_size]).iloc[0]
    assert row["baseline"] == "static@random-add"
    assert row["n_pairs"] == 2
    scores = cells.set_index(["method", "seed"])["score"]
    expected = sum(scores["random-add", s] - scores["static@random-add", s] for s in (0, 1)) / 2
    assert row["diff"] == pytest.approx(expected)
    # between two growing methods: each side less its own matched net
    equal = Claim("p", "add-more beats random-add at equal size", "add-more", "random-add",
                  min_pairs=2, matched=True)  # fmt: skip
    row = evaluate_claims(cells, [equal]).iloc[0]
    adjusted = pd.Series(
        [
            (scores["add-more", s] - scores["static@add-more", s])
            - (scores["random-add", s] - scores["static@random-add", s])
            for s in (0, 1)
        ]
    )
    assert row["diff"] == pytest.approx(adjusted.mean())
    assert "each less its matched static net" in row["verdict_reason"]
