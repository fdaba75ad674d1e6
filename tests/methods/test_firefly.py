"""Firefly's fidelity checks, float64 on the tiny fixtures: the super-network reduces to the base
net, the score is the gate derivative of the super-network loss, surgery reproduces the
restricted super-network, the base is frozen during the search, selection and budget, the
search lowers its objective, its default length is one pass of the statistics set and its
convergence stop honours its tolerance."""

from __future__ import annotations

import itertools

import pytest
import torch

from growbench.contract import grow_checked
from growbench.methods import make_grower
from growbench.methods.base import GrowthEvent
from growbench.methods.firefly import (
    FireflyConfig,
    SuperNetwork,
    apply_selection,
    batches_per_pass,
    build_searches,
    gate_scores,
    has_converged,
    penalty,
    rank_candidates,
    restrict,
    search,
    select,
    super_loss,
)
from growbench.nn.counting import insertion_cost

from .conftest import ZOO, make_task

TASKS = ["tanh_mlp", "conv_bn"]
# with depth: zero-branch layers (tanh, silu) and identity layers (relu; a relu VGG)
DEPTH_TASKS = ["tanh_mlp", "relu_mlp", "conv_bn", "vgg"]


def prepared(task_name, steps=5, seed=0, candidates=3, depth=False, tolerance=0.0):
    task = make_task(task_name)
    config = FireflyConfig(
        candidates=candidates,
        search_steps=steps,
        search_batch=32,
        depth=depth,
        search_tolerance=tolerance,
    )
    ctx = task.context(seed=seed)
    sites = task.net.sites
    searches = build_searches(task.net, sites, config, ctx)
    run = search(task.net, searches, ctx, config)
    return task, config, ctx, searches, run


def super_outputs(net, searches, inputs):
    with torch.no_grad(), SuperNetwork(net, searches):
        return net(inputs)


@pytest.mark.parametrize("task_name", DEPTH_TASKS)
def test_super_network_with_zero_perturbations_is_the_base_net(task_name):
    task, _, _, searches, _ = prepared(task_name, steps=2, depth=True)
    assert all(s.layer is not None for s in searches.values())
    with torch.no_grad():
        for s in searches.values():
            s.split.zero_()
            s.omega.zero_()
            s.layer.perturbation.zero_()
    base = task.net(task.inputs)
    assert (super_outputs(task.net, searches, task.inputs) - base).abs().max() <= 1e-12


@pytest.mark.parametrize("task_name", DEPTH_TASKS)
def test_score_is_the_gate_derivative_of_the_super_network_loss(task_name):
    task, _, ctx, searches, _ = prepared(task_name, depth=True)
    scores = gate_scores(task.net, searches, ctx)
    generator = torch.Generator().manual_seed(7)
    h = 1e-6
    names = list(searches)[:2]
    picks = [(name, "layer") for name in names]  # every layer, and 5 random splits or units
    for _ in range(5):
        name = names[int(torch.randint(0, 2, (1,), generator=generator))]
        picks.append((name, ["split", "new"][int(torch.randint(0, 2, (1,), generator=generator))]))
    for name, kind in picks:
        s = searches[name]
        gate = {"split": s.split_gate, "new": s.new_gate, "layer": s.layer.gate}[kind]
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
        analytic = float(scores[name][kind][index])
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


def test_the_default_search_is_one_pass_of_the_statistics_set():
    """search_steps None sizes the search by the statistics set: ⌊samples / search_batch⌋
    batches (one step when the set is smaller than a batch); an explicit count is kept."""
    assert batches_per_pass(400, 32) == 12
    assert batches_per_pass(64, 128) == 1
    for task_name, samples in (("tanh_mlp", 400), ("conv_bn", 64)):
        task = make_task(task_name)
        assert len(task.inputs) == samples
        config = {"candidates": 2, "search_batch": 32}
        event = make_grower("firefly", config).grow(task.net, task.context(seed=4))
        steps = max(1, samples // 32)
        assert event.extras["search_planned_steps"] == steps
        assert len(event.extras["search_objective"]) == steps
        assert event.extras["search_stopped_early"] is False
    twin = make_task("tanh_mlp")
    event = make_grower("firefly", {**config, "search_steps": 7}).grow(twin.net, twin.context())
    assert len(event.extras["search_objective"]) == event.extras["search_planned_steps"] == 7


def test_convergence_rule_compares_the_means_of_whole_passes():
    curve = [4.0, 4.0, 3.0, 3.0, 2.9, 2.9]  # passes of 2: means 4, 3, 2.9
    assert not has_converged(curve[:2], 2, 0.1)  # one pass: nothing to compare
    assert not has_converged(curve[:3], 2, 10.0)  # not at the end of a pass
    assert not has_converged(curve[:4], 2, 0.25)  # 4 → 3: 25 % is not less than 25 %
    assert has_converged(curve[:4], 2, 0.26)
    assert not has_converged(curve, 2, 0.03)  # 3 → 2.9: 3.3 %
    assert has_converged(curve, 2, 0.034)
    assert has_converged([1.0, 1.1], 1, 1e-9)  # a pass that rose has converged
    assert not has_converged([1.0, 1.1], 1, 0.0)  # tolerance 0: never


@pytest.mark.parametrize("tolerance", [0.0, 0.02, 0.05, 10.0])
def test_the_search_stops_when_a_pass_improves_less_than_its_tolerance(tolerance):
    """The search (12 steps a pass of tanh_mlp's 400 samples) ends at the first pass whose mean
    objective is below the previous pass's by less than the tolerance times it, never earlier;
    the grow step records the tolerance, the planned steps and whether it stopped early."""
    planned = 12 * 12
    _, _, _, _, run = prepared("tanh_mlp", steps=planned, tolerance=tolerance)
    means = [sum(run.curve[i : i + 12]) / 12 for i in range(0, len(run.curve), 12)]
    gains = [(before - after) / before for before, after in itertools.pairwise(means)]
    assert len(run.curve) % 12 == 0
    if tolerance == 0.0:
        assert len(run.curve) == planned
        assert not run.stopped_early
    else:
        assert all(gain >= tolerance for gain in gains[:-1])
        assert run.stopped_early
        assert gains[-1] < tolerance
    if tolerance == 10.0:  # any pass is "converged": the stop comes at the first comparison
        assert len(run.curve) == 24
    task = make_task("tanh_mlp")
    options = {"candidates": 3, "search_batch": 32, "search_steps": planned}
    event = make_grower("firefly", {**options, "search_tolerance": tolerance}).grow(
        task.net, task.context()
    )
    assert event.extras["search_tolerance"] == tolerance
    assert event.extras["search_planned_steps"] == planned
    stopped = len(event.extras["search_objective"]) < planned
    assert event.extras["search_stopped_early"] is stopped is (tolerance > 0)


def test_a_negative_tolerance_is_refused():
    with pytest.raises(ValueError, match="search_tolerance"):
        make_grower("firefly", {"search_tolerance": -0.1})


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
        "a": {"split": torch.tensor([0.0, -1.0]), "new": torch.tensor([-1.0])},
        "b": {
            "split": torch.tensor([-1.0]),
            "new": torch.tensor([-2.0, 0.0]),
            "layer": torch.tensor([-1.0]),
        },
    }
    ranked = rank_candidates(scores, ["a", "b"])
    assert [(n, k, i) for n, k, i, _ in ranked[:5]] == [
        ("b", "new", 0),
        ("a", "split", 1),
        ("a", "new", 0),
        ("b", "split", 0),
        ("b", "layer", 0),
    ]


# ------------------------------------------------------------------------------------ depth
@pytest.mark.parametrize("task_name", DEPTH_TASKS)
@pytest.mark.parametrize("layer_first", [True, False])
def test_surgery_with_a_layer_reproduces_the_restricted_super_network(task_name, layer_first):
    """A layer at one site and splits and new units at the next (whose new units read the
    layer's output), or width at the first site and the layer after the second."""
    task, _, _, searches, _ = prepared(task_name, steps=20, depth=True)
    with torch.no_grad():  # make every searched weight matter
        for s in searches.values():
            s.omega.mul_(30)
            s.layer.perturbation.mul_(30)
    first, second = list(searches)[:2]
    layer_site, width_site = (first, second) if layer_first else (second, first)
    chosen = [
        (layer_site, "layer", 0, 0.0),
        (width_site, "split", 0, 0.0),
        (width_site, "new", 1, 0.0),
        (width_site, "new", 2, 0.0),
    ]
    restrict(searches, chosen)
    expected = super_outputs(task.net, searches, task.inputs)
    without_layer = [c for c in chosen if c[1] != "layer"]
    restrict(searches, without_layer)
    assert (super_outputs(task.net, searches, task.inputs) - expected).abs().max() > 1e-3
    restrict(searches, chosen)
    kind = searches[layer_site].layer.kind
    assert kind == ("identity" if task_name in ("relu_mlp", "vgg") else "zero-branch")
    sites_before = [site.name for site in task.net.sites]
    apply_selection(task.net, searches, chosen, GrowthEvent("firefly"))
    inserted = [site.name for site in task.net.sites if site.name not in sites_before]
    assert len(inserted) == 1
    if kind == "zero-branch":  # the old site became a residual stream
        assert layer_site not in [site.name for site in task.net.sites]
    task.net.eval()
    with torch.no_grad():
        grown = task.net(task.inputs)
    assert (grown - expected).abs().max() <= 1e-10


def _fixed_scores(searches, ranking):
    """Scores that put the (site, kind, index) of ``ranking`` first, in that order."""
    scores = {
        name: {kind: torch.zeros(len(g)) for kind, g in zip(("split", "new", "layer"), s.gates())}
        for name, s in searches.items()
    }
    for position, (name, kind, index) in enumerate(ranking):
        scores[name][kind][index] = -float(len(ranking) - position)
    return scores


def test_budget_truncation_across_splits_units_and_layers():
    """The walk keeps, in ranking order, what fits the budget with what it kept before; a site
    takes a layer or width, never both; at most ``max_layers`` layers; and the realised cost is
    exactly the priced cost."""
    task, config, ctx, searches, _ = prepared("tanh_mlp", depth=True)
    net = task.net
    layer0 = insertion_cost(net, "block0", init="zero-branch", batchnorm=False)["params"]
    unit1 = net.site("block1").cost_of_units(1)["params"]
    unit0 = net.site("block0").cost_of_units(1)["params"]
    ranking = [
        ("block0", "layer", 0),  # kept
        ("block0", "new", 0),  # skipped: block0 takes a layer
        ("block1", "split", 0),  # kept
        ("block1", "layer", 0),  # skipped: block1 took width (and max_layers is 1)
        ("block1", "split", 1),  # skipped: over the budget
    ]
    budget = layer0 + unit1 + min(unit0, unit1) // 2
    ranked = rank_candidates(_fixed_scores(searches, ranking), list(searches))
    ctx.remaining_budget = budget
    chosen = select(net, searches, ranked, n_select=10, ctx=ctx, config=config)
    assert [(n, k, i) for n, k, i, _ in chosen] == [ranking[0], ranking[2]]
    # brute force: the realised cost of what was kept is the priced cost, within the budget
    params, flops = net.params(), net.flops()
    restrict(searches, chosen)
    apply_selection(net, searches, chosen, GrowthEvent("firefly"))
    assert net.params() - params == layer0 + unit1 <= budget
    assert net.flops() > flops
    # no budget and max_layers = 2: both sites take a layer, so no width is left to take
    task, config, ctx, searches, _ = prepared("tanh_mlp", depth=True)
    ctx.remaining_budget = float("inf")
    config.max_layers = 2
    ranking = [("block1", "layer", 0), ("block0", "layer", 0), ("block1", "new", 0)]
    ranked = rank_candidates(_fixed_scores(searches, ranking), list(searches))
    chosen = select(task.net, searches, ranked, n_select=3, ctx=ctx, config=config)
    assert [(n, k) for n, k, _, _ in chosen] == [("block1", "layer"), ("block0", "layer")]
    priced = sum(
        insertion_cost(task.net, name, init="zero-branch", batchnorm=False)["params"]
        for name in ("block0", "block1")
    )
    params = task.net.params()
    apply_selection(task.net, searches, chosen, GrowthEvent("firefly"))
    assert task.net.params() - params == priced


@pytest.mark.parametrize("model", sorted(ZOO))
def test_depth_on_the_zoo_grows_a_layer_with_exact_bookkeeping(model):
    """With ``depth`` on every zoo model: every site offers a layer and it is scored; a kept
    layer is inserted with exact bookkeeping; the step is deterministic; the grown net trains."""
    task = make_task(model)
    event = grow_checked("firefly", task, seed=3, depth=True, growth_ratio=0.5)
    twin = make_task(model)
    assert event.to_json(timings=False) == grow_checked(
        "firefly", twin, seed=3, depth=True, growth_ratio=0.5
    ).to_json(timings=False)
    assert event.extras["layer_candidates"]
    assert any(f"{name}/layer" in event.scores for name in event.extras["layer_candidates"])
    kinds = [kind for picks in event.selected.values() for _, kind in picks]
    assert len(event.layers_inserted) == kinds.count("layer") <= 1
    task.net.train()
    task.loss_fn(task.net(task.inputs), task.targets).mean().backward()
