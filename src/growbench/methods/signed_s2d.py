"""``signed-s2d``: signed splitting steepest descent, S3D (Wu, Ye, Lei, Lee, Liu, arXiv 2003.10392).

Rule: S2D splits a unit into copies with positive fan-out weights, so it only helps where the
unit's splitting matrix S_j has a negative eigenvalue and stalls once every S_j is positive
semi-definite ("splitting-stable"). S3D lets copies carry negative fan-out weights that still sum
to 1 (the function is unchanged at ε = 0) with Σ|w_i| ≤ c. Among symmetric 3-copy splits (copies
at θ and θ ± εv, accurate to O(ε⁴)) the best second-order change is
(ε²/2)·min((1+c)/2·λ_min, −(c−1)/2·λ_max, 0), attained by ``signed+`` (weights
((1−c)/2, (1+c)/4, (1+c)/4) at θ, θ + εv_min, θ − εv_min) or ``signed−`` (weights
((1+c)/2, (1−c)/4, (1−c)/4) at θ, θ + εv_max, θ − εv_max). So a unit with positive curvature
descends too; only S_j = 0 is stuck. Each round scores every splittable unit by that minimum and
splits greedily by score per unit of cost within a round budget (docs/methods/signed-s2d.md).

The paper has no public code and its body was not read: every formula here is the team's
derivation, guarded by tests against a numerical optimum, not against the paper.
Kept from S2D (``methods/s2d.py``, ``methods/_splitting.py``): exact S_j per unit on a fixed,
un-augmented statistics set in eval mode, ``eigh`` in float64, the bias inside the split direction,
ReLU scored with the softplus(β = 3) surrogate (the prediction is then a ranking heuristic).
Decided [ours]: m = 3 and c = 2 by default; per unit the better of ``signed+`` and
``signed−``; m = 4 (both ends at once) is not implemented, the event counts how often it would
have helped; c = 1 falls back to S2D's 2-copy split ±εv_min with weights (½, ½). Only symmetric
schemes are used: an asymmetric 3-split does better on indefinite S (II = −(a·c + b·N)/P with
a = −λ_min, b = λ_max, P = (1+c)/2, N = (c−1)/2, whenever b > a·N and a·c > b·N²; found and
checked numerically in the tests, not in the papers), but its error is O(ε³), the reason we
reject the 2-copy signed split. Selection is greedy by score / exact cost (a 3-split costs 2
units) within B = ``growth_ratio`` × the net's current cost and the remaining budget, at most
doubling a site per round. ``eigen_solver``: ``"exact"`` (``eigh`` of every S_j), ``"rayleigh"``
(the Rayleigh-quotient estimator of ``growbench.methods.rayleigh``, fast-s2d's, for v_min and
v_max, S never formed, set by the ``rayleigh`` option) or ``"auto"`` (the
default: exact for a site whose matrices fit in ``max_stat_bytes`` and whose exact matrices cost
no more than the estimator, else Rayleigh; forming S costs about N·p² multiply-adds per unit and
position over N samples, the estimator 2·steps·batch·p, so exact wins while N·p ≤ 2·steps·batch;
with the steps sized by ``rayleigh.passes`` (steps·batch ≈ passes·N) that is p ≤ about
2·passes = 100 where 50 passes exceed ``rayleigh.min_steps`` (N ≥ 1,536), more below, so a
ResNet's 3×3 sites are estimated). Two progress
rules of ours keep tiny nets growing: the round budget B never blocks the first split of a round,
and the doubling cap never blocks the first split at a site (a width-1 site may go to 3). Only the
remaining budget can stop a round from growing at all, and only then is ``stop_reason = "budget
exhausted"`` (the runner stops growing on it); a round cut short by B leaves it unset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor

from growbench.claims import Claim
from growbench.methods._splitting import (
    PlannedSplit,
    apply_splits,
    check_splitting_matrix,
    prediction_is_heuristic,
    site_eigen,
    splittable_sites,
    splitting_refusal,
)
from growbench.methods.base import Grower, GrowerConfig, GrowthContext, GrowthEvent
from growbench.methods.rayleigh import RayleighConfig, rayleigh_eigen, search_costs
from growbench.methods.registry import register
from growbench.methods.selection import Candidate, Selection, select_within_budget, unit_pricing
from growbench.nn import GrowableNet, Site
from growbench.nn.counting import growth_cost

EIGEN_SOLVERS = ("auto", "exact", "rayleigh")
KINDS = ("signed+", "signed-", "split")


@dataclass
class SignedS2DConfig(GrowerConfig):
    positive: ClassVar[tuple[str, ...]] = ("growth_ratio", "max_stat_bytes")
    non_negative: ClassVar[tuple[str, ...]] = ("epsilon", "lambda_tol")
    copies: int = 3
    """Copies m a split unit becomes; only 3 is supported (with weight_bound = 1 it falls back to
    S2D's 2-copy split)."""
    weight_bound: float = 2.0
    """Bound c on Σ|w_i|, the absolute fan-out weights of a unit's offspring (≥ 1; 1 means no
    negative weights)."""
    epsilon: float = 1e-2
    """Split step ε: offspring move by ±ε along the unit-norm direction v_min or v_max (≥ 0)."""
    growth_ratio: float = 0.3
    """Round budget B as a share of the net's current cost, in the suite's cost metric (> 0)."""
    lambda_tol: float = 1e-8
    """A unit is eligible only if its score is below −lambda_tol times the round's largest ‖S_j‖
    (≥ 0)."""
    max_stat_bytes: int = 512 * 2**20
    """Most bytes of splitting matrices held at once; with eigen_solver "auto", a site whose
    matrices exceed it is estimated instead (> 0)."""
    eigen_solver: str = "auto"
    """How v_min and v_max are found: "exact" (eigh of every S_j), "rayleigh" (fast-s2d's estimator,
    S_j never formed) or "auto" (whichever is cheaper per site)."""
    rayleigh: RayleighConfig = field(default_factory=RayleighConfig)
    """The Rayleigh-quotient descent of eigen_solver "rayleigh" and "auto", whose rule reads its
    steps and batch_size (``rayleigh.RayleighConfig``; in a suite a table such as
    ``rayleigh = { passes = 25 }``)."""
    splitting_matrix: str = "exact"
    """Splitting matrix S_j: "exact" (the curvature of the unit's whole path to its consumer) or
    "first-activation" (S2D's official code's, stopping at the first activation)."""

    def __post_init__(self) -> None:
        check_splitting_matrix("signed-s2d", self.splitting_matrix)
        if self.copies != 3:
            raise ValueError(
                f"signed-s2d: copies must be 3, got {self.copies!r} (the 2-copy signed split is "
                "asymmetric with an O(ε³) error; the 4-copy split is not implemented)"
            )
        if not (math.isfinite(self.weight_bound) and self.weight_bound >= 1):
            raise ValueError(
                f"signed-s2d: weight_bound c must be a finite number ≥ 1 (Σ|w| ≥ Σw = 1), "
                f"got {self.weight_bound!r}"
            )
        if not (math.isfinite(self.epsilon) and self.epsilon >= 0):
            raise ValueError(f"signed-s2d: epsilon must be finite and ≥ 0, got {self.epsilon!r}")
        if not (math.isfinite(self.growth_ratio) and self.growth_ratio > 0):
            raise ValueError(
                f"signed-s2d: growth_ratio must be finite and > 0, got {self.growth_ratio!r}"
            )
        if not (math.isfinite(self.lambda_tol) and self.lambda_tol >= 0):
            raise ValueError(
                f"signed-s2d: lambda_tol must be finite and ≥ 0, got {self.lambda_tol!r}"
            )
        if isinstance(self.max_stat_bytes, bool) or not isinstance(self.max_stat_bytes, int):
            raise ValueError(
                f"signed-s2d: max_stat_bytes must be an integer, got {self.max_stat_bytes!r}"
            )
        if self.max_stat_bytes <= 0:
            raise ValueError(f"signed-s2d: max_stat_bytes must be > 0, got {self.max_stat_bytes}")
        if self.eigen_solver not in EIGEN_SOLVERS:
            raise ValueError(
                f"signed-s2d: unknown eigen_solver {self.eigen_solver!r}; choose {EIGEN_SOLVERS}"
            )
        self.rayleigh = RayleighConfig.of(self.rayleigh, "signed-s2d")


def unit_scores(lambda_min: Tensor, lambda_max: Tensor, c: float) -> tuple[Tensor, Tensor]:
    """II_+ = (1+c)/2·min(λ_min, 0) and II_− = −(c−1)/2·max(λ_max, 0): the second-order loss
    change per ε²/2 of the best ``signed+`` and ``signed−`` 3-splits (0 where neither helps)."""
    ii_plus = (1 + c) / 2 * lambda_min.clamp(max=0) + 0.0  # + 0.0 turns −0.0 into 0.0
    ii_minus = -(c - 1) / 2 * lambda_max.clamp(min=0) + 0.0
    return ii_plus, ii_minus


def split_scheme(kind: str, direction: Tensor, c: float, epsilon: float) -> tuple[Tensor, Tensor]:
    """Offspring fan-in deltas (m × p) and fan-out weights (m,) of one split, float64; offspring 0
    keeps the parent's index. ``signed+`` and ``signed-`` take v_min and v_max; ``split`` is S2D's
    2-copy split along v_min (what c = 1 reduces to)."""
    step = epsilon * direction.double()
    if kind == "split":
        return torch.stack([step, -step]), torch.tensor([0.5, 0.5], dtype=torch.float64)
    if kind == "signed+":
        weights = [(1 - c) / 2, (1 + c) / 4, (1 + c) / 4]
    elif kind == "signed-":
        weights = [(1 + c) / 2, (1 - c) / 4, (1 - c) / 4]
    else:
        raise ValueError(f"signed-s2d: unknown split kind {kind!r}; choose {KINDS}")
    deltas = torch.stack([torch.zeros_like(step), step, -step])
    return deltas, torch.tensor(weights, dtype=torch.float64)


@dataclass
class _Candidate:
    score: float
    kind: str
    position: int  # site position among the splittable sites
    unit: int
    direction: Tensor


@register
class SignedS2D(Grower):
    name = "signed-s2d"
    Config = SignedS2DConfig
    preserves_function = "at_zero_step"
    zero_step_overrides = {"epsilon": 0.0}
    small_step_overrides = {"epsilon": 1e-3}
    description = (
        "signed splitting (S3D): 3-copy splits with negative fan-out weights along v_min or v_max, "
        "greedy by predicted loss decrease per unit of cost"
    )
    claims = (
        Claim(
            paper="Wu, Ye, Lei, Lee & Liu 2020, arXiv:2003.10392",
            statement="Signed splitting is at least as good as S2D at equal parameters",
            method="signed-s2d",
            baseline="s2d",
            relation="non_inferior",
            margin=0.01,
            matched=True,
        ),
    )

    def refusal(self, site: Site) -> str | None:
        return super().refusal(site) or splitting_refusal(site)

    def _estimates(self, site: Site, samples: int) -> bool:
        """Whether ``site``'s eigenpairs come from the Rayleigh estimator rather than ``eigh``."""
        solver = self.config.eigen_solver
        if solver == "auto":
            rayleigh = self.config.rayleigh
            too_big = site.width * site.fan_in_size**2 * 8 > self.config.max_stat_bytes
            costs = search_costs(site, samples, rayleigh.steps_for(samples), rayleigh.batch_size)
            return too_big or costs["exact"] > costs["estimator"]
        return solver == "rayleigh"

    def grow_step(self, net: GrowableNet, ctx: GrowthContext, event: GrowthEvent) -> None:
        config = self.config
        sites = splittable_sites(self.growable_sites(net))
        eigens, peak = self._eigens(net, ctx, sites, event)
        with event.phase("select"):
            candidates = self._candidates(sites, eigens, peak, event)
            del eigens
            if not candidates:
                event.stop_reason = "splitting-stable"
                return
            chosen, exhausted, diagnostics = self._select(net, ctx, sites, candidates)
            event.extras.update(diagnostics)
        if exhausted:
            event.stop_reason = "budget exhausted"
        if not chosen:
            return
        with event.phase("apply"):
            self._apply(net, sites, chosen, event)
        event.predicted_loss_change = sum(config.epsilon**2 / 2 * pick.score for pick in chosen)
        counts = {kind: 0 for kind in KINDS}
        for candidate in chosen:
            counts[candidate.kind] += 1
        event.extras["splits_by_kind"] = counts

    def _eigens(
        self, net: GrowableNet, ctx: GrowthContext, sites: list[Site], event: GrowthEvent
    ) -> tuple[list, int]:
        """Each site's extreme eigenpairs (exact, or Rayleigh estimates for the sites
        ``_estimates`` picks) and the peak bytes the exact ones took."""
        config = self.config
        peak = 0
        eigens = []
        estimated = [site for site in sites if self._estimates(site, len(ctx.inputs))]
        if estimated:
            with event.phase("search"):
                rayleigh = rayleigh_eigen(
                    net, ctx, estimated, config.rayleigh, config.splitting_matrix
                )
        for site in sites:
            if site in estimated:
                eigens.append(rayleigh[site.name])
                continue
            eigen, site_peak = site_eigen(
                net, ctx, site, config.max_stat_bytes, event, config.splitting_matrix
            )
            peak = max(peak, site_peak)
            eigens.append(eigen)
        event.extras["rayleigh_sites"] = [site.name for site in estimated]
        return eigens, peak

    def _candidates(
        self, sites: list[Site], eigens: list, peak: int, event: GrowthEvent
    ) -> list[_Candidate]:
        """Every unit whose best symmetric 3-split lowers the loss by more than the tolerance,
        with its kind and direction; the scores and eigenvalues go into the event."""
        config = self.config
        c = float(config.weight_bound)
        scale = max((float(e.matrix_norm.max()) for e in eigens if len(e.matrix_norm)), default=0)
        tolerance = config.lambda_tol * scale
        candidates: list[_Candidate] = []
        stable_but_splittable = 0
        four_would_help = 0
        for position, (site, eigen) in enumerate(zip(sites, eigens)):
            ii_plus, ii_minus = unit_scores(eigen.lambda_min, eigen.lambda_max, c)
            plus_wins = ii_plus <= ii_minus
            scores = torch.where(plus_wins, ii_plus, ii_minus)
            event.scores[site.name] = scores.tolist()
            eligible = scores < -tolerance
            stable_but_splittable += int((eligible & (eigen.lambda_min >= -tolerance)).sum())
            four_would_help += int(((ii_plus < -tolerance) & (ii_minus < -tolerance)).sum())
            for unit in torch.nonzero(eligible).flatten().tolist():
                if c == 1:
                    kind, direction = "split", eigen.vector_min[unit]
                elif plus_wins[unit]:
                    kind, direction = "signed+", eigen.vector_min[unit]
                else:
                    kind, direction = "signed-", eigen.vector_max[unit]
                candidates.append(_Candidate(float(scores[unit]), kind, position, unit, direction))
        event.extras.update(
            {
                "lambda_min": {s.name: e.lambda_min.tolist() for s, e in zip(sites, eigens)},
                "lambda_max": {s.name: e.lambda_max.tolist() for s, e in zip(sites, eigens)},
                "lambda_tolerance": tolerance,
                "weight_bound": c,
                "copies_per_split": (2 if c > 1 else 1) + 1,
                "s2d_stable_but_splittable": stable_but_splittable,
                "four_copies_would_help": four_would_help,
                "prediction_is_heuristic": prediction_is_heuristic(sites, config.splitting_matrix),
                "peak_stat_bytes": peak,
            }
        )
        return candidates

    def _apply(
        self, net: GrowableNet, sites: list[Site], chosen: list[_Candidate], event: GrowthEvent
    ) -> None:
        """Split the chosen units by their schemes; record the offspring's fan-out norms."""
        config = self.config
        c = float(config.weight_bound)
        plans = []
        for candidate in chosen:
            deltas, weights = split_scheme(candidate.kind, candidate.direction, c, config.epsilon)
            site_name = sites[candidate.position].name
            plans.append(PlannedSplit(site_name, candidate.unit, deltas, weights, candidate.kind))
        norms_before, layout = _fan_out_norms_before(sites, chosen)
        event.selected = apply_splits(net, plans)
        units_per_split = 2 if c > 1 else 1
        event.extras["fan_out_norms"] = _fan_out_norms_after(
            sites, chosen, norms_before, layout, units_per_split
        )

    def _select(
        self,
        net: GrowableNet,
        ctx: GrowthContext,
        sites: list,
        candidates: list[_Candidate],
    ) -> tuple[list[_Candidate], bool, dict]:
        """Greedy by score / exact cost, ascending; skip what does not fit (module docstring)."""
        metric = ctx.budget_metric
        units_per_split = 2 if self.config.weight_bound > 1 else 1
        current = net.params() if metric == "params" else net.flops()
        round_budget = self.config.growth_ratio * current
        cost_of_split = {
            site.name: growth_cost(net, {site.name: units_per_split})[metric] for site in sites
        }

        def ratio(candidate: _Candidate) -> float:
            cost = cost_of_split[sites[candidate.position].name]
            return candidate.score / cost if cost > 0 else -math.inf

        ordered = sorted(candidates, key=lambda c: (ratio(c), c.position, c.unit))
        ranked = [
            Candidate(sites[c.position].name, c.kind, c, c.score, units_per_split) for c in ordered
        ]
        width = {site.name: site.width for site in sites}
        price = unit_pricing(net, ctx)
        skipped = {"round": 0, "cap": 0}

        def admits(candidate: Candidate, selection: Selection) -> bool:
            """The doubling cap, then the round budget, which never blocks a round's first."""
            units = {**selection.units}
            units[candidate.site] = units.get(candidate.site, 0) + units_per_split
            if units[candidate.site] > max(width[candidate.site], units_per_split):
                skipped["cap"] += 1
                return False
            if selection.kept and price(units) > round_budget:
                skipped["round"] += 1
                return False
            return True

        selection = select_within_budget(ranked, ctx.remaining_budget, price, admits=admits)
        diagnostics = {
            "round_budget": round_budget,
            "cost_of_one_split": cost_of_split,
            "skipped_round_budget": skipped["round"],
            "skipped_doubling_cap": skipped["cap"],
        }
        return [kept.key for kept in selection.kept], selection.over_budget > 0, diagnostics


def _fan_out_norms_before(sites: list, chosen: list[_Candidate]) -> tuple[dict, dict]:
    """‖w_j‖ of every unit to split, and per site the old width and consumer output count."""
    before: dict[str, list[float]] = {}
    layout: dict[str, tuple[int, int]] = {}
    for candidate in chosen:
        site = sites[candidate.position]
        if site.name not in layout:
            layout[site.name] = (site.width, site.consumer.weight.shape[0])
        column = site.fan_out_matrix()[candidate.unit]
        before.setdefault(site.name, []).append(float(column.double().norm()))
    return before, layout


def _fan_out_norms_after(
    sites: list, chosen: list[_Candidate], before: dict, layout: dict, units_per_split: int
) -> dict[str, list[list[float]]]:
    """Per split unit ``[unit, ‖w_j‖ before, ‖fan-outs of all its offspring‖ after]``, the latter
    on the consumer outputs that existed before (a split of the next site appends outputs)."""
    by_name = {site.name: site for site in sites}
    result: dict[str, list[list[float]]] = {}
    seen: dict[str, int] = {}
    for candidate in chosen:
        site = by_name[sites[candidate.position].name]
        old_width, old_outputs = layout[site.name]
        index = seen.get(site.name, 0)
        seen[site.name] = index + 1
        start = old_width + index * units_per_split
        offspring = [candidate.unit, *range(start, start + units_per_split)]
        columns = site.fan_out_matrix()[offspring][:, : old_outputs * site.positions]
        result.setdefault(site.name, []).append(
            [candidate.unit, before[site.name][index], float(columns.double().norm())]
        )
    return result
