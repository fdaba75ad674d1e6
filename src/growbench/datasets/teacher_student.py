"""``teacher-student``: regression onto a random ReLU teacher MLP, GradMax's toy problem.

The targets come from a known network of a known width, so a growing student has a clear
capacity to reach. The teacher is ``input_dim → hidden → output_dim`` without biases, ReLU in
between, every weight drawn from U(−1, 1); inputs are standard normal. Everything is drawn from
one local ``torch.Generator`` seeded with ``seed``, in this order: first-layer weights
``(hidden, input_dim)``, second-layer weights ``(output_dim, hidden)``, train inputs, test inputs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from growbench.datasets.base import Dataset, DatasetSpec, Entry

SPEC = DatasetSpec(
    name="teacher-student",
    task="regression",
    input_shape=(10,),
    num_outputs=10,
    description="regression onto a random 10-10-10 ReLU teacher MLP, x ~ N(0, I)",
    source="generated from a seeded teacher network, as in GradMax's toy experiment",
)


@dataclass(frozen=True)
class Options:
    n_train: int = 1000
    """Training samples (≥ 1)."""
    n_test: int = 1000
    """Test samples (≥ 1)."""
    input_dim: int = 10
    """Input features, drawn standard normal (≥ 1)."""
    hidden: int = 10
    """Width of the teacher's hidden ReLU layer: the capacity a student must reach (≥ 1)."""
    output_dim: int = 10
    """Regression targets per sample (≥ 1)."""
    seed: int = 0
    """Seed of the generator that draws the teacher and the inputs."""


def load(options: Options) -> Dataset:
    for field in dataclasses.fields(options):
        if field.name != "seed" and getattr(options, field.name) < 1:
            raise ValueError(f"teacher-student: {field.name} must be at least 1")
    generator = torch.Generator().manual_seed(options.seed)
    first = _uniform((options.hidden, options.input_dim), generator)
    second = _uniform((options.output_dim, options.hidden), generator)
    x_train = torch.randn(options.n_train, options.input_dim, generator=generator)
    x_test = torch.randn(options.n_test, options.input_dim, generator=generator)

    def teacher(x: Tensor) -> Tensor:
        return (x @ first.T).clamp_min(0) @ second.T

    spec = dataclasses.replace(
        SPEC,
        input_shape=(options.input_dim,),
        num_outputs=options.output_dim,
        description=(
            f"regression onto a random {options.input_dim}-{options.hidden}-{options.output_dim}"
            " ReLU teacher MLP, x ~ N(0, I)"
        ),
    )
    return Dataset(spec, x_train, teacher(x_train), x_test, teacher(x_test))


def _uniform(shape: tuple[int, int], generator: torch.Generator) -> Tensor:
    return torch.rand(shape, generator=generator) * 2 - 1


ENTRY = Entry(SPEC, Options, load)
