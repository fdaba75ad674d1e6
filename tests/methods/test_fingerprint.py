"""The code fingerprint in every cell's config hash: shared code counts, comments do not."""

from __future__ import annotations

import ast
import re

import pytest

from growbench.methods import fingerprint as fp
from growbench.methods import get_method


def modules_of(name: str) -> set[str]:
    return set(fp.dependency_digests(get_method(name).__module__))


def test_shared_splitting_code_is_part_of_the_splitting_methods_only():
    for name in ("s2d", "signed-s2d", "fast-s2d"):
        assert "growbench.methods._splitting" in modules_of(name)
    for name in ("tiny", "gradmax", "random-add", "none"):
        assert "growbench.methods._splitting" not in modules_of(name)
    assert "growbench.methods._bottleneck" in modules_of("tiny") & modules_of("gradmax")
    assert "growbench.methods.rayleigh" in modules_of("signed-s2d") & modules_of("fast-s2d")
    for name in ("s2d", "tiny", "none"):  # the surgery and the Grower contract, for everyone
        assert {"growbench.nn.growable", "growbench.nn.units", "growbench.methods.base"} <= (
            modules_of(name)
        )
        assert "growbench.methods.tiny" not in modules_of(name) or name == "tiny"


def test_an_edit_to_shared_code_changes_the_fingerprints_that_use_it(monkeypatch):
    before = {name: fp.method_fingerprint(get_method(name)) for name in ("s2d", "tiny")}
    real_source = fp._source

    def edited(module):
        text, package = real_source(module)
        if module == "growbench.methods._splitting":
            text += "\nRELU_SURROGATE_BETA = 4.0\n"
        return text, package

    monkeypatch.setattr(fp, "_source", edited)
    fp.dependency_digests.cache_clear()
    try:
        after = {name: fp.method_fingerprint(get_method(name)) for name in ("s2d", "tiny")}
    finally:
        fp.dependency_digests.cache_clear()
    assert after["s2d"] != before["s2d"]
    assert after["tiny"] == before["tiny"]


@pytest.mark.parametrize(
    "variant",
    [
        'def f(x):\n    """Another docstring."""\n    return x + 1  # a new comment\n',
        "def f(x):\n\n\n    return (x +\n            1)\n",
    ],
)
def test_comments_docstrings_and_layout_do_not_count(variant):
    original = 'def f(x):\n    """Adds one."""\n    return x + 1\n'
    code = fp._code_only(ast.parse(original))
    assert fp._code_only(ast.parse(variant)) == code
    assert fp._code_only(ast.parse(original.replace("+ 1", "+ 2"))) != code


def tiny_fingerprint_with(monkeypatch, edit) -> str:
    """``tiny``'s fingerprint with ``edit`` applied to the source of its own module."""
    real_source = fp._source

    def edited(module):
        text, package = real_source(module)
        return (edit(text) if module == "growbench.methods.tiny" else text), package

    monkeypatch.setattr(fp, "_source", edited)
    fp.dependency_digests.cache_clear()
    try:
        return fp.method_fingerprint(get_method("tiny"))
    finally:
        monkeypatch.setattr(fp, "_source", real_source)
        fp.dependency_digests.cache_clear()


GAMMA_MAX = "    gamma_max: float = 1.0\n"


@pytest.mark.parametrize(
    ("edit", "counts"),
    [
        # rewording an option's description (its attribute docstring) retrains nothing
        (lambda text: text.replace("Upper bound on γ;", "The largest amplitude γ;"), False),
        # nor does removing one, or adding one (here: a second string under the field)
        (lambda text: re.sub(f'({GAMMA_MAX})    """.*?"""\n', r"\1", text, flags=re.S), False),
        (lambda text: text.replace(GAMMA_MAX, GAMMA_MAX + '    """Also this."""\n'), False),
        # a string statement inside a function body is no code either
        (
            lambda text: text.replace(
                "        config = self.config\n",
                '        config = self.config\n        """Note."""\n',
                1,
            ),
            False,
        ),
        # a changed default is a code change
        (lambda text: text.replace(GAMMA_MAX, "    gamma_max: float = 2.0\n"), True),
    ],
    ids=[
        "reworded-description",
        "removed-description",
        "added-description",
        "string-in-a-function",
        "changed-default",
    ],
)
def test_option_descriptions_do_not_count_but_code_does(monkeypatch, edit, counts):
    source, _ = fp._source("growbench.methods.tiny")
    assert edit(source) != source  # the edit applies to the current source
    before = fp.method_fingerprint(get_method("tiny"))
    after = tiny_fingerprint_with(monkeypatch, edit)
    assert (after != before) is counts


def test_every_bare_string_statement_is_dropped_wherever_it_stands():
    original = (
        "from dataclasses import dataclass\n\n\n@dataclass\nclass C:\n"
        "    ratio: float = 0.3\n    steps: int = 4\n\n"
        "    def f(self):\n        if self.steps:\n            return 1\n        return 2\n"
    )
    described = (
        '"""Module."""\nfrom dataclasses import dataclass\n\n\n@dataclass\nclass C:\n'
        '    """Class."""\n\n    ratio: float = 0.3\n    """Share split each round."""\n'
        '    steps: int = 4\n    """Steps."""\n\n'
        '    def f(self):\n        """Method."""\n        if self.steps:\n            """Why."""\n'
        '            return 1\n        return 2\n        """After."""\n'
    )
    code = fp._code_only(ast.parse(original))
    assert fp._code_only(ast.parse(described)) == code
    assert fp._code_only(ast.parse(original.replace("= 0.3", "= 0.4"))) != code
    assert (
        fp._code_only(ast.parse(original.replace("return 1", "x = 'a'\n            return 1")))
        != code
    )


def test_only_module_level_imports_are_followed():
    tree = ast.parse(
        "import os\nfrom growbench.nn import units\nfrom . import base\n"
        "if TYPE_CHECKING:\n    from growbench.methods import tiny\n"
        "def lazy():\n    import growbench.methods.builtin\n"
    )
    found = fp._module_level_imports(tree, "growbench.methods", {"growbench"})
    assert "growbench.nn.units" in found
    assert "growbench.methods.base" in found
    assert not any("builtin" in name or name.endswith("tiny") for name in found)
    assert "os" not in found


def test_cells_of_one_method_share_its_fingerprint_in_their_config_hash():
    from growbench.benchmarks.suite import load_suite

    cells = load_suite("default").cells()
    by_method = {}
    for cell in cells:
        by_method.setdefault(cell.method, set()).add(cell.resolved()["method"]["code"])
    assert all(len(codes) == 1 for codes in by_method.values())
    modules = {get_method(name).__module__ for name in by_method}  # none and static share one
    assert len({next(iter(codes)) for codes in by_method.values()}) == len(modules)
