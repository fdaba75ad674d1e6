"""Look datasets up by name, and check a load's options against the dataset's declared ones.

Options usually come from a suite file or the command line as a plain dict, so every key is
checked against the dataset's options dataclass: a typo is one clear error, not a silent default.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from growbench.datasets import digits, fashion_mnist, rational_teacher, teacher_student, toy2d
from growbench.datasets.base import Dataset, DatasetSpec, Entry

_ENTRIES: dict[str, Entry] = {
    entry.spec.name: entry
    for entry in (
        digits.ENTRY,
        fashion_mnist.ENTRY,
        rational_teacher.ENTRY,
        teacher_student.ENTRY,
        toy2d.SPIRALS,
        toy2d.MOONS,
    )
}


def dataset_names() -> list[str]:
    """Every registered dataset name, sorted."""
    return sorted(_ENTRIES)


def dataset_spec(name: str) -> DatasetSpec:
    """The dataset's spec for its default options, without loading any data."""
    return _entry(name).spec


def dataset_options(name: str) -> dict[str, Any]:
    """The dataset's options and their defaults."""
    return {f.name: f.default for f in dataclasses.fields(_entry(name).options)}


def load_dataset(name: str, **options: Any) -> Dataset:
    """Load ``name`` with ``options`` (see ``dataset_options``); the returned dataset's spec
    reflects the options (e.g. ``teacher-student``'s ``input_dim``)."""
    entry = _entry(name)
    defaults = dataset_options(name)
    for key in options:
        if key not in defaults:
            valid = ", ".join(f"{k}={v!r}" for k, v in defaults.items()) or "none"
            raise ValueError(f"dataset {name!r} has no option {key!r}; its options are: {valid}")
    return entry.load(entry.options(**options))


def _entry(name: str) -> Entry:
    try:
        return _ENTRIES[name]
    except KeyError:
        valid = ", ".join(dataset_names())
        raise ValueError(f"unknown dataset {name!r}; valid names are: {valid}") from None
