"""``fast-s2d``: energy-aware fast splitting (Wang, Wu, Li, Chandra, Liu, arXiv 1910.03103).

Rule: S2D's split (θ ± εv, fan-out halved, loss change (ε²/2)·vᵀS_jv) with two changes
(docs/methods/fast-s2d.md). (1) The splitting matrices are never formed: each unit's smallest
eigenpair is estimated by stochastic descent on the Rayleigh quotient R(v) = vᵀSv / vᵀv, whose
gradient needs only S_B·v_j, which the statistics taps of a mini-batch (x̃ and c per sample) give
for every unit of every site at once (``x̃ᵀ (c ⊙ x̃Vᵀ)/|B|``): the estimator of
``growbench.methods.rayleigh``, shared with ``signed-s2d``, set by the ``rayleigh`` option.
(2) Which units to split is a knapsack over per-unit costs τ_j, relaxed to a linear program:
minimise Σ β_j λ̂_j subject to a cost budget per group of sites and a cap per site, 0 ≤ β ≤ 1,
only units with λ̂ < 0 as variables; units with β ≥ β_keep are split.

Kept from the official code (dilinwang820/fast-energy-aware-splitting): RMSprop on the directions
(momentum 0.9, alpha 0.9) with the gradient of R set by hand and the iterate renormalised after
every step, LR decays by ×0.2, estimates averaged over the final window (λ̂ = mean R_B, v̂ = mean v
renormalised), v initialised U(−0.1, 0.1), the LP relaxation with groups, ≤ 2× caps and β_keep,
ε on the unit-norm direction, the ±εv̂ split with fan-out weights ½, ½ of s2d.

Changed ([ours] where marked):
* the whole net runs in eval mode (the code leaves all but the split conv's BN in train mode and
  overwrites running statistics), on the fixed, un-augmented statistics set;
* 50 passes over the statistics set in batches of 64 (``rayleigh.passes``: 1,600 steps on
  2,048 samples) from lr 1e-2, decays at 20/40/60/80 % of the steps, window = last 10 % (the
  code: a few epochs from lr 1e-3, window = last epoch); [ours] the window is rounded up to
  whole passes over the set, the first pass is cut short so the run ends on a pass boundary,
  and window means weigh each step by its batch size, so for a still iterate λ̂ = v̂ᵀSv̂ over the
  set exactly (a plain mean over a ragged window left 5-14 % noise on the fixtures);
* [ours] conv sites get S_B·v from a convolution and its weight gradient (no im2col rows);
* exact per-unit costs in the suite's metric, identity transform (the code: √ or log of a rough
  MAC proxy, kept as options); LP by HiGHS (a vertex solution), then truncation to the exact
  remaining budget (convention 7, docs/conventions.md); linear units are never split; float64
  throughout the estimator's sums, the LP and the directions;
* each event reports |λ̂ − v̂ᵀSv̂| (one more pass, phase ``diagnostics``) and, opt-in, the
  agreement with exact eigenpairs;
* [ours] opt-in, the estimator stops once its pass means settle (``rayleigh.tolerance``, 0 by
  default: every step runs), and ``eigen_solver = "exact"`` takes v_min from ``eigh`` of every
  S_j instead of the estimator (s2d's computation); every event compares the two computations'
  costs (``search_costs``) and names the sites where the exact one costs less.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from scipy.optimize import linprog
from scipy.stats import spearmanr
from torch import Tensor

from growbench.claims import Claim
from growbench.methods._splitting import (
    PlannedSplit,
    apply_splits,
    canonical_sign,
    check_splitting_matrix,
    prediction_is_heuristic,
    site_eigen,
    splittable_sites,
    splitting_matrices,
    splitting_refusal,
    unit_chunks,
)
from growbench.methods.base import Grower, GrowerConfig, GrowthContext, GrowthEvent
from growbench.methods.rayleigh import (
    RayleighConfig,
    RayleighEstimate,
    quadratic_forms,
    rayleigh_extremes,
    search_costs,
)
from growbench.methods.registry import register
from growbench.methods.selection import take_within_budget
from growbench.nn import GrowableNet, Site

COST_TRANSFORMS = ("identity", "sqrt", "log")
EIGEN_SOLVERS = ("rayleigh", "exact")
UNCONVERGED_NORM = 0.5  # ‖window mean of v‖ below this: v wandered (or flipped) in the window
FRACTIONAL = (0.01, 0.99)  # β strictly inside counts as fractional in the LP report


# --------------------------------------------------------------------------------- selection


def select_by_lp(
    lambdas: Sequence[float],
    costs: Sequence[float],
    groups: Sequence[int],
    budgets: Sequence[float],
    caps: tuple[Sequence[int], Sequence[float]] | None = None,
    beta_keep: float = 0.99,
) -> tuple[np.ndarray, dict]:
    """The energy-aware selection LP, solved with HiGHS in float64.

    minimise Σ β_j λ_j  s.t.  Σ_{j∈g} τ_j β_j ≤ B_g (g = ``groups[j]`` indexes ``budgets``),
    Σ_{j∈l} β_j ≤ C_l (``caps = (site label per unit, C per site)``; inf: no row), 0 ≤ β ≤ 1.
    Only units with λ_j < 0 are variables (the others are fixed at β = 0). Returns the mask
    β ≥ ``beta_keep`` and a JSON-ready report: status, message, objective, β, the number of
    fractional β (0.01 < β < 0.99), of binding constraint rows, and per group the budget, the
    LP's use Σ τβ and the thresholded use Σ τ over the selected units.
    """
    lam = np.asarray(lambdas, dtype=np.float64)
    tau = np.asarray(costs, dtype=np.float64)
    group = np.asarray(groups, dtype=np.int64)
    budget = np.asarray(budgets, dtype=np.float64)
    if not (lam.shape == tau.shape == group.shape) or lam.ndim != 1:
        raise ValueError("select_by_lp: lambdas, costs and groups must be 1-D of one length")
    if len(lam) and (group.min() < 0 or group.max() >= len(budget)):
        raise ValueError("select_by_lp: every group label must index budgets")
    if np.any(tau <= 0):
        raise ValueError("select_by_lp: costs must be positive")
    beta = np.zeros(len(lam))
    variables = np.flatnonzero(lam < 0)
    info: dict = {
        "variables": len(variables),
        "status": None,
        "message": "no unit with a negative estimate",
        "objective": 0.0,
        "fractional": 0,
        "binding": 0,
    }
    if len(variables):
        rows, bounds = [], []
        for g, limit in enumerate(budget):
            rows.append(np.where(group[variables] == g, tau[variables], 0.0))
            bounds.append(limit)
        if caps is not None:
            labels = np.asarray(caps[0], dtype=np.int64)[variables]
            for label, limit in enumerate(caps[1]):
                if math.isfinite(limit):
                    rows.append((labels == label).astype(np.float64))
                    bounds.append(float(limit))
        matrix, right = np.array(rows), np.array(bounds)
        result = linprog(lam[variables], A_ub=matrix, b_ub=right, bounds=(0.0, 1.0), method="highs")
        if result.status != 0:
            raise RuntimeError(f"fast-s2d: the selection LP failed: {result.message}")
        x = np.clip(result.x, 0.0, 1.0)
        beta[variables] = x
        slack = right - matrix @ x
        binding = (slack <= 1e-9 * np.maximum(1.0, np.abs(right))) & matrix.any(axis=1)
        info.update(
            status=int(result.status),
            message=str(result.message),
            objective=float(result.fun),
            fractional=int(np.sum((x > FRACTIONAL[0]) & (x < FRACTIONAL[1]))),
            binding=int(binding.sum()),
        )
    selected = beta >= beta_keep
    info["beta"] = [float(b) for b in beta]
    info["budgets"] = [float(b) for b in budget]
    info["lp_used"] = [float(np.sum(tau * beta * (group == g))) for g in range(len(budget))]
    info["used"] = [float(np.sum(tau * selected * (group == g))) for g in range(len(budget))]
    return selected, info


def transform_cost(cost: float, transform: str) -> float:
    if transform == "identity":
        return float(cost)
    if transform == "sqrt":
        return math.sqrt(cost)
    return math.log(cost)


# ------------------------------------------------------------------------------ the plugin


@dataclass
class FastS2DConfig(GrowerConfig):
    positive: ClassVar[tuple[str, ...]] = ("growth_ratio", "max_stat_bytes")
    non_negative: ClassVar[tuple[str, ...]] = ("epsilon", "site_cap_ratio")
    # growth_ratio over 100 is beyond any budget; site_cap_ratio over 1 caps nothing (a unit
    # splits once at most)
    at_most: ClassVar[dict[str, float]] = {"growth_ratio": 100.0, "site_cap_ratio": 1.0}
    epsilon: float = 1e-2
    """Split step ε: the two copies move by ±ε along the estimated unit-norm direction v̂ (≥ 0)."""
    growth_ratio: float = 0.3
    """Each group's budget per round, as a share of its current (transformed) cost (> 0, at most
    100)."""
    rayleigh: RayleighConfig = field(default_factory=RayleighConfig)
    """The Rayleigh-quotient descent that estimates each unit's v_min (``rayleigh.RayleighConfig``;
    in a suite a table such as ``rayleigh = { passes = 25 }``)."""
    beta_keep: float = 0.99
    """A unit splits when its LP relaxation value β reaches this: (0, 1]."""
    cost_transform: str = "identity"
    """Applied to each unit's cost in the suite's metric before the LP: "identity" (exact costs),
    or "sqrt" or "log" as in the official code."""
    groups: tuple[tuple[str, ...], ...] = ()
    """Site names per budget group, each group with its own budget; sites not named form one more
    group."""
    site_cap_ratio: float = 1.0
    """At most floor(site_cap_ratio · width) splits per site and round; 1.0 allows doubling:
    [0, 1]."""
    cost_free: bool = False
    """Give every unit cost 1, so the budget is floor(growth_ratio · units in the group): a pure
    growth ratio."""
    check_estimates: bool = True
    """Report |λ̂ − v̂ᵀSv̂| for each unit, at the cost of one more pass (phase "diagnostics"); not
    with eigen_solver "exact", whose gap is nil."""
    exact_diagnostics: bool = False
    """Also form each unit's exact S_j and report the estimates' agreement with it (cosine, λ error,
    Spearman, Jaccard)."""
    max_stat_bytes: int = 512 * 2**20
    """Most bytes of exact splitting matrices held at once; used by exact_diagnostics and
    eigen_solver "exact" only (> 0)."""
    splitting_matrix: str = "exact"
    """Splitting matrix S_j estimated: "exact" (the curvature of the unit's whole path to its
    consumer) or "first-activation" (S2D's official code's, stopping at the first activation)."""
    eigen_solver: str = "rayleigh"
    """How each unit's v_min is found: "rayleigh" (the method's Rayleigh-quotient estimator) or
    "exact" (every S_j formed whole and decomposed by eigh, as s2d does, within max_stat_bytes at a
    time; for small fan-ins it costs less). Every event names the sites where the model of
    ``search_costs`` finds the exact computation cheaper (extras "exact_cheaper_sites")."""

    def __post_init__(self) -> None:
        check_splitting_matrix("fast-s2d", self.splitting_matrix)
        if self.eigen_solver not in EIGEN_SOLVERS:
            raise ValueError(
                f"fast-s2d: unknown eigen_solver {self.eigen_solver!r}; choose {EIGEN_SOLVERS}"
            )
        if self.cost_transform not in COST_TRANSFORMS:
            raise ValueError(
                f"fast-s2d: unknown cost_transform {self.cost_transform!r}; "
                f"choose {COST_TRANSFORMS}"
            )
        self.groups = tuple(tuple(str(name) for name in group) for group in self.groups)
        if not 0 < self.beta_keep <= 1:
            raise ValueError(f"fast-s2d: beta_keep must lie in (0, 1], got {self.beta_keep}")
        self.rayleigh = RayleighConfig.of(self.rayleigh, "fast-s2d")


def _record_estimates(sites: list[Site], estimates: dict, event: GrowthEvent) -> None:
    """λ̂ of every unit as the event's scores, and the units whose estimate wandered."""
    unconverged = {}
    for site in sites:
        estimate = estimates[site.name]
        event.scores[site.name] = estimate.values.tolist()
        flagged = torch.nonzero(estimate.mean_norms < UNCONVERGED_NORM).flatten().tolist()
        if flagged:
            unconverged[site.name] = flagged
    event.extras["unconverged_units"] = unconverged


@register
class FastS2D(Grower):
    name = "fast-s2d"
    Config = FastS2DConfig
    preserves_function = "at_zero_step"
    zero_step_overrides = {"epsilon": 0.0}
    small_step_overrides = {"epsilon": 1e-3}
    prediction_tolerance = 0.05  # the prediction uses estimated eigenvalues (README check 5)
    quick_overrides = {"rayleigh": {"steps": 160}}
    description = (
        "energy-aware fast splitting: Rayleigh-quotient SGD for each unit's v_min, "
        "units chosen by a cost-budget LP"
    )
    claims = (
        Claim(
            paper="Wang, Wu, Li, Chandra & Liu 2019, arXiv:1910.03103",
            statement="Fast splitting matches S2D's score (test accuracy, or test loss on "
            "regression tasks)",
            method="fast-s2d",
            baseline="s2d",
            relation="non_inferior",
            margin=0.01,
        ),
        Claim(
            paper="Wang, Wu, Li, Chandra & Liu 2019, arXiv:1910.03103",
            statement="Fast splitting spends less time growing than S2D",
            method="fast-s2d",
            baseline="s2d",
            metric="growth_seconds",
            higher_is_better=False,
        ),
    )

    def refusal(self, site: Site) -> str | None:
        return super().refusal(site) or splitting_refusal(site)

    def grow_step(self, net: GrowableNet, ctx: GrowthContext, event: GrowthEvent) -> None:
        config = self.config
        sites = splittable_sites(self.growable_sites(net))
        if not sites:
            event.stop_reason = "no splittable site"
            return
        with event.phase("search"):
            estimates = self._search(net, ctx, sites, event)
        _record_estimates(sites, estimates, event)
        lambdas, picked, accepted, chosen, problem = self._select(net, ctx, sites, estimates, event)
        # diagnostics of the estimates, not the method's own work: timed apart
        with event.phase("diagnostics"):
            self._diagnose(net, ctx, sites, estimates, problem, chosen, event)
        event.predicted_loss_change = 0.0  # until something is split
        if not bool((torch.from_numpy(lambdas) < 0).any()):
            event.stop_reason = "splitting-stable"
            return
        if not picked:
            event.stop_reason = "round budget below one unit's cost"
            return
        if not all(accepted):
            event.stop_reason = "budget exhausted"
        if not chosen:
            return
        with event.phase("apply"):
            event.selected = self._apply(net, sites, estimates, chosen)
        event.predicted_loss_change = sum(
            config.epsilon**2 / 2 * float(estimates[sites[p].name].values[j]) for p, j in chosen
        )

    def _search(
        self, net: GrowableNet, ctx: GrowthContext, sites: list[Site], event: GrowthEvent
    ) -> dict[str, RayleighEstimate]:
        """Each site's v_min and λ_min by ``eigen_solver``; the estimator's run report
        (``rayleigh_extremes``) and the comparison of both computations' costs go into the
        event."""
        config = self.config
        if config.eigen_solver == "exact":
            steps = config.rayleigh.steps_for(len(ctx.inputs))
            estimates = {site.name: exact_estimate(net, ctx, site, config) for site in sites}
        else:
            run: dict = {}
            estimates = rayleigh_extremes(
                net, ctx, sites, config.rayleigh, matrix=config.splitting_matrix, report=run
            )["min"]
            event.extras["rayleigh"] = run
            steps = run["steps_taken"]
        batch = config.rayleigh.batch_size
        costs = {site.name: search_costs(site, len(ctx.inputs), steps, batch) for site in sites}
        event.extras["search_costs"] = costs
        cheaper = [name for name, cost in costs.items() if cost["exact"] < cost["estimator"]]
        event.extras["exact_cheaper_sites"] = cheaper
        if cheaper and config.eigen_solver == "rayleigh":
            event.extras["search_note"] = (
                f"the exact eigendecomposition would cost less than the estimator at {cheaper} "
                '(extras "search_costs"); eigen_solver = "exact" uses it'
            )
        return estimates

    def _select(
        self,
        net: GrowableNet,
        ctx: GrowthContext,
        sites: list[Site],
        estimates: dict,
        event: GrowthEvent,
    ) -> tuple:
        """The LP relaxation's picks (β ≥ β_keep) by λ̂ per unit of cost, truncated to the
        exact remaining budget: (λ̂ of every unit, picked, accepted, chosen (site position,
        unit), the LP problem); the LP's report goes into the event."""
        config = self.config
        with event.phase("select"):
            units = [
                (position, j) for position, site in enumerate(sites) for j in range(site.width)
            ]
            lambdas = torch.cat([estimates[site.name].values for site in sites]).numpy()
            problem = self._problem(sites, ctx)
        with event.phase("solve"):
            mask, info = select_by_lp(
                lambdas,
                problem["costs"],
                problem["groups"],
                problem["budgets"],
                (problem["sites"], problem["caps"]),
                config.beta_keep,
            )
        with event.phase("select"):
            ratio = lambdas / problem["costs"]
            picked = sorted(np.flatnonzero(mask), key=lambda i: (ratio[i], *units[i]))
            accepted = take_within_budget(net, ctx, [sites[units[i][0]].name for i in picked])
            chosen = [units[i] for i, ok in zip(picked, accepted) if ok]
        info.pop("beta")
        info["selected_before_budget"] = len(picked)
        event.extras["lp"] = info
        event.extras["costs"] = {
            site.name: [problem["raw_costs"][k], problem["site_costs"][k]]
            for k, site in enumerate(sites)
        }
        event.extras["prediction_is_heuristic"] = prediction_is_heuristic(
            sites, config.splitting_matrix
        )
        return lambdas, picked, accepted, chosen, problem

    def _diagnose(
        self,
        net: GrowableNet,
        ctx: GrowthContext,
        sites: list[Site],
        estimates: dict,
        problem: dict,
        chosen: list[tuple[int, int]],
        event: GrowthEvent,
    ) -> None:
        """Opt-in checks of the estimates: agreement with exact eigenpairs, and |λ̂ − v̂ᵀSv̂|."""
        config = self.config
        if config.exact_diagnostics:
            event.extras["exact_agreement"] = agreement_with_exact(
                net,
                ctx,
                sites,
                estimates,
                config.max_stat_bytes,
                problem,
                config.beta_keep,
                config.splitting_matrix,
            )
        if config.check_estimates and config.eigen_solver == "rayleigh":
            vectors = {site.name: estimates[site.name].vectors for site in sites}
            forms = quadratic_forms(net, ctx, sites, vectors, config.splitting_matrix)
            gaps = {
                site.name: (forms[site.name] - estimates[site.name].values).abs()
                / estimates[site.name].values.abs().clamp_min(1e-300)
                for site in sites
            }
            chosen_gaps = [float(gaps[sites[p].name][j]) for p, j in chosen]
            event.extras["estimate_check"] = {
                "max_relative_gap_selected": max(chosen_gaps, default=0.0),
                "median_relative_gap": float(torch.cat(list(gaps.values())).median()),
            }

    def _apply(
        self, net: GrowableNet, sites: list[Site], estimates: dict, chosen: list[tuple[int, int]]
    ) -> dict:
        """Split each chosen unit into θ ± εv̂ with fan-out weights ½, ½."""
        epsilon = self.config.epsilon
        half = torch.tensor([0.5, 0.5], dtype=torch.float64)
        plans = []
        for position, j in chosen:
            site = sites[position]
            direction = estimates[site.name].vectors[j]
            deltas = torch.stack([epsilon * direction, -epsilon * direction])
            plans.append(PlannedSplit(site.name, j, deltas, half, "split"))
        return apply_splits(net, plans)

    def _problem(self, sites: list[Site], ctx: GrowthContext) -> dict:
        """Per-unit costs, group and site labels, group budgets and site caps of the LP."""
        config = self.config
        group_of: dict[str, int] = {}
        for g, names in enumerate(config.groups):
            for name in names:
                if name in group_of:
                    raise ValueError(f"fast-s2d: site {name!r} is named in two groups")
                group_of[name] = g
        known = {site.name for site in sites}
        unknown = sorted(set(group_of) - known)
        if unknown:
            raise ValueError(
                f"fast-s2d: groups name {unknown}, which are not splittable sites of the net "
                f"({sorted(known)})"
            )
        rest = len(config.groups)
        group_count = rest + any(site.name not in group_of for site in sites)
        raw_costs, site_costs, site_groups = [], [], []
        for site in sites:
            raw = site.cost_of_units(1)[ctx.budget_metric]
            cost = 1.0 if config.cost_free else transform_cost(raw, config.cost_transform)
            if not cost > 0:
                raise ValueError(
                    f"fast-s2d: site {site.name!r} has per-unit cost {raw} whose "
                    f"{config.cost_transform} is not positive"
                )
            raw_costs.append(raw)
            site_costs.append(cost)
            site_groups.append(group_of.get(site.name, rest))
        budgets = [0.0] * group_count
        for site, cost, g in zip(sites, site_costs, site_groups):
            budgets[g] += site.width * cost
        budgets = [
            math.floor(config.growth_ratio * b) if config.cost_free else config.growth_ratio * b
            for b in budgets
        ]
        caps = [math.floor(config.site_cap_ratio * site.width) for site in sites]
        return {
            "costs": np.repeat(site_costs, [site.width for site in sites]),
            "groups": np.repeat(site_groups, [site.width for site in sites]),
            "sites": np.repeat(np.arange(len(sites)), [site.width for site in sites]),
            "budgets": budgets,
            "caps": caps,
            "raw_costs": raw_costs,
            "site_costs": site_costs,
        }


def exact_estimate(
    net: GrowableNet, ctx: GrowthContext, site: Site, config: FastS2DConfig
) -> RayleighEstimate:
    """The exact λ_min and v_min (canonical) of every unit's S_j, s2d's ``site_eigen``, in the
    estimator's shape (window-mean norms of 1)."""
    eigen, _ = site_eigen(net, ctx, site, config.max_stat_bytes, matrix=config.splitting_matrix)
    values = eigen.lambda_min
    return RayleighEstimate(values, eigen.vector_min, torch.ones_like(values))


# ---------------------------------------------------------------------------- diagnostics


def exact_lowest_pairs(
    net: GrowableNet, ctx: GrowthContext, site: Site, max_stat_bytes: int, matrix: str = "exact"
) -> tuple[Tensor, Tensor, Tensor]:
    """λ₁, λ₂ and v₁ (canonical) of every unit's splitting matrix (``matrix``, formed whole),
    float64."""
    first, second, vectors = [], [], []
    for units in unit_chunks(site, max_stat_bytes):
        matrices = splitting_matrices(net, ctx, site, units, matrix)
        values, eigvectors = torch.linalg.eigh(matrices)
        first.append(values[:, 0])
        second.append(values[:, min(1, values.shape[1] - 1)])
        vectors.append(canonical_sign(eigvectors[:, :, 0]))
        del matrices
    return torch.cat(first), torch.cat(second), torch.cat(vectors)


def agreement_with_exact(
    net: GrowableNet,
    ctx: GrowthContext,
    sites: Sequence[Site],
    estimates: dict[str, RayleighEstimate],
    max_stat_bytes: int,
    problem: dict | None = None,
    beta_keep: float = 0.99,
    matrix: str = "exact",
) -> dict:
    """The fidelity figures: cos(v̂, v) and relative λ error for units whose relative gap
    (λ₂ − λ₁)/|λ₁| is ≥ 0.1, Spearman ρ(λ̂, λ) over all units and, given the LP ``problem``, the
    Jaccard overlap of the units selected with λ̂ and with λ. Costs the exact S of every unit (not
    charged)."""
    exact, estimated, cosines, errors = [], [], [], []
    for site in sites:
        lam1, lam2, v1 = exact_lowest_pairs(net, ctx, site, max_stat_bytes, matrix)
        estimate = estimates[site.name]
        gapped = (lam2 - lam1) >= 0.1 * lam1.abs()
        cos = (estimate.vectors * v1).sum(dim=1).abs()
        error = (estimate.values - lam1).abs() / lam1.abs().clamp_min(1e-300)
        cosines += cos[gapped].tolist()
        errors += error[gapped].tolist()
        exact.append(lam1)
        estimated.append(estimate.values)
    exact_all, estimated_all = torch.cat(exact).numpy(), torch.cat(estimated).numpy()
    report = {
        "gapped_units": len(cosines),
        "min_cos": min(cosines, default=float("nan")),
        "max_relative_error": max(errors, default=float("nan")),
        "spearman": float(spearmanr(estimated_all, exact_all).statistic)
        if len(exact_all) > 2
        else float("nan"),
    }
    if problem is not None:
        caps = (problem["sites"], problem["caps"])
        args = (problem["costs"], problem["groups"], problem["budgets"], caps, beta_keep)
        by_estimate, _ = select_by_lp(estimated_all, *args)
        by_exact, _ = select_by_lp(exact_all, *args)
        union = int(np.sum(by_estimate | by_exact))
        report["jaccard"] = float(np.sum(by_estimate & by_exact) / union) if union else 1.0
    return report
