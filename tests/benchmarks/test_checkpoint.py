"""Checkpoints: a cell stopped after any epoch and resumed from its saved state (through bytes,
loaded with ``weights_only=True``) ends with exactly the metrics of an uninterrupted run, for
every method and the training variants that keep state; the surgery log rebuilds grown zoo nets."""

from __future__ import annotations

import io
import math

import pytest
import torch

from growbench.benchmarks import checkpoint
from growbench.benchmarks.runner import CellObserver, run_cell
from growbench.benchmarks.suite import parse_suite
from growbench.methods import available_methods
from growbench.nn import ModelConfig, build_model
from growbench.nn.growable import insert_layer
from growbench.nn.zoo import available_models

SUITE = """
name = "resume"
epochs = 5
methods = {methods}
[training]
{training}
[growth]
stats_samples = 128
[[tasks]]
dataset = "spirals"
dataset_options = {{ n_train = 256, n_test = 128 }}
model = "mlp"
model_options = {{ widths = [6] }}
"""
BUILTINS = sorted(
    name for name, cls in available_methods().items() if cls.__module__.startswith("growbench.")
)


class Stop(Exception):
    """Stands for the runner being killed right after a checkpoint."""


class TakeCheckpoint(CellObserver):
    def __init__(self, at_epoch: int) -> None:
        self.at_epoch, self.state = at_epoch, None

    def checkpoint(self, epoch, grew, snapshot) -> None:
        if epoch == self.at_epoch:
            self.state = checkpoint.from_bytes(checkpoint.to_bytes(snapshot()))
            raise Stop


def untimed(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in step.items() if not k.endswith("_seconds")} for step in history]


def untimed_events(events: list[dict]) -> list[dict]:
    return [{k: v for k, v in e.items() if k not in ("seconds", "wall_seconds")} for e in events]


def same(a: list[dict[str, float]], b: list[dict[str, float]]) -> bool:
    def equal(x: float, y: float) -> bool:
        return x == y or (math.isnan(x) and math.isnan(y))

    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(equal(x[k], y[k]) for k in x) for x, y in zip(a, b)
    )


def resumed_equals_uninterrupted(text: str, at_epoch: int) -> None:
    for cell in parse_suite(text, "resume").cells():
        full = run_cell(cell)
        taker = TakeCheckpoint(at_epoch)
        with pytest.raises(Stop):
            run_cell(cell, observer=taker)
        resumed = run_cell(cell, resume=taker.state)
        assert same(untimed(resumed.history), untimed(full.history)), cell.label
        assert untimed_events(resumed.events) == untimed_events(full.events), cell.label
        assert resumed.architecture == full.architecture, cell.label


@pytest.mark.slow
@pytest.mark.parametrize("method", BUILTINS)
def test_every_method_resumes_bit_for_bit(method: str) -> None:
    text = SUITE.format(methods=[method], training="lr = 0.1")
    resumed_equals_uninterrupted(text, at_epoch=2)


@pytest.mark.parametrize(
    "training",
    [
        'optimizer = "adam"\nlr = 0.01\nlr_schedule = "cosine"',
        'lr_schedule = "multistep"\noptimizer_after_growth = "reset"',
        'schedule_span = "round"\noptimizer_after_growth = "reset"\nlr_schedule = "cosine"',
        'augmentation = "none"\nnesterov = true\nweight_decay = 1e-4',
    ],
)
def test_training_state_resumes_bit_for_bit(training: str) -> None:
    text = SUITE.format(methods=["random-split", "firefly"], training=training)
    resumed_equals_uninterrupted(text.replace("[growth]", "[growth]\nevery = 2"), at_epoch=3)


def test_depth_growth_resumes_bit_for_bit() -> None:
    text = SUITE.format(methods=["senn", "firefly"], training="lr = 0.1")
    text += "\n[method_options.firefly]\ndepth = true\n[method_options.senn]\ndepth = true\n"
    resumed_equals_uninterrupted(text, at_epoch=3)


def test_a_checkpoint_of_another_cell_is_refused() -> None:
    cells = parse_suite(SUITE.format(methods=["none", "static"], training=""), "r").cells()
    taker = TakeCheckpoint(1)
    with pytest.raises(Stop):
        run_cell(cells[0], observer=taker)
    with pytest.raises(checkpoint.CheckpointError, match="another configuration"):
        run_cell(cells[1], resume=taker.state)


def test_damaged_bytes_are_a_checkpoint_error() -> None:
    data = checkpoint.to_bytes({"epoch": 1})
    with pytest.raises(checkpoint.CheckpointError, match="not a readable checkpoint"):
        checkpoint.from_bytes(data[: len(data) // 2])
    buffer = io.BytesIO()
    torch.save({"epoch": 1}, buffer)
    with pytest.raises(checkpoint.CheckpointError, match="not a growbench checkpoint"):
        checkpoint.from_bytes(buffer.getvalue())


def test_a_grower_holding_an_object_cannot_be_checkpointed() -> None:
    grower = available_methods()["none"]()
    grower.cache = object()
    with pytest.raises(checkpoint.CheckpointError, match=r"\.cache is a object"):
        checkpoint.grower_state(grower)


@pytest.mark.parametrize("model", sorted(available_models()))
def test_the_surgery_log_rebuilds_a_grown_zoo_net(model: str) -> None:
    config = ModelConfig(model, **_shape(model))
    net = build_model(config, seed=0).double()
    generator = torch.Generator().manual_seed(0)
    for site in list(net.sites)[:3]:
        site.split([0], 0.01 * torch.randn(1, 2, site.fan_in_size, generator=generator),
                   torch.full((1, 2), 0.5))  # fmt: skip
        has_bias = site.producer.bias is not None
        site.add_units(
            torch.randn(2, site.fan_in_size - has_bias, generator=generator).double(),
            torch.randn(2, site.fan_out_size, generator=generator).double(),
        )
    with_slot = [site for site in net.sites if site.slot is not None]
    if with_slot:
        insert_layer(net, with_slot[0], init="zero-branch", generator=generator)
    net.pop_lineage()
    state = checkpoint.from_bytes(checkpoint.to_bytes({"net": checkpoint.net_state(net)}))
    rebuilt = build_model(config, seed=1).double()
    checkpoint.load_net_state(rebuilt, state["net"])
    assert rebuilt.widths() == net.widths()
    net.eval()
    rebuilt.eval()
    inputs = torch.randn(3, *config.input_shape, generator=generator).double()
    torch.testing.assert_close(rebuilt(inputs), net(inputs), rtol=0, atol=0)
    assert [n for n, _ in rebuilt.named_parameters()] == [n for n, _ in net.named_parameters()]


def _shape(model: str) -> dict:
    if model == "mlp":
        return {"input_shape": (5,), "num_outputs": 3}
    narrow = {} if model == "cnn" else {"width_multiplier": 1 / 32}
    if model == "pointnet":
        return {"input_shape": (8, 3), "num_outputs": 3, **narrow}
    return {"input_shape": (3, 32, 32), "num_outputs": 3, **narrow}
