"""The fixed-architecture references: ``none`` and ``static`` (docs/methods/baselines.md).

``none`` trains the start net and never grows: the lower reference. ``static`` trains, from
scratch and for the same epochs, the net the budget would buy (all start widths scaled by the
largest common factor r ≥ 1 whose cost fits): the upper reference a growth method has to match.
With ``widths`` set it trains the net of exactly those widths instead: the harness runs it so as
the *matched* static net of a growing cell (``static@<method>``, the widths that cell ended
with), so that "same-size" claims compare like with like (see ``Suite.matched_cell``).
Both leave every decision about data, optimizer and schedule to the runner, like every method.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from growbench.claims import Claim
from growbench.methods.base import Grower, GrowerConfig, GrowthContext, GrowthEvent
from growbench.methods.registry import register
from growbench.nn import GrowableNet, ModelConfig


@register
class NoGrowth(Grower):
    name = "none"
    grows = False
    preserves_function = "exact"
    description = "the start net, never grown (lower reference)"

    def grow_step(self, net: GrowableNet, ctx: GrowthContext, event: GrowthEvent) -> None:
        event.stop_reason = "method none never grows"


@dataclass
class StaticConfig(GrowerConfig):
    positive: ClassVar[tuple[str, ...]] = ("bisection_steps",)
    bisection_steps: int = 40
    """Bisection steps that search the largest width factor r ≥ 1 whose cost fits the budget
    (> 0)."""
    widths: tuple[int, ...] = ()
    """Train exactly these site widths, one per site in site order; empty: the widths the budget
    buys."""

    def check(self, method: str) -> None:
        super().check(method)
        if any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in self.widths):
            raise ValueError(f"{method}: widths must be whole numbers ≥ 1, got {self.widths!r}")


@register
class StaticBudgetNet(Grower):
    name = "static"
    grows = False
    Config = StaticConfig
    preserves_function = "exact"
    description = "the budget-size net trained from scratch (upper reference)"
    claims = (
        Claim(
            paper="growbench sanity check (no paper)",
            statement="Training at the budget's size beats the unchanged starting network",
            method="static",
            baseline="none",
        ),
    )

    def grow_step(self, net: GrowableNet, ctx: GrowthContext, event: GrowthEvent) -> None:
        event.stop_reason = "method static never grows"

    def start_config(
        self, model: ModelConfig, budget_limit: float, cost_of: Callable[[ModelConfig], float]
    ) -> ModelConfig:
        widths = self.config.widths
        if not widths:
            return scaled_to_budget(model, budget_limit, cost_of, self.config.bisection_steps)
        if len(widths) != len(model.widths):
            raise ValueError(
                f"static: widths has {len(widths)} entries but the model has "
                f"{len(model.widths)} sites"
            )
        return model.with_widths(tuple(widths))


def scaled_to_budget(
    model: ModelConfig,
    budget_limit: float,
    cost_of: Callable[[ModelConfig], float],
    bisection_steps: int = 40,
) -> ModelConfig:
    """Widths round(r · start widths) with the largest r ≥ 1 whose cost fits ``budget_limit``
    (a net with no hidden layer has nothing to scale and is returned as it is). Each set of
    widths is priced once: late bisection steps round to widths already priced."""
    costs: dict[tuple[int, ...], float] = {}

    def scaled(r: float) -> ModelConfig:
        return model.with_widths(tuple(max(1, round(r * w)) for w in model.widths))

    def fits(config: ModelConfig) -> bool:
        if config.widths not in costs:
            costs[config.widths] = cost_of(config)
        return costs[config.widths] <= budget_limit

    if not model.widths or not fits(model):
        return model
    low, high = 1.0, 2.0
    while fits(scaled(high)):
        low, high = high, 2.0 * high
    for _ in range(bisection_steps):
        middle = (low + high) / 2
        if fits(scaled(middle)):
            low = middle
        else:
            high = middle
    return scaled(low)
