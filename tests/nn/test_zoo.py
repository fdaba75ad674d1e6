"""The model zoo (ModelConfig, build_model) and the activation table it draws from."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from growbench.nn import ACTIVATIONS, Activation, ModelConfig, activation_info, build_model

DTYPE = torch.float64


# --------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "transformer"}, r"unknown model kind 'transformer'"),
        ({"widths": ()}, r"widths must be positive"),
        ({"widths": (4, 0)}, r"widths must be positive"),
        ({"widths": (-3,)}, r"widths must be positive"),
        ({"activation": "swish"}, r"unknown activation 'swish'.*relu"),
        ({"input_shape": (3, 3, 8), "widths": (4, 4, 4)}, r"at least 4×4.*fewer widths"),
        ({"input_shape": (1, 2, 2), "widths": (2, 2, 2, 2)}, r"at least 8×8"),
        ({"input_shape": (64,)}, r"\(channels, height, width\)"),
    ],
    ids=[
        "kind",
        "no_widths",
        "zero_width",
        "negative_width",
        "activation",
        "image_too_small",
        "image_much_too_small",
        "cnn_flat_input",
    ],
)
def test_config_validation(kwargs, message):
    base = {"kind": "cnn", "input_shape": (3, 8, 8), "num_outputs": 10, "widths": (4, 8)}
    with pytest.raises(ValueError, match=message):
        ModelConfig(**{**base, **kwargs})


def test_smallest_valid_image_is_accepted():
    config = ModelConfig("cnn", (1, 4, 4), 2, (2, 2, 2))  # pools 4 → 2 → 1
    net = build_model(config)
    assert net(torch.zeros(3, 1, 4, 4)).shape == (3, 2)


def test_config_normalises_and_is_frozen():
    config = ModelConfig("mlp", [2, 3], 4, [5, 6])
    assert config.input_shape == (2, 3)
    assert config.widths == (5, 6)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.widths = (1,)
    wider = config.with_widths((7, 8))
    assert wider.widths == (7, 8)
    assert config.widths == (5, 6)
    assert dataclasses.replace(wider, widths=(5, 6)) == config


# ------------------------------------------------------------------------------ building
@pytest.mark.parametrize("batchnorm", [False, True], ids=["plain", "bn"])
def test_mlp_structure(batchnorm):
    config = ModelConfig("mlp", (2, 3), 4, (5, 6), activation="tanh", batchnorm=batchnorm)
    net = build_model(config)
    assert net.widths() == {"block0": 5, "block1": 6}
    hidden = "Linear+BN" if batchnorm else "Linear"
    assert [block.kind for block in net.blocks] == [hidden, hidden, "Linear"]
    assert [block.activation for block in net.blocks] == ["tanh", "tanh", "identity"]
    assert net.blocks[0].layer.in_features == 6
    assert net(torch.randn(7, 2, 3)).shape == (7, 4)
    if batchnorm:
        assert isinstance(net.blocks[0].norm, nn.BatchNorm1d)


@pytest.mark.parametrize("batchnorm", [False, True], ids=["plain", "bn"])
def test_cnn_structure(batchnorm):
    config = ModelConfig("cnn", (3, 8, 8), 10, (4, 5, 6), batchnorm=batchnorm)
    net = build_model(config)
    assert net.widths() == {"block0": 4, "block1": 5, "block2": 6}
    convs = [block.layer for block in net.blocks[:-1]]
    assert all(isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3) for conv in convs)
    assert all(conv.padding == (1, 1) for conv in convs)
    assert all((conv.bias is None) == batchnorm for conv in convs)
    assert all(isinstance(block.post, nn.MaxPool2d) for block in net.blocks[:2])
    assert isinstance(net.blocks[2].post[0], nn.AdaptiveAvgPool2d)
    head = net.blocks[-1].layer
    assert isinstance(head, nn.Linear)
    assert (head.in_features, head.out_features) == (6, 10)
    assert net(torch.randn(2, 3, 8, 8)).shape == (2, 10)
    sites = net.sites
    assert [site.positions for site in sites] == [9, 9, 1]


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_build_model_is_seeded_and_leaves_the_global_rng_alone(kind):
    config = ModelConfig(kind, (3, 8, 8), 10, (4, 5), batchnorm=True)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = build_model(config, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    expected_draw = torch.rand(5)

    torch.manual_seed(999)  # a different global state must not matter
    second = build_model(config, seed=7)
    other = build_model(config, seed=8)
    torch.manual_seed(123)
    build_model(config, seed=7)
    assert torch.equal(torch.rand(5), expected_draw)

    one, two, three = first.state_dict(), second.state_dict(), other.state_dict()
    assert one.keys() == two.keys() == three.keys()
    for key in one:
        assert torch.equal(one[key], two[key]), key
    weights = [key for key in one if key.endswith("layer.weight")]
    assert all(not torch.equal(one[key], three[key]) for key in weights)


# --------------------------------------------------------------------------- activations
def test_zoo_relu_has_derivative_one_at_zero():
    z = torch.tensor([-1.0, 0.0, 2.0], dtype=DTYPE, requires_grad=True)
    act = Activation("relu")
    out = act(z)
    (slope,) = torch.autograd.grad(out.sum(), z)
    assert out.tolist() == [0.0, 0.0, 2.0]
    assert slope.tolist() == [0.0, 1.0, 1.0]


def test_zoo_relu_lets_a_zero_fan_in_unit_learn():
    """A unit with zero fan-in in a built net receives a nonzero gradient."""
    net = build_model(ModelConfig("mlp", (3,), 2, (4,), activation="relu")).double()
    with torch.no_grad():
        net.blocks[0].layer.weight[0].zero_()
        net.blocks[0].layer.bias[0] = 0.0
    x = torch.randn(8, 3, dtype=DTYPE)
    loss = F.cross_entropy(net(x), torch.zeros(8, dtype=torch.long))
    loss.backward()
    assert net.blocks[0].layer.weight.grad[0].abs().sum() > 0


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_table_matches_autograd(name):
    info = activation_info(name)
    z = torch.zeros(1, dtype=DTYPE, requires_grad=True)
    value = info.function(z)
    (slope,) = torch.autograd.grad(value.sum(), z)
    assert slope.item() == pytest.approx(info.slope_at_zero, abs=1e-12)
    assert (value.item() == 0.0) == info.zero_at_zero
    grid = torch.linspace(-4, 4, 81, dtype=DTYPE)
    twice = info.function(info.function(grid))
    assert torch.allclose(twice, info.function(grid), rtol=0, atol=1e-15) == info.idempotent


REFERENCES = {
    "relu": F.relu,
    "leaky_relu": F.leaky_relu,
    "tanh": torch.tanh,
    "silu": F.silu,
    "gelu": F.gelu,
    "elu": F.elu,
    "selu": F.selu,
    "sigmoid": torch.sigmoid,
    "softplus": F.softplus,
    "identity": lambda z: z,
}


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_values_match_torch(name):
    z = torch.linspace(-30, 30, 2001, dtype=DTYPE)
    torch.testing.assert_close(
        ACTIVATIONS[name].function(z), REFERENCES[name](z), rtol=1e-14, atol=1e-15
    )


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_gradients_are_finite_away_from_zero(name):
    z = torch.tensor([-800.0, -3.0, -1e-3, 1e-3, 3.0, 800.0], dtype=DTYPE, requires_grad=True)
    (slope,) = torch.autograd.grad(ACTIVATIONS[name].function(z).sum(), z)
    assert torch.isfinite(slope).all()
    reference = z.detach().clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(REFERENCES[name](reference).sum(), reference)
    torch.testing.assert_close(slope, expected, rtol=1e-12, atol=1e-15)


def test_unknown_activation_lists_the_choices():
    with pytest.raises(ValueError, match=r"unknown activation 'mish'.*gelu.*tanh"):
        Activation("mish")
