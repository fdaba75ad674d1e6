"""Fidelity checks of ``tiny`` (shared/methods/tiny.md §7, checks 2-8), float64.

The GroMo oracle (check 1) is in ``test_tiny_gromo_oracle.py``.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from growbench.methods import GrowthContext, make_grower
from growbench.methods._bottleneck import site_rows, site_statistics
from growbench.methods.tiny import (
    TinyConfig,
    apply_tiny,
    canonical_pairs,
    significant_count,
    solve_site,
)
from growbench.nn import ModelConfig, build_model, collect_taps
from growbench.nn.losses import regression_loss

from .conftest import make_task


def rows(task, site):
    """Per-sample x̃, h̃, g_a of ``site`` over the whole statistics set."""
    taps, _ = collect_taps(task.net, task.inputs, task.targets, task.loss_fn)
    return site_rows(site, taps[site.name], taps[site.consumer_block.name])


def solved(task, max_added=None):
    ctx = task.context()
    stats = site_statistics(task.net, ctx, task.net.sites)
    config = TinyConfig()
    out = {}
    for site in task.net.sites:
        limit = max_added if max_added is not None else site.width + 10
        out[site.name] = (stats[site.name], solve_site(stats[site.name], config, limit, 1.0))
    return out


def outputs(net, inputs):
    with torch.no_grad():
        return net(inputs)


# ---------------------------------------------------------------- 2. brute force
@pytest.mark.parametrize("task_name", ["tanh_mlp", "relu_mlp"])
def test_closed_form_against_brute_force(task_name):
    task = make_task(task_name)
    generator = torch.Generator().manual_seed(0)
    for site in task.net.sites:
        stats, solution = solved(task)[site.name]
        x, h, g = rows(task, site)
        count = len(x)
        lstsq = torch.linalg.lstsq(h, g).solution.T
        assert torch.allclose(solution.delta, lstsq, rtol=1e-10, atol=1e-12)
        r = -g + h @ solution.delta.T
        assert float((h.T @ r / count).abs().max()) <= 1e-12
        assert stats.residual_norm(solution.delta) == pytest.approx(
            float((r * r).sum()) / count, rel=1e-10
        )
        k = solution.count
        alpha, omega = solution.alpha[:k], solution.omega[:k]

        def residual(alpha, omega, x=x, r=r, count=count):
            fitted = x @ alpha.T @ omega
            return float(((r - fitted) ** 2).sum()) / count

        best = residual(alpha, omega)
        expected = float((r * r).sum()) / count - float((solution.singular_values[:k] ** 2).sum())
        assert best == pytest.approx(expected, rel=1e-10)
        for _ in range(100):
            scale = 1e-3 * max(float(alpha.abs().max()), 1e-6)
            a = alpha + scale * torch.randn(alpha.shape, generator=generator, dtype=alpha.dtype)
            w = omega + scale * torch.randn(omega.shape, generator=generator, dtype=omega.dtype)
            assert residual(a, w) >= best - 1e-15


# ---------------------------------------------------------------- 3. cross term
def test_first_order_gain_forms_and_cross_term():
    task = make_task("tanh_mlp")
    for stats, solution in solved(task).values():
        k = solution.count
        second = solution.gain_delta + (
            float((solution.singular_values[:k] ** 2).sum()) - solution.cross_term(k, stats)
        )
        assert solution.fo_exact(k, stats) == pytest.approx(second, abs=1e-12)
        difference = solution.fo_gromo(k) - solution.fo_exact(k, stats)
        assert difference == pytest.approx(solution.cross_term(k, stats), abs=1e-12)
        assert abs(solution.cross_term(k, stats)) > 1e-8  # the correction is not negligible


def realised_ratio(task_name, gamma, selection):
    task = make_task(task_name)
    ctx = task.context()
    before = ctx.loss(task.net)
    grower = make_grower("tiny", {"gamma_fixed": gamma, "site_selection": selection})
    event = grower.grow(task.net, ctx)
    assert event.grew
    realised = ctx.loss(task.net) - before
    return realised / event.predicted_loss_change, event


@pytest.mark.parametrize("selection", ["best-fo", "round-robin"])  # block1, then block0
def test_tanh_loss_change_matches_fo_exact(selection):
    ratio, event = realised_ratio("tanh_mlp", 1e-2, selection)
    assert event.predicted_loss_change == pytest.approx(
        -1e-4 * event.extras["sites"][event.extras["site"]]["fo_exact"], rel=1e-12
    )
    assert abs(ratio - 1) <= 1e-3
    gammas = [1e-1, 3e-2, 1e-2]
    errors = [abs(realised_ratio("tanh_mlp", g, selection)[0] - 1) for g in gammas]
    slope = (math.log(errors[0]) - math.log(errors[-1])) / (
        math.log(gammas[0]) - math.log(gammas[-1])
    )
    assert abs(slope - 2) <= 0.3


# ---------------------------------------------------------------------- 4. ReLU
@pytest.mark.parametrize("selection", ["best-fo", "round-robin"])
def test_relu_loss_change_matches_fo_homog(selection):
    ratio, event = realised_ratio("relu_mlp", 1e-2, selection)
    report = event.extras["sites"][event.extras["site"]]
    assert event.predicted_loss_change == pytest.approx(-1e-4 * report["fo_homog"], rel=1e-12)
    assert "fo_gromo" in report
    assert abs(ratio - 1) <= 1e-3


# ------------------------------------------------------- 5. zero amplitude, apply
@pytest.mark.parametrize("task_name", ["tanh_mlp", "relu_mlp"])
def test_zero_amplitude_keeps_the_function(task_name):
    task = make_task(task_name)
    before = outputs(task.net, task.inputs)
    event = make_grower("tiny", {"gamma_fixed": 0.0}).grow(task.net, task.context())
    assert event.grew
    assert event.predicted_loss_change == 0.0
    assert float((outputs(task.net, task.inputs) - before).abs().max()) <= 1e-12


@pytest.mark.parametrize("task_name", ["tanh_mlp", "relu_mlp"])
def test_applied_net_has_the_line_search_loss(task_name):
    task = make_task(task_name)
    ctx = task.context()
    before = ctx.loss(task.net)
    event = make_grower("tiny").grow(task.net, ctx)
    assert event.grew
    gamma = event.extras["gamma"]
    curve = dict((g, loss) for g, loss in event.extras["line_search"])
    assert curve[0.0] == pytest.approx(before, abs=1e-12)
    assert ctx.loss(task.net) == pytest.approx(curve[gamma], abs=1e-12)
    assert curve[gamma] == min(curve.values())
    assert curve[gamma] < before
    for phase in ("stats", "solve", "search", "apply"):
        assert phase in event.seconds


# ---------------------------------------------------------------------- 6. sign
def flipped_outputs(task_name, flip):
    task = make_task(task_name)
    _, solution = solved(task, max_added=2)["block0"]
    site = task.net.sites[0]
    k = solution.count
    alpha, omega = solution.alpha[:k], solution.omega[:k]
    if flip:
        alpha, omega = -alpha, -omega
    apply_tiny(site, alpha, omega, solution.delta, 0.5)
    return outputs(task.net, task.inputs)


def test_sign_is_canonical_and_matters_only_for_relu():
    u = torch.tensor([[0.1, -0.9], [-0.5, 0.2]], dtype=torch.float64)
    v = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)
    cu, cv = canonical_pairs(u, v)
    assert torch.equal(cu, torch.tensor([[-0.1, 0.9], [0.5, -0.2]], dtype=torch.float64))
    assert torch.equal(cv, torch.tensor([[-1.0, -2.0], [-3.0, -4.0]], dtype=torch.float64))
    tanh = [flipped_outputs("tanh_mlp", flip) for flip in (False, True)]
    assert float((tanh[0] - tanh[1]).abs().max()) <= 1e-12
    relu = [flipped_outputs("relu_mlp", flip) for flip in (False, True)]
    assert float((relu[0] - relu[1]).abs().max()) > 1e-6
    states = []
    for _ in range(2):
        task = make_task("relu_mlp")
        make_grower("tiny").grow(task.net, task.context())
        states.append(task.net.state_dict())
    assert all(torch.equal(states[0][key], states[1][key]) for key in states[0])


# --------------------------------------------------------------- 7. reduction
def test_statistics_do_not_depend_on_batching():
    task = make_task("tanh_mlp")
    inputs, targets = task.inputs[:64], task.targets[:64]
    results = []
    for batch_size in (16, 64):
        ctx = GrowthContext(
            inputs, targets, task.loss_fn, "params", math.inf, torch.Generator(), batch_size
        )
        results.append(site_statistics(task.net, ctx, task.net.sites))
    for name in results[0]:
        for field in ("S_x", "S_h", "M_x", "M_h", "P"):
            a, b = getattr(results[0][name], field), getattr(results[1][name], field)
            assert torch.allclose(a, b, rtol=1e-12, atol=1e-15), field


def test_mean_reduced_loss_is_one_clear_error():
    task = make_task("tanh_mlp")

    def mean_loss(outputs, targets, reduction="none"):
        return regression_loss(outputs, targets, reduction="mean")

    ctx = GrowthContext(
        task.inputs, task.targets, mean_loss, "params", math.inf, torch.Generator(), 128
    )
    with pytest.raises(ValueError, match="per-sample losses"):
        make_grower("tiny").grow(task.net, ctx)


# ------------------------------------------------------------------------ 8. K
@pytest.mark.parametrize(
    ("values", "threshold", "max_added", "expected"),
    [
        ([3.0, 2.0, 1e-2, 1e-4], 1e-3, 10, 3),  # significant count
        ([3.0, 2.0, 1e-2, 1e-4], 1e-3, 2, 2),  # max_added
        ([3.0, 2.0, 1e-2, 1e-4], 1e-5, 10, 4),  # everything significant
        ([1e-4, 1e-5, 1e-6], 1e-3, 10, 1),  # s_1 below the threshold: s_1 itself counts
        ([2.0, 1e-30, 0.0], 0.0, 10, 1),  # numerical rank
        ([1e-6, 1e-7], 1e-3, 10, 1),  # at least 1
    ],
)
def test_number_of_units(values, threshold, max_added, expected):
    s = torch.tensor(values, dtype=torch.float64)
    assert significant_count(s, threshold, max_added) == expected


# ------------------------------------------------------------------ interface
def test_activation_must_vanish_at_zero():
    config = ModelConfig("mlp", (3,), 2, (4, 3), activation="sigmoid")
    net = build_model(config, seed=0).double()
    task = make_task("tanh_mlp")
    with pytest.raises(ValueError, match="σ\\(0\\) = 0"):
        make_grower("tiny").grow(net, task.context())


def test_budget_truncates_the_smallest_directions():
    probe = make_task("tanh_mlp")
    event = make_grower("tiny", {"max_added": 3}).grow(probe.net, probe.context())
    site_name = event.extras["site"]
    assert event.extras["K"] >= 2
    task = make_task("tanh_mlp")
    budget = task.net.site(site_name).cost_of_units(1)["params"]
    reference = copy.deepcopy(event.extras["sites"][site_name])
    event = make_grower("tiny", {"max_added": 3}).grow(
        task.net, task.context(remaining_budget=budget)
    )
    assert event.units_added == {site_name: 1}
    assert event.stop_reason == "budget exhausted"
    assert event.extras["sites"][site_name]["K"] == reference["K"]


def test_default_max_added_is_thirty_percent_of_the_width():
    assert TinyConfig().max_added is None
    task = make_task("tanh_mlp")
    event = make_grower("tiny", {"gamma_fixed": 0.0}).grow(task.net, task.context())
    for site in make_task("tanh_mlp").net.sites:
        assert event.extras["sites"][site.name]["K"] <= math.ceil(0.3 * site.width)


def test_conv_sites_are_refused_clearly():
    task = make_task("conv_bn")
    with pytest.raises(ValueError, match="does not support site 'block0'"):
        make_grower("tiny").grow(task.net, task.context())
