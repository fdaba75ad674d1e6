"""``resnet18``: ResNet-18 with basic blocks, in the CIFAR form or the ImageNet form.

The stem is a 3×3 stride-1 conv (CIFAR; no max pool) or a 7×7 stride-2 conv and a 3×3 stride-2 max
pool (ImageNet), with BatchNorm and the activation. Four stages of two basic blocks: ``conv1``
(3×3, stride 2 in the first block of stages 2-4) → BatchNorm → activation → ``conv2`` (3×3) →
BatchNorm, plus the shortcut (the identity, or a 1×1 strided conv with BatchNorm where the shape
changes), then the activation. Global average pooling and one Linear classifier. This is the
post-activation block of torchvision's ``resnet18``, with the standard strides 1, 2, 2, 2 (GroMo's
CIFAR ResNet skips the first downsampling by default; we do not).

The residual stream (64, 128, 256, 512 × ``width_multiplier`` channels) is not growable. The
sites are the inner widths of the eight blocks, ``layer1.0`` ... ``layer4.1`` (conv1 → conv2), as
TINY grows them; ``inner_ratio`` starts them at a fraction of the stream's width (TINY starts at
1/4 or 1/64), ``widths`` sets them one by one.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

from torch import Tensor, nn

from growbench.nn.activations import make_activation
from growbench.nn.growable import GrowableNet, Site
from growbench.nn.units import Slot
from growbench.nn.zoo.layers import check_image, check_multiplier, check_widths, scaled
from growbench.nn.zoo.registry import ZooModel, register_model
from growbench.plugins import check_choice

STREAM_WIDTHS = (64, 128, 256, 512)
BLOCKS_PER_STAGE = 2
FORMS = {"cifar": 8, "imagenet": 32}  # smallest input side


class BasicBlock(nn.Module):
    """``act(bn2(conv2(slot(act1(bn1(conv1(x)))))) + shortcut(x))``."""

    def __init__(self, channels: int, inner: int, out: int, stride: int, activation: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, inner, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(inner)
        self.act1 = make_activation(activation, inner)
        self.slot = Slot()
        self.conv2 = nn.Conv2d(inner, out, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out)
        self.shortcut = nn.Identity()
        if stride != 1 or channels != out:
            self.shortcut = nn.Sequential(
                OrderedDict(
                    conv=nn.Conv2d(channels, out, 1, stride, bias=False), norm=nn.BatchNorm2d(out)
                )
            )
        self.act = make_activation(activation, out)

    def forward(self, x: Tensor) -> Tensor:
        inner = self.slot(self.act1(self.bn1(self.conv1(x))))
        return self.act(self.bn2(self.conv2(inner)) + self.shortcut(x))

    def site(self, name: str) -> Site:
        return Site(name, self.conv1, [self.bn1, self.act1, self.slot], self.conv2, self.slot)


@dataclass(frozen=True)
class ResNet18Options:
    form: str = "cifar"
    """The stem: "cifar" (3×3 stride-1 conv, inputs from 8×8) or "imagenet" (7×7 stride-2 conv and
    max pool, inputs from 32×32)."""
    width_multiplier: float = 1.0
    """Scales the residual stream's 64, 128, 256, 512 channels, rounded, at least 1 (> 0)."""
    inner_ratio: float = 1.0
    """Start inner width of each block as a fraction of its stream width, when widths is not set
    (> 0)."""
    widths: tuple[int, ...] | None = None
    """Start inner widths of the 8 blocks (the growth sites layer1.0 ... layer4.1); None: from
    inner_ratio."""
    activation: str = "relu"
    """Activation of the stem and blocks, by name (relu, tanh, gelu, ..., any key of
    `growbench.nn.activations.ACTIVATIONS`)."""

    def __post_init__(self) -> None:
        check_choice("resnet18", "form", self.form, sorted(FORMS))
        check_multiplier("resnet18", self.width_multiplier)
        check_multiplier("resnet18 (inner_ratio)", self.inner_ratio)
        check_widths("resnet18", self.widths)


@register_model
class ResNet18(ZooModel):
    name = "resnet18"
    Options = ResNet18Options
    description = (
        "ResNet-18 (CIFAR stem or ImageNet stem); sites are the 8 basic blocks' inner widths, "
        "the residual stream is fixed"
    )

    @classmethod
    def stream(cls, options: ResNet18Options) -> tuple[int, ...]:
        return scaled(STREAM_WIDTHS, options.width_multiplier)

    @classmethod
    def default_widths(
        cls, options: ResNet18Options, input_shape: tuple[int, ...]
    ) -> tuple[int, ...]:
        return tuple(
            max(1, math.ceil(options.inner_ratio * width))
            for width in cls.stream(options)
            for _ in range(BLOCKS_PER_STAGE)
        )

    @classmethod
    def check(cls, options: ResNet18Options, input_shape: tuple[int, ...], num_outputs: int):
        check_image("resnet18", input_shape, FORMS[options.form])

    @classmethod
    def build(cls, options: ResNet18Options, input_shape: tuple[int, ...], num_outputs: int):
        act = options.activation
        stream = cls.stream(options)
        if options.form == "cifar":
            stem_conv = nn.Conv2d(input_shape[0], stream[0], 3, 1, padding=1, bias=False)
            pool = []
        else:
            stem_conv = nn.Conv2d(input_shape[0], stream[0], 7, 2, padding=3, bias=False)
            pool = [("pool", nn.MaxPool2d(3, 2, padding=1))]
        stem = nn.Sequential(
            OrderedDict(
                [
                    ("conv", stem_conv),
                    ("norm", nn.BatchNorm2d(stream[0])),
                    ("act", make_activation(act, stream[0])),
                    *pool,
                ]
            )
        )
        stages: list[nn.Module] = [stem]
        sites = []
        inner = iter(options.widths)
        channels = stream[0]
        for stage, out in enumerate(stream):
            for block in range(BLOCKS_PER_STAGE):
                stride = 2 if stage > 0 and block == 0 else 1
                unit = BasicBlock(channels, next(inner), out, stride, act)
                stages.append(unit)
                sites.append(unit.site(f"layer{stage + 1}.{block}"))
                channels = out
        head = nn.Sequential(
            OrderedDict(
                pool=nn.AdaptiveAvgPool2d(1),
                flatten=nn.Flatten(),
                layer=nn.Linear(channels, num_outputs),
            )
        )
        return GrowableNet([*stages, head], sites, input_shape)
