"""Loading plugins from entry points so that a broken one breaks nothing else.

Methods, datasets and models can come from other installed packages (entry-point groups
``growbench.methods``, ``growbench.datasets``, ``growbench.models``). One package whose module
fails to import, or whose object is not what its group expects, must not take every command down
with it: ``loaded`` skips it with one warning naming the package, the entry point and the error,
and yields the others. The three registries share it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator
from importlib.metadata import EntryPoint
from typing import Any


def loaded(
    points: Iterable[EntryPoint], kind: str, check: Callable[[str, Any], None]
) -> Iterator[tuple[str, Any]]:
    """``(name, object)`` for each entry point that loads and passes ``check(name, object)``
    (which raises to refuse it); each other one is one ``RuntimeWarning``."""
    for point in points:
        try:
            value = point.load()
            check(point.name, value)
        except Exception as exc:  # a broken plugin must not break every command
            warnings.warn(
                f"{kind} entry point {point.name!r} ({point.value}) of "
                f"{_package(point)} could not be loaded and is skipped: "
                f"{type(exc).__name__}: {exc}",
                RuntimeWarning,
                stacklevel=3,
            )
            continue
        yield point.name, value


def _package(point: EntryPoint) -> str:
    dist = getattr(point, "dist", None)
    if dist is None:
        return "an unknown package"
    return f"package {dist.name} {dist.version}"
