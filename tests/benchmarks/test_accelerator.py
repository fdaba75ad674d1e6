"""The GPU training path, run on the CPU: augmentation in the harness (seeded, the same for every
method, not in evaluation), bf16/fp16 autocast with a grad scaler, channels-last through growth,
multistep schedules over per-round spans, and where the data lives."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from growbench.benchmarks import accelerator
from growbench.benchmarks import runner as runner_module
from growbench.benchmarks.runner import run_cell
from growbench.benchmarks.suite import SuiteError, parse_suite
from growbench.datasets import registry as dataset_registry
from growbench.datasets.base import Dataset, DatasetSpec, Entry


@dataclass(frozen=True)
class NoOptions:
    pass


def _pixels() -> Entry:
    spec = DatasetSpec("pixels", "classification", (3, 32, 32), 3, "test only", "the test")

    def load(options) -> Dataset:
        generator = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (40, 3, 32, 32), generator=generator, dtype=torch.uint8)
        labels = torch.randint(0, 3, (40,), generator=generator)
        normalization = ((0.5, 0.4, 0.3), (0.25, 0.2, 0.3))
        return Dataset(spec, images[:32], labels[:32], images[32:], labels[32:], normalization)

    return Entry(spec, NoOptions, load)


@pytest.fixture(autouse=True)
def pixels(monkeypatch):
    monkeypatch.setitem(dataset_registry.DATASETS.builtins, "pixels", _pixels())


def suite(training: str = "", methods: str = '["none", "random-add"]', epochs: int = 3):
    return parse_suite(
        f"""
name = "gpu-path"
epochs = {epochs}
methods = {methods}
[training]
batch_size = 8
{training}
[growth]
first_epoch = 1
stats_samples = 8
[[tasks]]
dataset = "pixels"
model = "vgg"
model_options = {{ depth = 11, width_multiplier = 0.03125 }}
""",
        "gpu-path",
    )


def test_augmented_batches_are_seeded_the_same_for_every_method_and_not_evaluated(monkeypatch):
    seen: dict[str, list] = {}
    real_train, real_evaluate = runner_module.train_one_epoch, runner_module.evaluate
    method = ""

    def spy_train(net, optimizer, batches, *rest):
        batches = list(batches)
        seen.setdefault(method, []).append(torch.cat([x for x, _ in batches]))
        return real_train(net, optimizer, batches, *rest)

    def spy_evaluate(net, batches, *rest):
        batches = list(batches)
        seen.setdefault(f"{method}/eval", []).append(torch.cat([x for x, _ in batches]))
        return real_evaluate(net, batches, *rest)

    monkeypatch.setattr(runner_module, "train_one_epoch", spy_train)
    monkeypatch.setattr(runner_module, "evaluate", spy_evaluate)
    for cell in suite('augmentation = "cifar"').cells():
        method = cell.method
        run_cell(cell)
    plain = suite().cells()[0]
    method = "plain"
    run_cell(plain)
    for epoch in range(3):
        assert torch.equal(seen["none"][epoch], seen["random-add"][epoch])
        assert not torch.equal(seen["none"][epoch], seen["plain"][epoch])
    assert not torch.equal(seen["none"][0], seen["none"][1])  # fresh draws every epoch
    data = _pixels().load(NoOptions())
    expected = data.prepare(data.test_inputs)
    assert all(torch.equal(x, expected) for x in seen["none/eval"])


@pytest.mark.parametrize(
    "training",
    ['precision = "bf16"', 'precision = "fp16"', "channels_last = true",
     'channels_last = true\nprecision = "bf16"\naugmentation = "imagenet"'],
)  # fmt: skip
def test_mixed_precision_and_channels_last_train_and_grow_on_the_cpu(training):
    for cell in suite(training, '["random-add", "random-split", "firefly"]').cells():
        result = run_cell(cell)
        assert all(torch.isfinite(torch.tensor(h["test_loss"])) for h in result.history)
        assert result.events[0]["units_added"], cell.label


def test_channels_last_gives_the_same_training_as_contiguous():
    contiguous = run_cell(suite(methods='["random-add"]').cells()[0])
    channels_last = run_cell(suite("channels_last = true", '["random-add"]').cells()[0])
    for a, b in zip(contiguous.history, channels_last.history):
        assert a["test_loss"] == pytest.approx(b["test_loss"], rel=1e-4)


def test_multistep_schedule_restarts_every_round():
    training = """lr = 1.0
lr_schedule = "multistep"
milestones = [0.5]
schedule_span = "round"
optimizer_after_growth = "reset"
"""
    cells = parse_suite(
        f"""
name = "rounds"
epochs = 8
methods = ["none", "random-add"]
[training]
batch_size = 8
{training}
[growth]
first_epoch = 4
every = 4
stats_samples = 8
[[tasks]]
dataset = "pixels"
model = "mlp"
model_options = {{ widths = [4] }}
""",
        "rounds",
    ).cells()
    for one in cells:  # a fresh round after epoch 4, whether the method grew or not
        lrs = [h["lr"] for h in run_cell(one).history[1:]]
        assert lrs == pytest.approx([1, 1, 0.1, 0.1, 1, 1, 0.1, 0.1])


def test_suite_checks_of_the_new_training_fields():
    with pytest.raises(SuiteError, match="set optimizer_after_growth = 'reset'"):
        suite('schedule_span = "round"')
    with pytest.raises(SuiteError, match=r"augmentation.*needs clouds"):
        suite('augmentation = "pointcloud"')
    with pytest.raises(SuiteError, match=r"milestones\[1\] must be less than 1"):
        suite('lr_schedule = "multistep"\nmilestones = [0.5, 1.5]')
    parsed = suite('lr_schedule = "multistep"\nmilestones = [0.75, 0.25]')
    assert parsed.tasks[0].training.milestones == (0.25, 0.75)


def test_data_placement_and_device_batches_on_the_cpu():
    data = _pixels().load(NoOptions())
    placed, copy = accelerator.place(data, torch.device("cpu"))
    assert copy is False
    assert placed.train_inputs.dtype == torch.uint8
    assert accelerator.dataset_bytes(data) == 40 * 3 * 32 * 32 + 40 * 8
    raw = data.batches("train", 8, raw=True)
    batches = list(accelerator.device_batches(data, raw, torch.device("cpu"), True, True))
    inputs, _ = batches[0]
    assert inputs.dtype == torch.float32
    assert inputs.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(inputs, data.prepare(data.train_inputs[:8]))
