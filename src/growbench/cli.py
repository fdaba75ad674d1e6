"""The ``growbench`` command: run suites, write reports, list methods, models and datasets, open
the UI.

Mistakes a user can make (a bad suite file, an unknown method or dataset, missing data, cuda
asked for without one, a tracking store that is unusable or unreachable) end in one line,
``growbench: error: <what is wrong>``, and exit status 2, never a traceback; warnings are one line
too, and never stop the command. ``growbench run`` exits 1 when any cell failed, naming them,
or when its tracking server stopped answering mid-run. Ctrl-C during a run exits 130, SIGTERM
143, with the finished cells kept in the store and the running one's checkpoint kept to resume
from.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from growbench import __version__

USER_ERRORS = (ValueError, FileNotFoundError)  # SuiteError and StoreError are ValueErrors


def one_line_warning(message, category, filename, lineno, line=None) -> str:
    """``warnings.formatwarning`` for the command line: one line, whatever the message held
    (``warnings.showwarning`` writes what this returns)."""
    return f"growbench: warning: {' '.join(str(message).split())}\n"


def _once_per_command(shown: set[str]):
    """``warnings.formatwarning`` for one command: ``one_line_warning``, or "" for a line it
    already gave (a registry read ten times warns ten times once a library resets Python's own
    memory of what it showed, as changing the warning filters does)."""

    def format_once(message, category, filename, lineno, line=None) -> str:
        text = one_line_warning(message, category, filename, lineno)
        if text in shown:
            return ""
        shown.add(text)
        return text

    return format_once


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``growbench`` console script; returns 0 or 1, or raises
    ``SystemExit``."""
    args = _parser().parse_args(argv)
    from growbench.benchmarks import interrupts
    from growbench.benchmarks.store import StoreUnreachableError

    default_format, warnings.formatwarning = warnings.formatwarning, _once_per_command(set())
    try:
        with interrupts.terminate_as_interrupt():
            return args.command(args)
    except BrokenPipeError:  # `growbench methods --verbose | head`: the reader has had enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        raise SystemExit(1) from None
    except StoreUnreachableError as exc:  # mid-run: not the user's input, so not status 2
        print(f"growbench: error: {_one_line(exc)}", file=sys.stderr)
        raise SystemExit(1) from None
    except USER_ERRORS as exc:
        print(f"growbench: error: {_one_line(exc)}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, interrupts.Terminated)
        print(
            f"growbench: {'stopped by SIGTERM' if terminated else 'interrupted'}; finished "
            "cells are kept, run the same command to do the rest",
            file=sys.stderr,
        )
        status = interrupts.TERMINATED_STATUS if terminated else interrupts.INTERRUPTED_STATUS
        raise SystemExit(status) from None
    finally:
        warnings.formatwarning = default_format


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())  # whatever the exception held


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line (and exit status 2), like every other error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)

    def format_help(self) -> str:
        if callable(self.epilog):  # made on demand: it imports torch (the contracts' rules)
            self.epilog = self.epilog()
        return super().format_help()


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="growbench",
        description="Benchmark methods that grow neural networks while they train.",
    )
    parser.add_argument("--version", action="version", version=f"growbench {__version__}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run a suite (finished cells are skipped)")
    run.add_argument("--suite", required=True, help=_SUITE_HELP)
    run.add_argument("--methods", help="comma-separated subset of the suite's methods")
    run.add_argument("--datasets", help="comma-separated subset of the suite's datasets or tasks")
    run.add_argument("--seeds", type=_whole, help="run seeds 0..N-1 instead of the suite's")
    run.add_argument(
        "--device", default="auto", help="auto (cuda if available), cpu, cuda or cuda:N"
    )
    run.add_argument(
        "--threads",
        type=_threads,
        default=1,
        help=f"torch CPU threads, at most {MAX_THREADS} (default 1: fastest for small nets)",
    )
    run.add_argument(
        "--checkpoint-every",
        type=_count,
        default=1,
        metavar="N",
        help="save a cell's state after every N-th epoch and each growth round (0: never)",
    )
    run.add_argument(
        "--checkpoint-seconds",
        type=_seconds,
        default=60.0,
        metavar="S",
        help="but at most once in S seconds of a cell (default 60)",
    )
    run.add_argument(
        "--executor",
        choices=("process", "ray"),
        default="process",
        help="process: cells one after another here (default); ray: one Ray task per cell",
    )
    run.add_argument(
        "--address",
        help="with --executor ray: a running cluster (auto, or HOST:PORT); default: start one here",
    )
    run.add_argument(
        "--cpus-per-cell", type=_positive_number, default=1.0, help="Ray CPUs per cell (default 1)"
    )
    run.add_argument(
        "--gpus-per-cell",
        type=_seconds,
        default=0.0,
        help="Ray GPUs per cell, fractions allowed (default 0)",
    )
    _add_tracking_uri(run)
    run.add_argument("--dry-run", action="store_true", help="check and list cells, write nothing")
    run.add_argument(
        "--smoke",
        action="store_true",
        help="a 2-epoch version of the suite on a data subset and narrow nets (suite NAME-smoke)",
    )
    run.add_argument(
        "--synthetic",
        action="store_true",
        help="random data of each dataset's real shapes instead of the data (no download; "
        "suite NAME-synthetic): with --smoke, a rehearsal of a paper suite's whole path",
    )
    run.set_defaults(command=_run)

    report = commands.add_parser(
        "report", help="write a suite's comparison report from its runs (trains nothing)"
    )
    report.add_argument("--suite", required=True, help=_SUITE_HELP)
    report.add_argument("--methods", help="comma-separated subset of the suite's methods")
    report.add_argument("--tasks", help="comma-separated subset of the suite's tasks or datasets")
    report.add_argument(
        "--seeds", type=_whole, help="report seeds 0..N-1 instead of the suite's (as run --seeds)"
    )
    report.add_argument(
        "--out",
        type=_folder,
        help="output folder (default: reports/<suite>, or reports/<suite>-selection when "
        "--methods, --tasks or --seeds narrow it)",
    )
    report.add_argument(
        "--compare-uri",
        metavar="URI",
        help="a second MLflow store holding the same suite run elsewhere (another machine or "
        "--threads): the report adds a section on which verdicts differ between the two",
    )
    _add_tracking_uri(report)
    report.set_defaults(command=_report)

    methods = commands.add_parser("methods", help="list the registered growth methods")
    methods.add_argument(
        "--verbose", action="store_true", help="one line per option, with its description"
    )
    methods.set_defaults(command=_methods)

    check = commands.add_parser(
        "check",
        help="run the contract on installed methods, or on models (tiny CPU tasks)",
        description="Run the plugin contract on installed growth methods (NAME...), or the model "
        "contract on zoo models (--model NAME); each rule prints PASS, FAIL or SKIP.",
        epilog=_contract_rules,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument("names", nargs="*", metavar="NAME", help="registered method names")
    check.add_argument(
        "--model",
        action="append",
        metavar="NAME",
        help="run the model contract on this zoo model instead (repeatable)",
    )
    check.add_argument(
        "--rules", help="comma-separated subset of the chosen contract's rules (default: all)"
    )
    check.set_defaults(command=_check)

    datasets = commands.add_parser("datasets", help="list the registered datasets")
    datasets.add_argument(
        "--verbose", action="store_true", help="one line per option, with its description"
    )
    datasets.set_defaults(command=_datasets)

    data = commands.add_parser("data", help="fetch or verify a dataset's official files")
    actions = data.add_subparsers(required=True, metavar="ACTION")
    fetch = actions.add_parser("fetch", help="download (resuming), verify and extract a dataset")
    fetch.add_argument("name", help="a dataset with official archives (growbench datasets)")
    fetch.add_argument(
        "--root", type=_folder, help="data root (default: $GROWBENCH_DATA, else ~/.cache/growbench)"
    )
    fetch.add_argument(
        "--mirror", help="a URL (http://, https:// or file://) holding the archives instead"
    )
    fetch.set_defaults(command=_data_fetch)
    verify = actions.add_parser("verify", help="check a dataset's local files and checksums")
    verify.add_argument("name")
    verify.add_argument(
        "--root", type=_folder, help="data root (default: $GROWBENCH_DATA, else ~/.cache/growbench)"
    )
    verify.set_defaults(command=_data_verify)

    models = commands.add_parser("models", help="list the model zoo with each model's options")
    models.add_argument(
        "--verbose", action="store_true", help="one line per option, with its description"
    )
    models.set_defaults(command=_models)

    ui = commands.add_parser("ui", help="open the MLflow UI on 127.0.0.1 over the store")
    ui.add_argument("--port", type=_port, default=5000, help="1 to 65535 (default 5000)")
    _add_tracking_uri(ui)
    ui.set_defaults(command=_ui)
    return parser


# The packaged suites, listed without importing the harness (and torch) for --help.
_SUITE_HELP = "a TOML file, or a packaged suite: " + ", ".join(
    sorted(path.stem for path in (Path(__file__).parent / "benchmarks" / "suites").glob("*.toml"))
)


def _add_tracking_uri(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tracking-uri",
        help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)",
    )


MAX_THREADS = 1024  # more than any machine's cores (torch cannot even take 2**63)


def _threads(text: str) -> int:
    value = _count(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    if value > MAX_THREADS:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_THREADS}, got {value}")
    return value


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= 65535):
        raise argparse.ArgumentTypeError(f"must be a port number from 1 to 65535, got {text!r}")
    return int(text)


def _folder(text: str) -> Path:
    if not text.strip():
        raise argparse.ArgumentTypeError(
            f"must name a folder, got {text!r}; leave the option out for its default"
        )
    return Path(text)


def _positive_number(text: str) -> float:
    value = _seconds(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text!r}")
    return value


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None


def _count(text: str) -> int:
    value = _whole(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def _store(uri: str | None, option: str = "--tracking-uri") -> str:
    """The store ``option`` names (None: the default one); an empty one is refused, not taken
    for the default."""
    from growbench.benchmarks.tracking import resolve_tracking_uri

    if uri is not None and not uri.strip():
        raise ValueError(f"{option} is empty; pass a store such as sqlite:///mlflow.db")
    return resolve_tracking_uri(uri)


def _names(text: str | None) -> list[str] | None:
    return None if text is None else [name.strip() for name in text.split(",") if name.strip()]


def _run(args: argparse.Namespace) -> int:
    from growbench.benchmarks.executor import dry_run, run_suite
    from growbench.benchmarks.runner import check_device_name
    from growbench.benchmarks.suite import load_suite
    from growbench.benchmarks.summary import format_summary, summarise
    from growbench.benchmarks.tracking import CheckpointPolicy

    check_device_name(args.device)  # up front, whatever the executor
    suite = load_suite(args.suite).select(_names(args.methods), _names(args.datasets), args.seeds)
    if args.smoke:
        suite = suite.smoke()
    if args.synthetic:
        suite = suite.synthetic()
    uri = _store(args.tracking_uri)
    if args.dry_run:
        planned, data = dry_run(suite, uri, args.device)
        print(f"suite {suite.name}: {len(planned)} cells, store {uri} (dry run: nothing written)")
        width = max((len(item.cell.label) for item in planned), default=0)
        for item in planned:
            note = f"  ({item.reason})" if item.reason else ""
            label = item.cell.label.ljust(width)
            print(f"  {item.status:<12} {label}  {item.cell.config_hash()[:12]}{note}")
        if suite.matched:
            print(
                f"  and a matched static net per cell of {', '.join(suite.matched)}, planned "
                "as each of those cells finishes"
            )
        print("data:")
        for line in data:
            print(f"  {line}")
        return 0
    _quiet_mlflow()
    checkpoints = CheckpointPolicy(args.checkpoint_every, args.checkpoint_seconds)
    if args.executor == "ray":
        from growbench.benchmarks.ray_executor import RayResources, run_suite_on_ray

        resources = RayResources(args.cpus_per_cell, args.gpus_per_cell)
        outcome = run_suite_on_ray(
            suite, uri, args.device, args.address, resources, args.threads, checkpoints, True
        )
    else:
        if args.address is not None:
            raise ValueError("--address is for --executor ray")
        outcome = run_suite(
            suite, uri, args.device, progress=True, threads=args.threads, checkpoints=checkpoints
        )
    held = f", {len(outcome.held)} held by another runner" if outcome.held else ""
    print(
        f"suite {suite.name}: {len(outcome.finished)} cells trained, {len(outcome.skipped)} "
        f"already done, {len(outcome.failed)} failed, {len(outcome.unsupported)} unsupported"
        f"{held}"
    )
    for label in outcome.resumed:
        print(f"  resumed {label}")
    for label in outcome.held:
        print(f"  held {label} (another runner is training it; rerun later to check)")
    for line in outcome.unsupported:
        print(f"  skipped {line}")
    print(format_summary(summarise(uri, suite.name, suite.cells())))
    print(f"runs are in {uri}; browse them with `growbench ui`")
    for label in outcome.failed:
        print(f"  FAILED {label} (traceback.txt in its MLflow run)")
    if outcome.failed:
        print(
            f"growbench: {len(outcome.failed)} of {len(suite.cells())} cells failed: "
            + ", ".join(outcome.failed),
            file=sys.stderr,
        )
        return 1
    return 0


def _report(args: argparse.Namespace) -> int:
    from growbench.benchmarks.suite import load_suite
    from growbench.reports.build import report_command, selection_note, write_report

    methods, tasks = _names(args.methods), _names(args.tasks)
    full = load_suite(args.suite)
    suite = full.select(methods, tasks, args.seeds, tasks_option="--tasks")
    uri = _store(args.tracking_uri)
    compare = None if args.compare_uri is None else _store(args.compare_uri, "--compare-uri")
    # A narrowed report never overwrites the suite's full one unless --out says so.
    selected = methods is not None or tasks is not None or args.seeds is not None
    out = args.out or Path("reports") / (f"{suite.name}-selection" if selected else suite.name)
    _quiet_mlflow()
    command = report_command(full, methods, tasks, compare is not None, args.seeds)
    note = selection_note(full, suite)
    path = write_report(
        uri, suite, out, progress=True, command=command, compare_uri=compare, selection=note
    )
    print(f"report written: {path} (tables and figures beside it)")
    return 0


def _quiet_mlflow() -> None:
    """MLflow and alembic announce every table they create; the user needs none of it."""
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _methods(args: argparse.Namespace) -> int:
    from growbench.methods import available_methods

    for name, cls in available_methods().items():
        print(f"{name}  (preserves function: {cls.preserves_function})")
        print(f"    {cls.description or '(no description)'}")
        _print_options(cls.Config, args.verbose)
    return 0


def _contract_rules() -> str:
    """The rules of both contracts, one line each (the epilog of ``growbench check --help``)."""
    from growbench import contract, model_contract

    lines = []
    for title, checks in (
        ("method contract rules (growbench check NAME...):", contract.CHECKS),
        ("model contract rules (growbench check --model NAME):", model_contract.MODEL_CHECKS),
    ):
        width = max(len(check.rule) for check in checks)
        lines += [title, *(f"  {check.rule.ljust(width)}  {check.says}" for check in checks), ""]
    return "\n".join(lines)


def _chosen_rules(checks: tuple, text: str | None) -> tuple:
    """The checks ``--rules`` names, in its order (all of them without it)."""
    rules = {check.rule: check for check in checks}
    if not text:
        return tuple(rules.values())
    wanted = _names(text) or []
    bad = [rule for rule in wanted if rule not in rules]
    if bad:
        raise ValueError(
            f"--rules: unknown rule(s) {', '.join(bad)}; choose from {', '.join(rules)}"
        )
    return tuple(rules[rule] for rule in wanted)


def _check(args: argparse.Namespace) -> int:
    """The method contract on the named methods, or the model contract on ``--model``s."""
    if bool(args.names) == bool(args.model):
        raise ValueError(
            "check: name the methods to check (growbench check NAME...) or the models "
            "(growbench check --model NAME), one of the two"
        )
    from growbench import contract, model_contract
    from growbench.methods import available_methods
    from growbench.nn.zoo import available_models

    if args.model:
        kind, names, known = "model", args.model, available_models()
        checks, run = model_contract.MODEL_CHECKS, model_contract.run_model_contract
    else:
        kind, names, known = "method", args.names, available_methods()
        checks, run = contract.CHECKS, contract.run_contract
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"unknown {kind}(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    chosen = _chosen_rules(checks, args.rules)
    failed = 0
    for name in names:
        for check, outcome in run(name, chosen):
            print(outcome.line(check.says), flush=True)
            failed += outcome.status == "fail"
    verdict = f"{failed} check(s) failed" if failed else "every check passed"
    print(f"growbench check: {verdict} ({', '.join(names)})")
    return 1 if failed else 0


def _print_options(options_class: type, verbose: bool, empty: str = "(none)") -> None:
    """``    options: a=1, b=2`` on one line, or with ``verbose`` one line per option with its
    description (its attribute docstring, ``growbench.options``)."""
    from growbench.options import option_rows

    rows = option_rows(options_class)
    if not verbose:
        print(f"    options: {', '.join(f'{r.name}={r.default}' for r in rows) or empty}")
        return
    if not rows:
        print("    options: (none)")
    for row in rows:
        print(f"    {row.name} = {row.default}  — {row.description or '(no description)'}")


def _datasets(args: argparse.Namespace) -> int:
    from growbench.datasets import dataset_names, dataset_options, dataset_spec
    from growbench.datasets.registry import dataset_entry

    rows = [("name", "task", "input shape", "outputs", "source")]
    for name in dataset_names():
        spec = dataset_spec(name)
        shape = "x".join(map(str, spec.input_shape))
        rows.append((name, spec.task, shape, str(spec.num_outputs), spec.source))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[4])
    print()
    for name in dataset_names():
        if args.verbose:
            print(name)
            _print_options(dataset_entry(name).options, verbose=True)
            continue
        options = ", ".join(f"{k}={v!r}" for k, v in dataset_options(name).items())
        print(f"{name} options: {options or '(none)'}")
    return 0


def _data_fetch(args: argparse.Namespace) -> int:
    from growbench.datasets import archives

    folder = archives.fetch(args.name, args.root, args.mirror, progress=sys.stderr.isatty())
    print(f"{args.name}: fetched, verified and extracted in {folder}")
    return 0


def _data_verify(args: argparse.Namespace) -> int:
    from growbench.datasets import archives

    problems = archives.verify(args.name, args.root)
    folder = archives.dataset_dir(args.name, args.root)
    if problems:
        print(f"{args.name} in {folder}: {len(problems)} problem(s)")
        for problem in problems:
            print(f"  {problem}")
        print(f"fix with `growbench data fetch {args.name}`")
        return 1
    print(f"{args.name} in {folder}: every file present with its published checksum")
    return 0


def _models(args: argparse.Namespace) -> int:
    from growbench.nn.zoo import available_models

    for name, cls in available_models().items():
        print(name)
        print(f"    {cls.description or '(no description)'}")
        _print_options(cls.Options, args.verbose, empty="")
    return 0


def _ui(args: argparse.Namespace) -> int:
    uri = _store(args.tracking_uri)
    beside_python = Path(sys.executable).parent / "mlflow"
    program = str(beside_python) if beside_python.exists() else "mlflow"
    command = [program, "ui", "--backend-store-uri", uri, "--host", "127.0.0.1"]
    command += ["--port", str(args.port)]
    print(" ".join(command), file=sys.stderr)
    for line in _runs_pages(uri, args.port):
        print(line, file=sys.stderr)
    os.execvp(program, command)
    return 0  # not reached: exec replaced this process


def _runs_pages(uri: str, port: int) -> list[str]:
    """Where each growbench experiment's runs table is: MLflow 3's UI opens on its GenAI pages
    whatever the experiment's kind tag says, unless the address asks for the training view."""
    from mlflow import MlflowClient

    from growbench.benchmarks.tracking import store_exists

    home = f"http://127.0.0.1:{port}/#/experiments"
    if not store_exists(uri):
        return [f"growbench: the store is empty; the UI will be at {home}"]
    experiments = MlflowClient(uri).search_experiments(filter_string="name LIKE 'growbench:%'")
    return ["growbench: the runs of each suite (cells as rows, metrics as columns):"] + [
        f"  {experiment.name}: {home}/{experiment.experiment_id}/runs?workflowType=machine_learning"
        for experiment in sorted(experiments, key=lambda e: e.name)
    ]


if __name__ == "__main__":
    sys.exit(main())
