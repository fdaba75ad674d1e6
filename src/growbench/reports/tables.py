"""The tidy tables a report is built from, read out of MLflow.

Four tables, each one kind of observation (tidy: one row per observation, one column per
variable), written as CSV beside the report and read back before anything is drawn, so a report
holds only what the files hold:

``cells``   one row per expected cell (a config hash of the suite, or a run found in the store):
            CELL_COLUMNS. ``base_method`` is the registered method a variant runs (the method
            itself otherwise) and ``variant_options`` the variant's overrides as JSON; ``cpu``,
            ``threads``, ``blas`` and ``accelerator`` the machine the run trained on;
            ``budget_fraction`` the final size over the budget's limit, in the budget's metric
            (params or FLOPs): growth stops short of the budget when its rounds run out.
            ``status`` is the run's (FINISHED, FAILED, KILLED, RUNNING) or MISSING;
            the final numbers are NaN unless FINISHED. ``score`` is the final test accuracy in %
            (classification, higher is better) or the final test loss (regression, lower is
            better), named by ``score_name``. ``health`` the cell's health flags
            (``growbench.benchmarks.health``; "; "-separated, empty when healthy).
            UNSUPPORTED: the method cannot grow the task's layers, so the suite never runs it.
``history`` one row per (cell, logged epoch), epoch 0 = before training: HISTORY_COLUMNS.
``events``  one row per growth event: EVENT_COLUMNS (predicted_loss_change NaN when the method
            predicts nothing; the probe losses, the next epoch's training and test losses and
            ``destabilised`` from the event's health record, NaN and False for older runs).
``widths``  one row per (cell, site) of the final architecture: WIDTH_COLUMNS.

``train_flops`` is the training compute spent up to the end of an epoch: 3 × forward FLOPs per
sample × samples trained on, summed over epochs (forward + backward ≈ 3 forward passes).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Run

from growbench.benchmarks.executor import plan, plan_matched
from growbench.benchmarks.suite import CellConfig, Suite
from growbench.benchmarks.tracking import HEALTH, MACHINE_TAGS, best_runs, json_artifact
from growbench.datasets import dataset_spec
from growbench.methods import make_grower
from growbench.progress import bar

KEY = ["task", "method", "seed"]
MACHINE_COLUMNS = list(MACHINE_TAGS)  # cpu, threads, blas, accelerator
CELL_COLUMNS = [
    *KEY,
    "base_method",
    "variant_options",
    "dataset",
    "model",
    "status",
    "run_id",
    "score_name",
    "higher_is_better",
    "score",
    "params",
    "flops",
    "train_flops",
    "train_seconds",
    "growth_seconds",
    "growth_share",
    "epochs",
    "budget_fraction",
    "health",
    *MACHINE_COLUMNS,
]
# The metrics the runner logs per epoch that a report reads.
HISTORY_METRICS = [
    "test_loss",
    "test_accuracy",
    "train_loss",
    "params",
    "flops",
    "train_flops",
    "train_seconds",
    "growth_seconds",
]
HISTORY_COLUMNS = [*KEY, "epoch", "score", *HISTORY_METRICS]
EVENT_COLUMNS = [
    *KEY,
    "round",
    "epoch",
    "grew",
    "units_added",
    "layers_inserted",
    "predicted_loss_change",
    "realised_loss_change",
    "wall_seconds",
    "stop_reason",
    "probe_loss_before",
    "probe_loss_after",
    "next_train_loss",
    "next_test_loss",
    "destabilised",
]
WIDTH_COLUMNS = [*KEY, "site", "site_index", "width"]
ACCURACY_SCORE = "test accuracy %"
LOSS_SCORE = "test loss"
TEXT_COLUMNS = frozenset(
    {"task", "method", "dataset", "model", "status", "run_id", "score_name", "site", "stop_reason"}
    | {"health"}
    | {"base_method", "variant_options", "cpu", "blas", "accelerator"}
)
FILES = {name: f"{name}.csv" for name in ("cells", "history", "events", "widths")}


@dataclass
class ReportTables:
    """The four tables (see the module docstring), one attribute per file of ``FILES``."""

    cells: pd.DataFrame
    history: pd.DataFrame
    events: pd.DataFrame
    widths: pd.DataFrame


@dataclass(frozen=True)
class ExpectedCell:
    """A cell the suite file asks for (matched to runs by config hash)."""

    config_hash: str
    task: str
    method: str
    seed: int
    dataset: str
    model: str
    unsupported: str = ""  # why the method cannot run this task, when it cannot
    base_method: str = ""  # the registered method ("" = ``method``)
    variant_options: str = ""  # a variant's option overrides as JSON ("" for a plain method)


def expected_cells(suite: Suite, tracking_uri: str | None = None) -> list[ExpectedCell]:
    """The suite's cells, and with ``tracking_uri`` the matched static cells of its growing
    cells that finished there; those a method cannot run say why."""
    planned = plan(suite, set())
    if tracking_uri is not None:
        planned += plan_matched(suite, tracking_uri, set())
    return [
        ExpectedCell(
            item.cell.config_hash(),
            item.cell.task.name,
            item.cell.method,
            item.cell.seed,
            item.cell.task.dataset,
            item.cell.task.model,
            item.reason if item.status == "unsupported" else "",
            item.cell.registered_method,
            _overrides(item.cell),
        )
        for item in planned
    ]


def _overrides(cell: CellConfig) -> str:
    """A variant's options that differ from its base method's defaults, as JSON ("" for a
    plain method)."""
    if not cell.base_method:
        return ""
    defaults = dataclasses.asdict(make_grower(cell.base_method).config)
    changed = {k: v for k, v in cell.method_options.items() if defaults.get(k) != v}
    return json.dumps(changed, sort_keys=True)


def read_runs(
    tracking_uri: str,
    suite_name: str,
    expected: Sequence[ExpectedCell] | None = None,
    progress: bool = False,
) -> ReportTables:
    """The four tables of a suite from the store (reads only). With ``expected`` (the suite's
    cells), a cell without a run is a MISSING row and runs of other configurations are left
    out; without it, every cell run of the experiment counts."""
    return _read_runs(tracking_uri, suite_name, expected, progress)


def _read_runs(
    tracking_uri: str, suite_name: str, expected: Sequence[ExpectedCell] | None, progress: bool
) -> ReportTables:
    runs = best_runs(tracking_uri, suite_name)
    if expected is None:
        expected = [_cell_of(config_hash, run) for config_hash, run in runs.items()]
    client = MlflowClient(tracking_uri) if runs else None
    cells, history, events, widths = [], [], [], []
    for cell in bar(expected, progress=progress, desc=f"reading {suite_name}", unit="cell"):
        key = {"task": cell.task, "method": cell.method, "seed": cell.seed}
        higher = _is_classification(cell.dataset)
        row = {
            **key,
            "base_method": cell.base_method or cell.method,
            "variant_options": cell.variant_options,
            "dataset": cell.dataset,
            "model": cell.model,
            "status": "MISSING",
            "run_id": "",
            "score_name": ACCURACY_SCORE if higher else LOSS_SCORE,
            "higher_is_better": higher,
        }
        run = runs.get(cell.config_hash)
        if run is None:
            if cell.unsupported:
                row["status"] = "UNSUPPORTED"
            cells.append(row)
            continue
        row.update(status=run.info.status, run_id=run.info.run_id)
        row.update({column: run.data.tags.get(tag, "") for column, tag in MACHINE_TAGS.items()})
        epochs = _history(client, run.info.run_id, higher)
        history += [{**key, **epoch} for epoch in epochs]
        row["epochs"] = max((e["epoch"] for e in epochs), default=0)
        if run.info.status == "FINISHED" and epochs:
            last = epochs[-1]
            row.update({name: last[name] for name in ("score", *HISTORY_METRICS[3:])})
            spent = last["train_seconds"] + last["growth_seconds"]
            row["growth_share"] = last["growth_seconds"] / spent if spent > 0 else math.nan
            row["budget_fraction"] = _budget_fraction(run, last)
            row["health"] = "; ".join(_json_value(run.data.tags.get(HEALTH)) or [])
            architecture = json_artifact(client, run.info.run_id, "architecture.json") or {}
            for index, (site, width) in enumerate(architecture.get("widths", {}).items()):
                widths.append({**key, "site": site, "site_index": index, "width": int(width)})
        for record in json_artifact(client, run.info.run_id, "growth_events.json") or []:
            events.append({**key, **_event_row(record)})
        cells.append(row)
    return ReportTables(
        _frame(cells, CELL_COLUMNS),
        _frame(history, HISTORY_COLUMNS, ["epoch"]),
        _frame(events, EVENT_COLUMNS, ["round"]),
        _frame(widths, WIDTH_COLUMNS, ["site_index"]),
    )


def _cell_of(config_hash: str, run: Run) -> ExpectedCell:
    tags = run.data.tags
    return ExpectedCell(
        config_hash,
        tags.get("growbench.task", "?"),
        tags.get("growbench.method", "?"),
        int(tags.get("growbench.seed", -1)),
        tags.get("growbench.dataset", "?"),
        tags.get("growbench.model", "?"),
        base_method=tags.get("growbench.base_method", ""),
    )


def _is_classification(dataset: str) -> bool:
    try:
        return dataset_spec(dataset).task == "classification"
    except ValueError:  # a dataset no longer registered: classification, like most
        return True


def _history(client: MlflowClient, run_id: str, classification: bool) -> list[dict[str, Any]]:
    """One dict per logged epoch (MLflow step), every metric of HISTORY_METRICS (NaN if absent)."""
    by_epoch: dict[int, dict[str, Any]] = {}
    for name in HISTORY_METRICS:
        for metric in client.get_metric_history(run_id, name):
            by_epoch.setdefault(metric.step, {})[name] = metric.value
    rows = []
    for epoch in sorted(by_epoch):
        values = {name: by_epoch[epoch].get(name, math.nan) for name in HISTORY_METRICS}
        score = 100 * values["test_accuracy"] if classification else values["test_loss"]
        rows.append({"epoch": epoch, "score": score, **values})
    return rows


def _budget_fraction(run: Run, last: dict[str, Any]) -> float:
    """The final params (or FLOPs, per the budget's metric) over the budget's limit."""
    params = run.data.params
    limit = _number(_json_value(params.get("budget.limit")))
    metric = params.get("budget.metric", "params")
    size = _number(last.get(metric))
    return size / limit if limit > 0 else math.nan


def _json_value(text: str | None) -> Any:
    try:
        return json.loads(text) if text is not None else None
    except ValueError:
        return text


def _number(value: Any) -> float:
    try:
        return float(value)  # JSON holds non-finite floats as strings ("nan", "inf")
    except (TypeError, ValueError):
        return math.nan


def _event_row(record: dict[str, Any]) -> dict[str, Any]:
    added = record.get("units_added") or {}
    health = record.get("health") or {}
    return {
        "round": int(record.get("round", 0)),
        "epoch": int(record.get("epoch", 0)),
        "grew": bool(any(added.values()) or record.get("layers_inserted")),
        "units_added": int(sum(added.values())),
        "layers_inserted": len(record.get("layers_inserted") or []),
        "predicted_loss_change": _number(record.get("predicted_loss_change")),
        "realised_loss_change": _number(record.get("realised_loss_change")),
        "wall_seconds": _number(record.get("wall_seconds")),
        "stop_reason": record.get("stop_reason") or "",
        "probe_loss_before": _number(health.get("probe_loss_before")),
        "probe_loss_after": _number(health.get("probe_loss_after")),
        "next_train_loss": _number(health.get("next_train_loss")),
        "next_test_loss": _number(health.get("next_test_loss")),
        "destabilised": bool(health.get("destabilised", False)),
    }


def _frame(
    rows: list[dict[str, Any]], columns: list[str], order: Sequence[str] = ()
) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=columns)
    if not frame.empty:
        frame = frame.sort_values([*KEY, *order], kind="stable").reset_index(drop=True)
    return frame


def write_tables(tables: ReportTables, folder: Path) -> list[Path]:
    """The four tables as CSV in ``folder`` (rows sorted, floats in full precision)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, file in FILES.items():
        path = folder / file
        getattr(tables, name).to_csv(path, index=False, lineterminator="\n")
        paths.append(path)
    return paths


def read_tables(folder: Path) -> ReportTables:
    """The tables as ``write_tables`` wrote them (text columns stay text, empty = "")."""
    frames = {}
    for name, file in FILES.items():
        path = folder / file
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing; run `growbench report` to write it")
        header = pd.read_csv(path, nrows=0).columns
        text = {column: str for column in header if column in TEXT_COLUMNS}
        frame = pd.read_csv(
            path,
            dtype=text,
            keep_default_na=False,
            na_values={
                column: ["", "nan", "NaN"] for column in header if column not in TEXT_COLUMNS
            },
        )
        frames[name] = frame
    return ReportTables(**frames)
