"""What a newcomer meets first: the version, the packaged suites named in ``run --help``, a fetch
that fails offline without leaving an empty folder or naming what cannot be fetched, and a paper
suite rehearsed end to end on synthetic data of its real shapes (no download)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import growbench
from growbench.benchmarks.executor import run_suite
from growbench.benchmarks.suite import load_suite, packaged_suites
from growbench.datasets import archives, dataset_spec, load_dataset
from growbench.datasets.archives import DataError


def growbench_command(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "growbench.cli", *args], capture_output=True, text=True
    )


def test_version_and_the_packaged_suites_in_run_help() -> None:
    version = growbench_command("--version")
    assert version.returncode == 0
    assert version.stdout.strip() == f"growbench {growbench.__version__}"
    helped = growbench_command("run", "--help")
    text = re.sub(r"-\s+", "-", " ".join(helped.stdout.split()))  # argparse wraps at hyphens
    for name in packaged_suites():
        assert name in text, name


def test_a_failed_fetch_leaves_no_empty_folder(tmp_path: Path) -> None:
    empty_mirror = tmp_path / "mirror"
    empty_mirror.mkdir()
    with pytest.raises(DataError, match="Check that the mirror"):
        archives.fetch("cifar10", tmp_path / "data", empty_mirror.as_uri(), progress=False)
    assert not (tmp_path / "data" / "cifar10").exists()


def test_the_fetchable_names_leave_out_what_cannot_be_downloaded() -> None:
    with pytest.raises(DataError, match="takes one of") as refused:
        archives.source("nope")
    assert "cifar10" in str(refused.value)
    assert "imagenet-subset" not in str(refused.value)  # it is made by hand, never fetched


def test_synthetic_data_has_the_real_shapes_and_options() -> None:
    cifar = load_dataset("synthetic:cifar10", train_subset=64, test_subset=32)
    assert cifar.train_inputs.shape == (64, 3, 32, 32)
    assert cifar.train_inputs.dtype == torch.uint8
    assert cifar.test_targets.shape == (32,)
    assert int(cifar.train_targets.max()) < 10
    imagenette = load_dataset("synthetic:imagenette", resolution=40, train_subset=8)
    assert imagenette.train_inputs.shape[1:] == (3, 40, 40)
    points = load_dataset("synthetic:modelnet40", train_subset=8, test_subset=4)
    assert points.spec.input_shape == dataset_spec("modelnet40").input_shape
    with pytest.raises(ValueError, match="unknown dataset 'nope'"):
        load_dataset("synthetic:nope")


def test_a_paper_suite_runs_end_to_end_on_synthetic_data(store) -> None:
    suite = load_suite("s2d-cifar10").select(["none", "s2d"], None, 1).smoke().synthetic()
    assert suite.name == "s2d-cifar10-smoke-synthetic"
    assert all(task.dataset.startswith("synthetic:") for task in suite.tasks)
    outcome = run_suite(suite, store, "cpu")
    assert outcome.failed == []
    assert len(outcome.finished) == len(suite.cells())
