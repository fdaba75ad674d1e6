"""Test-wide settings: one torch thread.

Tests use tiny tensors, where a second thread buys nothing, and on a busy 2-core machine torch's
spinning worker threads made steps up to 100× slower. The harness defaults to one thread too.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def install_distribution(
    site: Path,
    name: str,
    version: str,
    methods: dict[str, str],
    module: tuple[str, str] = ("", ""),
    group: str = "growbench.methods",
) -> None:
    """Install a plugin package into ``site`` as pip leaves one, for ``importlib.metadata`` to
    find once ``site`` is on ``sys.path``: its metadata, its entry points in ``group``
    (``methods``: name → ``module:Object``) and, given ``module`` (its name and source), its
    top-level module."""
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = "".join(f"{key} = {value}\n" for key, value in methods.items())
    (info / "entry_points.txt").write_text(f"[{group}]\n{lines}")
    module_name, source = module
    if module_name:
        (site / f"{module_name}.py").write_text(source)
        (info / "top_level.txt").write_text(f"{module_name}\n")


@pytest.fixture
def plugin_site(tmp_path: Path, monkeypatch) -> Iterator[Path]:
    """A folder on ``sys.path`` to install plugin packages into (``install_distribution``);
    the provenance lookup of installed packages is refreshed around the test."""
    from growbench import provenance

    site = tmp_path / "site-packages"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    provenance._distributions.cache_clear()
    yield site
    provenance._distributions.cache_clear()
