"""Performance figures for growbench, each a ratio of two timings taken in the same run.

A shared, noisy machine makes absolute seconds meaningless across runs, so every figure compares
two things measured here and now, interleaved (A, B, A, B, ...), and reports the ratio of
medians. Run with ``nox -s bench`` (or ``python bench/run.py``).

Figures:
* harness training throughput / a bare PyTorch loop, on the same model, data, optimizer and
  batch order (target ≥ 0.95): what the harness's epoch loop costs on top of torch.
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"growbench bench (torch {torch.__version__}, {torch.get_num_threads()} threads)")
    for model in ("mlp", "cnn"):
        ratio = training_throughput(model, args.repeats, args.epochs)
        print(
            f"training throughput, harness / bare loop, digits {model}: {ratio:.3f} "
            "(target >= 0.95)"
        )


if __name__ == "__main__":
    main()
