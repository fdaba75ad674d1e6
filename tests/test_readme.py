"""The README's plugin example really runs and behaves as the README says."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
import torch

from growbench.methods import available_methods, make_grower, registry

from .methods.conftest import make_task

README = Path(__file__).parents[1] / "README.md"


def plugin_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    (example,) = [block for block in blocks if "class WidenLast" in block]
    return example


def test_readme_plugin_example_registers_and_grows(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    available_methods()  # the built-ins register on first use: before the copy, not into it
    monkeypatch.setattr(registry.METHODS, "builtins", dict(registry.METHODS.builtins))
    (tmp_path / "readme_widen_last.py").write_text(plugin_example())
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module("readme_widen_last")
    assert "widen-last" in available_methods()
    task = make_task("conv_bn")
    before = task.net(task.inputs).detach()
    event = make_grower("widen-last", {"units": 3}).grow(task.net, task.context())
    assert event.units_added == {task.net.sites[-1].name: 3}
    assert (task.net(task.inputs).detach() - before).abs().max() <= 1e-12
    tight = make_task("conv_bn")
    budget = tight.net.sites[-1].cost_of_units(1)["params"]
    event = make_grower("widen-last").grow(tight.net, tight.context(remaining_budget=budget))
    assert sum(event.units_added.values()) == 1
    assert torch.isfinite(tight.net(tight.inputs)).all()


REPO = README.parent
PACKAGE = REPO / "src" / "growbench"
TOP_FOLDERS = ("src/", "tests/", "reports/", "bench/", "docs/", ".ci/")
PACKAGE_FOLDERS = ("methods/", "nn/", "datasets/", "benchmarks/")


def named_paths(text: str) -> list[str]:
    """Every repository path a page names: in backticks or as a link target, starting with a
    top-level folder of the repo or a package folder (``methods/...`` inside src/growbench);
    templates with ``<...>`` are not paths."""
    found = re.findall(r"`([^`\s]+)`", text) + re.findall(r"\]\(([^)\s#]+)\)", text)
    starts = TOP_FOLDERS + PACKAGE_FOLDERS
    return sorted({path for path in found if path.startswith(starts) and "<" not in path})


def missing_paths(text: str) -> list[str]:
    missing = []
    for path in named_paths(text):
        local = PACKAGE / path if path.startswith(PACKAGE_FOLDERS) else REPO / path
        if not local.exists():
            missing.append(path)
    return missing


def test_every_path_the_readme_gives_exists():
    text = README.read_text()
    assert "src/growbench/benchmarks/suites/default.toml" in named_paths(text)  # the scan works
    assert missing_paths(text) == [], "the README names paths that do not exist"
