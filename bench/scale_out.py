"""The scale-out figure (``bench/run.py --only scale-out``): one CPU-bound suite (the digits CNN, 16
cells of about 7.5 s each, long enough that Ray's fixed start of about 10 s does not hide the
scaling) run three times on fresh sqlite stores, by the in-process executor and by the Ray executor
on a local cluster of 1 and of 2 CPUs (one cell per CPU, one torch thread per cell), each timed from
the call to its return, Ray's start and its workers' imports included. The figures are speed-ups
over the in-process run (target ≥ 1.7 with 2 workers on 2 cores).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from growbench.benchmarks.executor import run_suite
from growbench.benchmarks.ray_executor import run_suite_on_ray
from growbench.benchmarks.suite import parse_suite
from growbench.benchmarks.tracking import CheckpointPolicy

SUITE = """
name = "scale-out"
seeds = 8
epochs = 60
methods = ["none", "random-split"]

[training]
lr = 0.05

[growth]
every = 10

[[tasks]]
dataset = "digits"
model = "cnn"
model_options = { widths = [16, 32] }
"""


def figures() -> Iterator[str]:
    suite = parse_suite(SUITE, "scale-out")
    checkpoints = CheckpointPolicy()  # the defaults a user gets
    seconds = {}
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        run_suite(suite, f"sqlite:///{Path(folder)}/process.db", "cpu", checkpoints=checkpoints)
        seconds["process"] = time.perf_counter() - start
        for workers in (1, 2):
            uri = f"sqlite:///{Path(folder)}/ray{workers}.db"
            start = time.perf_counter()
            run_suite_on_ray(suite, uri, "cpu", checkpoints=checkpoints, num_cpus=workers)
            seconds[workers] = time.perf_counter() - start
    cells = len(suite.cells())
    yield f"scale-out, {cells} digits-CNN cells: in-process {seconds['process']:.0f} s"
    for workers in (1, 2):
        ratio = seconds["process"] / seconds[workers]
        target = " (target >= 1.7)" if workers == 2 else ""
        yield (
            f"scale-out, Ray with {workers} worker{'s' if workers > 1 else ''} / in-process "
            f"speed-up: {ratio:.2f}x ({seconds[workers]:.0f} s){target}"
        )
