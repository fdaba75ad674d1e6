"""The ``growbench`` command: user errors are one line and exit 2, dry runs write nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from growbench import cli
from growbench.cli import main
from growbench.datasets import dataset_names
from growbench.methods import available_methods
from tests.benchmarks.conftest import TINY_SUITE


def error_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "Traceback" not in err
    assert err.startswith("growbench: error: ")
    return err


def test_missing_suite_file(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    err = error_line(capsys, ["run", "--suite", str(tmp_path / "nope.toml")])
    assert "nope.toml" in err
    assert "default" in err  # the packaged suites it could have meant
    assert list(tmp_path.iterdir()) == []


def test_bad_suite_writes_nothing(write_suite, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    path = write_suite(TINY_SUITE.replace('"none"', '"nonee"'))
    err = error_line(capsys, ["run", "--suite", str(path)])
    assert "methods[0]: unknown method 'nonee'" in err
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.toml"]  # no mlflow.db, no mlartifacts


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--methods", "static"], "--methods: 'static'"),
        (["--datasets", "digits"], "--datasets: 'digits'"),
        (["--device", "tpu"], "unknown device 'tpu'"),
    ],
)
def test_bad_options(write_suite, tmp_path, capsys, options, message) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    path = write_suite()
    err = error_line(capsys, ["run", "--suite", str(path), "--tracking-uri", uri, *options])
    assert message in err
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_a_user_error(write_suite, tmp_path, capsys) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    argv = ["run", "--suite", str(write_suite()), "--tracking-uri", uri, "--device", "cuda"]
    assert "no CUDA device" in error_line(capsys, argv)
    assert not (tmp_path / "mlflow.db").exists()


def test_run_dry_run_and_rerun(write_suite, tmp_path, capsys) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    base = ["run", "--suite", str(write_suite()), "--tracking-uri", uri, "--device", "cpu"]
    assert main([*base, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "todo         spirals-mlp/none/seed0" in out
    assert "todo         spirals-mlp/random-add/seed0" in out
    assert not (tmp_path / "mlflow.db").exists()

    assert main([*base, "--methods", "none"]) == 0
    out = capsys.readouterr().out
    assert "1 cells trained" in out
    assert "spirals-mlp: accuracy % (params)" in out
    assert "none" in out

    assert main([*base, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "done         spirals-mlp/none/seed0" in out
    assert "todo         spirals-mlp/random-add/seed0" in out


def test_models_lists_the_zoo_with_options(capsys) -> None:
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("mlp", "cnn", "vgg", "mobilenetv1", "resnet18", "pointnet"):
        assert f"\n{name}\n" in f"\n{out}"
    assert "depth=11" in out
    assert "inner_ratio=1.0" in out
    assert "input_transform=False" in out


def test_methods_lists_every_method_with_options(capsys) -> None:
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name, cls in available_methods().items():
        assert f"{name}  (preserves function: {cls.preserves_function})" in out
    assert "growth_ratio=0.3" in out


def test_datasets_lists_every_dataset(capsys) -> None:
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    for name in dataset_names():
        assert f"\n{name} " in out
    assert "classification" in out
    assert "regression" in out


def test_ui_execs_mlflow_on_localhost(monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(cli.os, "execvp", lambda program, argv: calls.append(argv))
    main(["ui", "--port", "5123", "--tracking-uri", "sqlite:///somewhere.db"])
    (argv,) = calls
    assert argv[1:] == [
        "ui",
        "--backend-store-uri",
        "sqlite:///somewhere.db",
        "--host",
        "127.0.0.1",
        "--port",
        "5123",
    ]


def test_ui_prints_the_runs_table_of_each_suite(monkeypatch, store, capsys) -> None:
    from growbench.benchmarks.suite import parse_suite
    from growbench.benchmarks.tracking import SuiteTracker
    from tests.benchmarks.conftest import TINY_SUITE

    tracker = SuiteTracker(store, parse_suite(TINY_SUITE, "tiny"), "cpu")
    tracker.open()
    monkeypatch.setattr(cli.os, "execvp", lambda program, argv: None)
    main(["ui", "--port", "5123", "--tracking-uri", store])
    err = capsys.readouterr().err
    page = f"#/experiments/{tracker.experiment_id}/runs?workflowType=machine_learning"
    assert f"growbench:tiny: http://127.0.0.1:5123/{page}" in err
