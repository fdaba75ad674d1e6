"""TINY against the live GroMo 0.1.0 oracle (shared/methods/tiny.md §7.1).

The same tanh MLP 8→3→3→4 (float64) and the same batch of 64 samples are given to growbench and to
gromo's ``GrowingMLP`` (built from growbench's detached weights). Statistics, δ, Δ, N, singular
values, per-unit products ω_kα_kᵀ, FO_gromo and the chosen site must agree to 1e-10.

Conv→conv: growbench's site block0 of a cnn 3→4→5 (BN, SiLU, no max-pool between the convs)
against gromo's ``Conv2dGrowingModule`` → ``FullConv2dGrowingModule`` with the same weights and
eval-mode BN: S_x (S_growth), S_h, M_h, M_x (M_{-2}), the 3-tensor P, δ, Δ, N, s_k, ω_kα_kᵀ and
FO_gromo agree to 1e-10.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from growbench.methods import GrowthContext
from growbench.methods._bottleneck import site_statistics
from growbench.methods.tiny import TinyConfig, solve_site
from growbench.nn import ModelConfig, build_model
from growbench.nn.losses import classification_loss, regression_loss

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


# ------------------------------------------------------------- conv→conv oracle
@pytest.fixture(scope="module")
def conv_pair():
    """Growbench's conv→conv site (cnn 3→4→5, SiLU, BN, max-pool removed) against gromo's
    ``Conv2dGrowingModule`` → ``FullConv2dGrowingModule`` built from the same weights."""
    conv_module = pytest.importorskip("gromo.modules.conv2d_growing_module")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        config = ModelConfig("cnn", (3, 8, 8), 3, (4, 5), activation="silu", batchnorm=True)
        net = build_model(config, seed=0).double()
        net.blocks[0].post = nn.Identity()
        generator = torch.Generator().manual_seed(1)
        for block in net.blocks[:2]:  # non-trivial eval-mode BN
            with torch.no_grad():
                block.norm.running_mean.uniform_(-0.5, 0.5, generator=generator)
                block.norm.running_var.uniform_(0.5, 2.0, generator=generator)
                block.norm.weight.uniform_(0.5, 1.5, generator=generator)
                block.norm.bias.uniform_(-0.5, 0.5, generator=generator)
        net.eval()
        inputs = torch.randn(32, 3, 8, 8, generator=generator)
        targets = torch.randint(0, 3, (32,), generator=generator)
        blocks = net.blocks
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
