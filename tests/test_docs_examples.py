"""The worked examples of docs/plugins.md work as printed.

The page's sections headed "Example: ..." hold a package (its ``pyproject.toml``), one module per
plugin kind (a python block whose first line names its file) and a suite. The tests install those
blocks as a real distribution in a scratch site (``plugin_site``), with the entry points the page's
``pyproject.toml`` declares, and use them through growbench's registries, as ``pip install`` would
make them available.
"""

from __future__ import annotations

import re
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from growbench import provenance
from growbench.benchmarks.runner import run_cell
from growbench.benchmarks.suite import parse_suite
from growbench.cli import main
from growbench.contract import CHECKS, run_contract
from growbench.datasets import dataset_options, load_dataset
from growbench.methods import available_methods, make_grower
from growbench.nn import ModelConfig, build_model
from tests.conftest import install_distribution
from tests.methods.conftest import make_task

PAGE = Path(__file__).parents[1] / "docs" / "plugins.md"
MARK = "## Example: "


def examples() -> dict[str, list[tuple[str, str]]]:
    """{heading after "Example: ": [(language, code), ...]} for each marked section."""
    sections = {}
    for section in PAGE.read_text().split("\n## ")[1:]:
        heading, _, body = section.partition("\n")
        if f"## {heading}".startswith(MARK):
            blocks = re.findall(r"^```(\w*)\n(.*?)^```", body, flags=re.DOTALL | re.MULTILINE)
            sections[heading.removeprefix(MARK[3:])] = blocks
    return sections


def block(section: str, language: str) -> str:
    (code,) = [code for lang, code in examples()[section] if lang == language]
    return code


def pyproject() -> dict:
    return tomllib.loads(block("the package", "toml"))


def module_file(code: str) -> str:
    """The path a module block names on its first line, ``# my_growth/method.py``."""
    first = code.splitlines()[0]
    assert re.fullmatch(r"# [\w/]+\.py", first), f"no file named on the block's first line: {first}"
    return first[2:]


def test_the_page_has_one_example_per_plugin_kind() -> None:
    found = examples()
    kinds = {"the package", "a method", "a dataset", "a model", "a suite that uses them"}
    assert set(found) >= kinds
    groups = pyproject()["project"]["entry-points"]
    assert set(groups) == {"growbench.methods", "growbench.datasets", "growbench.models"}
    for kind in ("a method", "a dataset", "a model"):
        assert module_file(block(kind, "python")).startswith("my_growth/")


@pytest.fixture
def my_growth(plugin_site: Path) -> Iterator[dict[str, dict[str, str]]]:
    """The page's package, installed: its modules and a dist-info with every entry point
    (entry-point group → {name: object}); its modules are forgotten after the test."""
    for kind in ("a method", "a dataset", "a model"):
        code = block(kind, "python")
        path = plugin_site / module_file(code)
        path.parent.mkdir(exist_ok=True)
        (path.parent / "__init__.py").touch()
        path.write_text(code)
    project = pyproject()["project"]
    groups = project["entry-points"]
    first, *others = groups
    install_distribution(
        plugin_site, project["name"], project["version"], groups[first], group=first
    )
    (info,) = plugin_site.glob("*.dist-info")
    with (info / "entry_points.txt").open("a") as entry_points:
        for group in others:
            lines = "".join(f"{name} = {value}\n" for name, value in groups[group].items())
            entry_points.write(f"\n[{group}]\n{lines}")
    (info / "top_level.txt").write_text("my_growth\n")
    yield groups
    for module in [name for name in sys.modules if name.split(".")[0] == "my_growth"]:
        del sys.modules[module]


def test_the_method_registers_and_grows(my_growth) -> None:
    (name,) = my_growth["growbench.methods"]
    assert name in available_methods()
    task = make_task("tanh_mlp")
    before = task.net(task.inputs).detach()
    event = make_grower(name, {"epsilon": 0.0}).grow(task.net, task.context())
    assert event.grew
    assert event.units_added == {site: len(units) for site, units in event.selected.items()}
    assert (task.net(task.inputs).detach() - before).abs().max() <= 1e-12  # as it declares
    tight = make_task("tanh_mlp")
    budget = tight.net.sites[0].cost_of_units(1)["params"]
    event = make_grower(name).grow(tight.net, tight.context(remaining_budget=budget))
    assert event.cost_added["params"] <= budget
    with pytest.raises(ValueError, match="share"):
        make_grower(name, {"share": 0.0})


@pytest.mark.slow
def test_the_method_passes_the_contract(my_growth) -> None:
    """What `growbench check split-loudest` runs, as the page says: every rule passes (the
    prediction rule is skipped: the method makes none)."""
    (name,) = my_growth["growbench.methods"]
    outcomes = [outcome for _, outcome in run_contract(name)]
    failed = [outcome for outcome in outcomes if outcome.status == "fail"]
    assert failed == []
    skipped = {outcome.rule for outcome in outcomes if outcome.status == "skip"}
    assert skipped == {"prediction"}


def test_the_dataset_registers_and_loads(my_growth, capsys) -> None:
    (name,) = my_growth["growbench.datasets"]
    assert dataset_options(name) == {"samples": 600, "noise": 0.15, "seed": 0}
    data = load_dataset(name, samples=100)
    assert (data.num_train, data.num_test) == (80, 20)
    assert data.spec.name == name
    assert torch.equal(load_dataset(name).train_inputs, load_dataset(name).train_inputs)
    with pytest.raises(ValueError, match="noise must be 0 or more"):
        load_dataset(name, noise=-1.0)
    assert main(["datasets"]) == 0
    assert name in capsys.readouterr().out


def test_the_model_registers_and_builds(my_growth) -> None:
    (name,) = my_growth["growbench.models"]
    config = ModelConfig(name, (2,), 3)
    assert config.widths == (32, 16)
    net = build_model(config, seed=0)
    assert [site.name for site in net.sites] == ["hidden0", "hidden1"]
    assert net(torch.randn(5, 2)).shape == (5, 3)
    assert torch.equal(
        build_model(config, seed=0)(torch.ones(1, 2)), build_model(config, seed=0)(torch.ones(1, 2))
    )
    wider = build_model(config.with_widths((5, 7)))
    assert wider.widths() == {"hidden0": 5, "hidden1": 7}
    with pytest.raises(ValueError, match="2 growth sites"):
        ModelConfig(name, (2,), 3, widths=(4,))


def test_the_suite_runs_the_three_together(my_growth) -> None:
    suite = parse_suite(block("a suite that uses them", "toml"), "my-growth-demo")
    cells = list(suite.cells())
    assert {cell.method for cell in cells} == {"none", "static", "split-loudest"}
    for cell in cells:
        result = run_cell(cell, device="cpu")
        assert len(result.history) == cell.task.epochs + 1
        assert all(torch.isfinite(torch.tensor(m["train_loss"])) for m in result.history[1:])
        tags = provenance.provider_tags(cell)
        assert tags["growbench.provider.dataset"] == "my-growth 0.1"
        assert tags["growbench.provider.model"] == "my-growth 0.1"
        if cell.method == "split-loudest":
            assert tags["growbench.provider.method"] == "my-growth 0.1"
            assert sum(sum(e["units_added"].values()) for e in result.events) > 0


def test_the_page_lists_every_contract_rule() -> None:
    text = PAGE.read_text()
    for check in CHECKS:
        assert f"| `{check.rule}` |" in text, f"docs/plugins.md does not list the rule {check.rule}"
