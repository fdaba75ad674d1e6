"""The in-memory dataset types every growbench dataset is returned as.

The benchmark's datasets are small enough to live in memory (or on the accelerator) as four
tensors, so training loops index them directly instead of going through a ``DataLoader``: that is
much faster for small models, and seeding the batch order is one ``torch.Generator``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

TASKS = ("classification", "regression")
SPLITS = ("train", "test")


@dataclass(frozen=True)
class DatasetSpec:
    """What a dataset is, known without loading it."""

    name: str
    task: str  # "classification" | "regression"
    input_shape: tuple[int, ...]  # per sample, e.g. (1, 8, 8) or (2,)
    num_outputs: int  # number of classes, or the regression output dimension
    description: str  # one line, shown by `growbench datasets`
    source: str  # one line: where the data comes from

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(
                f"dataset {self.name!r}: task must be one of {TASKS}, not {self.task!r}"
            )


@dataclass
class Dataset:
    """A dataset's train and test splits as tensors, checked against its spec on creation.

    Inputs are float32 of shape ``(N, *spec.input_shape)``, or, for images, uint8 pixels with the
    per-channel ``normalization`` (mean, std of [0, 1] pixels) that ``prepare`` applies batch by
    batch: a quarter of the memory, so large image sets stay whole on the device. Targets are
    int64 class ids of shape ``(N,)`` for classification and float32 of shape
    ``(N, spec.num_outputs)`` for regression. ``batches`` and ``subset`` return prepared
    (float32, normalised) inputs.
    """

    spec: DatasetSpec
    train_inputs: Tensor
    train_targets: Tensor
    test_inputs: Tensor
    test_targets: Tensor
    normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    # (mean, std) shaped for broadcasting, per (device, ndim): made once, not on every batch
    _scales: dict = dataclasses.field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for split in SPLITS:
            _check_split(self.spec, split, *self._split(split), self.normalization)

    def prepare(self, inputs: Tensor) -> Tensor:
        """Stored inputs as the net reads them: uint8 pixels to float32, scaled to [0, 1] and
        normalised per channel (dim 1); float32 inputs unchanged."""
        if inputs.dtype != torch.uint8:
            return inputs
        key = (inputs.device, inputs.ndim)
        if key not in self._scales:
            shape = (1, -1, *[1] * (inputs.ndim - 2))
            self._scales[key] = tuple(
                torch.tensor(v, dtype=torch.float32, device=inputs.device).reshape(shape)
                for v in self.normalization
            )
        mean, std = self._scales[key]
        return (inputs.float() / 255 - mean) / std

    @property
    def num_train(self) -> int:
        return self.train_inputs.shape[0]

    @property
    def num_test(self) -> int:
        return self.test_inputs.shape[0]

    def to(self, device: torch.device | str) -> Dataset:
        """A copy with every tensor on ``device``."""
        return dataclasses.replace(
            self,
            train_inputs=self.train_inputs.to(device),
            train_targets=self.train_targets.to(device),
            test_inputs=self.test_inputs.to(device),
            test_targets=self.test_targets.to(device),
        )

    def pin_memory(self) -> Dataset:
        """A copy in pinned host memory, for non-blocking copies to an accelerator."""
        return dataclasses.replace(
            self,
            train_inputs=self.train_inputs.pin_memory(),
            train_targets=self.train_targets.pin_memory(),
            test_inputs=self.test_inputs.pin_memory(),
            test_targets=self.test_targets.pin_memory(),
        )

    def batches(
        self,
        split: str,
        batch_size: int,
        generator: torch.Generator | None = None,
        raw: bool = False,
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """One epoch of ``(inputs, targets)`` batches; the last one may be smaller.

        With a (CPU) ``generator`` the order is a fresh permutation drawn from it now, at the
        call, so successive epochs differ and the same seed gives the same epochs; without one
        the samples come in stored order. ``raw`` batches are as stored (uint8 pixels, for a
        caller that prepares them on another device).
        """
        inputs, targets = self._split(split)
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        n = inputs.shape[0]
        if generator is None:
            order = None
        else:
            order = torch.randperm(n, generator=generator).to(inputs.device)
        return self._batches(inputs, targets, order, batch_size, raw)

    def _batches(
        self, inputs: Tensor, targets: Tensor, order: Tensor | None, size: int, raw: bool
    ) -> Iterator[tuple[Tensor, Tensor]]:
        prepare = (lambda x: x) if raw else self.prepare
        for start in range(0, inputs.shape[0], size):
            if order is None:
                yield prepare(inputs[start : start + size]), targets[start : start + size]
            else:
                index = order[start : start + size]
                yield prepare(inputs[index]), targets[index]

    def subsets(
        self, split: str, counts: Sequence[int], generator: torch.Generator
    ) -> list[tuple[Tensor, Tensor]]:
        """Disjoint subsets of ``split`` of ``counts`` samples each, in that order, cut from one
        random permutation drawn with ``generator`` (one subset asking for the whole split gets
        it in stored order). Subsets past the split's end come back shorter, possibly empty. The
        growth statistics set and the held-out sets beside it are drawn this way."""
        inputs, targets = self._split(split)
        if any(count < 0 for count in counts):
            raise ValueError(f"counts must not be negative, not {list(counts)}")
        n = inputs.shape[0]
        if len(counts) == 1 and counts[0] >= n:
            return [(self.prepare(inputs), targets)]
        order = torch.randperm(n, generator=generator).to(inputs.device)
        found, start = [], 0
        for count in counts:
            pick = order[start : start + count]
            found.append((self.prepare(inputs[pick]), targets[pick]))
            start += len(pick)
        return found

    def _split(self, split: str) -> tuple[Tensor, Tensor]:
        if split == "train":
            return self.train_inputs, self.train_targets
        if split == "test":
            return self.test_inputs, self.test_targets
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")


@dataclass(frozen=True)
class Entry:
    """A registered dataset: its spec (for the default options), its options and its loader.

    ``options`` is a dataclass whose fields are the dataset's options with their defaults;
    ``load`` builds the dataset from an instance of it.
    """

    spec: DatasetSpec
    options: type
    load: Callable[[Any], Dataset]


def standardize(train: Tensor, test: Tensor, dim: int | None = None) -> tuple[Tensor, Tensor]:
    """Shift and scale both splits by the train split's mean and std: over everything
    (``dim=None``, one scalar pair) or per feature along the sample axis (``dim=0``)."""
    if dim is None:
        mean, std = train.mean(), train.std()
    else:
        mean, std = train.mean(dim, keepdim=True), train.std(dim, keepdim=True)
    return (train - mean) / std, (test - mean) / std


def _check_split(
    spec: DatasetSpec, split: str, inputs: Tensor, targets: Tensor, normalization
) -> None:
    where = f"dataset {spec.name!r}, {split} split"
    if inputs.dtype == torch.uint8:
        channels = inputs.shape[1] if inputs.ndim > 1 else 0
        if normalization is None or any(len(v) != channels for v in normalization):
            raise ValueError(
                f"{where}: uint8 inputs need a normalization (mean, std) per channel "
                f"({channels} channels)"
            )
    elif inputs.dtype != torch.float32:
        raise ValueError(f"{where}: inputs must be float32 (or uint8 pixels), not {inputs.dtype}")
    if tuple(inputs.shape[1:]) != spec.input_shape:
        raise ValueError(
            f"{where}: inputs have shape {tuple(inputs.shape)}, expected (N, *{spec.input_shape})"
        )
    n = inputs.shape[0]
    if spec.task == "classification":
        dtype, shape = torch.int64, (n,)
    else:
        dtype, shape = torch.float32, (n, spec.num_outputs)
    if targets.dtype != dtype or tuple(targets.shape) != shape:
        raise ValueError(
            f"{where}: targets are {targets.dtype} of shape {tuple(targets.shape)}, "
            f"expected {dtype} of shape {shape}"
        )
