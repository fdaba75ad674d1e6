"""The method registry with plugins installed as real distributions (a ``.dist-info`` folder on
``sys.path``, found by ``importlib.metadata`` as pip's would be): a broken one is one warning
naming its package, entry point and error, and every other method still works."""

from __future__ import annotations

from pathlib import Path

import pytest

from growbench import provenance
from growbench.cli import main
from growbench.methods import available_methods

PLUGIN = """
from growbench.methods.baselines import NoGrowth


class Renamed(NoGrowth):
    name = "renamed"
"""


def install(site: Path, name: str, version: str, entries: dict[str, str], module: str = "") -> None:
    """A distribution as pip leaves it: its metadata, entry points and top-level module."""
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = "".join(f"{key} = {value}\n" for key, value in entries.items())
    (info / "entry_points.txt").write_text(f"[growbench.methods]\n{lines}")
    if module:
        (site / f"{module}.py").write_text(PLUGIN)
        (info / "top_level.txt").write_text(f"{module}\n")


@pytest.fixture
def plugins(tmp_path: Path, monkeypatch) -> None:
    install(tmp_path, "good-plugin", "1.2", {"renamed": "good_plugin:Renamed"}, "good_plugin")
    install(tmp_path, "broken-plugin", "0.3", {"broken": "no_such_plugin_module:Grower"})
    install(tmp_path, "misnamed-plugin", "0.1", {"wrong-name": "good_plugin:Renamed"})
    monkeypatch.syspath_prepend(str(tmp_path))
    provenance._distributions.cache_clear()
    yield
    provenance._distributions.cache_clear()


def test_a_broken_plugin_is_one_warning_and_the_others_stay(plugins, capsys) -> None:
    with pytest.warns(RuntimeWarning) as caught:
        assert main(["methods"]) == 0
    messages = {str(warning.message) for warning in caught}
    broken = [message for message in messages if "'broken'" in message]
    assert len(broken) == 1
    for part in ("package broken-plugin 0.3", "no_such_plugin_module:Grower", "ModuleNotFound"):
        assert part in broken[0]
    assert any("'wrong-name'" in m and "misnamed-plugin" in m for m in messages)
    listing = capsys.readouterr().out
    for name in ("none", "static", "s2d", "tiny", "renamed"):
        assert f"\n{name}  (" in f"\n{listing}"
    assert "wrong-name" not in listing


def test_a_good_plugin_joins_after_the_built_ins_and_names_its_package(plugins) -> None:
    with pytest.warns(RuntimeWarning):
        methods = available_methods()
    assert list(methods)[-1] == "renamed"
    assert {"none", "static", "s2d", "tiny"} <= set(methods)
    assert provenance.provider(methods["renamed"]) == "good-plugin 1.2"
