"""``mobilenetv1``: MobileNetV1, in the splitting papers' CIFAR form or the ImageNet form.

A 3×3 stem conv (stride 1 for CIFAR, as klightz/splitting's ``mbv1``; stride 2 for ImageNet),
then 13 depthwise-separable blocks: a 3×3 depthwise conv (stride 2 in blocks 2, 4, 6 and 12) with
BatchNorm and the activation, then a 1×1 pointwise conv with BatchNorm and the activation; global
average pooling and one Linear classifier. Full widths 32, 64, 128, 128, 256, 256, 512 ×6, 1024,
1024, times ``width_multiplier``; the splitting papers start from 32 channels in all 14 layers
(``widths = [32, ...]``).

Sites: ``stem`` and ``pw1`` ... ``pw13``, the outputs of the stem and of each pointwise conv. The
units of each but the last pass through the next block's depthwise conv, BatchNorm and
activation before the next pointwise conv reads them, so growing a site grows that depthwise
filter bank with it (a split copies the parent's filter, a new unit gets the identity filter).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from torch import nn

from growbench.nn.activations import make_activation
from growbench.nn.growable import GrowableNet, Site
from growbench.nn.units import DepthwiseConv2d
from growbench.nn.zoo.layers import (
    check_image,
    check_multiplier,
    check_widths,
    scaled,
    unit_stage,
)
from growbench.nn.zoo.registry import ZooModel, register_model
from growbench.plugins import check_choice

FULL_WIDTHS = (32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024)
BLOCK_STRIDES = (1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1)  # the depthwise conv of blocks 1..13
FORMS = {"cifar": (1, 32), "imagenet": (2, 32)}  # stem stride, smallest input


@dataclass(frozen=True)
class MobileNetV1Options:
    form: str = "cifar"
    """The stem: "cifar" (stride 1, as the splitting papers) or "imagenet" (stride 2); both take
    inputs from 32×32."""
    width_multiplier: float = 1.0
    """Scales the full widths (32 to 1024), rounded, at least 1 (> 0)."""
    widths: tuple[int, ...] | None = None
    """Start channels of the 14 growth sites, the stem then the 13 pointwise convs; None: the full
    widths × width_multiplier."""
    activation: str = "relu"
    """Activation after every conv, by name (relu, tanh, gelu, ..., any key of
    `growbench.nn.activations.ACTIVATIONS`)."""

    def __post_init__(self) -> None:
        check_choice("mobilenetv1", "form", self.form, sorted(FORMS))
        check_multiplier("mobilenetv1", self.width_multiplier)
        check_widths("mobilenetv1", self.widths)


@register_model
class MobileNetV1(ZooModel):
    name = "mobilenetv1"
    Options = MobileNetV1Options
    description = (
        "MobileNetV1 (CIFAR form: stride-1 stem; or ImageNet form): 13 depthwise-separable "
        "blocks; sites are the stem and pointwise outputs, each growing the next depthwise conv"
    )

    @classmethod
    def default_widths(
        cls, options: MobileNetV1Options, input_shape: tuple[int, ...]
    ) -> tuple[int, ...]:
        return scaled(FULL_WIDTHS, options.width_multiplier)

    @classmethod
    def check(
        cls, options: MobileNetV1Options, input_shape: tuple[int, ...], num_outputs: int
    ) -> None:
        check_image("mobilenetv1", input_shape, FORMS[options.form][1])

    @classmethod
    def build(cls, options: MobileNetV1Options, input_shape: tuple[int, ...], num_outputs: int):
        act = options.activation
        widths = options.widths
        stem_stride = FORMS[options.form][0]
        stem_conv = nn.Conv2d(input_shape[0], widths[0], 3, stem_stride, padding=1, bias=False)
        stem = unit_stage(stem_conv, act, batchnorm=True)
        stages, producers, paths, slots = [stem.module], [stem.layer], [stem.path], [stem.slot]
        for block, stride in enumerate(BLOCK_STRIDES):
            channels, width = widths[block], widths[block + 1]
            depthwise = DepthwiseConv2d(channels, 3, stride)
            depthwise_path = [depthwise, nn.BatchNorm2d(channels), make_activation(act, channels)]
            pointwise = unit_stage(nn.Conv2d(channels, width, 1, bias=False), act, batchnorm=True)
            children = [
                ("depthwise", depthwise_path[0]),
                ("depthwise_norm", depthwise_path[1]),
                ("depthwise_act", depthwise_path[2]),
                *pointwise.module.named_children(),
            ]
            stages.append(nn.Sequential(OrderedDict(children)))
            paths[-1] = [*paths[-1], *depthwise_path]  # the previous site runs through them
            producers.append(pointwise.layer)
            paths.append(list(pointwise.path))
            slots.append(pointwise.slot)
        pool, flatten = nn.AdaptiveAvgPool2d(1), nn.Flatten()
        classifier = nn.Linear(widths[-1], num_outputs)
        stages.append(nn.Sequential(OrderedDict(pool=pool, flatten=flatten, layer=classifier)))
        paths[-1] = [*paths[-1], pool, flatten]
        consumers = [*producers[1:], classifier]
        names = ["stem", *(f"pw{i}" for i in range(1, len(BLOCK_STRIDES) + 1))]
        sites = [
            Site(name, producer, path, consumer, slot)
            for name, producer, path, consumer, slot in zip(
                names, producers, paths, consumers, slots, strict=True
            )
        ]
        return GrowableNet(stages, sites, input_shape)
