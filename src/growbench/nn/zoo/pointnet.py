"""``pointnet``: vanilla PointNet for point-cloud classification (Qi et al., CVPR 2017).

Input: ``num_points × 3`` coordinates per sample. As in the official TensorFlow code, the shared
per-point MLP is a stack of convolutions over a ``1 × N × 3`` map: a 1×3 conv to 64 channels,
then 1×1 convs to 64, 64, 128 and 1024 (each with bias, BatchNorm and the activation), so every
point is processed alike and stays separate; a global max over the points gives 1024 values;
then Linear 512 and 256 (BatchNorm, activation), dropout (p = 0.3, the paper's keep ratio 0.7)
and the Linear classifier. Sites: ``conv1`` ... ``conv5``, ``fc1``, ``fc2``; ``conv5``'s units reach
``fc1`` through the global max (a max pool, for the methods that care).

``input_transform`` adds the paper's input T-Net (its own 64-128-1024 convs, max, FC 512-256, a
3×3 matrix starting at the identity) before the shared MLP. It is off by default — the vanilla
network is what growth methods are compared on — and its layers are not growth sites. The
feature transform and its orthogonality loss are not implemented.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from growbench.nn.activations import make_activation
from growbench.nn.growable import GrowableNet
from growbench.nn.zoo.layers import chain_sites, check_multiplier, check_widths, scaled, unit_stage
from growbench.nn.zoo.registry import ZooModel, register_model

FULL_WIDTHS = (64, 64, 64, 128, 1024, 512, 256)  # conv1..conv5, fc1, fc2
CONVS = 5


class InputTransform(nn.Module):
    """The T-Net: points (B × N × 3) → points multiplied by a learned 3×3 matrix, which starts as
    the identity (last layer zero, identity bias)."""

    def __init__(self, activation: str) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 1
        for width, kernel in ((64, (1, 3)), (128, 1), (1024, 1)):
            layers += [nn.Conv2d(channels, width, kernel), nn.BatchNorm2d(width)]
            layers.append(make_activation(activation, width))
            channels = width
        self.features = nn.Sequential(*layers, nn.AdaptiveMaxPool2d(1), nn.Flatten())
        fc: list[nn.Module] = []
        for width in (512, 256):
            fc += [nn.Linear(channels, width), nn.BatchNorm1d(width)]
            fc.append(make_activation(activation, width))
            channels = width
        self.fc = nn.Sequential(*fc)
        self.matrix = nn.Linear(channels, 9)
        with torch.no_grad():
            self.matrix.weight.zero_()
            self.matrix.bias.copy_(torch.eye(3).flatten())

    def forward(self, points: Tensor) -> Tensor:
        matrix = self.matrix(self.fc(self.features(points[:, None]))).reshape(-1, 3, 3)
        return points @ matrix


class PointMap(nn.Module):
    """Points B × N × 3 (optionally transformed) → the B × 1 × N × 3 map the convs read."""

    def __init__(self, transform: InputTransform | None) -> None:
        super().__init__()
        self.transform = transform

    def forward(self, points: Tensor) -> Tensor:
        if self.transform is not None:
            points = self.transform(points)
        return points[:, None]


@dataclass(frozen=True)
class PointNetOptions:
    width_multiplier: float = 1.0
    """Scales the full widths 64-64-64-128-1024 and 512-256, rounded, at least 1 (> 0)."""
    widths: tuple[int, ...] | None = None
    """Start widths of the 7 growth sites, conv1 ... conv5, fc1, fc2; None: the full widths
    × width_multiplier."""
    activation: str = "relu"
    """Activation after every conv and hidden Linear layer, by name (relu, tanh, gelu, ..., any key
    of `growbench.nn.activations.ACTIVATIONS`)."""
    dropout: float = 0.3
    """Dropout probability before the classifier: [0, 1)."""
    input_transform: bool = False
    """Add the paper's input T-Net (a learned 3×3 transform of the points, not growable) before the
    shared MLP."""

    def __post_init__(self) -> None:
        check_multiplier("pointnet", self.width_multiplier)
        check_widths("pointnet", self.widths)
        if not 0 <= self.dropout < 1:
            raise ValueError(f"pointnet: dropout must lie in [0, 1), got {self.dropout!r}")


@register_model
class PointNet(ZooModel):
    name = "pointnet"
    Options = PointNetOptions
    description = (
        "vanilla PointNet: shared per-point MLP 64-64-64-128-1024 with BatchNorm, global max "
        "over points, FC 512-256 with dropout; input T-Net optional (off)"
    )

    @classmethod
    def default_widths(
        cls, options: PointNetOptions, input_shape: tuple[int, ...]
    ) -> tuple[int, ...]:
        return scaled(FULL_WIDTHS, options.width_multiplier)

    @classmethod
    def check(cls, options: PointNetOptions, input_shape: tuple[int, ...], num_outputs: int):
        if len(input_shape) != 2 or input_shape[1] != 3 or input_shape[0] < 1:
            raise ValueError(f"pointnet needs (num_points, 3) input, got {input_shape}")

    @classmethod
    def build(cls, options: PointNetOptions, input_shape: tuple[int, ...], num_outputs: int):
        act, widths = options.activation, options.widths
        transform = InputTransform(act) if options.input_transform else None
        stages: list[nn.Module] = [PointMap(transform)]
        units = []
        channels = 1
        for i in range(CONVS):
            kernel = (1, 3) if i == 0 else 1
            extras = []
            if i == CONVS - 1:
                extras = [("pool", nn.AdaptiveMaxPool2d(1)), ("flatten", nn.Flatten())]
            units.append(unit_stage(nn.Conv2d(channels, widths[i], kernel), act, True, extras))
            channels = widths[i]
        for i in (CONVS, CONVS + 1):
            extras = [("dropout", nn.Dropout(options.dropout))] if i == CONVS + 1 else []
            units.append(unit_stage(nn.Linear(channels, widths[i]), act, True, extras))
            channels = widths[i]
        classifier = nn.Linear(channels, num_outputs)
        stages += [unit.module for unit in units]
        stages.append(nn.Sequential(OrderedDict(layer=classifier)))
        names = [*(f"conv{i + 1}" for i in range(CONVS)), "fc1", "fc2"]
        sites = chain_sites(names, units, [u.layer for u in units[1:]] + [classifier])
        return GrowableNet(stages, sites, input_shape)
