"""The runner: the training loop's arithmetic, the growth schedule, fairness between methods."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from growbench.benchmarks import runner
from growbench.benchmarks.runner import (
    CellObserver,
    NonFiniteLossError,
    growth_due,
    resolve_device,
    run_cell,
    train_one_epoch,
)
from growbench.benchmarks.suite import CellConfig, parse_suite
from growbench.nn.losses import classification_loss
from tests.benchmarks.conftest import TINY_SUITE


def tiny_cells(**replacements: str) -> dict[str, CellConfig]:
    text = TINY_SUITE
    for old, new in replacements.items():
        text = text.replace(old, new)
    return {cell.method: cell for cell in parse_suite(text).cells()}


def without_seconds(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in step.items() if not k.endswith("seconds")} for step in history]


def test_train_one_epoch_returns_mean_per_sample_loss_over_uneven_batches() -> None:
    torch.manual_seed(0)
    net = nn.Linear(3, 4)
    inputs, targets = torch.randn(10, 3), torch.randint(0, 4, (10,))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.0)  # weights stay put
    batches = [(inputs[i : i + 4], targets[i : i + 4]) for i in range(0, 10, 4)]  # 4, 4, 2
    seen = []
    loss = train_one_epoch(
        net, optimizer, batches, classification_loss, on_batch=lambda x, y: seen.append(len(y))
    )
    expected = classification_loss(net(inputs), targets).mean().item()
    assert loss == pytest.approx(expected, rel=1e-6)
    assert seen == [4, 4, 2]
    assert net.training


def test_train_one_epoch_needs_batches() -> None:
    net = nn.Linear(3, 4)
    with pytest.raises(ValueError, match="no batches"):
        train_one_epoch(net, torch.optim.SGD(net.parameters(), lr=0.1), [], classification_loss)


def test_growth_schedule_skips_the_last_epoch_and_stops_at_max_rounds() -> None:
    cell = tiny_cells(**{"epochs = 3": "epochs = 10", "every = 1": "every = 3"})["none"]
    assert [e for e in range(1, 11) if growth_due(cell, e, rounds_done=0)] == [1, 4, 7]
    assert not growth_due(cell, 4, rounds_done=2)  # max_rounds = 2
    last = tiny_cells(**{"max_rounds = 2": "max_rounds = 9"})["none"]
    assert [e for e in range(1, 4) if growth_due(last, e, rounds_done=0)] == [1, 2]


def test_devices() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda")


class Recorder(CellObserver):
    def __init__(self) -> None:
        self.info: dict = {}
        self.epochs: list[int] = []
        self.records: list[dict] = []

    def started(self, info: dict) -> None:
        self.info = info

    def epoch_done(self, epoch: int, metrics: dict[str, float]) -> None:
        self.epochs.append(epoch)

    def grew(self, record: dict) -> None:
        self.records.append(record)


def test_a_growing_cell_reports_and_stays_within_budget() -> None:
    observer = Recorder()
    result = run_cell(tiny_cells()["random-add"], observer=observer)
    params = [step["params"] for step in result.history]
    assert observer.epochs == [0, 1, 2, 3]
    assert "train_loss" not in result.history[0]
    assert params[0] == observer.info["start.params"]
    assert params[3] > params[2] > params[1] == params[0]  # grown after epochs 1 and 2
    assert max(params) <= observer.info["budget.limit"] == 2 * params[0]
    assert [r["epoch"] for r in observer.records] == [1, 2]
    assert observer.records == result.events
    assert all(isinstance(r["realised_loss_change"], float) for r in result.events)
    assert result.architecture["params"] == params[-1]
    assert result.history[-1]["growth_seconds"] > 0


def test_same_seed_same_start_data_and_statistics_for_every_method(monkeypatch) -> None:
    """Fairness: what differs between two methods' cells is the method, nothing else."""
    seen: dict[str, list] = {}
    real_train, real_loss = runner.train_one_epoch, runner.statistics_loss
    method = ""

    def spy_train(net, optimizer, batches, loss_fn, *rest):
        batches = list(batches)
        seen.setdefault(method, []).append(torch.cat([y for _, y in batches]).tolist())
        return real_train(net, optimizer, batches, loss_fn, *rest)

    def spy_loss(net, ctx):
        seen.setdefault(method, []).append(ctx.inputs.sum().item())
        return real_loss(net, ctx)

    monkeypatch.setattr(runner, "train_one_epoch", spy_train)
    monkeypatch.setattr(runner, "statistics_loss", spy_loss)
    results = {}
    for method, cell in tiny_cells(
        **{'["none", "random-add"]': '["none", "random-add", "static"]'}
    ).items():
        results[method] = run_cell(cell)
    none, grown, static = results["none"], results["random-add"], results["static"]
    assert seen["none"] == seen["random-add"] == seen["static"]
    assert none.history[0] == {**grown.history[0]}  # the same start net, evaluated alike
    assert none.history[1]["train_loss"] == grown.history[1]["train_loss"]  # growth is after it
    assert none.history[2]["train_loss"] != grown.history[2]["train_loss"]
    assert none.info["budget.limit"] == grown.info["budget.limit"] == static.info["budget.limit"]
    assert static.info["start.params"] > none.info["start.params"]


def test_a_cell_is_deterministic() -> None:
    cell = tiny_cells()["random-add"]
    first, second = run_cell(cell), run_cell(cell)
    assert without_seconds(first.history) == without_seconds(second.history)
    strip = [
        {k: v for k, v in e.items() if k not in ("seconds", "wall_seconds")} for e in first.events
    ]
    assert strip == [
        {k: v for k, v in e.items() if k not in ("seconds", "wall_seconds")} for e in second.events
    ]


def test_diverging_training_raises() -> None:
    cell = tiny_cells(**{"lr = 0.1": "lr = 1e30"})["none"]
    with pytest.raises(NonFiniteLossError, match=r"lower training\.lr"):
        run_cell(cell)


def test_reset_restarts_the_lr_schedule_after_growth() -> None:
    cells = tiny_cells(
        **{
            "batch_size = 32": 'batch_size = 32\nlr_schedule = "cosine"\n'
            'optimizer_after_growth = "reset"',
            "epochs = 3": "epochs = 4",
            "max_rounds = 2": "max_rounds = 1",
        }
    )
    lrs = [step["lr"] for step in run_cell(cells["random-add"]).history[1:]]
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[1] == pytest.approx(0.1)  # restarted after growing at the end of epoch 1
    assert lrs[2] == pytest.approx(0.1 * (1 + math.cos(math.pi / 3)) / 2)
    never_grown = [step["lr"] for step in run_cell(cells["none"]).history[1:]]
    assert never_grown[1] == pytest.approx(0.1 * (1 + math.cos(math.pi / 4)) / 2)
