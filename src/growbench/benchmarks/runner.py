"""Train one cell (task, method, seed) under the suite's fair conditions; no tracking in here.

Fairness is the runner's job, not the methods': every method of a seed starts from the same net
(``build_model(config, seed=seed)``; only ``static`` asks for another start through
``Grower.start_config``), trains the same epochs with the same optimizer and LR schedule, sees the
same data order (a CPU generator seeded from the seed alone) and, at growth round r, the same
statistics subset and a context generator both seeded from (seed, r), and, when the suite asks
for augmentation, the same augmented training batches (a device generator seeded from the seed
alone; evaluation and statistics are never augmented). The budget limit is the suite's factor
times the cost of that common start net, whatever the method starts from. Precision,
channels-last and where the data lives are ``accelerator``'s.

Per epoch: train, step the LR schedule, evaluate on the test split, report metrics, then grow if
the schedule says so. A growth round hands the grower a statistics set and a disjoint held-out set
of training samples; around ``grow()`` the runner measures the realised loss change on the
statistics set and the loss on a third disjoint set, the probe, that no grower sees (not charged
to growth time), then hands the optimizer over (``carry`` or ``reset``). The epoch after a growth
and the finished cell get the health checks of ``health``.
Metrics at step e describe the net trained during epoch e; step 0 is the untrained start net.
``train_seconds`` and ``growth_seconds`` are running totals. A non-finite train loss raises
``NonFiniteLossError``. What happens is reported to a ``CellObserver`` (the tracker, a progress
bar); ``run_cell`` also returns the whole history, so a cell runs and is inspected without MLflow::

    suite = load_suite("default")
    result = run_cell(suite.cells()[0], device="cpu")
    result.final["test_accuracy"], result.events
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from growbench.benchmarks import accelerator, checkpoint, health
from growbench.benchmarks.augment import augmentation
from growbench.benchmarks.suite import CellConfig, Training
from growbench.datasets import Dataset, load_dataset
from growbench.methods import Grower, GrowthContext, statistics_loss
from growbench.nn import GrowableNet, ModelConfig, build_model, carry_optimizer_state, loss_for_task
from growbench.nn.losses import PerSampleLoss

DEVICES = ("auto", "cpu", "cuda")


class NonFiniteLossError(RuntimeError):
    """Training diverged; the cell is marked FAILED and the suite goes on."""


class CellObserver:
    """What the runner reports while a cell runs; every hook does nothing by default."""

    def started(self, info: dict[str, Any]) -> None:
        """Once, after the start net is built: the budget limit, the data's shapes and the
        method's start net (``static`` starts bigger)."""

    def epoch_done(self, epoch: int, metrics: dict[str, float]) -> None:
        """After each epoch's evaluation (epoch 0: the start net)."""

    def grew(self, record: dict[str, Any]) -> None:
        """After each growth round: the event's dict plus round, epoch and budget."""

    def resumed(self, epoch: int, history: list[dict[str, float]], events: list[dict]) -> None:
        """Once, instead of the start net's ``epoch_done``, when the cell goes on from a
        checkpoint taken after ``epoch``: the metrics and growth events up to there."""

    def checkpoint(self, epoch: int, grew: bool, snapshot: Callable[[], dict[str, Any]]) -> None:
        """At the end of each epoch (after its growth round, if any): ``snapshot()`` is the
        cell's whole state, for an observer that decides to save it."""


@dataclass
class CellResult:
    cell: CellConfig
    info: dict[str, Any]
    history: list[dict[str, float]]  # metrics per step, step 0 first
    events: list[dict[str, Any]]
    architecture: dict[str, Any]
    health: list[str] = field(default_factory=list)  # ``health.cell_flags``; empty: healthy

    @property
    def final(self) -> dict[str, float]:
        return self.history[-1]


@dataclass
class _Sizes:
    params: int
    flops: int

    @classmethod
    def of(cls, net: GrowableNet) -> _Sizes:
        return cls(net.params(), net.flops())

    def cost(self, metric: str) -> float:
        return float(self.params if metric == "params" else self.flops)


def check_device_name(name: str) -> None:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``, else a ``ValueError`` saying so (whether the
    GPU is there is ``resolve_device``'s to check, on the machine that trains)."""
    kind, colon, index = name.partition(":")
    whole = index.isascii() and index.isdigit()
    if kind not in DEVICES or (colon and not (kind == "cuda" and whole)):
        raise ValueError(
            f"--device: unknown device {name!r}; use auto, cpu, cuda or cuda:N (N a GPU's "
            "index, e.g. cuda:0)"
        )


def resolve_device(name: str | torch.device) -> torch.device:
    """``auto`` (cuda when available), ``cpu``, ``cuda`` or ``cuda:N``; anything else, or cuda
    asked for without one (or beyond the GPUs there are), is a clear error."""
    if isinstance(name, torch.device):
        return name
    check_device_name(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kind, colon, index = name.partition(":")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "device 'cuda' was asked for but torch sees no CUDA device; "
            "use --device cpu (or auto) here"
        )
    if colon and int(index) >= (count := torch.cuda.device_count()):
        raise ValueError(
            f"device {name!r}: torch sees {count} CUDA device(s), cuda:0 to cuda:{count - 1}; "
            "use one of those"
        )
    return torch.device(name)


def derived_seed(seed: int, purpose: str, index: int = 0) -> int:
    """A seed for one purpose (data order, statistics of round ``index``...) of run ``seed``:
    the same for every method, and unrelated between purposes."""
    digest = hashlib.sha256(f"{seed}/{purpose}/{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def seeded_generator(seed: int, purpose: str, index: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(derived_seed(seed, purpose, index))


# ----------------------------------------------------------------------- the hot loop
def train_one_epoch(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[tuple[Tensor, Tensor]],
    loss_fn: PerSampleLoss,
    on_batch: Callable[[Tensor, Tensor], None] | None = None,
    cast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    scaler: torch.amp.GradScaler | None = None,
) -> float:
    """One pass over ``batches``; returns the mean per-sample train loss.

    The loss is summed on the device and read once at the end, so the loop never waits for the
    accelerator. The forward pass and the loss run inside ``cast()`` (autocast for mixed
    precision); ``scaler`` scales fp16 gradients. ``on_batch(inputs, targets)`` runs after each
    optimizer step.
    """
    net.train()
    total: Tensor | None = None
    count = 0
    for inputs, targets in batches:
        optimizer.zero_grad(set_to_none=True)
        with cast():
            loss = loss_fn(net(inputs), targets, reduction="mean")
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        if on_batch is not None:
            on_batch(inputs, targets)
        size = targets.shape[0]
        loss = loss.detach().float()
        if total is None:
            total = loss * size
        else:
            total.add_(loss, alpha=size)
        count += size
    if total is None:
        raise ValueError("train_one_epoch got no batches")
    return float(total) / count


def evaluate(
    net: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    loss_fn: PerSampleLoss,
    classification: bool,
    cast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> dict[str, float]:
    """Mean test loss (and accuracy for classification) in eval mode over ``batches``, read
    once at the end; the forward pass inside ``cast()``."""
    was_training = net.training
    net.eval()
    loss_sum, correct, count = None, None, 0
    try:
        with torch.no_grad():
            for batch, wanted in batches:
                with cast():
                    outputs = net(batch)
                    losses = loss_fn(outputs, wanted).float().sum(dtype=torch.float64)
                loss_sum = losses if loss_sum is None else loss_sum + losses
                if classification:
                    hits = (outputs.argmax(dim=1) == wanted).sum()
                    correct = hits if correct is None else correct + hits
                count += batch.shape[0]
    finally:
        net.train(was_training)
    metrics = {"test_loss": float(loss_sum) / count}
    if classification:
        metrics["test_accuracy"] = int(correct) / count
    return metrics


def make_optimizer(net: nn.Module, training: Training) -> torch.optim.Optimizer:
    if training.optimizer == "sgd":
        return torch.optim.SGD(
            net.parameters(),
            lr=training.lr,
            momentum=training.momentum,
            nesterov=training.nesterov and training.momentum > 0,
            weight_decay=training.weight_decay,
        )
    return torch.optim.Adam(net.parameters(), lr=training.lr, weight_decay=training.weight_decay)


def make_schedule(
    optimizer: torch.optim.Optimizer, training: Training, epochs: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The per-epoch LR schedule over a span of ``epochs``; None for a constant rate. Multistep
    milestones are fractions of the span (rounded to epochs)."""
    if training.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs))
    if training.lr_schedule == "multistep":
        milestones = sorted({max(1, round(f * epochs)) for f in training.milestones})
        return torch.optim.lr_scheduler.MultiStepLR(
            optimizer, milestones=milestones, gamma=training.lr_gamma
        )
    return None


def growth_due(cell: CellConfig, epoch: int, rounds_done: int) -> bool:
    """Whether the schedule calls for a growth round after ``epoch`` (budget aside)."""
    growth, epochs = cell.task.growth, cell.task.epochs
    if epoch < growth.first_epoch or epoch >= epochs:
        return False
    if growth.last_epoch is not None and epoch > growth.last_epoch:
        return False
    if growth.max_rounds is not None and rounds_done >= growth.max_rounds:
        return False
    return (epoch - growth.first_epoch) % growth.every == 0


def scheduled_growth_epochs(cell: CellConfig) -> list[int]:
    """The epochs after which the schedule calls for growth, budget aside: the boundaries of
    the training rounds of ``schedule_span = "round"``."""
    epochs, found = [], 0
    for epoch in range(1, cell.task.epochs + 1):
        if growth_due(cell, epoch, found):
            epochs.append(epoch)
            found += 1
    return epochs


def model_cost(config: ModelConfig, metric: str, seed: int) -> float:
    return _Sizes.of(build_model(config, seed=seed)).cost(metric)


@contextmanager
def cpu_threads(count: int | None) -> Iterator[None]:
    """Use ``count`` intra-op CPU threads inside the block (None: leave torch's setting).

    Small nets gain nothing from more threads, and on a busy machine torch's OpenMP threads
    wait on each other: a step of the default suite's CNN took 180 ms with 2 threads and 1.7 ms
    with 1 on a 2-core machine with another process running.
    """
    if count is None:
        yield
        return
    if count < 1:
        raise ValueError(f"threads must be at least 1, got {count}")
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _overrides_on_batch(grower: Grower) -> bool:
    return type(grower).on_batch is not Grower.on_batch


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- one cell
def run_cell(
    cell: CellConfig,
    dataset: Dataset | None = None,
    device: str | torch.device = "cpu",
    observer: CellObserver | None = None,
    resume: dict[str, Any] | None = None,
) -> CellResult:
    """Train ``cell`` from its start net (or from ``resume``, a state an observer's
    ``checkpoint`` took) to its last epoch; see the module docstring. On one machine a resumed
    cell's metrics equal an uninterrupted run's, timings apart."""
    device = resolve_device(device)
    observer = observer or CellObserver()
    if dataset is None:
        dataset = load_dataset(cell.task.dataset, **cell.task.dataset_options)
    dataset, copy = accelerator.place(dataset, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # shapes change only at growth steps
    rng_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=rng_devices):
        torch.manual_seed(derived_seed(cell.seed, "torch"))
        cell_run = _CellRun(cell, dataset, device, observer, copy)
        if resume is not None:
            try:
                cell_run.load_state_dict(resume)
            except Exception as exc:  # whatever a checkpoint that does not fit raises
                raise checkpoint.CheckpointError(
                    f"{cell.label}: the checkpoint does not fit the cell "
                    f"({type(exc).__name__}: {exc})"
                ) from exc
        return cell_run.run()


class _CellRun:
    """The state of one cell while it trains."""

    def __init__(
        self,
        cell: CellConfig,
        dataset: Dataset,
        device: torch.device,
        observer: CellObserver,
        copy: bool = False,
    ) -> None:
        self.cell, self.dataset, self.device, self.observer = cell, dataset, device, observer
        self.copy = copy  # batches are copied from pinned host memory to the device
        self.training = cell.task.training
        self.metric = cell.task.budget.metric
        self.classification = dataset.spec.task == "classification"
        self.loss_fn = loss_for_task(dataset.spec.task)
        self.grower = cell.make_grower()
        common = cell.task.model_config(dataset.spec)
        cost_of = partial(model_cost, metric=self.metric, seed=cell.seed)
        self.budget_limit = cell.task.budget.factor * cost_of(common)
        start = self.grower.start_config(common, self.budget_limit, cost_of)
        self.net = build_model(start, seed=cell.seed).to(device)
        accelerator.to_memory_format(self.net, self.training.channels_last)
        self.sizes = _Sizes.of(self.net)
        self.rounds = scheduled_growth_epochs(cell)
        self.optimizer = make_optimizer(self.net, self.training)
        self.schedule = make_schedule(self.optimizer, self.training, self._span_after(0))
        self.cast = partial(accelerator.autocast, device, self.training.precision)
        self.scaler = accelerator.grad_scaler(device, self.training.precision)
        self.augment = augmentation(self.training.augmentation, dataset.normalization)
        self.augment_generator = torch.Generator(device=device)
        self.augment_generator.manual_seed(derived_seed(cell.seed, "augmentation"))
        self.data_order = seeded_generator(cell.seed, "data-order")
        self.seconds = {"train": 0.0, "growth": 0.0}
        self.train_flops = 0.0  # 3 × forward FLOPs × samples trained on (forward + backward)
        self.history: list[dict[str, float]] = []
        self.events: list[dict[str, Any]] = []
        self.epoch = 0  # epochs done
        self.growing = True  # whether later rounds may still grow
        self.info = {
            "budget.limit": self.budget_limit,
            "model.input_shape": list(common.input_shape),
            "model.num_outputs": common.num_outputs,
            "start.widths": dict(self.net.widths()),
            "start.params": self.sizes.params,
            "start.flops": self.sizes.flops,
            "refused_sites": self.grower.refusals(self.net),
        }

    def run(self) -> CellResult:
        self.observer.started(dict(self.info))
        if self.epoch == 0:
            self._report(0, {})
        else:
            self.observer.resumed(self.epoch, list(self.history), list(self.events))
        on_batch = (
            partial(self.grower.on_batch, self.net) if _overrides_on_batch(self.grower) else None
        )
        for epoch in range(self.epoch + 1, self.cell.task.epochs + 1):
            lr = self.optimizer.param_groups[0]["lr"]
            start = time.perf_counter()
            train_loss = train_one_epoch(
                self.net, self.optimizer, self._train_batches(), self.loss_fn, on_batch,
                self.cast, self.scaler,
            )  # fmt: skip
            self.seconds["train"] += time.perf_counter() - start
            self.train_flops += 3.0 * self.sizes.flops * self.dataset.num_train
            after_growth = self.events and self.events[-1]["epoch"] == epoch - 1
            if not math.isfinite(train_loss):
                if after_growth:
                    health.after_next_epoch(self.events[-1], {"train_loss": train_loss})
                cause = " right after a growth step" if after_growth else ""
                raise NonFiniteLossError(
                    f"{self.cell.label}: train loss became {train_loss} in epoch {epoch}{cause}; "
                    f"lower training.lr (now {self.training.lr:g}) for this task"
                )
            if self.schedule is not None:
                self.schedule.step()
            self._report(epoch, {"train_loss": train_loss, "lr": lr})
            if after_growth:
                health.after_next_epoch(self.events[-1], self.history[-1])
            rounds_before = len(self.events)
            if self.growing and growth_due(self.cell, epoch, rounds_before):
                self.growing = self._grow(epoch)
            if self.training.schedule_span == "round" and epoch in self.rounds:
                self._new_optimizer(epoch)  # every round starts afresh, grown or not
            self.epoch = epoch
            self.observer.checkpoint(epoch, len(self.events) > rounds_before, self.state_dict)
        classes = self.dataset.spec.num_outputs if self.classification else None
        flags = health.cell_flags(self.history, self.events, classes)
        return CellResult(
            self.cell, self.info, self.history, self.events, self.net.describe(), flags
        )

    # ------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything the cell needs to go on after ``self.epoch`` (see ``checkpoint``)."""
        cuda = self.device.type == "cuda"
        return {
            "config_hash": self.cell.config_hash(),
            "epoch": self.epoch,
            "growing": self.growing,
            "net": checkpoint.net_state(self.net),
            "optimizer": checkpoint.optimizer_state(self.optimizer, self.net),
            "schedule": None if self.schedule is None else self.schedule.state_dict(),
            "scaler": None if self.scaler is None else self.scaler.state_dict(),
            "grower": checkpoint.grower_state(self.grower),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state(self.device) if cuda else None,
                "data_order": self.data_order.get_state(),
                "augmentation": self.augment_generator.get_state(),
            },
            "history": [dict(metrics) for metrics in self.history],
            "events": [dict(event) for event in self.events],
            "seconds": dict(self.seconds),
            "train_flops": self.train_flops,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("config_hash") != self.cell.config_hash():
            raise checkpoint.CheckpointError(
                f"{self.cell.label}: the checkpoint belongs to another configuration"
            )
        checkpoint.load_net_state(self.net, state["net"])
        accelerator.to_memory_format(self.net, self.training.channels_last)
        self.sizes = _Sizes.of(self.net)
        self.optimizer = make_optimizer(self.net, self.training)
        self.schedule = make_schedule(self.optimizer, self.training, 1)  # its state follows
        checkpoint.load_optimizer_state(self.optimizer, self.net, state["optimizer"])
        if self.schedule is not None:
            self.schedule.load_state_dict(state["schedule"])
        if self.scaler is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.grower.load_state_dict(state["grower"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] is not None:
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        self.data_order.set_state(rng["data_order"])
        self.augment_generator.set_state(rng["augmentation"])
        self.history = [dict(metrics) for metrics in state["history"]]
        self.events = [dict(event) for event in state["events"]]
        self.seconds = dict(state["seconds"])
        self.train_flops = state["train_flops"]
        self.epoch, self.growing = state["epoch"], state["growing"]

    def _span_after(self, epoch: int) -> int:
        """Epochs a schedule made after ``epoch`` spans: to the next round's end with
        ``schedule_span = "round"``, else to the end of the run."""
        end = self.cell.task.epochs
        if self.training.schedule_span == "round":
            end = next((e for e in self.rounds if e > epoch), end)
        return end - epoch

    def _batches(self, split: str, size: int, order: torch.Generator | None = None):
        raw = self.dataset.batches(split, size, order, raw=True)
        return accelerator.device_batches(
            self.dataset, raw, self.device, self.copy, self.training.channels_last
        )

    def _train_batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        """One epoch of training batches on the device, augmented when the suite asks."""
        for inputs, targets in self._batches("train", self.training.batch_size, self.data_order):
            if self.augment is not None:
                inputs = self.augment(inputs, self.augment_generator)
            yield inputs, targets

    def _report(self, epoch: int, metrics: dict[str, float]) -> None:
        metrics = {
            **metrics,
            **evaluate(
                self.net,
                self._batches("test", self.training.eval_batch_size),
                self.loss_fn,
                self.classification,
                self.cast,
            ),
            "params": float(self.sizes.params),
            "flops": float(self.sizes.flops),
            "macs": float(self.sizes.flops // 2),
            "train_flops": self.train_flops,
            "train_seconds": self.seconds["train"],
            "growth_seconds": self.seconds["growth"],
        }
        self.history.append(metrics)
        self.observer.epoch_done(epoch, metrics)

    def _grow(self, epoch: int) -> bool:
        """One growth round after ``epoch``; returns whether later rounds may still grow."""
        round_index = len(self.events)
        remaining = self.budget_limit - self.sizes.cost(self.metric)
        if remaining <= 0:
            return False
        seed = self.cell.seed
        statistics, heldout, probe = self._growth_sets(round_index)
        ctx = GrowthContext(
            inputs=statistics[0],
            targets=statistics[1],
            loss_fn=self.loss_fn,
            budget_metric=self.metric,
            remaining_budget=remaining,
            generator=seeded_generator(seed, "grower", round_index),
            heldout_inputs=heldout[0],
            heldout_targets=heldout[1],
        )
        probe_ctx = dataclasses.replace(ctx, inputs=probe[0], targets=probe[1])
        loss_before = statistics_loss(self.net, ctx)
        probe_before = statistics_loss(self.net, probe_ctx) if len(probe[0]) else None
        _synchronize(self.device)
        start = time.perf_counter()
        event = self.grower.grow(self.net, ctx)
        _synchronize(self.device)
        self.seconds["growth"] += time.perf_counter() - start
        event.realised_loss_change = statistics_loss(self.net, ctx) - loss_before
        probe_after = statistics_loss(self.net, probe_ctx) if len(probe[0]) else None
        if event.grew or self.net.lineage:  # parameters were replaced
            accelerator.to_memory_format(self.net, self.training.channels_last)
            if self.training.schedule_span == "round":
                self.net.pop_lineage()  # the round's fresh optimizer follows in run()
            else:
                self._hand_over_optimizer(epoch)
            self.sizes = _Sizes.of(self.net)
        record = {
            "round": round_index,
            "epoch": epoch,
            "budget_limit": self.budget_limit,
            "remaining_budget": remaining,
            **event.to_dict(),
            "health": {
                "train_loss_before": self.history[-1]["train_loss"],
                "test_loss_before": self.history[-1].get("test_loss"),
                "probe_loss_before": probe_before,
                "probe_loss_after": probe_after,
                "probe_samples": len(probe[0]),
            },
        }
        self.events.append(record)
        self.observer.grew(record)
        return event.stop_reason != "budget exhausted"

    def _growth_sets(self, round_index: int) -> list[tuple[Tensor, Tensor]]:
        """Round ``round_index``'s statistics set, held-out set and probe: disjoint training
        subsets drawn with a generator of (seed, round), the same for every method. The two
        held-out sets get ``heldout_samples`` each, at most an eighth of the split each; the
        statistics set ``stats_samples`` of the rest."""
        growth, n = self.cell.task.growth, self.dataset.num_train
        held = min(growth.heldout_samples, n // 8)
        counts = [min(growth.stats_samples, n - 2 * held), held, held]
        order = seeded_generator(self.cell.seed, "statistics", round_index)
        sets = self.dataset.subsets("train", counts, order)
        return [(inputs.to(self.device), targets.to(self.device)) for inputs, targets in sets]

    def _hand_over_optimizer(self, epoch: int) -> None:
        """``carry``: slice the state over to the grown parameters; ``reset``: a fresh optimizer
        and LR schedule over the epochs left (what the official codes do)."""
        if self.training.optimizer_after_growth == "carry":
            carry_optimizer_state(self.optimizer, self.net)
            return
        self._new_optimizer(epoch)

    def _new_optimizer(self, epoch: int) -> None:
        """A fresh optimizer (and scaler) and a schedule over the span after ``epoch``."""
        self.net.pop_lineage()  # nothing to carry; drop the references to old parameters
        self.optimizer = make_optimizer(self.net, self.training)
        self.schedule = make_schedule(self.optimizer, self.training, self._span_after(epoch))
        self.scaler = accelerator.grad_scaler(self.device, self.training.precision)
