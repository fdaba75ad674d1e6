"""Fidelity checks of ``gradmax`` (docs/methods/gradmax.md), float64."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, jacrev

from growbench.methods import get_method, make_grower
from growbench.methods.gradmax import (
    GradMax,
    GradMaxConfig,
    compute_gamma,
    slope_at_zero,
)
from growbench.nn import ModelConfig, build_model, collect_taps
from growbench.nn.losses import regression_loss
from growbench.nn.zoo.layers import ChainLayer, chain_net

from .conftest import TASKS, GrowthCase, make_task

STATS = 128


# ------------------------------------------------------------------------------ helpers


def outputs(net, inputs):
    with torch.no_grad():
        return net(inputs)


def new_fan_in_grad(net, site_name, inputs, targets, loss_fn, ids, old_inputs):
    """Autograd's gradient of the mean loss (eval mode) w.r.t. the fan-in rows ``ids``, on the
    producer's first ``old_inputs`` input channels; the entries reading units that the previous
    site added in the same event must be exactly 0 (those units output 0)."""
    net.eval()
    site = net.site(site_name)
    weight = site.producer.weight
    loss = loss_fn(net(inputs), targets).mean()
    (gradient,) = torch.autograd.grad(loss, weight)
    rows = gradient[ids]
    assert torch.equal(rows[:, old_inputs:], torch.zeros_like(rows[:, old_inputs:]))
    return rows[:, :old_inputs].reshape(len(ids), -1)


def brute_force_gamma(net, site_name, inputs, targets, loss_fn):
    """Γ = (1/σ'(0)) ∂/∂ω [∇_α L] at α = 0 for one probe unit, by torch.func (A3)."""
    net = copy.deepcopy(net)
    net.eval()
    site = net.site(site_name)
    n, q, positions = site.width, site.fan_out_size, site.positions
    d = site.fan_in_size - (site.producer.bias is not None)
    out = site.consumer.weight.shape[0]
    slope = slope_at_zero(site)
    site.add_units(torch.zeros(1, d, dtype=torch.float64), torch.zeros(1, q, dtype=torch.float64))
    site = net.site(site_name)
    names = {module: name for name, module in net.named_modules()}
    producer_key = f"{names[site.producer]}.weight"
    consumer_key = f"{names[site.consumer]}.weight"
    tensors = {k: v.detach() for k, v in net.named_parameters()}
    tensors.update(dict(net.named_buffers()))
    producer_weight, consumer_weight = tensors[producer_key], tensors[consumer_key]

    def fan_in_gradient(omega):
        def loss(alpha):
            values = dict(tensors)
            values[producer_key] = torch.cat(
                [producer_weight[:n], alpha.reshape(1, *producer_weight.shape[1:])]
            )
            if consumer_weight.ndim == 4:
                column = omega.reshape(out, 1, *consumer_weight.shape[2:])
                values[consumer_key] = torch.cat([consumer_weight[:, :n], column], dim=1)
            else:
                column = omega.reshape(out, positions)
                values[consumer_key] = torch.cat(
                    [consumer_weight[:, : n * positions], column], dim=1
                )
            return loss_fn(functional_call(net, values, (inputs,)), targets).mean()

        return grad(loss)(torch.zeros(d, dtype=torch.float64))

    jacobian = jacrev(fan_in_gradient)(torch.zeros(q, dtype=torch.float64))  # (d, q)
    return jacobian.T / slope


def conv_pair_task(stride1, padding1, stride2, padding2, seed=0) -> GrowthCase:
    """conv3×3 → tanh → conv3×3 → tanh → GAP → linear, by hand (the zoo has only stride 1)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layers = [
            ChainLayer("block0", nn.Conv2d(2, 3, 3, stride1, padding1), activation="tanh"),
            ChainLayer(
                "block1",
                nn.Conv2d(3, 4, 3, stride2, padding2),
                activation="tanh",
                post=[nn.AdaptiveAvgPool2d(1), nn.Flatten()],
            ),
            ChainLayer("block2", nn.Linear(4, 2)),
        ]
    net = chain_net(layers, (2, 9, 9)).double().eval()
    inputs = torch.randn(16, 2, 9, 9, generator=generator, dtype=torch.float64)
    targets = torch.randn(16, 2, generator=generator, dtype=torch.float64)
    return GrowthCase(net, inputs, targets, regression_loss)


def flat_task(seed=0) -> GrowthCase:
    """conv3×3 → tanh → max-pool → flatten → linear: the Linear reads each unit at 4 positions."""
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layers = [
            ChainLayer(
                "block0",
                nn.Conv2d(2, 3, 3, padding=1),
                activation="tanh",
                post=[nn.MaxPool2d(2), nn.Flatten()],
            ),
            ChainLayer("block1", nn.Linear(3 * 2 * 2, 2)),
        ]
    net = chain_net(layers, (2, 4, 4)).double().eval()
    inputs = torch.randn(8, 2, 4, 4, generator=generator, dtype=torch.float64)
    targets = torch.randn(8, 2, generator=generator, dtype=torch.float64)
    return GrowthCase(net, inputs, targets, regression_loss)


def assert_close(actual, expected, rtol=1e-10):
    scale = expected.abs().max()
    assert scale > 0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * float(scale))


# ------------------------------------------------------------------------------ A7.1


@pytest.mark.parametrize("task_name", TASKS)
def test_output_unchanged_and_new_units_silent(task_name):
    task = make_task(task_name)
    reference = make_task(task_name)
    widths = task.net.widths()
    task.net.eval()
    before = outputs(task.net, task.inputs)
    event = GradMax().grow(task.net, task.context())
    assert event.grew
    assert event.predicted_loss_change == 0.0
    assert (outputs(task.net, task.inputs) - before).abs().max() <= 1e-12
    task.net.train()
    reference.net.train()
    batch = task.inputs[:32]
    assert (outputs(task.net, batch) - outputs(reference.net, batch)).abs().max() <= 1e-12
    for eval_mode in (True, False):
        taps, _ = collect_taps(
            task.net, task.inputs[:32], task.targets[:32], task.loss_fn, eval_mode=eval_mode
        )
        for name, old_width in widths.items():
            assert torch.equal(
                taps[name].post[:, old_width:], torch.zeros_like(taps[name].post[:, old_width:])
            )
    # the new fan-in rows and biases are exactly zero
    for name, old_width in widths.items():
        site = task.net.site(name)
        assert torch.equal(
            site.fan_in_matrix()[old_width:], torch.zeros_like(site.fan_in_matrix()[old_width:])
        )


# ------------------------------------------------------------------------------ A7.2


@pytest.mark.parametrize("task_name", TASKS)
def test_fan_in_gradient_matches_prediction(task_name):
    task = make_task(task_name)
    old = copy.deepcopy(task.net)
    inputs, targets = task.inputs[:STATS], task.targets[:STATS]
    widths = task.net.widths()
    event = GradMax().grow(task.net, task.context())
    for name, old_width in widths.items():
        extras = event.extras[name]
        count = event.units_added[name]
        ids = list(range(old_width, old_width + count))
        gamma = compute_gamma(old, name, inputs, targets, task.loss_fn)
        site = task.net.site(name)
        slope = slope_at_zero(site)
        fan_out = site.fan_out_matrix()[ids]
        q = gamma.shape[0]
        positions = site.positions
        # entries towards new units of the next site are zero; the rest are c·u_k
        full = fan_out.reshape(count, -1, positions)
        old_outputs = q // positions
        assert torch.equal(full[:, old_outputs:], torch.zeros_like(full[:, old_outputs:]))
        omega = full[:, :old_outputs].reshape(count, q)
        torch.testing.assert_close(
            omega.norm(dim=1),
            torch.full((count,), extras["c"], dtype=torch.float64),
            rtol=1e-12,
            atol=0,
        )
        old_inputs = old.site(name).producer.weight.shape[1]
        actual = new_fan_in_grad(task.net, name, inputs, targets, task.loss_fn, ids, old_inputs)
        predicted = slope * omega @ gamma
        assert_close(actual, predicted)
        norm_sq = float((actual**2).sum())
        assert abs(norm_sq / extras["predicted_grad_norm_sq"] - 1) <= 1e-10
        values = torch.tensor(extras["singular_values"][:count], dtype=torch.float64)
        expected = slope**2 * extras["c"] ** 2 * float((values**2).sum())
        assert abs(extras["predicted_grad_norm_sq"] / expected - 1) <= 1e-12


def test_fan_out_norm_rules():
    task = make_task("tanh_mlp")
    site = task.net.site("block0")
    mean_norm = float(site.fan_out_matrix().norm(dim=1).mean())
    event = GradMax().grow(task.net, task.context())
    assert event.extras["block0"]["c"] == pytest.approx(0.5 * mean_norm, rel=1e-14)
    task = make_task("tanh_mlp")
    event = make_grower("gradmax", {"scale_method": "fixed", "scale": 0.3}).grow(
        task.net, task.context()
    )
    assert event.extras["block0"]["c"] == 0.3
    new = task.net.site("block0").fan_out_matrix()[4:]
    torch.testing.assert_close(new.norm(dim=1), torch.full((1,), 0.3, dtype=torch.float64))


# ------------------------------------------------------------------------------ A7.3


@pytest.mark.parametrize("task_name", TASKS)
def test_optimal_among_orthonormal_frames(task_name):
    task = make_task(task_name)
    old = copy.deepcopy(task.net)
    widths = task.net.widths()
    event = make_grower("gradmax", {"growth_fraction": 0.5}).grow(task.net, task.context())
    generator = torch.Generator().manual_seed(0)
    for name in widths:
        site = old.site(name)
        gamma = compute_gamma(old, name, task.inputs[:STATS], task.targets[:STATS], task.loss_fn)
        slope = slope_at_zero(site)
        extras = event.extras[name]
        best, c, count = extras["predicted_grad_norm_sq"], extras["c"], extras["added"]
        assert count >= 1
        for _ in range(100):
            frame, _ = torch.linalg.qr(
                torch.randn(gamma.shape[0], count, generator=generator, dtype=torch.float64)
            )
            value = slope**2 * c**2 * float(((frame.T @ gamma) ** 2).sum())
            assert value <= best + 1e-12
        # growneuron's random direction (normalised U[0, 1) entries), K = 1
        for _ in range(100):
            direction = torch.rand(gamma.shape[0], generator=generator, dtype=torch.float64)
            direction = c * direction / direction.norm()
            value = slope**2 * float(((direction @ gamma) ** 2).sum())
            top = slope**2 * c**2 * extras["singular_values"][0] ** 2
            assert value <= top + 1e-12


# ------------------------------------------------------------------------------ A7.4


@pytest.mark.parametrize(
    ("task_name", "site_name"),
    [
        ("tanh_mlp", "block0"),  # Linear → Linear
        ("relu_mlp", "block1"),  # Linear → Linear (output head)
        ("conv_bn", "block0"),  # Conv+BN → max-pool → Conv+BN
        ("conv_bn", "block1"),  # Conv+BN → GAP → Linear
    ],
)
def test_gamma_matches_brute_force_on_fixtures(task_name, site_name):
    task = make_task(task_name)
    inputs, targets = task.inputs[:32], task.targets[:32]
    gamma = compute_gamma(task.net, site_name, inputs, targets, task.loss_fn)
    reference = brute_force_gamma(task.net, site_name, inputs, targets, task.loss_fn)
    assert_close(gamma, reference)


@pytest.mark.parametrize(
    ("stride1", "padding1", "stride2", "padding2"),
    list(itertools.product((1, 2), (0, 1), (1, 2), (0, 1))),
)
def test_gamma_matches_brute_force_conv_pairs(stride1, padding1, stride2, padding2):
    task = conv_pair_task(stride1, padding1, stride2, padding2)
    for site_name in ("block0", "block1"):  # Conv → Conv, Conv → GAP → Linear
        gamma = compute_gamma(task.net, site_name, task.inputs, task.targets, task.loss_fn)
        reference = brute_force_gamma(task.net, site_name, task.inputs, task.targets, task.loss_fn)
        assert_close(gamma, reference)


@pytest.mark.parametrize(("stride1", "padding1"), [(1, 1), (2, 0)])
def test_conv_pairs_grow_with_predicted_gradient(stride1, padding1):
    task = conv_pair_task(stride1, padding1, 2, 1, seed=3)
    old = copy.deepcopy(task.net)
    before = outputs(task.net, task.inputs)
    event = make_grower("gradmax", {"growth_fraction": 0.5}).grow(task.net, task.context())
    assert (outputs(task.net, task.inputs) - before).abs().max() <= 1e-12
    for name, old_width in old.widths().items():
        count = event.units_added[name]
        ids = list(range(old_width, old_width + count))
        gamma = compute_gamma(old, name, task.inputs, task.targets, task.loss_fn)
        site = task.net.site(name)
        omega = site.fan_out_matrix()[ids].reshape(count, -1, site.positions)
        omega = omega[:, : gamma.shape[0] // site.positions].reshape(count, -1)
        old_inputs = old.site(name).producer.weight.shape[1]
        actual = new_fan_in_grad(
            task.net, name, task.inputs, task.targets, task.loss_fn, ids, old_inputs
        )
        assert_close(actual, omega @ gamma)


# ------------------------------------------------------------------------------ A7.6


def test_zero_slope_activation_is_a_recorded_refusal():
    task = make_task("relu_mlp")
    task.net.site(0).act._function = torch.relu  # autograd derivative 0 at 0
    event = GradMax().grow(task.net, task.context())
    reason = event.extras["refused_sites"]["block0"]
    assert "derivative 0 at 0" in reason
    assert "zoo's relu" in reason
    assert "block0" not in event.units_added
    assert event.units_added["block1"] >= 1


def test_nonzero_at_zero_activation_is_a_recorded_refusal():
    net = build_model(ModelConfig("mlp", (3,), 2, (4,), activation="sigmoid")).double()
    task = make_task("tanh_mlp")
    event = GradMax().grow(net, task.context())
    assert "σ(0) = 0.5" in event.extras["refused_sites"]["block0"]
    assert event.stop_reason.startswith("method 'gradmax' can grow none of the sites")
    assert not event.grew


# ------------------------------------------------------------------------------ the rest


def test_registered_with_cpu_defaults():
    cls = get_method("gradmax")
    assert cls is GradMax
    assert cls.preserves_function == "exact"
    config = GradMaxConfig()
    assert (config.epsilon, config.scale_method, config.scale) == (0.0, "mean_norm", 0.5)
    assert (config.growth_fraction, config.schedule, config.stats_samples) == (
        0.25,
        "all-at-once",
        128,
    )
    for bad in ({"scale_method": "x"}, {"schedule": "x"}, {"epsilon": 0.1}):
        with pytest.raises(ValueError):
            make_grower("gradmax", bad)


def test_count_follows_initial_width():
    task = make_task("conv_bn")  # widths 4 and 5: K = ceil(0.25·4) = 1, ceil(0.25·5) = 2
    grower = GradMax()
    first = grower.grow(task.net, task.context())
    second = grower.grow(task.net, task.context())
    assert first.units_added == second.units_added == {"block0": 1, "block1": 2}


def test_round_robin_grows_one_site_per_event():
    task = make_task("tanh_mlp")
    grower = make_grower("gradmax", {"schedule": "round-robin"})
    grown = [list(grower.grow(task.net, task.context()).units_added) for _ in range(3)]
    assert grown == [["block0"], ["block1"], ["block0"]]


def test_flattened_positions_match_brute_force_and_grow_as_predicted():
    """A conv read by a Linear at several flattened positions (once a random-add fallback)."""
    task = flat_task()
    gamma = compute_gamma(task.net, "block0", task.inputs, task.targets, task.loss_fn)
    reference = brute_force_gamma(task.net, "block0", task.inputs, task.targets, task.loss_fn)
    assert gamma.shape == (2 * 4, 2 * 9)
    assert_close(gamma, reference)
    old = copy.deepcopy(task.net)
    before = outputs(task.net, task.inputs)
    event = make_grower("gradmax", {"growth_fraction": 1.0}).grow(task.net, task.context())
    assert (outputs(task.net, task.inputs) - before).abs().max() <= 1e-12
    ids = list(range(3, 3 + event.units_added["block0"]))
    omega = task.net.site("block0").fan_out_matrix()[ids]
    actual = new_fan_in_grad(task.net, "block0", task.inputs, task.targets, task.loss_fn, ids, 2)
    assert_close(actual, slope_at_zero(old.site("block0")) * omega @ gamma)


@pytest.mark.parametrize(
    ("model", "site_name"),
    [
        ("resnet18", "layer2.0"),  # inner width: strided conv1 → BN → relu → conv2
        ("mobilenetv1", "pw1"),  # pointwise → BN → relu → strided depthwise → BN → relu → pw
        ("mobilenetv1", "stem"),
        ("vgg", "conv8"),  # → max pool to 1×1 → flatten → Linear
        ("pointnet", "conv5"),  # → global max over points → Linear
        ("pointnet", "fc2"),  # → dropout → Linear
    ],
)
def test_gamma_matches_brute_force_on_zoo_sites(model, site_name):
    task = make_task(model)
    gamma = compute_gamma(task.net, site_name, task.inputs, task.targets, task.loss_fn)
    reference = brute_force_gamma(task.net, site_name, task.inputs, task.targets, task.loss_fn)
    assert_close(gamma, reference)
