"""What each option of a method, zoo model or dataset means, read from one place: its source.

Every option is a field of a dataclass (a method's ``Config``, a zoo model's ``Options``, a
dataset's ``Options``), and its description is the string literal written right under the field,
an *attribute docstring*::

    growth_ratio: float = 0.3
    \"\"\"Share of the site's units split each round: (0, 1].\"\"\"

That string is the single source of truth. The documentation shows it (mkdocstrings' griffe reads
attribute docstrings), ``growbench methods|models|datasets --verbose`` prints it through
:func:`option_rows`, and a test refuses a built-in option without one through
:func:`undocumented`; an option that is a table of options (a field whose default is a dataclass,
such as fast-s2d's ``rayleigh``) is listed and checked field by field as ``rayleigh.steps`` and
so on. Python discards attribute docstrings when it compiles a class, so this
module reads them back from the class's source with ``inspect`` and ``ast``, following its
dataclass bases (a field inherited from a base keeps the base's description). A class without
source, such as a plugin shipped only as ``.pyc``, has empty descriptions rather than an error.
The method fingerprint (``growbench.methods.fingerprint``) ignores these strings, so rewording a
description never invalidates a stored result.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
import textwrap
from functools import cache
from typing import NamedTuple

from growbench.plugins import default_text, option_defaults


class OptionRow(NamedTuple):
    """One option of a dataclass: its name, its default as text and its description."""

    name: str
    default: str
    description: str


def option_rows(cls: type, prefix: str = "") -> list[OptionRow]:
    """Each field of the dataclass ``cls`` in field order: (name, default text, description);
    the description is "" where the field has no attribute docstring. A field whose default is
    itself a dataclass (a table of options, such as fast-s2d's ``rayleigh``) gives the rows of
    that dataclass's fields instead, named ``rayleigh.steps`` and so on."""
    descriptions = field_descriptions(cls)
    defaults = option_defaults(cls)
    rows = []
    for field in dataclasses.fields(cls):
        default = defaults[field.name]
        if dataclasses.is_dataclass(default) and not isinstance(default, type):
            rows += option_rows(type(default), f"{prefix}{field.name}.")
        else:
            description = descriptions.get(field.name, "")
            rows.append(OptionRow(prefix + field.name, default_text(field), description))
    return rows


def undocumented(cls: type) -> list[str]:
    """The fields of the dataclass ``cls`` without a description, in field order."""
    return [row.name for row in option_rows(cls) if not row.description]


def field_descriptions(cls: type) -> dict[str, str]:
    """{field name: one-line description} from the attribute docstrings of ``cls`` and of its
    dataclass bases; a subclass's description of a field replaces its base's."""
    found: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is not object and dataclasses.is_dataclass(klass):
            found.update(_own_descriptions(klass))
    return found


@cache
def _own_descriptions(klass: type) -> dict[str, str]:
    """The attribute docstrings written in ``klass``'s own body ({} without source)."""
    try:
        source = textwrap.dedent(inspect.getsource(klass))
        tree = ast.parse(source)
    except (OSError, TypeError, SyntaxError):
        return {}
    definition = next((node for node in tree.body if isinstance(node, ast.ClassDef)), None)
    if definition is None:
        return {}
    found: dict[str, str] = {}
    body = definition.body
    for statement, following in itertools.pairwise(body):
        if (
            isinstance(statement, ast.AnnAssign)
            and isinstance(statement.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            text = " ".join(inspect.cleandoc(following.value.value).split())
            if text:
                found[statement.target.id] = text
    return found
