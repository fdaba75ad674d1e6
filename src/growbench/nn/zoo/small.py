"""The small CPU models: ``mlp`` and ``cnn`` (sites ``block0``, ``block1``, ...)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from growbench.nn.zoo.layers import ChainLayer, chain_net, check_image, check_widths
from growbench.nn.zoo.registry import ZooModel, register_model


@dataclass(frozen=True)
class MLPOptions:
    widths: tuple[int, ...] | None = (16,)
    """Start width of each hidden Linear layer, one per layer in order (the growth sites); empty: no
    hidden layer."""
    activation: str = "relu"
    """Activation after each hidden layer, by name (relu, tanh, gelu, ..., any key of
    `growbench.nn.activations.ACTIVATIONS`)."""
    batchnorm: bool = False
    """Put BatchNorm between each hidden layer and its activation."""

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
        fan_in, layers = math.prod(input_shape), []
        for i, width in enumerate(options.widths):
            norm = nn.BatchNorm1d(width) if options.batchnorm else None
            layers.append(
                ChainLayer(f"block{i}", nn.Linear(fan_in, width), norm, options.activation)
            )
            fan_in = width
        layers.append(ChainLayer(f"block{len(layers)}", nn.Linear(fan_in, num_outputs)))
        return chain_net(layers, input_shape, flatten_input=True)


@dataclass(frozen=True)
class CNNOptions:
    widths: tuple[int, ...] | None = (8, 16)
    """Start channels of each 3×3 conv block, one per block in order (the growth sites); at least
    one."""
    activation: str = "relu"
    """Activation after each conv block, by name (relu, tanh, gelu, ..., any key of
    `growbench.nn.activations.ACTIVATIONS`)."""
    batchnorm: bool = False
    """Put BatchNorm between each conv and its activation (the convs then have no bias)."""

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
        channels, layers = input_shape[0], []
        last = len(options.widths) - 1
        for i, width in enumerate(options.widths):
            conv = nn.Conv2d(channels, width, 3, padding=1, bias=not options.batchnorm)
            norm = nn.BatchNorm2d(width) if options.batchnorm else None
            post = [nn.AdaptiveAvgPool2d(1), nn.Flatten()] if i == last else [nn.MaxPool2d(2)]
            layers.append(ChainLayer(f"block{i}", conv, norm, options.activation, post))
            channels = width
        layers.append(ChainLayer(f"block{len(layers)}", nn.Linear(channels, num_outputs)))
        return chain_net(layers, input_shape)
