"""Named benchmark datasets, held in memory as tensors.

Every dataset is small enough to keep whole in (accelerator) memory, so training indexes tensors
directly (``Dataset.batches``) rather than going through a ``DataLoader``. This package stands
alone: it imports nothing else of growbench.

>>> data = load_dataset("digits")
>>> data.spec.input_shape, data.num_train, data.num_test
((1, 8, 8), 1437, 360)
"""

from growbench.datasets.base import Dataset, DatasetSpec
from growbench.datasets.registry import (
    dataset_names,
    dataset_options,
    dataset_spec,
    load_dataset,
)

__all__ = [
    "Dataset",
    "DatasetSpec",
    "dataset_names",
    "dataset_options",
    "dataset_spec",
    "load_dataset",
]
