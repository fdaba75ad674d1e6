"""``random-add``: brand-new units chosen without looking at data.

The control for TINY, SENN and GradMax (docs/methods/random-add.md). ``zero-fan-out``
(default): Gaussian fan-in direction scaled to the mean norm of the site's existing fan-in rows,
bias 0, fan-out 0, so the function is kept and the fan-out starts learning from
E[h_new g_aᵀ]. ``zero-fan-in``: fan-in 0 and fan-out of norm c by GradMax's ``mean_norm`` rule,
with i.i.d. U[0, 1) entries as growneuron's "Random" control (``direction="gaussian"`` as an
option); it needs σ(0) = 0 and σ'(0) ≠ 0, which the zoo's activations state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from growbench.methods.base import Grower, GrowerConfig, GrowthContext, GrowthEvent
from growbench.methods.registry import register
from growbench.methods.selection import Candidate, select_within_budget, unit_pricing
from growbench.nn import GrowableNet, Site, activation_info

MODES = ("zero-fan-out", "zero-fan-in")
DIRECTIONS = ("uniform", "gaussian")


@dataclass
class RandomAddConfig(GrowerConfig):
    positive: ClassVar[tuple[str, ...]] = ("growth_ratio",)
    non_negative: ClassVar[tuple[str, ...]] = ("fan_out_scale",)
    at_most: ClassVar[dict[str, float]] = {"growth_ratio": 100.0}
    choices: ClassVar[dict[str, tuple]] = {"mode": MODES, "direction": DIRECTIONS}
    growth_ratio: float = 0.3
    """New units added per existing unit of a site each round (> 0, at most 100)."""
    mode: str = "zero-fan-out"
    """How new units start: "zero-fan-out" (random fan-in at the site's mean fan-in norm, fan-out 0)
    or "zero-fan-in" (fan-in 0, random fan-out of norm c; needs σ(0) = 0 and σ'(0) ≠ 0)."""
    fan_out_scale: float = 0.5
    """zero-fan-in mode: fan-out norm c = fan_out_scale × the mean norm of the site's existing
    fan-out columns (≥ 0)."""
    direction: str = "uniform"
    """zero-fan-in mode: draw the fan-out entries "uniform" in [0, 1) or "gaussian"."""


@register
class RandomAdd(Grower):
    name = "random-add"
    Config = RandomAddConfig
    preserves_function = "exact"
    description = "add units with random fan-in and zero fan-out (control for TINY/GradMax/SENN)"

    def refusal(self, site: Site) -> str | None:
        reason = super().refusal(site)
        if reason is None and self.config.mode == "zero-fan-in":
            for act in site.activations:
                info = activation_info(act.name)
                if not info.zero_at_zero or info.slope_at_zero == 0:
                    return (
                        f"zero-fan-in units need σ(0) = 0 and σ'(0) ≠ 0, and activation "
                        f"{act.name!r} does not have both; use relu or tanh"
                    )
        return reason

    def grow_step(self, net: GrowableNet, ctx: GrowthContext, event: GrowthEvent) -> None:
        config = self.config
        sites = [site for site in self.growable_sites(net) if not site.is_linear]
        with event.phase("select"):
            wanted = {site.name: max(1, round(config.growth_ratio * site.width)) for site in sites}
            candidates = [
                Candidate(name, "new") for name, count in wanted.items() for _ in range(count)
            ]
            selection = select_within_budget(
                candidates, ctx.remaining_budget, unit_pricing(net, ctx)
            )
        if selection.over_budget:
            event.stop_reason = "budget exhausted"
        event.predicted_loss_change = 0.0  # new units are silent: the function is unchanged
        with event.phase("apply"):
            for site in sites:
                count = selection.units.get(site.name, 0)
                if count == 0:
                    continue
                weights = site.fan_in_matrix()
                if site.producer.bias is not None:
                    weights = weights[:, :-1]
                fan_in_size, fan_out_size = weights.shape[1], site.fan_out_size
                draw = {"generator": ctx.generator, "dtype": torch.float64}
                if config.mode == "zero-fan-out":
                    fan_in = torch.randn(count, fan_in_size, **draw)
                    target_norm = weights.double().norm(dim=1).mean()
                    fan_in *= target_norm / fan_in.norm(dim=1, keepdim=True)
                    fan_out = torch.zeros(count, fan_out_size, dtype=torch.float64)
                else:
                    fan_in = torch.zeros(count, fan_in_size, dtype=torch.float64)
                    if config.direction == "uniform":
                        fan_out = torch.rand(count, fan_out_size, **draw)
                    else:
                        fan_out = torch.randn(count, fan_out_size, **draw)
                    norm = config.fan_out_scale * site.fan_out_matrix().double().norm(dim=1).mean()
                    fan_out *= norm / fan_out.norm(dim=1, keepdim=True)
                new_ids = site.add_units(fan_in, fan_out)
                event.selected[site.name] = [[unit, "new"] for unit in new_ids]
