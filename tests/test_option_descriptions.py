"""Every option of every built-in method, zoo model and dataset says what it means, in one place:
the attribute docstring under its dataclass field (``growbench.options``). A new option without
one fails here; the same text is what the docs pages and ``--verbose`` listings show."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from growbench.cli import main
from growbench.datasets.registry import available_entries
from growbench.methods import available_methods
from growbench.methods.base import GrowerConfig
from growbench.nn.zoo import available_models
from growbench.options import field_descriptions, option_rows, undocumented


def built_in(cls: type) -> bool:
    return cls.__module__.startswith("growbench.")


def method_configs() -> dict[str, type]:
    return {name: cls.Config for name, cls in available_methods().items() if built_in(cls)}


def model_options() -> dict[str, type]:
    return {name: cls.Options for name, cls in available_models().items() if built_in(cls)}


def dataset_options() -> dict[str, type]:
    return {
        name: entry.options
        for name, entry in available_entries().items()
        if built_in(entry.options)
    }


def every_subclass(cls: type) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *every_subclass(sub)]
    return found


@pytest.mark.parametrize(
    ("kind", "classes", "at_least"),
    [
        ("method", method_configs, 10),
        ("model", model_options, 6),
        ("dataset", dataset_options, 10),
    ],
)
def test_every_built_in_option_has_a_description(kind, classes, at_least):
    found = classes()
    assert len(found) >= at_least, f"only {sorted(found)} found: the registry lookup broke"
    missing = {
        f"{kind} {name} ({cls.__qualname__})": undocumented(cls) for name, cls in found.items()
    }
    assert {where: fields for where, fields in missing.items() if fields} == {}, (
        "write a one-line attribute docstring under each of these fields"
    )


def test_every_grower_config_in_growbench_is_described_even_if_unregistered():
    method_configs()  # imports every built-in method module
    configs = [cls for cls in every_subclass(GrowerConfig) if built_in(cls)]
    assert len(configs) >= 10
    missing = {cls.__qualname__: undocumented(cls) for cls in configs}
    assert {name: fields for name, fields in missing.items() if fields} == {}


def test_undocumented_names_a_field_without_a_description():
    @dataclasses.dataclass
    class Throwaway:
        described: int = 1
        """What this one means."""
        bare: float = 0.5  # a comment is not a description
        listed: tuple[int, ...] = dataclasses.field(default_factory=tuple)
        """A field with a factory."""

    assert undocumented(Throwaway) == ["bare"]
    assert option_rows(Throwaway) == [
        ("described", "1", "What this one means."),
        ("bare", "0.5", ""),
        ("listed", "()", "A field with a factory."),
    ]


def test_descriptions_are_one_line_and_inherited_from_dataclass_bases():
    @dataclasses.dataclass
    class Base:
        ratio: float = 0.3
        """Share of the units split each round,
        wrapped in the source: (0, 1]."""
        steps: int = 4
        """Steps per round."""

    @dataclasses.dataclass
    class Child(Base):
        steps: int = 8
        """Steps per round, more of them."""
        extra: bool = False
        """Something only the child has."""

    assert field_descriptions(Child) == {
        "ratio": "Share of the units split each round, wrapped in the source: (0, 1].",
        "steps": "Steps per round, more of them.",
        "extra": "Something only the child has.",
    }
    from growbench.datasets.cifar import Options10, Options100

    assert field_descriptions(Options100)["root"] == field_descriptions(Options10)["root"]


def test_a_class_without_source_has_empty_descriptions():
    made = dataclasses.make_dataclass("Made", [("width", int, dataclasses.field(default=3))])
    assert option_rows(made) == [("width", "3", "")]
    assert undocumented(made) == ["width"]


def test_methods_verbose_prints_each_option_with_its_description():
    result = subprocess.run(
        [sys.executable, "-m", "growbench.cli", "methods", "--verbose"],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    from growbench.methods.tiny import TinyConfig

    description = field_descriptions(TinyConfig)["gamma_max"]
    assert "Upper bound on γ" in description
    assert f"\n    gamma_max = 1.0  — {description}\n" in result.stdout


def test_models_and_datasets_verbose_print_each_option_with_its_description(capsys):
    assert main(["models", "--verbose"]) == 0
    out = capsys.readouterr().out
    from growbench.nn.zoo.vgg import VGGOptions

    assert f"\n    depth = 11  — {field_descriptions(VGGOptions)['depth']}\n" in out
    assert "options: " not in out  # one line per option instead of the summary line

    assert main(["datasets", "--verbose"]) == 0
    out = capsys.readouterr().out
    from growbench.datasets.toy2d import SpiralsOptions

    assert f"\n    turns = 2.0  — {field_descriptions(SpiralsOptions)['turns']}\n" in out
    assert "\ndigits\n    options: (none)\n" in out
