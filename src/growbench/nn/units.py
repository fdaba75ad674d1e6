"""Per-unit modules: what lies between a site's producer and its consumer, and how it grows.

Between the layer that produces a site's units and the layer that reads them there may be modules
that act on each unit separately: a BatchNorm, the activation, a depthwise convolution with its own
BatchNorm and activation (MobileNet), pooling, dropout, a flatten, an insertion ``Slot``. Surgery
has to resize the ones that hold per-unit parameters or buffers along with the site, and some
methods need to know what such a module computes on a brand-new unit. Both go through one
protocol, so ``split`` and ``add_units`` loop over the site's modules instead of special-casing
BatchNorm:

* ``resize_units(module, change)``: give the module the site's new width. ``change.source[i]`` is
  the old unit whose entries new unit i copies (a split's offspring copy their parent), or -1 for
  a brand-new unit, which gets the module's *new-unit entries*: the values that make the module
  transparent to it in eval mode (BatchNorm: mean 0, variance 1, γ = sqrt(1 + eps), β = 0; a
  depthwise conv: the identity filter). A module takes part by defining ``resize_units(change)``;
  torch's BatchNorm layers are adapted here; a module with no parameters and no buffers needs
  nothing; anything else is refused with an error naming it.
* ``new_unit_forward(module, maps)``: what the module computes, in eval mode, on channels that
  hold brand-new units (any number of channels): the identity for BatchNorm, the identity filter
  for a depthwise conv, the module itself for activations and pooling. A module may define
  ``forward_new_units(maps)``; parameterless modules are simply called.

``UnitChange.replace`` installs a resized parameter and records its lineage with the net, so the
optimizer hand-over (``optim.carry_optimizer_state``) follows every per-unit parameter too.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from growbench.nn.growable import GrowableNet


@dataclass
class UnitChange:
    """How a site's units change in one surgery.

    ``source[i]``: the old unit whose per-unit entries new unit i copies, -1 for a new unit.
    ``state[i]``: the old unit whose optimizer state new unit i continues, -1 for fresh state
    (old units keep their index; offspring and new units are appended and start fresh).
    """

    net: GrowableNet
    source: Tensor
    state: Tensor

    @property
    def width(self) -> int:
        return len(self.source)

    def take(self, values: Tensor, fill: float | Tensor, dim: int = 0) -> Tensor:
        """``values`` re-indexed along ``dim`` by ``source``; new units get ``fill`` (a scalar, or
        a tensor shaped like one slice of ``values`` along ``dim``)."""
        index = self.source.to(values.device)
        taken = values.index_select(dim, index.clamp_min(0))
        fresh = index < 0
        if not bool(fresh.any()):
            return taken
        shape = [1] * values.ndim
        shape[dim] = -1
        mask = fresh.reshape(shape)
        if isinstance(fill, Tensor):
            fill = fill.to(values).unsqueeze(dim)
        return torch.where(mask, fill, taken)

    def replace(self, module: nn.Module, name: str, value: Tensor, dim: int = 0) -> None:
        """Install ``value`` as the new parameter ``module.name`` (resized along ``dim``) and
        record which old entries it continues."""
        maps: list[Tensor | None] = [None] * value.ndim
        maps[dim] = self.state.to(value.device)
        replace_parameter(self.net, module, name, value, maps)


def replace_parameter(
    net: GrowableNet, module: nn.Module, name: str, value: Tensor, maps: list[Tensor | None]
) -> None:
    """Swap ``module.name`` for a new ``nn.Parameter`` holding ``value``; record its lineage."""
    old = getattr(module, name)
    new = nn.Parameter(value.detach().clone().contiguous(), requires_grad=old.requires_grad)
    setattr(module, name, new)
    net.record_lineage(new, old, maps)


# ------------------------------------------------------------------------ the protocol
def resize_units(module: nn.Module, change: UnitChange) -> None:
    """Resize one per-unit module to ``change.width`` units (see the module docstring)."""
    own = getattr(module, "resize_units", None)
    if own is not None:
        own(change)
        return
    for kinds, adapter in _RESIZE_ADAPTERS:
        if isinstance(module, kinds):
            adapter(module, change)
            return
    if any(True for _ in module.parameters()) or any(True for _ in module.buffers()):
        raise TypeError(
            f"{type(module).__name__} sits between a site's producer and consumer and holds "
            "parameters or buffers, but does not say how to resize them: give it a "
            "resize_units(change) method (see growbench.nn.units)"
        )


def new_unit_forward(module: nn.Module, maps: Tensor) -> Tensor:
    """What ``module`` computes in eval mode on channels of brand-new units."""
    own = getattr(module, "forward_new_units", None)
    if own is not None:
        return own(maps)
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return maps  # new entries are the identity in eval mode
    return module(maps)


def _resize_batchnorm(norm: nn.modules.batchnorm._BatchNorm, change: UnitChange) -> None:
    norm.running_mean = change.take(norm.running_mean, 0.0)
    norm.running_var = change.take(norm.running_var, 1.0)
    if norm.affine:
        identity_gamma = math.sqrt(1.0 + norm.eps)
        change.replace(norm, "weight", change.take(norm.weight.detach(), identity_gamma))
        change.replace(norm, "bias", change.take(norm.bias.detach(), 0.0))
    norm.num_features = change.width


_RESIZE_ADAPTERS: list[tuple[type | tuple[type, ...], Callable[[Any, UnitChange], None]]] = [
    (nn.modules.batchnorm._BatchNorm, _resize_batchnorm),
]


# ---------------------------------------------------------------------- zoo modules
class DepthwiseConv2d(nn.Conv2d):
    """A depthwise convolution (one filter per channel) that grows with the site it follows.

    A split copies the parent's filter; a new unit gets the identity filter (1 at the centre), so
    its map passes through unchanged (subsampled by the stride)."""

    def __init__(
        self,
        channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int | None = None,
        bias: bool = False,
        **factory: Any,
    ) -> None:
        if kernel_size % 2 != 1:
            raise ValueError(f"DepthwiseConv2d needs an odd kernel size, got {kernel_size}")
        padding = kernel_size // 2 if padding is None else padding
        super().__init__(
            channels, channels, kernel_size, stride, padding, groups=channels, bias=bias, **factory
        )

    def _identity_filter(self, channels: int, like: Tensor) -> Tensor:
        kernel = like.new_zeros(channels, 1, *self.kernel_size)
        kernel[:, 0, self.kernel_size[0] // 2, self.kernel_size[1] // 2] = 1.0
        return kernel

    def resize_units(self, change: UnitChange) -> None:
        weight = self.weight.detach()
        identity = self._identity_filter(1, weight)[0]
        change.replace(self, "weight", change.take(weight, identity))
        if self.bias is not None:
            change.replace(self, "bias", change.take(self.bias.detach(), 0.0))
        self.in_channels = self.out_channels = self.groups = change.width

    def forward_new_units(self, maps: Tensor) -> Tensor:
        """The identity filter's output: the maps subsampled by the stride. Taken by slicing
        when the padding centres the filter (the zoo's), which is the same numbers as the
        grouped convolution without its cost (in float64, one slow convolution per channel)."""
        centred = all(
            pad == dilation * (size // 2)
            for pad, dilation, size in zip(self.padding, self.dilation, self.kernel_size)
        )
        if centred:
            return maps[:, :, :: self.stride[0], :: self.stride[1]]
        kernel = self._identity_filter(maps.shape[1], maps)
        return F.conv2d(maps, kernel, None, self.stride, self.padding, self.dilation, maps.shape[1])


class Slot(nn.Module):
    """Where ``insert_layer`` puts a new layer: the identity while empty, else its contents in
    order (the inserted layer, its norm and activation, and the slot for the next insertion)."""

    def __init__(self, contents: list[nn.Module] | None = None) -> None:
        super().__init__()
        self.contents = nn.ModuleList(contents or [])

    @property
    def empty(self) -> bool:
        return len(self.contents) == 0

    def forward(self, x: Tensor) -> Tensor:
        for module in self.contents:
            x = module(x)
        return x


class ZeroBranchResidual(nn.Module):
    """``x + branch(x)``, inserted with the branch's last layer at zero so it starts as the
    identity for any activation."""

    def __init__(self, branch: list[nn.Module]) -> None:
        super().__init__()
        self.branch = nn.ModuleList(branch)

    def forward(self, x: Tensor) -> Tensor:
        out = x
        for module in self.branch:
            out = module(out)
        return x + out


MAX_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)


def is_max_pool(module: nn.Module) -> bool:
    """Max pools (local or global) are piecewise linear but not linear in a unit's input."""
    return isinstance(module, MAX_POOLS)
