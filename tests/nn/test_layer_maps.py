"""The site algebra of ``growbench.nn.layer_maps`` against the layers themselves and autograd."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from growbench.nn.layer_maps import layer_map, norm_slope, with_ones

DTYPE = torch.float64

LAYERS = {
    "linear": lambda: nn.Linear(12, 5),
    "conv3x3": lambda: nn.Conv2d(3, 5, 3, padding=1),
    "conv-strided": lambda: nn.Conv2d(3, 5, (3, 2), stride=2, padding=(1, 0), dilation=(2, 1)),
    "pointwise": lambda: nn.Conv2d(3, 5, 1, bias=False),
}


def layer_and_input(name: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    layer = LAYERS[name]().to(DTYPE)
    shape = (4, 12) if name == "linear" else (4, 3, 9, 8)
    return layer, torch.randn(shape, dtype=DTYPE)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_patches_times_fan_in_rows_are_the_layers_output(name):
    layer, x = layer_and_input(name)
    view = layer_map(layer)
    patches = with_ones(view.patches(x), layer.bias is not None)  # N × p × positions
    rows = layer.weight.reshape(layer.weight.shape[0], -1)
    if layer.bias is not None:
        rows = torch.cat([rows, layer.bias[:, None]], dim=1)
    out = torch.einsum("qp,npl->nql", rows, patches)
    maps = view.patch_maps(x, patches)
    expected = layer(x)
    assert maps.shape[2:] == (expected.shape[2:] if view.is_conv else (1, 1))
    torch.testing.assert_close(out.reshape(expected.shape), expected)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_apply_with_the_layers_own_weight_is_the_layer(name):
    layer, x = layer_and_input(name)
    view = layer_map(layer)
    torch.testing.assert_close(view.apply(x, layer.weight, layer.bias), layer(x))
    if view.is_conv:  # a fan-out held as rows × channels × taps
        flat = layer.weight.flatten(2)
        torch.testing.assert_close(view.apply(x, flat, layer.bias), layer(x))


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_what_a_consumer_reads_times_its_kernel_is_its_output(name):
    layer, x = layer_and_input(name)
    view = layer_map(layer)
    maps = x.reshape(4, 3, 2, 2) if name == "linear" else x  # a Linear after a flatten
    reads = view.reads(maps)  # N × C × taps × positions
    assert reads.shape[2] == (12 // 3 if name == "linear" else view.kernel_taps)
    kernel = layer.weight.reshape(layer.weight.shape[0], maps.shape[1], -1)
    out = torch.einsum("nctl,qct->nql", reads, kernel)
    expected = layer(x) - (
        0 if layer.bias is None else layer.bias.reshape(1, -1, *[1] * (x.ndim - 2))
    )
    torch.testing.assert_close(out.reshape(expected.shape), expected)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_weight_gradient_is_autograds(name):
    layer, x = layer_and_input(name)
    out = layer(x)
    grad_output = torch.randn_like(out)
    (expected,) = torch.autograd.grad((out * grad_output).sum(), layer.weight)
    got = layer_map(layer).weight_gradient(x, grad_output)
    torch.testing.assert_close(got.reshape(expected.shape), expected)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_bias_gradient_is_autograds(name):
    layer, x = layer_and_input(name)
    if layer.bias is None:
        return
    out = layer(x)
    grad_output = torch.randn_like(out)
    (expected,) = torch.autograd.grad((out * grad_output).sum(), layer.bias)
    torch.testing.assert_close(layer_map(layer).bias_gradient(grad_output), expected)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_output_rows_put_channels_last(name):
    layer, x = layer_and_input(name)
    out = layer(x)
    rows = layer_map(layer).output_rows(out)
    assert rows.shape == (out.numel() // out.shape[1], out.shape[1])
    torch.testing.assert_close(rows[0], out[0].reshape(out.shape[1], -1)[:, 0])


def test_with_ones_appends_a_constant_channel_only_for_a_bias():
    t = torch.zeros(2, 3, 4)
    assert with_ones(t, bias=False) is t
    assert with_ones(t).shape == (2, 4, 4)
    assert with_ones(t)[:, 3].eq(1).all()
    assert with_ones(torch.zeros(5, 2)).tolist() == [[0.0, 0.0, 1.0]] * 5


@pytest.mark.parametrize("affine", [True, False])
def test_norm_slope_is_the_eval_batchnorms_slope(affine):
    torch.manual_seed(1)
    norm = nn.BatchNorm2d(4, affine=affine).to(DTYPE)
    norm.running_var.uniform_(0.5, 2.0)
    norm.running_mean.normal_()
    if affine:
        norm.weight.data.normal_()
    norm.eval()
    x = torch.randn(2, 4, 3, 3, dtype=DTYPE)
    z = torch.zeros_like(x)
    slope = (norm(x) - norm(z)) / x
    expected = norm_slope(norm).reshape(1, -1, 1, 1).expand_as(x)
    torch.testing.assert_close(slope, expected)


def test_other_layers_are_refused_by_name():
    with pytest.raises(TypeError, match="Conv1d"):
        layer_map(nn.Conv1d(2, 2, 1))
