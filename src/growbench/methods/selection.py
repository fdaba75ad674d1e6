"""Budgeted greedy selection, the one every method grows through (convention 7).

A method ranks what it could grow (a split, a new unit, a block of units, a layer), each a
``Candidate`` named by its site; ``select_within_budget`` walks the ranking and keeps what fits
the remaining budget at its exact joint cost (``growth_cost``: adjacent sites' cross terms
included), under the method's own admission rule and limit. ``take_within_budget`` is the same
walk over plain site names, the short form for a plugin that adds units one at a time.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from growbench.methods.base import GrowthContext
from growbench.nn import GrowableNet
from growbench.nn.counting import growth_cost


@dataclass(frozen=True)
class Candidate:
    """One thing a method could grow, as its selection ranks it (``select_within_budget``).

    ``kind`` and ``key`` say which of the method's candidates it is at the site named ``site``
    (e.g. ``"split"`` and the unit's index; ``"layer"`` and the method's record of it);
    ``score`` is what the method ranked it by; ``units`` is how many units it adds at its site,
    priced by ``unit_pricing`` (1 for a split or a new unit, k for a block of k units; 0 for
    one whose cost ``extra_cost`` gives whole, such as a layer). Unpacks as
    ``(site, kind, key, score)``."""

    site: str
    kind: str = "unit"
    key: Any = None
    score: float = 0.0
    units: int = 1

    def __iter__(self) -> Iterator[Any]:
        return iter((self.site, self.kind, self.key, self.score))


@dataclass
class Selection:
    """What ``select_within_budget`` kept, in ranking order, and what that costs."""

    kept: list[Candidate] = field(default_factory=list)
    units: dict[str, int] = field(default_factory=dict)
    """Units the kept candidates add, per site (a site they add none to is absent)."""
    cost: float = 0
    """The kept candidates' exact cost together (0 under an infinite budget, which prices
    nothing)."""
    extra_cost: float = 0
    """The part of ``cost`` that is not their units' (the sum of their ``extra_cost``)."""
    over_budget: int = 0
    """How many candidates the method's rule admitted but the budget did not: 0 unless the
    budget cut the selection short (the method's ``"budget exhausted"``)."""
    kinds: Counter = field(default_factory=Counter)
    """Kept candidates per ``(site, kind)``."""

    def count(self, kind: str, site: str | None = None) -> int:
        """How many kept candidates are of ``kind`` (at ``site``, when given)."""
        if site is not None:
            return self.kinds[(site, kind)]
        return sum(n for (_, each), n in self.kinds.items() if each == kind)


def unit_pricing(net: GrowableNet, ctx: GrowthContext) -> Callable[[dict[str, int]], float]:
    """The exact cost in ``ctx.budget_metric`` of adding ``units[site]`` units at each site of
    ``net`` together (``growth_cost``): how ``select_within_budget`` prices units."""
    return lambda units: growth_cost(net, units)[ctx.budget_metric]


def select_within_budget(
    ranked: Iterable[Candidate],
    budget: float,
    price_units: Callable[[dict[str, int]], float] | None = None,
    limit: int | None = None,
    admits: Callable[[Candidate, Selection], bool] | None = None,
    extra_cost: Callable[[Candidate], float] | None = None,
) -> Selection:
    """Convention 7 (docs/conventions.md), the budgeted greedy selection of every method: walk
    ``ranked`` in order; skip a candidate that ``admits(candidate, selection)`` rejects (the
    method's own rule, given what was kept so far); keep it when the cost of the kept
    candidates with it fits ``budget``; stop once ``limit`` are kept. That cost is exact: their
    units together priced by ``price_units`` (usually ``unit_pricing(net, ctx)``: the cross
    terms of adjacent sites included), plus each one's ``extra_cost(candidate)``, which is
    asked only of admitted candidates. An infinite budget prices nothing."""
    selection = Selection()
    for candidate in ranked:
        if limit is not None and len(selection.kept) == limit:
            break
        if admits is not None and not admits(candidate, selection):
            continue
        units = dict(selection.units)
        if candidate.units:
            units[candidate.site] = units.get(candidate.site, 0) + candidate.units
        extra = selection.extra_cost
        cost = 0
        if budget != math.inf:
            extra += extra_cost(candidate) if extra_cost is not None else 0
            cost = (price_units(units) if units else 0) + extra
            if not cost <= budget:
                selection.over_budget += 1
                continue
        selection.kept.append(candidate)
        selection.units, selection.cost, selection.extra_cost = units, cost, extra
        selection.kinds[(candidate.site, candidate.kind)] += 1
    return selection


def take_within_budget(net: GrowableNet, ctx: GrowthContext, candidates: list[str]) -> list[bool]:
    """``select_within_budget`` over one new unit at each named site: walk ``candidates`` in
    order and accept each one whose exact cost, together with those accepted before, still
    fits in ``ctx.remaining_budget``. Returns one decision per candidate; sum them per site to
    know how many units to add there."""
    ranked = [Candidate(site_name) for site_name in candidates]
    selection = select_within_budget(ranked, ctx.remaining_budget, unit_pricing(net, ctx))
    kept = {id(candidate) for candidate in selection.kept}
    return [id(candidate) in kept for candidate in ranked]
