"""The Grower interface: what a growth method is, what it is given and what it reports.

A method subclasses ``Grower``, declares a ``Config`` dataclass (its hyperparameters, with
defaults), and implements ``grow_step``, which changes the net in place through the surgery of
``growbench.nn`` and fills in the ``GrowthEvent``. ``Grower.grow`` wraps it with what every method
must do alike and should not have to remember: measure the exact cost it added, time it, restore
the train/eval mode, check the budget was respected. Methods see data only through the
``GrowthContext`` (a fixed statistics set, held-out samples to choose a step's size on, the loss,
the budget left, a seeded generator).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from growbench.claims import Claim
from growbench.nn import GrowableNet, ModelConfig, Site
from growbench.nn.growable import eval_mode
from growbench.nn.losses import PerSampleLoss
from growbench.plugins import check_choice

BUDGET_METRICS = ("params", "flops")
# Every site kind the zoo's models have (``Site.kind``): the default a method supports.
SITE_KINDS = frozenset(
    {"Linear", "Linear+BN", "Conv2d", "Conv2d+BN", "Conv2d+depthwise", "Conv2d+BN+depthwise"}
)
FUNCTION_PRESERVATION = ("exact", "at_zero_step", "no")


@dataclass
class GrowthContext:
    """Everything a grower may use at one growth step.

    The runner makes a new context for every growth round; a method sees data only through it
    (never the training iterator). Tests and the contract build contexts by hand the same way.
    """

    inputs: Tensor
    """The statistics set: a fixed, un-augmented subset of the training split (``stats_samples``
    of the suite), drawn from the run's seed for this round and the same for every method; on
    the run's device, prepared (float32, normalised) as the net reads it (convention 1)."""
    targets: Tensor
    """The targets of ``inputs``: int64 class ids ``(N,)``, or float32 ``(N, outputs)`` for a
    regression task."""
    loss_fn: PerSampleLoss
    """The task's loss, ``loss_fn(outputs, targets)``: one loss per sample by default
    (``reduction="none"``; also ``"mean"`` and ``"sum"``). Differentiate its sum to get
    per-sample gradients."""
    budget_metric: str
    """What the budget counts: ``"params"`` or ``"flops"`` (forward FLOPs of one sample)."""
    remaining_budget: float
    """How much of ``budget_metric`` this step may still add (the suite's limit minus the net's
    current cost). ``Grower.grow`` raises if the step spends more; ``select_within_budget`` keeps
    a method's candidates within it (convention 7)."""
    generator: torch.Generator
    """A CPU generator seeded from the run's seed and the round: the only source of randomness
    a method may draw from (the global torch, ``random`` and numpy generators must stay
    untouched; ``growbench check`` tests that they are)."""
    batch_size: int = 512
    """How many samples ``batches()`` yields at a time; a method that runs the net over the
    statistics set should go in batches of this size to bound its memory."""
    heldout_inputs: Tensor | None = None
    """Training samples outside the statistics set (``heldout_samples`` of the suite), or None.
    A method that tunes something on data (TINY's amplitude) chooses it here, never on the
    samples its statistics came from; ``held_out()`` gives a context over them."""
    heldout_targets: Tensor | None = None
    """The targets of ``heldout_inputs`` (None exactly when those are None)."""

    def __post_init__(self) -> None:
        if self.budget_metric not in BUDGET_METRICS:
            raise ValueError(
                f"unknown budget metric {self.budget_metric!r}; choose one of {BUDGET_METRICS}"
            )
        if (self.heldout_inputs is None) != (self.heldout_targets is None):
            raise ValueError("heldout_inputs and heldout_targets go together")

    @property
    def has_heldout(self) -> bool:
        """Whether there are held-out samples (``heldout_inputs`` is set and not empty)."""
        return self.heldout_inputs is not None and len(self.heldout_inputs) > 0

    def held_out(self) -> GrowthContext:
        """The same context over the held-out samples; the statistics set itself when there
        are none (``has_heldout`` tells which)."""
        if not self.has_heldout:
            return self
        return dataclasses.replace(
            self,
            inputs=self.heldout_inputs,
            targets=self.heldout_targets,
            heldout_inputs=None,
            heldout_targets=None,
        )

    @property
    def device(self) -> torch.device:
        """The device of the statistics set (and of the net)."""
        return self.inputs.device

    def batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        """The statistics set as ``(inputs, targets)`` batches of ``batch_size``, in order."""
        for start in range(0, len(self.inputs), self.batch_size):
            stop = start + self.batch_size
            yield self.inputs[start:stop], self.targets[start:stop]

    def loss(self, net: GrowableNet) -> float:
        """Mean loss over the statistics set, eval mode, summed in float64."""
        return statistics_loss(net, self)


def statistics_loss(net: GrowableNet, ctx: GrowthContext) -> float:
    with eval_mode([net]):
        total = 0.0
        with torch.no_grad():
            for inputs, targets in ctx.batches():
                total += float(ctx.loss_fn(net(inputs), targets).double().sum())
    return total / len(ctx.inputs)


@dataclass
class GrowthEvent:
    """What one growth step changed, why, what it predicted and what it cost.

    ``Grower.grow`` creates it and hands it to ``grow_step``. Some fields are the method's to
    fill, the others are filled for it (each field says which); the run stores the event, with
    the round, the epoch and the growth-health figures, in its ``growth_events.json`` artifact,
    and reports read it from there.
    """

    method: str
    """The name of the method that grew (set by ``grow``)."""
    units_added: dict[str, int] = field(default_factory=dict)
    """Filled by ``grow``: units added per site that existed before the step (site name →
    count; splits count their extra offspring), measured from the widths before and after."""
    layers_inserted: list[str] = field(default_factory=list)
    """Filled by ``grow``: the sites that the step created by inserting layers."""
    selected: dict[str, list] = field(default_factory=dict)
    """The method's: what it chose, per site (e.g. the indices of the units it split)."""
    scores: dict[str, list[float]] = field(default_factory=dict)
    """The method's: the scores it ranked the candidates by, per site (e.g. eigenvalues), so
    that a report can show why those were chosen."""
    predicted_loss_change: float | None = None
    """The method's: the change of the statistics-set loss it expects from the step (negative
    is a decrease; 0.0 for a step that keeps the function), or None when it makes no
    prediction. The contract checks a prediction against ``realised_loss_change``."""
    realised_loss_change: float | None = None
    """Filled by the runner after the step: the statistics-set loss after it minus before it."""
    cost_added: dict[str, int] = field(default_factory=lambda: {"params": 0, "flops": 0})
    """Filled by ``grow``: the exact params and FLOPs the step added."""
    seconds: dict[str, float] = field(default_factory=dict)
    """Seconds per phase, filled by ``with event.phase("name"):`` blocks in ``grow_step``
    (``stats``, ``solve``, ``search``, ``select``, ``apply``...)."""
    wall_seconds: float = 0.0
    """Filled by ``grow``: the whole step's wall time."""
    stop_reason: str | None = None
    """Why the step did not grow, in a few words (``"budget exhausted"`` when nothing fits; a
    method may say why it stopped early, e.g. ``"splitting-stable"``). ``grow`` sets
    ``"nothing to grow"`` when the method grew nothing and gave no reason."""
    extras: dict[str, Any] = field(default_factory=dict)
    """Anything else worth recording, JSON-ready (numbers, strings, lists, dicts, tensors). The
    harness uses ``refused_sites`` and ``sites_removed``; methods add their own keys, e.g.
    ``prediction_is_heuristic``."""

    @property
    def grew(self) -> bool:
        """Whether the step added any unit or layer."""
        return any(self.units_added.values()) or bool(self.layers_inserted)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time a phase (``stats``, ``solve``, ``search``, ``select``, ``apply``)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def to_dict(self, timings: bool = True) -> dict[str, Any]:
        """The event as JSON-ready data (tensors as lists, non-finite floats as strings);
        ``timings=False`` leaves out ``seconds`` and ``wall_seconds``, which differ between two
        otherwise identical steps."""
        data = dataclasses.asdict(self)
        if not timings:
            data.pop("seconds")
            data.pop("wall_seconds")
        return _json_ready(data)

    def to_json(self, timings: bool = True) -> str:
        """``to_dict`` as a JSON string with sorted keys."""
        return json.dumps(self.to_dict(timings), sort_keys=True)


def _json_ready(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, Tensor):
        return _json_ready(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


@dataclass
class GrowerConfig:
    """Base of every method's hyperparameters; subclasses add fields with defaults.

    ``check`` (run by ``Grower.__init__``) refuses a non-finite number in any field, a field
    named in ``positive`` that is not > 0 or in ``non_negative`` that is < 0, one above its
    bound in ``at_most`` and one that is not among its values in ``choices``; a subclass's
    ``__post_init__`` checks whatever else its fields need (relations between fields), in the
    same words: ``"{method}: {field} must be ..., got {value!r}"``.
    ``at_most`` bounds the shares a method turns into a count of units at each growth
    (``floor(growth_ratio · units)``) at the largest value that means anything, so that 1e308
    is refused with the suite, not an overflow at the cell's first growth.
    """

    positive: ClassVar[tuple[str, ...]] = ()
    non_negative: ClassVar[tuple[str, ...]] = ()
    at_most: ClassVar[dict[str, float]] = {}
    choices: ClassVar[dict[str, tuple]] = {}

    def check(self, method: str) -> None:
        """Raise ``ValueError`` naming ``method`` and the field when a value breaks the rules
        above."""
        for config_field in dataclasses.fields(self):
            value = getattr(self, config_field.name)
            values = value if isinstance(value, (list, tuple)) else [value]
            for item in values:
                if isinstance(item, float) and not math.isfinite(item):
                    raise ValueError(
                        f"{method}: {config_field.name} must be a finite number, got {value!r}"
                    )
        for name in self.positive:
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{method}: {name} must be greater than 0, got {value!r}")
        for name in self.non_negative:
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{method}: {name} must be 0 or more, got {value!r}")
        for name, limit in self.at_most.items():
            value = getattr(self, name)
            if value is not None and value > limit:
                raise ValueError(f"{method}: {name} must be at most {limit:g}, got {value!r}")
        for name, values in self.choices.items():
            check_choice(method, name, getattr(self, name), values)


class Grower:
    """Base class of every growth method and baseline.

    Subclasses set ``name``, ``Config``, ``preserves_function`` (``exact``, ``at_zero_step`` or
    ``no``), ``supported_kinds`` (site kinds such as ``Linear``, ``Conv2d+BN``; default: every
    kind of the zoo), and implement ``grow_step``, growing only ``growable_sites(net)``. A
    method that cannot grow some sites says why in ``refusal(site)``; ``grow`` records the
    refusals in the event, and a net whose every site is refused gets an event that says so,
    never a crash. ``zero_step_overrides`` names the config values that make an ``at_zero_step``
    method preserve the function (e.g. ``{"epsilon": 0.0}``); ``small_step_overrides`` those
    that make its step small enough for its ``predicted_loss_change`` to match the realised
    change within ``prediction_tolerance`` (relative), which the contract tests check;
    ``quick_overrides`` those that make a step cheap (e.g. fewer estimator steps) for the
    contract checks that do not depend on the quality of its estimates. ``notes`` tell a
    report's reader what is this implementation's and not the paper's or the official code's
    (the report prints them beside the method's description).
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type[GrowerConfig]] = GrowerConfig
    grows: ClassVar[bool] = True  # False for the fixed-size references (no matched static net)
    preserves_function: ClassVar[str] = "no"
    supported_kinds: ClassVar[frozenset[str]] = SITE_KINDS
    zero_step_overrides: ClassVar[dict[str, Any]] = {}
    small_step_overrides: ClassVar[dict[str, Any]] = {}
    prediction_tolerance: ClassVar[float] = 1e-2
    quick_overrides: ClassVar[dict[str, Any]] = {}
    description: ClassVar[str] = ""
    notes: ClassVar[tuple[str, ...]] = ()
    claims: ClassVar[tuple[Claim, ...]] = ()

    def __init__(self, config: GrowerConfig | None = None) -> None:
        self.config = config if config is not None else self.Config()
        if not isinstance(self.config, self.Config):
            raise TypeError(f"{self.name}: config must be a {self.Config.__name__}")
        self.config.check(self.name)

    # ---------------------------------------------------------------- for subclasses
    def grow_step(self, net: GrowableNet, ctx: GrowthContext, event: GrowthEvent) -> None:
        """Grow ``net`` in place, once: the one method a plugin must write.

        Called by ``grow`` after each scheduled epoch, only while budget remains and some site
        is growable. Change the net only through the surgery of ``growbench.nn``
        (``Site.split``, ``Site.add_units``, ``insert_layer``), and only at
        ``self.growable_sites(net)``; take data only from ``ctx`` and randomness only from
        ``ctx.generator``; keep the cost of the change within ``ctx.remaining_budget``
        (``select_within_budget`` truncates a ranking to it). Leave no ``.grad`` on the
        parameters and keep no reference to them after returning; the train/eval mode is
        restored for you.

        Fill in ``event``: what was chosen (``selected``), why (``scores``), the expected loss
        change (``predicted_loss_change``, or leave it None), timed phases
        (``with event.phase("solve"):``), ``stop_reason`` when nothing was grown, and anything
        else in ``extras``. ``grow`` records the units added, the layers inserted, the cost and
        the wall time itself.

        :param net: the network being trained, in whatever mode training left it.
        :param ctx: the statistics set, the held-out samples, the loss, the budget and the
            generator of this round.
        :param event: this step's record, created by ``grow``.
        """
        raise NotImplementedError

    def start_config(self, model: ModelConfig, budget_limit: float, cost_of: Any) -> ModelConfig:
        """The architecture this method starts from; ``static`` starts at the budget's size."""
        return model

    def on_batch(self, net: GrowableNet, inputs: Tensor, targets: Tensor) -> None:
        """Called after each training step, for methods that accumulate statistics as they train."""

    def state_dict(self) -> dict[str, Any]:
        """What the grower carries from one round to the next, for a cell's checkpoint: by
        default every attribute but the config (numbers, strings, tensors, lists and dicts of
        them). A method that keeps anything else overrides this and ``load_state_dict``."""
        return {key: value for key, value in vars(self).items() if key != "config"}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned, when a cell resumes from a checkpoint."""
        for key, value in state.items():
            setattr(self, key, value)

    def refusal(self, site: Site) -> str | None:
        """Why this method cannot grow ``site``, or None when it can (the default: the site's
        kind is not among ``supported_kinds``)."""
        if site.kind not in self.supported_kinds:
            return (
                f"site kind {site.kind!r} is not supported (supported: "
                f"{', '.join(sorted(self.supported_kinds))})"
            )
        return None

    def refusals(self, net: GrowableNet) -> dict[str, str]:
        """The reason for every site of ``net`` this method cannot grow."""
        reasons = {site.name: self.refusal(site) for site in net.sites}
        return {name: reason for name, reason in reasons.items() if reason is not None}

    def growable_sites(self, net: GrowableNet) -> list[Site]:
        """The sites of ``net`` this method grows, in forward order."""
        return [site for site in net.sites if self.refusal(site) is None]

    # ------------------------------------------------------------------- the contract
    def grow(self, net: GrowableNet, ctx: GrowthContext) -> GrowthEvent:
        """One growth step, as the runner calls it: ``grow_step`` wrapped in what every method
        must do alike. Records the refused sites; does nothing when the budget is spent or no
        site is growable (``stop_reason`` says which); restores the train/eval mode; measures
        the units and layers added, their exact cost and the wall time; and raises
        ``RuntimeError`` when the step spent more than ``ctx.remaining_budget``."""
        event = GrowthEvent(method=self.name)
        refused = self.refusals(net)
        if refused:
            event.extras["refused_sites"] = refused
        widths_before = net.widths()
        params_before, flops_before = net.params(), net.flops()
        was_training = net.training
        start = time.perf_counter()
        try:
            if ctx.remaining_budget <= 0:
                event.stop_reason = "budget exhausted"
            elif net.sites and len(refused) == len(net.sites):
                event.stop_reason = (
                    f"method {self.name!r} can grow none of the sites: "
                    + "; ".join(f"{name}: {reason}" for name, reason in refused.items())
                )
            else:
                self.grow_step(net, ctx, event)
        finally:
            net.train(was_training)
        event.wall_seconds = time.perf_counter() - start
        widths_after = net.widths()
        event.units_added = {  # units of the sites that existed before; new layers apart
            name: width - widths_before[name]
            for name, width in widths_after.items()
            if name in widths_before and width != widths_before[name]
        }
        event.layers_inserted = [name for name in widths_after if name not in widths_before]
        removed = [name for name in widths_before if name not in widths_after]
        if removed:
            event.extras["sites_removed"] = removed
        event.cost_added = {
            "params": net.params() - params_before,
            "flops": net.flops() - flops_before,
        }
        spent = event.cost_added[ctx.budget_metric]
        if spent > ctx.remaining_budget + 1e-9:
            raise RuntimeError(
                f"method {self.name!r} spent {spent} {ctx.budget_metric} but only "
                f"{ctx.remaining_budget} remained: a grower must truncate to the budget"
            )
        if not event.grew and event.stop_reason is None:
            event.stop_reason = "nothing to grow"
        return event
