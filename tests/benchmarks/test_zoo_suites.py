"""Every zoo model builds from a suite and runs end to end in the harness (one cell per method
family, tiny widths, two epochs with a growth round between) on synthetic data of the shapes the
papers' datasets have: 3×32×32 images and 16-point clouds."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from growbench.benchmarks.runner import run_cell
from growbench.benchmarks.suite import parse_suite
from growbench.datasets import registry as dataset_registry
from growbench.datasets.base import Dataset, DatasetSpec, Entry


@dataclass(frozen=True)
class NoOptions:
    pass


def _synthetic(name: str, shape: tuple[int, ...]) -> Entry:
    spec = DatasetSpec(name, "classification", shape, 3, "test only", "generated in the test")

    def load(options) -> Dataset:
        generator = torch.Generator().manual_seed(0)
        inputs = torch.randn(48, *shape, generator=generator)
        targets = torch.randint(0, 3, (48,), generator=generator)
        return Dataset(spec, inputs[:32], targets[:32], inputs[32:], targets[32:])

    return Entry(spec, NoOptions, load)


@pytest.fixture
def synthetic_data(monkeypatch):
    monkeypatch.setitem(
        dataset_registry.DATASETS.builtins, "images", _synthetic("images", (3, 32, 32))
    )
    monkeypatch.setitem(dataset_registry.DATASETS.builtins, "points", _synthetic("points", (16, 3)))


SUITE = """
name = "zoo"
epochs = 2
methods = ["none", "static", "random-split", "s2d", "tiny", "gradmax"]
[training]
batch_size = 16
[growth]
first_epoch = 1
stats_samples = 16
[method_options.tiny]
gamma_fixed = 0.1  # random labels: the held-out amplitude search rightly finds no gain (γ = 0)
[[tasks]]
dataset = "images"
model = "vgg"
model_options = { depth = 11, width_multiplier = 0.03125 }
[[tasks]]
dataset = "images"
model = "mobilenetv1"
model_options = { width_multiplier = 0.0625 }
[[tasks]]
dataset = "images"
model = "resnet18"
model_options = { width_multiplier = 0.0625, inner_ratio = 0.5 }
[[tasks]]
dataset = "points"
model = "pointnet"
model_options = { widths = [4, 4, 4, 8, 16, 8, 4] }
"""


def test_each_zoo_model_runs_from_a_suite(synthetic_data):
    suite = parse_suite(SUITE, "zoo")
    assert {task.model for task in suite.tasks} == {"vgg", "mobilenetv1", "resnet18", "pointnet"}
    for cell in suite.cells():
        result = run_cell(cell, device="cpu")
        assert len(result.history) == 3
        assert result.info["refused_sites"] == {}
        start, final = result.info["start.params"], result.final["params"]
        if cell.method in ("none", "static"):
            assert final == start
        else:
            assert result.events, cell.label
            assert final > start, cell.label
            assert final - start <= result.info["budget.limit"] - start + 1e-9
        assert result.final["macs"] * 2 == result.final["flops"]
        assert sorted(result.architecture["widths"]) == sorted(
            site["name"] for site in result.architecture["sites"]
        )


def test_model_options_are_part_of_the_config_hash(synthetic_data):
    suite = parse_suite(SUITE, "zoo")
    wider = parse_suite(SUITE.replace("depth = 11", "depth = 13"), "zoo")
    first, second = suite.cells()[0], wider.cells()[0]
    assert first.resolved()["model"]["options"]["depth"] == 11
    assert first.config_hash() != second.config_hash()
    assert list(first.resolved()["model"]["options"]["widths"]) == [2, 4, 8, 8, 16, 16, 16, 16]
