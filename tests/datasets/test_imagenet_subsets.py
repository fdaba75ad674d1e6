"""The ImageNet subsets from fixture trees in the official layouts (JPEGs written by the test):
Imagenette through fetch from a file:// mirror, Tiny ImageNet's val_annotations.txt, and
ILSVRC-2012 class folders with a class list; the uint8 cache is built once, reused, and rebuilt
when an image or the resolution changes."""

from __future__ import annotations

import io
import os
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from growbench.datasets import archives, imagenet_subsets, load_dataset

WNIDS = ["n01440764", "n02102040", "n02979186"]


def jpeg(seed: int, height: int = 40, width: int = 52) -> bytes:
    generator = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (height, width, 3), generator=generator, dtype=torch.uint8)
    out = io.BytesIO()
    Image.fromarray(image.numpy()).save(out, format="JPEG", quality=95)
    return out.getvalue()


def class_tree(per_class: int = 2, prefix: str = "") -> dict[str, bytes]:
    """``{split}/{wnid}/{file}`` members: train/ and val/ with one folder per class."""
    members = {}
    for split in ("train", "val"):
        for c, wnid in enumerate(WNIDS):
            for i in range(per_class):
                members[f"{prefix}{split}/{wnid}/{wnid}_{i}.JPEG"] = jpeg(100 * c + i)
    return members


@pytest.fixture
def data_root(tmp_path, monkeypatch):
    root = tmp_path / "data"
    monkeypatch.setenv("GROWBENCH_DATA", str(root))
    return root


def test_imagenette_fetch_decode_cache_and_load(tmp_path, data_root, accept, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    archive = mirror / "imagenette2-160.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in class_tree(prefix="imagenette2-160/").items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    accept(archive)
    archives.fetch("imagenette", mirror=mirror.as_uri(), progress=False)
    assert archives.verify("imagenette") == []
    data = load_dataset("imagenette", resolution=16)
    assert data.spec.input_shape == (3, 16, 16)
    assert (data.num_train, data.num_test) == (6, 6)
    assert data.train_inputs.dtype == torch.uint8
    assert data.train_targets.tolist() == [0, 0, 1, 1, 2, 2]  # sorted WordNet ids
    base = data_root / "imagenette" / "imagenette2-160"
    first = base / "train" / WNIDS[0] / f"{WNIDS[0]}_0.JPEG"
    assert torch.equal(data.train_inputs[0], imagenet_subsets.decode(first, 16))
    batch, _ = next(data.batches("train", 6))
    assert batch.dtype == torch.float32
    assert abs(float(batch.mean())) < 3
    # a second load reads the cache, decoding nothing
    caches = sorted((data_root / "cache").iterdir())
    assert len(caches) == 2  # train and test
    monkeypatch.setattr(imagenet_subsets, "decode", lambda *a: pytest.fail("decoded again"))
    again = load_dataset("imagenette", resolution=16)
    assert torch.equal(again.train_inputs, data.train_inputs)
    # a changed image or another resolution builds a new cache
    monkeypatch.undo()
    monkeypatch.setenv("GROWBENCH_DATA", str(data_root))
    first.write_bytes(jpeg(999))
    os.utime(first, ns=(1, 1))
    changed = load_dataset("imagenette", resolution=16)
    assert not torch.equal(changed.train_inputs[0], data.train_inputs[0])
    assert load_dataset("imagenette", resolution=24).spec.input_shape == (3, 24, 24)
    assert len(list((data_root / "cache").iterdir())) == 5


def test_missing_imagenette_names_the_fetch_command(data_root):
    with pytest.raises(FileNotFoundError, match="growbench data fetch imagenette"):
        load_dataset("imagenette")
    with pytest.raises(FileNotFoundError, match="extract it there"):
        load_dataset("imagewoof", size="320px")
    with pytest.raises(ValueError, match="size must be one of"):
        load_dataset("imagenette", size="999px")


def test_tiny_imagenet_reads_val_annotations(tmp_path, data_root, accept):
    members = {"tiny-imagenet-200/wnids.txt": "\n".join(WNIDS).encode()}
    annotations = []
    for c, wnid in enumerate(WNIDS):
        for i in range(2):
            members[f"tiny-imagenet-200/train/{wnid}/images/{wnid}_{i}.JPEG"] = jpeg(c * 10 + i)
        name = f"val_{c}.JPEG"
        members[f"tiny-imagenet-200/val/images/{name}"] = jpeg(50 + c)
        annotations.append(f"{name}\t{WNIDS[2 - c]}\t0\t0\t10\t10")
    members["tiny-imagenet-200/val/val_annotations.txt"] = "\n".join(annotations).encode()
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    with zipfile.ZipFile(mirror / "tiny-imagenet-200.zip", "w") as zipped:
        for name, data in members.items():
            zipped.writestr(name, data)
    accept(mirror / "tiny-imagenet-200.zip")
    archives.fetch("tiny-imagenet", mirror=mirror.as_uri(), progress=False)
    data = load_dataset("tiny-imagenet")
    assert data.spec.input_shape == (3, 64, 64)
    assert data.spec.num_outputs == 200
    assert data.test_targets.tolist() == [2, 1, 0]  # from val_annotations.txt
    assert data.train_targets.tolist() == [0, 0, 1, 1, 2, 2]


def test_imagenet_subset_over_a_local_copy_with_a_class_list(tmp_path, data_root):
    root = tmp_path / "ilsvrc"
    for name, data in class_tree().items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    listing = tmp_path / "two.txt"
    listing.write_text(f"# two of the three classes\n{WNIDS[2]}\n{WNIDS[0]}\n")
    data = load_dataset("imagenet-subset", root=str(root), classes=str(listing), resolution=8)
    assert data.spec.num_outputs == 2
    assert data.train_targets.tolist() == [0, 0, 1, 1]  # WNIDS[0] first (sorted ids)
    assert data.spec.input_shape == (3, 8, 8)
    with pytest.raises(FileNotFoundError, match="no folder for class"):
        load_dataset("imagenet-subset", root=str(root))  # imagenet100's classes are not there
    with pytest.raises(FileNotFoundError, match="needs the dataset option root"):
        load_dataset("imagenet-subset")
    with pytest.raises(archives.DataError, match=r"cannot be downloaded.*registration"):
        archives.fetch("imagenet-subset")


def test_the_shipped_imagenet100_list_has_100_distinct_ids():
    ids = imagenet_subsets.class_list("imagenet100")
    assert len(ids) == 100
    assert all(i.startswith("n") and len(i) == 9 for i in ids)


def test_an_unreadable_image_is_named(tmp_path):
    path = Path(tmp_path / "broken.JPEG")
    path.write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=r"broken\.JPEG: not a readable image"):
        imagenet_subsets.decode(path, 16)
