"""``digits``: scikit-learn's bundled 8×8 handwritten digits, the suite's image data with no files.

It ships inside scikit-learn, so it needs no download and loads in milliseconds: the default image
dataset for quick and CPU-only runs. The split is fixed (stratified, 20 % test, ``random_state=0``)
so every run of every method sees the same train and test samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from growbench.datasets.base import Dataset, DatasetSpec, Entry, standardize

SPEC = DatasetSpec(
    name="digits",
    task="classification",
    input_shape=(1, 8, 8),
    num_outputs=10,
    description="8x8 grey handwritten digits, 10 classes, 1437 train / 360 test",
    source="scikit-learn's bundled load_digits (UCI optical digits test set)",
)
TEST_FRACTION = 0.2
SPLIT_SEED = 0


@dataclass(frozen=True)
class Options:
    """``digits`` takes no options."""


def load(options: Options) -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    images, labels = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=TEST_FRACTION, stratify=labels, random_state=SPLIT_SEED
    )
    x_train, x_test = standardize(_images(x_train), _images(x_test))
    return Dataset(SPEC, x_train, _long(y_train), x_test, _long(y_test))


def _images(flat: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(flat).float().reshape(-1, *SPEC.input_shape)


def _long(labels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(labels).long()


ENTRY = Entry(SPEC, Options, load)
