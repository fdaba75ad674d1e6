"""The model zoo: networks built from growable blocks, described by a small frozen config.

A ``ModelConfig`` is all a run needs to rebuild a start net (the ``static`` baseline rebuilds it
at other widths), and it is what the tracker logs. Initialisation is PyTorch's default, drawn from
a seed inside ``torch.random.fork_rng`` so building a model never disturbs the global RNG.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from growbench.nn.activations import activation_info
from growbench.nn.growable import Block, GrowableNet

MODEL_KINDS = ("mlp", "cnn")


@dataclass(frozen=True)
class ModelConfig:
    """``mlp``: hidden Linear layers of ``widths``. ``cnn``: VGG-style 3×3 conv blocks of ``widths``
    (max-pool 2×2 after every block but the last, global average pool after the last), then a
    linear classifier."""

    kind: str
    input_shape: tuple[int, ...]
    num_outputs: int
    widths: tuple[int, ...]
    activation: str = "relu"
    batchnorm: bool = False

    def __post_init__(self) -> None:
        if self.kind not in MODEL_KINDS:
            raise ValueError(f"unknown model kind {self.kind!r}; choose one of {MODEL_KINDS}")
        if not self.widths or any(int(w) < 1 for w in self.widths):
            raise ValueError(f"model widths must be positive integers, got {self.widths}")
        activation_info(self.activation)
        object.__setattr__(self, "input_shape", tuple(int(s) for s in self.input_shape))
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if self.kind == "cnn":
            if len(self.input_shape) != 3:
                raise ValueError(
                    f"a cnn needs (channels, height, width) input, got {self.input_shape}"
                )
            smallest = 2 ** (len(self.widths) - 1)
            if min(self.input_shape[1:]) < smallest:
                raise ValueError(
                    f"a cnn with {len(self.widths)} blocks pools the input {len(self.widths) - 1} "
                    f"times and needs images of at least {smallest}×{smallest}, got "
                    f"{self.input_shape[1:]}; use fewer widths"
                )

    def with_widths(self, widths: tuple[int, ...]) -> ModelConfig:
        return replace(self, widths=tuple(widths))


def build_model(config: ModelConfig, seed: int = 0) -> GrowableNet:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if config.kind == "mlp":
            return _mlp(config)
        return _cnn(config)


def _mlp(config: ModelConfig) -> GrowableNet:
    fan_in = 1
    for size in config.input_shape:
        fan_in *= size
    blocks = []
    for i, width in enumerate(config.widths):
        norm = nn.BatchNorm1d(width) if config.batchnorm else None
        blocks.append(Block(f"block{i}", nn.Linear(fan_in, width), norm, config.activation))
        fan_in = width
    head = nn.Linear(fan_in, config.num_outputs)
    blocks.append(Block(f"block{len(config.widths)}", head, None, "identity"))
    return GrowableNet(blocks, config.input_shape, flatten_input=True)


def _cnn(config: ModelConfig) -> GrowableNet:
    channels = config.input_shape[0]
    blocks = []
    last = len(config.widths) - 1
    for i, width in enumerate(config.widths):
        conv = nn.Conv2d(channels, width, 3, padding=1, bias=not config.batchnorm)
        norm = nn.BatchNorm2d(width) if config.batchnorm else None
        post = (
            nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()) if i == last else nn.MaxPool2d(2)
        )
        blocks.append(Block(f"block{i}", conv, norm, config.activation, post))
        channels = width
    head = nn.Linear(channels, config.num_outputs)
    blocks.append(Block(f"block{len(config.widths)}", head, None, "identity"))
    return GrowableNet(blocks, config.input_shape, flatten_input=False)
