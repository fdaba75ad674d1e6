"""collect_taps against brute force: per-sample forwards, torch.func per-sample gradients, and a
forward pass written out by hand with torch.nn.functional; on the chain nets and on the zoo's
residual and depthwise sites."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from growbench.nn import (
    GrowableNet,
    ModelConfig,
    NonFiniteStatisticsError,
    build_model,
    collect_taps,
    loss_for_task,
)
from growbench.nn.losses import classification_loss, regression_loss
from growbench.nn.taps import TAP_FIELDS

from .conftest import randomize_batchnorm

DTYPE = torch.float64
RTOL = 1e-12
ATOL = 1e-15  # for entries that are 0 up to rounding

NETS = [
    ("mlp", False, "tanh"),
    ("mlp", True, "relu"),
    ("cnn", False, "silu"),
    ("cnn", True, "relu"),
    ("flat", True, "tanh"),
]
NET_IDS = [f"{kind}{'_bn' if bn else ''}_{act}" for kind, bn, act in NETS]
ZOO = {
    "resnet18": ModelConfig("resnet18", (3, 8, 8), 3, width_multiplier=1 / 32, activation="tanh"),
    "mobilenetv1": ModelConfig(
        "mobilenetv1", (3, 32, 32), 3, width_multiplier=1 / 32, activation="tanh"
    ),
    "pointnet": ModelConfig("pointnet", (8, 3), 3, width_multiplier=1 / 32, activation="tanh"),
}


@pytest.fixture(params=NETS, ids=NET_IDS)
def net(request, make_net) -> GrowableNet:
    kind, batchnorm, activation = request.param
    return make_net(kind, batchnorm=batchnorm, activation=activation)


def zoo_net(name: str) -> GrowableNet:
    net = build_model(ZOO[name]).double()
    randomize_batchnorm(net, 3)
    return net


def close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=RTOL, atol=ATOL)


# ----------------------------------------------------------------------- brute force
def per_sample_taps(net: GrowableNet, x, y, loss_fn) -> dict[str, dict[str, torch.Tensor]]:
    """Each sample on its own, eval mode: every tapped quantity of every site and the gradients of
    that sample's loss, caught with forward hooks written here."""
    net.eval()
    rows: dict[str, dict[str, list]] = {site.name: {} for site in net.sites}
    for i in range(len(x)):
        seen: dict[tuple[str, str], torch.Tensor] = {}
        hooks = []
        for site in net.sites:

            def producer_hook(_m, args, name=site.name, seen=seen):
                seen[(name, "input")] = args[0]

            def act_hook(_m, args, out, name=site.name, seen=seen):
                seen[(name, "pre")], seen[(name, "post")] = args[0], out

            def consumer_hook(_m, args, out, name=site.name, seen=seen):
                seen[(name, "consumer_input")], seen[(name, "out")] = args[0], out

            hooks += [
                site.producer.register_forward_pre_hook(producer_hook),
                site.act.register_forward_hook(act_hook),
                site.consumer.register_forward_hook(consumer_hook),
            ]
        try:
            loss = loss_fn(net(x[i : i + 1]), y[i : i + 1]).sum()
        finally:
            for hook in hooks:
                hook.remove()
        keys = [(s.name, k) for s in net.sites for k in ("pre", "post", "consumer_input", "out")]
        grads = dict(zip(keys, torch.autograd.grad(loss, [seen[k] for k in keys]), strict=True))
        for site in net.sites:
            name = site.name
            values = {
                "input": seen[(name, "input")],
                "pre": seen[(name, "pre")],
                "post": seen[(name, "post")],
                "consumer_input": seen[(name, "consumer_input")],
                "grad_pre": grads[(name, "pre")],
                "grad_post": grads[(name, "post")],
                "grad_consumer_input": grads[(name, "consumer_input")],
                "grad_output": grads[(name, "out")],
            }
            for key, value in values.items():
                rows[name].setdefault(key, []).append(value.detach()[0])
    return {name: {k: torch.stack(v) for k, v in r.items()} for name, r in rows.items()}


def _check_against_brute_force(net: GrowableNet, x, y) -> None:
    taps, losses = collect_taps(net, x, y, classification_loss)
    expected = per_sample_taps(net, x, y, classification_loss)
    assert list(taps) == [site.name for site in net.sites]
    for name, tap in taps.items():
        for field in TAP_FIELDS:
            close(getattr(tap, field), expected[name][field])
    with torch.no_grad():
        close(losses, classification_loss(net.eval()(x), y))


def test_taps_equal_per_sample_brute_force(net, inputs_for, targets_for):
    _check_against_brute_force(net, inputs_for(net, 24), targets_for(24))


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_taps_equal_per_sample_brute_force(name, inputs_for, targets_for):
    net = zoo_net(name)
    _check_against_brute_force(net, inputs_for(net, 6), targets_for(6))


@pytest.mark.parametrize("name", sorted(ZOO))
def test_the_per_unit_path_is_what_the_consumer_reads(name, inputs_for, targets_for):
    """For residual, depthwise and global-max sites: running the site's listed per-unit path on
    its producer's output gives exactly the consumer's input, so the site description is true."""
    net = zoo_net(name)
    x, y = inputs_for(net, 4), targets_for(4)
    taps, _ = collect_taps(net, x, y, classification_loss)
    for site in net.sites:
        tap = taps[site.name]
        with torch.no_grad():
            close(site.run_between(site.producer(tap.input)), tap.consumer_input)


def test_head_gradient_is_softmax_minus_one_hot(net, inputs_for, targets_for):
    x, y = inputs_for(net, 16), targets_for(16)
    taps, _ = collect_taps(net, x, y, classification_loss)
    with torch.no_grad():
        logits = net.eval()(x)
    expected = torch.softmax(logits, dim=1) - F.one_hot(y, logits.shape[1]).to(DTYPE)
    close(taps[net.sites[-1].name].grad_output, expected)


def test_regression_gradient_is_per_sample(make_net, inputs_for):
    net = make_net("mlp", batchnorm=True)
    x = inputs_for(net, 16)
    targets = torch.randn(16, 3, generator=torch.Generator().manual_seed(3), dtype=DTYPE)
    taps, losses = collect_taps(net, x, targets, regression_loss)
    with torch.no_grad():
        outputs = net.eval()(x)
    close(taps[net.sites[-1].name].grad_output, 2 * (outputs - targets) / 3)
    close(losses, ((outputs - targets) ** 2).mean(dim=1))


def test_a_given_output_gradient_seeds_the_backward_pass(net, inputs_for, targets_for):
    """output_grad = ∂ℓ/∂y reproduces the loss's taps; a scaled seed scales every gradient."""
    x, y = inputs_for(net, 12), targets_for(12)
    from_loss, _ = collect_taps(net, x, y, classification_loss)
    with torch.no_grad():
        logits = net.eval()(x)
    seed = torch.softmax(logits, dim=1) - F.one_hot(y, logits.shape[1]).to(DTYPE)
    seeded, losses = collect_taps(net, x, output_grad=seed)
    halved, _ = collect_taps(net, x, output_grad=seed / 2)
    assert losses is None
    for name, tap in from_loss.items():
        for field in TAP_FIELDS:
            close(getattr(seeded[name], field), getattr(tap, field))
        close(2 * halved[name].grad_output, tap.grad_output)
    with pytest.raises(ValueError, match="loss_fn and targets, or an output_grad"):
        collect_taps(net, x)


def test_tap_gradients_give_torch_func_per_sample_weight_gradients(net, inputs_for, targets_for):
    """∂ℓ_ξ/∂W of every consumer, from torch.func.vmap(grad), equals g_a ⊗ h̃ from the taps, and
    ∂ℓ_ξ/∂β of every site's BatchNorm equals its summed ∂ℓ/∂z."""
    x, y = inputs_for(net, 16), targets_for(16)
    taps, _ = collect_taps(net, x, y, classification_loss)
    net.eval()
    params = {k: v.detach() for k, v in net.named_parameters()}
    buffers = {k: v.detach() for k, v in net.named_buffers()}
    names = {module: name for name, module in net.named_modules()}

    def sample_loss(p, xi, yi):
        out = functional_call(net, (p, buffers), (xi[None],))
        return classification_loss(out, yi[None]).sum()

    per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0))(params, x, y)
    for site in net.sites:
        tap, layer = taps[site.name], site.consumer
        g = tap.grad_output
        if isinstance(layer, nn.Conv2d):
            patches = F.unfold(tap.consumer_input, layer.kernel_size, padding=layer.padding)
            weight_grad = torch.einsum("bol,bpl->bop", g.flatten(2), patches)
            bias_grad = g.sum(dim=(2, 3))
        else:
            weight_grad = torch.einsum("bo,bp->bop", g, tap.consumer_input)
            bias_grad = g
        prefix = names[layer]
        close(per_sample[f"{prefix}.weight"].reshape(weight_grad.shape), weight_grad)
        if layer.bias is not None:
            close(per_sample[f"{prefix}.bias"], bias_grad)
        if site.norm is not None:
            dims = tuple(range(2, tap.grad_pre.ndim))
            beta_grad = tap.grad_pre.sum(dim=dims) if dims else tap.grad_pre
            close(per_sample[f"{names[site.norm]}.bias"], beta_grad)


def _manual_forward(net: GrowableNet, x: torch.Tensor) -> list[tuple]:
    """(producer input, z, h) of every site of a chain net, computed with explicit tensors and
    torch.nn.functional (only the module types of the path are read from the net)."""
    functions = {"relu": F.relu, "tanh": torch.tanh, "silu": F.silu}
    current = x.flatten(1) if len(net.input_shape) == 1 else x
    seen = []
    for site in net.sites:
        layer = site.producer
        weight = layer.weight.detach()
        bias = None if layer.bias is None else layer.bias.detach()
        if isinstance(layer, nn.Conv2d):
            u = F.conv2d(current, weight, bias, padding=1)
        else:
            u = current @ weight.T + (0 if bias is None else bias)
        z = u
        if site.norm is not None:
            norm = site.norm
            shape = (1, -1) + (1,) * (u.ndim - 2)
            mean, var = norm.running_mean.reshape(shape), norm.running_var.reshape(shape)
            gamma, beta = norm.weight.detach().reshape(shape), norm.bias.detach().reshape(shape)
            z = (u - mean) / torch.sqrt(var + norm.eps) * gamma + beta
        h = functions[site.activation](z)
        seen.append((current, z, h))
        current = h
        for module in site.between:
            if isinstance(module, nn.MaxPool2d):
                current = F.max_pool2d(current, 2)
            elif isinstance(module, nn.AdaptiveAvgPool2d):
                current = current.mean(dim=(2, 3), keepdim=True)
            elif isinstance(module, nn.Flatten):
                current = current.flatten(1)
    return seen


def test_taps_equal_a_hand_written_forward(net, inputs_for, targets_for):
    x, y = inputs_for(net, 16), targets_for(16)
    taps, _ = collect_taps(net, x, y, classification_loss)
    for site, (inputs, z, h) in zip(net.sites, _manual_forward(net, x)):
        tap = taps[site.name]
        close(tap.input, inputs)
        close(tap.pre, z)
        close(tap.post, h)


def test_four_batches_of_16_equal_one_batch_of_64(net, inputs_for, targets_for):
    x, y = inputs_for(net, 64), targets_for(64)
    whole, whole_losses = collect_taps(net, x, y, classification_loss)
    parts = [
        collect_taps(net, x[i : i + 16], y[i : i + 16], classification_loss)
        for i in range(0, 64, 16)
    ]
    close(torch.cat([losses for _, losses in parts]), whole_losses)
    for name, tap in whole.items():
        for field in TAP_FIELDS:
            joined = torch.cat([getattr(taps[name], field) for taps, _ in parts])
            close(joined, getattr(tap, field))


def _no_hooks(net: GrowableNet) -> bool:
    return all(
        not module._forward_hooks and not module._forward_pre_hooks for module in net.modules()
    )


@pytest.mark.parametrize("train", [True, False], ids=["from_train", "from_eval"])
def test_no_side_effects(net, inputs_for, targets_for, train):
    x, y = inputs_for(net, 16), targets_for(16)
    net.train(train)
    params = list(net.parameters())
    for param in params[::2]:  # some parameters already hold a gradient, the others none
        param.grad = torch.full_like(param, 0.25)
    buffers = {k: v.clone() for k, v in net.named_buffers()}
    collect_taps(net, x, y, classification_loss)
    for position, param in enumerate(params):
        if position % 2:
            assert param.grad is None
        else:
            assert torch.equal(param.grad, torch.full_like(param, 0.25))
    assert all(module.training == train for module in net.modules())
    assert _no_hooks(net)
    for key, value in net.named_buffers():
        assert torch.equal(value, buffers[key]), key  # eval mode: BN statistics untouched


def test_hooks_are_removed_after_an_error(net, inputs_for, targets_for):
    net.train()

    def broken_loss(outputs, targets):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        collect_taps(net, inputs_for(net, 4), targets_for(4), broken_loss)
    assert _no_hooks(net)
    assert all(module.training for module in net.modules())


def test_chosen_sites_and_fields_only(make_net, inputs_for, targets_for):
    net = make_net("cnn", batchnorm=True)
    x, y = inputs_for(net, 8), targets_for(8)
    taps, _ = collect_taps(
        net, x, y, classification_loss, sites=[1, "block0"], want=("grad_pre", "input")
    )
    assert sorted(taps) == ["block0", "block1"]
    assert taps["block0"].post is None
    assert taps["block0"].grad_output is None
    full, _ = collect_taps(net, x, y, classification_loss)
    for name, tap in taps.items():
        close(tap.grad_pre, full[name].grad_pre)
        close(tap.input, full[name].input)
    with pytest.raises(KeyError, match="nope"):
        collect_taps(net, x, y, classification_loss, sites=["nope"])
    with pytest.raises(ValueError, match="unknown fields"):
        collect_taps(net, x, y, classification_loss, want=("gradient",))
    assert _no_hooks(net)


def test_non_finite_statistics_are_one_clear_error(make_net, inputs_for, targets_for):
    net = make_net("mlp")
    x, y = inputs_for(net, 8), targets_for(8)
    x[3, 0] = float("nan")
    with pytest.raises(NonFiniteStatisticsError, match=r"not finite.*lower the learning rate"):
        collect_taps(net, x, y, classification_loss)
    assert _no_hooks(net)


def test_losses_per_task():
    gen = torch.Generator().manual_seed(4)
    outputs = torch.randn(6, 3, generator=gen, dtype=DTYPE)
    labels = torch.randint(0, 3, (6,), generator=gen)
    targets = torch.randn(6, 3, generator=gen, dtype=DTYPE)
    classification = loss_for_task("classification")(outputs, labels)
    regression = loss_for_task("regression")(outputs, targets)
    assert classification.shape == regression.shape == (6,)
    close(classification.mean(), F.cross_entropy(outputs, labels))
    close(regression.mean(), F.mse_loss(outputs, targets))
    log_p = outputs - torch.logsumexp(outputs, dim=1, keepdim=True)
    close(classification, -log_p[torch.arange(6), labels])
    with pytest.raises(ValueError, match="segmentation"):
        loss_for_task("segmentation")


def test_train_mode_taps_use_batch_statistics(make_net, inputs_for, targets_for):
    """eval_mode=False keeps BatchNorm on the batch's statistics (samples then interact)."""
    net = make_net("mlp", batchnorm=True).train()
    x, y = inputs_for(net, 16), targets_for(16)
    taps, _ = collect_taps(net, x, y, classification_loss, sites=["block0"], eval_mode=False)
    assert all(module.training for module in net.modules())
    site = net.site("block0")
    layer, norm = site.producer, site.norm
    u = x @ layer.weight.detach().T + layer.bias.detach()
    normalized = (u - u.mean(dim=0)) / torch.sqrt(u.var(dim=0, unbiased=False) + norm.eps)
    close(taps["block0"].pre, normalized * norm.weight.detach() + norm.bias.detach())
    # and the eval-mode taps of the same batch differ
    eval_taps, _ = collect_taps(net, x, y, classification_loss, sites=["block0"])
    assert (eval_taps["block0"].pre - taps["block0"].pre).abs().max() > 1e-3


def test_mixed_train_eval_modes_are_restored(make_net, inputs_for, targets_for):
    net = make_net("cnn", batchnorm=True).train()
    net.site(0).norm.eval()  # e.g. BatchNorm statistics frozen while the rest trains
    modes = {name: module.training for name, module in net.named_modules()}
    collect_taps(net, inputs_for(net, 4), targets_for(4), classification_loss)
    assert {name: module.training for name, module in net.named_modules()} == modes
