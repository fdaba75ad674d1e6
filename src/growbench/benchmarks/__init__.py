"""The harness: suite files, the fair training/growth loop, MLflow tracking and the summary table.

Data flows one way: ``suite`` (a checked TOML file) -> ``executor`` (plan, skip what is finished)
-> ``runner`` (one cell: dataset, model, grower) -> ``tracking`` (MLflow) -> ``summary``.
Run one cell without MLflow::

    from growbench.benchmarks import load_suite, run_cell
    result = run_cell(load_suite("default").cells()[0], device="cpu")
"""

from growbench.benchmarks.runner import (
    CellObserver,
    CellResult,
    NonFiniteLossError,
    evaluate,
    resolve_device,
    run_cell,
    train_one_epoch,
)
from growbench.benchmarks.suite import CellConfig, Suite, SuiteError, load_suite, parse_suite

__all__ = [
    "CellConfig",
    "CellObserver",
    "CellResult",
    "NonFiniteLossError",
    "Suite",
    "SuiteError",
    "evaluate",
    "load_suite",
    "parse_suite",
    "resolve_device",
    "run_cell",
    "train_one_epoch",
]
