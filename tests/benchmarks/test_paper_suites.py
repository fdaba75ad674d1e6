"""Every packaged paper suite runs end to end at smoke scale (``Suite.smoke``: one seed, two
epochs with a growth round, 64 training samples, narrow nets) on fixture data written in the
official formats, through the real loaders, so no suite can rot."""

from __future__ import annotations

import tarfile
import zipfile

import pytest

from growbench.benchmarks.runner import run_cell
from growbench.benchmarks.suite import PAPER_SUITES, load_suite
from tests.datasets.test_cifar import write_archive
from tests.datasets.test_imagenet_subsets import jpeg
from tests.datasets.test_modelnet40 import write_zip

IMAGENETTE_CLASSES = [f"n0{index:07d}" for index in range(10)]


@pytest.fixture(scope="module")
def fixture_data(tmp_path_factory):
    """A data root holding fixture CIFAR-10/100, ModelNet40 and Imagenette (320 px) where the
    loaders look for them."""
    root = tmp_path_factory.mktemp("data")
    archives_dir = tmp_path_factory.mktemp("archives")
    for name in ("cifar10", "cifar100"):
        with tarfile.open(write_archive(archives_dir, name)) as tar:
            tar.extractall(root / name, filter="data")
    archive, _ = write_zip(archives_dir / "modelnet")
    with zipfile.ZipFile(archive) as zipped:
        zipped.extractall(root / "modelnet40")
    base = root / "imagenette-320px" / "imagenette2-320"
    for split, count in (("train", 7), ("val", 4)):
        for c, wnid in enumerate(IMAGENETTE_CLASSES):
            folder = base / split / wnid
            folder.mkdir(parents=True)
            for i in range(count):
                (folder / f"{i}.JPEG").write_bytes(jpeg(100 * c + i, 60, 80))
    return root


@pytest.mark.parametrize("name", PAPER_SUITES)
def test_paper_suite_runs_at_smoke_scale(name, fixture_data, monkeypatch):
    monkeypatch.setenv("GROWBENCH_DATA", str(fixture_data))
    suite = load_suite(name)
    assert suite.description
    smoke = suite.smoke()
    assert smoke.name == f"{name}-smoke"
    assert set(smoke.methods) == set(suite.methods)
    for cell in smoke.cells():
        assert cell.task.epochs == 2
        result = run_cell(cell)
        assert len(result.history) == 3, cell.label
        assert len(result.events) == 1, cell.label
        if cell.method not in ("none", "static"):
            assert result.events[0]["units_added"] or result.events[0]["stop_reason"], cell.label


def test_dry_run_lists_the_smoke_cells_and_the_data_they_need(fixture_data, monkeypatch, capsys):
    from growbench.cli import main

    monkeypatch.setenv("GROWBENCH_DATA", str(fixture_data))
    uri = f"sqlite:///{fixture_data / 'never-written.db'}"
    assert (
        main(["run", "--suite", "tiny-cifar100", "--smoke", "--dry-run", "--tracking-uri", uri])
        == 0
    )
    out = capsys.readouterr().out
    assert "suite tiny-cifar100-smoke: 5 cells" in out
    assert "ready    cifar100" in out
    assert not (fixture_data / "never-written.db").exists()
    monkeypatch.setenv("GROWBENCH_DATA", str(fixture_data / "empty"))
    assert main(["run", "--suite", "s2d-cifar10", "--dry-run", "--tracking-uri", uri]) == 0
    assert "MISSING  cifar10" in capsys.readouterr().out
