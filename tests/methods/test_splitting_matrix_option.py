"""``splitting_matrix = "first-activation"``: the S2D family "as the official code" — the splitting
matrix of the first activation only, E[g₁ σ₁''(z) b² x̃x̃ᵀ], where our default is the Hessian of
the unit's whole path (MobileNetV1's pointwise sites have a second activation after the
depthwise conv). Checked against autograd on the first activation alone."""

from __future__ import annotations

import pytest
import torch

from growbench.methods import make_grower
from growbench.methods._splitting import (
    curvature_route,
    prediction_is_heuristic,
    splitting_matrices,
)
from growbench.methods.rayleigh import SiteBatch
from growbench.nn import collect_taps

from .conftest import make_task
from .test_splitting import path_hessians, row_hessians, site_input

TASK, SITE = "mobilenetv1:tanh", "pw1"  # pointwise conv → BN → tanh → depthwise → BN → tanh


def first_activation_hessians(task, site, units: range) -> torch.Tensor:
    """S_j as the Hessian at θ_j of Φ(θ) = E[g₁ · σ₁(BN(producer with row j = θ)(x))], g₁ the
    gradient at the first activation's output (caught with a hook, held fixed)."""
    net = task.net.eval()
    x = site_input(net, site, task.inputs)
    caught = {}

    def catch(module, args, output):
        caught["out"] = output.detach().requires_grad_(True)
        return caught["out"]

    handle = site.act.register_forward_hook(catch)
    try:
        losses = task.loss_fn(net(task.inputs), task.targets)
    finally:
        handle.remove()
    (g1,) = torch.autograd.grad(losses.sum(), caught["out"])
    first = site.between[: site.between.index(site.act) + 1]
    count = len(task.inputs)

    def objective(u):
        for module in first:
            u = module(u)
        return (u * g1).sum() / count

    return row_hessians(site, x, units, objective)


def test_the_first_activation_matrix_is_the_code_s_and_differs_from_the_exact_one():
    task = make_task(TASK)
    site = task.net.site(SITE)
    assert curvature_route(site).name == "second"
    assert curvature_route(site, "first-activation").name == "closed"
    units = range(min(3, site.width))
    computed = splitting_matrices(task.net, task.context(), site, units, "first-activation")
    reference = first_activation_hessians(task, site, units)
    scale = float(reference.abs().max())
    assert scale > 1e-8
    torch.testing.assert_close(computed, reference, rtol=1e-6, atol=1e-9 * scale)
    exact = path_hessians(task, site, units)
    assert float((exact - computed).abs().max()) > 1e-2 * scale  # the term the code leaves out


def test_fast_s2d_products_follow_the_same_matrix():
    task = make_task(TASK)
    site = task.net.site(SITE)
    taps, _ = collect_taps(task.net, task.inputs, task.targets, task.loss_fn, sites=[site])
    generator = torch.Generator().manual_seed(5)
    directions = torch.randn(site.width, site.fan_in_size, generator=generator, dtype=torch.float64)
    route = curvature_route(site, "first-activation")
    products = SiteBatch.from_taps(route, taps[site.name]).products(directions)
    matrices = splitting_matrices(
        task.net, task.context(), site, range(site.width), "first-activation"
    )
    expected = torch.einsum("jpq,jq->jp", matrices, directions)
    torch.testing.assert_close(
        products, expected, rtol=1e-9, atol=1e-12 * float(expected.abs().max())
    )


@pytest.mark.parametrize("name", ["s2d", "signed-s2d", "fast-s2d"])
def test_each_splitting_method_takes_the_option_and_flags_its_prediction(name):
    task = make_task(TASK)
    quick = {"fast-s2d": {"rayleigh": {"steps": 40}}}.get(name, {})
    event = make_grower(name, {**quick, "splitting_matrix": "first-activation"}).grow(
        task.net, task.context()
    )
    assert event.grew
    assert event.extras["prediction_is_heuristic"] is True  # a longer path's matrix truncated
    sites = task.net.sites
    assert prediction_is_heuristic(sites) is False  # tanh, no max pool: exact by default
    with pytest.raises(ValueError, match=r"unknown splitting_matrix 'code'.*first-activation"):
        make_grower(name, {"splitting_matrix": "code"})
