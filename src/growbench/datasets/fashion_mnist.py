"""``fashion-mnist``: Zalando's 28×28 clothing images, read from the four IDX files.

The benchmark's real image dataset. Machines here cannot always download, so the files are looked
for where a person or a package would have put them, in this order: the ``root`` option,
``$GROWBENCH_DATA/fashion-mnist``, Debian's ``dataset-fashion-mnist`` package
(``/usr/share/datasets/fashion-mnist``), then torchvision's layout ``FashionMNIST/raw`` under
``$GROWBENCH_DATA`` and ``~/.cache/growbench``. Only with ``download=True`` is anything fetched,
through torchvision (which checks the MD5s); the files are always parsed by ``growbench``'s own
IDX reader. ``train_subset``/``test_subset`` keep a fixed, class-balanced subset (seed 0) so CPU
suites can train on fewer samples.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from growbench.datasets.base import Dataset, DatasetSpec, Entry, standardize
from growbench.datasets.idx import read_idx

SPEC = DatasetSpec(
    name="fashion-mnist",
    task="classification",
    input_shape=(1, 28, 28),
    num_outputs=10,
    description="28x28 grey clothing images, 10 classes, 60000 train / 10000 test (or subsets)",
    source="Zalando Research's IDX files: Debian package dataset-fashion-mnist or torchvision",
)
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
ENV_VAR = "GROWBENCH_DATA"
TORCHVISION_RAW = Path("FashionMNIST", "raw")
# split -> (image file, label file), without the optional ".gz"
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SUBSET_SEED = 0


@dataclass(frozen=True)
class Options:
    root: str | None = None
    """A folder searched first for the IDX files, directly and in torchvision's FashionMNIST/raw
    layout; None: the usual places only."""
    download: bool = False
    """Fetch the files through torchvision (MD5-checked) when they are found nowhere."""
    train_subset: int | None = None
    """Keep this many train images, class-balanced (seed 0); None: all 60,000."""
    test_subset: int | None = None
    """Keep this many test images, class-balanced (seed 0); None: all 10,000."""


def load(options: Options) -> Dataset:
    directories = search_directories(options.root)
    files = next((f for f in map(_files_in, directories) if f is not None), None)
    if files is None and options.download:
        files = _files_in(_download(download_root(options.root)))
    if files is None:
        raise FileNotFoundError(_missing_message(directories))
    splits = {}
    for split, count in (("train", options.train_subset), ("test", options.test_subset)):
        images, labels = _read_split(*files[split])
        if count is not None:
            keep = balanced_subset(labels, count, SUBSET_SEED)
            images, labels = images[keep], labels[keep]
        splits[split] = (torch.from_numpy(images.astype(np.float32)).unsqueeze(1), labels)
    train_inputs, test_inputs = standardize(splits["train"][0], splits["test"][0])
    return Dataset(
        SPEC,
        train_inputs,
        torch.from_numpy(splits["train"][1].astype(np.int64)),
        test_inputs,
        torch.from_numpy(splits["test"][1].astype(np.int64)),
    )


def search_directories(root: str | None) -> list[Path]:
    """Where the IDX files are looked for, in order."""
    env = os.environ.get(ENV_VAR)
    directories = []
    if root:
        directories += [Path(root).expanduser(), Path(root).expanduser() / TORCHVISION_RAW]
    if env:
        directories.append(Path(env) / "fashion-mnist")
    directories.append(DEBIAN_DIR)
    if env:
        directories.append(Path(env) / TORCHVISION_RAW)
    directories.append(_cache_dir() / TORCHVISION_RAW)
    return directories


def download_root(root: str | None) -> Path:
    """Where ``download=True`` puts torchvision's ``FashionMNIST/raw``: ``root`` if given, else
    ``$GROWBENCH_DATA``, else ``~/.cache/growbench``."""
    if root:
        return Path(root).expanduser()
    env = os.environ.get(ENV_VAR)
    return Path(env) if env else _cache_dir()


def balanced_subset(labels: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Sorted indices of ``count`` samples, drawn in a seeded order that takes the classes in
    turn, so every class gets ``count // classes`` or one more (while it has samples left).
    A larger ``count`` keeps every sample a smaller one keeps; all if ``count >= len(labels)``."""
    if count < 1:
        raise ValueError(f"a subset must keep at least 1 sample, not {count}")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=generator).numpy()
    shuffled = labels[order]
    # rank of each shuffled sample among the earlier samples of its own class
    by_class = np.argsort(shuffled, kind="stable")
    sorted_labels = shuffled[by_class]
    rank = np.empty(len(labels), dtype=np.int64)
    rank[by_class] = np.arange(len(labels)) - np.searchsorted(sorted_labels, sorted_labels)
    return np.sort(order[np.argsort(rank, kind="stable")[:count]])


def _read_split(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    images, labels = read_idx(images_path, 3), read_idx(labels_path, 1)
    if images.shape[1:] != SPEC.input_shape[1:]:
        raise ValueError(f"{images_path}: images are {images.shape[1:]}, expected 28x28")
    if len(images) != len(labels):
        raise ValueError(
            f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels"
        )
    if len(labels) and labels.max() >= SPEC.num_outputs:
        raise ValueError(f"{labels_path}: label {labels.max()} is not a class id below 10")
    return images, labels


def _files_in(directory: Path) -> dict[str, tuple[Path, Path]] | None:
    """The split -> (images, labels) paths if all four files are in ``directory``, plain
    (preferred) or gzipped; else None."""
    found = {}
    for split, (images, labels) in FILES.items():
        images_path, labels_path = _plain_or_gz(directory, images), _plain_or_gz(directory, labels)
        if images_path is None or labels_path is None:
            return None
        found[split] = (images_path, labels_path)
    return found


def _plain_or_gz(directory: Path, name: str) -> Path | None:
    return next((p for p in (directory / name, directory / f"{name}.gz") if p.is_file()), None)


def _download(root: Path) -> Path:
    from torchvision.datasets import FashionMNIST

    FashionMNIST(str(root), train=True, download=True)  # fetches all four files, checks MD5s
    return root / TORCHVISION_RAW


def _cache_dir() -> Path:
    return Path.home() / ".cache" / "growbench"


def _missing_message(searched: list[Path]) -> str:
    names = ", ".join(name for pair in FILES.values() for name in pair)
    places = "\n".join(f"  {d}" for d in searched)
    return (
        f"Fashion-MNIST not found: need {names} (each plain or .gz) together in one of:\n"
        f"{places}\n"
        f"Get it with `apt-get install dataset-fashion-mnist` (Debian; installs to {DEBIAN_DIR}), "
        f"or load with the option download=true to fetch it through torchvision into "
        f"${ENV_VAR} or ~/.cache/growbench, or put the files in ${ENV_VAR}/fashion-mnist."
    )


ENTRY = Entry(SPEC, Options, load)
