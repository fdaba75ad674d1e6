"""Activations of the model zoo, by name.

Growth methods need to know more about an activation than torch does: whether σ(0) = 0 (units
with zero fan-in are then silent), σ'(0) as autograd sees it, and whether σ(σ(z)) = σ(z) (an
identity layer inserted after it then keeps the function). One table holds those facts.

The zoo's ReLU is ``clamp_min(0)``, whose autograd derivative at 0 is 1 (the right derivative,
as in TensorFlow and GroMo). ``torch.relu`` has derivative 0 there, which freezes every unit
whose fan-in is zero (GradMax, random-add in zero-fan-in mode).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class ActivationInfo:
    """What the growth methods need to know about one activation."""

    function: Callable[[Tensor], Tensor]
    zero_at_zero: bool  # σ(0) == 0
    slope_at_zero: float  # autograd's σ'(0)
    idempotent: bool  # σ(σ(z)) == σ(z) for all z


def _relu(z: Tensor) -> Tensor:
    return z.clamp_min(0.0)


def _identity(z: Tensor) -> Tensor:
    return z


ACTIVATIONS: dict[str, ActivationInfo] = {
    "relu": ActivationInfo(_relu, True, 1.0, True),
    "leaky_relu": ActivationInfo(F.leaky_relu, True, 1.0, False),
    "tanh": ActivationInfo(torch.tanh, True, 1.0, False),
    "silu": ActivationInfo(F.silu, True, 0.5, False),
    "gelu": ActivationInfo(F.gelu, True, 0.5, False),
    "elu": ActivationInfo(F.elu, True, 1.0, False),
    "selu": ActivationInfo(F.selu, True, 1.0507009873554805, False),
    "sigmoid": ActivationInfo(torch.sigmoid, False, 0.25, False),
    "softplus": ActivationInfo(F.softplus, False, 0.5, False),
    "identity": ActivationInfo(_identity, True, 1.0, True),
}


def activation_info(name: str) -> ActivationInfo:
    """The table entry for ``name``, or one error listing the valid names."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; choose one of {', '.join(sorted(ACTIVATIONS))}"
        ) from None


class Activation(nn.Module):
    """An activation module that remembers its name (methods look up its properties)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self._function = activation_info(name).function

    def forward(self, z: Tensor) -> Tensor:
        return self._function(z)

    def extra_repr(self) -> str:
        return self.name
