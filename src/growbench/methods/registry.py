"""Find growth methods by name: the built-ins plus the ``growbench.methods`` entry-point group.

An outside package adds a method by declaring, in its own ``pyproject.toml``::

    [project.entry-points."growbench.methods"]
    my-method = "my_package.module:MyGrower"

The lookup and the loading are ``growbench.plugins.Registry``'s, shared with models and datasets;
this module says what a method must be. Configs are built from plain dicts (a suite file's
``[method_options.NAME]`` table) with every key checked against the method's ``Config``
dataclass (``growbench.plugins.build_options``), so a typo is one clear error, not a silent
default.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from growbench.methods.base import FUNCTION_PRESERVATION, Grower
from growbench.plugins import Registry, build_options

ENTRY_POINT_GROUP = "growbench.methods"


def _validate(cls: Any) -> None:
    if not (isinstance(cls, type) and issubclass(cls, Grower)):
        raise TypeError(f"{cls!r} is not a Grower subclass")
    if not cls.name:
        raise TypeError(f"{cls.__name__} has no name")
    if cls.preserves_function not in FUNCTION_PRESERVATION:
        raise TypeError(f"{cls.__name__}.preserves_function must be one of {FUNCTION_PRESERVATION}")
    if not dataclasses.is_dataclass(cls.Config):
        raise TypeError(f"{cls.__name__}.Config must be a dataclass")


METHODS: Registry[type[Grower]] = Registry(
    "method",
    ENTRY_POINT_GROUP,
    _validate,
    builtins_module="growbench.methods.builtin",
)

register = METHODS.register
"""Class decorator for the built-in methods."""


def available_methods() -> dict[str, type[Grower]]:
    """Every method by name, built-ins first, then plugins in entry-point order. A plugin that
    fails to load is one warning naming it (``growbench.plugins``); the others stay."""
    return METHODS.available()


def get_method(name: str) -> type[Grower]:
    return METHODS.get(name)


def make_grower(name: str, options: dict[str, Any] | None = None) -> Grower:
    """The method ``name`` with its config defaults overridden by ``options``."""
    cls = get_method(name)
    return cls(build_options(cls.Config, options, f"method {name!r}"))
