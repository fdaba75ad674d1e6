"""Provenance: the package that supplies a plugin's code, and whether the git tree was dirty."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import growbench
from growbench import provenance
from growbench.methods import available_methods


def test_a_built_in_method_is_supplied_by_growbench() -> None:
    assert provenance.provider(available_methods()["s2d"]) == f"growbench {growbench.__version__}"


def test_an_installed_package_is_named_with_its_version() -> None:
    assert provenance.provider(pytest.fixture) == f"pytest {pytest.__version__}"


def test_code_from_no_installed_package_says_so() -> None:
    orphan = type("Orphan", (), {"__module__": "no_such_package_anywhere.plugin"})
    assert provenance.provider(orphan) == (
        "no_such_package_anywhere.plugin (not from an installed package)"
    )


def git(root: Path, *args: str) -> None:
    command = ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t", *args]
    subprocess.run(command, check=True, capture_output=True)


def test_git_dirty_follows_the_tracked_files(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(provenance, "_checkout", lambda: tmp_path)
    provenance._git_dirty.cache_clear()
    try:
        assert provenance.git_dirty() == "unknown"  # not a repository yet
        provenance._git_dirty.cache_clear()
        git(tmp_path, "init", "-q")
        (tmp_path / "code.py").write_text("x = 1\n")
        git(tmp_path, "add", "code.py")
        git(tmp_path, "commit", "-q", "-m", "first")
        (tmp_path / "scratch.txt").write_text("untracked files do not count\n")
        assert provenance.git_dirty() == "false"
        provenance._git_dirty.cache_clear()
        (tmp_path / "code.py").write_text("x = 2\n")
        assert provenance.git_dirty() == "true"
    finally:
        provenance._git_dirty.cache_clear()
