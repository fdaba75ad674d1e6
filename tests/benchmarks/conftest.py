"""Tiny suites and throw-away MLflow stores for the harness tests.

Creating an MLflow sqlite store costs about two seconds (its schema migrations), so one empty
store is made per session and copied for each test that needs a fresh one. Suites are written
by the tests themselves: spirals with a few hundred points and a width-4 MLP, so a cell trains
in well under a second. Tests run with one torch thread, as ``growbench run`` does.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
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


def user_environment(**extra: str) -> dict[str, str]:
    """The environment a user's shell gives: warnings shown (``extra``'s PYTHONPATH goes in
    front of the one there is)."""
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    if "PYTHONPATH" in extra and environment.get("PYTHONPATH"):
        extra = {**extra, "PYTHONPATH": f"{extra['PYTHONPATH']}:{environment['PYTHONPATH']}"}
    return {**environment, **extra}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(folder: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """A real ``mlflow server`` on 127.0.0.1 with its store and artifacts in ``folder`` (the
    same folder again gives the same runs): its URI and process (the leader of the server's
    process group: ``os.killpg`` stops it with its workers), stopped at the end."""
    folder.mkdir(parents=True, exist_ok=True)
    mlflow = Path(sys.executable).parent / "mlflow"
    uri = f"http://127.0.0.1:{free_port()}"
    command = [str(mlflow), "server", "--host", "127.0.0.1", "--port", uri.rsplit(":", 1)[1]]
    command += ["--backend-store-uri", f"sqlite:///{folder}/server.db"]
    command += ["--artifacts-destination", str(folder / "artifacts"), "--workers", "1"]
    process = subprocess.Popen(  # its own process group: the server and its workers
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 120
    try:
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the mlflow server did not start") from None
                time.sleep(0.5)
        yield uri, process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
