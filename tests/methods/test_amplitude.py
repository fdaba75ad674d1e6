"""Few-evaluation amplitude search (``growbench.methods._amplitude``) vs the dense grid of ``tiny``.

Tolerance: the search's loss is at most the dense grid's best loss + ``GAP`` · depth, where depth =
L(0) − (dense best) ≥ 0 (the gain the dense grid achieves), plus 1e-12 absolute. The dense grid
is 0 plus 20 log-spaced γ in [1e-4, 1], extended by decades (6 points each) up to 1e3, as in
``Tiny._line_search``.
"""

from __future__ import annotations

import math

import pytest
import torch

from growbench.methods._amplitude import AmplitudeResult, batched, search_amplitude
from growbench.methods._bottleneck import site_statistics
from growbench.methods.tiny import Tiny, TinyConfig, _LossAtGamma, solve_site
from growbench.nn.activations import activation_info

from .conftest import make_task

GAP = 0.02  # of the dense grid's depth L(0) − min
MAX_EVALS = 10  # on curves whose minimum lies in [1e-4, 1]


def dense_grid(f, gamma_min=1e-4, gamma_top=1.0, points=20, gamma_max=1e3):
    """The dense search of ``Tiny._line_search`` on a scalar f: (best γ, best L, evaluations)."""
    grid = torch.logspace(math.log10(gamma_min), math.log10(gamma_top), points).tolist()
    curve = [(0.0, f(0.0))] + [(g, f(g)) for g in grid]
    per_decade = max(1, round((points - 1) / math.log10(gamma_top / gamma_min)))
    top = grid[-1]
    while min(curve, key=lambda c: c[1])[0] == top and top * 10 <= gamma_max * (1 + 1e-12):
        extra = torch.logspace(math.log10(top), math.log10(top * 10), per_decade + 1).tolist()[1:]
        curve += [(g, f(g)) for g in extra]
        top = extra[-1]
    gamma, loss = min(curve, key=lambda c: c[1])
    return gamma, loss, len(curve)


def counted(f):
    calls = []

    def loss_at(gamma):
        calls.append(gamma)
        return f(gamma)

    return loss_at, calls


def check_against_dense(f, max_evals):
    _, dense_loss, dense_evals = dense_grid(f)
    loss_at, calls = counted(f)
    result = search_amplitude(batched(loss_at))
    depth = f(0.0) - dense_loss
    assert result.loss <= dense_loss + GAP * depth + 1e-12
    assert result.evaluations == len(calls) <= max_evals < dense_evals
    # the curve holds every evaluation, in order, and the result is its minimum
    assert [g for g, _ in result.curve] == calls
    assert all(loss == f(g) for g, loss in result.curve)
    assert (result.gamma, result.loss) in result.curve
    assert result.loss == min(loss for _, loss in result.curve)
    assert result.curve[0] == (0.0, f(0.0))
    return result


def quartic(gamma_star, fo=1.0):
    """L(γ) = 1 − FO·γ² + c·γ⁴ with its minimum at γ*: the shape TINY's L has for small γ."""
    c = fo / (2 * gamma_star**2)
    return lambda g: 1.0 - fo * g**2 + c * g**4


# ----------------------------------------------------------------------- synthetic
@pytest.mark.parametrize("gamma_star", [2e-4, 1e-3, 3.7e-3, 2e-2, 0.13, 0.3, 0.55, 0.8])
def test_minimum_inside_the_grid(gamma_star):
    result = check_against_dense(quartic(gamma_star), MAX_EVALS)
    assert result.gamma == pytest.approx(gamma_star, rel=0.05)


@pytest.mark.parametrize("gamma_star", [1.5, 7.0, 40.0, 300.0])
def test_minimum_beyond_the_top_needs_decades(gamma_star):
    decades = math.ceil(math.log10(gamma_star))
    result = check_against_dense(quartic(gamma_star), MAX_EVALS + decades)
    assert result.gamma > 1.0
    assert max(g for g, _ in result.curve) <= 1e3 * (1 + 1e-12)


def test_extension_stops_at_gamma_max():
    result = check_against_dense(lambda g: 1.0 - g**2, 16)
    assert result.gamma == pytest.approx(1e3)


@pytest.mark.parametrize(
    "f",
    [lambda g: 1.0 + g**2, lambda g: 1.0 + 1e-3 * math.tanh(g), lambda g: 1.0],
    ids=["increasing", "saturating", "flat"],
)
def test_nothing_beats_zero(f):
    result = check_against_dense(f, 6)
    assert result.gamma == 0.0
    assert result.loss == f(0.0)
    assert result.calls == 1


def bumpy(g):
    return 1 - g**2 + 1.2 * g**4 + 0.02 * math.sin(12 * math.log(g + 1e-12)) * g**2


def noisy(g):
    """Quartic with a deterministic jitter of ~0.1% of its depth on every point."""
    jitter = math.sin(1e4 * g + 1.0) * 2e-4 if g > 0 else 0.0
    return quartic(0.4)(g) + jitter


def two_basins(g):
    """A shallow basin near γ = 0.01 and a deeper one near γ = 2 (both about a decade wide)."""
    t = math.log10(g) if g > 0 else -math.inf
    return 1.0 - 1e-3 * math.exp(-((t + 2) ** 2)) - 0.5 * math.exp(-((t - 0.3) ** 2) / 0.5)


def cross_entropy_like(g):
    """Smooth, not polynomial: softplus margins whose curvature grows with γ."""
    margins = [m + s * g - 0.8 * g**2 for m, s in ((0.3, 1.0), (-0.2, 2.0))]
    return sum(max(-z, 0.0) + math.log1p(math.exp(-abs(z))) for z in margins)


@pytest.mark.parametrize(
    "f", [bumpy, noisy, two_basins, cross_entropy_like], ids=lambda f: f.__name__
)
def test_non_convex_and_noisy_curves(f):
    check_against_dense(f, MAX_EVALS + 1)


def test_non_finite_losses_are_never_chosen():
    def f(g):
        return math.nan if g > 5 else quartic(40.0)(g)

    result = search_amplitude(batched(f))
    assert math.isfinite(result.loss)
    assert 1.0 <= result.gamma <= 5
    assert any(math.isnan(loss) for _, loss in result.curve)


def test_deterministic_and_batched():
    f = cross_entropy_like
    first, second = search_amplitude(batched(f)), search_amplitude(batched(f))
    assert first == second
    sizes = []

    def losses(gammas):
        sizes.append(len(gammas))
        return [f(g) for g in gammas]

    result = search_amplitude(losses)
    assert result == first
    assert sizes[0] == 6  # 0 and 1e-4, …, 1 in one call
    assert result.calls == len(sizes)


def test_arguments_are_checked():
    with pytest.raises(ValueError):
        search_amplitude(batched(quartic(0.1)), gamma_min=0.0)
    with pytest.raises(ValueError):
        search_amplitude(batched(quartic(0.1)), gamma_top=1e4)
    with pytest.raises(ValueError):
        search_amplitude(lambda gammas: [0.0])


def test_finer_coarse_grid_and_no_refinement():
    f = quartic(0.3)
    plain = search_amplitude(batched(f), max_refine=0)
    assert plain.evaluations == 6
    assert plain.gamma == pytest.approx(0.1)
    fine = search_amplitude(batched(f), points_per_decade=3)
    assert fine.evaluations >= 14
    assert fine.gamma == pytest.approx(0.3, rel=0.05)


# ----------------------------------------------------------------- real TINY curve
def tiny_curves(task_name):
    """For every site: TINY's L(γ) (``_LossAtGamma``) and the dense ``Tiny._line_search``."""
    task = make_task(task_name)
    net, ctx = task.net, task.context()
    stats = site_statistics(net, ctx, net.sites)
    config = TinyConfig()
    grower = Tiny(config)
    out = []
    for site in net.sites:
        slope = activation_info(site.activation).slope_at_zero
        limit = math.ceil(config.max_added_ratio * site.width)
        solution = solve_site(stats[site.name], config, limit, slope)
        k = solution.count
        assert k > 0
        alpha, omega = solution.alpha[:k], solution.omega[:k]
        evaluate = _LossAtGamma(net, ctx, site, alpha, omega, solution.delta)
        dense = grower._line_search(net, ctx, site, alpha, omega, solution.delta)
        out.append((evaluate, dense))
    return out


@pytest.mark.parametrize("task_name", ["tanh_mlp", "relu_mlp"])
def test_real_tiny_curve(task_name):
    for evaluate, (dense_gamma, dense_curve) in tiny_curves(task_name):
        result = search_amplitude(evaluate)
        assert isinstance(result, AmplitudeResult)
        loss0 = dense_curve[0][1]
        dense_loss = min(loss for _, loss in dense_curve)
        assert result.curve[0] == (0.0, pytest.approx(loss0, abs=1e-12))
        assert result.loss <= dense_loss + GAP * (loss0 - dense_loss) + 1e-12
        assert result.evaluations <= MAX_EVALS < len(dense_curve)
        assert (result.gamma == 0.0) == (dense_gamma == 0.0)
        # and within 1% of the depth of the true minimum (1,401 γ in [1e-4, 1e3])
        fine = evaluate(torch.logspace(-4, 3, 1401, dtype=torch.float64).tolist())
        best = min(min(fine), loss0)
        assert result.loss <= best + 0.01 * (loss0 - best) + 1e-12
        # the recorded loss is TINY's loss at the chosen γ
        assert evaluate([result.gamma])[0] == pytest.approx(result.loss, abs=1e-12)
