"""Every registered dataset loads and matches its spec; names and options are checked clearly."""

import re
from pathlib import Path

import pytest
import torch

from growbench.datasets import (
    Dataset,
    dataset_names,
    dataset_options,
    dataset_spec,
    fashion_mnist,
    load_dataset,
)
from tests.datasets.helpers import NEEDS_DEBIAN_FASHION_MNIST

# name -> (train size, test size) with default options, as the descriptions document
SIZES = {
    "digits": (1437, 360),
    "fashion-mnist": (60000, 10000),
    "moons": (1000, 1000),
    "rational-teacher": (50, 1000),
    "spirals": (1000, 1000),
    "teacher-student": (1000, 1000),
}


# datasets whose files cannot be on this machine (their loaders are tested on fixtures)
FETCHED = (
    "cifar10", "cifar100", "imagenet-subset", "imagenette", "imagewoof", "modelnet40",
    "tiny-imagenet",
)  # fmt: skip


def test_names_are_the_documented_ones() -> None:
    assert dataset_names() == sorted([*SIZES, *FETCHED])


README = Path(__file__).parents[2] / "README.md"


def readme_dataset_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    (example,) = [block for block in blocks if "ENTRY = Entry(" in block]
    return example


def test_an_outside_dataset_plugs_in_through_the_entry_point(monkeypatch, tmp_path, capsys):
    """The README's example: listed by `growbench datasets`, runs in a suite; a broken plugin
    is a warning naming it."""
    from importlib.metadata import EntryPoint

    from growbench.benchmarks.runner import run_cell
    from growbench.benchmarks.suite import parse_suite
    from growbench.cli import main
    from growbench.datasets import registry

    (tmp_path / "my_data_plugin.py").write_text(readme_dataset_example())
    monkeypatch.syspath_prepend(str(tmp_path))
    group = registry.ENTRY_POINT_GROUP
    points = [
        EntryPoint("my-data", "my_data_plugin:ENTRY", group),
        EntryPoint("broken", "no_such_package.data:ENTRY", group),
        EntryPoint("digits", "my_data_plugin:ENTRY", group),  # wrong name: skipped with a warning
    ]
    monkeypatch.setattr(registry.DATASETS, "entry_points", lambda: points)
    with pytest.warns(RuntimeWarning) as caught:
        assert main(["datasets"]) == 0
    messages = " ".join(str(w.message) for w in caught)
    assert "'broken'" in messages
    assert "no_such_package" in messages
    assert "'digits'" in messages
    listing = capsys.readouterr().out
    assert "my-data" in listing
    assert "my-data options: count=40" in listing
    suite = parse_suite(
        """
name = "plugin-data"
epochs = 2
methods = ["none", "random-add"]
[growth]
first_epoch = 1
stats_samples = 8
[[tasks]]
dataset = "my-data"
dataset_options = { count = 60 }
model = "mlp"
model_options = { widths = [3] }
""",
        "plugin-data",
    )
    with pytest.warns(RuntimeWarning):
        results = [run_cell(cell, device="cpu") for cell in suite.cells()]
    assert len(results) == 2
    assert all(len(result.history) == 3 for result in results)


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=NEEDS_DEBIAN_FASHION_MNIST) if n == "fashion-mnist" else n
        for n in sorted(SIZES)
    ],
)
def test_every_dataset_loads_and_matches_its_spec(name: str) -> None:
    spec = dataset_spec(name)
    data = load_dataset(name)
    assert isinstance(data, Dataset)
    assert data.spec == spec
    assert (data.num_train, data.num_test) == SIZES[name]
    assert spec.name == name
    for line in (spec.description, spec.source):
        assert line
        assert "\n" not in line
    for inputs, targets in [
        (data.train_inputs, data.train_targets),
        (data.test_inputs, data.test_targets),
    ]:
        assert inputs.dtype == torch.float32
        assert inputs.shape[1:] == spec.input_shape
        assert torch.isfinite(inputs).all()
        assert targets.shape[0] == inputs.shape[0]
        if spec.task == "classification":
            assert targets.dtype == torch.int64
            assert targets.shape == (inputs.shape[0],)
            # classes in range, and every class actually occurs
            assert targets.unique().tolist() == list(range(spec.num_outputs))
        else:
            assert targets.dtype == torch.float32
            assert targets.shape == (inputs.shape[0], spec.num_outputs)
    if spec.task == "classification":  # standardised with the train split's statistics
        assert abs(data.train_inputs.mean().item()) < 1e-3
        assert data.train_inputs.std().item() == pytest.approx(1, abs=1e-3)


def test_spec_does_not_load_data(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "nowhere")
    monkeypatch.setenv("GROWBENCH_DATA", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert dataset_spec("fashion-mnist").input_shape == (1, 28, 28)
    with pytest.raises(FileNotFoundError):
        load_dataset("fashion-mnist")


def test_unknown_name_is_named_with_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="unknown dataset 'cifar'") as error:
        load_dataset("cifar")
    assert all(name in str(error.value) for name in SIZES)
    with pytest.raises(ValueError, match="'cifar'"):
        dataset_spec("cifar")


def test_unknown_option_is_named_with_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="no option 'n_trian'") as error:
        load_dataset("spirals", n_trian=10)
    assert all(f"{option}=" in str(error.value) for option in dataset_options("spirals"))
    with pytest.raises(ValueError, match=r"no option 'seed'.*none"):
        load_dataset("digits", seed=1)


def test_options_are_listed_with_defaults() -> None:
    assert dataset_options("teacher-student") == {
        "n_train": 1000,
        "n_test": 1000,
        "input_dim": 10,
        "hidden": 10,
        "output_dim": 10,
        "seed": 0,
    }
    assert set(dataset_options("fashion-mnist")) == {
        "root",
        "download",
        "train_subset",
        "test_subset",
    }
