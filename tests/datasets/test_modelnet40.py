"""ModelNet40 from a fixture zip in the official layout (seven HDF5 files of N × 2048 × 3 points
with N × 1 labels, shape_names.txt): fetched from a file:// mirror, each HDF5 file checked
against the published md5s (here the fixture's, through the test seam), loaded as PointNet
prepares it; a file with the wrong checksum and a malformed file each get one message."""

from __future__ import annotations

import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from growbench.datasets import archives, load_dataset, modelnet40

CLOUDS = 8  # clouds per HDF5 file


def write_zip(folder: Path, tamper: str | None = None) -> tuple[Path, dict[str, bytes]]:
    """The archive and the bytes of each of its HDF5 files."""
    rng = np.random.default_rng(0)
    files = {}
    for index, name in enumerate([*modelnet40.TRAIN, *modelnet40.TEST]):
        path = folder / name
        folder.mkdir(parents=True, exist_ok=True)
        with h5py.File(path, "w") as handle:
            handle["data"] = rng.standard_normal((CLOUDS, 2048, 3)).astype(np.float32)
            handle["label"] = ((np.arange(CLOUDS) + 5 * index) % 40).astype(np.uint8)[:, None]
        files[name] = path.read_bytes()
        path.unlink()
    archive = folder / "modelnet40_ply_hdf5_2048.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for name, data in files.items():
            zipped.writestr(f"{modelnet40.FOLDER}/{name}", data)
        names = "\n".join(f"class{i}" for i in range(40))
        zipped.writestr(f"{modelnet40.FOLDER}/shape_names.txt", names)
        if tamper:
            zipped.writestr(tamper, b"x")
    return archive, files


@pytest.fixture
def mirror(tmp_path, accept):
    archive, files = write_zip(tmp_path / "mirror")
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        accept(tmp_path / name, f"{modelnet40.FOLDER}/{name}")
    return archive.parent


def test_fetch_verify_and_load_as_pointnet_prepares_it(tmp_path, mirror):
    root = tmp_path / "data"
    folder = archives.fetch("modelnet40", root, mirror.as_uri(), progress=False)
    assert archives.verify("modelnet40", root) == []
    data = load_dataset("modelnet40", root=str(folder))
    assert data.spec.input_shape == (1024, 3)
    assert data.spec.num_outputs == 40
    assert (data.num_train, data.num_test) == (5 * CLOUDS, 2 * CLOUDS)
    with h5py.File(folder / modelnet40.FOLDER / "ply_data_train0.h5") as handle:
        first = torch.from_numpy(handle["data"][0, :1024])
    assert torch.equal(data.train_inputs[0], first)  # the first 1,024 points, as stored
    small = load_dataset("modelnet40", root=str(folder), points=256, test_subset=4)
    assert small.spec.input_shape == (256, 3)
    assert small.num_test == 4
    with pytest.raises(ValueError, match=r"points must be in 1\.\.2048"):
        load_dataset("modelnet40", root=str(folder), points=4096)


def test_an_hdf5_file_with_the_wrong_checksum_is_an_error(tmp_path, accept):
    archive, _ = write_zip(tmp_path / "mirror")  # its files' checksums are not accepted
    with pytest.raises(archives.DataError, match=r"wrong checksum.*not the official one"):
        archives.fetch("modelnet40", tmp_path / "data", archive.parent.as_uri(), progress=False)


def test_a_zip_member_outside_the_target_is_refused(tmp_path, accept):
    archive, _ = write_zip(tmp_path / "mirror", tamper="../../escape.txt")
    with pytest.raises(archives.DataError, match="outside"):
        archives.fetch("modelnet40", tmp_path / "data", archive.parent.as_uri(), progress=False)
    assert not (tmp_path / "escape.txt").exists()


def test_a_malformed_hdf5_file_gets_one_message(tmp_path):
    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as handle:
        handle["points"] = np.zeros((2, 3))
    with pytest.raises(ValueError, match="not an official ModelNet40 HDF5 file"):
        modelnet40.read_clouds([path], 1024)
