"""ImageNet subsets: ``imagenette``, ``imagewoof``, ``tiny-imagenet`` and ``imagenet-subset``.

Each is a tree of JPEGs. They are decoded once, resized (shorter side to ``resolution``,
antialiased, then a centre crop to a square) and kept as a uint8 cache file under
``<data root>/cache/``, keyed by a hash of every input that could change the result (the
pipeline, the resolution, and each image's path, label, size and modification time), so training
reads memory, never JPEGs, and a changed file or option builds a new cache. Batches are
normalised with ImageNet's channel statistics.

- ``imagenette`` / ``imagewoof``: fast.ai's 10-class subsets (easy / dog breeds), the archives
  ``imagenette2[-320|-160].tgz`` / ``imagewoof2[-320|-160].tgz`` with ``train/`` and ``val/``
  folders of one folder per WordNet id; val is the test split. Imagenette's archive names and md5s
  are torchvision's; Imagewoof uses the same layout.
- ``tiny-imagenet``: Stanford CS231n's 200 classes at 64×64 (``tiny-imagenet-200.zip``):
  ``train/<wnid>/images/*.JPEG`` and ``val/images/*.JPEG`` labelled by
  ``val/val_annotations.txt``; val is the test split (the test images have no labels).
- ``imagenet-subset``: a class list (``classes``: a shipped list, ``imagenet100`` by default, or a
  text file of WordNet ids) over a local ILSVRC-2012 copy whose ``train/`` and ``val/`` hold one
  folder per WordNet id. ILSVRC-2012 needs registration at image-net.org, so it is never fetched.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from torch import Tensor
from torchvision.datasets import Imagenette

from growbench.datasets import archives
from growbench.datasets.base import Dataset, DatasetSpec, Entry
from growbench.datasets.fashion_mnist import balanced_subset
from growbench.plugins import check_choice
from growbench.progress import bar

IMAGENET_NORMALIZATION = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
PIPELINE = "rgb-uint8/shorter-side-antialias/centre-crop/v1"  # part of every cache key
SUFFIXES = {".jpeg", ".jpg", ".png"}
SUBSET_SEED = 0
FASTAI_LICENSE = "ImageNet terms: non-commercial research and education"
SIZES = {"160px": "-160", "320px": "-320", "full": ""}  # archive name suffix per size option

# ----------------------------------------------------------------------- fetchable archives
for _size, (_url, _md5) in Imagenette._ARCHIVES.items():  # sizes "full", "320px", "160px"
    archives.add_source(
        archives.Source(
            dataset="imagenette" if _size == "160px" else f"imagenette-{_size}",
            archives=(archives.Archive(_url, _md5),),
            expected=(f"imagenette2{SIZES[_size]}/train", f"imagenette2{SIZES[_size]}/val"),
            size={"160px": "94 MiB", "320px": "326 MiB", "full": "1.5 GiB"}[_size],
            license=FASTAI_LICENSE,
        )
    )
archives.add_source(
    archives.Source(
        dataset="imagewoof",
        archives=(
            archives.Archive(
                "https://s3.amazonaws.com/fast-ai-imageclas/imagewoof2-160.tgz",
                "fcd23cc7dfce8837c95a8f9d63a128b7",
            ),
        ),
        expected=("imagewoof2-160/train", "imagewoof2-160/val"),
        size="88 MiB",
        license=FASTAI_LICENSE,
    )
)
# The 160 px Imagewoof archive was republished once; both versions have the official layout.
archives.CHECKSUMS["imagewoof2-160.tgz"].add("3d200a7be99704a0d7509be2a9fbfe15")
archives.add_source(
    archives.Source(
        dataset="tiny-imagenet",
        archives=(
            archives.Archive(
                "http://cs231n.stanford.edu/tiny-imagenet-200.zip",
                "90528d7ca1a48142e341f4ef8d21d0de",
            ),
        ),
        expected=("tiny-imagenet-200/train", "tiny-imagenet-200/val/val_annotations.txt"),
        size="237 MiB",
        license="ImageNet terms: non-commercial research and education",
    )
)
archives.add_source(
    archives.Source(
        dataset="imagenet-subset",
        archives=(),
        expected=(),
        size="≈ 13 GiB for 100 classes",
        license="ILSVRC-2012 terms (registration at image-net.org)",
        manual=(
            "ILSVRC-2012 needs registration at image-net.org. Put its train/ and val/ folders "
            "(one folder per WordNet id in each, as after the usual val-preparation script) in "
            "one folder and pass it as the dataset option root"
        ),
    )
)


# --------------------------------------------------------------------- decoding and cache
def decode(path: Path, resolution: int) -> Tensor:
    """One image as 3 × resolution × resolution uint8 RGB: shorter side resized to
    ``resolution`` (antialiased), then the centre square."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms.v2 import functional as TF

    try:
        with Image.open(path) as opened:
            pixels = np.asarray(opened.convert("RGB"))  # CMYK and grey JPEGs too
    except (OSError, UnidentifiedImageError) as error:
        raise ValueError(f"{path}: not a readable image ({error})") from None
    image = torch.from_numpy(pixels.copy()).permute(2, 0, 1)
    image = TF.resize(image, resolution, antialias=True)
    return TF.center_crop(image, [resolution, resolution])


def cache_key(items: list[tuple[Path, int]], base: Path, resolution: int) -> str:
    digest = hashlib.sha256(f"{PIPELINE}|{resolution}".encode())
    for path, label in items:
        stat = path.stat()
        digest.update(
            f"{path.relative_to(base)}|{label}|{stat.st_size}|{stat.st_mtime_ns}\n".encode()
        )
    return digest.hexdigest()


def cached_images(
    name: str, split: str, items: list[tuple[Path, int]], base: Path, resolution: int
) -> tuple[Tensor, Tensor]:
    """(images N × 3 × R × R uint8, labels N) of ``items``, from the cache or decoded now (with
    a progress bar) and cached; the cache is written atomically."""
    key = cache_key(items, base, resolution)
    folder = archives.data_root() / "cache"
    path = folder / f"{name}-{split}-{resolution}px-{key[:16]}.pt"
    if path.is_file():
        try:
            stored = torch.load(path, weights_only=True)
            if stored.get("key") == key:
                return stored["images"], stored["labels"]
        except (RuntimeError, OSError, EOFError, KeyError, AttributeError):
            pass  # a damaged cache is rebuilt
    images = torch.empty(len(items), 3, resolution, resolution, dtype=torch.uint8)
    for index, (image_path, _) in enumerate(
        bar(items, desc=f"{name} {split}: decoding to {resolution}px", unit="img")
    ):
        images[index] = decode(image_path, resolution)
    labels = torch.tensor([label for _, label in items], dtype=torch.int64)
    folder.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.part")
    torch.save({"key": key, "images": images, "labels": labels}, partial)
    partial.replace(path)
    return images, labels


# ---------------------------------------------------------------------------- layouts
def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in SUFFIXES and p.is_file())


def class_folder_items(split_dir: Path, classes: list[str]) -> list[tuple[Path, int]]:
    """(image, label) for a ``split/<wnid>/*`` tree; label = the wnid's index in ``classes``."""
    items = []
    for label, wnid in enumerate(classes):
        folder = split_dir / wnid
        if not folder.is_dir():
            raise FileNotFoundError(f"{split_dir}: no folder for class {wnid}")
        items += [(path, label) for path in _images_in(folder)]
    return items


def tiny_imagenet_items(base: Path, split: str, classes: list[str]) -> list[tuple[Path, int]]:
    label_of = {wnid: index for index, wnid in enumerate(classes)}
    if split == "train":
        items = []
        for wnid in classes:
            items += [(p, label_of[wnid]) for p in _images_in(base / "train" / wnid / "images")]
        return items
    items = []
    annotations = base / "val" / "val_annotations.txt"
    for line in annotations.read_text().splitlines():
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in label_of:
            raise ValueError(f"{annotations}: bad line {line!r}")
        items.append((base / "val" / "images" / fields[0], label_of[fields[1]]))
    return items


def class_list(classes: str) -> list[str]:
    """A shipped class list by name (``imagenet100``) or a text file of WordNet ids (``#``
    comments ignored), sorted."""
    shipped = resources.files("growbench.datasets") / "classlists" / f"{classes}.txt"
    text = shipped.read_text() if shipped.is_file() else None
    if text is None:
        path = Path(classes).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"class list {classes!r}: neither a shipped list (imagenet100) nor a file"
            )
        text = path.read_text()
    ids = [line.split("#")[0].strip() for line in text.splitlines()]
    ids = [i for i in ids if i]
    if len(set(ids)) != len(ids):
        raise ValueError(f"class list {classes!r} names a class twice")
    return sorted(ids)


# ---------------------------------------------------------------------------- datasets
@dataclass(frozen=True)
class FastaiOptions:
    root: str | None = None
    """A folder searched first for the extracted archive (imagenette2-160/ or the size chosen);
    None: the data root only."""
    download: bool = False
    """Fetch and checksum the archive when the folder is found nowhere."""
    size: str = "160px"
    """Which published archive: "160px", "320px" or "full" (the shorter side of its images)."""
    resolution: int = 64
    """Square side in pixels the images are cached and trained at: shorter side resized, then
    centre-cropped (≥ 8)."""
    train_subset: int | None = None
    """Keep this many train images, class-balanced (seed 0); None: all."""
    test_subset: int | None = None
    """Keep this many test (val) images, class-balanced (seed 0); None: all."""


@dataclass(frozen=True)
class TinyOptions:
    root: str | None = None
    """A folder searched first for tiny-imagenet-200/; None: the data root only."""
    download: bool = False
    """Fetch and checksum the archive when the folder is found nowhere."""
    resolution: int = 64  # the images are 64×64
    """Square side in pixels the images are cached and trained at; the originals are 64×64 (≥ 8)."""
    train_subset: int | None = None
    """Keep this many train images, class-balanced (seed 0); None: all."""
    test_subset: int | None = None
    """Keep this many test (val) images, class-balanced (seed 0); None: all."""


@dataclass(frozen=True)
class SubsetOptions:
    root: str | None = None
    """The local ILSVRC-2012 folder holding train/ and val/ (required: ImageNet is never
    fetched)."""
    classes: str = "imagenet100"
    """The classes kept: the name of a shipped class list, or a text file of WordNet ids."""
    resolution: int = 224
    """Square side in pixels the images are cached and trained at: shorter side resized, then
    centre-cropped (≥ 8)."""
    train_subset: int | None = None
    """Keep this many train images, class-balanced (seed 0); None: all."""
    test_subset: int | None = None
    """Keep this many test (val) images, class-balanced (seed 0); None: all."""


def _spec(name: str, classes: int, resolution: int, description: str, source: str) -> DatasetSpec:
    return DatasetSpec(
        name, "classification", (3, resolution, resolution), classes, description, source
    )


def _finish(name: str, options, splits: dict[str, list[tuple[Path, int]]], base: Path, spec):
    if options.resolution < 8:
        raise ValueError(f"{name}: resolution must be at least 8, not {options.resolution}")
    tensors = []
    for split, count in (("train", options.train_subset), ("test", options.test_subset)):
        items = splits[split]
        if count is not None:
            labels = torch.tensor([label for _, label in items]).numpy()
            items = [items[i] for i in balanced_subset(labels, count, SUBSET_SEED)]
        images, labels = cached_images(name, split, items, base, options.resolution)
        tensors += [images, labels]
    return Dataset(spec, *tensors, normalization=IMAGENET_NORMALIZATION)


def _find(candidates: list[Path], required: tuple[str, ...]) -> Path | None:
    return next((c for c in candidates if all((c / r).exists() for r in required)), None)


def _fastai_loader(name: str, classes_hint: str) -> Callable:
    def folder_name(size: str) -> str:
        check_choice(name, "size", size, sorted(SIZES))
        return f"{name}2{SIZES[size]}"

    def load(options: FastaiOptions) -> Dataset:
        folder = folder_name(options.size)
        fetch_name = name if options.size == "160px" else f"{name}-{options.size}"
        candidates = [Path(options.root).expanduser() / folder] if options.root else []
        candidates.append(archives.dataset_dir(fetch_name) / folder)
        base = _find(candidates, ("train", "val"))
        if base is None and options.download:
            archives.fetch(fetch_name)
            base = _find(candidates, ("train", "val"))
        if base is None:
            how = (
                f"`growbench data fetch {fetch_name}`"
                if fetch_name in archives.SOURCES
                else f"download {folder}.tgz from fast.ai and extract it there"
            )
            raise FileNotFoundError(
                f"{name} ({options.size}) not found: need {folder}/train and {folder}/val in one "
                f"of {', '.join(map(str, candidates))}. Get it with {how}"
            )
        classes = sorted(p.name for p in (base / "train").iterdir() if p.is_dir())
        splits = {
            "train": class_folder_items(base / "train", classes),
            "test": class_folder_items(base / "val", classes),
        }
        return _finish(name, options, splits, base, fastai_spec(name, classes_hint)(options))

    return load


def fastai_spec(name: str, what: str) -> Callable[[FastaiOptions], DatasetSpec]:
    def spec(options: FastaiOptions = FastaiOptions()) -> DatasetSpec:
        return _spec(
            name, 10, options.resolution,
            f"{what}: 10 ImageNet classes, ~9.5k train / ~3.9k val images, cached at "
            f"{options.resolution}px",
            f"fast.ai's {name}2-160.tgz (or -320, full; {FASTAI_LICENSE})",
        )  # fmt: skip

    return spec


def _load_tiny(options: TinyOptions) -> Dataset:
    candidates = [Path(options.root).expanduser() / "tiny-imagenet-200"] if options.root else []
    candidates.append(archives.dataset_dir("tiny-imagenet") / "tiny-imagenet-200")
    required = ("wnids.txt", "train", "val/val_annotations.txt")
    base = _find(candidates, required)
    if base is None and options.download:
        archives.fetch("tiny-imagenet")
        base = _find(candidates, required)
    if base is None:
        raise FileNotFoundError(
            f"tiny-imagenet not found: need tiny-imagenet-200/ with {', '.join(required)} in one "
            f"of {', '.join(map(str, candidates))}. Get it with "
            "`growbench data fetch tiny-imagenet`"
        )
    classes = sorted(line.strip() for line in (base / "wnids.txt").read_text().split() if line)
    splits = {split: tiny_imagenet_items(base, split, classes) for split in ("train", "test")}
    return _finish("tiny-imagenet", options, splits, base, _tiny_spec(options))


def _tiny_spec(options: TinyOptions = TinyOptions()) -> DatasetSpec:
    return _spec(
        "tiny-imagenet", 200, options.resolution,
        "64x64 images of 200 ImageNet classes, 100k train / 10k val",
        "http://cs231n.stanford.edu/tiny-imagenet-200.zip (237 MiB; ImageNet terms)",
    )  # fmt: skip


def _load_subset(options: SubsetOptions) -> Dataset:
    if not options.root:
        manual = archives.source("imagenet-subset").manual
        raise FileNotFoundError(f"imagenet-subset needs the dataset option root: {manual}")
    base = Path(options.root).expanduser()
    if not ((base / "train").is_dir() and (base / "val").is_dir()):
        raise FileNotFoundError(f"imagenet-subset: {base} has no train/ and val/ folders")
    classes = class_list(options.classes)
    splits = {
        "train": class_folder_items(base / "train", classes),
        "test": class_folder_items(base / "val", classes),
    }
    return _finish("imagenet-subset", options, splits, base, _subset_spec(options, len(classes)))


def _subset_spec(options: SubsetOptions = SubsetOptions(), classes: int = 100) -> DatasetSpec:
    return _spec(
        "imagenet-subset", classes, options.resolution,
        f"a class list ({options.classes}) over a local ILSVRC-2012 train/val copy",
        "image-net.org ILSVRC-2012, registration required (never downloaded)",
    )  # fmt: skip


IMAGENETTE = Entry(fastai_spec("imagenette", "Imagenette")(), FastaiOptions,
                   _fastai_loader("imagenette", "Imagenette"))  # fmt: skip
IMAGEWOOF = Entry(fastai_spec("imagewoof", "Imagewoof (dog breeds)")(), FastaiOptions,
                  _fastai_loader("imagewoof", "Imagewoof (dog breeds)"))  # fmt: skip
TINY_IMAGENET = Entry(_tiny_spec(), TinyOptions, _load_tiny)
IMAGENET_SUBSET = Entry(_subset_spec(), SubsetOptions, _load_subset)
