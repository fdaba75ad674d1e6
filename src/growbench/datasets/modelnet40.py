"""``modelnet40``: the 40-class point clouds of PointNet's experiments, from the official
2,048-point HDF5 archive (``modelnet40_ply_hdf5_2048.zip``).

Its ``ply_data_train{0..4}.h5`` and ``ply_data_test{0,1}.h5`` hold ``data`` (N × 2048 × 3, each
shape already centred and scaled into the unit sphere) and ``label`` (N × 1); ``shape_names.txt``
names the classes. As PointNet prepares them for classification, each cloud keeps its first
``points`` (1,024) points; augmentation (random scaling, translation and jitter) is the
harness's, on the device. The publisher gives no checksum for the zip itself, so every HDF5 file
is checked against its widely published md5 after extraction, and a mismatch is an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from growbench.datasets import archives
from growbench.datasets.base import Dataset, DatasetSpec, Entry
from growbench.datasets.fashion_mnist import balanced_subset

FOLDER = "modelnet40_ply_hdf5_2048"
URL = "https://shapenet.cs.stanford.edu/media/modelnet40_ply_hdf5_2048.zip"
TRAIN = {
    "ply_data_train0.h5": "3176385ffc31a7b6b5af22191fd920d1",
    "ply_data_train1.h5": "e3f613fb500559403b34925112754dc4",
    "ply_data_train2.h5": "0c56e233a090ff87c3049d4ce08e7d8b",
    "ply_data_train3.h5": "9d2af465adfa33a3285c369f3ca66c45",
    "ply_data_train4.h5": "dff38de489b2c41bfaeded86c2208984",
}
TEST = {
    "ply_data_test0.h5": "e9732e6d83b09e79e9a7617df058adee",
    "ply_data_test1.h5": "aba4b12a67c34391cc3c015a6f08ed4b",
}
LICENSE = "Princeton ModelNet: for academic research only, cite Wu et al. 2015"
SOURCE = archives.add_source(
    archives.Source(
        dataset="modelnet40",
        archives=(archives.Archive(URL, None),),
        expected=tuple(f"{FOLDER}/{name}" for name in (*TRAIN, *TEST, "shape_names.txt")),
        size="416 MiB",
        license=LICENSE,
        file_md5={f"{FOLDER}/{name}": md5 for name, md5 in {**TRAIN, **TEST}.items()},
    )
)
SUBSET_SEED = 0


@dataclass(frozen=True)
class Options:
    root: str | None = None
    """A folder searched first for modelnet40_ply_hdf5_2048/; None: the data root only."""
    download: bool = False
    """Fetch the official archive when the files are found nowhere."""
    points: int = 1024
    """Points kept per cloud (the first ones of the 2,048 stored): 1 to 2048."""
    train_subset: int | None = None
    """Keep this many train clouds, class-balanced (seed 0); None: all 9,840."""
    test_subset: int | None = None
    """Keep this many test clouds, class-balanced (seed 0); None: all 2,468."""


def spec(points: int = 1024) -> DatasetSpec:
    return DatasetSpec(
        "modelnet40", "classification", (points, 3), 40,
        "CAD-model point clouds, 40 classes, 9840 train / 2468 test, 1024 of 2048 points",
        f"{URL} (416 MiB; {LICENSE})",
    )  # fmt: skip


def find_folder(root: str | None) -> Path | None:
    candidates = [Path(root).expanduser()] if root else []
    candidates.append(archives.dataset_dir("modelnet40"))
    for base in candidates:
        folder = base / FOLDER
        if all((folder / name).is_file() for name in (*TRAIN, *TEST)):
            return folder
    return None


def read_clouds(paths: list[Path], points: int) -> tuple[np.ndarray, np.ndarray]:
    """(clouds N × points × 3 float32, labels N int64) from official HDF5 files."""
    try:
        import h5py
    except ImportError:  # pragma: no cover - h5py is a dependency
        raise ImportError("modelnet40 needs h5py: pip install h5py") from None
    clouds, labels = [], []
    for path in paths:
        try:
            with h5py.File(path, "r") as handle:
                data = np.asarray(handle["data"][:, :points, :], dtype=np.float32)
                label = np.asarray(handle["label"][:], dtype=np.int64).reshape(-1)
        except (OSError, KeyError) as error:
            raise ValueError(
                f"{path}: not an official ModelNet40 HDF5 file ({error}); "
                "check it with `growbench data verify modelnet40`"
            ) from None
        if data.ndim != 3 or data.shape[2] != 3 or len(label) != len(data):
            raise ValueError(f"{path}: data {data.shape} and {len(label)} labels, expected N×P×3")
        clouds.append(data)
        labels.append(label)
    return np.concatenate(clouds), np.concatenate(labels)


def load(options: Options) -> Dataset:
    if not 1 <= options.points <= 2048:
        raise ValueError(f"modelnet40: points must be in 1..2048, not {options.points}")
    folder = find_folder(options.root)
    if folder is None and options.download:
        archives.fetch("modelnet40")
        folder = find_folder(None)
    if folder is None:
        places = [Path(options.root).expanduser() / FOLDER] if options.root else []
        places.append(archives.dataset_dir("modelnet40") / FOLDER)
        raise FileNotFoundError(
            f"modelnet40 not found: need {', '.join([*TRAIN, *TEST])} in one of "
            f"{', '.join(map(str, places))}. Fetch it with `growbench data fetch modelnet40` (on "
            "a machine with a network, or with --mirror), or set download = true"
        )
    splits = []
    for names, count in ((TRAIN, options.train_subset), (TEST, options.test_subset)):
        clouds, labels = read_clouds([folder / name for name in names], options.points)
        if len(labels) and labels.max() >= 40:
            raise ValueError(f"modelnet40: label {labels.max()} is not a class id below 40")
        if count is not None:
            keep = balanced_subset(labels, count, SUBSET_SEED)
            clouds, labels = clouds[keep], labels[keep]
        splits += [torch.from_numpy(clouds), torch.from_numpy(labels)]
    return Dataset(spec(options.points), *splits)


ENTRY = Entry(spec(), Options, load)
