"""Helpers shared by the report tests: one cells-table row built from what a test varies."""

from __future__ import annotations

from typing import Any


def cell_record(
    task: str,
    method: str,
    seed: int,
    dataset: str,
    score_name: str,
    higher: bool,
    score: float,
    *,
    status: str = "FINISHED",
    growth_seconds: float = 1.0,
    model: str = "mlp",
) -> dict[str, Any]:
    """A row of the cells table (``tables.CELL_COLUMNS``) with fixed sizes and timings: 100
    parameters, 200 FLOPs, 3e4 training FLOPs, 10 training seconds, 20 epochs, no health flag."""
    return {
        "task": task,
        "method": method,
        "seed": seed,
        "dataset": dataset,
        "model": model,
        "status": status,
        "run_id": f"{task}-{method}-{seed}",
        "score_name": score_name,
        "higher_is_better": higher,
        "score": score,
        "params": 100.0,
        "flops": 200.0,
        "train_flops": 3e4,
        "train_seconds": 10.0,
        "growth_seconds": growth_seconds,
        "growth_share": growth_seconds / 10.0,
        "epochs": 20,
        "health": "",
    }
