"""Find growth methods by name: the built-ins plus the ``growbench.methods`` entry-point group.

An outside package adds a method by declaring, in its own ``pyproject.toml``::

    [project.entry-points."growbench.methods"]
    my-method = "my_package.module:MyGrower"

Configs are built from plain dicts (a suite file's ``[method_options.NAME]`` table) with every
key checked against the method's ``Config`` dataclass, so a typo is one clear error, not a
silent default.
"""

from __future__ import annotations

import dataclasses
from importlib.metadata import entry_points
from typing import Any

from growbench.methods.base import FUNCTION_PRESERVATION, Grower
from growbench.plugins import loaded

ENTRY_POINT_GROUP = "growbench.methods"
_BUILTINS: dict[str, type[Grower]] = {}


def register(cls: type[Grower]) -> type[Grower]:
    """Class decorator for the built-in methods."""
    _validate(cls)
    _BUILTINS[cls.name] = cls
    return cls


def _validate(cls: type) -> None:
    if not (isinstance(cls, type) and issubclass(cls, Grower)):
        raise TypeError(f"{cls!r} is not a Grower subclass")
    if not cls.name:
        raise TypeError(f"{cls.__name__} has no name")
    if cls.preserves_function not in FUNCTION_PRESERVATION:
        raise TypeError(f"{cls.__name__}.preserves_function must be one of {FUNCTION_PRESERVATION}")
    if not dataclasses.is_dataclass(cls.Config):
        raise TypeError(f"{cls.__name__}.Config must be a dataclass")


def _check_entry(name: str, cls: Any) -> None:
    _validate(cls)
    if cls.name != name:
        raise TypeError(
            f"entry point {name!r} loads {cls.__name__}, whose name is {cls.name!r}: "
            "they must match"
        )


def available_methods() -> dict[str, type[Grower]]:
    """Every method by name, built-ins first, then plugins in entry-point order. A plugin that
    fails to load is one warning naming it (``growbench.plugins``); the others stay."""
    import growbench.methods.builtin  # noqa: F401  (registers the built-ins)

    methods = dict(_BUILTINS)
    for name, cls in loaded(entry_points(group=ENTRY_POINT_GROUP), "method", _check_entry):
        methods.setdefault(name, cls)
    return methods


def get_method(name: str) -> type[Grower]:
    methods = available_methods()
    if name not in methods:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(methods)}")
    return methods[name]


def make_grower(name: str, options: dict[str, Any] | None = None) -> Grower:
    """The method ``name`` with its config defaults overridden by ``options``."""
    cls = get_method(name)
    options = dict(options or {})
    fields = {f.name: f for f in dataclasses.fields(cls.Config)}
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise ValueError(
            f"method {name!r} has no option {', '.join(map(repr, unknown))}; "
            f"its options are {', '.join(fields) or '(none)'}"
        )
    return cls(cls.Config(**options))


def config_dict(grower: Grower) -> dict[str, Any]:
    return dataclasses.asdict(grower.config)
