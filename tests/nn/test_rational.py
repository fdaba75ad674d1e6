"""SENN's rational activation: the formula, identity at (0, 0, 1), and growth through the
per-unit protocol (splits copy a unit's parameters, new units and inserted layers start at the
identity, the optimizer's state follows)."""

from __future__ import annotations

import torch

from growbench.nn import (
    ModelConfig,
    RationalActivation,
    build_model,
    carry_optimizer_state,
    insert_layer,
)

DTYPE = torch.float64


def randomised(net, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    for module in net.modules():
        if isinstance(module, RationalActivation):
            with torch.no_grad():
                for param in (module.v, module.c, module.linear):
                    param.copy_(torch.randn(param.shape, generator=gen, dtype=DTYPE))
    return net


def test_formula_and_identity_at_initial_parameters():
    act = RationalActivation(3).double()
    z = torch.randn(5, 3, 2, 2, dtype=DTYPE)
    assert torch.equal(act(z), z)  # exactly: (0·z + 0)/(1 + z²) + 1·z over a norm of 1
    with torch.no_grad():
        act.v.copy_(torch.tensor([0.5, -1.0, 0.0], dtype=DTYPE))
        act.c.copy_(torch.tensor([0.2, 0.0, 0.0], dtype=DTYPE))
        act.linear.copy_(torch.tensor([1.0, 2.0, 0.0], dtype=DTYPE))
    for j in range(3):
        v, c, line = float(act.v[j]), float(act.c[j]), float(act.linear[j])
        norm = max((v * v + c * c + line * line) ** 0.5, 1e-6)
        zj = z[:, j]
        expected = ((2 * v * zj + c) / (1 + zj * zj) + line * zj) / norm
        torch.testing.assert_close(act(z)[:, j], expected, rtol=1e-14, atol=1e-15)


def test_rational_mlp_grows_and_deepens_without_changing_its_function():
    config = ModelConfig("mlp", (4,), 3, (5,), activation="rational")
    net = randomised(build_model(config, seed=0).double()).eval()
    x = torch.randn(16, 4, dtype=DTYPE)
    before = net(x)
    site = net.site("block0")
    act = site.act
    parent = (float(act.v[2]), float(act.c[2]), float(act.linear[2]))
    site.split([2], torch.zeros(1, 2, site.fan_in_size, dtype=DTYPE), torch.full((1, 2), 0.5))
    assert (float(act.v[5]), float(act.c[5]), float(act.linear[5])) == parent
    site.add_units(torch.randn(2, 4, dtype=DTYPE), torch.zeros(2, site.fan_out_size, dtype=DTYPE))
    assert act.v[6:].tolist() == [0.0, 0.0]
    assert act.linear[6:].tolist() == [1.0, 1.0]
    deeper = insert_layer(net, site)  # rational is the identity at init: exact after any σ
    assert isinstance(deeper.act, RationalActivation)
    assert deeper.act.v.shape == (site.width,)
    assert (net(x) - before).abs().max() <= 1e-12


def test_depth_grows_from_no_hidden_layer_with_a_rational_layer():
    net = build_model(ModelConfig("mlp", (4,), 3, ()), seed=0).double().eval()
    x = torch.randn(8, 4, dtype=DTYPE)
    before = net(x)
    site = insert_layer(net, "input", activation="rational")
    assert net.sites == [site]
    assert site.act.v.shape == (4,)
    assert (net(x) - before).abs().max() <= 1e-12


def test_optimizer_state_of_rational_parameters_follows_a_split():
    net = randomised(build_model(ModelConfig("mlp", (4,), 3, (3,), activation="rational")))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    torch.nn.functional.cross_entropy(net(x), y).backward()
    optimizer.step()
    act = net.site(0).act
    old = optimizer.state[act.v]["exp_avg"].clone()
    net.site(0).split([1], torch.zeros(1, 2, 5), torch.full((1, 2), 0.5))
    carry_optimizer_state(optimizer, net)
    moments = optimizer.state[act.v]["exp_avg"]
    assert torch.equal(moments[:3], old)
    assert moments[3] == 0
