"""Look datasets up by name, and check a load's options against the dataset's declared ones.

Options usually come from a suite file or the command line as a plain dict, so every key is
checked against the dataset's options dataclass: a typo is one clear error, not a silent default.

An outside package adds a dataset as it adds a method, with an ``Entry`` (its spec, an options
dataclass and a loader returning a ``Dataset``) named in its own ``pyproject.toml``::

    [project.entry-points."growbench.datasets"]
    my-data = "my_package.data:ENTRY"

The entry point's name must be the spec's name; built-in names win; a plugin that fails to load
is a warning naming it, and every other dataset stays available. The lookup, the loading and
the check of the options are ``growbench.plugins``'s, shared with methods and models: this module
lists the built-ins and says what an entry must be.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from growbench.datasets import (
    cifar,
    digits,
    fashion_mnist,
    imagenet_subsets,
    modelnet40,
    rational_teacher,
    synthetic,
    teacher_student,
    toy2d,
)
from growbench.datasets.base import Dataset, DatasetSpec, Entry
from growbench.plugins import Registry, build_options, option_defaults

ENTRY_POINT_GROUP = "growbench.datasets"


def _validate(entry: Any) -> None:
    if not isinstance(entry, Entry):
        raise TypeError(f"a {type(entry).__name__} is not a growbench Entry")
    if not dataclasses.is_dataclass(entry.options):
        raise TypeError(f"the options of dataset {entry.spec.name!r} are not a dataclass")


DATASETS: Registry[Entry] = Registry(
    "dataset", ENTRY_POINT_GROUP, _validate, name_of=lambda entry: entry.spec.name
)
for _entry in (
    cifar.CIFAR10_ENTRY,
    cifar.CIFAR100_ENTRY,
    digits.ENTRY,
    fashion_mnist.ENTRY,
    imagenet_subsets.IMAGENETTE,
    imagenet_subsets.IMAGEWOOF,
    imagenet_subsets.TINY_IMAGENET,
    imagenet_subsets.IMAGENET_SUBSET,
    modelnet40.ENTRY,
    rational_teacher.ENTRY,
    teacher_student.ENTRY,
    toy2d.SPIRALS,
    toy2d.MOONS,
):
    DATASETS.register(_entry)


def available_entries() -> dict[str, Entry]:
    """Every dataset by name: the built-ins, then plugins in entry-point order."""
    return DATASETS.available()


def dataset_names() -> list[str]:
    """Every registered dataset name, sorted."""
    return sorted(available_entries())


def dataset_spec(name: str) -> DatasetSpec:
    """The dataset's spec for its default options, without loading any data."""
    return dataset_entry(name).spec


def dataset_options(name: str) -> dict[str, Any]:
    """The dataset's options and their defaults."""
    return option_defaults(dataset_entry(name).options)


def load_dataset(name: str, **options: Any) -> Dataset:
    """Load ``name`` with ``options`` (see ``dataset_options``); the returned dataset's spec
    reflects the options (e.g. ``teacher-student``'s ``input_dim``)."""
    entry = dataset_entry(name)
    return entry.load(build_options(entry.options, options, f"dataset {name!r}"))


def dataset_entry(name: str) -> Entry:
    """The registered entry of ``name``, or for ``synthetic:<name>`` its random-data twin
    (``growbench.datasets.synthetic``)."""
    if name.startswith(synthetic.PREFIX):  # any dataset's shapes, random data
        return synthetic.synthetic_entry(dataset_entry(name.removeprefix(synthetic.PREFIX)))
    return DATASETS.get(name)
