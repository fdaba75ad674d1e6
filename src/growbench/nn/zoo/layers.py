"""Pieces the zoo's models are built from, so every model lays out its sites the same way.

A *unit stage* is ``layer → [BatchNorm] → activation → slot → extras`` as an ``nn.Sequential``
with named children (``layer``, ``norm``, ``act``, ``slot``, then the extras' names), and the list
of modules after the layer, which is the start of the per-unit path of the site the layer
produces. ``chain_sites`` turns a chain of unit stages into sites: the units of stage i run
through its path (and any modules listed for the gap before the next layer) into layer i + 1.
``chain_net`` builds a whole chain net from ``ChainLayer``s in one call: the simplest way to
write a growable model of one's own.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from torch import nn

from growbench.nn.activations import make_activation
from growbench.nn.growable import GrowableNet, Site
from growbench.nn.units import Slot


@dataclass
class UnitStage:
    """One layer and what follows it up to the next layer, as a module and as a path."""

    module: nn.Sequential
    layer: nn.Linear | nn.Conv2d
    path: list[nn.Module] = field(default_factory=list)  # the modules after the layer
    slot: Slot | None = None


def unit_stage(
    layer: nn.Linear | nn.Conv2d,
    activation: str,
    batchnorm: bool | nn.Module,
    extras: Sequence[tuple[str, nn.Module]] = (),
) -> UnitStage:
    """``layer → [BN] → activation → slot → extras`` (``batchnorm``: True for a new BatchNorm, or
    the norm module itself)."""
    width = layer.weight.shape[0]
    children: list[tuple[str, nn.Module]] = [("layer", layer)]
    if isinstance(batchnorm, nn.Module):
        children.append(("norm", batchnorm))
    elif batchnorm:
        norm = nn.BatchNorm2d(width) if isinstance(layer, nn.Conv2d) else nn.BatchNorm1d(width)
        children.append(("norm", norm))
    slot = Slot()
    children += [("act", make_activation(activation, width)), ("slot", slot), *extras]
    module = nn.Sequential(OrderedDict(children))
    return UnitStage(module, layer, [m for _, m in children[1:]], slot)


def chain_sites(
    names: Sequence[str],
    stages: Sequence[UnitStage],
    consumers: Sequence[nn.Linear | nn.Conv2d],
    gaps: Sequence[Sequence[nn.Module]] = (),
) -> list[Site]:
    """Site ``names[i]``: produced by ``stages[i].layer``, through ``stages[i].path`` and
    ``gaps[i]`` (modules outside the stage, before the consumer), read by ``consumers[i]``."""
    gaps = list(gaps) or [[] for _ in stages]
    return [
        Site(name, stage.layer, [*stage.path, *gap], consumer, stage.slot)
        for name, stage, consumer, gap in zip(names, stages, consumers, gaps, strict=True)
    ]


def scaled(widths: Sequence[int], multiplier: float) -> tuple[int, ...]:
    """Widths times a width multiplier, rounded, at least 1."""
    return tuple(max(1, round(w * multiplier)) for w in widths)


def check_multiplier(model: str, multiplier: float) -> None:
    if not (isinstance(multiplier, (int, float)) and 0 < multiplier < float("inf")):
        raise ValueError(f"{model}: width_multiplier must be a positive number, got {multiplier!r}")


def check_widths(model: str, widths: Sequence[int] | None) -> None:
    if widths is None:
        return
    if not isinstance(widths, (list, tuple)) or not all(
        isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths
    ):
        raise ValueError(f"{model}: widths must be a list of positive integers, got {widths!r}")


def check_image(model: str, input_shape: tuple[int, ...], smallest: int) -> None:
    if len(input_shape) != 3:
        raise ValueError(f"{model} needs (channels, height, width) input, got {input_shape}")
    if min(input_shape[1:]) < smallest:
        raise ValueError(
            f"{model} needs images of at least {smallest}×{smallest}, got {input_shape[1:]}"
        )


@dataclass
class ChainLayer:
    """One layer of a chain net: the layer, an optional norm after it, its activation and the
    per-unit modules after that (pools, a flatten, dropout)."""

    name: str
    layer: nn.Linear | nn.Conv2d
    norm: nn.Module | None = None
    activation: str = "identity"
    post: Sequence[nn.Module] = ()


def chain_net(
    layers: Sequence[ChainLayer], input_shape: Sequence[int], flatten_input: bool = False
) -> GrowableNet:
    """A net running ``layers`` in order, each a stage; the units of every layer but the last
    (the output layer) form a site named after the layer, read by the next layer. With
    ``flatten_input`` the input is flattened first, behind an insertion slot named ``"input"``."""
    stages, units = [], []
    for position, spec in enumerate(layers):
        post = list(spec.post.children()) if isinstance(spec.post, nn.Sequential) else spec.post
        extras = [(f"post{i}", module) for i, module in enumerate(post)]
        if position == len(layers) - 1:
            act = make_activation(spec.activation, spec.layer.weight.shape[0])
            children = [("layer", spec.layer), ("act", act), *extras]
            stages.append(nn.Sequential(OrderedDict(children)))
            continue
        units.append(unit_stage(spec.layer, spec.activation, spec.norm or False, extras))
        stages.append(units[-1].module)
    names = [spec.name for spec in layers[:-1]]
    sites = chain_sites(names, units, [spec.layer for spec in layers[1:]])
    free = None
    if flatten_input:
        entry = nn.Sequential(OrderedDict(flatten=nn.Flatten(), slot=Slot()))
        stages.insert(0, entry)
        free = {"input": (entry.slot, layers[0].layer)}
    return GrowableNet(stages, sites, input_shape, free_slots=free)
