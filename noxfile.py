"""Developer and user entry points: tests, benchmark, report figures, MLflow UI, lint, bench.

Every torch session shares ONE virtual environment, ``.nox/growbench``, built with the standard
library's venv and pip: torch is several GB, pip takes the pinned wheels from the local disk where
they exist (uv would download them), and installing it once per session would cost minutes. The
environment is reinstalled only when ``pyproject.toml`` changes.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import nox

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["lint", "tests"]

ROOT = Path(__file__).parent
SHARED_ENV = ROOT / ".nox" / "growbench"


def _shared_env(session: nox.Session) -> Path:
    """Create or refresh the shared torch environment; return its ``bin`` directory."""
    bin_dir = SHARED_ENV / ("Scripts" if sys.platform == "win32" else "bin")
    python = bin_dir / "python"
    stamp = SHARED_ENV / ".installed-from"
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if not python.exists():
        session.run(sys.executable, "-m", "venv", str(SHARED_ENV), external=True)
    if not stamp.exists() or stamp.read_text() != wanted:
        session.run(
            str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip", external=True
        )
        session.run(
            str(python), "-m", "pip", "install", "--quiet", "-e", f"{ROOT}[dev]", external=True
        )
        stamp.write_text(wanted)
    return bin_dir


def _run(session: nox.Session, program: str, *args: str) -> None:
    session.run(str(_shared_env(session) / program), *args, external=True)


@nox.session(venv_backend="none")
def tests(session: nox.Session) -> None:
    """The whole test suite (pytest exits non-zero when it collects no test)."""
    _run(session, "pytest", *(session.posargs or ["-q"]))


@nox.session(venv_backend="none")
def oracle(session: nox.Session) -> None:
    """The comparisons with gromo 0.1.0 (the TINY authors' library), live: TINY and GradMax."""
    _run(session, "pytest", "-q", "-rs", "tests/methods", "-k", "gromo", *session.posargs)


@nox.session(venv_backend="none")
def benchmark(session: nox.Session) -> None:
    """Run a suite (default: ``default``), print its results table and write its report (not
    after ``--dry-run``): the report covers what was run (``--methods``, ``--datasets``,
    ``--seeds``; a selection goes to ``reports/<suite>-selection``)."""
    args = _with_suite(session.posargs)
    _run(session, "growbench", "run", *args)
    # A smoke run checks, it makes no report; a synthetic one's suite (NAME-synthetic) is no
    # suite `growbench report` can name.
    if {"--dry-run", "--smoke", "--synthetic"} & set(args):
        return
    _run(session, "growbench", "report", *_report_args(args))


# The options of ``growbench run`` that ``growbench report`` takes too, by the report's name.
_SHARED_OPTIONS = {
    "--suite": "--suite",
    "--methods": "--methods",
    "--datasets": "--tasks",
    "--seeds": "--seeds",
    "--tracking-uri": "--tracking-uri",
}


def _report_args(run_args: list[str]) -> list[str]:
    """The ``growbench report`` arguments that report what ``growbench run run_args`` ran: its
    suite, store and selection (``--option value`` or ``--option=value``)."""
    report: list[str] = []
    for index, arg in enumerate(run_args):
        name, equals, value = arg.partition("=")
        if name not in _SHARED_OPTIONS:
            continue
        if not equals:
            if index + 1 >= len(run_args):
                continue  # growbench run has refused it already
            value = run_args[index + 1]
        report += [_SHARED_OPTIONS[name], value]
    return report


@nox.session(venv_backend="none")
def report(session: nox.Session) -> None:
    """Write a suite's report (default: ``default``) from the runs in the store; trains nothing."""
    _run(session, "growbench", "report", *_with_suite(session.posargs))


def _with_suite(args: list[str]) -> list[str]:
    """The session's arguments, with ``--suite default`` unless they name a suite."""
    return list(args) if "--suite" in args else ["--suite", "default", *args]


@nox.session(venv_backend="none")
def ui(session: nox.Session) -> None:
    """The MLflow UI over the same store, on 127.0.0.1."""
    _run(session, "growbench", "ui", *session.posargs)


@nox.session(venv_backend="none")
def bench(session: nox.Session) -> None:
    """Performance figures, each a ratio of two timings taken in the same run."""
    _run(session, "python", str(ROOT / "bench" / "run.py"), *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """Build the reference pages in docs/ (mkdocs + mkdocstrings) into site/; any warning, a
    broken reference or link included, fails the build. Needs no torch: the API pages are read
    from the source, not imported."""
    session.install(
        "mkdocs>=1.6,<2",
        "mkdocstrings[python]>=0.26",
        "ruff>=0.6",
        "pymdown-extensions>=10",  # code blocks highlighted at build time, no CDN script
        "pygments>=2.17",
    )
    session.run("mkdocs", "build", "--strict", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
