"""Where a cell's code came from: the commit and state of growbench's tree, and the installed
package (and version) that supplies the cell's method, dataset and model.

A result can be trusted only as far as its code can be named. Plugins come from other
packages, so each cell records, beside growbench's own commit, which distribution provides each
of its three parts (``provider_tags``), and whether the tree it ran from had uncommitted
changes (``git_dirty``): a dirty tree's commit does not say what ran.
"""

from __future__ import annotations

import functools
import subprocess
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import growbench

if TYPE_CHECKING:
    from growbench.benchmarks.suite import CellConfig

UNKNOWN = "unknown"


def provider_tags(cell: CellConfig) -> dict[str, str]:
    """``growbench.provider.{method,dataset,model}``: the distribution and version that
    supplies each part of ``cell`` (``provider``)."""
    from growbench.datasets.registry import dataset_entry
    from growbench.methods import available_methods
    from growbench.nn.zoo.registry import get_model

    parts = {
        "method": available_methods()[cell.registered_method],
        "dataset": dataset_entry(cell.task.dataset).load,
        "model": get_model(cell.task.model),
    }
    return {f"growbench.provider.{part}": provider(code) for part, code in parts.items()}


def provider(code: Any) -> str:
    """``"<distribution> <version>"`` for the installed distribution whose package defines
    ``code`` (a class or function), else ``"<module> (not from an installed package)"``."""
    module = getattr(code, "__module__", None) or UNKNOWN
    return _package_provider(module.split(".")[0]) or f"{module} (not from an installed package)"


@functools.cache
def _package_provider(package: str) -> str | None:
    """``"<distribution> <version>"`` of the distribution that installs the top-level
    ``package``, None when none does; looked up once per process (each lookup reads every
    installed package's metadata, and every cell asks), see ``forget_installed``."""
    names = _distributions().get(package, [])
    return f"{names[0]} {metadata.version(names[0])}" if names else None


@functools.cache
def _distributions() -> dict[str, list[str]]:
    return metadata.packages_distributions()


def forget_installed() -> None:
    """Look the installed distributions up afresh at the next ``provider`` (after a package was
    installed into this process's path)."""
    _distributions.cache_clear()
    _package_provider.cache_clear()


def git_dirty() -> str:
    """``"true"`` when growbench's git tree has uncommitted changes to tracked files, ``"false"``
    when it has none, ``"unknown"`` outside a git checkout or without git."""
    return _git_dirty()


@functools.cache
def _git_dirty() -> str:
    root = _checkout()
    if root is None:
        return UNKNOWN
    try:
        done = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return UNKNOWN
    if done.returncode != 0:
        return UNKNOWN
    return "true" if done.stdout.strip() else "false"


def _checkout() -> Path | None:
    """The folder holding growbench's ``.git`` (a directory, or a worktree's file), if any."""
    for folder in Path(growbench.__file__).resolve().parents:
        if (folder / ".git").exists():
            return folder
    return None


def git_commit() -> str:
    """The commit growbench's source tree is at, read from ``.git`` (no git process), or unknown."""
    folder = _checkout()
    if folder is None:
        return UNKNOWN
    git = folder / ".git"
    if git.is_file():  # a worktree: ".git" names the real git dir
        git = (folder / git.read_text().removeprefix("gitdir:").strip()).resolve()
    return _read_head(git) if git.is_dir() else UNKNOWN


def _read_head(git: Path) -> str:
    try:
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return head
        ref = head.removeprefix("ref:").strip()
        if (git / ref).is_file():
            return (git / ref).read_text().strip()
        packed = git / "packed-refs"
        if packed.is_file():
            for line in packed.read_text().splitlines():
                if line.endswith(f" {ref}"):
                    return line.split()[0]
    except OSError:
        pass
    return UNKNOWN
