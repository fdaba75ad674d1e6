"""The activation table: values, autograd slopes at 0, idempotence, positive homogeneity and
second derivatives against torch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from growbench.nn import ACTIVATIONS, Activation, activation_info
from growbench.nn.activations import LEAKY_SLOPE, RELU_SURROGATE_BETA

DTYPE = torch.float64


# --------------------------------------------------------------------------- activations
def test_zoo_relu_has_derivative_one_at_zero():
    z = torch.tensor([-1.0, 0.0, 2.0], dtype=DTYPE, requires_grad=True)
    act = Activation("relu")
    out = act(z)
    (slope,) = torch.autograd.grad(out.sum(), z)
    assert out.tolist() == [0.0, 0.0, 2.0]
    assert slope.tolist() == [0.0, 1.0, 1.0]


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


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_positive_homogeneity_is_what_the_table_says(name):
    """σ(a·z) = a·σ(z) for every a > 0 exactly when the table says so (a grid of z and a)."""
    info = activation_info(name)
    z = torch.linspace(-4, 4, 81, dtype=DTYPE)
    scales = torch.tensor([0.1, 0.5, 2.0, 7.0], dtype=DTYPE)[:, None]
    holds = torch.allclose(info.function(scales * z), scales * info.function(z), atol=1e-12)
    if info.parametric:  # the identity at first, but not once its parameters have trained
        assert holds
        assert not info.positively_homogeneous
    else:
        assert holds == info.positively_homogeneous


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_second_derivative_is_autograds_where_it_is_not_a_surrogate(name):
    """Away from 0, the table's σ'' is autograd's double derivative for a smooth activation, and
    for a surrogate it is that of the smooth stand-in the module docstring names."""
    info = activation_info(name)
    if info.second_derivative is None:
        assert info.parametric  # only the rational activation has no fixed σ''
        return
    z = torch.cat([torch.linspace(-4, -0.05, 40), torch.linspace(0.05, 4, 40)]).to(DTYPE)
    z.requires_grad_(True)
    smooth = {
        "relu": lambda x: F.softplus(x, beta=RELU_SURROGATE_BETA),
        "leaky_relu": lambda x: (
            (1 - LEAKY_SLOPE) * F.softplus(x, beta=RELU_SURROGATE_BETA) + LEAKY_SLOPE * x
        ),
    }.get(name, info.function)
    (slope,) = torch.autograd.grad(smooth(z).sum(), z, create_graph=True)
    if slope.requires_grad:
        (curvature,) = torch.autograd.grad(slope.sum(), z)
    else:  # σ' is constant (the identity)
        curvature = torch.zeros_like(z)
    expected = torch.where(z >= 0, 0.0, curvature) if name in ("elu", "selu") else curvature
    torch.testing.assert_close(info.second_derivative(z.detach()), expected.detach())
    assert info.surrogate_curvature == (name in ("relu", "leaky_relu", "elu", "selu"))


def test_only_the_identity_is_linear():
    assert [name for name, info in ACTIVATIONS.items() if info.is_linear] == ["identity"]


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
    "rational": lambda z: z,  # at its initial parameters
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
