"""Fidelity checks of ``signed-s2d`` (docs/methods/signed-s2d.md), float64.

The shared contract checks (``test_contract.py``) run on this plugin through the registry.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from functools import cache

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

import growbench.methods.signed_s2d as signed_s2d
from growbench.methods import get_method, make_grower
from growbench.methods._splitting import (
    Eigen,
    PlannedSplit,
    apply_splits,
    canonical_sign,
    site_eigen,
    splittable_sites,
)
from growbench.methods.rayleigh import RayleighConfig
from growbench.methods.signed_s2d import SignedS2D, split_scheme, unit_scores
from growbench.nn import ModelConfig, build_model
from growbench.nn.counting import growth_cost
from growbench.nn.losses import regression_loss

from .conftest import TASKS, GrowthCase, make_task

NAME = "signed-s2d"


def grow(task: GrowthCase, remaining: float = math.inf, metric: str = "params", **options):
    grower = make_grower(NAME, options)
    ctx = task.context(remaining_budget=remaining, metric=metric)
    before = ctx.loss(task.net)
    event = grower.grow(task.net, ctx)
    return event, ctx.loss(task.net) - before


# ------------------------------------------------------------------------------ registration
def test_registration_and_cpu_defaults():
    assert get_method(NAME) is SignedS2D
    config = SignedS2D.Config()
    defaults = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    assert defaults == {
        "copies": 3,
        "weight_bound": 2.0,
        "epsilon": 1e-2,
        "growth_ratio": 0.3,
        "lambda_tol": 1e-8,
        "max_stat_bytes": 512 * 2**20,
        "eigen_solver": "auto",
        "rayleigh": RayleighConfig(),  # fast-s2d's defaults: 1,600 steps of 64
        "splitting_matrix": "exact",
    }
    assert SignedS2D.preserves_function == "at_zero_step"
    assert SignedS2D.zero_step_overrides == {"epsilon": 0.0}
    assert SignedS2D.small_step_overrides == {"epsilon": 1e-3}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"copies": 2}, "copies must be 3"),
        ({"copies": 4}, "copies must be 3"),
        ({"weight_bound": 0.5}, "weight_bound c must be a finite number ≥ 1"),
        ({"weight_bound": math.inf}, "weight_bound c must be a finite number ≥ 1"),
        ({"epsilon": -1e-3}, "epsilon must be finite and ≥ 0"),
        ({"growth_ratio": 0.0}, "growth_ratio must be finite and > 0"),
        ({"lambda_tol": -1.0}, "lambda_tol must be finite and ≥ 0"),
        ({"max_stat_bytes": 0}, "max_stat_bytes must be > 0"),
        ({"max_stat_bytes": 1.5}, "max_stat_bytes must be an integer"),
        ({"eigen_solver": "lanczos"}, "unknown eigen_solver"),
    ],
)
def test_invalid_options_are_clear_errors(options, message):
    with pytest.raises(ValueError, match=message):
        make_grower(NAME, options)


# ----------------------------------------------------------------------- reduces to S2D
def test_c_equal_1_is_the_s2d_split():
    direction = torch.tensor([0.6, -0.8, 0.0], dtype=torch.float64)
    deltas, weights = split_scheme("split", direction, 1.0, 1e-2)
    assert torch.equal(deltas, torch.stack([1e-2 * direction, -1e-2 * direction]))
    assert torch.equal(weights, torch.tensor([0.5, 0.5], dtype=torch.float64))
    # with c = 1 the 3-copy signed+ scheme degenerates to it: the centre copy has weight 0
    _, plus = split_scheme("signed+", direction, 1.0, 1e-2)
    assert plus.tolist() == [0.0, 0.5, 0.5]
    lam = torch.tensor([-2.0, 1.0], dtype=torch.float64)
    ii_plus, ii_minus = unit_scores(lam, -lam, 1.0)
    assert ii_plus.tolist() == [-2.0, 0.0]
    assert ii_minus.tolist() == [0.0, 0.0]


@pytest.mark.parametrize("budget_units", [1, 3, None])
def test_c_equal_1_grows_the_same_net_as_s2d(budget_units):
    # tanh_mlp's two sites cost the same per unit (7 params), so ranking by score per cost is
    # ranking by λ_min, and both plugins are limited to the same units by the same budget
    remaining = math.inf if budget_units is None else 7.0 * budget_units
    reference, ours = make_task("tanh_mlp"), make_task("tanh_mlp")
    s2d_event = make_grower("s2d", {"only_negative": True, "selection": "most-negative"}).grow(
        reference.net, reference.context(remaining_budget=remaining)
    )
    event, _ = grow(ours, remaining, weight_bound=1.0, growth_ratio=100.0)
    assert event.extras["lambda_min"] == s2d_event.scores
    assert event.selected == s2d_event.selected
    assert event.units_added == s2d_event.units_added
    split_count = sum(len(units) for units in event.selected.values())
    assert sum(event.units_added.values()) == split_count  # one unit per split
    if budget_units is not None:  # the cross term of two sites may leave one out
        assert 1 <= split_count <= budget_units
    assert event.predicted_loss_change == pytest.approx(s2d_event.predicted_loss_change, 1e-14)
    state, expected = ours.net.state_dict(), reference.net.state_dict()
    assert state.keys() == expected.keys()
    for key in state:
        torch.testing.assert_close(state[key], expected[key], rtol=1e-14, atol=0)


# --------------------------------------------------- closed form against numerical optima
def random_symmetric(index: int, rng: np.random.Generator) -> np.ndarray:
    d = 3 if index % 2 == 0 else 5
    a = rng.normal(size=(d, d))
    return (a @ a.T, -a @ a.T, a + a.T)[index % 3]  # PSD, NSD, indefinite


def spec_m3(lam: np.ndarray, c: float) -> float:
    return min((1 + c) / 2 * lam[0], -(c - 1) / 2 * lam[-1], 0.0)


def bound_m4(lam: np.ndarray, c: float) -> float:
    return (1 + c) / 2 * min(lam[0], 0.0) - (c - 1) / 2 * max(lam[-1], 0.0)


def general_m3(lam: np.ndarray, c: float) -> float:
    """The best II over *all* 3-copy splits (our finding, not in the papers): with a = −λ_min,
    b = λ_max > 0 the asymmetric split (P/2 @ ±αv_min + βv_max, −N @ v_max; P = (1+c)/2,
    N = (c−1)/2, β = N/P) gives −(ac + bN)/P, lower than both symmetric schemes when b > aN and
    ac > bN²; it is O(ε³)-accurate only, which is why the plugin keeps the symmetric ones."""
    a, b = max(-lam[0], 0.0), max(lam[-1], 0.0)
    p, n = (1 + c) / 2, (c - 1) / 2
    return min(0.0, -a * p, -b * n, -(a * c + b * n) / p)


def second_order(weights: np.ndarray, deltas: np.ndarray, matrix: np.ndarray) -> float:
    return float(weights @ np.einsum("id,de,ie->i", deltas, matrix, deltas))


def numerical_optimum(
    matrix: np.ndarray, c: float, m: int, rng: np.random.Generator, starts: int, symmetric: bool
) -> float:
    """min Σ w_i δ_iᵀSδ_i s.t. Σw = 1, Σ|w| ≤ c, Σ w_i δ_i = 0, ‖δ_i‖ ≤ 1 by SLSQP (w = w⁺ − w⁻).
    ``symmetric``: m = 3 copies at 0 and ±δ, the family of the plugin's schemes."""
    d = matrix.shape[0]
    free = d if symmetric else m * d

    def parts(x):
        if symmetric:
            deltas = np.stack([np.zeros(d), x[2 * m :], -x[2 * m :]])
        else:
            deltas = x[2 * m :].reshape(m, d)
        return x[:m], x[m : 2 * m], deltas

    def objective(x):
        plus, minus, deltas = parts(x)
        return second_order(plus - minus, deltas, matrix)

    def gradient(x):
        plus, minus, deltas = parts(x)
        q = np.einsum("id,de,ie->i", deltas, matrix, deltas)
        g = 2 * (plus - minus)[:, None] * (deltas @ matrix)
        return np.concatenate([q, -q, (g[1] - g[2]) if symmetric else g.ravel()])

    def equalities(x):
        plus, minus, deltas = parts(x)
        w = plus - minus
        return np.concatenate([[w.sum() - 1], w @ deltas])

    def equalities_jacobian(x):
        plus, minus, deltas = parts(x)
        w = plus - minus
        jac = np.zeros((1 + d, 2 * m + free))
        jac[0, :m], jac[0, m : 2 * m] = 1, -1
        jac[1:, :m], jac[1:, m : 2 * m] = deltas.T, -deltas.T
        if symmetric:
            jac[1:, 2 * m :] = (w[1] - w[2]) * np.eye(d)
        else:
            for i in range(m):
                jac[1:, 2 * m + i * d : 2 * m + (i + 1) * d] = w[i] * np.eye(d)
        return jac

    def inequalities(x):
        plus, minus, deltas = parts(x)
        norms = (deltas**2).sum(1)[1:2] if symmetric else (deltas**2).sum(1)
        return np.concatenate([[c - plus.sum() - minus.sum()], 1 - norms])

    def inequalities_jacobian(x):
        _, _, deltas = parts(x)
        rows = 1 if symmetric else m
        jac = np.zeros((1 + rows, 2 * m + free))
        jac[0, : 2 * m] = -1
        if symmetric:
            jac[1, 2 * m :] = -2 * deltas[1]
        else:
            for i in range(m):
                jac[1 + i, 2 * m + i * d : 2 * m + (i + 1) * d] = -2 * deltas[i]
        return jac

    constraints = [
        {"type": "eq", "fun": equalities, "jac": equalities_jacobian},
        {"type": "ineq", "fun": inequalities, "jac": inequalities_jacobian},
    ]
    bounds = [(0, None)] * (2 * m) + [(None, None)] * free
    best = math.inf
    for _ in range(starts):
        start = np.concatenate([rng.uniform(0, 1, 2 * m), rng.normal(size=free) / math.sqrt(d)])
        result = minimize(
            objective,
            start,
            jac=gradient,
            method="SLSQP",
            bounds=bounds,
            constraints=constraints,
            options={"maxiter": 300, "ftol": 1e-13},
        )
        feasible = (
            np.abs(equalities(result.x)).max() <= 1e-9
            and inequalities(result.x).min() >= -1e-9
            and result.x[: 2 * m].min() >= -1e-12
        )
        if feasible:
            best = min(best, float(result.fun))
    return best


def scheme_of(matrix: np.ndarray, c: float) -> tuple[str, float, np.ndarray, np.ndarray]:
    """The plugin's choice for one unit with splitting matrix ``matrix``: kind, score, δ, w."""
    values, vectors = torch.linalg.eigh(torch.from_numpy(matrix))
    lam_min, lam_max = values[:1], values[-1:]
    ii_plus, ii_minus = unit_scores(lam_min, lam_max, c)
    if ii_plus <= ii_minus:
        kind, score, vector = "signed+", float(ii_plus), vectors[:, 0]
    else:
        kind, score, vector = "signed-", float(ii_minus), vectors[:, -1]
    deltas, weights = split_scheme(kind, canonical_sign(vector[None])[0], c, 1.0)
    return kind, score, deltas.numpy(), weights.numpy()


def check_closed_forms(count: int, cs: tuple[float, ...], starts: int) -> None:
    rng = np.random.default_rng(2003)
    kinds = set()
    for index in range(count):
        matrix = random_symmetric(index, rng)
        lam = np.linalg.eigvalsh(matrix)
        scale = max(1.0, float(np.abs(lam).max()))
        for c in cs:
            kind, score, deltas, weights = scheme_of(matrix, c)
            kinds.add(kind)
            expected = spec_m3(lam, c)
            assert score == pytest.approx(expected, rel=1e-12)
            assert second_order(weights, deltas, matrix) == pytest.approx(expected, rel=1e-12)
            assert abs(weights.sum() - 1) <= 1e-15
            assert abs(np.abs(weights).sum() - c) <= 1e-15
            assert np.abs(weights @ deltas).max() <= 1e-15
            assert np.linalg.norm(deltas, axis=1).max() <= 1 + 1e-15
            # the symmetric 3-copy family (copies at 0, ±δ): the closed-form formula is its optimum
            best = numerical_optimum(matrix, c, 3, rng, starts, symmetric=True)
            assert best >= expected - 1e-6 * scale
            # all 3-copy splits: the closed-form formula is the optimum for definite S only
            best = numerical_optimum(matrix, c, 3, rng, starts, symmetric=False)
            assert best >= general_m3(lam, c) - 1e-6 * scale
            if lam[0] >= 0 or lam[-1] <= 0:
                assert general_m3(lam, c) == pytest.approx(expected, rel=1e-12)
            # m = 4: (1+c)/4 @ ±v_min and (1−c)/4 @ ±v_max attains the bound, nothing beats it
            v_min, v_max = np.linalg.eigh(matrix)[1][:, [0, -1]].T
            w4 = np.array([(1 + c) / 4, (1 + c) / 4, (1 - c) / 4, (1 - c) / 4])
            d4 = np.stack([v_min, -v_min, v_max, -v_max])
            if lam[0] < 0 < lam[-1]:
                assert second_order(w4, d4, matrix) == pytest.approx(bound_m4(lam, c), rel=1e-12)
            best = numerical_optimum(matrix, c, 4, rng, starts, symmetric=False)
            assert best >= bound_m4(lam, c) - 1e-6 * scale
    assert kinds == {"signed+", "signed-"}


def test_closed_form_against_numerical_optimum_quick():
    check_closed_forms(count=6, cs=(2.0,), starts=4)


@pytest.mark.slow
def test_closed_form_against_numerical_optimum_full():
    """The full check: 20 matrices, c ∈ {1.5, 2, 3}, 20 SLSQP starts per problem."""
    check_closed_forms(count=20, cs=(1.5, 2.0, 3.0), starts=20)


def test_general_3_copy_optimum_beats_the_symmetric_schemes_on_indefinite_s():
    """Documents a gap in the closed-form table: its m = 3 "best II" is the optimum over symmetric
    splits only. The asymmetric split of ``general_m3`` attains a lower II on S = diag(−1, 1)."""
    matrix = np.diag([-1.0, 1.0])
    for c in (1.5, 2.0, 3.0):
        p, n = (1 + c) / 2, (c - 1) / 2
        beta = n / p
        alpha = math.sqrt(1 - beta**2)
        deltas = np.array([[alpha, beta], [-alpha, beta], [0.0, 1.0]])
        weights = np.array([p / 2, p / 2, -n])
        assert abs(weights.sum() - 1) <= 1e-15
        assert abs(np.abs(weights).sum() - c) <= 1e-15
        assert np.abs(weights @ deltas).max() <= 1e-15
        assert np.linalg.norm(deltas, axis=1).max() <= 1 + 1e-15
        value = second_order(weights, deltas, matrix)
        assert value == pytest.approx(general_m3(np.array([-1.0, 1.0]), c), rel=1e-12)
        assert value <= spec_m3(np.array([-1.0, 1.0]), c) + 1e-12
    assert general_m3(np.array([-1.0, 1.0]), 2.0) == pytest.approx(-5 / 3)  # vs −1.5


# ------------------------------------------------------------- predicted vs realised loss
def split_one(
    task: GrowthCase, site_name: str, unit: int, kind: str, direction, c: float, eps: float
):
    net = copy.deepcopy(task.net)
    deltas, weights = split_scheme(kind, direction, c, eps)
    apply_splits(net, [PlannedSplit(site_name, unit, deltas, weights, kind)])
    return net


@pytest.mark.parametrize("kind", ["signed+", "signed-"])
def test_predicted_matches_realised_per_unit(kind):
    task = make_task("tanh_mlp")
    ctx = task.context()
    c = 2.0
    best = None  # (II, site, unit, direction)
    for site in splittable_sites(task.net.sites):
        eigen, _ = site_eigen(task.net, ctx, site, 2**29)
        for unit in range(site.width):
            if kind == "signed+":
                entry = ((1 + c) / 2 * float(eigen.lambda_min[unit]), eigen.vector_min[unit])
            else:
                entry = (-(c - 1) / 2 * float(eigen.lambda_max[unit]), eigen.vector_max[unit])
            if best is None or entry[0] < best[0]:
                best = (entry[0], site.name, unit, entry[1])
    score, site_name, unit, direction = best
    lam = score / ((1 + c) / 2) if kind == "signed+" else -score / ((c - 1) / 2)
    assert (lam < -1e-4) if kind == "signed+" else (lam > 1e-4)
    before = ctx.loss(task.net)
    epsilons = [1e-1, 3e-2, 1e-2, 3e-3]
    changes, ratios = [], []
    for eps in epsilons:
        net = split_one(task, site_name, unit, kind, direction, c, eps)
        change = ctx.loss(net) - before
        changes.append(change)
        ratios.append(change / (eps**2 / 2 * score))
    assert all(change < 0 for change in changes)
    for eps, ratio in zip(epsilons, ratios):
        if eps <= 1e-2:
            assert abs(ratio - 1) <= 1e-3, (eps, ratios)
    slope = np.polyfit(np.log(epsilons), np.log(np.abs(changes)), 1)[0]
    assert abs(slope - 2) <= 0.05, (slope, ratios)


def test_event_prediction_matches_realised_at_default_step():
    task = make_task("tanh_mlp")
    event, realised = grow(task, growth_ratio=1.0)
    assert sum(event.extras["splits_by_kind"].values()) >= 2
    assert realised / event.predicted_loss_change == pytest.approx(1, abs=1e-2)


# ------------------------------------------------------------- escapes where S2D stalls
TOY_MODEL = ModelConfig("mlp", (2,), 1, (1,), activation="tanh")
TOY_SAMPLES, TOY_STEPS, TOY_LR, TOY_CHUNK = 400, 20_000, 0.05, 10


def toy_data(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(TOY_SAMPLES, 2, generator=generator, dtype=torch.float64)
    w1 = torch.randn(3, generator=generator, dtype=torch.float64)
    w2 = w1 + 0.3 * torch.randn(3, generator=generator, dtype=torch.float64)
    x_tilde = torch.cat([x, torch.ones(TOY_SAMPLES, 1, dtype=torch.float64)], dim=1)
    return x, (torch.tanh(x_tilde @ w1) - torch.tanh(x_tilde @ w2))[:, None]


def train_toy_students(seeds: list[int]) -> tuple[list, torch.Tensor]:
    """20,000 full-batch GD steps (lr 0.05, MSE) of the students of ``seeds`` at once, with
    hand-written gradients (one tanh unit: h = tanh(aᵀx + b), out = v·h + c): the same updates
    as SGD on each ``build_model`` net, vectorised over seeds so the scan takes seconds. Returns
    the trained parameters and the eigenvalues of each student's splitting matrix."""
    data = [toy_data(seed) for seed in seeds]
    x = torch.stack([d[0] for d in data])  # seeds × N × 2
    y = torch.stack([d[1][:, 0] for d in data])
    nets = [build_model(TOY_MODEL, seed=seed).double() for seed in seeds]
    a = torch.stack([net.site(0).producer.weight.detach()[0] for net in nets])
    b = torch.stack([net.site(0).producer.bias.detach()[0] for net in nets])
    v = torch.stack([net.site(0).consumer.weight.detach()[0, 0] for net in nets])
    c = torch.stack([net.site(0).consumer.bias.detach()[0] for net in nets])
    x_columns = x.transpose(1, 2).contiguous()
    for _ in range(TOY_STEPS):
        h = torch.tanh(torch.baddbmm(b[:, None, None], a[:, None, :], x_columns)[:, 0])
        d_out = (v[:, None] * h + c[:, None] - y) * (2 / TOY_SAMPLES)
        d_pre = d_out * v[:, None] * (1 - h * h)
        a = a - TOY_LR * torch.bmm(d_pre[:, None, :], x)[:, 0]
        b, v, c = (
            b - TOY_LR * d_pre.sum(1),
            v - TOY_LR * (d_out * h).sum(1),
            c - TOY_LR * d_out.sum(1),
        )
    h = torch.tanh(torch.einsum("snd,sd->sn", x, a) + b[:, None])
    per_sample_grad = 2 * (v[:, None] * h + c[:, None] - y) * v[:, None]  # ∂ℓ/∂h
    coefficient = per_sample_grad * (-2 * h * (1 - h * h))  # g·σ''(z)
    x_tilde = torch.cat([x, torch.ones_like(x[..., :1])], dim=2)
    matrices = torch.einsum("sn,snp,snq->spq", coefficient, x_tilde, x_tilde) / TOY_SAMPLES
    return list(zip(a, b, v, c)), torch.linalg.eigvalsh(matrices)


@cache
def signed_toy() -> tuple[int, GrowthCase]:
    """The first seed (of 100, scanned 10 at a time) whose trained student is S2D-stable
    (λ_min ≥ −1e-8) with positive curvature (λ_max > 1e-3)."""
    for first in range(0, 100, TOY_CHUNK):
        seeds = list(range(first, first + TOY_CHUNK))
        params, eigenvalues = train_toy_students(seeds)
        for seed, (a, b, v, c), lam in zip(seeds, params, eigenvalues):
            if lam[0] >= -1e-8 and lam[-1] > 1e-3:
                net = build_model(TOY_MODEL, seed=seed).double()
                with torch.no_grad():
                    net.site(0).producer.weight.copy_(a[None])
                    net.site(0).producer.bias.copy_(b[None])
                    net.site(0).consumer.weight.copy_(v[None, None])
                    net.site(0).consumer.bias.copy_(c[None])
                net.eval()
                inputs, targets = toy_data(seed)
                return seed, GrowthCase(net, inputs, targets, regression_loss)
    raise AssertionError("no seed below 100 gives a splitting-stable toy student")


def test_signed_split_escapes_where_s2d_stalls():
    seed, toy = signed_toy()
    assert seed == 9  # recorded: first qualifying seed of the scan
    site = toy.net.sites[0]
    eigen, _ = site_eigen(toy.net, toy.context(), site, 2**29)
    assert float(eigen.lambda_min[0]) >= -1e-8
    assert float(eigen.lambda_max[0]) > 1e-3

    stalled = GrowthCase(copy.deepcopy(toy.net), toy.inputs, toy.targets, toy.loss_fn)
    s2d = make_grower("s2d", {"only_negative": True, "selection": "most-negative"})
    event = s2d.grow(stalled.net, stalled.context())
    assert not event.grew
    assert event.stop_reason == "splitting-stable"

    grown = GrowthCase(copy.deepcopy(toy.net), toy.inputs, toy.targets, toy.loss_fn)
    event, realised = grow(grown, epsilon=1e-2)
    assert event.units_added == {site.name: 2}
    assert event.selected == {site.name: [[0, "signed-"]]}
    assert event.extras["s2d_stable_but_splittable"] == 1
    assert realised < 0
    assert event.predicted_loss_change == pytest.approx(
        1e-4 / 2 * -(2.0 - 1) / 2 * float(eigen.lambda_max[0]), rel=1e-12
    )
    assert abs(realised / event.predicted_loss_change - 1) <= 1e-2


# --------------------------------------------------------------------- cost accounting
def synthetic_eigen(spectra: dict[str, list[tuple[float, float]]]):
    """A stand-in for ``site_eigen``: (λ_min, λ_max) per unit, random unit directions."""

    def fake(net, ctx, site, max_stat_bytes, event=None, matrix="exact"):
        pairs = spectra.get(site.name, [(0.0, 0.0)] * site.width)
        lam_min = torch.tensor([p[0] for p in pairs], dtype=torch.float64)
        lam_max = torch.tensor([p[1] for p in pairs], dtype=torch.float64)
        generator = torch.Generator().manual_seed(site.width * 1000 + site.fan_in_size)
        vectors = torch.randn(2, site.width, site.fan_in_size, generator=generator).double()
        vectors = canonical_sign(vectors / vectors.norm(dim=-1, keepdim=True))
        norm = torch.maximum(lam_min.abs(), lam_max.abs())
        return Eigen(lam_min, vectors[0], lam_max, vectors[1], norm), 0

    return fake


def cost_task() -> GrowthCase:
    """3 → 4 → 6 → 2: a unit costs 10 params at block0 and 7 at block1 (cross term 1)."""
    net = build_model(ModelConfig("mlp", (3,), 2, (4, 6), activation="tanh"), seed=0).double()
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(64, 3, generator=generator, dtype=torch.float64)
    targets = torch.randn(64, 2, generator=generator, dtype=torch.float64)
    return GrowthCase(net, inputs, targets, regression_loss)


def test_cost_task_layout():
    net = cost_task().net
    assert growth_cost(net, {"block0": 2}) == {"params": 20, "flops": 36}
    assert growth_cost(net, {"block1": 2}) == {"params": 14, "flops": 24}
    assert growth_cost(net, {"block0": 2, "block1": 2})["params"] == 20 + 14 + 4


@pytest.mark.parametrize("metric", ["params", "flops"])
def test_a_3_split_adds_two_units_and_their_exact_cost(metric):
    task = make_task("conv_bn")
    before = copy.deepcopy(task.net)
    event, _ = grow(task, metric=metric, growth_ratio=1e-9)  # the first split only
    assert len([u for units in event.selected.values() for u in units]) == 1
    (site_name,) = event.units_added
    assert event.units_added == {site_name: 2}
    assert event.cost_added == growth_cost(before, {site_name: 2})
    assert task.net.params() - before.params() == event.cost_added["params"]
    assert task.net.flops() - before.flops() == event.cost_added["flops"]


def test_cheaper_site_wins_at_equal_score(monkeypatch):
    spectra = {
        "block0": [(-1.0, 0.0)] + [(0.0, 0.0)] * 3,
        "block1": [(-1.0, 0.0)] + [(0.0, 0.0)] * 5,
    }
    monkeypatch.setattr(signed_s2d, "site_eigen", synthetic_eigen(spectra))
    # 34 = both splits' own costs, but together they cost 38 (cross term): only one fits
    task = cost_task()
    event, _ = grow(task, remaining=34, growth_ratio=10.0)
    assert event.selected == {"block1": [[0, "signed+"]]}
    assert event.units_added == {"block1": 2}
    assert event.stop_reason == "budget exhausted"
    assert event.predicted_loss_change == pytest.approx(1e-4 / 2 * -1.5)
    task = cost_task()
    event, _ = grow(task, remaining=38, growth_ratio=10.0)
    assert event.units_added == {"block0": 2, "block1": 2}
    assert event.cost_added["params"] == 38
    assert event.stop_reason is None


def test_ranking_is_by_score_per_cost_not_raw_score(monkeypatch):
    # block0: score −1.8 for 20 params (−0.09 per param); block1: −1.5 for 14 (−0.107)
    spectra = {
        "block0": [(-1.2, 0.0)] + [(0.0, 0.0)] * 3,
        "block1": [(-1.0, 0.0)] + [(0.0, 0.0)] * 5,
    }
    monkeypatch.setattr(signed_s2d, "site_eigen", synthetic_eigen(spectra))
    event, _ = grow(cost_task(), remaining=20, growth_ratio=10.0)
    assert event.selected == {"block1": [[0, "signed+"]]}
    # with the budget for only the pricier site, it is taken (skipping, not stopping)
    spectra["block1"] = [(0.0, 0.0)] * 6
    event, _ = grow(cost_task(), remaining=20, growth_ratio=10.0)
    assert event.selected == {"block0": [[0, "signed+"]]}


def test_round_budget_doubling_cap_and_progress_rules(monkeypatch):
    spectra = {"block0": [(-1.0, 0.0)] * 4, "block1": [(0.0, 2.0)] * 6}
    monkeypatch.setattr(signed_s2d, "site_eigen", synthetic_eigen(spectra))
    # unlimited: at most doubling each site (2 splits of 4 units, 3 of 6)
    event, _ = grow(cost_task(), growth_ratio=10.0)
    assert event.units_added == {"block0": 4, "block1": 6}
    assert event.extras["skipped_doubling_cap"] == 2 + 3
    assert event.extras["splits_by_kind"] == {"signed+": 2, "signed-": 3, "split": 0}
    # the round budget B never blocks the first split of a round, then binds
    event, _ = grow(cost_task(), growth_ratio=1e-9)
    assert sum(event.units_added.values()) == 2
    assert event.stop_reason is None  # B binding is not the budget running out
    # B = 0.3 × 60 params = 18: the best split (block0, 20 params) still goes first, then B binds
    event, _ = grow(cost_task())
    assert event.extras["round_budget"] == pytest.approx(18.0)
    assert event.units_added == {"block0": 2}
    assert event.extras["skipped_round_budget"] == 3 + 6


def test_width_one_site_may_triple(monkeypatch):
    monkeypatch.setattr(signed_s2d, "site_eigen", synthetic_eigen({"block0": [(0.0, 1.0)]}))
    task = GrowthCase(build_model(TOY_MODEL, seed=0).double(), *toy_data(0), regression_loss)
    event, _ = grow(task)
    assert event.units_added == {"block0": 2}


def test_nothing_eligible_is_splitting_stable(monkeypatch):
    # S = 0 for every unit (c = 2), and PSD S with c = 1 (S2D's rule)
    monkeypatch.setattr(signed_s2d, "site_eigen", synthetic_eigen({}))
    event, _ = grow(cost_task())
    assert not event.grew
    assert event.stop_reason == "splitting-stable"
    spectra = {"block0": [(0.5, 1.0)] * 4, "block1": [(0.0, 3.0)] * 6}
    monkeypatch.setattr(signed_s2d, "site_eigen", synthetic_eigen(spectra))
    event, _ = grow(cost_task(), weight_bound=1.0)
    assert not event.grew
    assert event.stop_reason == "splitting-stable"
    event, _ = grow(cost_task())
    assert event.grew
    assert event.extras["s2d_stable_but_splittable"] == 10
    assert event.extras["four_copies_would_help"] == 0


def test_event_records_scores_eigenvalues_and_fan_out_norms():
    # conv_bn: block1 has a signed+ unit (0) and a signed- unit (4) among its best two, and its
    # split appends output channels to block0's consumer (the fan-out norms must ignore those)
    task = make_task("conv_bn")
    lambdas = {}
    for site in task.net.sites:
        eigen, _ = site_eigen(task.net, task.context(), site, 2**29)
        lambdas[site.name] = eigen
    before = {site.name: site.fan_out_matrix().clone() for site in task.net.sites}
    c = 2.0
    event, _ = grow(task, growth_ratio=10.0, weight_bound=c)
    for name, eigen in lambdas.items():
        assert event.extras["lambda_min"][name] == eigen.lambda_min.tolist()
        assert event.extras["lambda_max"][name] == eigen.lambda_max.tolist()
        ii_plus, ii_minus = unit_scores(eigen.lambda_min, eigen.lambda_max, c)
        assert event.scores[name] == torch.minimum(ii_plus, ii_minus).tolist()
    both = sum(int(((e.lambda_min < 0) & (e.lambda_max > 0)).sum()) for e in lambdas.values())
    assert event.extras["four_copies_would_help"] == both
    factor = {"signed+": math.sqrt(0.25 + 2 * 0.75**2), "signed-": math.sqrt(1.5**2 + 2 / 16)}
    assert set(event.extras["fan_out_norms"]) == set(event.selected) == {"block0", "block1"}
    for name, rows in event.extras["fan_out_norms"].items():
        kinds = dict(event.selected[name])
        for unit, norm_before, norm_after in rows:
            assert norm_before == pytest.approx(float(before[name][unit].norm()), rel=1e-14)
            assert norm_after == pytest.approx(norm_before * factor[kinds[unit]], rel=1e-12)
    counts = event.extras["splits_by_kind"]
    assert counts["signed+"] + counts["signed-"] == sum(len(v) for v in event.selected.values())
    assert counts["signed+"] > 0
    assert counts["signed-"] > 0
    assert event.extras["prediction_is_heuristic"] is True  # block0 feeds a max pool
    expected = sum(
        1e-4 / 2 * event.scores[name][unit]
        for name, rows in event.selected.items()
        for unit, _ in rows
    )
    assert event.predicted_loss_change == pytest.approx(expected, rel=1e-14)


# ------------------------------------------------------------ / function preservation
@pytest.mark.parametrize("task_name", TASKS)
@pytest.mark.parametrize("c", [1.0, 2.0, 3.0])
def test_function_preserved_at_zero_step_with_negative_weights(task_name, c):
    task = make_task(task_name)
    with torch.no_grad():
        before = task.net(task.inputs)
    event, realised = grow(task, epsilon=0.0, weight_bound=c, growth_ratio=10.0)
    assert event.grew
    if c > 1:
        assert event.extras["splits_by_kind"]["split"] == 0  # every split has a negative weight
    with torch.no_grad():
        assert (task.net(task.inputs) - before).abs().max() <= 1e-12
    assert abs(realised) <= 1e-12
    assert event.predicted_loss_change == 0.0
    if task_name == "conv_bn":
        reference = make_task(task_name)
        reference.net.train()
        task.net.train()
        batch = task.inputs[:32]
        with torch.no_grad():
            difference = task.net(batch) - reference.net(batch)
        assert difference.abs().max() <= 1e-12


def test_rayleigh_solver_agrees_with_eigh_on_conv_bn():
    """With ``eigen_solver="rayleigh"`` the estimated extreme eigenpairs match eigh."""
    exact_task, estimated_task = make_task("conv_bn"), make_task("conv_bn")
    exact = make_grower(NAME, {"eigen_solver": "exact"}).grow(exact_task.net, exact_task.context())
    estimated = make_grower(NAME, {"eigen_solver": "rayleigh"}).grow(
        estimated_task.net, estimated_task.context()
    )
    assert estimated.extras["rayleigh_sites"] == ["block0", "block1"]
    assert "search" in estimated.seconds
    for site in ("block0", "block1"):
        for key in ("lambda_min", "lambda_max"):
            truth = torch.tensor(exact.extras[key][site], dtype=torch.float64)
            guess = torch.tensor(estimated.extras[key][site], dtype=torch.float64)
            clear = truth.abs() > 1e-3 * truth.abs().max()
            assert torch.all((guess[clear] - truth[clear]).abs() <= 0.05 * truth[clear].abs())


def test_auto_solver_estimates_only_sites_too_big_for_the_byte_budget():
    task = make_task("conv_bn")
    widths = {site.name: (site.width, site.fan_in_size) for site in task.net.sites}
    budget = widths["block0"][0] * widths["block0"][1] ** 2 * 8  # block0 fits, block1 does not
    assert widths["block1"][0] * widths["block1"][1] ** 2 * 8 > budget
    event = make_grower(NAME, {"max_stat_bytes": budget}).grow(task.net, task.context())
    assert event.extras["rayleigh_sites"] == ["block1"]


def test_auto_solver_estimates_sites_whose_exact_matrices_cost_more():
    """Forming S costs ~N·p per unit and position against the estimator's 2·steps·batch: with
    2,048 samples a fan-in above 100 is estimated even when its matrices fit."""
    grower = make_grower(NAME)
    net = make_task("vgg").net
    narrow, wide = net.site("conv1"), net.site("conv8")  # p = 27 and p = 16·9 = 144
    assert not grower._estimates(narrow, 2048)
    assert grower._estimates(wide, 2048)
    assert not grower._estimates(wide, 1024)  # 1,200 steps: p ≤ 150 is cheaper exact
