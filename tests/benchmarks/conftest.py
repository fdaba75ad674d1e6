"""Tiny suites and throw-away MLflow stores for the harness tests.

Creating an MLflow sqlite store costs about two seconds (its schema migrations), so one empty
store is made per session and copied for each test that needs a fresh one. Suites are written
by the tests themselves: spirals with a few hundred points and a width-4 MLP, so a cell trains
in well under a second. Tests run with one torch thread, as ``growbench run`` does.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient

from growbench.benchmarks.runner import cpu_threads

TINY_SUITE = """
name = "tiny"
seeds = 1
epochs = 3
methods = ["none", "random-add"]

[training]
lr = 0.1
batch_size = 32

[growth]
first_epoch = 1
every = 1
max_rounds = 2
stats_samples = 64

[budget]
factor = 2.0

[[tasks]]
dataset = "spirals"
model = "mlp"
model_options = { widths = [4] }
dataset_options = { n_train = 200, n_test = 100 }
"""


@pytest.fixture(autouse=True)
def one_cpu_thread() -> Iterator[None]:
    """As ``growbench run`` does: on a busy 2-core machine two threads are far slower."""
    with cpu_threads(1):
        yield


@pytest.fixture(scope="session")
def empty_store_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()  # creates the schema
    return path


@pytest.fixture
def store(tmp_path: Path, empty_store_file: Path) -> str:
    """A fresh, empty sqlite store in this test's tmp_path."""
    shutil.copy(empty_store_file, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path}/mlflow.db"


@pytest.fixture
def write_suite(tmp_path: Path) -> Callable[[str, str], Path]:
    """Write suite text to ``tmp_path/<name>.toml`` and return its path."""

    def write(text: str = TINY_SUITE, name: str = "tiny") -> Path:
        path = tmp_path / f"{name}.toml"
        path.write_text(text)
        return path

    return write
