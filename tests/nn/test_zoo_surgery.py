"""Surgery on every site of every zoo model: split, add_units and insert_layer keep the function
(float64, eval mode, ≤ 1e-10), and after random growth sequences the predicted cost of growth,
params, FLOPs and MACs are exactly what the grown net measures."""

from __future__ import annotations

import copy
import random

import pytest
import torch

from growbench.nn import ModelConfig, build_model, insert_layer
from growbench.nn.counting import count_flops, count_params, growth_cost
from growbench.nn.taps import record_inputs

from .conftest import randomize_batchnorm

DTYPE = torch.float64
TOL = 1e-10
CONFIGS = {
    "mlp": ModelConfig("mlp", (5,), 3, (4, 6), batchnorm=True),
    "cnn": ModelConfig("cnn", (2, 8, 8), 3, (3, 4), batchnorm=True),
    "vgg": ModelConfig("vgg", (3, 32, 32), 3, width_multiplier=1 / 32),
    "mobilenetv1": ModelConfig("mobilenetv1", (3, 32, 32), 3, width_multiplier=1 / 32),
    "resnet18": ModelConfig("resnet18", (3, 16, 16), 3, width_multiplier=1 / 16),
    "pointnet": ModelConfig("pointnet", (16, 3), 3, width_multiplier=1 / 32),
}
SITE_CASES = [
    (model, index)
    for model, config in CONFIGS.items()
    for index in range(len(build_model(config).sites))
]


def make(model: str, activation: str = "relu"):
    config = CONFIGS[model].with_options(activation=activation)
    net = build_model(config, seed=1).double().eval()
    randomize_batchnorm(net, 5)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(6, *config.input_shape, generator=gen, dtype=DTYPE)
    return net, x


def output(net, x) -> torch.Tensor:
    with torch.no_grad():
        return net(x)


def draw(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)


def case_id(case) -> str:
    return f"{case[0]}-{case[1]}"


@pytest.mark.parametrize("case", SITE_CASES, ids=case_id)
@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_split_and_add_units_keep_the_function(case, activation):
    model, index = case
    net, x = make(model, activation)
    before = output(net, x)
    site = net.site(index)
    ids = [0, site.width - 1] if site.width > 1 else [0]
    weights = torch.tensor([[0.3, 0.7], [1.5, -0.5]][: len(ids)], dtype=DTYPE)
    site.split(ids, torch.zeros(len(ids), 2, site.fan_in_size, dtype=DTYPE), weights)
    assert (output(net, x) - before).abs().max() <= TOL
    d = site.fan_in_size - (site.producer.bias is not None)
    site.add_units(draw(2, d, seed=3), torch.zeros(2, site.fan_out_size, dtype=DTYPE))
    assert (output(net, x) - before).abs().max() <= TOL
    site.add_units(torch.zeros(2, d, dtype=DTYPE), draw(2, site.fan_out_size, seed=4))
    assert (output(net, x) - before).abs().max() <= TOL
    # the check can fail: a nonzero split step moves what the consumer reads of the parent
    with record_inputs([site.producer, site.consumer]) as seen:
        output(net, x)
    reads = seen[site.consumer]
    site.split([0], 0.1 * draw(1, 2, site.fan_in_size, seed=5), weights[:1])
    with record_inputs([site.consumer]) as moved:
        output(net, x)
    span = reads.shape[1] // (site.width - 1)  # the parent's channels or flattened positions
    if activation == "tanh":
        assert (moved[site.consumer][:, :span] - reads[:, :span]).abs().max() > 1e-8


@pytest.mark.parametrize("case", SITE_CASES, ids=case_id)
def test_insert_layer_keeps_the_function(case):
    """Identity layers at relu sites, zero-branch residual layers at tanh sites; then the new
    site and the old one grow without changing the function either."""
    model, index = case
    for activation, init in (("relu", "identity"), ("tanh", "zero-branch")):
        net, x = make(model, activation)
        before = output(net, x)
        generator = torch.Generator().manual_seed(6)
        old = net.site(index)
        new = insert_layer(net, old, init=init, generator=generator)
        assert (output(net, x) - before).abs().max() <= TOL
        assert new in net.sites
        assert (old in net.sites) == (init == "identity")
        d = new.fan_in_size - (new.producer.bias is not None)
        new.add_units(draw(2, d, seed=7), torch.zeros(2, new.fan_out_size, dtype=DTYPE))
        new.split([0], torch.zeros(1, 2, new.fan_in_size, dtype=DTYPE), torch.full((1, 2), 0.5))
        assert (output(net, x) - before).abs().max() <= TOL


def _measured(net) -> dict[str, int]:
    return {"params": count_params(net), "flops": count_flops(net, net.input_shape)}


@pytest.mark.parametrize("model", sorted(CONFIGS))
def test_costs_stay_exact_through_random_growth(model):
    rng = random.Random(model)
    net, _x = make(model)
    for step in range(8):
        sites = net.sites
        plan = {site.name: rng.randint(0, 2) for site in rng.sample(sites, min(3, len(sites)))}
        predicted = growth_cost(net, plan)
        before = _measured(net)
        for site in reversed(net.sites):  # output side first
            count = plan.get(site.name, 0)
            if not count:
                continue
            if rng.random() < 0.5 and site.width >= count:
                ids = rng.sample(range(site.width), count)
                site.split(
                    ids,
                    torch.zeros(count, 2, site.fan_in_size, dtype=DTYPE),
                    torch.full((count, 2), 0.5),
                )
            else:
                d = site.fan_in_size - (site.producer.bias is not None)
                site.add_units(
                    draw(count, d, seed=step), torch.zeros(count, site.fan_out_size, dtype=DTYPE)
                )
        after = _measured(net)
        assert predicted == {key: after[key] - before[key] for key in after}, (step, plan)
        assert net.params() == after["params"]
        assert net.flops() == after["flops"]
        assert net.macs() * 2 == after["flops"]
        if step % 3 == 1:
            insert_layer(net, rng.choice(net.sites))
    reference = copy.deepcopy(net)
    assert reference.params() == net.params()


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "size"),
    [(3, 1, None, 8), (3, 2, None, 8), (3, 2, None, 7), (5, 2, None, 9), (3, 2, None, 1),
     (3, 1, 0, 8), (3, 2, 2, 7)],
)  # fmt: skip
def test_new_depthwise_units_pass_their_maps_subsampled(kernel, stride, padding, size):
    """A new unit's depthwise filter is the identity: its output is the grouped convolution
    with that filter, which centred padding takes by slicing (the others by the convolution)."""
    from growbench.nn.units import DepthwiseConv2d

    layer = DepthwiseConv2d(4, kernel, stride, padding).double()
    maps = torch.randn(2, 5, size, size, dtype=torch.float64)
    identity = torch.zeros(5, 1, kernel, kernel, dtype=torch.float64)
    identity[:, 0, kernel // 2, kernel // 2] = 1.0
    expected = torch.nn.functional.conv2d(
        maps, identity, None, layer.stride, layer.padding, layer.dilation, groups=5
    )
    assert torch.equal(layer.forward_new_units(maps), expected)
