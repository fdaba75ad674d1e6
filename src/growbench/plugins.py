"""What every kind of plugin shares: one registry, one options checker, one set of messages.

Methods, datasets and models are looked up by name in the same way: the built-ins registered in
code, then what other installed packages declare in an entry-point group (``growbench.methods``,
``growbench.datasets``, ``growbench.models``). Each kind is one ``Registry``; the registry
modules (``growbench.methods.registry``, ``growbench.nn.zoo.registry``,
``growbench.datasets.registry``) only say what an object of their kind must be.

One package whose module fails to import, or whose object is not what its group expects, must
not take every command down with it: ``loaded`` skips it with one warning naming the package,
the entry point and the error, and yields the others.

Options come as plain dicts (a suite file's ``[method_options.NAME]``, ``model_options``,
``dataset_options``, the command line) and are fields of a dataclass (a method's ``Config``, a
model's or a dataset's ``Options``): ``build_options`` refuses a key that is no field, so a typo
is one clear error, never a silent default, and every kind says so in the same words.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys
import warnings
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """The plugins of one kind by name: built-ins first, then the entry points of ``group``.

    :param kind: what a plugin is called in messages ("method", "model", "dataset").
    :param group: the entry-point group outside packages declare theirs in.
    :param validate: raises ``TypeError`` when an object is not a plugin of this kind.
    :param name_of: an object's own name, which its entry point's name must be (default: its
        ``name`` attribute, as a method's or a model's class has).
    :param builtins_module: imported on first lookup; importing it registers the built-ins.
    :param builtins_by_name: list the built-ins by name rather than in registration order.
    """

    def __init__(
        self,
        kind: str,
        group: str,
        validate: Callable[[Any], None],
        builtins_module: str | None = None,
        builtins_by_name: bool = False,
        name_of: Callable[[T], str] = lambda item: item.name,
    ) -> None:
        self.kind = kind
        self.group = group
        self.validate = validate
        self.name_of = name_of
        self.builtins_module = builtins_module
        self.builtins_by_name = builtins_by_name
        self.builtins: dict[str, T] = {}

    def register(self, item: T) -> T:
        """Add a built-in (usable as a class decorator); it must pass ``validate``."""
        self.validate(item)
        self.builtins[self.name_of(item)] = item
        return item

    def entry_points(self) -> Iterable[EntryPoint]:
        """The entry points declared in this kind's group by the installed packages."""
        return installed_entry_points(self.group)

    def available(self) -> dict[str, T]:
        """Every plugin by name, built-ins first, then entry points in their order; a built-in's
        name wins. A plugin that fails to load is one warning naming it; the others stay."""
        if self.builtins_module:
            importlib.import_module(self.builtins_module)
        builtins = self.builtins.items()
        found = dict(sorted(builtins) if self.builtins_by_name else builtins)
        for name, item in loaded(self.entry_points(), self.kind, self._check_entry_point):
            found.setdefault(name, item)
        return found

    def get(self, name: str) -> T:
        """The plugin ``name``; ``ValueError`` listing the available ones when there is none."""
        found = self.available()
        if name not in found:
            raise ValueError(unknown_name(self.kind, name, found))
        return found[name]

    def _check_entry_point(self, name: str, item: Any) -> None:
        self.validate(item)
        own = self.name_of(item)
        if own != name:
            raise TypeError(
                f"it loads a {self.kind} named {own!r}; an entry point must be named after its "
                f"{self.kind}"
            )


_FOUND: dict[str, tuple[tuple, tuple[EntryPoint, ...]]] = {}  # group → (where looked, found)


def installed_entry_points(group: str) -> tuple[EntryPoint, ...]:
    """``group``'s entry points of the installed packages, looked for again only when the import
    path or one of its folders changed (a package installed or removed there): the search reads
    every installed package's metadata, ~10 ms, and a suite looks a plugin up per cell."""
    where = tuple((path, _modified(path)) for path in sys.path)
    found = _FOUND.get(group)
    if found is None or found[0] != where:
        found = (where, tuple(entry_points(group=group)))
        _FOUND[group] = found
    return found[1]


def _modified(path: str) -> int | None:
    try:
        return os.stat(path or ".").st_mtime_ns
    except OSError:
        return None


def unknown_name(kind: str, name: str, known: Iterable[str]) -> str:
    """The message for a name that is not among ``known``."""
    return f"unknown {kind} {name!r}; choose one of {', '.join(known)}"


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


# ---------------------------------------------------------------------------------- options
class UnknownOptionError(ValueError):
    """Options named that the options dataclass has no field for; ``unknown`` lists them."""

    def __init__(self, message: str, unknown: tuple[str, ...]) -> None:
        super().__init__(message)
        self.unknown = unknown


def option_defaults(options_class: type) -> dict[str, Any]:
    """Each field of the dataclass ``options_class`` with its default (None where required)."""
    return {field.name: _default(field) for field in dataclasses.fields(options_class)}


def default_text(field: dataclasses.Field) -> str:
    """A field's default as the user would write it: ``repr`` of the default (or of what its
    factory makes), or ``(required)``."""
    if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
        return "(required)"
    return repr(_default(field))


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def refuse_unknown_options(options_class: type, names: Iterable[str], owner: str) -> None:
    """Raise ``UnknownOptionError`` when a name is not a field of ``options_class``; the message
    names ``owner`` (e.g. ``method 's2d'``) and lists its options with their defaults."""
    fields = dataclasses.fields(options_class)
    known = {field.name for field in fields}
    unknown = tuple(dict.fromkeys(name for name in names if name not in known))
    if unknown:
        listing = ", ".join(f"{field.name}={default_text(field)}" for field in fields)
        raise UnknownOptionError(
            f"{owner} has no option {', '.join(map(repr, unknown))}; "
            f"its options are: {listing or '(none)'}",
            unknown,
        )


def build_options(options_class: type[T], options: Mapping[str, Any] | None, owner: str) -> T:
    """``options_class(**options)`` once every key is known to be one of its fields
    (``refuse_unknown_options``); its own checks (``__post_init__``) then run as usual."""
    options = dict(options or {})
    refuse_unknown_options(options_class, options, owner)
    return options_class(**options)


def check_choice(owner: str, name: str, value: Any, choices: Collection[Any]) -> None:
    """Raise ``ValueError`` when the option ``name`` of ``owner`` is not one of ``choices``."""
    if value not in choices:
        raise ValueError(
            f"{owner}: {name} must be one of {', '.join(map(str, choices))}, got {value!r}"
        )
