"""Activations of the model zoo, by name.

Growth methods need to know more about an activation than torch does: whether σ(0) = 0 (units
with zero fan-in are then silent), σ'(0) as autograd sees it, whether σ(σ(z)) = σ(z) (an
identity layer inserted after it then keeps the function), whether σ(a·z) = a·σ(z) for a > 0
(TINY's amplitude then scales a new unit's output exactly), and σ'' (the splitting methods'
curvature), or a smooth surrogate where σ'' is 0 almost everywhere with a kink at 0. One table
holds those facts, so that no method decides them by the activation's name.

The surrogate of a (leaky) rectifier is the second derivative of softplus with β =
``RELU_SURROGATE_BETA``, scaled by the jump of the slope at 0 (1 − leak); ELU and SELU have a
true σ'' for z < 0 and take 0 for z ≥ 0 (their kink at 0, where SELU's slope jumps, is ignored):
a convention of this suite where the splitting papers are silent, so their predictions on these
activations are a ranking heuristic, not an exact second-order change.

The zoo's ReLU (a threshold just below 0) and its leaky ReLU and SELU (``torch.where``) have the
right derivative at 0 under autograd (1 for ReLU), as in TensorFlow and GroMo. ``torch.relu``
and ``clamp_min(0)`` have derivative 0 there, which freezes every unit whose fan-in is zero
(GradMax, random-add in zero-fan-in mode).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

RELU_SURROGATE_BETA = 3.0  # softplus(β·z)/β stands in for a rectifier in σ''
LEAKY_SLOPE = 0.01  # the zoo's leaky ReLU, as F.leaky_relu's default
_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


@dataclass(frozen=True)
class ActivationInfo:
    """What the growth methods need to know about one activation."""

    function: Callable[[Tensor], Tensor]
    zero_at_zero: bool  # σ(0) == 0
    slope_at_zero: float  # autograd's σ'(0)
    idempotent: bool  # σ(σ(z)) == σ(z) for all z
    identity_at_init: bool = False  # the activation is the identity at its initial parameters
    # per-unit parameters (``RationalActivation``): the facts above hold for new units, which
    # start at the initial parameters, not for trained ones
    parametric: bool = False
    # σ(a·z) = a·σ(z) for every a > 0 (rectifiers and the identity)
    positively_homogeneous: bool = False
    # σ'' elementwise, or its surrogate (``surrogate_curvature``); None: not known
    second_derivative: Callable[[Tensor], Tensor] | None = None
    surrogate_curvature: bool = False  # ``second_derivative`` stands in for a σ'' that is 0 a.e.

    @property
    def is_linear(self) -> bool:
        """Whether σ is the identity for every unit: nothing to split or to gain from width."""
        return self.identity_at_init and not self.parametric


_BELOW_ZERO: dict[torch.dtype, float] = {}  # the negative number closest to 0, per dtype


def _relu(z: Tensor) -> Tensor:
    # torch.relu and clamp_min have derivative 0 at 0, which freezes zero-fan-in units.
    # threshold(z, t, 0) is z where z > t, else 0, and its gradient is 1 where z > t: with t the
    # negative number closest to 0 in z's dtype, the values are relu's (z < 0 gives +0; −0.0
    # passes as −0.0) and the derivative at 0 is 1. One kernel each way, as fast as torch.relu
    # and 3x faster than the earlier z + relu(−z) on a 64 × 64 × 32 × 32 batch here.
    below = _BELOW_ZERO.get(z.dtype)
    if below is None:
        zero = torch.zeros((), dtype=z.dtype)
        below = _BELOW_ZERO[z.dtype] = float(torch.nextafter(zero, -torch.ones_like(zero)))
    return F.threshold(z, below, 0.0)


def _leaky_relu(z: Tensor) -> Tensor:
    # Same values as F.leaky_relu, whose autograd derivative at 0 is the left one (0.01).
    return torch.where(z < 0, LEAKY_SLOPE * z, z)


def _selu(z: Tensor) -> Tensor:
    # Same values as F.selu, whose autograd derivative at 0 is the left one (scale·alpha).
    return _SELU_SCALE * torch.where(z < 0, _SELU_ALPHA * torch.expm1(z.clamp_max(0.0)), z)


def _identity(z: Tensor) -> Tensor:
    return z


# ------------------------------------------------------------ second derivatives (σ'')


def _rectifier_surrogate(slope_change: float) -> Callable[[Tensor], Tensor]:
    def curvature(z: Tensor) -> Tensor:
        s = torch.sigmoid(RELU_SURROGATE_BETA * z)
        return slope_change * RELU_SURROGATE_BETA * s * (1 - s)

    return curvature


def _tanh_curvature(z: Tensor) -> Tensor:
    t = torch.tanh(z)
    return -2 * t * (1 - t * t)


def _silu_curvature(z: Tensor) -> Tensor:
    s = torch.sigmoid(z)
    return s * (1 - s) * (2 + z * (1 - 2 * s))


def _gelu_curvature(z: Tensor) -> Tensor:
    return torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi) * (2 - z * z)


def _sigmoid_curvature(z: Tensor) -> Tensor:
    s = torch.sigmoid(z)
    return s * (1 - s) * (1 - 2 * s)


def _softplus_curvature(z: Tensor) -> Tensor:
    s = torch.sigmoid(z)
    return s * (1 - s)


def _exponential_curvature(scale: float) -> Callable[[Tensor], Tensor]:
    """σ'' of ELU (scale 1) and SELU (scale λ·α) for z < 0, and 0 from 0 on."""

    def curvature(z: Tensor) -> Tensor:
        return torch.where(z < 0, scale * torch.exp(z.clamp_max(0)), torch.zeros_like(z))

    return curvature


def _no_curvature(z: Tensor) -> Tensor:
    return torch.zeros_like(z)


ACTIVATIONS: dict[str, ActivationInfo] = {
    "relu": ActivationInfo(
        _relu,
        True,
        1.0,
        True,
        positively_homogeneous=True,
        second_derivative=_rectifier_surrogate(1.0),
        surrogate_curvature=True,
    ),
    "leaky_relu": ActivationInfo(
        _leaky_relu,
        True,
        1.0,
        False,
        positively_homogeneous=True,
        second_derivative=_rectifier_surrogate(1 - LEAKY_SLOPE),
        surrogate_curvature=True,
    ),
    "tanh": ActivationInfo(torch.tanh, True, 1.0, False, second_derivative=_tanh_curvature),
    "silu": ActivationInfo(F.silu, True, 0.5, False, second_derivative=_silu_curvature),
    "gelu": ActivationInfo(F.gelu, True, 0.5, False, second_derivative=_gelu_curvature),
    "elu": ActivationInfo(
        F.elu,
        True,
        1.0,
        False,
        second_derivative=_exponential_curvature(1.0),
        surrogate_curvature=True,
    ),
    "selu": ActivationInfo(
        _selu,
        True,
        _SELU_SCALE,
        False,
        second_derivative=_exponential_curvature(_SELU_SCALE * _SELU_ALPHA),
        surrogate_curvature=True,
    ),
    "sigmoid": ActivationInfo(
        torch.sigmoid, False, 0.25, False, second_derivative=_sigmoid_curvature
    ),
    "softplus": ActivationInfo(
        F.softplus, False, 0.5, False, second_derivative=_softplus_curvature
    ),
    "identity": ActivationInfo(
        _identity,
        True,
        1.0,
        True,
        identity_at_init=True,
        positively_homogeneous=True,
        second_derivative=_no_curvature,
    ),
    # SENN's rational activation, as at its initial parameters (the identity); see below
    "rational": ActivationInfo(_identity, True, 1.0, True, identity_at_init=True, parametric=True),
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


def rational(z: Tensor, v: Tensor, c: Tensor, linear: Tensor) -> Tensor:
    """φ(z) = [(2v·z + c)/(1 + z²) + l·z] / max(‖(v, c, l)‖, 1e-6), parameters broadcast to z."""
    norm = torch.sqrt(v * v + c * c + linear * linear).clamp_min(1e-6)
    return ((2 * v * z + c) / (1 + z * z) + linear * z) / norm


class RationalActivation(Activation):
    """SENN's rational activation with parameters (v, c, l) per unit (Mitchell et al., arXiv
    2307.04526): φ(z) = [(2v·z + c)/(1 + z²) + l·z] / max(‖(v, c, l)‖, 1e-6), exactly the identity
    at (0, 0, 1), where every unit starts. Units are along dim 1 (features or channels). It grows
    with its site (``growbench.nn.units``): a split copies the parent's parameters, a new unit
    starts at the identity."""

    def __init__(self, width: int) -> None:
        super().__init__("rational")
        self.v = nn.Parameter(torch.zeros(width))
        self.c = nn.Parameter(torch.zeros(width))
        self.linear = nn.Parameter(torch.ones(width))  # l, the linear term's coefficient

    def forward(self, z: Tensor) -> Tensor:
        shape = (1, -1) + (1,) * (z.ndim - 2)
        return rational(z, *(p.reshape(shape) for p in (self.v, self.c, self.linear)))

    def resize_units(self, change) -> None:
        for name, fill in (("v", 0.0), ("c", 0.0), ("linear", 1.0)):
            change.replace(self, name, change.take(getattr(self, name).detach(), fill))

    def forward_new_units(self, maps: Tensor) -> Tensor:
        return maps  # new units are at the identity

    def extra_repr(self) -> str:
        return f"rational, {self.v.shape[0]} units"


def make_activation(name: str, width: int) -> Activation:
    """The activation module ``name`` for ``width`` units (only the rational one needs it)."""
    if name == "rational":
        return RationalActivation(width)
    return Activation(name)
