"""The Rayleigh-quotient estimator's settings (``growbench.methods.rayleigh.RayleighConfig``) are
the ``rayleigh`` option of ``signed-s2d`` and ``fast-s2d`` alike: a suite sets them as a table,
unknown keys and bad values are refused naming ``rayleigh.NAME``, quick settings reach them, and
``signed-s2d``'s estimator and its ``"auto"`` rule read its own."""

from __future__ import annotations

import dataclasses

import pytest

import growbench.methods.rayleigh as rq
from growbench.benchmarks.suite import SuiteError, parse_suite
from growbench.contract import quick_grower
from growbench.methods import make_grower
from growbench.methods._splitting import splittable_sites
from growbench.methods.fast_s2d import FastS2DConfig
from growbench.methods.signed_s2d import SignedS2D, SignedS2DConfig
from growbench.options import option_rows

from .conftest import make_task

TASK = '[[tasks]]\ndataset = "spirals"\nmodel = "mlp"\nmodel_options = { widths = [4] }\n'


def suite(method: str, options: str) -> str:
    head = f'name = "t"\nepochs = 3\nmethods = ["{method}"]\n'
    return f"{head}\n[method_options.{method}]\n{options}\n\n{TASK}"


def counted_steps(monkeypatch) -> list[int]:
    """Steps the estimator runs, one entry per ``rayleigh_extremes`` call."""
    runs: list[int] = []
    real = rq.minibatch_passes

    def counting(*args, **kwargs):
        runs.append(0)
        for order, take in real(*args, **kwargs):
            runs[-1] += take
            yield order, take

    monkeypatch.setattr(rq, "minibatch_passes", counting)
    return runs


def test_one_config_and_the_same_defaults_for_both_methods():
    assert SignedS2DConfig().rayleigh == FastS2DConfig().rayleigh == rq.RayleighConfig()
    defaults = rq.RayleighConfig()
    assert (defaults.passes, defaults.min_steps, defaults.steps, defaults.batch_size) == (
        50,
        1200,
        None,
        64,
    )
    assert defaults.steps_for(2048) == 1600


def test_a_suite_sets_signed_s2d_s_estimator(monkeypatch):
    text = suite("signed-s2d", 'eigen_solver = "rayleigh"\nrayleigh = { steps = 7, lr = 0.05 }')
    (cell,) = parse_suite(text).cells()
    grower = cell.make_grower()
    assert grower.config.rayleigh == rq.RayleighConfig(steps=7, lr=0.05)
    assert cell.params()["method.options.rayleigh.steps"] == "7"
    other = parse_suite(suite("signed-s2d", "rayleigh = { steps = 8 }")).cells()[0]
    assert other.config_hash() != cell.config_hash()

    runs = counted_steps(monkeypatch)
    task = make_task("tanh_mlp")
    event = grower.grow(task.net, task.context())
    assert runs == [7]
    assert event.extras["rayleigh_sites"] == [s.name for s in splittable_sites(task.net.sites)]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            "rayleigh = { stpes = 7 }",
            r"rayleigh\.stpes: rayleigh has no option 'stpes'.*passes=50",
        ),
        ("rayleigh = { passes = 1.5 }", r"method_options\.signed-s2d\.rayleigh\.passes"),
        (
            "rayleigh = { steps = 1.5 }",
            r"method_options\.signed-s2d: signed-s2d: rayleigh\.steps must be a whole number",
        ),
        ("rayleigh = 3", r"method_options\.signed-s2d\.rayleigh must be a table"),
        ("rayleigh = { steps = 0 }", r"signed-s2d: rayleigh\.steps must be greater than 0, got 0"),
    ],
)
def test_a_suite_s_bad_rayleigh_table_is_one_clear_error(options, message):
    with pytest.raises(SuiteError, match=message):
        parse_suite(suite("signed-s2d", options))


@pytest.mark.parametrize("method", ["signed-s2d", "fast-s2d"])
@pytest.mark.parametrize(
    ("rayleigh", "message"),
    [
        ({"stpes": 7}, "{method}: rayleigh has no option 'stpes'; its options are: passes=50, "),
        ({"steps": 0}, "{method}: rayleigh.steps must be greater than 0, got 0"),
        ({"batch_size": -1}, "{method}: rayleigh.batch_size must be greater than 0, got -1"),
        ({"momentum": -0.5}, "{method}: rayleigh.momentum must be 0 or more, got -0.5"),
        ({"window": 1.5}, "{method}: rayleigh.window must be at most 1, got 1.5"),
        ({"tolerance": -0.1}, "{method}: rayleigh.tolerance must be 0 or more, got -0.1"),
        ({"lr": float("inf")}, "{method}: rayleigh.lr must be a finite number, got inf"),
        ({"milestones": (0.5, float("nan"))}, "{method}: rayleigh.milestones must be a finite"),
    ],
)
def test_make_grower_refuses_bad_estimator_settings(method, rayleigh, message):
    with pytest.raises(ValueError) as caught:
        make_grower(method, {"rayleigh": rayleigh})
    assert str(caught.value).startswith(message.format(method=method))


def test_quick_overrides_reach_signed_s2d_s_estimator(monkeypatch):
    """Merged into the suite's table key by key (the smoke suite) and applied by the contract's
    quick grower; signed-s2d has no quick settings of its own, so they are patched in here."""
    monkeypatch.setattr(SignedS2D, "quick_overrides", {"rayleigh": {"steps": 5}})
    text = suite("signed-s2d", 'eigen_solver = "rayleigh"\nrayleigh = { steps = 7, lr = 0.05 }')
    (cell,) = parse_suite(text).smoke().cells()
    grower = cell.make_grower()
    assert grower.config.rayleigh == rq.RayleighConfig(steps=5, lr=0.05)
    assert quick_grower("signed-s2d").config.rayleigh.steps == 5

    runs = counted_steps(monkeypatch)
    task = make_task("tanh_mlp")
    grower.grow(task.net, task.context())
    assert runs == [5]


def test_fast_s2d_s_quick_overrides_keep_the_suite_s_other_settings():
    text = suite("fast-s2d", "rayleigh = { steps = 7, lr = 0.05 }")
    (cell,) = parse_suite(text).smoke().cells()
    assert cell.make_grower().config.rayleigh == rq.RayleighConfig(steps=160, lr=0.05)
    assert quick_grower("fast-s2d").config.rayleigh == rq.RayleighConfig(steps=160)


def test_the_auto_rule_reads_signed_s2d_s_own_settings():
    """Exact while N·p ≤ 2·steps·batch_size: a fan-in of 27 over 2,048 samples is formed
    exactly with the defaults and estimated with 100 steps."""
    site = make_task("vgg").net.site("conv1")
    assert site.fan_in_size == 27
    assert not make_grower("signed-s2d")._estimates(site, 2048)
    assert make_grower("signed-s2d", {"rayleigh": {"steps": 100}})._estimates(site, 2048)
    assert not make_grower(
        "signed-s2d", {"rayleigh": {"steps": 100, "batch_size": 512}}
    )._estimates(site, 2048)


def test_the_estimator_s_options_are_listed_and_described_field_by_field():
    rows = {row.name: row for row in option_rows(SignedS2DConfig)}
    assert "rayleigh" not in rows
    nested = [name for name in rows if name.startswith("rayleigh.")]
    assert nested == [f"rayleigh.{field.name}" for field in dataclasses.fields(rq.RayleighConfig)]
    assert rows["rayleigh.passes"].default == "50"
    assert rows["rayleigh.passes"].description.startswith("Length of the descent in passes")
    assert rows["rayleigh.steps"].description.startswith("The descent's steps, overriding")
    assert [row.name for row in option_rows(FastS2DConfig) if row.name.startswith("rq_")] == []
