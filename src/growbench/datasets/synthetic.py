"""Random data of a real dataset's shapes, for rehearsing a paper suite where its data is not.

A GPU owner wants to know that a CIFAR or ImageNet suite runs end to end on their machine (every
loader, net, method and precision) before spending hours downloading; a CI machine has no network
at all. The dataset name ``synthetic:<name>`` (what ``growbench run --smoke --synthetic`` gives
each task) stands for ``<name>`` with the same spec, options and normalisation, but uniform random
pixels (or Gaussian inputs) and random labels, drawn from a fixed seed: the numbers mean nothing,
the shapes, dtypes and memory are the real ones. The sample counts are the options'
``train_subset``/``test_subset`` where the dataset takes them, else ``TRAIN``/``TEST``, and an
image dataset's ``resolution`` option sets its side as the real loader would.
"""

from __future__ import annotations

import dataclasses

import torch

from growbench.datasets.base import Dataset, Entry

PREFIX = "synthetic:"
TRAIN, TEST = 1024, 256


def synthetic_entry(real: Entry) -> Entry:
    """``real``'s entry with a loader of random data of its shapes (see the module docstring)."""
    spec = dataclasses.replace(
        real.spec,
        name=PREFIX + real.spec.name,
        description=f"random data of {real.spec.name}'s shapes (no download)",
        source="torch.randint / torch.randn, seed 0",
    )

    def load(options) -> Dataset:
        shaped = spec
        side = getattr(options, "resolution", None)
        if side is not None and len(spec.input_shape) == 3:
            shaped = dataclasses.replace(spec, input_shape=(spec.input_shape[0], side, side))
        train = getattr(options, "train_subset", None) or TRAIN
        test = getattr(options, "test_subset", None) or TEST
        generator = torch.Generator().manual_seed(0)
        inputs, normalization = _inputs(shaped.input_shape, train + test, generator)
        if shaped.task == "classification":
            targets = torch.randint(0, shaped.num_outputs, (train + test,), generator=generator)
        else:
            targets = torch.randn(train + test, shaped.num_outputs, generator=generator)
        return Dataset(shaped, inputs[:train], targets[:train], inputs[train:], targets[train:],
                       normalization)  # fmt: skip

    return Entry(spec, real.options, load)


def _inputs(shape: tuple[int, ...], count: int, generator: torch.Generator) -> tuple:
    """uint8 pixels with a plain normalisation for images (as image datasets store them), else
    float32 Gaussians."""
    if len(shape) == 3:
        pixels = torch.randint(0, 256, (count, *shape), generator=generator, dtype=torch.uint8)
        return pixels, ((0.5,) * shape[0], (0.25,) * shape[0])
    return torch.randn(count, *shape, generator=generator), None
