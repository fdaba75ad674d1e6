"""``rational-teacher``: 1-D regression onto a random rational-activation teacher MLP, SENN's first
experiment (Mitchell et al., arXiv 2307.04526).

SENN's paper grows a net from one hidden unit on 50 training points of a target drawn from the
same family it can express: a 1 → 16 → 16 → 16 → 16 → 1 MLP whose units use the rational
activation at random parameters. Where the fit is poor is where units should be added, which the
1-D input makes visible. Our teacher [ours, where the code's Flax initialisers differ]: weights
N(0, 1/fan-in), biases N(0, 0.1²), rational parameters (v, c, l) ~ N(0, 1) per unit, the output
standardised on the training points; inputs x ~ N(0, 1). Everything is drawn from one local
generator seeded with ``seed``: the teacher layer by layer, then the train and the test inputs.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass

import torch
from torch import Tensor

from growbench.datasets.base import Dataset, DatasetSpec, Entry
from growbench.nn.activations import rational

SPEC = DatasetSpec(
    name="rational-teacher",
    task="regression",
    input_shape=(1,),
    num_outputs=1,
    description="1-D regression onto a random 1-16-16-16-16-1 rational-activation MLP, 50 train",
    source="generated from a seeded teacher network, as in SENN's first experiment",
)


@dataclass(frozen=True)
class Options:
    n_train: int = 50
    """Training points (≥ 1)."""
    n_test: int = 1000
    """Test points (≥ 1)."""
    hidden: int = 16
    """Width of each of the teacher's hidden layers (≥ 1)."""
    depth: int = 4
    """Number of the teacher's hidden layers (≥ 1)."""
    seed: int = 0
    """Seed of the generator that draws the teacher and the inputs."""


def load(options: Options) -> Dataset:
    for field in dataclasses.fields(options):
        if field.name != "seed" and getattr(options, field.name) < 1:
            raise ValueError(f"rational-teacher: {field.name} must be at least 1")
    generator = torch.Generator().manual_seed(options.seed)
    sizes = [1] + [options.hidden] * options.depth + [1]
    layers = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        weight = torch.randn(fan_out, fan_in, generator=generator) / fan_in**0.5
        bias = 0.1 * torch.randn(fan_out, generator=generator)
        shape = torch.randn(3, fan_out, generator=generator)
        layers.append((weight, bias, shape))
    x_train = torch.randn(options.n_train, 1, generator=generator)
    x_test = torch.randn(options.n_test, 1, generator=generator)

    def teacher(x: Tensor) -> Tensor:
        for index, (weight, bias, shape) in enumerate(layers):
            x = x @ weight.T + bias
            if index < len(layers) - 1:
                x = rational(x, shape[0], shape[1], shape[2])
        return x

    y_train, y_test = teacher(x_train), teacher(x_test)
    mean, std = y_train.mean(), y_train.std().clamp_min(1e-12)
    return Dataset(SPEC, x_train, (y_train - mean) / std, x_test, (y_test - mean) / std)


ENTRY = Entry(SPEC, Options, load)
