"""Firefly's fidelity checks, float64 on the tiny fixtures: the super-network reduces to the base
net, the score is the gate derivative of the super-network loss, surgery reproduces the
restricted super-network, the base is frozen during the search, selection and budget, and the
search lowers its objective."""

from __future__ import annotations

import pytest
import torch

from growbench.methods import make_grower
from growbench.methods.base import GrowthEvent
from growbench.methods.firefly import (
    FireflyConfig,
    SuperNetwork,
    apply_selection,
    build_searches,
    gate_scores,
    penalty,
    rank_candidates,
    restrict,
    search,
    super_loss,
)

from .conftest import make_task

TASKS = ["tanh_mlp", "conv_bn"]


def prepared(task_name, steps=5, seed=0, candidates=3):
    task = make_task(task_name)
    config = FireflyConfig(candidates=candidates, search_steps=steps, search_batch=32)
    ctx = task.context(seed=seed)
    sites = task.net.sites
    searches = build_searches(task.net, sites, config, ctx)
    curve = search(task.net, searches, ctx, config)
    return task, config, ctx, searches, curve


def super_outputs(net, searches, inputs):
    with torch.no_grad(), SuperNetwork(net, searches):
        return net(inputs)


@pytest.mark.parametrize("task_name", TASKS)
def test_super_network_with_zero_perturbations_is_the_base_net(task_name):
    task, _, _, searches, _ = prepared(task_name, steps=2)
    with torch.no_grad():
        for s in searches.values():
            s.split.zero_()
            s.omega.zero_()
    base = task.net(task.inputs)
    assert (super_outputs(task.net, searches, task.inputs) - base).abs().max() <= 1e-12


@pytest.mark.parametrize("task_name", TASKS)
def test_score_is_the_gate_derivative_of_the_super_network_loss(task_name):
    task, _, ctx, searches, _ = prepared(task_name)
    scores = gate_scores(task.net, searches, ctx)
    generator = torch.Generator().manual_seed(7)
    h = 1e-6
    names = list(searches)[:2]
    for _ in range(5):
        name = names[int(torch.randint(0, 2, (1,), generator=generator))]
        s = searches[name]
        kind = ["split", "new"][int(torch.randint(0, 2, (1,), generator=generator))]
        gate = s.split_gate if kind == "split" else s.new_gate
        index = int(torch.randint(0, len(gate), (1,), generator=generator))

        def loss_at(scale, gate=gate, index=index):
            gate[index] = scale
            with torch.no_grad():
                total = sum(
                    float(super_loss(task.net, searches, x, y, task.loss_fn)) * len(x)
                    for x, y in ctx.batches()
                ) / len(ctx.inputs)
            gate[index] = 1.0
            return total

        numeric = (loss_at(1 + h) - loss_at(1 - h)) / (2 * h)
        analytic = float(scores[name][0 if kind == "split" else 1][index])
        assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-10)


@pytest.mark.parametrize("task_name", TASKS)
def test_surgery_reproduces_the_restricted_super_network(task_name):
    """Splits and new units at two consecutive sites, so cand→cand weights are written."""
    task, _, _, searches, _ = prepared(task_name, steps=20)
    with torch.no_grad():  # make every searched weight matter
        for s in searches.values():
            s.omega.mul_(30)
    first, second = list(searches)[:2]
    chosen = [
        (first, "split", 1, 0.0),
        (first, "new", 0, 0.0),
        (first, "new", 2, 0.0),
        (second, "split", 0, 0.0),
        (second, "split", 2, 0.0),
        (second, "new", 1, 0.0),
    ]
    restrict(searches, chosen)
    expected = super_outputs(task.net, searches, task.inputs)
    full = make_task(task_name).net(task.inputs)
    assert (expected - full).abs().max() > 1e-3  # the candidates do change the function
    widths = task.net.widths()
    apply_selection(task.net, searches, chosen, GrowthEvent("firefly"))
    assert task.net.widths()[first] == widths[first] + 3
    assert task.net.widths()[second] == widths[second] + 3
    task.net.eval()
    with torch.no_grad():
        grown = task.net(task.inputs)
    assert (grown - expected).abs().max() <= 1e-10


@pytest.mark.parametrize("task_name", TASKS)
def test_search_leaves_the_base_net_bitwise_unchanged_and_lowers_its_objective(task_name):
    task = make_task(task_name)
    state = {k: v.clone() for k, v in task.net.state_dict().items()}
    config = FireflyConfig(candidates=4, search_steps=60, search_batch=64)
    ctx = task.context(seed=1)
    searches = build_searches(task.net, task.net.sites, config, ctx)

    def objective():
        with torch.no_grad():
            return sum(
                float(super_loss(task.net, searches, x, y, task.loss_fn)) * len(x)
                for x, y in ctx.batches()
            ) / len(ctx.inputs) + float(penalty(searches, config))

    before = objective()
    search(task.net, searches, ctx, config)
    assert objective() < before
    after = task.net.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state)
    assert all(p.grad is None for p in task.net.parameters())


def test_selection_keeps_the_most_negative_scores_within_the_budget():
    task = make_task("tanh_mlp")
    config = {"candidates": 3, "search_steps": 5, "growth_ratio": 0.5}
    event = make_grower("firefly", config).grow(task.net, task.context(seed=2))
    n_select = int(0.5 * (4 + 3))
    kept = sum(len(v) for v in event.selected.values())
    assert kept == n_select
    assert sum(event.units_added.values()) == n_select
    pool = sorted(v for name, values in event.scores.items() for v in values)
    kept_scores = sorted(
        event.scores[site if kind == "split" else f"{site}/new"][index]
        for site, picks in event.selected.items()
        for index, kind in picks
    )
    assert kept_scores == pool[:n_select]
    # a budget of two units of block1 (the cheaper site) keeps fewer, and spends no more
    unit = min(task.net.site(n).cost_of_units(1)["params"] for n in ("block0", "block1"))
    twin = make_task("tanh_mlp")
    event = make_grower("firefly", config).grow(twin.net, twin.context(remaining_budget=2 * unit))
    assert 1 <= sum(event.units_added.values()) <= 2
    assert event.cost_added["params"] <= 2 * unit
    assert event.cost_added["params"] == twin.net.params() - make_task("tanh_mlp").net.params()


def test_ranking_ties_follow_site_order_then_kind_then_index():
    scores = {
        "a": (torch.tensor([0.0, -1.0]), torch.tensor([-1.0])),
        "b": (torch.tensor([-1.0]), torch.tensor([-2.0, 0.0])),
    }
    ranked = rank_candidates(scores, ["a", "b"])
    assert [(n, k, i) for n, k, i, _ in ranked[:4]] == [
        ("b", "new", 0),
        ("a", "split", 1),
        ("a", "new", 0),
        ("b", "split", 0),
    ]
