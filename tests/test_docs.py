"""The repository stands alone: no tracked file cites a document outside it, and every path the
docs pages name exists. (``nox -s docs`` builds the pages with mkdocs in strict mode, which
checks their links and API references.)"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.test_readme import missing_paths, named_paths

REPO = Path(__file__).parents[1]
# What a citation of a document outside the repository looks like: the design sketch and the
# method specifications the project started from, by path (assembled from parts, so that this
# file does not itself name them) or by name.
SIBLING = "sha" + "red"
OUTSIDE_PATHS = (f"../{SIBLING}", f"{SIBLING}/methods", "DESIGN" + ".md")
OUTSIDE = re.compile("|".join(map(re.escape, OUTSIDE_PATHS)) + r"|method[- ]notes?\b|\bspec §")


def tracked_text_files() -> list[Path]:
    try:
        listed = subprocess.run(
            ["git", "-C", str(REPO), "ls-files"], capture_output=True, text=True, check=True
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    suffixes = {".py", ".md", ".toml", ".yml", ".yaml", ".txt", ".cfg", ""}
    return [REPO / name for name in listed if Path(name).suffix in suffixes]


def test_no_tracked_file_cites_a_document_outside_the_repository():
    files = tracked_text_files()
    assert any(path.name == "README.md" for path in files)
    citing = []
    for path in files:
        if path == Path(__file__) or not path.is_file():
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
            if OUTSIDE.search(line):
                citing.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert citing == [], "\n".join(citing)


def test_the_pattern_catches_what_it_is_for():
    for line in (f"see ../{SIBLING}/methods/s2d.md", "(method-notes convention 5)", "spec §3"):
        assert OUTSIDE.search(line)
    assert not OUTSIDE.search("(convention 5, docs/conventions.md) and the DatasetSpec")


def test_every_path_the_docs_name_exists():
    pages = sorted((REPO / "docs").rglob("*.md"))
    assert len(pages) >= 10
    names = {path for page in pages for path in named_paths(page.read_text())}
    assert "tests/methods/test_s2d.py" in names  # the scan sees the method pages' paths
    missing = {  # a link to another page is relative to the page (methods/index.md)
        str(page.relative_to(REPO)): [
            path for path in missing_paths(page.read_text()) if not (page.parent / path).exists()
        ]
        for page in pages
    }
    assert {page: paths for page, paths in missing.items() if paths} == {}


def load_fidelity_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("fidelity", REPO / "bench" / "fidelity.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_fidelity_page_measures_what_it_says():
    """The page's rows come from the measurement (here two of them, recomputed) and cover every
    built-in method on every fixture."""
    from growbench.contract import FIXTURES
    from growbench.methods import available_methods, get_method

    fidelity = load_fidelity_script()
    split = fidelity.measure("s2d", "tanh_mlp")
    assert abs(float(split["ratio"]) - 1) <= get_method("s2d").prediction_tolerance
    assert float(split["moved"]) <= 1e-12  # s2d keeps the function at ε = 0
    added = fidelity.measure("random-add", "tanh_mlp")
    assert (added["predicted"], added["realised"]) == ("0", "0")
    text = (REPO / "docs" / "fidelity.md").read_text()
    built_in = [n for n, c in available_methods().items() if c.__module__.startswith("growbench.")]
    for name in built_in:
        for fixture in FIXTURES:
            assert f"| `{name}` | {fixture} |" in text
