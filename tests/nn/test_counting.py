"""Parameter and FLOP counts against hand-computed numbers and against the change surgery makes.

FLOP convention (torch's FlopCounterMode): a multiply-add is 2 FLOPs; a Linear layer costs
2·in·out, a 3×3 conv 2·H_out·W_out·C_in·9·C_out; biases, BatchNorm, activations and pooling cost 0.
"""

from __future__ import annotations

import pytest
import torch

from growbench.nn import count_flops, count_params, insert_layer
from growbench.nn.counting import growth_cost

DTYPE = torch.float64


def random(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)


def add(site, k: int, seed: int = 0) -> None:
    d = site.fan_in_size - (site.producer.bias is not None)
    site.add_units(random(k, d, seed=seed), random(k, site.fan_out_size, seed=seed + 1))


def linear(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def conv3(c_in: int, c_out: int, bias: bool) -> int:
    return c_in * 9 * c_out + (c_out if bias else 0)


# mlp 5 → 4 → 6 → 3; cnn 2×6×6 → conv 3 → pool → conv 4 → GAP → 3; flat 2×4×4 → conv 3 → pool →
# flatten 12 → 5 → 3 (see conftest.py)
PARAMS = {
    ("mlp", False): linear(5, 4) + linear(4, 6) + linear(6, 3),
    ("mlp", True): linear(5, 4) + 2 * 4 + linear(4, 6) + 2 * 6 + linear(6, 3),
    ("cnn", False): conv3(2, 3, True) + conv3(3, 4, True) + linear(4, 3),
    ("cnn", True): conv3(2, 3, False) + 2 * 3 + conv3(3, 4, False) + 2 * 4 + linear(4, 3),
    ("flat", False): conv3(2, 3, True) + linear(12, 5) + linear(5, 3),
    ("flat", True): conv3(2, 3, False) + 2 * 3 + linear(12, 5) + linear(5, 3),
}
FLOPS = {
    "mlp": 2 * (5 * 4 + 4 * 6 + 6 * 3),
    "cnn": 2 * (36 * 2 * 9 * 3) + 2 * (9 * 3 * 9 * 4) + 2 * 4 * 3,
    "flat": 2 * (16 * 2 * 9 * 3) + 2 * 12 * 5 + 2 * 5 * 3,
}


@pytest.mark.parametrize(("kind", "batchnorm"), list(PARAMS))
def test_params_and_flops_by_hand(make_net, kind, batchnorm):
    net = make_net(kind, batchnorm=batchnorm)
    assert net.params() == PARAMS[(kind, batchnorm)]
    assert count_params(net) == PARAMS[(kind, batchnorm)]
    assert net.describe()["params"] == PARAMS[(kind, batchnorm)]
    assert net.flops() == FLOPS[kind]  # BatchNorm adds no FLOPs
    assert count_flops(net, net.input_shape) == FLOPS[kind]


def test_flops_at_another_input_size(make_net):
    net = make_net("cnn")
    expected = 2 * (64 * 2 * 9 * 3) + 2 * (16 * 3 * 9 * 4) + 2 * 4 * 3
    assert net.flops((2, 8, 8)) == expected
    assert net.flops() == FLOPS["cnn"]


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_counting_has_no_side_effects(make_net, train):
    net = make_net("cnn", batchnorm=True).train(train)
    buffers = {k: v.clone() for k, v in net.named_buffers()}
    state = {k: v.clone() for k, v in net.state_dict().items()}
    net.flops()
    net.site(0).cost_of_units(2)
    growth_cost(net, {"block0": 1, "block1": 2})
    assert all(module.training == train for module in net.modules())
    for key, value in net.named_buffers():
        assert torch.equal(value, buffers[key]), key
    for key, value in net.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert net.lineage == {}
    assert net.widths() == {"block0": 3, "block1": 4}


@pytest.mark.parametrize("k", [1, 3])
def test_cost_of_units_equals_the_change_after_add_units(case, k):
    net = case.net()
    site = net.site(case.site)
    cost = site.cost_of_units(k)
    params, flops = net.params(), net.flops()
    add(site, k)
    assert cost == {"params": net.params() - params, "flops": net.flops() - flops}


def test_cost_of_units_equals_the_change_after_split(case):
    net = case.net()
    site = net.site(case.site)
    cost = site.cost_of_units(3)  # three parents split in two, in two calls: 3 new units
    params, flops = net.params(), net.flops()
    site.split([0, 1], torch.zeros(2, 2, site.fan_in_size, dtype=DTYPE), torch.full((2, 2), 0.5))
    site.split([2], torch.zeros(1, 2, site.fan_in_size, dtype=DTYPE), torch.full((1, 2), 0.5))
    assert cost == {"params": net.params() - params, "flops": net.flops() - flops}


# per unit: fan-in row (bias included) + fan-out column + γ, β; FLOPs of the row and the column
UNIT_COST = {
    "linear": (5 + 1 + 6, 2 * (5 + 6)),
    "linear_bn": (5 + 1 + 6 + 2, 2 * (5 + 6)),
    "linear_bn_to_head": (4 + 1 + 3 + 2, 2 * (4 + 3)),
    "conv": (18 + 1 + 9 * 4, 2 * 36 * 18 + 2 * 9 * 9 * 4),
    "conv_bn": (18 + 9 * 4 + 2, 2 * 36 * 18 + 2 * 9 * 9 * 4),
    "conv_gap_linear": (27 + 1 + 3, 2 * 9 * 27 + 2 * 3),
    "conv_bn_gap_linear": (27 + 3 + 2, 2 * 9 * 27 + 2 * 3),
    "conv_flatten_linear": (18 + 1 + 4 * 5, 2 * 16 * 18 + 2 * 4 * 5),
    "conv_bn_flatten_linear": (18 + 4 * 5 + 2, 2 * 16 * 18 + 2 * 4 * 5),
}


def test_cost_of_one_unit_by_hand(case):
    params, flops = UNIT_COST[case.name]
    net = case.net()
    assert net.site(case.site).cost_of_units(1) == {"params": params, "flops": flops}
    assert net.site(case.site).cost_of_units(0) == {"params": 0, "flops": 0}


@pytest.mark.parametrize("kind", ["mlp", "cnn", "flat"])
def test_growth_cost_of_adjacent_sites_includes_the_cross_term(make_net, kind):
    net = make_net(kind, batchnorm=True)
    names = [site.name for site in net.sites]
    additions = {names[0]: 2, names[1]: 3}
    cost = growth_cost(net, additions)
    separate = [growth_cost(net, {name: k}) for name, k in additions.items()]
    params, flops = net.params(), net.flops()
    for name, k in additions.items():
        add(net.site(name), k, seed=k)
    assert cost == {"params": net.params() - params, "flops": net.flops() - flops}
    # the two sites share a layer, so the joint cost exceeds the sum of the separate costs
    assert cost["params"] > separate[0]["params"] + separate[1]["params"]


def test_growth_cost_follows_the_net_as_it_grows(make_net):
    net = make_net("cnn", batchnorm=True, activation="relu")
    for step in range(3):
        cost = net.site(1).cost_of_units(2)
        params, flops = net.params(), net.flops()
        add(net.site(1), 2, seed=step)
        assert cost == {"params": net.params() - params, "flops": net.flops() - flops}
    new_block = insert_layer(net, 0)
    for name in (new_block.name, "block0", "block1"):
        cost = net.site(name).cost_of_units(1)
        params, flops = net.params(), net.flops()
        add(net.site(name), 1)
        assert cost == {"params": net.params() - params, "flops": net.flops() - flops}


def test_growth_cost_rejects_unknown_sites(make_net):
    net = make_net("mlp")
    with pytest.raises(KeyError, match="block9"):
        growth_cost(net, {"block9": 1})
    assert growth_cost(net, {}) == {"params": 0, "flops": 0}


def test_counting_restores_mixed_modes_and_pending_lineage(make_net):
    net = make_net("cnn", batchnorm=True).train()
    net.site(1).norm.eval()
    modes = {name: module.training for name, module in net.named_modules()}
    site = net.site(0)
    site.split([1], torch.zeros(1, 2, site.fan_in_size, dtype=DTYPE), torch.full((1, 2), 0.5))
    lineage = dict(net.lineage)
    net.flops()
    site.cost_of_units(2)
    assert {name: module.training for name, module in net.named_modules()} == modes
    assert net.lineage == lineage  # the optimizer hand-over after this surgery is still possible


@pytest.mark.parametrize("model", ["mlp", "cnn", "vgg", "mobilenetv1", "resnet18", "pointnet"])
def test_flop_count_equals_torchs_flop_counter_on_every_zoo_model(model):
    from torch.utils.flop_counter import FlopCounterMode

    from growbench.nn import ModelConfig, build_model

    shapes = {"mlp": (5,), "cnn": (2, 8, 8), "pointnet": (16, 3)}
    shape = shapes.get(model, (3, 32, 32))
    options = {"widths": (4, 6)} if model in ("mlp", "cnn") else {"width_multiplier": 1 / 16}
    net = build_model(ModelConfig(model, shape, 3, **options), seed=0)
    insert_layer(net, net.sites[0], init="identity", activation="rational")
    net.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(torch.zeros(1, *shape))
    assert count_flops(net, shape) == counter.get_total_flops() > 0


def test_growth_cost_measures_once_per_architecture_not_per_width(make_net, monkeypatch):
    from growbench.nn import counting

    net = make_net("cnn", batchnorm=True)
    growth_cost(net, {net.sites[0].name: 1})
    measured = []
    monkeypatch.setattr(counting, "_measure", lambda *a: measured.append(a) or {})
    for step in range(3):
        add(net.sites[step % 2], 1, seed=step)
        growth_cost(net, {net.sites[0].name: 2, net.sites[1].name: 1})
    assert measured == []
