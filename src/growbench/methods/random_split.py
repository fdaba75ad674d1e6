"""``random-split``: S2D's surgery on random units along random directions.

The control of the splitting papers (docs/methods/random-split.md): the same number of units,
the same symmetric split θ ± εv with halved fan-out, but units drawn uniformly without
replacement over all sites and v uniform on the unit sphere of R^p (bias entry included). Any gap
to ``s2d`` measures what the eigen-analysis of the splitting matrices is worth. klightz/Firefly's
version perturbs parent and copy with independent directions (a first-order change); we keep
the symmetric split so the only difference from S2D is the choice of units and directions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from growbench.methods.base import Grower, GrowerConfig, GrowthContext, GrowthEvent
from growbench.methods.registry import register
from growbench.methods.selection import Candidate, select_within_budget, unit_pricing
from growbench.nn import GrowableNet


@dataclass
class RandomSplitConfig(GrowerConfig):
    positive: ClassVar[tuple[str, ...]] = ("growth_ratio",)
    non_negative: ClassVar[tuple[str, ...]] = ("epsilon",)
    at_most: ClassVar[dict[str, float]] = {"growth_ratio": 1.0}
    growth_ratio: float = 0.3
    """Share of the units of the growable sites split each round, drawn at random (each splits once
    at most): (0, 1]."""
    epsilon: float = 1e-2
    """Split step ε: the two copies move by ±ε along a random unit-norm direction (≥ 0)."""


@register
class RandomSplit(Grower):
    name = "random-split"
    Config = RandomSplitConfig
    preserves_function = "at_zero_step"
    zero_step_overrides = {"epsilon": 0.0}
    description = "split random units along random directions (control for S2D)"

    def grow_step(self, net: GrowableNet, ctx: GrowthContext, event: GrowthEvent) -> None:
        with event.phase("select"):
            sites = [site for site in self.growable_sites(net) if not site.is_linear]
            units = [
                Candidate(site.name, "split", unit) for site in sites for unit in range(site.width)
            ]
            count = math.floor(self.config.growth_ratio * len(units))
            order = torch.randperm(len(units), generator=ctx.generator)[:count].tolist()
            drawn = [units[i] for i in order]
            selection = select_within_budget(drawn, ctx.remaining_budget, unit_pricing(net, ctx))
            chosen: dict[str, list[int]] = {}
            for split in selection.kept:
                chosen.setdefault(split.site, []).append(split.key)
        if selection.over_budget:
            event.stop_reason = "budget exhausted"
        with event.phase("apply"):
            for site in reversed(sites):  # output side first (convention 9, docs/conventions.md)
                ids = chosen.get(site.name)
                if not ids:
                    continue
                directions = torch.randn(
                    len(ids), site.fan_in_size, generator=ctx.generator, dtype=torch.float64
                )
                directions /= directions.norm(dim=1, keepdim=True)
                step = self.config.epsilon * directions
                deltas = torch.stack([step, -step], dim=1)
                weights = torch.full((len(ids), 2), 0.5, dtype=torch.float64)
                site.split(ids, deltas, weights)
                event.selected[site.name] = [[unit, "split"] for unit in ids]
