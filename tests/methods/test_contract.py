"""The plugin contract ("Common fidelity checks" of the method notes), for every method, on the
shared tiny fixtures and on every model of the zoo.

Methods are discovered through the registry, never listed by hand, so a new plugin is checked
the moment it is registered.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import json
import math
import weakref

import pytest
import torch

from growbench.methods import Grower, available_methods, get_method, make_grower
from growbench.methods import registry as method_registry
from growbench.nn import carry_optimizer_state

from .conftest import TASKS, ZOO, make_task

METHODS = sorted(available_methods())


def grower_for(name: str, **overrides) -> Grower:
    """The method with its quick settings (checks here do not judge estimate quality)."""
    return make_grower(name, {**get_method(name).quick_overrides, **overrides})


def make_supported_task(name: str, task_name: str):
    """The fixture, or a skip when it has a site kind the method does not declare (that case is
    checked once, by ``test_undeclared_site_kinds_are_refused_clearly``)."""
    task = make_task(task_name)
    missing = {site.kind for site in task.net.sites} - get_method(name).supported_kinds
    if missing:
        pytest.skip(f"{name} does not support {sorted(missing)}")
    return task


def outputs(net, inputs):
    with torch.no_grad():
        return net(inputs)


def test_methods_are_discovered():
    assert {"none", "static", "random-split", "random-add"} <= set(METHODS)


@pytest.mark.parametrize("name", METHODS)
def test_registration(name):
    cls = get_method(name)
    assert cls.name == name
    assert dataclasses.is_dataclass(cls.Config)
    assert cls.preserves_function in ("exact", "at_zero_step", "no")
    assert isinstance(make_grower(name), cls)
    with pytest.raises(ValueError, match="no option 'not_an_option'"):
        make_grower(name, {"not_an_option": 1})


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("task_name", TASKS)
def test_event_records_exactly_what_changed(name, task_name):
    task = make_supported_task(name, task_name)
    widths, params, flops = task.net.widths(), task.net.params(), task.net.flops()
    event = grower_for(name).grow(task.net, task.context())
    after = task.net.widths()
    assert {k: after[k] - widths.get(k, 0) for k in after if after[k] != widths.get(k, 0)} == (
        event.units_added
    )
    assert event.cost_added == {
        "params": task.net.params() - params,
        "flops": task.net.flops() - flops,
    }
    assert event.grew or event.stop_reason
    data = event.to_dict()
    for key in (
        "units_added",
        "selected",
        "scores",
        "predicted_loss_change",
        "cost_added",
        "seconds",
        "stop_reason",
        "extras",
    ):
        assert key in data
    # forward and backward still work, shapes are consistent
    task.net.train()
    task.loss_fn(task.net(task.inputs), task.targets).mean().backward()


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("task_name", TASKS)
def test_budget_is_never_exceeded(name, task_name):
    probe = make_supported_task(name, task_name)
    cheapest = min(probe.net.sites, key=lambda s: s.cost_of_units(1)["params"])
    for count in (0, 1, 3):
        task = make_task(task_name)
        budget = cheapest.cost_of_units(count)["params"]
        before = copy.deepcopy(task.net.state_dict())
        params = task.net.params()
        event = grower_for(name).grow(task.net, task.context(remaining_budget=budget))
        assert task.net.params() - params <= budget
        if count == 0:
            assert event.stop_reason
            after = task.net.state_dict()
            assert before.keys() == after.keys()
            assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("task_name", TASKS)
def test_function_preservation_as_declared(name, task_name):
    cls = get_method(name)
    if cls.preserves_function == "no":
        pytest.skip(f"{name} does not claim to preserve the function")
    overrides = cls.zero_step_overrides if cls.preserves_function == "at_zero_step" else {}
    task = make_supported_task(name, task_name)
    task.net.eval()
    before = outputs(task.net, task.inputs)
    event = grower_for(name, **overrides).grow(task.net, task.context())
    assert (outputs(task.net, task.inputs) - before).abs().max() <= 1e-12
    if task_name == "conv_bn" and event.grew:
        # train mode on one batch: duplicated and silent channels leave batch statistics alone
        reference = make_task(task_name)
        reference.net.train()
        task.net.train()
        batch = task.inputs[:32]
        difference = outputs(task.net, batch) - outputs(reference.net, batch)
        assert difference.abs().max() <= 1e-12


@pytest.mark.parametrize("name", METHODS)
def test_prediction_matches_realised_loss_change(name):
    cls = get_method(name)
    task = make_task("tanh_mlp")
    ctx = task.context()
    grower = make_grower(name, cls.small_step_overrides)  # full settings: judges the estimate
    before = ctx.loss(task.net)
    event = grower.grow(task.net, ctx)
    realised = ctx.loss(task.net) - before
    if event.predicted_loss_change is None:
        pytest.skip(f"{name} makes no prediction")
    if event.predicted_loss_change == 0.0:
        assert abs(realised) <= 1e-12
    else:
        ratio = realised / event.predicted_loss_change
        assert abs(ratio - 1) <= cls.prediction_tolerance


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("task_name", TASKS)
@pytest.mark.parametrize("start_mode", ["train", "eval"])
def test_no_side_effects(name, task_name, start_mode):
    task = make_supported_task(name, task_name)
    task.net.train(start_mode == "train")
    buffers = {key: value.clone() for key, value in task.net.named_buffers() if "running" in key}
    old_params = [weakref.ref(p) for p in task.net.parameters()]
    rng = torch.get_rng_state()
    grower = grower_for(name)
    grower.grow(task.net, task.context(seed=1))
    grower.grow(task.net, task.context(seed=2))
    assert task.net.training == (start_mode == "train")
    assert torch.equal(torch.get_rng_state(), rng)
    for key, value in buffers.items():
        now = dict(task.net.named_buffers())[key]
        assert torch.equal(now[: len(value)], value), key
    task.net.pop_lineage()  # the net's own record for the optimizer hand-over
    gc.collect()
    current = {id(p) for p in task.net.parameters()}
    stale = [ref for ref in old_params if ref() is not None and id(ref()) not in current]
    assert not stale, f"{name} keeps {len(stale)} replaced parameters alive"


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("task_name", TASKS)
def test_same_seed_same_result(name, task_name):
    results = []
    for _ in range(2):
        task = make_supported_task(name, task_name)
        event = grower_for(name).grow(task.net, task.context(seed=7))
        results.append((event.to_json(timings=False), task.net.state_dict()))
    (json_a, state_a), (json_b, state_b) = results
    assert json_a == json_b
    assert state_a.keys() == state_b.keys()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("optimizer_name", ["sgd", "adam"])
def test_optimizer_state_is_handed_over(name, optimizer_name):
    task = make_task("tanh_mlp")
    net = task.net
    if optimizer_name == "sgd":
        optimizer = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    else:
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(3):
        optimizer.zero_grad()
        task.loss_fn(net(task.inputs), task.targets).mean().backward()
        optimizer.step()
    old_state = {p: {k: v.clone() for k, v in optimizer.state[p].items()} for p in net.parameters()}
    grower_for(name).grow(net, task.context())
    lineage = dict(net.lineage)
    carry_optimizer_state(optimizer, net)
    held = [p for group in optimizer.param_groups for p in group["params"]]
    assert {id(p) for p in held} == {id(p) for p in net.parameters()}
    for new, (old, maps) in lineage.items():
        for key, old_value in old_state[old].items():
            new_value = optimizer.state[new][key]
            if old_value.shape != old.shape:
                assert torch.equal(new_value, old_value)
                continue
            for index in torch.cartesian_prod(*[torch.arange(s) for s in new.shape]).reshape(
                -1, new.ndim
            ):
                source = [
                    int(index[d]) if m is None else int(m[index[d]]) for d, m in enumerate(maps)
                ]
                expected = 0.0 if min(source) < 0 else float(old_value[tuple(source)])
                assert float(new_value[tuple(index.tolist())]) == expected
    optimizer.zero_grad()
    task.loss_fn(net(task.inputs), task.targets).mean().backward()
    optimizer.step()


@pytest.mark.parametrize("name", METHODS)
def test_phase_timings_fit_in_wall_time(name):
    task = make_task("tanh_mlp")
    event = grower_for(name).grow(task.net, task.context())
    assert all(seconds >= 0 for seconds in event.seconds.values())
    assert sum(event.seconds.values()) <= event.wall_seconds + 1e-3
    assert math.isfinite(event.wall_seconds)


def _assert_refused_and_unchanged(grower: Grower, task) -> None:
    before = copy.deepcopy(task.net.state_dict())
    event = grower.grow(task.net, task.context())
    refused = event.extras["refused_sites"]
    assert set(refused) == {site.name for site in task.net.sites}
    assert all(reason for reason in refused.values())
    assert event.stop_reason.startswith(f"method {grower.name!r} can grow none of the sites")
    assert not event.grew
    after = task.net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_undeclared_site_kind_is_a_recorded_refusal_not_a_crash():
    class LinearOnly(get_method("random-add")):
        supported_kinds = frozenset({"Linear"})

    task = make_task("conv_bn")
    grower = LinearOnly()
    assert "site kind 'Conv2d+BN' is not supported" in grower.refusal(task.net.site("block0"))
    _assert_refused_and_unchanged(grower, task)


# ------------------------------------------------------------------------ registry × zoo
BUILTINS = sorted(method_registry._BUILTINS)


@pytest.mark.parametrize("name", BUILTINS)
@pytest.mark.parametrize("model", ["vgg", "mobilenetv1", "resnet18"])
def test_no_builtin_method_refuses_a_site_of_the_papers_nets(name, model):
    """The papers' own experiments: every seed method and baseline grows every site."""
    assert grower_for(name).refusals(make_task(model).net) == {}


def _grow_checked(name: str, task, seed: int, **overrides):
    """One grow() from train mode with every no-side-effect check of the contract."""
    net = task.net.train()
    buffers = {key: value.clone() for key, value in net.named_buffers() if "running" in key}
    rng = torch.get_rng_state()
    grower = grower_for(name, **overrides)
    widths, params, flops = net.widths(), net.params(), net.flops()
    event = grower.grow(net, task.context(seed=seed))
    assert net.training
    assert all(p.grad is None for p in net.parameters())
    assert torch.equal(torch.get_rng_state(), rng)
    for key, value in buffers.items():
        assert torch.equal(dict(net.named_buffers())[key][: len(value)], value), key
    after = net.widths()
    assert event.units_added == {
        k: after[k] - widths[k] for k in widths if k in after and after[k] != widths[k]
    }
    assert event.layers_inserted == [k for k in after if k not in widths]
    assert event.cost_added == {"params": net.params() - params, "flops": net.flops() - flops}
    assert event.extras.get("refused_sites", {}) == grower.refusals(task.net) or event.grew
    assert event.grew or event.stop_reason
    json.loads(event.to_json())
    return event


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("model", sorted(ZOO))
def test_contract_on_the_zoo(name, model):
    """Registry × zoo on tiny widths: side effects, event bookkeeping, function preservation as
    declared, determinism, a usable net afterwards, and the budget."""
    cls = get_method(name)
    overrides = cls.zero_step_overrides if cls.preserves_function == "at_zero_step" else {}
    task = make_task(model)
    task.net.eval()
    before = outputs(task.net, task.inputs)
    event = _grow_checked(name, task, seed=3, **overrides)
    if cls.preserves_function != "no":
        task.net.eval()
        assert (outputs(task.net, task.inputs) - before).abs().max() <= 1e-10
    twin = make_task(model)
    twin_event = _grow_checked(name, twin, seed=3, **overrides)
    assert event.to_json(timings=False) == twin_event.to_json(timings=False)
    state, twin_state = task.net.state_dict(), twin.net.state_dict()
    assert state.keys() == twin_state.keys()
    assert all(torch.equal(state[k], twin_state[k]) for k in state)
    task.net.train()
    task.loss_fn(task.net(task.inputs), task.targets).mean().backward()

    probe = make_task(model)
    budget = min(site.cost_of_units(1)["params"] for site in probe.net.sites)
    params = probe.net.params()
    grower_for(name).grow(probe.net, probe.context(remaining_budget=budget))
    assert probe.net.params() - params <= budget


@pytest.mark.parametrize("name", BUILTINS)
def test_every_builtin_on_a_rational_net(name):
    """SENN's rational activation (per-unit parameters): the splitting methods, which need σ'',
    refuse its sites with a reason; every other method grows as it declares."""
    cls = get_method(name)
    task = make_task("rational_mlp")
    task.net.eval()
    before = outputs(task.net, task.inputs)
    overrides = cls.zero_step_overrides if cls.preserves_function == "at_zero_step" else {}
    event = grower_for(name, **overrides).grow(task.net, task.context())
    if name in ("s2d", "signed-s2d", "fast-s2d"):
        assert all("per-unit parameters" in r for r in event.extras["refused_sites"].values())
        assert not event.grew
    else:
        assert "refused_sites" not in event.extras
        assert event.grew or name in ("none", "static")
    if cls.preserves_function != "no":
        assert (outputs(task.net, task.inputs) - before).abs().max() <= 1e-12
