"""Surgery on growable nets: split, add_units, insert_layer, for every site kind.

Expected weights are read straight from the raw layer tensors (conv weight ``[out, in, k, k]``,
flattened-linear weight ``[out, unit·positions + position]``), never through the Site helpers under
test, and function preservation is checked on the net's output in float64 (≤ 1e-12).
"""

from __future__ import annotations

import copy
import re

import pytest
import torch
from torch import nn

from growbench.nn import GrowableNet, Site, insert_layer

DTYPE = torch.float64
TOL = 1e-12


# ----------------------------------------------------------------------------- helpers
def outputs(net: GrowableNet, x: torch.Tensor, train: bool = False) -> torch.Tensor:
    """Output in eval mode, or in train mode on a copy (so running statistics stay put)."""
    if train:
        trial = copy.deepcopy(net).train()
        with torch.no_grad():
            return trial(x)
    was_training = net.training
    net.eval()
    with torch.no_grad():
        out = net(x)
    net.train(was_training)
    return out


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def raw_fan_in(producer: nn.Module, j: int) -> torch.Tensor:
    """θ_j read from the layer: weight row flattened, bias appended last."""
    row = producer.weight.detach()[j].reshape(-1)
    if producer.bias is not None:
        row = torch.cat([row, producer.bias.detach()[j : j + 1]])
    return row


def raw_fan_out(consumer: nn.Module, j: int, width: int) -> torch.Tensor:
    """The consumer weights that read unit j, shape (out, positions)."""
    weight = consumer.weight.detach()
    if isinstance(consumer, nn.Conv2d):
        return weight[:, j].reshape(weight.shape[0], -1)
    positions = weight.shape[1] // width
    return weight[:, j * positions : (j + 1) * positions]


def norm_entries(norm: nn.Module | None, j: int) -> list[float]:
    if norm is None:
        return []
    return [
        norm.running_mean[j].item(),
        norm.running_var[j].item(),
        norm.weight[j].item(),
        norm.bias[j].item(),
    ]


def snapshot(net: GrowableNet) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in net.state_dict().items()}


def assert_unchanged(net: GrowableNet, before: dict[str, torch.Tensor]) -> None:
    after = net.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert after[key].shape == value.shape, key
        assert torch.equal(after[key], value), key


def random(*shape: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=DTYPE)


# ------------------------------------------------------------------------------ layout
def test_site_layout_matches_raw_weights(case):
    net = case.net()
    site = net.site(case.site)
    producer, consumer = site.producer, site.consumer
    n = producer.weight.shape[0]
    assert site.width == n
    assert site.positions == case.positions
    assert site.fan_in_size == producer.weight[0].numel() + (producer.bias is not None)
    assert site.fan_out_size == consumer.weight.shape[0] * case.positions
    w_in, w_out = site.fan_in_matrix(), site.fan_out_matrix()
    assert w_in.shape == (n, site.fan_in_size)
    assert w_out.shape == (n, site.fan_out_size)
    for j in range(n):
        assert torch.equal(w_in[j], raw_fan_in(producer, j))
        assert torch.equal(w_out[j], raw_fan_out(consumer, j, n).reshape(-1))


def test_site_lookup_by_index_and_name(make_net):
    net = make_net("mlp")
    assert [s.name for s in net.sites] == ["block0", "block1"]
    assert net.site("block1") is net.sites[1]
    assert net.site(-1) is net.sites[1]
    with pytest.raises(KeyError, match="block7"):
        net.site("block7")
    with pytest.raises(IndexError):
        net.site(2)


# ------------------------------------------------------------------ function preservation
SPLIT_WEIGHTS = {
    "halves": [[0.5, 0.5]] * 3,
    "negative": [[-1.0, 2.0]] * 3,
    "three_way": [[0.2, 0.3, 0.5]] * 3,
    "per_unit": [[0.5, 0.5], [-1.0, 2.0], [1.5, -0.5]],
    "single_offspring": [[1.0]] * 3,
}


@pytest.mark.parametrize("weights", SPLIT_WEIGHTS.values(), ids=SPLIT_WEIGHTS.keys())
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_split_with_zero_deltas_preserves_function(case, weights, train):
    net = case.net()
    x = case.inputs(net)
    before = outputs(net, x, train)
    site = net.site(case.site)
    weights = torch.tensor(weights, dtype=DTYPE)
    deltas = torch.zeros(3, weights.shape[1], site.fan_in_size, dtype=DTYPE)
    site.split([2, 0, 1], deltas, weights)
    assert site.width == net.site(case.site).width
    assert max_diff(outputs(net, x, train), before) <= TOL


def test_split_with_weights_not_summing_to_one_changes_output(case):
    """The preservation tests can fail: the site matters to the output."""
    net = case.net()
    x = case.inputs(net)
    before = outputs(net, x)
    site = net.site(case.site)
    weights = torch.tensor([[0.5, 0.6]] * 3, dtype=DTYPE)
    site.split([2, 0, 1], torch.zeros(3, 2, site.fan_in_size, dtype=DTYPE), weights)
    assert max_diff(outputs(net, x), before) > 1e-6


def test_split_site_by_site_from_output_to_input_preserves_function(make_net, inputs_for):
    net = make_net("cnn", batchnorm=True)
    x = inputs_for(net)
    before = outputs(net, x)
    for index in (1, 0):
        site = net.site(index)
        weights = torch.tensor([[0.25, 0.75], [2.0, -1.0]], dtype=DTYPE)
        site.split([0, 2], torch.zeros(2, 2, site.fan_in_size, dtype=DTYPE), weights)
    assert net.widths() == {"block0": 5, "block1": 6}
    assert max_diff(outputs(net, x), before) <= TOL


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_add_units_with_zero_fan_out_preserves_function(case, train):
    net = case.net()
    x = case.inputs(net)
    before = outputs(net, x, train)
    site = net.site(case.site)
    has_bias = site.producer.bias is not None
    d = site.fan_in_size - has_bias
    bias = random(2, seed=3) if has_bias else None
    site.add_units(random(2, d, seed=4), torch.zeros(2, site.fan_out_size, dtype=DTYPE), bias)
    assert max_diff(outputs(net, x, train), before) <= TOL


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_add_units_with_zero_fan_in_preserves_function(case, train):
    """σ(0) = 0 (tanh), so a zero-fan-in unit is silent whatever its fan-out, BN or not."""
    net = case.net()
    x = case.inputs(net)
    before = outputs(net, x, train)
    site = net.site(case.site)
    d = site.fan_in_size - (site.producer.bias is not None)
    site.add_units(torch.zeros(3, d, dtype=DTYPE), random(3, site.fan_out_size, seed=5))
    assert max_diff(outputs(net, x, train), before) <= TOL


def test_add_units_with_both_fans_nonzero_changes_output(case):
    net = case.net()
    x = case.inputs(net)
    before = outputs(net, x)
    site = net.site(case.site)
    d = site.fan_in_size - (site.producer.bias is not None)
    site.add_units(random(2, d, seed=6), random(2, site.fan_out_size, seed=7))
    assert max_diff(outputs(net, x), before) > 1e-6


def test_insert_layer_identity_preserves_function(case):
    net = case.net(activation="relu")
    x = case.inputs(net)
    before = outputs(net, x)
    widths = net.widths()
    old_site = net.site(case.site)
    old_consumer, width = old_site.consumer, old_site.width
    new_site = insert_layer(net, case.site)

    assert old_site.consumer is new_site.producer
    assert new_site.consumer is old_consumer
    assert new_site.activation == "relu"
    assert new_site.kind == old_site.kind
    assert new_site.producer.weight.dtype == DTYPE
    assert old_site.between == old_site.between[: old_site.between.index(old_site.act) + 1]
    new_names = list(net.widths())
    assert new_names.index(new_site.name) == new_names.index(old_site.name) + 1
    assert net.widths() == {**widths, new_site.name: width}
    assert [s["name"] for s in net.describe()["sites"]] == new_names
    assert max_diff(outputs(net, x), before) <= TOL

    # The inserted layer is an ordinary site: surgery on it keeps the function too.
    assert new_site.width == width
    new_site.split(
        [0, 1],
        torch.zeros(2, 2, new_site.fan_in_size, dtype=DTYPE),
        torch.tensor([[0.3, 0.7], [-0.5, 1.5]], dtype=DTYPE),
    )
    # and so does growing the old site, whose consumer is now the inserted layer
    old_site.add_units(
        random(2, old_site.fan_in_size - (old_site.producer.bias is not None), seed=3),
        torch.zeros(2, old_site.fan_out_size, dtype=DTYPE),
    )
    assert max_diff(outputs(net, x), before) <= TOL


def test_insert_layer_keeps_the_nets_mode(make_net):
    net = make_net("mlp", batchnorm=True, activation="relu").train()
    assert insert_layer(net, 0).producer.training
    net.eval()
    assert not insert_layer(net, 0).producer.training


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "leaky_relu"])
def test_insert_layer_rejects_non_idempotent_activation(make_net, activation):
    net = make_net("cnn", activation=activation)
    before = snapshot(net)
    with pytest.raises(ValueError, match=rf"'block0'.*{activation}|{activation}.*'block0'"):
        insert_layer(net, 0)
    assert len(net.sites) == 2
    assert_unchanged(net, before)


def test_insert_layer_rejects_unknown_init(make_net):
    net = make_net("mlp", activation="relu")
    with pytest.raises(ValueError, match="zeros"):
        insert_layer(net, 0, init="zeros")
    assert len(net.sites) == 2


# ----------------------------------------------------------------------- surgery semantics
def test_split_semantics(case):
    net = case.net()
    site = net.site(case.site)
    producer, consumer, norm = site.producer, site.consumer, site.norm
    n, p = site.width, site.fan_in_size
    old_in = [raw_fan_in(producer, j) for j in range(n)]
    old_out = [raw_fan_out(consumer, j, n) for j in range(n)]
    old_norm = [norm_entries(norm, j) for j in range(n)]

    ids = [2, 0]
    deltas = random(2, 3, p, seed=8)
    weights = random(2, 3, seed=9)
    offspring = site.split(ids, deltas, weights)

    # offspring 0 keeps the parent's index; the others are appended in the order of ids
    assert offspring == [[2, n, n + 1], [0, n + 2, n + 3]]
    producer, consumer, norm = site.producer, site.consumer, site.norm
    width = n + 4
    assert site.width == width
    for pos, parent in enumerate(ids):
        for r, child in enumerate(offspring[pos]):
            expected_in = old_in[parent] + deltas[pos, r]
            torch.testing.assert_close(raw_fan_in(producer, child), expected_in, rtol=0, atol=0)
            expected_out = old_out[parent] * weights[pos, r]
            got_out = raw_fan_out(consumer, child, width)
            torch.testing.assert_close(got_out, expected_out, rtol=0, atol=0)
            assert norm_entries(norm, child) == old_norm[parent]
    untouched = 1
    assert torch.equal(raw_fan_in(producer, untouched), old_in[untouched])
    assert torch.equal(raw_fan_out(consumer, untouched, width), old_out[untouched])
    assert norm_entries(norm, untouched) == old_norm[untouched]


def test_split_bias_is_the_last_fan_in_entry(make_net):
    net = make_net("mlp")
    site = net.site(0)
    old_bias = site.producer.bias.detach().clone()
    old_weight = site.producer.weight.detach().clone()
    deltas = torch.zeros(1, 2, site.fan_in_size, dtype=DTYPE)
    deltas[0, 1, -1] = 7.0
    deltas[0, 0, 0] = 3.0
    site.split([1], deltas, torch.tensor([[0.5, 0.5]], dtype=DTYPE))
    bias, weight = site.producer.bias.detach(), site.producer.weight.detach()
    assert bias[4].item() == old_bias[1].item() + 7.0
    assert bias[1].item() == old_bias[1].item()
    assert weight[1, 0].item() == old_weight[1, 0].item() + 3.0
    assert torch.equal(weight[4], old_weight[1])


def test_add_units_semantics(case):
    net = case.net()
    site = net.site(case.site)
    n = site.width
    producer, consumer, norm = site.producer, site.consumer, site.norm
    has_bias = producer.bias is not None
    d = site.fan_in_size - has_bias
    old_in = [raw_fan_in(producer, j) for j in range(n)]
    old_out = [raw_fan_out(consumer, j, n) for j in range(n)]
    old_norm = [norm_entries(norm, j) for j in range(n)]

    fan_in, fan_out = random(2, d, seed=10), random(2, site.fan_out_size, seed=11)
    bias = random(2, seed=12) if has_bias else None
    indices = site.add_units(fan_in, fan_out, bias)
    assert indices == [n, n + 1]
    producer, consumer, norm = site.producer, site.consumer, site.norm
    width = n + 2
    out_channels = consumer.weight.shape[0]
    for r, j in enumerate(indices):
        expected_in = torch.cat([fan_in[r], bias[r : r + 1]]) if has_bias else fan_in[r]
        assert torch.equal(raw_fan_in(producer, j), expected_in)
        expected_out = fan_out[r].reshape(out_channels, case.positions)
        assert torch.equal(raw_fan_out(consumer, j, width), expected_out)
    for j in range(n):
        assert torch.equal(raw_fan_in(producer, j), old_in[j])
        assert torch.equal(raw_fan_out(consumer, j, width), old_out[j])
        assert norm_entries(norm, j) == old_norm[j]

    if has_bias:  # default bias: 0
        (k,) = site.add_units(random(1, d, seed=13), random(1, site.fan_out_size, seed=14))
        assert site.producer.bias[k].item() == 0.0


def test_add_units_new_batchnorm_entries_are_identity_in_eval_mode(bn_case):
    net = bn_case.net()
    site = net.site(bn_case.site)
    n = site.width
    d = site.fan_in_size - (site.producer.bias is not None)
    site.add_units(random(3, d, seed=15), random(3, site.fan_out_size, seed=16))
    norm = site.norm.eval()
    assert norm.num_features == n + 3
    assert torch.equal(norm.running_mean[n:], torch.zeros(3, dtype=DTYPE))
    assert torch.equal(norm.running_var[n:], torch.ones(3, dtype=DTYPE))
    assert torch.equal(norm.bias.detach()[n:], torch.zeros(3, dtype=DTYPE))
    shape = (8, n + 3) if isinstance(norm, nn.BatchNorm1d) else (8, n + 3, 2, 2)
    u = random(*shape, seed=17)
    with torch.no_grad():
        z = norm(u)
    assert max_diff(z[:, n:], u[:, n:]) <= TOL
    mean, var = norm.running_mean[:n], norm.running_var[:n]
    gamma, beta = norm.weight.detach()[:n], norm.bias.detach()[:n]
    view = (1, n) if u.ndim == 2 else (1, n, 1, 1)
    expected_old = (u[:, :n] - mean.view(view)) / torch.sqrt(var.view(view) + norm.eps)
    expected_old = expected_old * gamma.view(view) + beta.view(view)
    assert max_diff(z[:, :n], expected_old) <= TOL


def test_surgery_updates_attributes_widths_and_describe(case):
    net = case.net()
    site = net.site(case.site)
    n = site.width
    d = site.fan_in_size - (site.producer.bias is not None)
    site.split([0], torch.zeros(1, 3, site.fan_in_size, dtype=DTYPE), torch.ones(1, 3) / 3)
    site.add_units(random(2, d, seed=18), random(2, site.fan_out_size, seed=19))
    width = n + 4
    producer, consumer, norm = site.producer, site.consumer, site.norm
    assert net.widths()[site.name] == width
    assert producer.weight.shape[0] == width
    if isinstance(producer, nn.Linear):
        assert producer.out_features == width
        assert f"out_features={width}" in repr(producer)
    else:
        assert producer.out_channels == width
        assert repr(producer).startswith(f"Conv2d({producer.in_channels}, {width}")
    if isinstance(consumer, nn.Linear):
        assert consumer.in_features == width * case.positions == consumer.weight.shape[1]
        assert f"in_features={width * case.positions}," in repr(consumer)
    else:
        assert consumer.in_channels == width == consumer.weight.shape[1]
        assert repr(consumer).startswith(f"Conv2d({width}, ")
    if norm is not None:
        assert norm.num_features == width
        assert norm.running_mean.shape == norm.weight.shape == (width,)
        assert repr(norm).startswith(f"{type(norm).__name__}({width},")
    description = net.describe()
    assert description["widths"] == net.widths()
    assert description["params"] == sum(q.numel() for q in net.parameters())
    assert description["sites"][case.site]["width"] == width
    assert repr(producer) in description["modules"]
    assert repr(consumer) in description["modules"]
    # the grown net still runs on a batch
    assert outputs(net, case.inputs(net)).shape == (16, 3)


# -------------------------------------------------------------------------- bad arguments
def _split_args(site: Site, ids, k: int, m: int, p_extra: int = 0, weights_shape=None):
    deltas = torch.zeros(k, m, site.fan_in_size + p_extra, dtype=DTYPE)
    weights = torch.full(weights_shape or (k, m), 1.0 / m, dtype=DTYPE)
    return ids, deltas, weights


BAD_SPLITS = {
    "duplicate_ids": lambda s: _split_args(s, [1, 1], 2, 2),
    "id_equal_to_width": lambda s: _split_args(s, [s.width], 1, 2),
    "negative_id": lambda s: _split_args(s, [-1], 1, 2),
    "deltas_wrong_p": lambda s: _split_args(s, [0], 1, 2, p_extra=1),
    "deltas_wrong_k": lambda s: _split_args(s, [0, 1], 1, 2, weights_shape=(2, 2)),
    "deltas_2d": lambda s: ([0], torch.zeros(1, s.fan_in_size, dtype=DTYPE), torch.ones(1, 1)),
    "weights_wrong_m": lambda s: _split_args(s, [0], 1, 2, weights_shape=(1, 3)),
    "weights_wrong_k": lambda s: _split_args(s, [0], 1, 2, weights_shape=(2, 2)),
}


@pytest.mark.parametrize("bad", BAD_SPLITS.values(), ids=BAD_SPLITS.keys())
def test_split_rejects_bad_arguments(case, bad):
    net = case.net()
    site = net.site(case.site)
    before = snapshot(net)
    with pytest.raises(ValueError, match=re.escape(repr(site.name))):
        site.split(*bad(site))
    assert_unchanged(net, before)
    assert net.lineage == {}


def _add_args(site: Site, k: int, d_extra: int = 0, fan_out_extra: int = 0, fan_out_k=None):
    d = site.fan_in_size - (site.producer.bias is not None) + d_extra
    fan_out = torch.zeros(fan_out_k or k, site.fan_out_size + fan_out_extra, dtype=DTYPE)
    return torch.zeros(k, d, dtype=DTYPE), fan_out


BAD_ADDS = {
    "fan_in_wrong_d": lambda s: _add_args(s, 2, d_extra=1),
    "fan_in_1d": lambda s: (_add_args(s, 1)[0][0], _add_args(s, 1)[1]),
    "fan_out_wrong_size": lambda s: _add_args(s, 2, fan_out_extra=1),
    "fan_out_wrong_k": lambda s: _add_args(s, 2, fan_out_k=3),
    "bias_wrong_k": lambda s: (*_add_args(s, 2), torch.ones(3, dtype=DTYPE)),
    "bias_2d": lambda s: (*_add_args(s, 2), torch.ones(2, 1, dtype=DTYPE)),
}


@pytest.mark.parametrize("bad", BAD_ADDS.values(), ids=BAD_ADDS.keys())
def test_add_units_rejects_bad_arguments(case, bad):
    net = case.net()
    site = net.site(case.site)
    before = snapshot(net)
    with pytest.raises(ValueError, match=re.escape(repr(site.name))):
        site.add_units(*bad(site))
    assert_unchanged(net, before)
    assert net.lineage == {}


def test_add_units_rejects_a_bias_when_the_producer_has_none(make_net):
    net = make_net("cnn", batchnorm=True)  # conv + BN: no conv bias
    site = net.site(0)
    assert site.producer.bias is None
    fan_in, fan_out = _add_args(site, 2)
    with pytest.raises(ValueError, match=r"'block0'.*no bias"):
        site.add_units(fan_in, fan_out, torch.ones(2, dtype=DTYPE))
    # an all-zero bias is the default and is accepted
    assert site.add_units(fan_in, fan_out, torch.zeros(2, dtype=DTYPE)) == [3, 4]


def test_empty_surgery_is_a_no_op(case):
    net = case.net()
    site = net.site(case.site)
    before = snapshot(net)
    d = site.fan_in_size - (site.producer.bias is not None)
    assert site.add_units(torch.zeros(0, d), torch.zeros(0, site.fan_out_size)) == []
    assert site.split([], torch.zeros(0, 2, site.fan_in_size), torch.zeros(0, 2)) == []
    assert_unchanged(net, before)


# ------------------------------------------------------- nonzero deltas against brute force
def hand_split(
    net: GrowableNet, index: int, parent: int, deltas: torch.Tensor, weights: torch.Tensor
) -> GrowableNet:
    """A copy of ``net`` with unit ``parent`` of site ``index`` split, edited by hand."""
    net = copy.deepcopy(net)
    site = net.site(index)
    producer, norm, consumer = site.producer, site.norm, site.consumer
    m = len(weights)
    n = producer.weight.shape[0]
    weight = producer.weight.detach()
    size = weight[0].numel()
    weight_deltas = deltas[:, :size].reshape(m, *weight.shape[1:])
    grown = torch.cat([weight, weight[parent] + weight_deltas[1:]])
    grown[parent] = weight[parent] + weight_deltas[0]
    producer.weight = nn.Parameter(grown)
    if producer.bias is not None:
        bias = producer.bias.detach()
        grown_bias = torch.cat([bias, bias[parent] + deltas[1:, size]])
        grown_bias[parent] = bias[parent] + deltas[0, size]
        producer.bias = nn.Parameter(grown_bias)
    if norm is not None:
        for name in ("running_mean", "running_var"):
            value = getattr(norm, name)
            setattr(norm, name, torch.cat([value, value[parent].repeat(m - 1)]))
        for name in ("weight", "bias"):
            value = getattr(norm, name).detach()
            setattr(norm, name, nn.Parameter(torch.cat([value, value[parent].repeat(m - 1)])))
    fan_out = consumer.weight.detach()
    if isinstance(consumer, nn.Conv2d):
        columns = fan_out[:, parent : parent + 1]
        grown_out = torch.cat([fan_out] + [columns * weights[r] for r in range(1, m)], dim=1)
        grown_out[:, parent] = fan_out[:, parent] * weights[0]
    else:
        positions = fan_out.shape[1] // n
        span = slice(parent * positions, (parent + 1) * positions)
        columns = fan_out[:, span]
        grown_out = torch.cat([fan_out] + [columns * weights[r] for r in range(1, m)], dim=1)
        grown_out[:, span] = columns * weights[0]
    consumer.weight = nn.Parameter(grown_out)
    return net


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_split_with_nonzero_deltas_matches_hand_built_net(case, train):
    net = case.net()
    x = case.inputs(net)
    original = outputs(net, x, train)
    site = net.site(case.site)
    v = random(site.fan_in_size, seed=20)
    epsilon = 0.1
    deltas = torch.stack([epsilon * v, -epsilon * v])
    weights = torch.tensor([0.5, 0.5], dtype=DTYPE)
    expected_net = hand_split(net, case.site, 1, deltas, weights)
    site.split([1], deltas[None], weights[None])
    grown = outputs(net, x, train)
    assert max_diff(grown, outputs(expected_net, x, train)) <= TOL
    assert max_diff(grown, original) > 1e-6


def test_hand_split_reference_is_sensitive(case):
    """Guards the reference itself: a wrong offspring weight gives a different output."""
    net = case.net()
    x = case.inputs(net)
    site = net.site(case.site)
    deltas = torch.zeros(2, site.fan_in_size, dtype=DTYPE)
    right = hand_split(net, case.site, 1, deltas, torch.tensor([0.5, 0.5], dtype=DTYPE))
    wrong = hand_split(net, case.site, 1, deltas, torch.tensor([0.5, 0.4], dtype=DTYPE))
    assert max_diff(outputs(right, x), outputs(net, x)) <= TOL
    assert max_diff(outputs(wrong, x), outputs(net, x)) > 1e-6


def test_symmetric_split_changes_output_at_second_order(case):
    """±εv with weights ½, ½: the first-order change cancels, so halving ε quarters it."""
    net = case.net()
    x = case.inputs(net)
    original = outputs(net, x)
    v = random(net.site(case.site).fan_in_size, seed=21)
    changes = []
    for epsilon in (1e-4, 5e-5):
        trial = copy.deepcopy(net)
        deltas = torch.stack([epsilon * v, -epsilon * v])[None]
        trial.site(case.site).split([1], deltas, torch.tensor([[0.5, 0.5]], dtype=DTYPE))
        changes.append((outputs(trial, x) - original).norm().item())
    assert changes[1] > 0
    assert 3.8 < changes[0] / changes[1] < 4.2
