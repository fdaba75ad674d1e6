"""carry_optimizer_state: surviving entries keep their state exactly, new entries start at zero.

Every surgery here appends units, so an old entry keeps its index in every dimension: the expected
carried state is the old state embedded in the leading corner of a zero tensor of the new shape.
The optimizer's next step is then checked against the update computed by hand from that expected
state, so a state that was carried but not bound to the new parameter is caught too.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from growbench.nn import GrowableNet, carry_optimizer_state, insert_layer

DTYPE = torch.float64
LR = 0.05


# ----------------------------------------------------------------------------- helpers
def random(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)


def split(net: GrowableNet, key: int | str, ids: list[int], m: int, seed: int) -> None:
    site = net.site(key)
    deltas = 0.01 * random(len(ids), m, site.fan_in_size, seed=seed)
    weights = torch.full((len(ids), m), 1.0 / m, dtype=DTYPE)
    site.split(ids, deltas, weights)


def add(net: GrowableNet, key: int | str, k: int, seed: int) -> None:
    site = net.site(key)
    d = site.fan_in_size - (site.producer.bias is not None)
    site.add_units(random(k, d, seed=seed), random(k, site.fan_out_size, seed=seed + 1))


SURGERIES: dict[str, Callable[[GrowableNet], None]] = {
    "split": lambda net: split(net, 0, [1, 0], 3, seed=1),
    "add_units": lambda net: add(net, 1, 2, seed=2),
    "split_then_add_same_site": lambda net: (split(net, 0, [2], 2, 3), add(net, 0, 2, seed=4)),
    "split_twice_same_unit": lambda net: (split(net, 0, [1], 2, 5), split(net, 0, [1], 2, 6)),
    "adjacent_sites": lambda net: (split(net, 1, [0, 3], 2, 7), split(net, 0, [2], 3, 8)),
    "insert_layer": lambda net: insert_layer(net, 0),
    "insert_then_split_around_it": lambda net: (
        split(net, insert_layer(net, 0).name, [1], 2, 9),
        split(net, 0, [0], 2, 10),
    ),
}

OPTIMIZERS: dict[str, Callable[[list], torch.optim.Optimizer]] = {
    "sgd_momentum": lambda params: torch.optim.SGD(params, lr=LR, momentum=0.9),
    "adam": lambda params: torch.optim.Adam(params, lr=LR),
    "adam_amsgrad": lambda params: torch.optim.Adam(params, lr=LR, amsgrad=True),
}


def slots(net: GrowableNet) -> list[tuple[nn.Module, str]]:
    """(module, name) of every parameter: stable across surgery, unlike the tensors."""
    return [
        (module, name)
        for module in net.modules()
        for name, _ in module.named_parameters(recurse=False)
    ]


def train(net: GrowableNet, optimizer, x, y, steps: int = 3) -> None:
    net.train()
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(net(x), y).backward()
        optimizer.step()


def state_of(optimizer, param) -> dict:
    return {
        key: value.clone() if isinstance(value, torch.Tensor) else value
        for key, value in optimizer.state.get(param, {}).items()
    }


def embedded(old: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    out = torch.zeros(shape, dtype=old.dtype)
    out[tuple(slice(0, s) for s in old.shape)] = old
    return out


def group_of(optimizer, param) -> int:
    for index, group in enumerate(optimizer.param_groups):
        if any(p is param for p in group["params"]):
            return index
    raise AssertionError("parameter not in the optimizer")


def assert_holds_exactly_the_net(optimizer, net: GrowableNet) -> None:
    held = [id(p) for group in optimizer.param_groups for p in group["params"]]
    current = [id(p) for p in net.parameters()]
    assert len(held) == len(set(held)), "a parameter is in the optimizer twice"
    assert sorted(held) == sorted(current)
    assert {id(p) for p in optimizer.state} <= set(current), "state of a stale parameter"


class Expected:
    """What each parameter's state must be after the carry, computed from the old state."""

    def __init__(self, optimizer, net: GrowableNet) -> None:
        self.old = {
            (id(module), name): (getattr(module, name), state_of(optimizer, getattr(module, name)))
            for module, name in slots(net)
        }

    def state(self, module: nn.Module, name: str) -> dict | None:
        """The carried state, or None for a brand-new parameter."""
        if (id(module), name) not in self.old:
            return None
        old_param, old_state = self.old[(id(module), name)]
        shape = getattr(module, name).shape
        return {
            key: embedded(value, shape)
            if isinstance(value, torch.Tensor) and value.shape == old_param.shape
            else value
            for key, value in old_state.items()
        }

    def group(self, optimizer, module: nn.Module, name: str) -> int:
        if (id(module), name) not in self.old:
            return 0
        return group_of(optimizer, self.old[(id(module), name)][0])


def setup(make_net, inputs_for, targets_for, kind: str, make_optimizer):
    net = make_net(kind, batchnorm=True, activation="relu")
    x, y = inputs_for(net, 32), targets_for(32)
    optimizer = make_optimizer(list(net.parameters()))
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    train(net, optimizer, x, y)
    scheduler.step()
    return net, x, y, optimizer, scheduler


# -------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("surgery", SURGERIES)
@pytest.mark.parametrize("make_optimizer", OPTIMIZERS.values(), ids=OPTIMIZERS.keys())
@pytest.mark.parametrize("kind", ["mlp", "cnn", "flat"])
def test_carry_keeps_surviving_state_and_zeroes_new_entries(
    make_net, inputs_for, targets_for, kind, make_optimizer, surgery
):
    net, x, y, optimizer, scheduler = setup(make_net, inputs_for, targets_for, kind, make_optimizer)
    expected = Expected(optimizer, net)
    lr_before = optimizer.param_groups[0]["lr"]
    SURGERIES[surgery](net)
    carry_optimizer_state(optimizer, net)

    assert net.lineage == {}
    assert_holds_exactly_the_net(optimizer, net)
    grown = inserted = False
    for module, name in slots(net):
        param = getattr(module, name)
        want = expected.state(module, name)
        got = optimizer.state.get(param, {})
        if want is None:  # a brand-new parameter (inserted layer): empty state
            assert not got
            inserted = True
            continue
        assert got.keys() == want.keys()
        for key, value in want.items():
            if isinstance(value, torch.Tensor):
                assert got[key].shape == value.shape, (name, key)
                assert torch.equal(got[key], value), (name, key)
            else:
                assert got[key] == value
        grown |= param.shape != expected.old[(id(module), name)][0].shape
    assert grown or surgery == "insert_layer", "the surgery grew nothing"
    assert inserted == surgery.startswith("insert")

    # the scheduler bound before the surgery still drives the learning rate
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(lr_before / 2)
    assert scheduler.get_last_lr() == [group["lr"] for group in optimizer.param_groups]
    _check_next_step(net, x, y, optimizer, expected)


def _check_next_step(net: GrowableNet, x, y, optimizer, expected: Expected) -> None:
    """One more step runs, and it uses the carried state of each parameter."""
    net.train()
    optimizer.zero_grad()
    F.cross_entropy(net(x), y).backward()
    before = {}
    for module, name in slots(net):
        param = getattr(module, name)
        carried = expected.state(module, name) or {}
        group = optimizer.param_groups[group_of(optimizer, param)]
        before[(id(module), name)] = (param.detach().clone(), param.grad.clone(), carried, group)
    optimizer.step()
    for module, name in slots(net):
        param = getattr(module, name)
        value, grad, carried, group = before[(id(module), name)]
        state = optimizer.state[param]
        if isinstance(optimizer, torch.optim.SGD):
            momentum = group["momentum"]
            buffer = momentum * carried["momentum_buffer"] + grad if carried else grad
            torch.testing.assert_close(state["momentum_buffer"], buffer, rtol=1e-13, atol=1e-15)
            torch.testing.assert_close(param.detach(), value - group["lr"] * buffer)
        else:
            beta1, beta2 = group["betas"]
            steps = carried["step"] + 1 if carried else torch.tensor(1.0, dtype=DTYPE)
            assert state["step"].item() == steps.item()
            first = carried.get("exp_avg", torch.zeros_like(grad))
            second = carried.get("exp_avg_sq", torch.zeros_like(grad))
            torch.testing.assert_close(
                state["exp_avg"], beta1 * first + (1 - beta1) * grad, rtol=1e-12, atol=1e-15
            )
            torch.testing.assert_close(
                state["exp_avg_sq"],
                beta2 * second + (1 - beta2) * grad * grad,
                rtol=1e-12,
                atol=1e-15,
            )


def test_state_survives_a_state_dict_round_trip_after_carry(make_net, inputs_for, targets_for):
    net, x, y, optimizer, _ = setup(make_net, inputs_for, targets_for, "cnn", OPTIMIZERS["adam"])
    split(net, 1, [0, 2], 2, seed=11)
    insert_layer(net, 0)
    carry_optimizer_state(optimizer, net)
    saved = optimizer.state_dict()
    fresh = torch.optim.Adam([p for group in optimizer.param_groups for p in group["params"]])
    fresh.load_state_dict(saved)
    for param in net.parameters():
        for key, value in optimizer.state.get(param, {}).items():
            assert torch.equal(fresh.state[param][key], value)
    train(net, fresh, x, y, steps=1)


def test_parameter_groups_are_kept(make_net, inputs_for, targets_for):
    """A successor stays in its ancestor's group; parameters of an inserted layer join group 0."""
    net = make_net("mlp", batchnorm=True, activation="relu")
    x, y = inputs_for(net, 32), targets_for(32)
    matrices = [p for p in net.parameters() if p.ndim > 1]
    vectors = [p for p in net.parameters() if p.ndim == 1]
    optimizer = torch.optim.SGD(
        [{"params": matrices, "lr": 0.1}, {"params": vectors, "lr": 0.02}], lr=LR, momentum=0.9
    )
    train(net, optimizer, x, y)
    expected = Expected(optimizer, net)
    groups = {key: expected.group(optimizer, m, n) for m, n in slots(net) for key in [(id(m), n)]}
    split(net, 1, [0, 5], 2, seed=12)
    add(net, 0, 2, seed=13)
    new_site = insert_layer(net, 1)
    carry_optimizer_state(optimizer, net)

    assert_holds_exactly_the_net(optimizer, net)
    for module, name in slots(net):
        param = getattr(module, name)
        if module in (new_site.producer, new_site.norm):
            assert group_of(optimizer, param) == 0
        else:
            assert group_of(optimizer, param) == groups[(id(module), name)]
    _check_next_step(net, x, y, optimizer, expected)


@pytest.mark.parametrize("make_optimizer", OPTIMIZERS.values(), ids=OPTIMIZERS.keys())
def test_carry_before_any_step(make_net, inputs_for, targets_for, make_optimizer):
    net = make_net("cnn", batchnorm=True, activation="relu")
    optimizer = make_optimizer(list(net.parameters()))
    split(net, 0, [1], 2, seed=14)
    insert_layer(net, 1)
    carry_optimizer_state(optimizer, net)
    assert_holds_exactly_the_net(optimizer, net)
    assert not any(optimizer.state.values())
    train(net, optimizer, inputs_for(net, 8), targets_for(8), steps=1)
    assert all(optimizer.state[p] for p in net.parameters())


def test_carry_without_surgery_changes_nothing(make_net, inputs_for, targets_for):
    net, *_, optimizer, _ = setup(make_net, inputs_for, targets_for, "mlp", OPTIMIZERS["adam"])
    params = [p for group in optimizer.param_groups for p in group["params"]]
    states = {id(p): state_of(optimizer, p) for p in params}
    carry_optimizer_state(optimizer, net)
    assert [p for group in optimizer.param_groups for p in group["params"]] == params
    for param in params:
        for key, value in states[id(param)].items():
            assert torch.equal(optimizer.state[param][key], value)


def test_second_carry_is_a_no_op(make_net, inputs_for, targets_for):
    net, *_, optimizer, _ = setup(make_net, inputs_for, targets_for, "mlp", OPTIMIZERS["adam"])
    split(net, 0, [0], 2, seed=15)
    carry_optimizer_state(optimizer, net)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    states = {id(p): state_of(optimizer, p) for p in params}
    carry_optimizer_state(optimizer, net)
    assert [p for group in optimizer.param_groups for p in group["params"]] == params
    for param in params:
        for key, value in states[id(param)].items():
            assert torch.equal(optimizer.state[param][key], value)


def test_parameters_no_longer_in_the_net_are_dropped(make_net, inputs_for, targets_for):
    net = make_net("mlp", activation="relu")
    stray = nn.Parameter(torch.ones(3, dtype=DTYPE))
    optimizer = torch.optim.SGD([*net.parameters(), stray], lr=LR, momentum=0.9)
    train(net, optimizer, inputs_for(net, 8), targets_for(8), steps=1)
    stray.grad = torch.ones_like(stray)
    optimizer.step()
    assert stray in optimizer.state
    split(net, 0, [0], 2, seed=16)
    carry_optimizer_state(optimizer, net)
    assert_holds_exactly_the_net(optimizer, net)
    assert stray not in optimizer.state
