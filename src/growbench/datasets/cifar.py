"""``cifar10`` and ``cifar100``: the official python-pickle archives of Krizhevsky's CIFAR.

The archive names, URLs and md5s (of the archive and of every batch file in it) are
torchvision's, read from its CIFAR classes rather than written again here. The batches are read
by a restricted unpickler that only builds the dicts, lists, bytes and numpy arrays the official
files hold, so a tampered file cannot run code. Images stay uint8 in memory (150 MiB for the
train split) and batches are scaled to [0, 1] and normalised per channel with the train split's
published mean and std; ``cifar100`` has the 100 fine labels, or
the 20 coarse ones with ``labels = "coarse"``.

The files are looked for in ``<root>/cifar-10-batches-py`` (torchvision's layout) and in
``<data root>/cifar10/`` (where ``growbench data fetch cifar10`` puts them); ``download = true``
fetches them when they are nowhere.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets import CIFAR10, CIFAR100

from growbench.datasets import archives
from growbench.datasets.base import Dataset, DatasetSpec, Entry
from growbench.datasets.fashion_mnist import balanced_subset
from growbench.plugins import check_choice

LICENSE = "free for research use, cite Krizhevsky 2009 (no formal license)"
# The train split's per-channel mean and std of [0, 1] pixels.
NORMALISATION = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
SUBSET_SEED = 0


@dataclass(frozen=True)
class _Layout:
    """What one CIFAR archive holds, from torchvision's class."""

    name: str
    folder: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    label_keys: dict[str, bytes]  # labels option -> the key of the labels in a batch

    @property
    def files(self) -> tuple[str, ...]:
        return (*self.train, *self.test)


def _layout(name: str, cls: type, label_keys: dict[str, bytes]) -> _Layout:
    train = tuple(entry[0] for entry in cls.train_list)
    test = tuple(entry[0] for entry in cls.test_list)
    return _Layout(name, cls.base_folder, train, test, label_keys)


def _source(layout: _Layout, cls: type, size: str) -> archives.Source:
    listed = [*cls.train_list, *cls.test_list, [cls.meta["filename"], cls.meta["md5"]]]
    return archives.add_source(
        archives.Source(
            dataset=layout.name,
            archives=(archives.Archive(cls.url, cls.tgz_md5),),
            expected=tuple(f"{layout.folder}/{file}" for file in layout.files),
            size=size,
            license=LICENSE,
            file_md5={f"{layout.folder}/{file}": md5 for file, md5 in listed},
        )
    )


LAYOUTS = {
    "cifar10": _layout("cifar10", CIFAR10, {"fine": b"labels"}),
    "cifar100": _layout("cifar100", CIFAR100, {"fine": b"fine_labels", "coarse": b"coarse_labels"}),
}
SOURCES = {
    "cifar10": _source(LAYOUTS["cifar10"], CIFAR10, "163 MiB"),
    "cifar100": _source(LAYOUTS["cifar100"], CIFAR100, "161 MiB"),
}


@dataclass(frozen=True)
class Options10:
    root: str | None = None
    """A folder searched first for the extracted batch files in torchvision's layout
    (cifar-10-batches-py/ or cifar-100-python/); None: the data root only."""
    download: bool = False
    """Fetch and checksum the official archive when the files are found nowhere."""
    train_subset: int | None = None
    """Keep this many train images, class-balanced (seed 0); None: all 50,000."""
    test_subset: int | None = None
    """Keep this many test images, class-balanced (seed 0); None: all 10,000."""


@dataclass(frozen=True)
class Options100(Options10):
    labels: str = "fine"
    """Which labels are the targets: "fine" (100 classes) or "coarse" (20 superclasses)."""


def find_folder(name: str, root: str | None) -> Path | None:
    """The folder holding every batch file of ``name``, or None."""
    layout = LAYOUTS[name]
    candidates = [Path(root).expanduser()] if root else []
    candidates.append(archives.dataset_dir(name))
    for base in candidates:
        folder = base / layout.folder
        if all((folder / file).is_file() for file in layout.files):
            return folder
    return None


def missing_message(name: str, root: str | None) -> str:
    layout = LAYOUTS[name]
    places = [Path(root).expanduser() / layout.folder] if root else []
    places.append(archives.dataset_dir(name) / layout.folder)
    return (
        f"{name} not found: need {', '.join(layout.files)} in one of "
        f"{', '.join(map(str, places))}. Fetch it with `growbench data fetch {name}` (on a machine "
        f"with a network; then copy {archives.dataset_dir(name)} here), or set download = true in "
        "the suite's dataset_options"
    )


class _BatchUnpickler(pickle.Unpickler):
    """Builds only what the official batch files hold (and ``_codecs.encode``, with which
    Python 3 writes bytes at pickle protocol 2)."""

    ALLOWED = {
        ("_codecs", "encode"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(
                f"a CIFAR batch may not contain {module}.{name}: the file is not an official one"
            )
        return super().find_class(module, name)


def read_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(images N × 3 × 32 × 32 uint8, labels N int64) of one official batch file."""
    try:
        with path.open("rb") as handle:
            batch = _BatchUnpickler(handle, encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as error:
        raise ValueError(
            f"{path}: not an official CIFAR batch ({error}); check it with `growbench data verify`"
        ) from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise ValueError(f"{path}: {data.shape} images and {len(labels)} labels, expected N × 3072")
    return data.reshape(-1, 3, 32, 32), labels


def _loader(name: str, spec_of):
    def load(options: Options10) -> Dataset:
        labels = getattr(options, "labels", "fine")
        layout = LAYOUTS[name]
        check_choice(name, "labels", labels, sorted(layout.label_keys))
        folder = find_folder(name, options.root)
        if folder is None and options.download:
            archives.fetch(name)
            folder = find_folder(name, None)
        if folder is None:
            raise FileNotFoundError(missing_message(name, options.root))
        spec = spec_of(labels)
        splits = []
        for files, count in (
            (layout.train, options.train_subset),
            (layout.test, options.test_subset),
        ):
            parts = [read_batch(folder / file, layout.label_keys[labels]) for file in files]
            images = np.concatenate([p[0] for p in parts])
            targets = np.concatenate([p[1] for p in parts])
            if len(targets) and targets.max() >= spec.num_outputs:
                raise ValueError(f"{name}: label {targets.max()} is not below {spec.num_outputs}")
            if count is not None:
                keep = balanced_subset(targets, count, SUBSET_SEED)
                images, targets = images[keep], targets[keep]
            splits += [torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(targets)]
        return Dataset(spec, *splits, normalization=NORMALISATION[name])

    return load


def _spec10(_labels: str = "fine") -> DatasetSpec:
    return DatasetSpec(
        "cifar10", "classification", (3, 32, 32), 10,
        "32x32 colour images, 10 classes, 50000 train / 10000 test (or subsets)",
        f"{CIFAR10.url} (163 MiB; {LICENSE})",
    )  # fmt: skip


def _spec100(labels: str = "fine") -> DatasetSpec:
    return DatasetSpec(
        "cifar100", "classification", (3, 32, 32), 100 if labels == "fine" else 20,
        "32x32 colour images, 100 fine or 20 coarse classes, 50000 train / 10000 test",
        f"{CIFAR100.url} (161 MiB; {LICENSE})",
    )  # fmt: skip


CIFAR10_ENTRY = Entry(_spec10(), Options10, _loader("cifar10", _spec10))
CIFAR100_ENTRY = Entry(_spec100(), Options100, _loader("cifar100", _spec100))
