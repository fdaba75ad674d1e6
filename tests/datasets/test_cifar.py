"""CIFAR-10/100 from fixture archives written in the official python-pickle format: fetched from
a ``file://`` mirror and from a loopback HTTP server (resuming a partial download), verified,
extracted and loaded; and one clear message for a corrupted, truncated or wrongly checksummed
archive, a member outside the target, a link, a tampered batch, and missing data."""

from __future__ import annotations

import http.server
import io
import pickle
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from growbench.cli import main
from growbench.datasets import archives, cifar, load_dataset

from .conftest import md5 as _md5

PER_CLASS = 3  # images per class in each fixture batch


def _batch(labels_key: str, classes: int, seed: int, extra: dict | None = None) -> bytes:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), PER_CLASS)
    batch = {
        b"batch_label": b"fixture batch",
        labels_key.encode(): labels.tolist(),
        b"data": rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))],
        **(extra or {}),
    }
    return pickle.dumps(batch, protocol=2)


def write_archive(folder: Path, name: str) -> Path:
    """The official archive of ``name`` (layout, file names, pickled dicts) at fixture size."""
    layout = cifar.LAYOUTS[name]
    files: dict[str, bytes] = {}
    if name == "cifar10":
        for index, file in enumerate(layout.files):
            files[file] = _batch("labels", 10, index)
        files["batches.meta"] = pickle.dumps({b"label_names": [b"c%d" % i for i in range(10)]})
    else:
        for index, file in enumerate(layout.files):
            coarse = {b"coarse_labels": (np.repeat(np.arange(100), PER_CLASS) // 5).tolist()}
            files[file] = _batch("fine_labels", 100, index, coarse)
        files["meta"] = pickle.dumps({b"fine_label_names": [b"f%d" % i for i in range(100)]})
    path = folder / archives.source(name).archives[0].filename
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for file, data in files.items():
            info = tarfile.TarInfo(f"{layout.folder}/{file}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def mirror(tmp_path, accept):
    """A file:// mirror holding both fixture archives, their checksums (and their batch files')
    accepted."""
    folder = tmp_path / "mirror"
    for name in ("cifar10", "cifar100"):
        path = write_archive(folder, name)
        accept(path)
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                data = tar.extractfile(member).read()
                archives.CHECKSUMS.setdefault(member.name, set()).add(_md5(data))
    return folder


def test_fetch_from_a_file_mirror_verifies_extracts_and_loads(tmp_path, mirror):
    root = tmp_path / "data"
    folder = archives.fetch("cifar10", root, mirror.as_uri(), progress=False)
    assert (folder / "cifar-10-batches-py" / "data_batch_5").is_file()
    assert archives.verify("cifar10", root) == []
    data = load_dataset("cifar10", root=str(folder))
    assert data.spec.input_shape == (3, 32, 32)
    assert data.spec.num_outputs == 10
    assert (data.num_train, data.num_test) == (5 * 10 * PER_CLASS, 10 * PER_CLASS)
    assert data.train_inputs.dtype == torch.uint8  # stored as pixels, prepared per batch
    # batches are normalised with the published per-channel constants
    mean, std = (torch.tensor(v)[:, None, None] for v in cifar.NORMALISATION["cifar10"])
    raw = cifar.read_batch(folder / "cifar-10-batches-py" / "data_batch_1", b"labels")[0]
    first, _ = next(data.batches("train", 4))
    assert first.dtype == torch.float32
    assert torch.allclose(first[0], (torch.from_numpy(raw[0]).float() / 255 - mean) / std)
    assert torch.equal(data.train_targets[: 10 * PER_CLASS], torch.arange(10).repeat_interleave(3))
    # fetching again downloads and extracts nothing
    (mirror / "cifar-10-python.tar.gz").unlink()
    assert archives.fetch("cifar10", root, mirror.as_uri(), progress=False) == folder


def test_cifar100_fine_and_coarse_labels_and_subsets(tmp_path, mirror):
    folder = archives.fetch("cifar100", tmp_path / "data", mirror.as_uri(), progress=False)
    fine = load_dataset("cifar100", root=str(folder), train_subset=200)
    assert fine.spec.num_outputs == 100
    assert fine.num_train == 200
    assert torch.bincount(fine.train_targets, minlength=100).max() == 2  # class-balanced
    coarse = load_dataset("cifar100", root=str(folder), labels="coarse")
    assert coarse.spec.num_outputs == 20
    assert int(coarse.train_targets.max()) == 19
    with pytest.raises(ValueError, match="labels must be one of"):
        load_dataset("cifar100", root=str(folder), labels="medium")


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files, honouring ``Range: bytes=N-``; records the ranges asked for."""

    ranges: list[str] = []

    def do_GET(self):
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        asked = self.headers.get("Range")
        type(self).ranges.append(asked or "")
        start = int(asked.removeprefix("bytes=").rstrip("-")) if asked else 0
        self.send_response(206 if asked else 200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])

    def log_message(self, *args):
        pass


@pytest.fixture
def server(mirror):
    handler = lambda *a, **k: _RangeHandler(*a, directory=str(mirror), **k)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _RangeHandler.ranges = []
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_a_partial_download_resumes_over_http(tmp_path, mirror, server):
    root = tmp_path / "data"
    archive = (mirror / "cifar-10-python.tar.gz").read_bytes()
    folder = archives.dataset_dir("cifar10", root)
    folder.mkdir(parents=True)
    (folder / "cifar-10-python.tar.gz.part").write_bytes(archive[: len(archive) // 2])
    archives.fetch("cifar10", root, server, progress=False)
    assert _RangeHandler.ranges == [f"bytes={len(archive) // 2}-"]
    assert (folder / "cifar-10-python.tar.gz").read_bytes() == archive
    assert archives.verify("cifar10", root) == []


def test_a_corrupted_archive_is_deleted_with_one_message(tmp_path, mirror):
    bad = bytearray((mirror / "cifar-10-python.tar.gz").read_bytes())
    bad[100] ^= 0xFF
    (mirror / "cifar-10-python.tar.gz").write_bytes(bytes(bad))
    with pytest.raises(archives.DataError, match=r"checksum mismatch.*deleted: fetch again"):
        archives.fetch("cifar10", tmp_path / "data", mirror.as_uri(), progress=False)
    assert not (tmp_path / "data" / "cifar10" / "cifar-10-python.tar.gz").exists()


def test_a_wrong_checksum_on_disk_is_reported_by_verify(tmp_path, mirror):
    root = tmp_path / "data"
    archives.fetch("cifar10", root, mirror.as_uri(), progress=False)
    batch = archives.dataset_dir("cifar10", root) / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(batch.read_bytes()[:-10])
    problems = archives.verify("cifar10", root)
    assert problems == [f"cifar-10-batches-py/test_batch: md5 {_md5(batch.read_bytes())}, "
                        f"expected {dict(cifar.CIFAR10.test_list)['test_batch']}"]  # fmt: skip


def test_a_truncated_archive_gets_one_message(tmp_path, accept):
    path = write_archive(tmp_path / "mirror", "cifar10")
    path.write_bytes(path.read_bytes()[:-200])
    accept(path)  # even with its checksum accepted, the archive cannot be read
    with pytest.raises(archives.DataError, match="truncated or corrupt"):
        archives.fetch("cifar10", tmp_path / "data", (tmp_path / "mirror").as_uri(), False)


@pytest.mark.parametrize(
    ("member", "message"),
    [("../outside.txt", "outside"), ("/etc/passwd", "outside"), ("link", "is a link")],
)
def test_members_outside_the_target_and_links_are_refused(tmp_path, accept, member, message):
    path = tmp_path / "mirror" / "cifar-10-python.tar.gz"
    path.parent.mkdir()
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(member)
        if member == "link":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
        else:
            info.size = 2
            tar.addfile(info, io.BytesIO(b"hi"))
    accept(path)
    with pytest.raises(archives.DataError, match=message):
        archives.fetch("cifar10", tmp_path / "data", path.parent.as_uri(), progress=False)
    assert not (tmp_path / "outside.txt").exists()


def test_a_batch_that_would_run_code_is_refused(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "evil").write_bytes(pickle.dumps({b"data": print}))
    with pytest.raises(ValueError, match="not an official CIFAR batch"):
        cifar.read_batch(folder / "evil", b"labels")


def test_missing_data_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("GROWBENCH_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="growbench data fetch cifar10"):
        load_dataset("cifar10")


def test_the_data_commands(tmp_path, mirror, capsys):
    root = str(tmp_path / "data")
    assert main(["data", "verify", "cifar10", "--root", root]) == 1
    assert "not downloaded" in capsys.readouterr().out
    assert main(["data", "fetch", "cifar10", "--root", root, "--mirror", mirror.as_uri()]) == 0
    assert main(["data", "verify", "cifar10", "--root", root]) == 0
    assert "published checksum" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "fetch", "no-such-data"])
    assert exit_info.value.code == 2
    assert "no archive is known" in capsys.readouterr().err
