"""TINY against GroMo 0.1.0, the TINY authors' library (docs/methods/tiny.md).

MLP: the tanh MLP 8→3→3→4 (float64) and 64 samples of ``fixtures/make_gromo_fixture.py`` are
given to growbench, and GroMo's ``GrowingMLP`` with the same weights computes its quantities:
from the golden fixture file (always; GroMo need not be installed) and live (when it is).
Statistics, δ, Δ, N, singular values, per-unit products ω_kα_kᵀ, FO_gromo and the chosen site
must agree to 1e-10.

Conv→conv (live only): growbench's site block0 of a cnn 3→4→5 (BN, SiLU, no max-pool between
the convs) against gromo's ``Conv2dGrowingModule`` → ``FullConv2dGrowingModule`` with the same
weights and eval-mode BN: S_x (S_growth), S_h, M_h, M_x (M_{-2}), the 3-tensor P, δ, Δ, N, s_k,
ω_kα_kᵀ and FO_gromo agree to 1e-10.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from growbench.methods import GrowthContext
from growbench.methods._bottleneck import site_statistics
from growbench.methods.tiny import TinyConfig, solve_site
from growbench.nn.losses import classification_loss, regression_loss
from growbench.nn.zoo.layers import ChainLayer, chain_net

from .fixtures.make_gromo_fixture import (
    FIXTURE,
    MAX_ADDED,
    gromo_quantities,
    tiny_problem,
)

RTOL = 1e-10


def close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    theirs = torch.as_tensor(theirs).detach().double()
    scale = max(float(theirs.abs().max()), 1e-300)
    assert ours.shape == theirs.shape
    assert float((ours - theirs).abs().max()) <= RTOL * scale


def growbench_side(net, inputs, targets):
    ctx = GrowthContext(
        inputs, targets, regression_loss, "params", float("inf"), torch.Generator(), batch_size=16
    )
    stats = site_statistics(net, ctx, net.sites)
    config = TinyConfig()
    return stats, {
        site.name: solve_site(stats[site.name], config, MAX_ADDED, 1.0) for site in net.sites
    }


def assert_matches(net, stats, ours, theirs) -> None:
    """Every quantity of ``theirs`` (``gromo_quantities``' layout) against growbench's."""
    for site in net.sites:
        s, solution, gromo = stats[site.name], ours[site.name], theirs["sites"][site.name]
        close(s.S_h, gromo["S_h"])
        close(s.M_h, gromo["M_h"])
        close(s.M_x, gromo["M_x"])
        close(s.P, gromo["P"])
        close(s.S_x, gromo["S_x"])
        close(solution.delta, gromo["delta"])
        close(torch.tensor(solution.gain_delta, dtype=torch.float64), gromo["gain"])
        close(solution.N, gromo["N"])
        k = solution.count
        values = gromo["singular_values"]
        assert k == len(values)
        close(solution.singular_values[:k], values)
        # distinct singular values, so single units (not only rank-K sums) compare
        gaps = (values[:-1] - values[1:]).abs() / values[:-1]
        assert bool((gaps > 1e-8).all())
        for unit in range(k):
            close(
                torch.outer(solution.omega[unit], solution.alpha[unit]),
                torch.outer(gromo["omega"][unit], gromo["alpha"][unit]),
            )
        close(torch.tensor(solution.fo_gromo(k), dtype=torch.float64), gromo["fo_gromo"])
    ours_best = max(net.sites, key=lambda site: ours[site.name].fo_gromo(MAX_ADDED)).name
    assert ours_best == theirs["best"]


def test_matches_the_golden_gromo_fixture():
    fixture = torch.load(FIXTURE, weights_only=True)
    assert fixture["gromo_version"] == "0.1.0"
    net, _, _ = tiny_problem()
    # the fixture keeps the module names of the day it was made; the order is the same
    net.load_state_dict(dict(zip(net.state_dict(), fixture["weights"].values(), strict=True)))
    inputs, targets = fixture["inputs"], fixture["targets"]
    stats, ours = growbench_side(net, inputs, targets)
    assert_matches(net, stats, ours, fixture)


def test_matches_live_gromo():
    pytest.importorskip("gromo.containers.growing_mlp")
    net, inputs, targets = tiny_problem()
    theirs = gromo_quantities(net, inputs, targets)
    stats, ours = growbench_side(net, inputs, targets)
    assert_matches(net, stats, ours, theirs)


def test_fixture_problem_is_the_one_tiny_problem_builds():
    """The fixture's net and data are what ``tiny_problem`` builds now (so the live and golden
    comparisons test the same thing)."""
    fixture = torch.load(FIXTURE, weights_only=True)
    net, inputs, targets = tiny_problem()
    ours, theirs = list(net.state_dict().values()), list(fixture["weights"].values())
    assert len(ours) == len(theirs)  # (the module names changed since; the order did not)
    for value, expected in zip(ours, theirs, strict=True):
        assert torch.equal(value, expected)
    assert torch.equal(inputs, fixture["inputs"])
    assert torch.equal(targets, fixture["targets"])


# ------------------------------------------------------------- conv→conv oracle
@pytest.fixture(scope="module")
def conv_pair():
    """Growbench's conv→conv site (cnn 3→4→5, SiLU, BN, max-pool removed) against gromo's
    ``Conv2dGrowingModule`` → ``FullConv2dGrowingModule`` built from the same weights."""
    conv_module = pytest.importorskip("gromo.modules.conv2d_growing_module")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(0)
        layers = [
            ChainLayer("block0", nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4),
                       "silu"),
            ChainLayer("block1", nn.Conv2d(4, 5, 3, padding=1, bias=False), nn.BatchNorm2d(5),
                       "silu", [nn.AdaptiveAvgPool2d(1), nn.Flatten()]),
            ChainLayer("block2", nn.Linear(5, 3)),
        ]  # fmt: skip
        net = chain_net(layers, (3, 8, 8)).double()
        generator = torch.Generator().manual_seed(1)
        for layer in layers[:2]:  # non-trivial eval-mode BN
            with torch.no_grad():
                layer.norm.running_mean.uniform_(-0.5, 0.5, generator=generator)
                layer.norm.running_var.uniform_(0.5, 2.0, generator=generator)
                layer.norm.weight.uniform_(0.5, 1.5, generator=generator)
                layer.norm.bias.uniform_(-0.5, 0.5, generator=generator)
        net.eval()
        inputs = torch.randn(32, 3, 8, 8, generator=generator)
        targets = torch.randint(0, 3, (32,), generator=generator)
        blocks = layers
        first = conv_module.Conv2dGrowingModule(
            3,
            4,
            3,
            padding=1,
            use_bias=False,
            post_layer_function=nn.Sequential(copy.deepcopy(blocks[0].norm), nn.SiLU()),
        )
        second = conv_module.FullConv2dGrowingModule(
            4,
            5,
            3,
            padding=1,
            use_bias=False,
            input_size=(8, 8),
            post_layer_function=nn.Sequential(copy.deepcopy(blocks[1].norm), nn.SiLU()),
            previous_module=first,
        )
        first.next_module = second
        head = copy.deepcopy(blocks[2].layer)
        with torch.no_grad():
            first.layer.weight.copy_(blocks[0].layer.weight)
            second.layer.weight.copy_(blocks[1].layer.weight)
        for module in (first, second):
            module.eval()
        second.init_computation()
        hidden = second(first(inputs))
        logits = head(hidden.mean(dim=(2, 3)))
        classification_loss(logits, targets).sum().backward()
        second.update_computation()
        second.compute_optimal_updates(
            dtype=torch.float64, compute_delta=True, maximum_added_neurons=MAX_ADDED
        )
    finally:
        torch.set_default_dtype(previous)
    ctx = GrowthContext(
        inputs, targets, classification_loss, "params", float("inf"), torch.Generator(), 8
    )
    site = net.site("block0")
    stats = site_statistics(net, ctx, [site])["block0"]
    solution = solve_site(stats, TinyConfig(), MAX_ADDED, 0.5)  # SiLU's σ'(0)
    return stats, solution, first, second


def test_conv_conv_matches_gromo_full_conv(conv_pair):
    stats, solution, first, second = conv_pair
    close(stats.S_h, second.tensor_s())
    close(stats.M_h, second.tensor_m())
    close(stats.M_x, second.tensor_m_prev())
    close(stats.P, second.cross_covariance())
    close(stats.S_x, second.tensor_s_growth())
    close(solution.delta, second.delta_raw)
    close(torch.tensor(solution.gain_delta, dtype=torch.float64), second.parameter_update_decrease)
    close(solution.N, second.tensor_n)
    k = solution.count
    values = second.eigenvalues_extension.detach().double()
    assert k == len(values)
    close(solution.singular_values[:k], values)
    alpha = first.extended_output_layer.weight.detach().double().flatten(1)  # K × p
    omega = second.extended_input_layer.weight.detach().double()  # q × K × kh × kw
    omega = omega.permute(1, 0, 2, 3).flatten(1)  # K × q·kh·kw, the fan-out layout
    for unit in range(k):
        close(
            torch.outer(solution.omega[unit], solution.alpha[unit]),
            torch.outer(omega[unit], alpha[unit]),
        )
    # GroMo's σ'(0) comes from its table for the activation of the previous module's post-layer
    # function, BatchNorm skipped: SiLU's 1/2, the value growbench uses
    assert float(second.activation_gradient) == 0.5
    close(torch.tensor(solution.fo_gromo(k), dtype=torch.float64), second.first_order_improvement)
