"""``vgg``: VGG-11/13/16/19 with BatchNorm in the CIFAR form (Firefly's network).

3×3 convs (stride 1, padding 1, no bias before BatchNorm), each followed by BatchNorm and the
activation, five 2×2 max pools, then one Linear classifier on the flattened features (512 values
at 32×32; Firefly's code uses an equivalent 1×1 conv after the last pool). Every conv's output
channels are a site, ``conv1`` ... ``conv16``; the last site's units pass through the last pool and
the flatten, so at larger inputs each reaches the classifier at (H/32)·(W/32) positions.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from torch import nn

from growbench.nn.growable import GrowableNet
from growbench.nn.zoo.layers import (
    chain_sites,
    check_image,
    check_multiplier,
    check_widths,
    scaled,
    unit_stage,
)
from growbench.nn.zoo.registry import ZooModel, register_model
from growbench.plugins import check_choice

POOL = "M"
CONFIGS = {
    11: (64, POOL, 128, POOL, 256, 256, POOL, 512, 512, POOL, 512, 512, POOL),
    13: (64, 64, POOL, 128, 128, POOL, 256, 256, POOL, 512, 512, POOL, 512, 512, POOL),
    16: (
        64, 64, POOL, 128, 128, POOL, 256, 256, 256, POOL, 512, 512, 512, POOL,
        512, 512, 512, POOL,
    ),
    19: (
        64, 64, POOL, 128, 128, POOL, 256, 256, 256, 256, POOL,
        512, 512, 512, 512, POOL, 512, 512, 512, 512, POOL,
    ),
}  # fmt: skip


@dataclass(frozen=True)
class VGGOptions:
    depth: int = 11
    """Number of weight layers: 11, 13, 16 or 19 (VGG-11 to VGG-19)."""
    width_multiplier: float = 1.0
    """Scales the standard conv widths (64 to 512), rounded, at least 1 (> 0)."""
    widths: tuple[int, ...] | None = None
    """Start channels of each conv, one per conv in order (the growth sites); None: the standard
    widths × width_multiplier."""
    activation: str = "relu"
    """Activation after each conv, by name (relu, tanh, gelu, ..., any key of
    `growbench.nn.activations.ACTIVATIONS`)."""
    batchnorm: bool = True
    """Put BatchNorm between each conv and its activation (the convs then have no bias)."""

    def __post_init__(self) -> None:
        check_choice("vgg", "depth", self.depth, sorted(CONFIGS))
        check_multiplier("vgg", self.width_multiplier)
        check_widths("vgg", self.widths)


@register_model
class VGG(ZooModel):
    name = "vgg"
    Options = VGGOptions
    description = "VGG-11/13/16/19 with BatchNorm, CIFAR form: 3×3 convs, 5 max pools, one Linear"

    @classmethod
    def default_widths(cls, options: VGGOptions, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        convs = [w for w in CONFIGS[options.depth] if w != POOL]
        return scaled(convs, options.width_multiplier)

    @classmethod
    def check(cls, options: VGGOptions, input_shape: tuple[int, ...], num_outputs: int) -> None:
        check_image("vgg", input_shape, 32)

    @classmethod
    def build(cls, options: VGGOptions, input_shape: tuple[int, ...], num_outputs: int):
        widths = iter(options.widths)
        layout = CONFIGS[options.depth]
        channels, stages = input_shape[0], []
        for position, entry in enumerate(layout):
            if entry == POOL:
                continue
            width = next(widths)
            pooled = position + 1 < len(layout) and layout[position + 1] == POOL
            conv = nn.Conv2d(channels, width, 3, padding=1, bias=not options.batchnorm)
            extras = [("pool", nn.MaxPool2d(2))] if pooled else []
            stages.append(unit_stage(conv, options.activation, options.batchnorm, extras))
            channels = width
        positions = (input_shape[1] // 32) * (input_shape[2] // 32)
        flatten = nn.Flatten()
        classifier = nn.Linear(channels * positions, num_outputs)
        head = nn.Sequential(OrderedDict(flatten=flatten, layer=classifier))
        names = [f"conv{i + 1}" for i in range(len(stages))]
        consumers = [s.layer for s in stages[1:]] + [classifier]
        gaps = [[] for _ in stages[:-1]] + [[flatten]]
        sites = chain_sites(names, stages, consumers, gaps)
        return GrowableNet([*(s.module for s in stages), head], sites, input_shape)
