"""Performance figures for growbench, each a ratio of two timings taken in the same run.

A shared, noisy machine makes absolute seconds meaningless across runs, so every figure compares
two things measured here and now, interleaved (A, B, A, B, ...), and reports the ratio of
medians. Run with ``nox -s bench`` (or ``python bench/run.py``).

Figures:
* harness training throughput / a bare PyTorch loop, on the same model, data, optimizer and
  batch order (target ≥ 0.95): what the harness's epoch loop costs on top of torch.
* a GrowableNet training step / the same layers as a plain ``nn.Sequential``: what growth
  sites and the (switched-off) statistics taps cost an ordinary training step.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from growbench.benchmarks.runner import train_one_epoch
from growbench.datasets import load_dataset
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


def growable_overhead(model: str, repeats: int, steps: int = 50, batch_size: int = 64) -> float:
    """Plain nn.Sequential step time over GrowableNet step time (1.0 = no overhead)."""
    data = load_dataset("digits")
    widths = (32, 32) if model == "mlp" else (16, 32)
    config = ModelConfig(
        model, data.spec.input_shape, data.spec.num_outputs, widths, batchnorm=model == "cnn"
    )
    growable = build_model(config, seed=0)
    layers: list[torch.nn.Module] = [torch.nn.Flatten()] if growable.flatten_input else []
    for block in copy.deepcopy(growable).blocks:
        layers += [block.layer, *([block.norm] if block.norm is not None else []), block.act]
        layers.append(block.post)
    plain = torch.nn.Sequential(*layers)
    inputs = data.train_inputs[:batch_size]
    targets = data.train_targets[:batch_size]

    def stepper(net: torch.nn.Module) -> Callable[[], None]:
        optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)

        def steps_of_training() -> None:
            for _ in range(steps):
                optimizer.zero_grad()
                classification_loss(net(inputs), targets, reduction="mean").backward()
                optimizer.step()

        return steps_of_training

    plain_seconds, growable_seconds = interleaved_medians(
        stepper(plain), stepper(growable), repeats
    )
    return plain_seconds / growable_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (the harness's default is 1)"
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    print(f"growbench bench (torch {torch.__version__}, {torch.get_num_threads()} threads)")
    for model in ("mlp", "cnn"):
        ratio = training_throughput(model, args.repeats, args.epochs)
        print(
            f"training throughput, harness / bare loop, digits {model}: {ratio:.3f} "
            "(target >= 0.95)"
        )
    for model in ("mlp", "cnn"):
        ratio = growable_overhead(model, args.repeats)
        print(
            f"training step speed, GrowableNet / plain nn.Sequential, digits {model}: {ratio:.3f}"
        )


if __name__ == "__main__":
    main()
