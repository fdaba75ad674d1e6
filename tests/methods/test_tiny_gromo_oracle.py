"""TINY against the live GroMo 0.1.0 oracle (shared/methods/tiny.md §7.1).

The same tanh MLP 8→3→3→4 (float64) and the same batch of 64 samples are given to growbench and to
gromo's ``GrowingMLP`` (built from growbench's detached weights). Statistics, δ, Δ, N, singular
values, per-unit products ω_kα_kᵀ, FO_gromo and the chosen site must agree to 1e-10.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from growbench.methods import GrowthContext
from growbench.methods._bottleneck import site_statistics
from growbench.methods.tiny import TinyConfig, solve_site
from growbench.nn import ModelConfig, build_model
from growbench.nn.losses import regression_loss

gromo_mlp = pytest.importorskip("gromo.containers.growing_mlp")

RTOL = 1e-10
MAX_ADDED = 3


def close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    theirs = theirs.detach().double()
    scale = max(float(theirs.abs().max()), 1e-300)
    assert ours.shape == theirs.shape
    assert float((ours - theirs).abs().max()) <= RTOL * scale


@pytest.fixture(scope="module")
def pair():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        net = build_model(ModelConfig("mlp", (8,), 4, (3, 3), activation="tanh"), seed=0).double()
        torch.manual_seed(0)
        theirs = gromo_mlp.GrowingMLP(8, 4, 3, 2, activation=nn.Tanh())
        with torch.no_grad():
            for block, layer in zip(net.blocks, theirs.layers, strict=True):
                layer.layer.weight.copy_(block.layer.weight.detach())
                layer.layer.bias.copy_(block.layer.bias.detach())
        generator = torch.Generator().manual_seed(0)
        inputs = torch.randn(64, 8, generator=generator)
        targets = torch.randn(64, 4, generator=generator)
        theirs.init_computation()
        regression_loss(theirs(inputs), targets).sum().backward()
        theirs.update_computation()
        theirs.compute_optimal_updates(
            dtype=torch.float64, compute_delta=True, maximum_added_neurons=MAX_ADDED
        )
    finally:
        torch.set_default_dtype(previous)
    ctx = GrowthContext(
        inputs, targets, regression_loss, "params", float("inf"), torch.Generator(), batch_size=16
    )
    stats = site_statistics(net, ctx, net.sites)
    config = TinyConfig()
    ours = {site.name: solve_site(stats[site.name], config, MAX_ADDED, 1.0) for site in net.sites}
    # site i of growbench is consumed by gromo's layer i + 1
    layers = {site.name: theirs.layers[site.index + 1] for site in net.sites}
    return net, stats, ours, layers, theirs


def test_statistics_match(pair):
    net, stats, _, layers, _ = pair
    for site in net.sites:
        s, layer = stats[site.name], layers[site.name]
        close(s.S_h, layer.tensor_s())
        close(s.M_h, layer.tensor_m())
        close(s.M_x, layer.tensor_m_prev())
        close(s.P, layer.cross_covariance())
        close(s.S_x, layer.tensor_s_growth())


def test_delta_gain_and_projection_match(pair):
    net, _, ours, layers, _ = pair
    for site in net.sites:
        solution, layer = ours[site.name], layers[site.name]
        close(solution.delta, layer.delta_raw)
        close(
            torch.tensor(solution.gain_delta, dtype=torch.float64), layer.parameter_update_decrease
        )
        close(solution.N, layer.tensor_n)


def test_singular_values_units_and_first_order_gain_match(pair):
    net, _, ours, layers, theirs = pair
    for site in net.sites:
        solution, layer = ours[site.name], layers[site.name]
        k = solution.count
        values = layer.eigenvalues_extension.detach().double()
        close(solution.singular_values[: len(values)], values)
        assert k == len(values)
        omega = layer.extended_input_layer.weight.detach().double()  # q × K
        previous = layer.previous_module.extended_output_layer
        alpha = torch.cat([previous.weight, previous.bias[:, None]], dim=1).detach().double()
        for unit in range(k):
            ours_product = torch.outer(solution.omega[unit], solution.alpha[unit])
            close(ours_product, torch.outer(omega[:, unit], alpha[unit]))
        close(
            torch.tensor(solution.fo_gromo(k), dtype=torch.float64), layer.first_order_improvement
        )
    theirs_best = max(
        range(len(net.sites)), key=lambda i: float(theirs.layers[i + 1].first_order_improvement)
    )
    ours_best = max(
        range(len(net.sites)), key=lambda i: ours[net.sites[i].name].fo_gromo(MAX_ADDED)
    )
    assert ours_best == theirs_best


def test_singular_values_are_distinct_so_units_compare(pair):
    _, _, ours, _, _ = pair
    for solution in ours.values():
        s = solution.singular_values[: solution.count]
        gaps = (s[:-1] - s[1:]).abs() / s[:-1]
        assert bool((gaps > 1e-8).all())
