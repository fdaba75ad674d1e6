"""The end-of-run table, read back from MLflow so it shows what the store holds, not memory.

``summarise`` gives one row per (method, task): the final test accuracy in % (classification) or
the final test loss (regression) as mean and sample std over the FINISHED seeds, the mean final
params, and how many cells are finished, failed or missing. Given the suite's cells, runs are
matched by config hash (runs of an older version of the suite file are left out, and a renamed
task keeps its runs); without them, by the runs' tags. ``format_summary`` pivots it to text:
rows = methods, columns = tasks.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from growbench.benchmarks.suite import CellConfig
from growbench.benchmarks.tracking import best_runs
from growbench.datasets import dataset_spec

COLUMNS = ["method", "task", "score", "mean", "std", "params", "finished", "failed", "missing"]
ACCURACY = "accuracy %"
LOSS = "test loss"


def summarise(
    tracking_uri: str, suite_name: str, cells: Sequence[CellConfig] | None = None
) -> pd.DataFrame:
    """One row per (method, task) with the numbers described in the module docstring."""
    runs = _runs(tracking_uri, suite_name)
    if cells is None:
        expected = {h: (r["method"], r["task"], r["dataset"]) for h, r in runs.items()}
    else:
        expected = {c.config_hash(): (c.method, c.task.name, c.task.dataset) for c in cells}
    groups: dict[tuple[str, str], list[str]] = {}
    datasets = {}
    for config_hash, (method, task, dataset) in expected.items():
        groups.setdefault((method, task), []).append(config_hash)
        datasets[task] = dataset
    rows = []
    for (method, task), hashes in groups.items():
        found = [runs[h] for h in hashes if h in runs]
        finished = [r for r in found if r["status"] == "FINISHED"]
        failed = sum(r["status"] == "FAILED" for r in found)
        classification = _is_classification(datasets[task])
        values = pd.Series([r["score"] for r in finished], dtype=float)
        rows.append(
            {
                "method": method,
                "task": task,
                "score": ACCURACY if classification else LOSS,
                "mean": (100 * values if classification else values).mean(),
                "std": (100 * values if classification else values).std(),
                "params": pd.Series([r["params"] for r in finished], dtype=float).mean(),
                "finished": len(finished),
                "failed": failed,
                "missing": len(hashes) - len(finished) - failed,
            }
        )
    return pd.DataFrame(rows, columns=COLUMNS)


def _is_classification(dataset: str) -> bool:
    try:
        return dataset_spec(dataset).task == "classification"
    except ValueError:  # a dataset no longer registered
        return True


def _runs(tracking_uri: str, suite_name: str) -> dict[str, dict]:
    """Per config hash, the facts of its best run (``tracking.best_runs``)."""
    return {
        config_hash: {
            "method": run.data.tags.get("growbench.method", "?"),
            "task": run.data.tags.get("growbench.task", "?"),
            "dataset": run.data.tags.get("growbench.dataset", "?"),
            "status": run.info.status,
            "score": run.data.metrics.get("test_accuracy", run.data.metrics.get("test_loss")),
            "params": run.data.metrics.get("params"),
        }
        for config_hash, run in best_runs(tracking_uri, suite_name).items()
    }


def format_summary(frame: pd.DataFrame) -> str:
    """Rows = methods, columns = tasks; each cell ``mean ± std (params)`` and any gaps."""
    if frame.empty:
        return "no cells"
    table: dict[str, dict[str, str]] = {}
    headers = {}
    for row in frame.itertuples(index=False):
        headers[row.task] = f"{row.task}: {row.score} (params)"
        table.setdefault(row.method, {})[headers[row.task]] = _cell_text(row)
    text = pd.DataFrame.from_dict(table, orient="index", columns=list(headers.values()))
    text.index.name = "method"
    return text.fillna("").to_string()


def _cell_text(row) -> str:
    parts = []
    if row.finished:
        mean_format, std_format = (".1f", ".1f") if row.score == ACCURACY else (".4g", ".2g")
        value = format(row.mean, mean_format)
        if row.finished > 1:
            value += f" ± {format(row.std, std_format)}"
        parts.append(f"{value} ({_compact(row.params)})")
    else:
        parts.append("—")
    gaps = [f"{count} {what}" for what, count in (("failed", row.failed), ("missing", row.missing))]
    gaps = [gap for gap in gaps if not gap.startswith("0 ")]
    if gaps:
        parts.append(f"[{', '.join(gaps)}]")
    return " ".join(parts)


def _compact(count: float) -> str:
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if count >= size:
            return f"{count / size:.3g}{suffix}"
    return f"{count:.0f}"
