"""The plugin contract: what every growth method must do, checked on tiny CPU tasks.

It ships in the package so that ``growbench check NAME`` vouches for an installed plugin with no
checkout of this repository; the test suite runs the same checks over the whole registry. Each
check is one rule, run on the tasks it concerns:

* the fixtures (``FIXTURES``): ``tanh_mlp`` and ``relu_mlp`` (3→4→3→2 on 400 Gaussian inputs, MSE
  to a random teacher, 200 full-batch steps so statistics are not trivial) and ``conv_bn`` (two
  conv3×3+BN+SiLU blocks, 3→4→5 channels, on 64 random 8×8 images, cross-entropy), float64;
* the zoo (``ZOO``): VGG, MobileNetV1, ResNet-18 and PointNet at tiny widths on 24 inputs, a few
  train-mode steps, BatchNorm statistics set to the data's.

A broken rule raises ``Violation`` with a message that names it; a rule that does not apply
(a site kind the method does not declare, a method that makes no prediction) raises ``Skipped``.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import json
import math
import random
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import torch

from growbench.methods import Grower, GrowthContext, GrowthEvent, get_method, make_grower
from growbench.nn import GrowableNet, ModelConfig, build_model, carry_optimizer_state
from growbench.nn.losses import PerSampleLoss, classification_loss, regression_loss

FIXTURES = ("tanh_mlp", "relu_mlp", "conv_bn")
# The fixtures whose targets a net can learn (a teacher's outputs): on conv_bn's random labels any
# fit to some samples raises the loss on the others, so a step's safety cannot be judged there.
LEARNABLE = ("tanh_mlp", "relu_mlp")
# The papers' networks (and PointNet) at tiny widths, ReLU, 3 classes.
ZOO = {
    "vgg": ModelConfig("vgg", (3, 32, 32), 3, width_multiplier=1 / 32),
    "mobilenetv1": ModelConfig("mobilenetv1", (3, 32, 32), 3, width_multiplier=1 / 16),
    "resnet18": ModelConfig("resnet18", (3, 16, 16), 3, width_multiplier=1 / 16),
    "pointnet": ModelConfig("pointnet", (16, 3), 3, width_multiplier=1 / 32),
}
EXACT = 1e-12  # how closely a function-preserving step must keep the outputs (float64)
# How much a default growth step may raise the loss on samples it never saw, relative to it.
STEP_TOLERANCE = 0.05
ZOO_EXACT = 1e-10  # deeper nets accumulate more rounding


class Violation(AssertionError):
    """A method broke a rule of the contract; the message names the rule."""


class Skipped(Exception):
    """A rule that does not apply to this method on this task."""


# ------------------------------------------------------------------------------ tasks
@dataclass
class GrowthCase:
    """A net with the data and loss to grow it on: what every contract check runs a method on."""

    net: GrowableNet
    inputs: torch.Tensor
    targets: torch.Tensor
    loss_fn: PerSampleLoss

    def context(
        self, remaining_budget: float = float("inf"), metric: str = "params", seed: int = 0
    ) -> GrowthContext:
        return GrowthContext(
            inputs=self.inputs,
            targets=self.targets,
            loss_fn=self.loss_fn,
            budget_metric=metric,
            remaining_budget=remaining_budget,
            generator=torch.Generator().manual_seed(seed),
            batch_size=128,
        )


def make_task(name: str) -> GrowthCase:
    """A fresh copy of the task ``name``: a fixture, a zoo model (``"resnet18"``, or
    ``"resnet18:tanh"`` for another activation) or ``"rational_mlp"``."""
    task = _trained(name)
    net = copy.deepcopy(task.net)
    net.lineage = {}
    net.zero_grad(set_to_none=True)
    return GrowthCase(net, task.inputs, task.targets, task.loss_fn)


@cache
def _trained(name: str) -> GrowthCase:
    generator = torch.Generator().manual_seed(1234)
    if name in ("tanh_mlp", "relu_mlp", "rational_mlp"):
        config = ModelConfig("mlp", (3,), 2, (4, 3), activation=name.removesuffix("_mlp"))
        net = build_model(config, seed=0).double()
        inputs = torch.randn(400, 3, generator=generator, dtype=torch.float64)
        teacher = torch.randn(3, 2, generator=generator, dtype=torch.float64)
        targets, loss_fn = torch.tanh(inputs @ teacher), regression_loss
        _train(net, inputs, targets, loss_fn, steps=200, lr=0.1)
    elif name.split(":")[0] in ZOO:
        model, _, activation = name.partition(":")
        config = ZOO[model].with_options(activation=activation or "relu")
        net = build_model(config, seed=0).double()
        inputs = torch.randn(24, *config.input_shape, generator=generator, dtype=torch.float64)
        targets, loss_fn = torch.randint(0, 3, (24,), generator=generator), classification_loss
        _train(net, inputs, targets, loss_fn, steps=5)
        _data_statistics(net, inputs)
    elif name == "conv_bn":
        config = ModelConfig("cnn", (3, 8, 8), 3, (4, 5), activation="silu", batchnorm=True)
        net = build_model(config, seed=0).double()
        inputs = torch.randn(64, 3, 8, 8, generator=generator, dtype=torch.float64)
        targets, loss_fn = torch.randint(0, 3, (64,), generator=generator), classification_loss
        _train(net, inputs, targets, loss_fn, steps=20)
    else:
        raise ValueError(f"unknown contract task {name!r}; choose from {FIXTURES + tuple(ZOO)}")
    net.eval()
    return GrowthCase(net, inputs, targets, loss_fn)


def _train(net, inputs, targets, loss_fn, steps: int, lr: float = 0.05) -> None:
    """Full-batch SGD in train mode, so BatchNorm statistics and weights are not at init.
    Dropout (PointNet's) draws from the global RNG, seeded here inside a fork so that a fixture
    is the same net in every process and the caller's RNG is left alone."""
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    net.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for _ in range(steps):
            optimizer.zero_grad()
            loss_fn(net(inputs), targets).mean().backward()
            optimizer.step()


def _data_statistics(net: GrowableNet, inputs: torch.Tensor) -> None:
    """BatchNorm running statistics = the data's, so eval mode is sane."""
    norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for module in norms:
        module.reset_running_stats()
        module.momentum = None
    with torch.no_grad():
        net(inputs)
    for module in norms:
        module.momentum = 0.1


# ------------------------------------------------------------------------------ helpers
def quick_grower(name: str, **overrides: Any) -> Grower:
    """The method with its quick settings (the contract does not judge estimate quality)."""
    return make_grower(name, {**get_method(name).quick_overrides, **overrides})


def supported_task(name: str, task_name: str) -> GrowthCase:
    """The task, or ``Skipped`` when it has a site kind the method does not declare."""
    task = make_task(task_name)
    missing = {site.kind for site in task.net.sites} - get_method(name).supported_kinds
    if missing:
        raise Skipped(f"{name} does not support {sorted(missing)}")
    return task


def outputs(net: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return net(inputs)


def require(condition: bool, rule: str, detail: str = "") -> None:
    if not condition:
        raise Violation(f"{rule}{': ' + detail if detail else ''}")


def preserving_overrides(cls: type[Grower]) -> dict[str, Any]:
    """The settings under which ``cls`` declares it keeps the function (ε = 0 and the like)."""
    return cls.zero_step_overrides if cls.preserves_function == "at_zero_step" else {}


def _global_rng() -> tuple[Any, ...]:
    """The process-wide generators a plugin must not draw from or reseed."""
    legacy = np.random.get_state()[1].copy()  # noqa: NPY002  (the global state is the point)
    return (torch.get_rng_state(), random.getstate(), legacy)


def _same_rng(before: tuple[Any, ...]) -> bool:
    now = _global_rng()
    return (
        torch.equal(now[0], before[0])
        and now[1] == before[1]
        and bool(np.array_equal(now[2], before[2]))
    )


@dataclass
class _Untouched:
    """What a growth round must leave as it found it: the mode, the global RNGs and the running
    statistics of existing units; and it must leave no gradient behind."""

    training: bool
    rng: tuple[Any, ...]
    buffers: dict[str, torch.Tensor]

    @classmethod
    def of(cls, net: GrowableNet) -> _Untouched:
        running = {k: v.clone() for k, v in net.named_buffers() if "running" in k}
        return cls(net.training, _global_rng(), running)

    def require(self, net: GrowableNet) -> None:
        mode = "train" if self.training else "eval"
        require(net.training == self.training, f"restores {mode} mode")
        require(
            _same_rng(self.rng),
            "leaves the global RNGs alone (torch, random, numpy): use ctx.generator",
        )
        stale_grads = [n for n, p in net.named_parameters() if p.grad is not None]
        require(not stale_grads, "leaves no .grad on the net's parameters", f"{stale_grads}")
        now = dict(net.named_buffers())
        for key, value in self.buffers.items():
            require(torch.equal(now[key][: len(value)], value), "keeps running statistics", key)


def _same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------ checks
def check_registration(name: str, _task: str) -> None:
    cls = get_method(name)
    require(cls.name == name, "registered under its own name", f"{cls.name!r} != {name!r}")
    require(dataclasses.is_dataclass(cls.Config), "Config is a dataclass")
    require(
        cls.preserves_function in ("exact", "at_zero_step", "no"),
        "preserves_function is 'exact', 'at_zero_step' or 'no'",
        repr(cls.preserves_function),
    )
    require(isinstance(make_grower(name), cls), "make_grower builds the class")
    try:
        make_grower(name, {"not_an_option": 1})
    except ValueError as exc:
        require("not_an_option" in str(exc), "an unknown option is named in its error", str(exc))
    else:
        raise Violation("an unknown option is refused: make_grower accepted 'not_an_option'")


def check_event(name: str, task_name: str) -> None:
    task = supported_task(name, task_name)
    net = task.net
    widths, params, flops = net.widths(), net.params(), net.flops()
    event = quick_grower(name).grow(net, task.context())
    after = net.widths()
    changed = {k: after[k] - widths.get(k, 0) for k in after if after[k] != widths.get(k, 0)}
    require(
        changed == event.units_added,
        "the event records the units added",
        f"it says {event.units_added}, the net shows {changed}",
    )
    cost = {"params": net.params() - params, "flops": net.flops() - flops}
    require(event.cost_added == cost, "the event records the exact cost", f"{event.cost_added}")
    require(event.grew or bool(event.stop_reason), "a round that does not grow says why")
    json.loads(event.to_json())
    net.train()
    task.loss_fn(net(task.inputs), task.targets).mean().backward()  # the grown net still trains


def check_budget(name: str, task_name: str) -> None:
    probe = supported_task(name, task_name)
    cheapest = min(probe.net.sites, key=lambda s: s.cost_of_units(1)["params"])
    for count in (0, 1, 3):
        task = make_task(task_name)
        budget = cheapest.cost_of_units(count)["params"]
        before = copy.deepcopy(task.net.state_dict())
        params = task.net.params()
        event = quick_grower(name).grow(task.net, task.context(remaining_budget=budget))
        spent = task.net.params() - params
        require(
            spent <= budget,
            "never spends more than the remaining budget",
            f"spent {spent} params of {budget}",
        )
        if count == 0:
            require(bool(event.stop_reason), "a zero budget stops the round with a reason")
            require(_same_state(before, task.net.state_dict()), "a zero budget changes nothing")


def check_function(name: str, task_name: str) -> None:
    cls = get_method(name)
    if cls.preserves_function == "no":
        raise Skipped(f"{name} does not claim to preserve the function")
    exact = ZOO_EXACT if task_name in ZOO else EXACT
    task = supported_task(name, task_name)
    task.net.eval()
    before = outputs(task.net, task.inputs)
    event = quick_grower(name, **preserving_overrides(cls)).grow(task.net, task.context())
    moved = float((outputs(task.net, task.inputs) - before).abs().max())
    require(
        moved <= exact,
        f"preserves the function as declared ({cls.preserves_function!r})",
        f"outputs moved by {moved:.3g}",
    )
    if task_name == "conv_bn" and event.grew:  # train mode: batch statistics left alone too
        reference = make_task(task_name)
        reference.net.train()
        task.net.train()
        batch = task.inputs[:32]
        moved = float((outputs(task.net, batch) - outputs(reference.net, batch)).abs().max())
        require(moved <= exact, "preserves the function in train mode", f"moved by {moved:.3g}")


def check_side_effects(name: str, task_name: str) -> None:
    task = supported_task(name, task_name)
    for mode in ("train", "eval"):
        task = make_task(task_name)
        net = task.net.train(mode == "train")
        untouched = _Untouched.of(net)
        old_params = [weakref.ref(p) for p in net.parameters()]
        grower = quick_grower(name)
        for seed in (1, 2):
            grower.grow(net, task.context(seed=seed))
        untouched.require(net)
        net.pop_lineage()  # the net's own record for the optimizer hand-over
        gc.collect()
        current = {id(p) for p in net.parameters()}
        stale = [ref for ref in old_params if ref() is not None and id(ref()) not in current]
        require(not stale, "keeps no replaced parameter alive", f"{len(stale)} kept")


def check_determinism(name: str, task_name: str) -> None:
    results = []
    for _ in range(2):
        task = supported_task(name, task_name)
        event = quick_grower(name).grow(task.net, task.context(seed=7))
        results.append((event.to_json(timings=False), task.net.state_dict()))
    (json_a, state_a), (json_b, state_b) = results
    require(json_a == json_b, "the same seed gives the same event")
    require(_same_state(state_a, state_b), "the same seed gives the same net")


def check_step_safety(name: str, task_name: str) -> None:
    """The method's default step (its own settings, not the quick ones) on the first half of the
    task's samples, with the next quarter as held-out samples it may tune on, does not raise the
    loss on the last quarter, which it never sees, by more than ``STEP_TOLERANCE``."""
    task = supported_task(name, task_name)
    n = len(task.inputs)
    stats, heldout = slice(0, n // 2), slice(n // 2, 3 * n // 4)
    ctx = dataclasses.replace(
        task.context(),
        inputs=task.inputs[stats],
        targets=task.targets[stats],
        heldout_inputs=task.inputs[heldout],
        heldout_targets=task.targets[heldout],
    )
    probe = dataclasses.replace(
        task.context(), inputs=task.inputs[3 * n // 4 :], targets=task.targets[3 * n // 4 :]
    )
    before = probe.loss(task.net)
    make_grower(name).grow(task.net, ctx)
    after = probe.loss(task.net)
    require(
        after <= before * (1 + STEP_TOLERANCE),
        f"a default step raises the loss on unseen samples by at most {STEP_TOLERANCE:.0%}",
        f"{before:.4g} -> {after:.4g}",
    )


def check_prediction(name: str, _task: str) -> None:
    cls = get_method(name)
    task = make_task("tanh_mlp")
    ctx = task.context()
    grower = make_grower(name, cls.small_step_overrides)  # full settings: judges the estimate
    before = ctx.loss(task.net)
    event = grower.grow(task.net, ctx)
    realised = ctx.loss(task.net) - before
    predicted = event.predicted_loss_change
    if predicted is None:
        raise Skipped(f"{name} makes no prediction")
    if predicted == 0.0:
        require(abs(realised) <= EXACT, "a predicted change of 0 is realised", f"{realised:.3g}")
        return
    ratio = realised / predicted
    require(
        abs(ratio - 1) <= cls.prediction_tolerance,
        f"the predicted loss change is realised within {cls.prediction_tolerance:g}",
        f"predicted {predicted:.4g}, realised {realised:.4g}",
    )


def check_optimizer(name: str, _task: str) -> None:
    for optimizer_name in ("sgd", "adam"):
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
        net.zero_grad(set_to_none=True)
        old = {p: {k: v.clone() for k, v in optimizer.state[p].items()} for p in net.parameters()}
        quick_grower(name).grow(net, task.context())
        lineage = dict(net.lineage)
        carry_optimizer_state(optimizer, net)
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        require(
            held == {id(p) for p in net.parameters()},
            f"the {optimizer_name} optimizer holds exactly the grown net's parameters "
            "(every replaced parameter is in net.lineage)",
        )
        for new, (parent, maps) in lineage.items():
            for key, old_value in old[parent].items():
                _check_carried(optimizer.state[new][key], old_value, parent, new, maps, key)
        optimizer.zero_grad()
        task.loss_fn(net(task.inputs), task.targets).mean().backward()
        optimizer.step()


def _check_carried(value, old_value, parent, new, maps, key: str) -> None:
    if old_value.shape != parent.shape:  # a scalar state (Adam's step)
        require(torch.equal(value, old_value), f"optimizer state {key!r} is carried over")
        return
    grids = torch.cartesian_prod(*[torch.arange(s) for s in new.shape]).reshape(-1, new.ndim)
    for index in grids:
        source = [int(index[d]) if m is None else int(m[index[d]]) for d, m in enumerate(maps)]
        expected = 0.0 if min(source) < 0 else float(old_value[tuple(source)])
        require(
            float(value[tuple(index.tolist())]) == expected,
            f"optimizer state {key!r} follows the lineage (survivors keep theirs, new entries 0)",
        )


def check_timings(name: str, _task: str) -> None:
    task = make_task("tanh_mlp")
    event = quick_grower(name).grow(task.net, task.context())
    require(all(s >= 0 for s in event.seconds.values()), "phase timings are not negative")
    require(
        sum(event.seconds.values()) <= event.wall_seconds + 1e-3,
        "phase timings fit in the wall time",
    )
    require(math.isfinite(event.wall_seconds), "the wall time is finite")


def check_zoo(name: str, model: str) -> None:
    """One model of the zoo: side effects, bookkeeping, function preservation as declared,
    determinism, a usable net afterwards, and the budget."""
    cls = get_method(name)
    overrides = preserving_overrides(cls)
    task = make_task(model)
    task.net.eval()
    before = outputs(task.net, task.inputs)
    event = grow_checked(name, task, seed=3, **overrides)
    if cls.preserves_function != "no":
        task.net.eval()
        moved = float((outputs(task.net, task.inputs) - before).abs().max())
        require(moved <= ZOO_EXACT, "preserves the function as declared", f"moved by {moved:.3g}")
    twin = make_task(model)
    twin_event = grow_checked(name, twin, seed=3, **overrides)
    require(
        event.to_json(timings=False) == twin_event.to_json(timings=False),
        "the same seed gives the same event",
    )
    require(_same_state(task.net.state_dict(), twin.net.state_dict()), "same seed, same net")
    task.net.train()
    task.loss_fn(task.net(task.inputs), task.targets).mean().backward()
    probe = make_task(model)
    budget = min(site.cost_of_units(1)["params"] for site in probe.net.sites)
    params = probe.net.params()
    quick_grower(name).grow(probe.net, probe.context(remaining_budget=budget))
    spent = probe.net.params() - params
    require(spent <= budget, "never spends more than the remaining budget", f"{spent} > {budget}")


def grow_checked(name: str, task: GrowthCase, seed: int, **overrides: Any) -> GrowthEvent:
    """One grow() from train mode with every no-side-effect and bookkeeping rule."""
    net = task.net.train()
    untouched = _Untouched.of(net)
    grower = quick_grower(name, **overrides)
    widths, params, flops = net.widths(), net.params(), net.flops()
    event = grower.grow(net, task.context(seed=seed))
    untouched.require(net)
    after = net.widths()
    added = {k: after[k] - widths[k] for k in widths if k in after and after[k] != widths[k]}
    require(event.units_added == added, "the event records the units added")
    require(
        event.layers_inserted == [k for k in after if k not in widths],
        "the event records the layers inserted",
    )
    cost = {"params": net.params() - params, "flops": net.flops() - flops}
    require(event.cost_added == cost, "the event records the exact cost")
    refused = event.extras.get("refused_sites", {})
    require(event.grew or refused == grower.refusals(task.net), "refusals are recorded")
    require(event.grew or bool(event.stop_reason), "a round that does not grow says why")
    json.loads(event.to_json())
    return event


# ------------------------------------------------------------------------------ the rules
@dataclass(frozen=True)
class Check:
    rule: str
    says: str
    run: Callable[[str, str], None]
    tasks: tuple[str, ...] = ("tanh_mlp",)


CHECKS = (
    Check("registration", "is registered with a valid Config", check_registration),
    Check("event", "records exactly what it changed", check_event, FIXTURES),
    Check("budget", "never overspends its budget", check_budget, FIXTURES),
    Check("function", "preserves the function as declared", check_function, FIXTURES),
    Check("side-effects", "leaves no gradients, RNG or mode changes", check_side_effects, FIXTURES),
    Check("determinism", "gives the same result for the same seed", check_determinism, FIXTURES),
    Check("step-safety", "does not raise the loss on unseen samples", check_step_safety, LEARNABLE),
    Check("prediction", "predicts the loss change it realises", check_prediction),
    Check("optimizer", "hands the optimizer state over", check_optimizer),
    Check("timings", "times its phases within its wall time", check_timings),
    Check("zoo", "holds on every zoo model", check_zoo, tuple(sorted(ZOO))),
)


@dataclass(frozen=True)
class Outcome:
    method: str
    rule: str
    task: str
    status: str  # "pass" | "fail" | "skip"
    detail: str = ""

    def line(self, says: str) -> str:
        text = f"{self.status.upper():4}  {self.method}  {self.rule} on {self.task}: {says}"
        return text + (f" — {self.detail}" if self.detail else "")


def run_contract(name: str, checks: tuple[Check, ...] = CHECKS) -> Iterator[tuple[Check, Outcome]]:
    """Every check of ``checks`` on ``name``, task by task, as it finishes."""
    for check in checks:
        for task in check.tasks:
            try:
                check.run(name, task)
            except Skipped as exc:
                yield check, Outcome(name, check.rule, task, "skip", str(exc))
            except Violation as exc:
                yield check, Outcome(name, check.rule, task, "fail", str(exc))
            except Exception as exc:  # a crash breaks the contract too: say where
                detail = f"raised {type(exc).__name__}: {exc}"
                yield check, Outcome(name, check.rule, task, "fail", detail)
            else:
                yield check, Outcome(name, check.rule, task, "pass")
