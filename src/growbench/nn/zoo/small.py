"""The small CPU models: ``mlp`` and ``cnn`` (sites ``block0``, ``block1``, ...)."""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

from torch import nn

from growbench.nn.growable import GrowableNet
from growbench.nn.units import Slot
from growbench.nn.zoo.layers import check_image, check_widths, chain_sites, unit_stage
from growbench.nn.zoo.registry import ZooModel, register_model


@dataclass(frozen=True)
class MLPOptions:
    widths: tuple[int, ...] | None = (16,)
    activation: str = "relu"
    batchnorm: bool = False

    def __post_init__(self) -> None:
        check_widths("mlp", self.widths)


@register_model
class MLP(ZooModel):
    """Hidden Linear layers of ``widths`` (none at all is allowed: depth can grow from the
    input slot), each with optional BatchNorm and the activation, then a Linear output layer."""

    name = "mlp"
    Options = MLPOptions
    description = "Linear layers of `widths` (optional BatchNorm), then a Linear output layer"

    @classmethod
    def default_widths(cls, options: MLPOptions, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(options.widths or ())

    @classmethod
    def build(cls, options: MLPOptions, input_shape: tuple[int, ...], num_outputs: int):
        fan_in = math.prod(input_shape)
        entry = nn.Sequential(OrderedDict(flatten=nn.Flatten(), slot=Slot()))
        stages = []
        for width in options.widths:
            stages.append(unit_stage(nn.Linear(fan_in, width), options.activation, options.batchnorm))
            fan_in = width
        head = nn.Linear(fan_in, num_outputs)
        layers = [stage.layer for stage in stages] + [head]
        names = [f"block{i}" for i in range(len(stages))]
        sites = chain_sites(names, stages, layers[1:])
        modules = [entry, *(stage.module for stage in stages), nn.Sequential(OrderedDict(layer=head))]
        return GrowableNet(modules, sites, input_shape, free_slots={"input": (entry.slot, layers[0])})


@dataclass(frozen=True)
class CNNOptions:
    widths: tuple[int, ...] | None = (8, 16)
    activation: str = "relu"
    batchnorm: bool = False

    def __post_init__(self) -> None:
        check_widths("cnn", self.widths)
        if not self.widths:
            raise ValueError("cnn: widths must name at least one conv layer")


@register_model
class CNN(ZooModel):
    """VGG-style 3×3 conv blocks of ``widths`` (max-pool 2×2 after every block but the last,
    global average pool after the last), then a Linear classifier."""

    name = "cnn"
    Options = CNNOptions
    description = (
        "3×3 conv blocks of `widths` (max-pool between, global average pool after the last), "
        "then a Linear layer"
    )

    @classmethod
    def default_widths(cls, options: CNNOptions, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(options.widths)

    @classmethod
    def check(cls, options: CNNOptions, input_shape: tuple[int, ...], num_outputs: int) -> None:
        blocks = len(options.widths)
        if len(input_shape) == 3 and min(input_shape[1:]) < 2 ** (blocks - 1):
            raise ValueError(
                f"a cnn with {blocks} blocks pools the input {blocks - 1} times and needs images "
                f"of at least {2 ** (blocks - 1)}×{2 ** (blocks - 1)}, got {input_shape[1:]}; use "
                "fewer widths"
            )
        check_image("cnn", input_shape, 1)

    @classmethod
    def build(cls, options: CNNOptions, input_shape: tuple[int, ...], num_outputs: int):
        channels = input_shape[0]
        stages = []
        last = len(options.widths) - 1
        for i, width in enumerate(options.widths):
            conv = nn.Conv2d(channels, width, 3, padding=1, bias=not options.batchnorm)
            if i == last:
                extras = [("pool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten())]
            else:
                extras = [("pool", nn.MaxPool2d(2))]
            stages.append(unit_stage(conv, options.activation, options.batchnorm, extras))
            channels = width
        head = nn.Linear(channels, num_outputs)
        names = [f"block{i}" for i in range(len(stages))]
        sites = chain_sites(names, stages, [s.layer for s in stages[1:]] + [head])
        modules = [*(stage.module for stage in stages), nn.Sequential(OrderedDict(layer=head))]
        return GrowableNet(modules, sites, input_shape)
