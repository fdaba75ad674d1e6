"""Test-wide settings: one torch thread, and a marker per area of the code.

Tests use tiny tensors, where a second thread buys nothing, and on a busy 2-core machine torch's
spinning worker threads made steps up to 100× slower. The harness defaults to one thread too.

Every test gets the marker of its area from where it lives (``AREAS``), so that a developer runs
the part they touch (``pytest -m methods``, ``-m "harness and not slow"``) without a marker on
each test; ``fidelity`` (a method against its brute-force computation, its oracle or its
contract) is a second marker on those method tests. ``slow`` stays marked by hand.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

# Area of each test module, by the longest path prefix (relative to tests/) that names it.
AREAS = {
    "nn": "nn",
    "methods": "methods",
    "datasets": "harness",
    "benchmarks": "harness",
    "benchmarks/test_crash_safety.py": "reliability",
    "benchmarks/test_healing.py": "reliability",
    "benchmarks/test_storage_faults.py": "reliability",
    "benchmarks/test_checkpoint.py": "reliability",
    "benchmarks/test_bad_input.py": "reliability",
    "reports": "reports",
    "test_docs.py": "docs",
    "test_docs_examples.py": "docs",
    "test_readme.py": "docs",
    "test_option_descriptions.py": "docs",
    "test_check.py": "harness",
    "test_check_model.py": "harness",
    "test_provenance.py": "harness",
}
# Method tests that check a method is implemented faithfully: the contract every method must
# meet, the oracle library's modules, and tests named for a comparison with brute force.
FIDELITY_MODULES = ("methods/test_contract.py", "gromo")
FIDELITY_WORDS = ("match", "brute", "finite", "eigh", "oracle", "exact", "agree", "autograd")


def area_of(relative: str) -> str:
    """The area marker of the test module at ``relative`` (a path under tests/)."""
    prefixes = [
        prefix for prefix in AREAS if relative == prefix or relative.startswith(prefix + "/")
    ]
    if not prefixes:
        raise LookupError(f"tests/{relative} has no area: add it to AREAS in tests/conftest.py")
    return AREAS[max(prefixes, key=len)]


def pytest_collection_modifyitems(config, items) -> None:
    root = Path(__file__).parent
    for item in items:
        relative = item.path.relative_to(root).as_posix()
        item.add_marker(area_of(relative))
        if relative.startswith("methods/") and (
            any(key in relative for key in FIDELITY_MODULES)
            or any(word in item.name for word in FIDELITY_WORDS)
        ):
            item.add_marker("fidelity")


@pytest.fixture(autouse=True, scope="session")
def _interruptible():
    """Ctrl-C as in a terminal: a test run started in the background of a non-interactive shell
    inherits SIGINT ignored (POSIX), and so would every ``growbench`` it starts, which the
    interrupt tests need to stop on SIGINT."""
    previous = signal.getsignal(signal.SIGINT)
    if previous == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


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
    provenance.forget_installed()
    yield site
    provenance.forget_installed()
