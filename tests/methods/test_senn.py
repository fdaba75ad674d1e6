"""SENN's fidelity checks, float64 on the tiny fixtures: the expansion score against brute force
(its definition, the exact rise of η by the Schur complement, its gradient meaning, its scale
invariance), the proposal ascent, exact width and depth insertion (also into a net with no
hidden layer), the natural gradient against a dense solve, and the decision logic."""

from __future__ import annotations

import math

import pytest
import torch

from growbench.methods import GrowthContext, make_grower
from growbench.methods.senn import (
    SENN,
    DecisionCache,
    SENNConfig,
    candidate_features,
    choose,
    decide,
    expansion_scores,
    expansion_statistics,
    improve_proposals,
    initial_layers,
    initial_proposals,
    insert_expansion_layer,
    layer_features,
    layer_objective,
    natural_gradient,
    proposal_objective,
)
from growbench.nn import ModelConfig, build_model, collect_taps
from growbench.nn.losses import classification_loss

from .conftest import make_task

TIKHONOV = 0.1


def statistics(task, site_name="block0"):
    site = task.net.site(site_name)
    stats, loss_sqnorm = expansion_statistics(
        task.net, task.inputs, task.targets, task.loss_fn, [site], TIKHONOV
    )
    return site, stats[site_name], loss_sqnorm


def regularised_eta(h, g, g_reg_inverse):
    """tr(Mᵀ A⁺ M G_reg⁻¹) by brute force from the rows."""
    count = len(h)
    A, M = h.T @ h / count, h.T @ g / count
    return float(torch.trace(M.T @ torch.linalg.pinv(A) @ M @ g_reg_inverse))


def consumer_rows_of(net, task, site_name):
    site = net.site(site_name)
    taps, _ = collect_taps(
        net, task.inputs, task.targets, task.loss_fn, [site], want=("consumer_input", "grad_output")
    )
    return taps[site_name].consumer_input.double(), taps[site_name].grad_output.double()


def test_score_is_the_trace_formula_by_brute_force():
    """Δη′ = tr(cᵀ A_f⁺ c G_reg⁺) with c, A_f, G_reg written out from the rows, for units (one
    feature each) and layers (n features each)."""
    task = make_task("tanh_mlp")
    site, stats, _ = statistics(task)
    h, g = consumer_rows_of(task.net, task, "block0")
    generator = torch.Generator().manual_seed(0)
    alpha = initial_proposals(site, 5, generator)
    theta, shape = initial_layers(h.shape[1], 3, generator)
    for features in (
        candidate_features(site, stats.maps, alpha),
        layer_features(h, theta, shape),
    ):
        fast = expansion_scores(features, stats)
        for k in range(features.shape[1]):
            f = features[:, k, :]
            residual = g - h @ torch.linalg.pinv(h.T @ h) @ (h.T @ g)
            c = f.T @ residual / len(f)
            a_f = f.T @ f / len(f)
            brute = torch.trace(c.T @ torch.linalg.pinv(a_f) @ c @ stats.g_reg_inverse)
            assert float(fast[k]) == pytest.approx(float(brute), rel=1e-9, abs=1e-15)


def test_g_reg_is_built_from_normalised_output_gradients():
    task = make_task("tanh_mlp")
    site, stats, _ = statistics(task)
    outputs = task.net(task.inputs)
    (e,) = torch.autograd.grad(task.loss_fn(outputs, task.targets).sum(), outputs)
    normalised = e / e.norm(dim=1, keepdim=True)
    # back-propagate ê from the output to block0's consumer
    taps, _ = collect_taps(task.net, task.inputs, output_grad=normalised, sites=[site],
                           want=("grad_output",))  # fmt: skip
    hat = taps["block0"].grad_output
    G = hat.T @ hat / len(hat)
    g_reg = G + TIKHONOV * torch.trace(G) / G.shape[0] * torch.eye(G.shape[0], dtype=G.dtype)
    assert torch.allclose(torch.linalg.inv(g_reg), stats.g_reg_inverse, rtol=1e-10)


def test_score_is_a_lower_bound_of_the_exact_rise_and_tight_for_residualised_features():
    """50 random proposals on tanh_mlp: the net grown by each as a zero-fan-out unit, A and M
    retaken from its taps, η's exact rise tr(M′ᵀA′⁺M′G_reg⁻¹) − tr(MᵀA⁺MG_reg⁻¹) ≥ Δη′; and
    Δη′ of f's residual after regression on h equals that rise."""
    task = make_task("tanh_mlp")
    site, stats, _ = statistics(task)
    h, g = consumer_rows_of(task.net, task, "block0")
    base = regularised_eta(h, g, stats.g_reg_inverse)
    proposals = initial_proposals(site, 50, torch.Generator().manual_seed(1))
    features = candidate_features(site, stats.maps, proposals)
    bounds = expansion_scores(features, stats)
    for k in range(50):
        grown = make_task("tanh_mlp").net
        fan_in, bias = proposals[k, :-1][None], proposals[k, -1:]
        grown.site("block0").add_units(fan_in, torch.zeros(1, 3, dtype=torch.float64), bias)
        h_new, g_new = consumer_rows_of(grown, task, "block0")
        assert torch.allclose(g_new, g, rtol=0, atol=1e-14)  # zero fan-out: g_a unchanged
        exact = regularised_eta(h_new, g_new, stats.g_reg_inverse) - base
        assert float(bounds[k]) <= exact * (1 + 1e-10) + 1e-14
        f = features[:, k, :]
        residual = f - h @ torch.linalg.lstsq(h, f).solution
        tight = expansion_scores(residual[:, None, :], stats)
        assert float(tight[0]) == pytest.approx(exact, rel=1e-8, abs=1e-14)


def test_first_moment_of_features_and_gradient_is_the_zero_fan_out_gradient():
    """E[f g_aᵀ] is the gradient of the mean loss w.r.t. the zero fan-out of the added unit, and
    c follows from it by removing the part h explains."""
    task = make_task("tanh_mlp")
    site, stats, _ = statistics(task)
    h, g = consumer_rows_of(task.net, task, "block0")
    alpha = initial_proposals(site, 1, torch.Generator().manual_seed(2))
    f = candidate_features(site, stats.maps, alpha)[:, 0, :]
    net = task.net
    (unit,) = net.site("block0").add_units(
        alpha[:, :-1], torch.zeros(1, 3, dtype=torch.float64), alpha[0, -1:]
    )
    consumer = net.site("block0").consumer
    loss = task.loss_fn(net(task.inputs), task.targets).mean()
    (grad,) = torch.autograd.grad(loss, consumer.weight)
    moment = f.T @ g / len(f)  # 1 × q
    assert torch.allclose(grad[:, unit], moment[0], rtol=1e-12, atol=1e-16)
    c = f.T @ stats.residual / len(f)
    projected = moment - (f.T @ h / len(f)) @ torch.linalg.pinv(h.T @ h / len(h)) @ (
        h.T @ g / len(h)
    )
    assert torch.allclose(c, projected, rtol=1e-10, atol=1e-16)


@pytest.mark.parametrize("scale", [0.1, 10.0])
def test_score_is_invariant_to_the_scale_of_the_features(scale):
    task = make_task("tanh_mlp")
    site, stats, _ = statistics(task)
    generator = torch.Generator().manual_seed(3)
    features = candidate_features(site, stats.maps, initial_proposals(site, 8, generator))
    theta, shape = initial_layers(stats.inputs.shape[1], 4, generator)
    layers = layer_features(stats.inputs, theta, shape)
    for f in (features, layers):
        assert torch.allclose(
            expansion_scores(scale * f, stats), expansion_scores(f, stats), rtol=1e-12
        )


def test_ascent_never_lowers_a_score_and_its_gradient_matches_finite_differences():
    task = make_task("tanh_mlp")
    site, stats, _ = statistics(task)
    config = SENNConfig(proposal_steps=15)
    start = initial_proposals(site, 12, torch.Generator().manual_seed(4))

    def objective(a):
        return proposal_objective(site, stats, a, config.norm_penalty)

    final = improve_proposals(objective, start, config)
    assert torch.all(objective(final) >= objective(start))
    assert torch.any(objective(final) > objective(start))
    point = start[:1].clone().requires_grad_(True)
    (analytic,) = torch.autograd.grad(objective(point).sum(), point)
    step = 1e-6
    for j in range(point.shape[1]):
        bump = torch.zeros_like(start[:1])
        bump[0, j] = step
        numeric = (objective(start[:1] + bump) - objective(start[:1] - bump)) / (2 * step)
        assert float(analytic[0, j]) == pytest.approx(float(numeric), rel=1e-5, abs=1e-9)
    theta, shape = initial_layers(stats.inputs.shape[1], 6, torch.Generator().manual_seed(5))

    def layers(t):
        return layer_objective(stats, t, shape, config.norm_penalty)

    assert torch.all(layers(improve_proposals(layers, theta, config)) >= layers(theta))


@pytest.mark.parametrize("fixture", ["tanh_mlp", "conv_bn"])
def test_a_float32_ascent_finds_what_the_float64_one_finds(fixture):
    """``search_dtype = "float32"`` runs the ascent on float32 copies of the factors; scored in
    float64, its proposals improve on the start as much as the float64 ascent's (within 0.1 %
    of the rise) and none ends below its start."""
    task = make_task(fixture)
    site, stats, _ = statistics(task)
    config = SENNConfig()
    start = initial_proposals(site, 16, torch.Generator().manual_seed(4))
    low = stats.searched_in("float32")
    assert low.maps.dtype == low.residual.dtype == torch.float32
    assert stats.searched_in("float64") is stats

    def objective(factors):
        return lambda a: proposal_objective(site, factors, a, config.norm_penalty)

    exact = improve_proposals(objective(stats), start, config)
    rounded = improve_proposals(objective(low), start.float(), config).double()
    initial, reached = objective(stats)(start), objective(stats)(rounded)
    assert torch.all(reached >= initial - 1e-6 * initial.abs())
    rise, rise_f32 = objective(stats)(exact) - initial, reached - initial
    assert float(rise_f32.mean()) == pytest.approx(float(rise.mean()), rel=1e-3)


@pytest.mark.parametrize("task_name", ["tanh_mlp", "relu_mlp"])
def test_width_growth_keeps_the_function_exactly(task_name):
    task = make_task(task_name)
    net = task.net
    before = net(task.inputs).detach()
    grower = make_grower("senn", {"threshold": 1e-12, "abs_threshold": 1e-12, "max_additions": 3})
    event = grower.grow(net, task.context(seed=5))
    assert sum(event.units_added.values()) == 3
    assert (net(task.inputs) - before).abs().max() <= 1e-12
    assert len(event.extras["predicted_eta_gain"]) == 3


def test_depth_insertion_keeps_the_function_up_to_the_condition_of_b():
    task = make_task("rational_mlp")
    net = task.net
    before = net(task.inputs).detach()
    generator = torch.Generator().manual_seed(6)
    weight = torch.randn(4, 4, generator=generator, dtype=torch.float64)
    shift = torch.randn(4, generator=generator, dtype=torch.float64)
    new = insert_expansion_layer(net, "block0", weight, shift)
    condition = float(torch.linalg.cond(new.producer.weight.detach()))
    assert (net(task.inputs) - before).abs().max() <= 1e-10 * condition
    assert torch.equal(new.producer.bias.detach(), shift)
    act = new.act
    assert torch.equal(act.v, torch.zeros(4))
    assert torch.equal(act.linear, torch.ones(4))


def test_singular_layers_are_made_invertible_before_insertion():
    task = make_task("rational_mlp")
    before = task.net(task.inputs).detach()
    weight = torch.ones(4, 4, dtype=torch.float64)  # rank one
    new = insert_expansion_layer(task.net, "block0", weight, torch.zeros(4, dtype=torch.float64))
    sigma = torch.linalg.svdvals(new.producer.weight.detach())
    original_mean = float(torch.linalg.svdvals(weight).mean())
    assert float(sigma.min()) >= 1e-3 * original_mean * (1 - 1e-9)
    condition = float(sigma.max() / sigma.min())
    assert (task.net(task.inputs) - before).abs().max() <= 1e-10 * condition


def moons_like(count=200, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(count, 2, generator=generator, dtype=torch.float64)
    y = (x[:, 0] * x[:, 1] > 0).long()
    return x, y


def test_depth_grows_a_net_with_no_hidden_layer_and_keeps_its_function():
    x, y = moons_like()
    net = build_model(ModelConfig("mlp", (2,), 2, (), activation="rational"), seed=0).double()
    assert not net.sites
    before = net(x).detach()
    grower = make_grower("senn", {"depth": True, "max_additions": 1})
    ctx = GrowthContext(x, y, classification_loss, "params", 1e9, torch.Generator().manual_seed(0))
    event = grower.grow(net, ctx)
    assert event.layers_inserted == ["input+1"]
    assert [s.name for s in net.sites] == ["input+1"]
    condition = event.extras["layer_conditions"]["input+1"]
    assert (net(x) - before).abs().max() <= 1e-10 * condition
    assert event.cost_added["params"] == 2 * 2 + 2 + 3 * 2  # B, s and (v, c, l) per unit
    # the cooldown: the next checks propose no layer
    again = grower.grow(net, ctx)
    assert not again.layers_inserted
    assert all(key.startswith("unit@") for r in again.extras["rounds"] for key in r["candidates"])


def test_natural_gradient_matches_a_dense_solve_and_is_bounded_by_the_output_gradients():
    task = make_task("tanh_mlp")
    net = task.net
    inputs, targets = task.inputs[:50], task.targets[:50]
    direction, eta = natural_gradient(net, inputs, targets, task.loss_fn, iterations=200)
    params = dict(net.named_parameters())
    names = list(params)

    def flat_output(vector):
        values, offset = {}, 0
        for name in names:
            size = params[name].numel()
            values[name] = vector[offset : offset + size].reshape(params[name].shape)
            offset += size
        return torch.func.functional_call(net, values, (inputs,))

    flat = torch.cat([params[n].detach().flatten() for n in names])
    J = torch.autograd.functional.jacobian(flat_output, flat).reshape(-1, flat.numel())
    outputs = net(inputs)
    (e,) = torch.autograd.grad(task.loss_fn(outputs, targets).sum(), outputs)
    gradient = J.T @ e.flatten() / len(inputs)
    dense = torch.linalg.solve(J.T @ J / len(inputs) + 0.1 * torch.eye(flat.numel(),
                               dtype=J.dtype), gradient)  # fmt: skip
    cg = torch.cat([direction[n].flatten() for n in names])
    assert torch.allclose(cg, dense, rtol=1e-8, atol=1e-12)
    assert eta == pytest.approx(float(gradient @ dense), rel=1e-8)
    for name in ("tanh_mlp", "relu_mlp"):
        other = make_task(name)
        _, eta = natural_gradient(other.net, other.inputs, other.targets, other.loss_fn)
        _, loss_sqnorm = expansion_statistics(
            other.net, other.inputs, other.targets, other.loss_fn, [], TIKHONOV
        )
        assert 0 < eta <= loss_sqnorm


def test_decisions_two_thresholds_layer_cost_and_the_largest_score():
    config = SENNConfig(threshold=0.5, abs_threshold=0.1, layer_cost_mul=2.0)
    generator = torch.Generator().manual_seed(0)
    proposals = torch.zeros(3, 4, dtype=torch.float64)

    def unit(score, eta, sqnorm):
        scores = torch.full((3,), score, dtype=torch.float64)
        return decide("s", "unit", scores, proposals, eta, sqnorm, config, generator)

    assert unit(0.6, 1.0, 1.0).accepted  # 0.6 > 0.5 and 0.6 > 0.1
    assert not unit(0.4, 1.0, 1.0).accepted  # relative fails
    assert not unit(0.6, 1.0, 10.0).accepted  # absolute fails (0.06)
    assert unit(0.6, 1.0, 1.0).score == pytest.approx(0.6)  # Σπ·Δη′ of equal scores
    layer_scores = torch.full((3,), 0.8, dtype=torch.float64)
    layer = decide("s", "layer", layer_scores, torch.zeros(3, 2, 3), 1.0, 1.0, config, generator)
    assert layer.adjusted == pytest.approx(0.4)
    assert not layer.accepted  # 0.8 / 2 fails τ
    sized = SENNConfig(threshold=0.01, layer_cost_mul=2.0, size_costing=True)
    layer = decide("s", "layer", layer_scores, torch.zeros(3, 2, 3), 1.0, 1.0, sized, generator)
    assert layer.adjusted == pytest.approx(0.2)
    # the softmax draw favours the best proposal at low temperature
    sharp = SENNConfig(temperature=1e-3)
    picks = torch.tensor([0.0, 1.0, 0.5], dtype=torch.float64)
    drawn = decide("s", "unit", picks, torch.eye(3), 1.0, 1.0, sharp, generator)
    assert torch.equal(drawn.proposal, torch.eye(3)[1])
    # the choice: the largest accepted adjusted score that fits; none fits -> budget
    a, b, c = unit(0.6, 1.0, 1.0), unit(0.9, 1.0, 1.0), unit(0.1, 1.0, 1.0)
    a.place, b.place, c.place = "a", "b", "c"
    assert choose([a, b, c], lambda d: 1.0, 5.0) == (b, True)
    assert choose([a, b, c], lambda d: 1.0 if d is a else 9.0, 5.0) == (a, True)
    assert choose([a, b, c], lambda d: 9.0, 5.0) == (None, True)
    assert choose([c], lambda d: 1.0, 5.0) == (None, False)


def test_recursion_stops_when_nothing_passes_and_respects_the_budget():
    task = make_task("tanh_mlp")
    nothing = make_grower("senn", {"threshold": 1e9})
    event = nothing.grow(task.net, task.context())
    assert not event.grew
    assert event.stop_reason == "no proposal passed thresholds"
    assert len(event.extras["rounds"]) == 1
    budget = task.net.site("block0").cost_of_units(1)["params"] * 2 + 1
    easy = make_grower("senn", {"threshold": 1e-12, "abs_threshold": 1e-12})
    event = easy.grow(task.net, task.context(remaining_budget=budget))
    assert event.cost_added["params"] <= budget
    assert event.stop_reason == "budget exhausted"
    single = make_grower("senn", {"threshold": 1e-12, "abs_threshold": 1e-12, "recursive": False})
    assert sum(single.grow(make_task("tanh_mlp").net, task.context()).units_added.values()) == 1


def test_senn_grows_conv_sites_without_changing_the_function():
    task = make_task("conv_bn")
    before = task.net(task.inputs).detach()
    grower = make_grower(
        "senn", {"threshold": 1e-12, "abs_threshold": 1e-12, "max_additions": 2,
                 "proposals": 4, "proposal_steps": 5}
    )  # fmt: skip
    event = grower.grow(task.net, task.context())
    assert sum(event.units_added.values()) == 2
    assert (task.net(task.inputs) - before).abs().max() <= 1e-12
    assert math.isfinite(event.extras["predicted_eta_gain"][0])


@pytest.mark.parametrize(("fixture", "site_name"), [("tanh_mlp", "block0"), ("conv_bn", "block0"),
                                                   ("conv_bn", "block1")])  # fmt: skip
def test_statistics_after_an_added_unit_match_a_new_pass(fixture, site_name):
    """The recursion updates the grown site's factors with the new unit's inputs instead of a
    new pass through the net: the same h, residual, η_W and G_reg⁻¹, and the same scores of
    fresh proposals, as a pass over the grown net."""
    task = make_task(fixture)
    site, stats, _ = statistics(task, site_name)
    alpha = initial_proposals(site, 1, torch.Generator().manual_seed(3))[0]
    cache = DecisionCache()
    cache.statistics[site_name] = stats
    SENN._add_unit(site, alpha, type("Event", (), {"selected": {}})())
    cache.after_unit(task.net, site, alpha)
    updated = cache.statistics[site_name]
    _, fresh, _ = statistics(task, site_name)
    assert fresh.inputs.shape[1] > stats.inputs.shape[1]  # the consumer reads the new unit
    torch.testing.assert_close(updated.inputs, fresh.inputs, rtol=0, atol=1e-12)
    torch.testing.assert_close(updated.residual, fresh.residual, rtol=0, atol=1e-10)
    torch.testing.assert_close(updated.g_reg_inverse, fresh.g_reg_inverse, rtol=1e-12, atol=0)
    assert updated.eta == pytest.approx(fresh.eta, rel=1e-9)
    proposals = initial_proposals(site, 6, torch.Generator().manual_seed(4))
    torch.testing.assert_close(
        expansion_scores(candidate_features(site, updated.maps, proposals), updated),
        expansion_scores(candidate_features(site, fresh.maps, proposals), fresh),
        rtol=1e-9,
        atol=1e-14,
    )


@pytest.mark.parametrize("fixture", ["tanh_mlp", "conv_bn"])
def test_the_site_a_new_unit_feeds_gets_its_new_input_channel_without_a_pass(fixture):
    """A unit added at block0 is a new input channel of block1's producer: block1's maps gain
    its patches (before the bias column) and its other factors stay, as a pass over the grown
    net finds them; its decision is taken again, its statistics are not."""
    task = make_task(fixture)
    sites = task.net.sites[:2]
    stats, _ = expansion_statistics(
        task.net, task.inputs, task.targets, task.loss_fn, sites, TIKHONOV
    )
    first, second = sites
    assert second.producer is first.consumer
    alpha = initial_proposals(first, 1, torch.Generator().manual_seed(5))[0]
    cache = DecisionCache()
    cache.statistics.update(stats)
    SENN._add_unit(first, alpha, type("Event", (), {"selected": {}})())
    cache.after_unit(task.net, first, alpha)
    fresh, _ = expansion_statistics(
        task.net, task.inputs, task.targets, task.loss_fn, sites, TIKHONOV
    )
    updated = cache.statistics[second.name]
    assert updated.maps.shape[1] > stats[second.name].maps.shape[1]
    torch.testing.assert_close(updated.maps, fresh[second.name].maps, rtol=0, atol=1e-12)
    torch.testing.assert_close(updated.inputs, fresh[second.name].inputs, rtol=0, atol=1e-12)
    torch.testing.assert_close(updated.residual, fresh[second.name].residual, rtol=0, atol=1e-10)
    assert updated.eta == pytest.approx(fresh[second.name].eta, rel=1e-9)
    assert not cache.has("unit", second.name)
