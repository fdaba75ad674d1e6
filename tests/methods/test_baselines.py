"""Checks specific to the baselines (docs/methods/baselines.md, random-split.md, random-add.md)."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare

from growbench.methods import make_grower
from growbench.methods.baselines import scaled_to_budget
from growbench.nn import ModelConfig, build_model
from growbench.nn.taps import record_inputs

from .conftest import make_task


def params_of(config: ModelConfig) -> float:
    return build_model(config).params()


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("factor", [1.0, 2.0, 3.7])
def test_static_is_the_largest_scaled_net_within_budget(kind, factor):
    start = ModelConfig(kind, (1, 8, 8), 10, (6, 10), batchnorm=kind == "cnn")
    limit = factor * params_of(start)
    config = make_grower("static").start_config(start, limit, params_of)
    assert params_of(config) <= limit
    # the next integer step of the scale would not fit
    ratio = config.widths[0] / start.widths[0]
    bigger = start.with_widths(
        tuple(round((ratio + 1 / start.widths[0]) * w) for w in start.widths)
    )
    if bigger.widths != config.widths:
        assert params_of(bigger) > limit or factor == 1.0
    if factor > 1.5:
        assert sum(config.widths) > sum(start.widths)


def test_static_keeps_the_start_net_when_budget_is_below_it():
    start = ModelConfig("mlp", (4,), 2, (5,))
    assert scaled_to_budget(start, params_of(start) - 1, params_of) == start


def test_static_keeps_a_net_with_no_hidden_layer_as_it_is():
    start = ModelConfig("mlp", (2,), 2, ())
    assert scaled_to_budget(start, 10 * params_of(start), params_of) == start


def test_none_and_static_never_change_the_net():
    for name in ("none", "static"):
        task = make_task("tanh_mlp")
        before = {k: v.clone() for k, v in task.net.state_dict().items()}
        event = make_grower(name).grow(task.net, task.context())
        assert not event.grew
        assert "never grows" in event.stop_reason
        assert all(torch.equal(before[k], v) for k, v in task.net.state_dict().items())


def test_random_split_draws_units_uniformly():
    task = make_task("tanh_mlp")
    sites = task.net.sites
    units = [(site.name, unit) for site in sites for unit in range(site.width)]
    counts = dict.fromkeys(units, 0)
    grower = make_grower("random-split", {"growth_ratio": 0.5})
    for seed in range(300):
        trial = make_task("tanh_mlp")
        event = grower.grow(trial.net, trial.context(seed=seed))
        for site_name, chosen in event.selected.items():
            for unit, kind in chosen:
                assert kind == "split"
                counts[(site_name, unit)] += 1
    assert sum(counts.values()) == 300 * (len(units) // 2)
    assert chisquare(list(counts.values())).pvalue > 1e-4


def test_random_split_moves_offspring_by_plus_minus_epsilon_unit_directions():
    task = make_task("tanh_mlp")
    first, last = task.net.site(0), task.net.site(-1)
    old_rows, old_columns = first.fan_in_matrix().clone(), last.fan_out_matrix().clone()
    epsilon = 0.05
    grower = make_grower("random-split", {"epsilon": epsilon, "growth_ratio": 1.0})
    event = grower.grow(task.net, task.context())
    # the first site's fan-in reads the inputs, which nothing else changes
    first = task.net.site(0)
    chosen = [unit for unit, _ in event.selected[first.name]]
    assert sorted(chosen) == list(range(len(old_rows)))
    rows = first.fan_in_matrix()
    for position, unit in enumerate(chosen):
        direction = (rows[unit] - old_rows[unit]) / epsilon
        torch.testing.assert_close(
            rows[len(old_rows) + position] - old_rows[unit], -epsilon * direction
        )
        assert abs(float(direction.norm()) - 1) <= 1e-12
    # the last site's fan-out is the head, which nothing else changes
    last = task.net.site(-1)
    columns = last.fan_out_matrix()
    for position, (unit, _) in enumerate(event.selected[last.name]):
        torch.testing.assert_close(columns[unit], old_columns[unit] / 2)
        torch.testing.assert_close(columns[len(old_columns) + position], old_columns[unit] / 2)


@pytest.mark.parametrize("mode", ["zero-fan-out", "zero-fan-in"])
def test_random_add_norms(mode):
    task = make_task("relu_mlp")
    site = task.net.site(0)
    mean_in = site.fan_in_matrix()[:, :-1].norm(dim=1).mean()
    mean_out = site.fan_out_matrix().norm(dim=1).mean()
    n_old, consumer_rows = site.width, task.net.site(1).width
    event = make_grower("random-add", {"mode": mode}).grow(task.net, task.context())
    site = task.net.site(0)
    rows = site.fan_in_matrix()[n_old:]
    # the consumer's rows: the old units first; new consumer units may read new units too
    columns = site.fan_out_matrix()[n_old:, :consumer_rows]
    assert event.units_added[site.name] == rows.shape[0] >= 1
    if mode == "zero-fan-out":
        torch.testing.assert_close(
            rows[:, :-1].norm(dim=1), mean_in.expand(len(rows)), rtol=1e-12, atol=0
        )
        assert torch.all(rows[:, -1] == 0)
        assert torch.all(columns == 0)
    else:
        assert torch.all(rows == 0)
        torch.testing.assert_close(
            columns.norm(dim=1), (0.5 * mean_out).expand(len(rows)), rtol=1e-12, atol=0
        )
        assert torch.all(columns >= 0)


def test_random_add_zero_fan_out_gradient_is_the_cross_moment():
    """Autograd's fan-out gradient of a new unit equals E[h_new g_aᵀ] (B3 check)."""
    task = make_task("tanh_mlp")
    net = task.net
    n_old = net.site(1).width
    make_grower("random-add").grow(net, task.context())
    site = net.site(1)
    consumer = site.consumer
    consumer.weight.grad = None
    losses = task.loss_fn(net(task.inputs), task.targets)
    losses.mean().backward()
    with torch.no_grad(), record_inputs([consumer]) as seen:
        net(task.inputs)
    hidden = seen[consumer]
    with torch.enable_grad():
        outputs = consumer(hidden)  # the output layer: the net's output
        g_a = torch.autograd.grad(task.loss_fn(outputs, task.targets).sum(), outputs)[0]
    expected = (hidden[:, n_old:].T @ g_a / len(task.inputs)).T
    torch.testing.assert_close(consumer.weight.grad[:, n_old:], expected, rtol=1e-12, atol=1e-15)


def test_random_add_zero_fan_in_needs_a_silent_activation():
    task = make_task("relu_mlp")
    for site in task.net.sites:
        site.act.__init__("sigmoid")
    event = make_grower("random-add", {"mode": "zero-fan-in"}).grow(task.net, task.context())
    assert not event.grew
    assert all("need σ(0) = 0" in reason for reason in event.extras["refused_sites"].values())


def test_random_add_rejects_unknown_mode():
    message = "random-add: mode must be one of zero-fan-out, zero-fan-in, got 'sideways'"
    with pytest.raises(ValueError, match=message):
        make_grower("random-add", {"mode": "sideways"})
