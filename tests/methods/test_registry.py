"""The method registry with plugins installed as real distributions (a ``.dist-info`` folder on
``sys.path``, found by ``importlib.metadata`` as pip's would be): a broken one is one warning
naming its package, entry point and error, and every other method still works."""

from __future__ import annotations

from pathlib import Path

import pytest

from growbench import provenance
from growbench.cli import main
from growbench.methods import available_methods
from tests.conftest import install_distribution

PLUGIN = """
from growbench.methods.baselines import NoGrowth


class Renamed(NoGrowth):
    name = "renamed"
"""


@pytest.fixture
def plugins(plugin_site: Path) -> None:
    good = ("good_plugin", PLUGIN)
    install_distribution(
        plugin_site, "good-plugin", "1.2", {"renamed": "good_plugin:Renamed"}, good
    )
    broken = {"broken": "no_such_plugin_module:Grower"}
    install_distribution(plugin_site, "broken-plugin", "0.3", broken)
    misnamed = {"wrong-name": "good_plugin:Renamed"}
    install_distribution(plugin_site, "misnamed-plugin", "0.1", misnamed)


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
