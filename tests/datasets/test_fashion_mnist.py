"""Fashion-MNIST: the IDX reader on hand-written fixtures, the search order, errors, subsets."""

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from growbench.datasets import fashion_mnist, load_dataset
from growbench.datasets.idx import read_idx
from tests.datasets.helpers import NEEDS_DEBIAN_FASHION_MNIST

NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def write_idx(path: Path, array: np.ndarray, magic: int | None = None) -> None:
    """The IDX format written by hand: big-endian magic (0x08 = unsigned bytes, then the number
    of dimensions), each dimension as a big-endian uint32, then the bytes."""
    magic = (0x08 << 8 | array.ndim) if magic is None else magic
    data = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    data += array.astype(np.uint8).tobytes()
    if path.name.endswith(".gz"):
        data = gzip.compress(data)
    path.write_bytes(data)


def make_files(directory: Path, n_train: int, n_test: int = 10, gz: bool = False) -> dict:
    """Random tiny Fashion-MNIST files in ``directory``; returns split -> (images, labels)."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(n_train)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        suffix = ".gz" if gz else ""
        write_idx(directory / (NAMES[split][0] + suffix), images)
        write_idx(directory / (NAMES[split][1] + suffix), labels)
        arrays[split] = (images, labels)
    return arrays


@pytest.fixture
def no_installed_data(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Hide the Debian files, $GROWBENCH_DATA and ~/.cache/growbench; returns an empty dir."""
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "no-debian")
    monkeypatch.setenv("GROWBENCH_DATA", str(empty))
    monkeypatch.setenv("HOME", str(empty))
    return empty


def assert_matches(data, arrays: dict) -> None:
    """The loaded dataset holds exactly these arrays, standardised with train statistics."""
    train_images = torch.from_numpy(arrays["train"][0]).float()
    mean, std = train_images.mean(), train_images.std()
    for split, inputs, targets in [
        ("train", data.train_inputs, data.train_targets),
        ("test", data.test_inputs, data.test_targets),
    ]:
        images, labels = arrays[split]
        expected = (torch.from_numpy(images).float()[:, None] - mean) / std
        assert inputs.shape == (len(images), 1, 28, 28)
        assert torch.allclose(inputs, expected, atol=1e-5)
        assert torch.equal(targets, torch.from_numpy(labels).long())


@pytest.mark.parametrize("gz", [False, True])
def test_loads_from_growbench_data(no_installed_data: Path, tmp_path: Path, gz: bool) -> None:
    arrays = make_files(no_installed_data / "fashion-mnist", n_train=20, gz=gz)
    assert_matches(load_dataset("fashion-mnist"), arrays)


@pytest.mark.parametrize("gz", [False, True])
def test_loads_from_root(no_installed_data: Path, tmp_path: Path, gz: bool) -> None:
    arrays = make_files(tmp_path / "mine", n_train=30, gz=gz)
    assert_matches(load_dataset("fashion-mnist", root=str(tmp_path / "mine")), arrays)


def test_loads_torchvision_layout_from_growbench_data(no_installed_data: Path) -> None:
    arrays = make_files(no_installed_data / "FashionMNIST" / "raw", n_train=12)
    assert_matches(load_dataset("fashion-mnist"), arrays)


def test_loads_torchvision_layout_from_cache(no_installed_data: Path) -> None:
    # HOME is the empty dir, so ~/.cache/growbench is under it
    arrays = make_files(no_installed_data / ".cache" / "growbench" / "FashionMNIST" / "raw", 14)
    assert_matches(load_dataset("fashion-mnist"), arrays)


def test_search_order(
    no_installed_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    debian = make_files(tmp_path / "debian", n_train=11)
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "debian")
    assert_matches(load_dataset("fashion-mnist"), debian)
    env = make_files(no_installed_data / "fashion-mnist", n_train=13)
    assert_matches(load_dataset("fashion-mnist"), env)
    root = make_files(tmp_path / "root", n_train=15)
    assert_matches(load_dataset("fashion-mnist", root=str(tmp_path / "root")), root)


def test_mixed_plain_and_gzipped_files(no_installed_data: Path, tmp_path: Path) -> None:
    arrays = make_files(tmp_path / "mixed", n_train=20, gz=True)
    images = tmp_path / "mixed" / (NAMES["train"][0] + ".gz")
    images.with_suffix("").write_bytes(gzip.decompress(images.read_bytes()))
    images.unlink()
    assert_matches(load_dataset("fashion-mnist", root=str(tmp_path / "mixed")), arrays)


def test_missing_files_say_how_to_get_them(no_installed_data: Path) -> None:
    partial = no_installed_data / "fashion-mnist"
    make_files(partial, n_train=10)
    (partial / NAMES["test"][1]).unlink()  # three of four files are not enough
    with pytest.raises(FileNotFoundError) as error:
        load_dataset("fashion-mnist", root=str(no_installed_data))
    message = str(error.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert "download" in message
    assert str(partial) in message  # says where it looked


def test_download_fetches_into_root_then_reads(
    no_installed_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def fake_download(root: Path) -> Path:
        calls.append(root)
        make_files(root / "FashionMNIST" / "raw", n_train=16)
        return root / "FashionMNIST" / "raw"

    monkeypatch.setattr(fashion_mnist, "_download", fake_download)
    with pytest.raises(FileNotFoundError):
        load_dataset("fashion-mnist")
    assert calls == []
    data = load_dataset("fashion-mnist", root=str(tmp_path / "dl"), download=True)
    assert calls == [tmp_path / "dl"]
    assert data.num_train == 16
    load_dataset("fashion-mnist", download=True)
    assert calls == [tmp_path / "dl", no_installed_data]  # $GROWBENCH_DATA when no root


def test_bad_magic_is_a_clear_error(tmp_path: Path) -> None:
    make_files(tmp_path, n_train=10)
    labels = np.zeros(10, dtype=np.uint8)
    write_idx(tmp_path / NAMES["train"][0], labels)  # a label file where images belong
    with pytest.raises(ValueError, match=r"bad IDX magic number 0x00000801, expected 0x00000803"):
        load_dataset("fashion-mnist", root=str(tmp_path))


def test_size_mismatch_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "images"
    write_idx(path, np.zeros((3, 28, 28), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(ValueError, match=r"shape \(3, 28, 28\) \(2352 bytes.*2347 bytes"):
        read_idx(path, 3)
    path.write_bytes(b"\x00\x00")
    with pytest.raises(ValueError, match="too short"):
        read_idx(path, 3)


def test_count_mismatch_is_a_clear_error(tmp_path: Path) -> None:
    make_files(tmp_path, n_train=10)
    write_idx(tmp_path / NAMES["train"][1], np.zeros(9, dtype=np.uint8))
    with pytest.raises(ValueError, match=r"10 images but .* 9 labels"):
        load_dataset("fashion-mnist", root=str(tmp_path))


def test_subset_options(tmp_path: Path) -> None:
    arrays = make_files(tmp_path, n_train=100, n_test=50)
    data = load_dataset("fashion-mnist", root=str(tmp_path), train_subset=30, test_subset=20)
    assert (data.num_train, data.num_test) == (30, 20)
    assert data.train_targets.bincount().tolist() == [3] * 10
    assert data.test_targets.bincount().tolist() == [2] * 10
    again = load_dataset("fashion-mnist", root=str(tmp_path), train_subset=30, test_subset=20)
    assert torch.equal(data.train_inputs, again.train_inputs)
    # the kept samples are real ones: undo the (subset's) standardisation and find them
    raw = arrays["train"][0].reshape(100, -1)
    kept = data.train_inputs.reshape(30, -1)
    kept = (kept - kept.min()) / (kept.max() - kept.min()) * (raw.max() - raw.min()) + raw.min()
    rows = {row.tobytes() for row in raw}
    assert all(np.rint(row).astype(np.uint8).tobytes() in rows for row in kept.numpy())


def test_balanced_subset() -> None:
    labels = np.repeat(np.arange(3), [50, 30, 5])
    small = fashion_mnist.balanced_subset(labels, 12, seed=0)
    assert np.bincount(labels[small]).tolist() == [4, 4, 4]
    larger = fashion_mnist.balanced_subset(labels, 40, seed=0)
    assert np.bincount(labels[larger]).tolist() == [18, 17, 5]  # class 2 runs out
    assert set(small) <= set(larger)
    assert len(set(larger)) == 40
    assert np.array_equal(fashion_mnist.balanced_subset(labels, 40, seed=0), larger)
    assert not np.array_equal(fashion_mnist.balanced_subset(labels, 40, seed=1), larger)
    assert np.array_equal(fashion_mnist.balanced_subset(labels, 500, seed=0), np.arange(85))


@NEEDS_DEBIAN_FASHION_MNIST
def test_real_files_with_subsets() -> None:
    data = load_dataset("fashion-mnist", train_subset=2000, test_subset=500)
    assert (data.num_train, data.num_test) == (2000, 500)
    assert data.train_targets.bincount().tolist() == [200] * 10
    assert data.test_targets.bincount().tolist() == [50] * 10
    assert abs(data.train_inputs.mean().item()) < 1e-4
    assert abs(data.train_inputs.std().item() - 1) < 1e-4
