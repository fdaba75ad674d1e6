"""The model registry: zoo models by name, the ``growbench.models`` entry points, ModelConfig.

A model is a ``ZooModel`` subclass with a ``name``, an ``Options`` dataclass (its options with
defaults, checked in ``__post_init__``), ``default_widths`` (the start width of every growth
site, in site order, from the options) and ``build``. ``@register_model`` adds a built-in; an
outside package adds one by declaring, in its own ``pyproject.toml``:

    [project.entry-points."growbench.models"]
    my-net = "my_package.models:MyNet"

The lookup and the loading are ``growbench.plugins.Registry``'s, shared with methods and
datasets, and so is the check of the options given (``growbench.plugins.build_options``): this
module says what a model must be.

Every model takes ``widths`` (explicit per-site start widths, overriding what the other options
would give) and ``activation``. A ``ModelConfig`` is a model's name, the data's input shape and
output count and its options with every default filled in and the widths made explicit: all a
run needs to rebuild a start net (``static`` rebuilds it at other widths), and what is logged.
Initialisation is PyTorch's default, drawn from a seed inside ``torch.random.fork_rng``, so
building a model never disturbs the global RNG.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from growbench.nn.activations import activation_info
from growbench.nn.growable import GrowableNet
from growbench.plugins import Registry, build_options, option_defaults

ENTRY_POINT_GROUP = "growbench.models"


class ZooModel:
    """Base of every zoo model; subclasses set ``name``, ``Options``, ``description`` and
    implement ``default_widths`` and ``build``, and may refine ``check``."""

    name: ClassVar[str] = ""
    Options: ClassVar[type] = object
    description: ClassVar[str] = ""

    @classmethod
    def default_widths(cls, options: Any, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The start width of every growth site, in site order, that ``options`` give when
        their ``widths`` is None (e.g. a width multiplier applied to the standard widths).

        ``ModelConfig`` also calls it when ``widths`` are given and requires as many of them:
        its length must be the number of sites ``build`` makes from these options (a model
        whose depth is its widths, as ``mlp``, may return ``options.widths`` itself).

        :param options: an instance of the model's ``Options``.
        :param input_shape: the shape of one input sample, e.g. ``(3, 32, 32)``.
        """
        raise NotImplementedError

    @classmethod
    def check(cls, options: Any, input_shape: tuple[int, ...], num_outputs: int) -> None:
        """Raise ValueError when the model cannot take this input (the default: nothing)."""

    @classmethod
    def build(cls, options: Any, input_shape: tuple[int, ...], num_outputs: int) -> GrowableNet:
        """The start net: a ``GrowableNet`` whose sites have exactly ``options.widths``.

        ``options.widths`` is always explicit here (``ModelConfig`` fills it from
        ``default_widths``), and the sites come in the same order. Initialise with PyTorch's
        defaults and draw nothing from a generator of your own: ``build_model`` calls this
        under a seeded, forked global RNG, so equal seeds give equal nets.
        ``growbench.nn.zoo.layers.chain_net`` builds a chain of layers with its sites in one
        call; any other net lists its ``Site``s itself.

        :param options: an instance of the model's ``Options``, ``widths`` filled in.
        :param input_shape: the shape of one input sample, e.g. ``(3, 32, 32)``.
        :param num_outputs: classes, or regression outputs: the last layer's width.
        """
        raise NotImplementedError


def _validate(cls: Any) -> None:
    if not (isinstance(cls, type) and issubclass(cls, ZooModel)):
        raise TypeError(f"{cls!r} is not a ZooModel subclass")
    if not cls.name:
        raise TypeError(f"{cls.__name__} has no name")
    if not dataclasses.is_dataclass(cls.Options):
        raise TypeError(f"{cls.__name__}.Options must be a dataclass")
    fields = {f.name for f in dataclasses.fields(cls.Options)}
    if not {"widths", "activation"} <= fields:
        raise TypeError(f"{cls.__name__}.Options needs the options 'widths' and 'activation'")


MODELS: Registry[type[ZooModel]] = Registry(
    "model",
    ENTRY_POINT_GROUP,
    _validate,
    builtins_module="growbench.nn.zoo.builtin",
    builtins_by_name=True,
)

register_model = MODELS.register
"""Class decorator for the built-in models."""


def available_models() -> dict[str, type[ZooModel]]:
    """Every model by name, built-ins first (by name), then plugins in entry-point order. A plugin
    whose module fails to load is a warning naming it, and the others stay available."""
    return MODELS.available()


def get_model(name: str) -> type[ZooModel]:
    return MODELS.get(name)


def model_options(name: str) -> dict[str, Any]:
    """The options of model ``name`` with their defaults."""
    return option_defaults(get_model(name).Options)


class ModelConfig:
    """A zoo model by name, for data of ``input_shape`` with ``num_outputs`` outputs, with its
    options resolved: defaults filled in and the per-site start widths explicit. Immutable and
    hashable; equal configs build equal nets from equal seeds."""

    __slots__ = ("input_shape", "name", "num_outputs", "options")

    def __init__(
        self,
        name: str,
        input_shape: Sequence[int],
        num_outputs: int,
        widths: Sequence[int] | None = None,
        **options: Any,
    ) -> None:
        model = get_model(name)
        shape = tuple(int(size) for size in input_shape)
        if widths is not None:
            options["widths"] = widths
        resolved = build_options(model.Options, options, f"model {name!r}")
        activation_info(resolved.activation)
        explicit = resolved.widths
        if explicit is None:
            explicit = model.default_widths(resolved, shape)
        explicit = tuple(int(w) for w in explicit)
        if any(w < 1 for w in explicit):
            raise ValueError(f"model {name!r}: widths must be positive integers, got {explicit}")
        expected = len(model.default_widths(resolved, shape))
        if len(explicit) != expected:
            raise ValueError(
                f"model {name!r} has {expected} growth sites, so widths needs {expected} values, "
                f"got {len(explicit)}"
            )
        resolved = dataclasses.replace(resolved, widths=explicit)
        model.check(resolved, shape, int(num_outputs))
        set_ = object.__setattr__
        set_(self, "name", name)
        set_(self, "input_shape", shape)
        set_(self, "num_outputs", int(num_outputs))
        set_(self, "options", _plain(dataclasses.asdict(resolved)))

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError("ModelConfig is immutable; use with_widths or with_options")

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(self.options["widths"])

    @property
    def activation(self) -> str:
        return self.options["activation"]

    def with_widths(self, widths: Sequence[int]) -> ModelConfig:
        return self.with_options(widths=tuple(widths))

    def with_options(self, **changes: Any) -> ModelConfig:
        options = {k: v for k, v in self.options.items() if k != "widths"}
        options.update(changes)
        widths = options.pop("widths", self.widths)
        return ModelConfig(self.name, self.input_shape, self.num_outputs, widths, **options)

    def to_dict(self) -> dict[str, Any]:
        """What identifies the model in a run's configuration (and its config hash)."""
        return {"name": self.name, "options": dict(self.options)}

    def _key(self) -> str:
        data = [self.name, self.input_shape, self.num_outputs, self.options]
        return json.dumps(data, sort_keys=True, default=str)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ModelConfig) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in sorted(self.options.items()))
        return f"ModelConfig({self.name!r}, {self.input_shape}, {self.num_outputs}, {options})"


def _plain(value: Any) -> Any:
    """Options as JSON-ready values (tuples kept as tuples, so configs stay hashable)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_plain(v) for v in value)
    return value


def build_model(config: ModelConfig, seed: int = 0) -> GrowableNet:
    """The start net of ``config``, initialised from ``seed`` (the global RNG is left alone)."""
    model = get_model(config.name)
    options = model.Options(**config.options)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return model.build(options, config.input_shape, config.num_outputs)
