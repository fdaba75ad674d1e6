"""collect_taps against brute force: per-sample forwards, torch.func per-sample gradients, and a
forward pass written out by hand with torch.nn.functional."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from growbench.nn import GrowableNet, collect_taps, loss_for_task
from growbench.nn.losses import classification_loss, regression_loss

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


@pytest.fixture(params=NETS, ids=NET_IDS)
def net(request, make_net) -> GrowableNet:
    kind, batchnorm, activation = request.param
    return make_net(kind, batchnorm=batchnorm, activation=activation)


def close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=RTOL, atol=ATOL)


# ----------------------------------------------------------------------- brute force
def _catchers(seen: dict, name: str):
    """Hooks that store a block's input, and its activation's input z and output h."""

    def keep_input(_module, args):
        seen[name + ":in"] = args[0]

    def keep_pre_post(_module, args, out):
        seen[name] = (args[0], out)

    return keep_input, keep_pre_post


def per_sample_taps(net: GrowableNet, x, y, loss_fn) -> dict[str, dict[str, torch.Tensor]]:
    """Each sample on its own, eval mode: the block's input, z, h and ∂ℓ/∂z, ∂ℓ/∂h of that
    sample's loss, caught with forward hooks on the blocks and their activations."""
    net.eval()
    names = [block.name for block in net.blocks]
    rows: dict[str, dict[str, list]] = {name: {} for name in names}
    for i in range(len(x)):
        seen: dict[str, tuple] = {}
        hooks = []
        for block in net.blocks:
            keep_input, keep_pre_post = _catchers(seen, block.name)
            hooks.append(block.register_forward_pre_hook(keep_input))
            hooks.append(block.act.register_forward_hook(keep_pre_post))
        try:
            loss = loss_fn(net(x[i : i + 1]), y[i : i + 1]).sum()
        finally:
            for hook in hooks:
                hook.remove()
        wanted = [t for name in names for t in seen[name]]
        grads = torch.autograd.grad(loss, wanted)
        for position, name in enumerate(names):
            z, h = seen[name]
            values = {
                "input": seen[name + ":in"],
                "pre": z,
                "post": h,
                "grad_pre": grads[2 * position],
                "grad_post": grads[2 * position + 1],
            }
            for key, value in values.items():
                rows[name].setdefault(key, []).append(value.detach()[0])
    return {name: {k: torch.stack(v) for k, v in r.items()} for name, r in rows.items()}


def test_taps_equal_per_sample_brute_force(net, inputs_for, targets_for):
    x, y = inputs_for(net, 24), targets_for(24)
    taps, losses = collect_taps(net, x, y, classification_loss)
    expected = per_sample_taps(net, x, y, classification_loss)
    assert list(taps) == [block.name for block in net.blocks]
    for name, tap in taps.items():
        for field in ("input", "pre", "post", "grad_pre", "grad_post"):
            close(getattr(tap, field), expected[name][field])
    with torch.no_grad():
        close(losses, classification_loss(net.eval()(x), y))


def test_head_gradient_is_softmax_minus_one_hot(net, inputs_for, targets_for):
    x, y = inputs_for(net, 16), targets_for(16)
    taps, _ = collect_taps(net, x, y, classification_loss)
    head = taps[net.blocks[-1].name]
    expected = torch.softmax(head.pre, dim=1) - F.one_hot(y, head.pre.shape[1]).to(DTYPE)
    close(head.grad_pre, expected)
    close(head.grad_post, expected)  # the head's activation is the identity


def test_regression_gradient_is_per_sample(make_net, inputs_for):
    net = make_net("mlp", batchnorm=True)
    x = inputs_for(net, 16)
    targets = torch.randn(16, 3, generator=torch.Generator().manual_seed(3), dtype=DTYPE)
    taps, losses = collect_taps(net, x, targets, regression_loss)
    head = taps[net.blocks[-1].name]
    close(head.grad_pre, 2 * (head.pre - targets) / 3)
    close(losses, ((head.pre - targets) ** 2).mean(dim=1))


def _bn_scale(block, like: torch.Tensor) -> torch.Tensor:
    """b = γ / sqrt(var + eps) shaped to broadcast against ``like``; 1 without BN."""
    if block.norm is None:
        return torch.ones((), dtype=DTYPE)
    norm = block.norm
    scale = norm.weight.detach() / torch.sqrt(norm.running_var + norm.eps)
    return scale.reshape(1, -1, *[1] * (like.ndim - 2))


def test_tap_gradients_give_torch_func_per_sample_weight_gradients(net, inputs_for, targets_for):
    """∂ℓ_ξ/∂W of every layer, from torch.func.vmap(grad), equals (b ⊙ g_z) ⊗ x̃ from the taps."""
    x, y = inputs_for(net, 16), targets_for(16)
    taps, _ = collect_taps(net, x, y, classification_loss)
    net.eval()
    params = {k: v.detach() for k, v in net.named_parameters()}
    buffers = {k: v.detach() for k, v in net.named_buffers()}

    def sample_loss(p, xi, yi):
        out = functional_call(net, (p, buffers), (xi[None],))
        return classification_loss(out, yi[None]).sum()

    per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0))(params, x, y)
    for index, block in enumerate(net.blocks):
        tap = taps[block.name]
        g_u = tap.grad_pre * _bn_scale(block, tap.grad_pre)  # ∂ℓ/∂(layer output)
        layer = block.layer
        if isinstance(layer, nn.Conv2d):
            patches = F.unfold(tap.input, layer.kernel_size, padding=layer.padding)
            weight_grad = torch.einsum("bol,bpl->bop", g_u.flatten(2), patches)
            bias_grad = g_u.sum(dim=(2, 3))
        else:
            weight_grad = torch.einsum("bo,bp->bop", g_u, tap.input)
            bias_grad = g_u
        prefix = f"blocks.{index}."
        got = per_sample[prefix + "layer.weight"].reshape(weight_grad.shape)
        close(got, weight_grad)
        if layer.bias is not None:
            close(per_sample[prefix + "layer.bias"], bias_grad)
        if block.norm is not None:
            dims = tuple(range(2, tap.grad_pre.ndim))
            beta_grad = tap.grad_pre.sum(dim=dims) if dims else tap.grad_pre
            close(per_sample[prefix + "norm.bias"], beta_grad)


def _manual_forward(net: GrowableNet, x: torch.Tensor) -> list[tuple]:
    """(input, z, h) of every block, computed with explicit tensors and torch.nn.functional."""
    functions = {"relu": F.relu, "tanh": torch.tanh, "silu": F.silu, "identity": lambda t: t}
    current = x.flatten(1) if net.flatten_input else x
    seen = []
    for block in net.blocks:
        layer = block.layer
        weight = layer.weight.detach()
        bias = None if layer.bias is None else layer.bias.detach()
        if isinstance(layer, nn.Conv2d):
            u = F.conv2d(current, weight, bias, padding=1)
        else:
            u = current @ weight.T + (0 if bias is None else bias)
        z = u
        if block.norm is not None:
            norm = block.norm
            shape = (1, -1) + (1,) * (u.ndim - 2)
            mean, var = norm.running_mean.reshape(shape), norm.running_var.reshape(shape)
            gamma, beta = norm.weight.detach().reshape(shape), norm.bias.detach().reshape(shape)
            z = (u - mean) / torch.sqrt(var + norm.eps) * gamma + beta
        h = functions[block.activation](z)
        seen.append((current, z, h))
        post = block.post
        if isinstance(post, nn.MaxPool2d):
            current = F.max_pool2d(h, 2)
        elif isinstance(post, nn.Identity):
            current = h
        elif isinstance(post[0], nn.AdaptiveAvgPool2d):
            current = h.mean(dim=(2, 3))
        else:  # max-pool then flatten
            current = F.max_pool2d(h, 2).flatten(1)
    return seen


def test_taps_equal_a_hand_written_forward(net, inputs_for, targets_for):
    x, y = inputs_for(net, 16), targets_for(16)
    taps, _ = collect_taps(net, x, y, classification_loss)
    for block, (inputs, z, h) in zip(net.blocks, _manual_forward(net, x)):
        tap = taps[block.name]
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
        for field in ("input", "pre", "post", "grad_pre", "grad_post"):
            joined = torch.cat([getattr(taps[name], field) for taps, _ in parts])
            close(joined, getattr(tap, field))


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
    assert all(block.tap is None for block in net.blocks)
    for key, value in net.named_buffers():
        assert torch.equal(value, buffers[key]), key  # eval mode: BN statistics untouched


def test_taps_are_switched_off_after_an_error(net, inputs_for, targets_for):
    net.train()

    def broken_loss(outputs, targets):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        collect_taps(net, inputs_for(net, 4), targets_for(4), broken_loss)
    assert all(block.tap is None for block in net.blocks)
    assert all(module.training for module in net.modules())


def test_chosen_blocks_only(make_net, inputs_for, targets_for):
    net = make_net("cnn", batchnorm=True)
    x, y = inputs_for(net, 8), targets_for(8)
    taps, _ = collect_taps(net, x, y, classification_loss, blocks=[1, "block0"])
    assert sorted(taps) == ["block0", "block1"]
    full, _ = collect_taps(net, x, y, classification_loss)
    for name, tap in taps.items():
        close(tap.grad_pre, full[name].grad_pre)
    with pytest.raises(KeyError, match="nope"):
        collect_taps(net, x, y, classification_loss, blocks=["nope"])
    assert all(block.tap is None for block in net.blocks)


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
    taps, _ = collect_taps(net, x, y, classification_loss, blocks=["block0"], eval_mode=False)
    assert all(module.training for module in net.modules())
    layer, norm = net.blocks[0].layer, net.blocks[0].norm
    u = x @ layer.weight.detach().T + layer.bias.detach()
    normalized = (u - u.mean(dim=0)) / torch.sqrt(u.var(dim=0, unbiased=False) + norm.eps)
    close(taps["block0"].pre, normalized * norm.weight.detach() + norm.bias.detach())
    # and the eval-mode taps of the same batch differ
    eval_taps, _ = collect_taps(net, x, y, classification_loss, blocks=["block0"])
    assert (eval_taps["block0"].pre - taps["block0"].pre).abs().max() > 1e-3


def test_mixed_train_eval_modes_are_restored(make_net, inputs_for, targets_for):
    net = make_net("cnn", batchnorm=True).train()
    net.blocks[0].norm.eval()  # e.g. BatchNorm statistics frozen while the rest trains
    modes = {name: module.training for name, module in net.named_modules()}
    collect_taps(net, inputs_for(net, 4), targets_for(4), classification_loss)
    assert {name: module.training for name, module in net.named_modules()} == modes
