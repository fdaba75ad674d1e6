"""The plugin contract (``growbench.contract``) for every registered method, on the shared tiny
fixtures and on every model of the zoo: the checks ``growbench check`` runs, one pytest case per
(rule, method, task). Methods are discovered through the registry, never listed by hand, so a new
plugin is checked the moment it is registered.
"""

from __future__ import annotations

import copy

import pytest
import torch

from growbench import contract
from growbench.methods import Grower, available_methods, get_method
from growbench.methods import registry as method_registry

from .conftest import make_task

METHODS = sorted(available_methods())
CASES = [
    pytest.param(check, name, task, id=f"{check.rule}-{name}-{task}")
    for check in contract.CHECKS
    for name in METHODS
    for task in check.tasks
]


def test_methods_are_discovered():
    assert {"none", "static", "random-split", "random-add"} <= set(METHODS)


@pytest.mark.parametrize(("check", "name", "task"), CASES)
def test_contract(check: contract.Check, name: str, task: str):
    try:
        check.run(name, task)
    except contract.Skipped as exc:
        pytest.skip(str(exc))


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


BUILTINS = sorted(method_registry.METHODS.builtins)


@pytest.mark.parametrize("name", BUILTINS)
@pytest.mark.parametrize("model", ["vgg", "mobilenetv1", "resnet18"])
def test_no_builtin_method_refuses_a_site_of_the_papers_nets(name, model):
    """The papers' own experiments: every seed method and baseline grows every site."""
    assert contract.quick_grower(name).refusals(make_task(model).net) == {}


@pytest.mark.parametrize("name", BUILTINS)
def test_every_builtin_on_a_rational_net(name):
    """SENN's rational activation (per-unit parameters): the splitting methods, which need σ'',
    refuse its sites with a reason; every other method grows as it declares."""
    cls = get_method(name)
    task = make_task("rational_mlp")
    task.net.eval()
    before = contract.outputs(task.net, task.inputs)
    event = contract.quick_grower(name, **contract.preserving_overrides(cls)).grow(
        task.net, task.context()
    )
    if name in ("s2d", "signed-s2d", "fast-s2d"):
        assert all("per-unit parameters" in r for r in event.extras["refused_sites"].values())
        assert not event.grew
    else:
        assert "refused_sites" not in event.extras
        assert event.grew or name in ("none", "static")
    if cls.preserves_function != "no":
        assert (contract.outputs(task.net, task.inputs) - before).abs().max() <= 1e-12
