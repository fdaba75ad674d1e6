"""A 2-epoch run of every paper suite's tasks on a GPU (or ``--device cpu`` to rehearse), on
synthetic data of each dataset's real shape (``Suite.synthetic``: no download; the loaders are
tested on fixtures elsewhere), printing images/s per model and precision. Needs no MLflow: cells
run through ``run_cell`` directly. ``bench/gpu.sh`` runs it after the paper-path bench figures.

For each suite and task: the suite's first growth method, 2 epochs with one growth round after
the first, at most ``--samples`` training samples, the suite's nets, batch size, augmentation
and precision (and bf16 besides fp32 where the suite trains in fp32).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from growbench.benchmarks.runner import run_cell
from growbench.benchmarks.suite import PAPER_SUITES, load_suite


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--suites", default=",".join(PAPER_SUITES))
    args = parser.parse_args()
    print(f"gpu smoke: torch {torch.__version__}, device {args.device}", flush=True)
    for name in args.suites.split(","):
        suite = load_suite(name).synthetic()  # random data of the real shapes
        growers = [m for m in suite.methods if m not in ("none", "static")]
        for task in suite.tasks:
            sizes = {"train_subset": args.samples, "test_subset": 1000}
            task = dataclasses.replace(task, dataset_options={**task.dataset_options, **sizes})
            precisions = [task.training.precision]
            if task.training.precision == "fp32":
                precisions.append("bf16")
            for precision in precisions:
                training = dataclasses.replace(task.training, precision=precision)
                growth = dataclasses.replace(
                    task.growth, first_epoch=1, every=1, max_rounds=1,
                    stats_samples=min(task.growth.stats_samples, 1024),
                )  # fmt: skip
                small = dataclasses.replace(task, epochs=2, training=training, growth=growth)
                one = dataclasses.replace(suite, tasks=(small,), methods=(growers[0],), seeds=(0,))
                cell = one.cells()[0]
                start = time.perf_counter()
                try:
                    result = run_cell(cell, device=args.device)
                except Exception as error:  # report and go on: one line per failure
                    print(f"{name} {task.name} {precision}: FAILED {type(error).__name__}: {error}")
                    continue
                seconds = result.history[-1]["train_seconds"]
                growth_s = result.history[-1]["growth_seconds"]
                print(
                    f"{name} {task.name} {growers[0]} {precision}: "
                    f"{2 * args.samples / seconds:,.0f} img/s training, growth step "
                    f"{growth_s:.1f} s, {time.perf_counter() - start:.0f} s in all, "
                    f"test acc {100 * result.final.get('test_accuracy', float('nan')):.1f} %",
                    flush=True,
                )


if __name__ == "__main__":
    main()
