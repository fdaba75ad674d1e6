"""The splitting machinery of the S2D family (docs/methods/s2d.md).

Every check compares ``growbench.methods._splitting`` with a computation built here from the
definitions, never from the module itself:

* the Hessian route: S_j is the Hessian at θ_j of Φ(θ) = E[ĝ_j · σ̃(b_j(θᵀx̃ − μ_j) + β_j)], with
  our own forward of that one unit (``F.linear`` / ``F.conv2d`` on the site's input) and
  ``torch.autograd.functional.hessian``;
* the dummy-variable route of the official code: add σ''(z_j)·(b_j x̃)ᵀ V_j (b_j x̃) with a zero
  leaf V_j to every unit's output, then ∂L/∂V_j = S_j (σ'' by autograd, not from the σ'' table);
* weight surgery by hand for consecutive sites.

Everything runs in float64 on the shared tiny fixtures.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from growbench.methods._splitting import (
    RELU_SURROGATE_BETA,
    PlannedSplit,
    _path_matrices,
    apply_splits,
    canonical_sign,
    closed_form,
    second_derivative,
    site_eigen,
    site_rows,
    site_taps,
    splittable_sites,
    splitting_matrices,
    splitting_products,
    unit_chunks,
)
from growbench.nn import ACTIVATIONS, GrowableNet, Site
from growbench.nn.layer_maps import norm_slope
from growbench.nn.taps import record_inputs

from .conftest import GrowthCase, make_task

# ---------------------------------------------------------------------------------- references


def smooth_activation(name: str):
    """σ̃: the true activation, or the softplus(β = 3) surrogate for ReLU (convention 5)."""
    if name == "relu":
        return lambda z: F.softplus(z, beta=RELU_SURROGATE_BETA)
    return {"tanh": torch.tanh, "silu": F.silu}[name]


def site_input(net: GrowableNet, site: Site, inputs: Tensor) -> Tensor:
    """The producer's input of ``site``, caught by a forward hook (eval mode)."""
    net.eval()
    with torch.no_grad(), record_inputs([site.producer]) as seen:
        net(inputs)
    return seen[site.producer]


def suffix(net: GrowableNet, site: Site, inputs: Tensor, h: Tensor) -> Tensor:
    """The net's output when the site's activation outputs ``h`` instead of what it computes."""
    handle = site.act.register_forward_hook(lambda module, args, output: h)
    try:
        return net(inputs)
    finally:
        handle.remove()


def batch_rows(net: GrowableNet, ctx, site: Site):
    """(batch size, SiteRows) per batch of the statistics set."""
    for inputs, targets in ctx.batches():
        tap = site_taps(net, ctx, [site], inputs, targets)[site.name]
        yield len(inputs), site_rows(site, tap.input, tap.pre, tap.grad_post)


def bn_affine(site: Site) -> tuple[Tensor, Tensor, Tensor]:
    """(b, μ, β) per unit of the eval-mode BatchNorm after the producer; (1, 0, 0) without."""
    n = site.width
    ones = torch.ones(n, dtype=torch.float64)
    norm = site.norm
    if norm is None:
        return ones, torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    gamma = norm.weight.detach() if norm.affine else ones
    beta = norm.bias.detach() if norm.affine else torch.zeros_like(ones)
    gain = gamma / torch.sqrt(norm.running_var + norm.eps)
    return gain, norm.running_mean.clone(), beta


def unit_raw(site: Site, x: Tensor, theta: Tensor) -> Tensor:
    """u = θᵀx̃ for one unit from its fan-in row θ (bias last): (N,) or (N, H, W)."""
    layer = site.producer
    has_bias = layer.bias is not None
    weight = theta[: theta.shape[0] - has_bias]
    bias = theta[-1:] if has_bias else None
    if isinstance(layer, torch.nn.Conv2d):
        kernel = weight.reshape(1, *layer.weight.shape[1:])
        out = F.conv2d(x, kernel, bias, layer.stride, layer.padding, layer.dilation)
        return out[:, 0]
    return F.linear(x, weight[None], bias)[:, 0]


def all_pre(site: Site, x: Tensor) -> Tensor:
    """z of every unit, built unit by unit from the fan-in rows: (N, n) or (N, n, H, W)."""
    gain, mean, beta = bn_affine(site)
    rows = site.fan_in_matrix()
    return torch.stack(
        [gain[j] * (unit_raw(site, x, rows[j]) - mean[j]) + beta[j] for j in range(site.width)],
        dim=1,
    )


def output_gradients(task: GrowthCase, site: Site, x: Tensor) -> Tensor:
    """ĝ = per-sample ∂ℓ/∂h at the site (gradient of the sum-reduced loss), detached."""
    h = site.act(all_pre(site, x)).detach().requires_grad_(True)
    losses = task.loss_fn(suffix(task.net, site, task.inputs, h), task.targets)
    (grad,) = torch.autograd.grad(losses.sum(), h)
    return grad.detach()


def hessian_matrices(task: GrowthCase, site: Site) -> Tensor:
    """S_j (n × p × p): the Hessian at θ_j of Φ(θ) = E[ĝ_j · σ̃(b_j(θᵀx̃ − μ_j) + β_j)]."""
    x = site_input(task.net, site, task.inputs)
    grads = output_gradients(task, site, x)
    gain, mean, beta = bn_affine(site)
    sigma = smooth_activation(site.activation)
    count = len(task.inputs)
    rows = site.fan_in_matrix()
    matrices = []
    for j in range(site.width):

        def phi(theta, j=j):
            z = gain[j] * (unit_raw(site, x, theta) - mean[j]) + beta[j]
            return (grads[:, j] * sigma(z)).sum() / count

        matrices.append(torch.autograd.functional.hessian(phi, rows[j].clone(), vectorize=True))
    return torch.stack(matrices)


def dummy_route_matrices(task: GrowthCase, site: Site) -> Tensor:
    """The official code's route: h_j += σ''(z_j)·(b_j x̃)ᵀ V_j (b_j x̃) with V = 0, S = ∂L/∂V."""
    net = task.net
    layer = site.producer
    x = site_input(net, site, task.inputs)
    z = all_pre(site, x).detach()
    # σ''(z) by double autograd of σ̃ (elementwise, so the gradient of a sum is the derivative)
    leaf = z.clone().requires_grad_(True)
    sigma = smooth_activation(site.activation)
    (first,) = torch.autograd.grad(sigma(leaf).sum(), leaf, create_graph=True)
    (second,) = torch.autograd.grad(first.sum(), leaf)
    gain, _, _ = bn_affine(site)
    n, p = site.width, site.fan_in_size
    dummy = torch.zeros(n, p, p, dtype=torch.float64, requires_grad=True)
    if isinstance(layer, torch.nn.Conv2d):
        patches = F.unfold(x, layer.kernel_size, layer.dilation, layer.padding, layer.stride)
        if layer.bias is not None:
            ones = patches.new_ones(patches.shape[0], 1, patches.shape[2])
            patches = torch.cat([patches, ones], dim=1)
        quad = torch.einsum("spl,jpq,sql->sjl", patches, dummy, patches).reshape(z.shape)
        quad = quad * (gain * gain)[None, :, None, None]
    else:
        xt = torch.cat([x, x.new_ones(len(x), 1)], dim=1) if layer.bias is not None else x
        quad = torch.einsum("sp,jpq,sq->sj", xt, dummy, xt) * (gain * gain)
    h = site.act(z) + second * quad
    loss = task.loss_fn(suffix(net, site, task.inputs, h), task.targets).mean()
    (grad,) = torch.autograd.grad(loss, dummy)
    return grad


def context_with_batch(task: GrowthCase, batch_size: int):
    return dataclasses.replace(task.context(), batch_size=batch_size)


# conv_bn: 64 samples in batches 24 + 24 + 16, so a per-batch (not per-sample) average would show
BATCH_SIZES = {"tanh_mlp": 128, "relu_mlp": 128, "conv_bn": 24}
TASK_NAMES = ("tanh_mlp", "relu_mlp", "conv_bn")


def spectral_norm(matrix: Tensor) -> float:
    return float(torch.linalg.matrix_norm(matrix, ord=2))


# --------------------------------------------------------------------- σ'' table (convention 5)


@pytest.mark.parametrize(
    "name", sorted(name for name, info in ACTIVATIONS.items() if not info.parametric)
)  # a parametric activation's sites are refused by the splitting methods
def test_second_derivative_matches_autograd(name):
    z = torch.linspace(-4, 4, 161, dtype=torch.float64)
    z = z[z != 0]  # kinks of relu-like and elu-like activations
    beta = RELU_SURROGATE_BETA
    if name in ("relu", "leaky_relu"):
        slope_change = 1.0 if name == "relu" else 0.99

        def reference(t):
            return slope_change * F.softplus(t, beta=beta)
    else:
        reference = ACTIVATIONS[name].function
    leaf = z.clone().requires_grad_(True)
    (first,) = torch.autograd.grad(reference(leaf).sum(), leaf, create_graph=True)
    if not first.requires_grad:  # identity: σ' is a constant
        expected = torch.zeros_like(z)
    else:
        (expected,) = torch.autograd.grad(first.sum(), leaf)
    torch.testing.assert_close(second_derivative(name, z), expected, rtol=1e-10, atol=1e-14)


def test_second_derivative_rejects_unknown_activation():
    with pytest.raises(ValueError, match="unknown activation 'mish'; choose one of"):
        second_derivative("mish", torch.zeros(3))
    with pytest.raises(ValueError, match="no second derivative known for activation 'rational'"):
        second_derivative("rational", torch.zeros(3))


def test_splittable_sites_are_all_hidden_sites_of_the_fixtures():
    for name in TASK_NAMES:
        net = make_task(name).net
        assert [s.name for s in splittable_sites(net.sites)] == [s.name for s in net.sites]
        assert all(site.consumer is not net.sites[-1].consumer for site in net.sites[:-1])


# ------------------------------------------------------------------------- S_j brute force


@pytest.mark.parametrize("name", TASK_NAMES)
def test_splitting_matrices_equal_hessian_and_dummy_variable_route(name):
    task = make_task(name)
    ctx = context_with_batch(task, BATCH_SIZES[name])
    assert len(list(ctx.batches())) > 1
    if name == "conv_bn":  # conv+BN+SiLU → conv+BN+SiLU, and conv+BN+SiLU → GAP → linear
        last = task.net.sites[-1]
        assert isinstance(last.producer, torch.nn.Conv2d)
        assert isinstance(last.consumer, torch.nn.Linear)
        assert any(isinstance(m, torch.nn.AdaptiveAvgPool2d) for m in last.between)
    for site in splittable_sites(task.net.sites):
        n, p = site.width, site.fan_in_size
        computed = splitting_matrices(task.net, ctx, site, range(n))
        assert computed.dtype == torch.float64
        assert computed.shape == (n, p, p)
        hessian = hessian_matrices(task, site)
        dummy = dummy_route_matrices(task, site)
        # not trivially zero, and indefinite somewhere (otherwise the test could not fail)
        assert float(hessian.abs().max()) > 1e-4
        torch.testing.assert_close(computed, hessian, rtol=1e-6, atol=1e-12)
        scale = float(dummy.abs().max())
        torch.testing.assert_close(dummy, hessian, rtol=1e-10, atol=1e-13 * scale)
        torch.testing.assert_close(computed, dummy, rtol=1e-10, atol=1e-13 * scale)
        # a subset of units gives the same matrices
        part = splitting_matrices(task.net, ctx, site, range(1, n, 2))
        torch.testing.assert_close(part, computed[1::2], rtol=1e-12, atol=1e-15 * scale)


def test_brute_force_references_are_sensitive():
    """The references separate S from near misses: a wrong gain or a missing sample weight."""
    task = make_task("conv_bn")
    site = task.net.sites[1]
    hessian = hessian_matrices(task, site)
    computed = splitting_matrices(task.net, task.context(), site, range(site.width))
    gain, _, _ = bn_affine(site)
    assert not torch.allclose(computed / (gain * gain)[:, None, None], hessian, rtol=1e-3)
    uneven = context_with_batch(task, 24)
    torch.testing.assert_close(
        splitting_matrices(task.net, uneven, site, range(site.width)),
        hessian,
        rtol=1e-6,
        atol=1e-12,
    )


@pytest.mark.parametrize("name", TASK_NAMES)
def test_splitting_products_equal_explicit_matrix_products(name):
    task = make_task(name)
    generator = torch.Generator().manual_seed(7)
    for site in splittable_sites(task.net.sites):
        n, p = site.width, site.fan_in_size
        directions = torch.randn(n, p, generator=generator, dtype=torch.float64)
        # one batch: S_B v = S v
        whole = context_with_batch(task, len(task.inputs))
        matrices = splitting_matrices(task.net, whole, site, range(n))
        expected = torch.einsum("jpq,jq->jp", matrices, directions)
        ((size, rows),) = list(batch_rows(task.net, whole, site))
        product = splitting_products(rows, directions, size)
        assert product.dtype == torch.float64
        torch.testing.assert_close(product, expected, rtol=1e-10, atol=1e-14)
        # several unequal batches, each weighted by its size: Σ |B| S_B v / N = S v
        ctx = context_with_batch(task, BATCH_SIZES[name] if name == "conv_bn" else 96)
        total = torch.zeros(n, p, dtype=torch.float64)
        sizes = []
        for size, rows in batch_rows(task.net, ctx, site):
            total += splitting_products(rows, directions, size) * size
            sizes.append(size)
        assert len(set(sizes)) > 1
        torch.testing.assert_close(total / len(task.inputs), expected, rtol=1e-10, atol=1e-14)


# ------------------------------------------------------------------------------ eigenpairs


def canonical(vector: Tensor) -> bool:
    index = int(vector.abs().argmax())  # first index on ties
    return bool(vector[index] > 0)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_site_eigen_gives_exact_canonical_extreme_eigenpairs(name):
    task = make_task(name)
    ctx = task.context()
    for site in splittable_sites(task.net.sites):
        n = site.width
        matrices = splitting_matrices(task.net, ctx, site, range(n))
        eigen, _ = site_eigen(task.net, ctx, site, 2**20)
        for j in range(n):
            matrix = matrices[j]
            norm = spectral_norm(matrix)
            values = torch.linalg.eigvalsh(matrix)
            pairs = [
                (eigen.lambda_min[j], eigen.vector_min[j], values[0]),
                (eigen.lambda_max[j], eigen.vector_max[j], values[-1]),
            ]
            for value, vector, expected in pairs:
                assert value.dtype == vector.dtype == torch.float64
                residual = torch.linalg.vector_norm(matrix @ vector - value * vector)
                assert float(residual) <= 1e-10 * norm
                assert abs(float(torch.linalg.vector_norm(vector)) - 1) <= 1e-12
                assert math.isclose(float(value), float(expected), rel_tol=1e-12, abs_tol=0)
                assert canonical(vector)
            assert math.isclose(float(eigen.matrix_norm[j]), norm, rel_tol=1e-12)
        assert float(eigen.lambda_min.min()) < 0  # the fixtures have indefinite S


def test_canonical_sign_flips_on_largest_magnitude_first_on_ties():
    vectors = torch.tensor(
        [[0.1, -0.9, 0.3], [-0.5, 0.5, 0.1], [0.5, -0.5, 0.0], [0.0, 0.0, 0.0]],
        dtype=torch.float64,
    )
    expected = torch.tensor(
        [[-0.1, 0.9, -0.3], [0.5, -0.5, -0.1], [0.5, -0.5, 0.0], [0.0, 0.0, 0.0]],
        dtype=torch.float64,
    )
    assert torch.equal(canonical_sign(vectors), expected)


@pytest.mark.parametrize("name", ["tanh_mlp", "conv_bn"])
def test_chunked_site_eigen_equals_one_chunk_and_respects_the_budget(name):
    task = make_task(name)
    ctx = task.context()
    for site in splittable_sites(task.net.sites):
        n, p = site.width, site.fan_in_size
        per_unit = p * p * 8
        assert [list(r) for r in unit_chunks(site, 10**9)] == [list(range(n))]
        assert [list(r) for r in unit_chunks(site, 1)] == [[j] for j in range(n)]
        assert [list(r) for r in unit_chunks(site, 2 * per_unit + 7)] == [
            list(range(s, min(s + 2, n))) for s in range(0, n, 2)
        ]
        whole, whole_peak = site_eigen(task.net, ctx, site, 10**9)
        assert whole_peak == n * per_unit
        for budget in (1, per_unit, 2 * per_unit + 7):
            chunked, peak = site_eigen(task.net, ctx, site, budget)
            if budget >= per_unit:
                assert peak <= budget
            assert peak == per_unit * max(1, min(n, budget // per_unit))
            for field in ("lambda_min", "lambda_max", "matrix_norm"):
                torch.testing.assert_close(
                    getattr(chunked, field), getattr(whole, field), rtol=1e-12, atol=0
                )
            for field in ("vector_min", "vector_max"):
                torch.testing.assert_close(
                    getattr(chunked, field), getattr(whole, field), rtol=0, atol=1e-10
                )


# ---------------------------------------------------------------------- consecutive sites


def random_unit(generator: torch.Generator, size: int) -> Tensor:
    vector = torch.randn(size, generator=generator, dtype=torch.float64)
    return vector / torch.linalg.vector_norm(vector)


def transformed_direction(
    vector: Tensor, width: int, has_bias: bool, split_inputs: list[int], factor: float = 0.5
) -> Tensor:
    """v of a unit at site l+1 (whose input has ``width`` channels) after its inputs
    ``split_inputs`` (units of site l) were split in two with halved fan-out: their entries
    halved, and halved copies appended in split order, before the bias entry."""
    weights = vector[: vector.shape[0] - has_bias].reshape(width, -1).clone()
    weights[split_inputs] *= factor
    flat = torch.cat([weights, weights[split_inputs]]).reshape(-1)
    return torch.cat([flat, vector[-1:]]) if has_bias else flat


@pytest.mark.parametrize("name", ["tanh_mlp", "conv_bn"])
def test_consecutive_sites_in_one_event_equal_the_code_rule_by_hand(name):
    task = make_task(name)
    net_a, net_b, net_c = task.net, copy.deepcopy(task.net), copy.deepcopy(task.net)
    generator = torch.Generator().manual_seed(3)
    epsilon = 0.1
    lower, upper = net_a.sites[0], net_a.sites[1]
    assert upper.producer is lower.consumer
    width, has_bias = lower.width, upper.producer.bias is not None
    lower_units, upper_units = [2, 0], [1, 2]
    lower_v = {j: random_unit(generator, lower.fan_in_size) for j in lower_units}
    upper_v = {j: random_unit(generator, upper.fan_in_size) for j in upper_units}
    half = torch.tensor([0.5, 0.5], dtype=torch.float64)
    plans = [
        PlannedSplit(
            lower.name, j, torch.stack([epsilon * lower_v[j], -epsilon * lower_v[j]]), half, "split"
        )
        for j in lower_units
    ] + [
        PlannedSplit(
            upper.name, j, torch.stack([epsilon * upper_v[j], -epsilon * upper_v[j]]), half, "split"
        )
        for j in upper_units
    ]
    selected = apply_splits(net_a, plans)
    assert selected == {
        lower.name: [[2, "split"], [0, "split"]],
        upper.name: [[1, "split"], [2, "split"]],
    }

    # by hand, input side first: split l, then l+1 with the transformed directions
    hand_lower, hand_upper = net_b.sites[0], net_b.sites[1]
    hand_lower.split(
        lower_units,
        torch.stack(
            [torch.stack([epsilon * lower_v[j], -epsilon * lower_v[j]]) for j in lower_units]
        ),
        half.repeat(len(lower_units), 1),
    )
    moved = {
        j: transformed_direction(upper_v[j], width, has_bias, lower_units) for j in upper_units
    }
    assert moved[1].shape[0] == net_b.sites[1].fan_in_size
    hand_upper.split(
        upper_units,
        torch.stack([torch.stack([epsilon * moved[j], -epsilon * moved[j]]) for j in upper_units]),
        half.repeat(len(upper_units), 1),
    )
    state_a, state_b = net_a.state_dict(), net_b.state_dict()
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert state_a[key].shape == state_b[key].shape, key
        torch.testing.assert_close(state_a[key], state_b[key], rtol=0, atol=1e-14, msg=key)
    # the untransformed direction gives a different net: the comparison can fail
    net_c.sites[0].split(
        lower_units,
        torch.stack(
            [torch.stack([epsilon * lower_v[j], -epsilon * lower_v[j]]) for j in lower_units]
        ),
        half.repeat(len(lower_units), 1),
    )
    naive = {
        j: transformed_direction(upper_v[j], width, has_bias, lower_units, factor=1.0)
        for j in upper_units
    }
    net_c.sites[1].split(
        upper_units,
        torch.stack([torch.stack([epsilon * naive[j], -epsilon * naive[j]]) for j in upper_units]),
        half.repeat(len(upper_units), 1),
    )
    upper_weight = net_c.sites[1].producer.weight
    assert not torch.allclose(upper_weight, net_a.sites[1].producer.weight, atol=1e-6)


def test_apply_splits_groups_offspring_counts_per_site():
    """Units with three offspring and units with two at the same site, in one call."""
    task = make_task("tanh_mlp")
    net = task.net
    site = net.sites[0]
    before = site.fan_in_matrix().clone()
    p = site.fan_in_size
    generator = torch.Generator().manual_seed(5)
    d3 = torch.randn(3, p, generator=generator, dtype=torch.float64)
    d2 = torch.randn(2, p, generator=generator, dtype=torch.float64)
    w3 = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    w2 = torch.tensor([0.5, 0.5], dtype=torch.float64)
    selected = apply_splits(
        net, [PlannedSplit(site.name, 1, d3, w3, "a"), PlannedSplit(site.name, 3, d2, w2, "b")]
    )
    assert selected == {site.name: [[1, "a"], [3, "b"]]}
    rows = net.sites[0].fan_in_matrix()
    assert rows.shape == (4 + 2 + 1, p)
    torch.testing.assert_close(rows[1], before[1] + d3[0], rtol=0, atol=1e-15)
    torch.testing.assert_close(rows[3], before[3] + d2[0], rtol=0, atol=1e-15)
    # m = 2 group first (sorted offspring counts), then m = 3
    torch.testing.assert_close(rows[4], before[3] + d2[1], rtol=0, atol=1e-15)
    torch.testing.assert_close(rows[5:], before[1] + d3[1:], rtol=0, atol=1e-15)


# ----------------------------------------------- the whole per-unit path (MobileNet, ResNet)


def path_hessians(task: GrowthCase, site: Site, units: range) -> Tensor:
    """S_j as the Hessian at θ_j of Φ(θ) = E[ĝ · path(producer with row j = θ)(x)], ĝ the
    gradient at the consumer's input (caught here with a hook, held fixed), for every module
    of the path as the net runs it (so a second activation's curvature is in)."""
    net = task.net.eval()
    x = site_input(net, site, task.inputs)
    with torch.no_grad(), record_inputs([site.consumer]) as seen:
        net(task.inputs)
    reads = seen[site.consumer].detach().requires_grad_(True)
    handle = site.consumer.register_forward_pre_hook(lambda module, args: (reads,))
    try:
        losses = task.loss_fn(net(task.inputs), task.targets)
    finally:
        handle.remove()
    (path_grad,) = torch.autograd.grad(losses.sum(), reads)
    count = len(task.inputs)
    return row_hessians(site, x, units, lambda u: (site.run_between(u) * path_grad).sum() / count)


def row_hessians(site: Site, x: Tensor, units: range, objective) -> Tensor:
    """For each unit j of ``units``, the Hessian at θ_j of ``objective(U)``, U the producer's
    output on its input ``x`` with fan-in row j (bias last) replaced by θ."""
    rows = site.fan_in_matrix()
    layer = site.producer
    has_bias = layer.bias is not None
    matrices = []
    for j in units:

        def phi(theta, j=j):
            weights = torch.cat([rows[:j], theta[None], rows[j + 1 :]])
            kernel = weights[:, : weights.shape[1] - has_bias].reshape(layer.weight.shape)
            bias = weights[:, -1] if has_bias else None
            if isinstance(layer, torch.nn.Conv2d):
                u = F.conv2d(x, kernel, bias, layer.stride, layer.padding, layer.dilation)
            else:
                u = F.linear(x, kernel, bias)
            return objective(u)

        matrices.append(torch.autograd.functional.hessian(phi, rows[j].clone(), vectorize=True))
    return torch.stack(matrices)


@pytest.mark.parametrize(
    ("task_name", "site_name"),
    [("mobilenetv1:tanh", "stem"), ("mobilenetv1:tanh", "pw1"), ("mobilenetv1:silu", "pw2"),
     ("resnet18:tanh", "layer2.0"), ("resnet18:silu", "layer1.1"), ("vgg:tanh", "conv8")],
)  # fmt: skip
def test_zoo_splitting_matrices_equal_the_hessian_of_the_whole_path(task_name, site_name):
    task = make_task(task_name)
    site = task.net.site(site_name)
    assert closed_form(site) == (not site_name.startswith(("stem", "pw")))
    units = range(min(3, site.width))
    computed = splitting_matrices(task.net, task.context(), site, units)
    hessian = path_hessians(task, site, units)
    assert float(hessian.abs().max()) > 1e-8
    scale = float(hessian.abs().max())
    torch.testing.assert_close(computed, hessian, rtol=1e-6, atol=1e-9 * scale)


@pytest.mark.parametrize(
    ("task_name", "site_name"),
    [("tanh_mlp", "block0"), ("relu_mlp", "block1"), ("conv_bn", "block0"),
     ("conv_bn", "block1"), ("resnet18", "layer1.0")],
)  # fmt: skip
def test_the_path_route_equals_the_closed_form_where_both_apply(task_name, site_name):
    """Hessian-vector products through the path (ReLU given the surrogate's curvature) give the
    closed form's S_j on sites with one activation."""
    task = make_task(task_name)
    site = task.net.site(site_name)
    assert closed_form(site)
    ctx = task.context()
    inputs, targets = next(iter(ctx.batches()))
    tap = site_taps(task.net, ctx, [site], inputs, targets)  # closed-form taps only
    from growbench.nn import collect_taps

    taps, _ = collect_taps(
        task.net, inputs, targets, task.loss_fn, sites=[site], want=("input", "grad_consumer_input")
    )
    path = _path_matrices(site, taps[site.name].input, taps[site.name].grad_consumer_input,
                          range(site.width)) / len(inputs)  # fmt: skip
    rows = site_rows(site, tap[site.name].input, tap[site.name].pre, tap[site.name].grad_post)
    closed = torch.stack(
        [(rows.inputs * rows.coefficients[:, j, None]).T @ rows.inputs for j in range(site.width)]
    ) / len(inputs)
    scale = float(closed.abs().max())
    assert scale > 0
    torch.testing.assert_close(path, closed.double(), rtol=1e-9, atol=1e-12 * scale)


@pytest.mark.parametrize("site_name", ["stem", "pw1", "pw3"])
def test_second_curvature_products_equal_hessian_vector_products(site_name):
    """fast-s2d's S·v at a MobileNet site (two depthwise convs, no graph) against double
    backward through the whole path (``PathCurvature``), ReLU given the surrogate curvature."""
    from growbench.methods._splitting import PathRoute, SecondCurvature, curvature_route
    from growbench.methods.rayleigh import SiteBatch
    from growbench.nn import collect_taps

    task = make_task("mobilenetv1")
    site = task.net.site(site_name)
    second = SecondCurvature.of(site)
    assert second is not None
    taps, _ = collect_taps(task.net, task.inputs, task.targets, task.loss_fn, sites=[site])
    tap = taps[site.name]
    generator = torch.Generator().manual_seed(3)
    directions = torch.randn(site.width, site.fan_in_size, generator=generator, dtype=torch.float64)
    fast = SiteBatch.from_taps(curvature_route(site), tap).products(directions)
    graph = SiteBatch.from_taps(PathRoute(site), tap).products(directions)
    assert float(graph.abs().max()) > 0
    torch.testing.assert_close(fast, graph, rtol=1e-9, atol=1e-12 * float(graph.abs().max()))


@pytest.mark.parametrize(
    "segment",
    [
        [("bn",), ("dw", 2, None)],  # a gain before a strided conv, folded into its kernel
        [("dw", 1, None), ("bn",), ("dw", 2, 2)],  # two convs, the second non-centred
        [("dw", 2, None), ("bn",)],  # MobileNet's order
        [("bn",), ("bn",)],  # no conv: the gains stay a multiply
    ],
)
@pytest.mark.parametrize("size", [9, 10])
def test_second_curvatures_segment_and_its_adjoint_are_the_modules_linear_parts(segment, size):
    """``SecondCurvature``'s L (BatchNorm slopes folded into the first depthwise kernel) is the
    segment's modules without their biases and means, and its transposed convolutions are
    exactly L's adjoint: <L x, y> = <x, Lᵀ y>, odd and even maps, strides 1 and 2."""
    from growbench.methods._splitting import SecondCurvature
    from growbench.nn import DepthwiseConv2d

    torch.manual_seed(0)
    channels = 3
    modules = []
    for kind, *geometry in segment:
        if kind == "dw":
            stride, padding = geometry
            modules.append(DepthwiseConv2d(channels, 3, stride, padding, dtype=torch.float64))
        else:
            norm = nn.BatchNorm2d(channels, dtype=torch.float64).eval()
            norm.weight.data.uniform_(0.5, 2.0)
            norm.running_var.uniform_(0.5, 2.0)
            modules.append(norm)
    site = make_task("mobilenetv1").net.site("pw1")
    second = SecondCurvature(site, modules, site.activations[-1])
    x = torch.randn(2, channels, size, size, dtype=torch.float64)
    expected = x
    for module in modules:
        if isinstance(module, DepthwiseConv2d):
            expected = F.conv2d(expected, module.weight, None, module.stride, module.padding,
                                module.dilation, channels)  # fmt: skip
        else:
            expected = expected * norm_slope(module).reshape(1, -1, 1, 1)
    mapped, shapes = second._apply(x)
    torch.testing.assert_close(mapped, expected, rtol=1e-12, atol=1e-12)
    y = torch.randn_like(mapped)
    back = second._adjoint(y, shapes)
    assert back.shape == x.shape
    torch.testing.assert_close((mapped * y).sum(), (x * back).sum(), rtol=1e-12, atol=1e-12)
