"""Performance figures for growbench, each a ratio of two timings taken in the same run.

A shared, noisy machine makes absolute seconds meaningless across runs, so every figure compares
two things measured here and now, interleaved (A, B, A, B, ...), and reports the ratio of
medians. Run with ``nox -s bench`` (or ``python bench/run.py``).

Figures:
* harness training throughput / a bare PyTorch loop, on the same model, data, optimizer and
  batch order (target ≥ 0.95): what the harness's epoch loop costs on top of torch.
* a GrowableNet training step / the same layers in plain torch modules (``nn.ReLU`` for the
  zoo's ReLU, no slots): what growth sites, insertion slots and the zoo's ReLU cost an ordinary
  training step; and the zoo's ResNet-18 / torchvision's ``resnet18`` adapted to CIFAR (target
  ≥ 0.95).
* ``s2d`` / ``fast-s2d`` growth step, time and peak memory, on a conv site with fan-in p = 1153
  (target >= 10 on both): exact splitting matrices and eigh against Rayleigh-quotient descent.
  Each ``grow()`` runs in a fresh subprocess so its peak resident memory can be read.
* TINY growth step (statistics, solve, γ search, surgery) on the digits MLP, gromo / growbench
  time ratio, measured in the same run (target >= 10): GroMo 0.1.0's own step (its statistics,
  ``compute_optimal_updates`` in float32, and its ``gromo.utils.utils.line_search``: 0 plus 100
  log-spaced γ in [1e-6, 1], then 100 more per decade above while the minimum keeps falling, so
  at least 201 losses through ``extended_forward``) against ``tiny`` with its defaults (21 + 5
  per extension decade, evaluated together from the consumer on). Skipped when gromo is not
  installed.
* every built-in method's growth step on MobileNetV1-CIFAR (width 0.25) and ResNet-18-CIFAR
  (inner widths 1/8) with a 1,024-sample statistics set, as a share of one training epoch over
  50,000 CIFAR-shaped samples estimated from timed batches in the same process (target ≤ 1 for
  every method but exact s2d), and its peak memory; fast-s2d also at 50 passes over the set
  (``rayleigh = { steps = 800 }``). Exact s2d is timed on MobileNet only by default
  (``--time-s2d-on``); for the other net, and at full width, the bytes its splitting matrices
  need are printed.

* a growth step of every built-in method on each task of the ``default`` suite, as a share of
  one of that task's training epochs (the suite's batch size and optimiser), measured in the
  same process on the start net with the suite's statistics set (``--methods`` narrows it).

* the paper-scale training path on CIFAR-shaped data (``paper_path.py``): harness / bare-loop
  throughput at each precision with augmentation, augmentation's share of a step, and the
  ImageNet-subset cache build time (``--device cuda`` on a GPU).

* the scale-out of the Ray executor (``scale_out.py``): one CPU-bound suite in-process and on a
  local Ray cluster of 1 and 2 workers, as speed-ups (target ≥ 1.7 with 2 workers).

``--only throughput,steps,split,tiny,growth,default-growth,paper-path,scale-out`` runs a subset.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

import growbench.methods.fast_s2d  # noqa: F401  (registers fast-s2d)
from growbench.benchmarks.runner import train_one_epoch
from growbench.datasets import load_dataset
from growbench.methods import GrowthContext, make_grower
from growbench.nn import ModelConfig, build_model
from growbench.nn.losses import classification_loss


def interleaved_medians(
    first: Callable[[], None], second: Callable[[], None], repeats: int
) -> tuple[float, float]:
    """Median seconds of ``first`` and ``second``, alternating so drift hits both alike."""
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for which, work in enumerate((first, second)):
            start = time.perf_counter()
            work()
            times[which].append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def training_throughput(model: str, repeats: int, epochs: int, batch_size: int = 64) -> float:
    """Harness samples/s over bare-loop samples/s (1.0 = no overhead)."""
    data = load_dataset("digits")
    widths = (32, 32) if model == "mlp" else (16, 32)
    config = ModelConfig(
        model, data.spec.input_shape, data.spec.num_outputs, widths, batchnorm=model == "cnn"
    )
    bare_net, harness_net = build_model(config, seed=0), build_model(config, seed=0)
    bare_optimizer = torch.optim.SGD(bare_net.parameters(), lr=0.05, momentum=0.9)
    harness_optimizer = torch.optim.SGD(harness_net.parameters(), lr=0.05, momentum=0.9)
    bare_order, harness_order = torch.Generator(), torch.Generator()
    inputs, targets = data.train_inputs, data.train_targets

    def bare() -> None:
        bare_net.train()
        for _ in range(epochs):
            order = torch.randperm(len(inputs), generator=bare_order)
            for start in range(0, len(inputs), batch_size):
                index = order[start : start + batch_size]
                bare_optimizer.zero_grad()
                loss = F.cross_entropy(bare_net(inputs[index]), targets[index])
                loss.backward()
                bare_optimizer.step()

    def harness() -> None:
        for _ in range(epochs):
            batches = data.batches("train", batch_size, generator=harness_order)
            train_one_epoch(harness_net, harness_optimizer, batches, classification_loss)

    bare_seconds, harness_seconds = interleaved_medians(bare, harness, repeats)
    return bare_seconds / harness_seconds


def plain_copy(net: torch.nn.Module) -> torch.nn.Module:
    """The same layers with growbench's modules swapped for torch's: each activation for the
    torch module of the same function, each empty insertion slot dropped."""
    from growbench.nn import Activation, Slot

    torch_activation = {
        "relu": torch.nn.ReLU,
        "tanh": torch.nn.Tanh,
        "silu": torch.nn.SiLU,
        "identity": torch.nn.Identity,
    }
    plain = copy.deepcopy(net)
    for module in list(plain.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, Activation):
                setattr(module, name, torch_activation[child.name]())
            elif isinstance(child, Slot) and child.empty:
                setattr(module, name, torch.nn.Identity())
    return torch.nn.Sequential(*plain.stages)


def step_ratio(
    reference: torch.nn.Module,
    growable: torch.nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    repeats: int,
    steps: int,
) -> float:
    """Reference training-step time over GrowableNet training-step time (1.0 = no overhead)."""

    def stepper(net: torch.nn.Module) -> Callable[[], None]:
        optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        net.train()

        def steps_of_training() -> None:
            for _ in range(steps):
                optimizer.zero_grad()
                classification_loss(net(inputs), targets, reduction="mean").backward()
                optimizer.step()

        return steps_of_training

    reference_seconds, growable_seconds = interleaved_medians(
        stepper(reference), stepper(growable), repeats
    )
    return reference_seconds / growable_seconds


def growable_overhead(model: str, repeats: int, steps: int = 50, batch_size: int = 64) -> float:
    """Plain nn.Sequential step time over GrowableNet step time on the digits nets."""
    data = load_dataset("digits")
    widths = (32, 32) if model == "mlp" else (16, 32)
    config = ModelConfig(
        model, data.spec.input_shape, data.spec.num_outputs, widths, batchnorm=model == "cnn"
    )
    growable = build_model(config, seed=0)
    inputs, targets = data.train_inputs[:batch_size], data.train_targets[:batch_size]
    return step_ratio(plain_copy(growable), growable, inputs, targets, repeats, steps)


def resnet_overhead(repeats: int, steps: int = 2, batch_size: int = 32) -> float:
    """torchvision's resnet18 adapted to CIFAR (3×3 stride-1 stem, no max pool) against the zoo's
    resnet18 (CIFAR form, full width), one training step each, CIFAR-shaped random data."""
    import torchvision

    reference = torchvision.models.resnet18(num_classes=10)
    reference.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    reference.maxpool = torch.nn.Identity()
    growable = build_model(ModelConfig("resnet18", (3, 32, 32), 10), seed=0)
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(batch_size, 3, 32, 32, generator=generator)
    targets = torch.randint(0, 10, (batch_size,), generator=generator)
    return step_ratio(reference, growable, inputs, targets, repeats, steps)


SPLIT_CHANNELS = 128  # input channels of the conv site: p = 128·3·3 + 1 = 1153
SPLIT_BATCH = 64  # fast-s2d's rayleigh.batch_size


def _resident_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process; False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


def _peak_bytes(was_reset: bool) -> int:
    if was_reset:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    # ru_maxrss is the lifetime peak: never below the true peak of the growth step
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def splitting_probe(method: str, steps: int, units: int, samples: int, threads: int) -> dict:
    """In a fresh process: one ``grow()`` of ``method`` on a net whose one site is a 3×3 conv
    with 128 input channels; its wall seconds, peak resident memory above the resident memory
    just before it, and the per-unit scores. A warm-up grow on a tiny net first loads the lazy
    parts of torch, LAPACK and HiGHS, so neither method is charged for them."""
    torch.set_num_threads(threads)
    options = {"rayleigh": {"steps": steps}} if method == "fast-s2d" else {}
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(samples, SPLIT_CHANNELS, 8, 8, generator=generator)
    targets = torch.randint(0, 10, (samples,), generator=generator)

    def context(count: int, channels: int) -> GrowthContext:
        return GrowthContext(
            inputs=inputs[:count, :channels],
            targets=targets[:count],
            loss_fn=classification_loss,
            budget_metric="params",
            remaining_budget=math.inf,
            generator=torch.Generator().manual_seed(1),
            batch_size=SPLIT_BATCH,
        )

    def net(channels: int, width: int):
        config = ModelConfig("cnn", (channels, 8, 8), 10, (width,), activation="silu")
        return build_model(config, seed=0)

    warm_up = {**options, "rayleigh": {"steps": 2}} if method == "fast-s2d" else options
    make_grower(method, warm_up).grow(net(4, 4), context(8, 4))
    grower = make_grower(method, options)
    growing, ctx = net(SPLIT_CHANNELS, units), context(samples, SPLIT_CHANNELS)
    base = _resident_bytes()
    was_reset = _reset_peak()
    start = time.perf_counter()
    event = grower.grow(growing, ctx)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "peak_bytes": _peak_bytes(was_reset) - base,
        "peak_reset": was_reset,
        "scores": [value for values in event.scores.values() for value in values],
    }


def splitting_step_cost(
    repeats: int,
    threads: int,
    units: int = 32,
    samples: int = 256,
    passes: tuple[int, ...] = (10, 50),
) -> list[tuple[float, float, str]]:
    """s2d / fast-s2d growth-step seconds and peak memory (ratios of medians), each grow() in
    its own subprocess, alternating s2d, fast-s2d, fast-s2d, s2d, ... One fast-s2d setting per
    entry of ``passes``: that many passes of batch 64 over the statistics set, i.e. rayleigh.steps =
    passes · samples / 64 (10: the official CIFAR code's 10 epochs; 50: the CPU default's 1,600
    steps over its 2,048-sample set). The estimates are compared with s2d's exact λ_min."""
    settings = {"s2d": 0} | {
        f"fast-s2d@{count}": count * math.ceil(samples / SPLIT_BATCH) for count in passes
    }
    results: dict[str, list[dict]] = {name: [] for name in settings}
    for _ in range(repeats):
        for name, steps in settings.items():
            command = [sys.executable, __file__, "--splitting-probe", name.split("@")[0]]
            command += [str(steps), str(units), str(samples), str(threads)]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            results[name].append(json.loads(done.stdout.strip().splitlines()[-1]))

    def median(name: str, key: str) -> float:
        return statistics.median(run[key] for run in results[name])

    exact = results["s2d"][-1]["scores"]
    lowest = sorted(range(len(exact)), key=exact.__getitem__)[: math.floor(0.3 * len(exact))]
    figures = []
    for count in passes:
        name = f"fast-s2d@{count}"
        estimated = results[name][-1]["scores"]
        error = max(abs(estimated[j] - exact[j]) / abs(exact[j]) for j in lowest)
        note = (
            f"fast-s2d rayleigh.steps={settings[name]} ({count} passes of {SPLIT_BATCH} over "
            f"{samples} samples; default 1600), "
            f"Spearman(λ̂, λ) {spearmanr(estimated, exact).statistic:.3f}, "
            f"max rel. λ error of the 30 % lowest {error:.1%}; medians s2d "
            f"{median('s2d', 'seconds'):.1f} s {median('s2d', 'peak_bytes') / 2**20:.0f} MiB, "
            f"fast-s2d {median(name, 'seconds'):.1f} s "
            f"{median(name, 'peak_bytes') / 2**20:.0f} MiB"
            + ("" if results["s2d"][0]["peak_reset"] else "; peak = lifetime ru_maxrss")
        )
        figures.append(
            (
                median("s2d", "seconds") / median(name, "seconds"),
                median("s2d", "peak_bytes") / median(name, "peak_bytes"),
                note,
            )
        )
    return figures


def tiny_step_cost(repeats: int, samples: int = 2048, width: int = 32) -> tuple[float, str]:
    """GroMo / growbench seconds of one TINY growth step (ratio of medians), same digits MLP,
    same weights, same statistics set; fresh nets per repeat, built outside the timing."""
    from gromo.containers.growing_mlp import GrowingMLP
    from gromo.utils.utils import line_search
    from torch import nn

    import growbench.methods.tiny

    data = load_dataset("digits")
    config = ModelConfig("mlp", data.spec.input_shape, data.spec.num_outputs, (width, width))
    inputs, targets = data.train_inputs[:samples], data.train_targets[:samples]
    batch_size = 512
    max_added = math.ceil(0.3 * width)

    def ours() -> tuple[object, Callable[[], None]]:
        net = build_model(config, seed=0)
        ctx = GrowthContext(
            inputs,
            targets,
            classification_loss,
            "params",
            float("inf"),
            torch.Generator().manual_seed(0),
            batch_size=batch_size,
        )
        grower = make_grower("tiny")
        return net, lambda: grower.grow(net, ctx)

    def theirs() -> tuple[object, Callable[[], None]]:
        net = build_model(config, seed=0)
        model = GrowingMLP(
            data.spec.input_shape, data.spec.num_outputs, width, 2, activation=nn.ReLU()
        )
        with torch.no_grad():
            ours = [site.producer for site in net.sites] + [net.sites[-1].consumer]
            for mine, layer in zip(ours, model.layers, strict=True):
                layer.layer.weight.copy_(mine.weight)
                layer.layer.bias.copy_(mine.bias)

        def loss_at(gamma: float) -> float:
            model.set_scaling_factor(gamma)
            total = 0.0
            with torch.no_grad():
                for start in range(0, len(inputs), batch_size):
                    out = model.extended_forward(inputs[start : start + batch_size])
                    total += float(
                        F.cross_entropy(out, targets[start : start + batch_size], reduction="sum")
                    )
            return total / len(inputs)

        def step() -> None:
            model.eval()
            model.init_computation()
            for start in range(0, len(inputs), batch_size):
                out = model(inputs[start : start + batch_size])
                F.cross_entropy(
                    out, targets[start : start + batch_size], reduction="sum"
                ).backward()
                model.update_computation()
            model.compute_optimal_updates(maximum_added_neurons=max_added)
            model.reset_computation()
            model.select_best_update()
            gamma, _ = line_search(loss_at)
            model.set_scaling_factor(float(gamma))
            model.apply_change()

        return model, step

    times: dict[str, list[float]] = {"gromo": [], "growbench": []}
    for _ in range(repeats):
        for name, make in (("gromo", theirs), ("growbench", ours)):
            _, work = make()
            start = time.perf_counter()
            work()
            times[name].append(time.perf_counter() - start)
    gromo, growbench = statistics.median(times["gromo"]), statistics.median(times["growbench"])
    note = (
        f"medians gromo {gromo * 1e3:.0f} ms, growbench {growbench * 1e3:.0f} ms, "
        f"{len(inputs)} samples, widths {width}-{width}"
    )
    return gromo / growbench, note


# The papers' nets the growth-step figure is measured on: (label, options, full-width options).
GROWTH_NETS = {
    "mobilenetv1": ("MobileNetV1-CIFAR, width 0.25", {"width_multiplier": 0.25}, {}),
    "resnet18": ("ResNet-18-CIFAR, inner widths 1/8", {"inner_ratio": 0.125}, {}),
}
EPOCH_SAMPLES = 50_000
STATS_SAMPLES = 1024
TRAIN_BATCH = 128


def growth_probe(model: str, method: str, options: str, threads: int) -> dict:
    """In a fresh process: one training epoch over 50,000 CIFAR-shaped samples, estimated from
    timed batches of 128, then one ``grow()`` of ``method`` (with the JSON ``options``) on a
    1,024-sample statistics set; seconds, phases and peak resident memory above the resident
    memory just before the grow. A warm-up grow on a tiny net of the same model comes first."""
    torch.set_num_threads(threads)
    options = json.loads(options)
    shape = (3, 32, 32)
    config = ModelConfig(model, shape, 10, **GROWTH_NETS[model][1])
    net = build_model(config, seed=0)
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(STATS_SAMPLES, *shape, generator=generator)
    targets = torch.randint(0, 10, (STATS_SAMPLES,), generator=generator)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    net.train()
    steps = []
    for _ in range(4):
        start = time.perf_counter()
        optimizer.zero_grad()
        out = net(inputs[:TRAIN_BATCH])
        classification_loss(out, targets[:TRAIN_BATCH], reduction="mean").backward()
        optimizer.step()
        steps.append(time.perf_counter() - start)
    epoch = statistics.median(steps[1:]) * EPOCH_SAMPLES / TRAIN_BATCH
    optimizer.zero_grad(set_to_none=True)
    net.eval()

    def context(count: int) -> GrowthContext:
        return GrowthContext(
            inputs[:count], targets[:count], classification_loss, "params", math.inf,
            torch.Generator().manual_seed(1), batch_size=256,
        )  # fmt: skip

    small = build_model(ModelConfig(model, shape, 10, width_multiplier=1 / 16), seed=0)
    warm_up = {**options, "rayleigh": {"steps": 2}} if method == "fast-s2d" else options
    make_grower(method, warm_up).grow(small, context(16))
    grower = make_grower(method, options)
    base = _resident_bytes()
    was_reset = _reset_peak()
    start = time.perf_counter()
    event = grower.grow(net, context(STATS_SAMPLES))
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "epoch": epoch,
        "peak_bytes": _peak_bytes(was_reset) - base,
        "phases": {name: round(value, 1) for name, value in event.seconds.items()},
        "units": sum(event.units_added.values()),
    }


def splitting_matrix_bytes(config: ModelConfig) -> int:
    """What s2d's exact splitting matrices of every unit of every site take, n·p²·8 bytes."""
    net = build_model(config)
    return sum(site.width * site.fan_in_size**2 * 8 for site in net.sites)


def growth_step_costs(
    threads: int,
    time_s2d_on: tuple[str, ...],
    methods: tuple[str, ...] | None = None,
    nets: tuple[str, ...] = tuple(GROWTH_NETS),
) -> Iterator[str]:
    """Every built-in method's growth step on the papers' nets (``nets``) as a share of one
    training epoch (target ≤ 1 for every method but exact s2d), each grow() in its own process;
    one line per measurement, as it is made."""
    import growbench.methods.builtin  # noqa: F401
    from growbench.methods import registry

    for model in nets:
        label, options, full = GROWTH_NETS[model]
        runs = [(name, {}) for name in sorted(registry.available_methods())]
        runs.append(("fast-s2d", {"rayleigh": {"steps": 800}}))  # 50 passes over the 1,024 samples
        runs = [run for run in runs if methods is None or run[0] in methods]
        for method, extra in runs:
            if method == "s2d" and model not in time_s2d_on:
                shape = ModelConfig(model, (3, 32, 32), 10, **options)
                widest = ModelConfig(model, (3, 32, 32), 10, **full)
                yield (
                    f"{label}: s2d not timed here; its splitting matrices take "
                    f"{splitting_matrix_bytes(shape) / 2**30:.2f} GiB at this width and "
                    f"{splitting_matrix_bytes(widest) / 2**30:.1f} GiB at full width"
                )
                continue
            command = [sys.executable, __file__, "--growth-probe", model, method]
            command += [json.dumps(extra), str(threads)]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            setting = f" ({', '.join(f'{k}={v}' for k, v in extra.items())})" if extra else ""
            line = (
                f"{label}: {method}{setting} growth step / one epoch = "
                f"{result['seconds'] / result['epoch']:.3f} (target <= 1"
                f"{'' if method != 's2d' else ', exact s2d exempt'}); "
                f"{result['seconds']:.1f} s against an epoch of {result['epoch']:.0f} s, "
                f"peak {result['peak_bytes'] / 2**20:.0f} MiB, {result['units']} units, "
                f"phases {result['phases']}"
            )
            if method == "s2d":
                widest = ModelConfig(model, (3, 32, 32), 10, **full)
                line += (
                    f"; at full width its splitting matrices would take "
                    f"{splitting_matrix_bytes(widest) / 2**30:.1f} GiB"
                )
            yield line


def default_task_growth(threads: int, methods: tuple[str, ...]) -> Iterator[str]:
    """One growth step / one training epoch on every task of the default suite, per method (the
    median of three epochs; the grow on the start net after those epochs), with its phases."""
    from growbench.benchmarks.runner import make_optimizer
    from growbench.benchmarks.suite import load_suite
    from growbench.nn.losses import loss_for_task

    torch.set_num_threads(threads)
    suite = load_suite("default")
    for task in suite.tasks:
        dataset = load_dataset(task.dataset, **task.dataset_options)
        loss_fn = loss_for_task(dataset.spec.task)
        config = task.model_config(dataset.spec)
        for method in methods:
            net = build_model(config, seed=0)
            optimizer = make_optimizer(net, task.training)
            order = torch.Generator().manual_seed(0)
            epochs = []
            for _ in range(3):
                batches = dataset.batches("train", task.training.batch_size, order)
                start = time.perf_counter()
                train_one_epoch(net, optimizer, batches, loss_fn)
                epochs.append(time.perf_counter() - start)
            samples = min(task.growth.stats_samples, dataset.num_train)
            inputs, targets = dataset.subsets("train", [samples], torch.Generator().manual_seed(1))[
                0
            ]
            ctx = GrowthContext(
                inputs, targets, loss_fn, task.budget.metric, math.inf,
                torch.Generator().manual_seed(2),
            )  # fmt: skip
            grower = make_grower(method, suite.method_options.get(method, {}))
            start = time.perf_counter()
            event = grower.grow(net, ctx)
            seconds = time.perf_counter() - start
            epoch = statistics.median(epochs)
            phases = {name: round(value, 3) for name, value in event.seconds.items()}
            yield (
                f"default suite, {task.name}: {method} growth step / one epoch = "
                f"{seconds / epoch:.2f} ({seconds:.2f} s against {epoch:.2f} s; "
                f"{sum(event.units_added.values())} units, "
                f"{len(event.layers_inserted)} layers; phases {phases})"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (the harness's default is 1)"
    )
    parser.add_argument(
        "--split-repeats", type=int, default=3, help="repeats of the s2d / fast-s2d figure"
    )
    parser.add_argument(
        "--time-s2d-on",
        default="mobilenetv1",
        help="comma-separated nets of the growth-step figure on which exact s2d is timed "
        "(resnet18 takes tens of minutes on a CPU)",
    )
    parser.add_argument(
        "--only",
        help="comma-separated figures: throughput, steps, split, tiny, growth, default-growth, "
        "paper-path, scale-out",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the paper-path figures)")
    parser.add_argument(
        "--methods", help="comma-separated methods of the growth figures (default: every built-in)"
    )
    parser.add_argument(
        "--nets",
        default=",".join(GROWTH_NETS),
        help=f"comma-separated nets of the growth figure (default: {','.join(GROWTH_NETS)})",
    )
    parser.add_argument("--splitting-probe", nargs=5, help=argparse.SUPPRESS)
    parser.add_argument("--growth-probe", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.splitting_probe:  # a child of splitting_step_cost
        method, *numbers = args.splitting_probe
        print(json.dumps(splitting_probe(method, *map(int, numbers))))
        return
    if args.growth_probe:  # a child of growth_step_costs
        model, method, options, threads = args.growth_probe
        print(json.dumps(growth_probe(model, method, options, int(threads))))
        return
    everything = "throughput,steps,split,tiny,growth,default-growth,paper-path,scale-out"
    figures = set((args.only or everything).split(","))
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    print(f"growbench bench (torch {torch.__version__}, {torch.get_num_threads()} threads)")
    if "throughput" in figures:
        for model in ("mlp", "cnn"):
            ratio = training_throughput(model, args.repeats, args.epochs)
            print(
                f"training throughput, harness / bare loop, digits {model}: {ratio:.3f} "
                "(target >= 0.95)"
            )
    if "steps" in figures:
        for model in ("mlp", "cnn"):
            ratio = growable_overhead(model, args.repeats)
            print(
                f"training step speed, GrowableNet / the same layers in plain torch modules, "
                f"digits {model}: {ratio:.3f}"
            )
        ratio = resnet_overhead(max(3, args.repeats // 2))
        print(
            "training step speed, GrowableNet resnet18 / torchvision's resnet18 adapted to "
            f"CIFAR, batch 32 at 32x32: {ratio:.3f} (target >= 0.95)"
        )
    if "split" in figures:
        for time_ratio, memory_ratio, note in splitting_step_cost(args.split_repeats, args.threads):
            print(
                f"growth step, s2d / fast-s2d, 3x3 conv site 128->32 channels (p = 1153): "
                f"time {time_ratio:.1f}x, peak memory {memory_ratio:.1f}x (target >= 10 on "
                f"both); {note}"
            )
    if "tiny" in figures:
        try:
            ratio, note = tiny_step_cost(args.repeats)
        except ImportError:
            print("TINY growth step: skipped (gromo not installed)")
        else:
            print(
                "TINY growth step (statistics, solve, γ search, surgery) on the digits MLP, "
                f"gromo / growbench time ratio: {ratio:.1f}x (target >= 10); {note}"
            )
    if "paper-path" in figures:
        import paper_path

        for line in paper_path.figures(torch.device(args.device), max(3, args.repeats // 3)):
            print(line, flush=True)
    if "scale-out" in figures:
        import scale_out

        for line in scale_out.figures():
            print(line, flush=True)
    import growbench.methods.builtin  # noqa: F401
    from growbench.methods import registry

    methods = (
        tuple(args.methods.split(","))
        if args.methods
        else tuple(sorted(registry.available_methods()))
    )
    if "growth" in figures:
        s2d_nets = tuple(args.time_s2d_on.split(","))
        nets = tuple(args.nets.split(","))
        for line in growth_step_costs(args.threads, s2d_nets, methods, nets):
            print(line, flush=True)
    if "default-growth" in figures:
        for line in default_task_growth(args.threads, methods):
            print(line, flush=True)


if __name__ == "__main__":
    main()
