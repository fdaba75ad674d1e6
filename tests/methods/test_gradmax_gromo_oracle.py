"""``gradmax`` against GroMo 0.1.0's GradMax setting (docs/methods/gradmax.md).

GroMo is a test-only oracle: growbench never imports it. On a bias-free tanh MLP (so the bias
conventions of the two codes coincide) GroMo with ``compute_delta=False, use_covariance=False,
alpha_zero=True, use_projection=False, ignore_singular_values=True`` must give the same fan-out
directions as ours up to sign, and a zero fan-in.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from growbench.methods.gradmax import GradMax, GradMaxConfig
from growbench.nn.losses import regression_loss
from growbench.nn.zoo.layers import ChainLayer, chain_net

from .conftest import GrowthCase

gromo_mlp = pytest.importorskip("gromo.containers.growing_mlp")

K = 2


def test_fan_outs_match_gromo_gradmax():
    torch.manual_seed(0)
    gromo = gromo_mlp.GrowingMLP(3, 2, 4, 2, activation=nn.Tanh(), use_bias=False).double()
    layers = [
        ChainLayer("block0", nn.Linear(3, 4, bias=False), activation="tanh"),
        ChainLayer("block1", nn.Linear(4, 4, bias=False), activation="tanh"),
        ChainLayer("block2", nn.Linear(4, 2, bias=False)),
    ]
    net = chain_net(layers, (3,), flatten_input=True).double().eval()
    with torch.no_grad():
        for ours, layer in zip(layers, gromo.layers, strict=True):
            ours.layer.weight.copy_(layer.layer.weight)
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(128, 3, generator=generator, dtype=torch.float64)
    targets = torch.randn(128, 2, generator=generator, dtype=torch.float64)

    gromo.init_computation()
    regression_loss(gromo(inputs), targets).mean().backward()
    gromo.update_computation()
    gromo.compute_optimal_updates(
        compute_delta=False,
        use_covariance=False,
        alpha_zero=True,
        use_projection=False,
        ignore_singular_values=True,
        maximum_added_neurons=K,
        dtype=torch.float64,
        statistical_threshold=0.0,
        numerical_threshold=0.0,
    )

    widths = net.widths()
    task = GrowthCase(net, inputs, targets, regression_loss)
    event = GradMax(GradMaxConfig(growth_fraction=0.5)).grow(net, task.context())
    assert event.units_added == {"block0": K, "block1": K}
    for index, (name, old_width) in enumerate(widths.items()):
        consumer = gromo.layers[index + 1]
        omega_gromo = consumer.extended_input_layer.weight.detach().T  # (K, out)
        alpha_gromo = consumer.previous_module.extended_output_layer.weight.detach()
        assert torch.equal(alpha_gromo, torch.zeros_like(alpha_gromo))
        values = event.extras[name]["singular_values"]
        distinct = range(min(K, len(values) - 1))  # s_1 > … > s_K > s_(K+1): u_k unique
        assert all(values[k] > values[k + 1] * (1 + 1e-6) for k in distinct)
        assert values[K - 1] > 0
        site = net.site(name)
        ours = site.fan_out_matrix()[old_width:][:, : omega_gromo.shape[1]]
        assert torch.equal(site.fan_in_matrix()[old_width:], torch.zeros(K, site.fan_in_size))
        cosine = (ours * omega_gromo).sum(1) / (ours.norm(dim=1) * omega_gromo.norm(dim=1))
        assert bool((cosine.abs() >= 1 - 1e-10).all()), (name, cosine)
