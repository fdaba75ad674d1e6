"""``tiny``: Growing Tiny Networks (Verbockhaven et al., TMLR 2024, arXiv 2405.19816).

Rule (docs/methods/tiny.md): the consumer's pre-activation should move along −g_a. The best
change of the consumer's existing weights is δ = (S_h⁻¹ M_h)ᵀ; the rest, r = −g_a + δh̃, is the
expressivity bottleneck. New units with fan-in α and fan-out ω fit r through their linearised
activity ωαx̃: a rank-K regression solved by the SVD of S_x^(−1/2) N with N = −M_x + Pδᵀ. The new
units (γα, γω) and the consumer update −γ²δ are scaled by an amplitude γ ≤ 1 found by a line
search on held-out samples (``GrowthContext.held_out``: training samples the statistics were
not fitted on); the site with the largest first-order gain is grown.

Kept from GroMo 0.1.0 (the group's library, our oracle): the projected N, eigen-thresholded
S_x^(−1/2), the significance threshold on s_k, a log-grid line search. Changed: all linear
algebra in float64, a coarser grid, at most ceil(0.3·width) units per event, and the first-order
gain with the cross term −σ'(0)·tr(ωαPδᵀ) that GroMo omits (FO_exact; FO_homog, measured on the
data, for positively homogeneous σ).

Recorded deviations from GroMo 0.1.0's defaults, each for a measured failure (the numbers are on
docs/methods/tiny.md):

* **Amplitude on held-out samples, bounded at 1** (``gamma_max = 1``): GroMo's ``line_search``
  evaluates L(γ) on the samples the statistics came from and extends its grid by decades while
  the loss falls. When those samples are not many more than the fan-in (785 vs 1,024 on
  Fashion-MNIST) that fits them: γ = 2.5–4, the rest of the training set's loss up at 19 of 21
  events, nets wrecked (a LeNet-5 at chance). GroMo's tutorials bound γ by 1. Here γ = 0 is one
  of the candidates, so a step never raises the loss on the samples it was chosen on; with no
  held-out samples (a context without them) the statistics set is used and the event says so
  (``extras["amplitude_samples"]``). ``gamma_max > 1`` extends the grid on the held-out samples.
* **δ through a cut eigendecomposition** (``delta_rcond``): S_h's eigenvalues below 1e-6 of the
  largest are dropped (GroMo: a plain solve, pinv if it fails). On collinear features the plain
  solve succeeds with ‖δ‖ = 5e3 whose components cancel on the statistics set only; the next
  optimiser step broke the cancellation (rational-teacher toy: test loss 1.9e3).
* **A gain within rounding is no gain** (``gain_tolerance``): GroMo grows for any γ whose loss is
  below L(0), however little. In float32 the grid's smallest amplitudes (γ² = 1e-8) move the
  loss less than its rounding, so whether a round grew depended on the rounding: on the digits
  CNN one round grew 2 units for a loss change of −8e-9 once the search's arithmetic changed by
  1e-7, and that cell ended at 85.0 % test accuracy instead of 79.4 %. A best γ must lower the
  held-out loss by more than 16 float roundings of L(0).
* **Each unit pair's sign from its measured gain** (``choose_signs``): on a path that is not odd
  (ReLU; any σ across a max pool) −ω·σ(−αx̃) ≠ ω·σ(αx̃), so the SVD's sign is a choice. Both signs
  are measured on the statistics set and the larger gain is kept (GroMo keeps the SVD's sign; on
  a ReLU conv → global pool site that gave −0.243 where the flipped pair gives +0.909).

Sites: any whose per-unit path ``_bottleneck`` can describe (its module docstring): the new
units reach the consumer through the path's linear part (new BatchNorm entries and depthwise
identity filters pass through, pools act, activations give their slope σ'(0)), which covers
Linear→Linear, conv → global pool → Linear, conv → [pool] → conv with GroMo 0.1.0's full-conv
coupling, a conv read by a Linear at several flattened positions, ResNet inner widths and
MobileNet's path through a depthwise conv. Across a max pool a new unit's pooled map is not
linear in its fan-in, so its average stands in for it when choosing the units (our decision, the
papers are silent); the first-order gain is then measured through the real path
(``measured_unit_gains``: FO_homog for a positively homogeneous path, FO_max_pool for smooth σ),
which keeps the prediction exact to first order. A site it cannot describe is refused
(``refusal``), recorded in ``event.extras["refused_sites"]`` by ``Grower.grow``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from growbench.claims import Claim
from growbench.methods._amplitude import search_amplitude
from growbench.methods._bottleneck import (
    BottleneckStatistics,
    bottleneck_refusal,
    inverse_sqrt,
    new_unit_contribution,
    output_rows,
    sample_chunks,
    site_statistics,
)
from growbench.methods.base import Grower, GrowerConfig, GrowthContext, GrowthEvent
from growbench.methods.registry import register
from growbench.methods.selection import Candidate, select_within_budget, unit_pricing
from growbench.nn import Activation, GrowableNet, Site, Slot, collect_taps
from growbench.nn.activations import activation_info
from growbench.nn.layer_maps import with_ones
from growbench.nn.taps import record_inputs

SITE_SELECTIONS = ("best-fo", "round-robin")
LINE_SEARCHES = ("grid", "refine")
MAX_SEARCH_ROWS = 2**16  # rows evaluated at once by the line search (γ values × samples)
MAX_SEARCH_BYTES = 2**26  # and at most this many bytes of the consumer stage's inputs


@dataclass
class TinyConfig(GrowerConfig):
    positive: ClassVar[tuple[str, ...]] = ("max_added_ratio", "gamma_points")
    at_most: ClassVar[dict[str, float]] = {"max_added_ratio": 100.0}
    non_negative: ClassVar[tuple[str, ...]] = (
        "numerical_threshold",
        "statistical_threshold",
        "gamma_min",
        "gamma_top",
        "max_added",
        "delta_rcond",
    )
    numerical_threshold: float = 1e-6
    """Eigenvalues of S_x at or below this are dropped when forming S_x^(−1/2) (absolute, ≥ 0)."""
    statistical_threshold: float = 1e-3
    """A new unit needs a singular value s_k at least this large (or the largest one, if smaller) to
    be added (≥ 0)."""
    max_added: int | None = None
    """Most units added at a site per growth event; None: ceil(max_added_ratio · site width)."""
    max_added_ratio: float = 0.3
    """Cap on new units per existing unit of a site, used when max_added is None (> 0, at most
    100)."""
    compute_delta: bool = True
    """Also update the consumer's existing weights by the best change δ; False keeps δ = 0."""
    use_projection: bool = True
    """Fit the new units to the bottleneck left after δ (N = −M_x + Pδᵀ) rather than to −M_x
    alone."""
    gamma_min: float = 1e-4
    """Smallest nonzero amplitude γ the line search tries (≥ 0; γ = 0 is always a candidate)."""
    gamma_top: float = 1.0
    """Largest amplitude of the line search's log grid before any extension (≥ 0)."""
    gamma_points: int = 20
    """Number of log-spaced amplitudes between gamma_min and gamma_top (> 0)."""
    gamma_max: float = 1.0
    """Upper bound on γ; above gamma_top the grid extends by decades while the held-out loss
    improves (≥ gamma_top)."""
    gamma_fixed: float | None = None
    """Use this amplitude and skip the line search (≥ 0); None searches."""
    gain_tolerance: float = 16.0
    """Smallest loss improvement the line search counts, in units of the loss's float rounding
    (|L(0)| times the machine epsilon of the net's dtype: 16 is 1.9e-6·|L(0)| in float32); a best
    γ that lowers the loss by no more is treated as γ = 0 (≥ 0; 0 counts any improvement, as
    GroMo does)."""
    delta_rcond: float = 1e-6
    """Eigenvalues of S_h below this share of the largest are cut when solving for δ (≥ 0)."""
    choose_signs: bool = True
    """Give each new unit pair the sign with the larger measured first-order gain; False keeps the
    SVD's sign."""
    line_search: str = "grid"
    """How γ is chosen: "grid" (a log grid, as GroMo) or "refine" (a coarse grid refined by Brent's
    method)."""
    site_selection: str = "best-fo"
    """Which site grows each event: "best-fo" (largest first-order gain) or "round-robin" (each in
    turn)."""

    def __post_init__(self) -> None:
        if self.site_selection not in SITE_SELECTIONS:
            raise ValueError(
                f"tiny: unknown site_selection {self.site_selection!r}; choose {SITE_SELECTIONS}"
            )
        if self.line_search not in LINE_SEARCHES:
            raise ValueError(
                f"tiny: unknown line_search {self.line_search!r}; choose {LINE_SEARCHES}"
            )
        if self.gamma_fixed is not None and self.gamma_fixed < 0:
            raise ValueError("tiny: gamma_fixed must be >= 0")
        if self.gain_tolerance < 0:
            raise ValueError(f"tiny: gain_tolerance must be >= 0, got {self.gain_tolerance:g}")
        if self.gamma_max < self.gamma_top:
            raise ValueError(
                f"tiny: gamma_max ({self.gamma_max:g}) must be at least gamma_top "
                f"({self.gamma_top:g})"
            )


@dataclass
class SiteSolution:
    """The closed-form TINY update of one site (float64)."""

    delta: Tensor  # q × (n + 1): consumer update direction (bias column last)
    gain_delta: float  # Δ = tr(M_hᵀ S_h⁻¹ M_h)
    N: Tensor  # p × q
    singular_values: Tensor  # every s_k, descending
    alpha: Tensor  # K_max × p: fan-in rows, bias last
    omega: Tensor  # K_max × q: fan-out rows
    count: int  # K
    slope: float  # σ'(0)
    unit_gains: Tensor | None = None  # measured per-unit gains (``measured_unit_gains``)

    def fo_measured(self, k: int) -> float:
        """Δ plus the measured gains of the first k units (``measured_unit_gains``)."""
        return self.gain_delta + float(self.unit_gains[:k].sum())

    def fo_gromo(self, k: int) -> float:
        return self.gain_delta + self.slope * float((self.singular_values[:k] ** 2).sum())

    def fo_exact(self, k: int, stats: BottleneckStatistics) -> float:
        """Δ − σ'(0)·tr(ωαM_x) over the first k units."""
        cross = float((self.alpha[:k] @ stats.M_x * self.omega[:k]).sum())
        return self.gain_delta - self.slope * cross

    def first_order_gain(self, k: int, stats: BottleneckStatistics) -> float:
        """The first-order gain of the first k units: measured where the units' gains were
        (``fo_measured``), FO_exact otherwise."""
        if self.unit_gains is not None:
            return self.fo_measured(k)
        return self.fo_exact(k, stats)

    def cross_term(self, k: int, stats: BottleneckStatistics) -> float:
        """tr(ωαPδᵀ) over the first k units: FO_gromo − FO_exact = σ'(0)·this."""
        return float((self.alpha[:k] @ stats.projected(self.delta) * self.omega[:k]).sum())


def canonical_pairs(u: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """Flip each singular pair (columns of u and v) so u's largest-magnitude entry is positive."""
    index = u.abs().argmax(dim=0, keepdim=True)
    signs = torch.sign(torch.gather(u, 0, index))
    signs[signs == 0] = 1
    return u * signs, v * signs


def significant_count(s: Tensor, threshold: float, max_added: int) -> int:
    """K = min(max_added, #{s_k ≥ min(threshold, s_1)}, numerical rank), at least 1."""
    if s.numel() == 0:
        return 0
    top = float(s[0])
    significant = int((s >= min(threshold, top)).sum())
    rank = int((s > top * max(s.numel(), 1) * torch.finfo(torch.float64).eps).sum())
    return max(1, min(max_added, significant, rank))


def solve_site(
    stats: BottleneckStatistics, config: TinyConfig, max_added: int, slope: float
) -> SiteSolution:
    S_h, M_h = stats.S_h, stats.M_h
    if config.compute_delta:
        delta = guarded_solve(S_h, M_h, config.delta_rcond).T
        gain = float((delta.T * M_h).sum())
    else:
        delta = torch.zeros_like(M_h.T)
        gain = 0.0
    N = -stats.M_x + stats.projected(delta) if config.use_projection else -stats.M_x
    root, _ = inverse_sqrt(stats.S_x, config.numerical_threshold)
    u, s, vh = torch.linalg.svd(root @ N, full_matrices=False)
    u, v = canonical_pairs(u, vh.T)
    k = significant_count(s, config.statistical_threshold, max_added)
    scale = s[:k].sqrt()
    alpha = (root @ u[:, :k] * scale).T
    omega = (v[:, :k] * scale).T
    return SiteSolution(delta, gain, N, s, alpha, omega, k, slope)


def guarded_solve(S: Tensor, M: Tensor, rcond: float) -> Tensor:
    """S⁻¹M for a symmetric positive semi-definite S, in float64, through ``eigh`` with the
    eigenvalues at or below ``rcond`` times the largest cut (a pseudo-inverse on the kept
    eigenspace). On a near-singular S_h the plain solve succeeds and returns a δ whose huge
    components cancel on the statistics set only (measured: ‖δ‖ = 5e3 at condition 1e300, and
    the next optimiser step broke the cancellation)."""
    values, vectors = torch.linalg.eigh(S.double())
    keep = values > rcond * values[-1].clamp(min=0)
    if not bool(keep.any()):
        return torch.zeros_like(M, dtype=torch.float64)
    kept = vectors[:, keep]
    return (kept / values[keep]) @ (kept.T @ M.double())


@register
class Tiny(Grower):
    name = "tiny"
    Config = TinyConfig
    preserves_function = "at_zero_step"
    zero_step_overrides = {"gamma_fixed": 0.0}
    small_step_overrides = {"gamma_fixed": 1e-3}
    description = (
        "TINY: add units whose fan-in/fan-out best fit the expressivity bottleneck (one SVD), "
        "with the consumer's best update, scaled by a line-searched amplitude"
    )
    notes = (
        "The amplitude γ ≤ 1 is searched on held-out training samples, not on the statistics "
        "samples as in GroMo 0.1.0, whose in-sample search overfit (γ = 2.5–4, the loss on the "
        "rest of the data up at 19 of 21 events on Fashion-MNIST). δ cuts S_h's eigenvalues "
        "below 1e-6 of the largest; each new unit pair takes the sign with the larger measured "
        "gain.",
    )
    claims = (
        Claim(
            paper="Verbockhaven et al., TMLR 2024, arXiv:2405.19816",
            statement=(
                "Growing with TINY reaches the score of the same-size network trained from "
                "scratch (test accuracy, or test loss on regression tasks)"
            ),
            method="tiny",
            baseline="static",
            relation="non_inferior",
            margin=0.01,
            matched=True,
        ),
    )

    def __init__(self, config: GrowerConfig | None = None) -> None:
        super().__init__(config)
        self._round_robin = 0

    def refusal(self, site: Site) -> str | None:
        return super().refusal(site) or bottleneck_refusal(site)

    def grow_step(self, net: GrowableNet, ctx: GrowthContext, event: GrowthEvent) -> None:
        config = self.config
        sites = self.growable_sites(net)
        statistics, solutions = self._solve(net, ctx, sites, event)
        with event.phase("select"):
            picked = self._select(net, ctx, sites, statistics, solutions)
        if picked is None:
            event.stop_reason = "budget exhausted"
            return
        chosen, k = picked.key, picked.units
        if config.site_selection == "round-robin":
            self._round_robin = net.sites.index(chosen) + 1
        solution = solutions[chosen.name]
        if k < solution.count:
            event.stop_reason = "budget exhausted"
        alpha, omega = solution.alpha[:k], solution.omega[:k]
        fo = solution.first_order_gain(k, statistics[chosen.name])
        event.extras.update(site=chosen.name, K=k, first_order_gain=fo)
        with event.phase("search"):
            gamma = self._amplitude(net, ctx, chosen, alpha, omega, solution.delta, event)
        if gamma is None:
            return
        event.extras["gamma"] = gamma
        with event.phase("apply"):
            apply_tiny(chosen, alpha, omega, solution.delta, gamma)
        event.selected = {chosen.name: [[chosen.width - k + i, "new"] for i in range(k)]}
        event.predicted_loss_change = -(gamma**2) * fo

    # ------------------------------------------------------------------ helpers
    def _solve(
        self, net: GrowableNet, ctx: GrowthContext, sites: list[Site], event: GrowthEvent
    ) -> tuple[dict[str, BottleneckStatistics], dict[str, SiteSolution]]:
        """Every site's statistics and closed-form solution, its units' signs chosen by their
        measured gains where those are measured (``gain_is_measured``); the per-site report in
        ``event.extras["sites"]`` and the singular values in ``event.scores``."""
        config = self.config
        measured = [site for site in sites if gain_is_measured(site)]
        with event.phase("stats"):
            statistics = site_statistics(net, ctx, sites, self.name)
        solutions: dict[str, SiteSolution] = {}
        with event.phase("solve"):
            for site in sites:
                limit = config.max_added
                if limit is None:
                    limit = math.ceil(config.max_added_ratio * site.width)
                solutions[site.name] = solve_site(
                    statistics[site.name], config, limit, site.path_slope()
                )
        with event.phase("solve"):
            unit_gains = measured_unit_gains(net, ctx, measured, solutions)
            flipped = {
                name: orient(solutions[name], gains, config.choose_signs)
                for name, gains in unit_gains.items()
            }
        event.extras["sites"] = {
            site.name: site_report(
                site, solutions[site.name], statistics[site.name], flipped.get(site.name)
            )
            for site in sites
        }
        for site in sites:
            event.scores[site.name] = solutions[site.name].singular_values.tolist()
        return statistics, solutions

    def _select(
        self,
        net: GrowableNet,
        ctx: GrowthContext,
        sites: list[Site],
        statistics: dict[str, BottleneckStatistics],
        solutions: dict[str, SiteSolution],
    ) -> Candidate | None:
        """The site to grow and how many of its units fit the budget (the candidate's ``key``
        and ``units``): sites in ``site_selection`` order, each offering its K units, then
        fewer, down to one; the first that fits."""
        if self.config.site_selection == "best-fo":
            gains = {
                site.name: solutions[site.name].first_order_gain(
                    solutions[site.name].count, statistics[site.name]
                )
                for site in sites
            }
            order = sorted(range(len(sites)), key=lambda i: (-gains[sites[i].name], i))
        else:
            all_sites = net.sites
            start = self._round_robin % len(all_sites)
            names = [site.name for site in sites]
            rotated = [all_sites[(start + i) % len(all_sites)].name for i in range(len(all_sites))]
            order = [names.index(name) for name in rotated if name in names]
        ranked = [
            Candidate(site.name, "units", site, units=k)
            for site in (sites[i] for i in order)
            for k in range(solutions[site.name].count, 0, -1)
        ]
        # a budget that is not finite (NaN included) does not cut K
        budget = ctx.remaining_budget if math.isfinite(ctx.remaining_budget) else math.inf
        kept = select_within_budget(ranked, budget, unit_pricing(net, ctx), limit=1).kept
        return kept[0] if kept else None

    def _amplitude(
        self,
        net: GrowableNet,
        ctx: GrowthContext,
        site: Site,
        alpha: Tensor,
        omega: Tensor,
        delta: Tensor,
        event: GrowthEvent,
    ) -> float | None:
        """γ: ``gamma_fixed``, or the line search's on the held-out samples (its curve, loss
        change and tolerated gain in ``event.extras``); None, with the event's stop reason,
        when it chose 0 or its best loss is within rounding of L(0) (``gain_tolerance``)."""
        config = self.config
        if config.gamma_fixed is not None:
            return config.gamma_fixed
        event.extras["amplitude_samples"] = "held-out" if ctx.has_heldout else "statistics"
        gamma, curve = self._line_search(net, ctx.held_out(), site, alpha, omega, delta)
        event.extras["line_search"] = curve
        start = curve[0][1]
        change = next(loss for g, loss in curve if g == gamma) - start
        event.extras["search_loss_change"] = change
        rounding = config.gain_tolerance * torch.finfo(site.producer.weight.dtype).eps * abs(start)
        event.extras["tolerated_gain"] = rounding  # the largest loss decrease counted as none
        if gamma == 0.0:
            event.stop_reason = "line search chose gamma = 0"
        elif -change <= rounding:
            event.stop_reason = (
                f"line search's best gain ({-change:.2g} at gamma = {gamma:.3g}) is within the "
                f"loss's rounding ({rounding:.2g})"
            )
        else:
            return gamma
        event.extras["gamma"] = 0.0
        return None

    def _line_search(
        self,
        net: GrowableNet,
        ctx: GrowthContext,
        site: Site,
        alpha: Tensor,
        omega: Tensor,
        delta: Tensor,
    ) -> tuple[float, list[list[float]]]:
        """L(γ) on a log grid (plus 0), extended by decades while its top is best; or, with
        ``line_search = "refine"``, a one-point-per-decade grid refined by Brent's method in
        log γ (``_amplitude.search_amplitude``: about a third of the loss evaluations)."""
        config = self.config
        evaluate = loss_at_gamma(net, ctx, site, alpha, omega, delta)
        if config.line_search == "refine":
            result = search_amplitude(
                evaluate, config.gamma_min, config.gamma_top, config.gamma_max
            )
            return result.gamma, [list(point) for point in result.curve]
        low, high = math.log10(config.gamma_min), math.log10(config.gamma_top)
        grid = torch.logspace(low, high, config.gamma_points, dtype=torch.float64).tolist()
        decades = math.log10(config.gamma_top / config.gamma_min)
        per_decade = max(1, round((config.gamma_points - 1) / decades)) if decades > 0 else 1
        curve = [list(pair) for pair in zip([0.0, *grid], evaluate([0.0, *grid]), strict=True)]
        top = grid[-1]
        while min(curve, key=lambda c: c[1])[0] == top and top * 10 <= config.gamma_max * (
            1 + 1e-12
        ):
            decade = (math.log10(top), math.log10(top * 10), per_decade + 1)
            extra = torch.logspace(*decade, dtype=torch.float64).tolist()[1:]
            curve += [list(pair) for pair in zip(extra, evaluate(extra), strict=True)]
            top = extra[-1]
        best = min(curve, key=lambda c: c[1])
        return best[0], curve


def site_report(
    site: Site, solution: SiteSolution, stats: BottleneckStatistics, flipped: int | None
) -> dict:
    """A site's entry of ``event.extras["sites"]``: its singular values, K, Δ, the first-order
    gains (closed forms, and the measured one with the pairs flipped when measured), the
    cross term and the bottleneck's norm."""
    k = solution.count
    entry = {
        "singular_values": solution.singular_values.tolist(),
        "K": k,
        "delta_gain": solution.gain_delta,
        "fo_exact": solution.fo_exact(k, stats),
        "fo_gromo": solution.fo_gromo(k),
        "cross_term": solution.cross_term(k, stats),
        "bottleneck_norm": stats.residual_norm(solution.delta),
    }
    if solution.unit_gains is not None:
        entry["fo_homog" if homogeneous(site) else "fo_max_pool"] = solution.fo_measured(k)
        entry["signs_flipped"] = flipped
    return entry


def homogeneous(site: Site) -> bool:
    """Whether every activation on the site's path is positively homogeneous (σ(γu) = γσ(u))."""
    return all(activation_info(act.name).positively_homogeneous for act in site.activations)


def gain_is_measured(site: Site) -> bool:
    """Whether the site's first-order gain is measured on the statistics set
    (``measured_unit_gains``) rather than read from the closed form FO_exact: a positively
    homogeneous path, or a max pool on it."""
    return homogeneous(site) or site.max_pooled


def measured_unit_gains(
    net: GrowableNet, ctx: GrowthContext, sites: list[Site], solutions: dict[str, SiteSolution]
) -> dict[str, Tensor]:
    """Per site, K × 2: −E[g_aᵀ · what new unit k adds to the consumer at γ = 1], for the pair
    (α_k, ω_k) (column 0) and for (−α_k, −ω_k) (column 1), in one taps pass over the statistics
    set, the new units' maps passing through the site's real path (real max pools, depthwise
    identity filters) and the consumer. Units add up (the path acts on each unit alone), so the
    first-order gain of the first k units is Δ plus the sum of their entries.

    FO_homog: a positively homogeneous path adds exactly γ²·ω·path(αx̃), so σ itself is used.
    FO_max_pool: any other σ (σ(0) = 0, σ'(0) > 0, increasing near 0) commutes with a max pool,
    so a new unit adds γ²·σ'(0)·ω·maxpool(αX) + O(γ³): σ is linearised. Both are exact to
    first order although the units were chosen through the pool's average stand-in. On such a
    path the two signs of a singular pair give different functions (−ω·σ(−αx̃) ≠ ω·σ(αx̃)),
    which is why both are measured."""
    if not sites:
        return {}
    totals = {site.name: 0.0 for site in sites}
    for inputs, targets in ctx.batches():
        taps, _ = collect_taps(
            net, inputs, targets, ctx.loss_fn, sites=sites, want=("input", "grad_output")
        )
        for site in sites:
            solution = solutions[site.name]
            alpha, omega = solution.alpha[: solution.count], solution.omega[: solution.count]
            for chunk in sample_chunks(site, taps[site.name], ("input", "grad_output")):
                grad = output_rows(chunk.grad_output).double()[:, None]
                # both signs of every pair in one evaluation: rows k and K + k
                added = new_unit_contribution(
                    site,
                    chunk.input,
                    torch.cat([alpha, -alpha]),
                    torch.cat([omega, -omega]),
                    linearised=not homogeneous(site),
                    per_unit=True,
                )
                terms = (added * grad).sum(dim=(0, 2, 3)).reshape(2, -1).T
                totals[site.name] = totals[site.name] + terms
    count = len(ctx.inputs)
    return {site.name: -totals[site.name] / count for site in sites}


def orient(solution: SiteSolution, unit_gains: Tensor, choose_signs: bool) -> int:
    """Give each new unit of ``solution`` the sign with the larger measured gain (column 1 of
    ``measured_unit_gains`` is the flipped pair) when ``choose_signs``; store the chosen gains
    in ``solution.unit_gains``; return how many pairs were flipped."""
    flip = unit_gains[:, 1] > unit_gains[:, 0]
    if not choose_signs:
        flip = torch.zeros_like(flip)
    signs = 1.0 - 2.0 * flip.double()
    k = solution.count
    solution.alpha[:k] *= signs[:, None]
    solution.omega[:k] *= signs[:, None]
    solution.unit_gains = torch.where(flip, unit_gains[:, 1], unit_gains[:, 0])
    return int(flip.sum())


def elementwise_pair(site: Site) -> bool:
    """A Linear→Linear site whose path acts on each value alone (no pooling, no depthwise
    conv): its new units' contribution is σ(x̃α)ω, cheap to evaluate for many γ at once."""
    elementwise = (nn.BatchNorm1d, Activation, Slot, nn.Dropout, nn.Identity)
    return (
        not site.producer_map.is_conv
        and not site.consumer_map.is_conv
        and all(isinstance(module, elementwise) for module in site.between)
    )


def loss_at_gamma(
    net: GrowableNet,
    ctx: GrowthContext,
    site: Site,
    alpha: Tensor,
    omega: Tensor,
    delta: Tensor,
):
    """The batched L(γ) evaluator of a site: ``_LossAtGamma`` (the consumer's output shift
    computed once, many γ per pass) where the path is positively homogeneous or an elementwise
    Linear→Linear one, ``_GrownTailLoss`` otherwise (a copy grown at each γ)."""
    if homogeneous(site) or elementwise_pair(site):
        return _LossAtGamma(net, ctx, site, alpha, omega, delta)
    return _GrownTailLoss(net, ctx, site, alpha, omega, delta)


def _states(net: GrowableNet, ctx: GrowthContext, site: Site) -> list[tuple[Tensor, Tensor]]:
    """(what ``forward_until(site)`` gives, targets) per batch of the statistics set."""
    states = []
    with torch.no_grad():
        for inputs, targets in ctx.batches():
            states.append((net.forward_until(site, inputs), targets))
    return states


class _GrownTailLoss:
    """Mean loss on the statistics set, eval mode, of the net grown at amplitude γ, without
    touching it: the net up to the site's stage runs once; one copy in which only the site's
    own layers are copied (``GrowableNet.copy_for``) is grown once, takes at each γ the
    parameters ``apply_tiny`` would give (``set_tiny``) and runs from there (γ = 0: the net
    itself)."""

    def __init__(
        self,
        net: GrowableNet,
        ctx: GrowthContext,
        site: Site,
        alpha: Tensor,
        omega: Tensor,
        delta: Tensor,
    ) -> None:
        self.net, self.site, self.ctx, self.count = net, site, ctx, len(ctx.inputs)
        self.alpha, self.omega, self.delta = alpha, omega, delta
        net.eval()  # stays in eval mode while the search runs; Grower.grow restores the mode
        self.cache = _states(net, ctx, site)
        self.grown = net.copy_for(site)
        apply_tiny(self.grown.site(site.name), alpha, omega, delta, 1.0)

    def __call__(self, gammas: list[float]) -> list[float]:
        losses = []
        with torch.no_grad():
            for gamma in gammas:
                grown = self.net
                if gamma != 0.0:
                    grown = self.grown
                    set_tiny(
                        grown.site(self.site.name), self.site, self.alpha, self.omega,
                        self.delta, gamma,
                    )  # fmt: skip
                total = 0.0
                for state, targets in self.cache:
                    outputs = grown.forward_from(self.site.name, state)
                    total += float(self.ctx.loss_fn(outputs, targets).double().sum())
                losses.append(total / self.count)
        return losses


class _LossAtGamma:
    """Mean loss on the statistics set, eval mode, of the net grown at amplitude γ, without
    touching it: each pass runs many γ at once from the stage that holds
    the consumer, on cached inputs of that stage, the consumer's output shifted through a
    forward hook by what growing at γ adds to it. On a positively homogeneous path (σ(γu) =
    γσ(u) for γ ≥ 0; max pools and the new units' identity filters commute with it) that is
    γ²·(what the new units (α, ω) add − the consumer update h̃δ), one direction computed once
    (``new_unit_contribution``, as the measured gains take it); on an elementwise Linear→Linear
    path it is γ·σ(γx̃α)ω − γ²·h̃δ, with x̃α and h̃δ computed once."""

    def __init__(
        self,
        net: GrowableNet,
        ctx: GrowthContext,
        site: Site,
        alpha: Tensor,
        omega: Tensor,
        delta: Tensor,
    ) -> None:
        self.net, self.site, self.ctx = net, site, ctx
        self.count = len(ctx.inputs)
        net.eval()  # stays in eval mode while the search runs; Grower.grow restores the mode
        dtype = site.producer.weight.dtype
        self.omega = omega.to(dtype)
        self.homogeneous = homogeneous(site)
        consumer = site.consumer
        update_weight, update_bias = consumer_update(consumer, delta)
        update_weight = update_weight.to(dtype)
        update_bias = update_bias.to(dtype) if update_bias is not None else None
        self.start = net.stage_of(consumer)
        parts = []
        with torch.no_grad():
            for state, targets in _states(net, ctx, site):
                with record_inputs([site.producer, consumer, net.stages[self.start]]) as seen:
                    net.forward_from(site, state)
                update = site.consumer_map.apply(seen[consumer], update_weight, update_bias)
                if self.homogeneous:
                    added = new_unit_contribution(site, seen[site.producer], alpha, omega, False)
                    moved = (added.reshape(update.shape).to(dtype) - update,)
                else:
                    x_tilde = with_ones(seen[site.producer], site.producer.bias is not None)
                    moved = (x_tilde @ alpha.to(dtype).T, update)
                parts.append((seen[net.stages[self.start]], *moved, targets))
        columns = [torch.cat(part) for part in zip(*parts, strict=True)]
        self.states, self.targets = columns[0], columns[-1]
        self.terms = columns[1:-1]  # (direction,), or (x̃α, h̃δ) on a non-homogeneous path
        state_bytes = self.states.nelement() * self.states.element_size()
        self.per_chunk = max(
            1,
            min(
                MAX_SEARCH_ROWS // max(1, self.count),
                MAX_SEARCH_BYTES // max(1, state_bytes),
            ),
        )

    def __call__(self, gammas: list[float]) -> list[float]:
        """L(γ) for every γ of ``gammas``, evaluated together in chunks of at most
        ``MAX_SEARCH_ROWS`` rows and ``MAX_SEARCH_BYTES`` of repeated stage inputs."""
        site, states, targets = self.site, self.states, self.targets
        losses = []
        with torch.no_grad():
            for start in range(0, len(gammas), self.per_chunk):
                chunk = gammas[start : start + self.per_chunk]
                shift = self._shifts(chunk)
                shift = shift.reshape(-1, *shift.shape[2:])

                def shifted(module, args, output, shift=shift):
                    return output + shift

                handle = site.consumer.register_forward_hook(shifted)
                try:
                    repeated = states.repeat(len(chunk), *[1] * (states.ndim - 1))
                    out = self.net.run_stages(repeated, self.start)
                finally:
                    handle.remove()
                per_sample = self.ctx.loss_fn(
                    out, targets.repeat(len(chunk), *[1] * (targets.ndim - 1))
                )
                totals = per_sample.double().reshape(len(chunk), -1).sum(dim=1)
                losses += (totals / self.count).tolist()
        return losses

    def _shifts(self, gammas: list[float]) -> Tensor:
        """The consumer's output shift at each γ: len(γ) × the consumer's output shape."""
        first = self.terms[0]
        g = torch.tensor(gammas, dtype=first.dtype, device=first.device)
        g = g.reshape(-1, *[1] * first.ndim)
        if self.homogeneous:
            if min(gammas) < 0:
                raise ValueError(f"a homogeneous path's amplitudes must be ≥ 0, got {min(gammas)}")
            return (g * g) * first
        x_alpha, update = self.terms
        new = self.site.unit_path((g * x_alpha).reshape(-1, x_alpha.shape[-1]))
        new = new.reshape(len(gammas), *x_alpha.shape) @ self.omega
        return g * new - g * g * update


def tiny_parameters(site: Site, alpha: Tensor, omega: Tensor, delta: Tensor, gamma: float):
    """What ``apply_tiny`` gives ``site`` at amplitude γ, float64: the new units' fan-in rows,
    biases and fan-out columns (γα, γω, as ``Site.add_units`` takes them) and the consumer's
    weight and bias moved by −γ²δ (None at γ = 0, where they stay)."""
    consumer = site.consumer
    has_bias = site.producer.bias is not None
    p = alpha.shape[1]
    fan_in = gamma * alpha[:, : p - has_bias]
    bias = gamma * alpha[:, -1] if has_bias else None
    weight = consumer_bias = None
    if gamma != 0.0:
        update_weight, update_bias = consumer_update(consumer, delta)
        weight = consumer.weight.detach().double() - gamma**2 * update_weight
        if update_bias is not None:
            consumer_bias = consumer.bias.detach().double() - gamma**2 * update_bias
    return fan_in, bias, gamma * omega, weight, consumer_bias


def consumer_update(consumer: nn.Module, delta: Tensor) -> tuple[Tensor, Tensor | None]:
    """δ (q × (n + 1), bias column last) as the consumer's weight and bias are shaped (the bias
    part None when the consumer has no bias)."""
    n = consumer.weight[0].numel()  # the consumer's fan-in (n·kh·kw for a conv)
    weight = delta[:, :n].reshape(consumer.weight.shape)
    return weight, delta[:, n] if consumer.bias is not None else None


def apply_tiny(site: Site, alpha: Tensor, omega: Tensor, delta: Tensor, gamma: float) -> None:
    """Add units (γα, γω) at ``site`` and move the consumer by −γ²δ (bias column included)."""
    fan_in, bias, fan_out, weight, consumer_bias = tiny_parameters(site, alpha, omega, delta, gamma)
    consumer = site.consumer
    with torch.no_grad():
        if weight is not None:
            consumer.weight.copy_(weight.to(consumer.weight))
        if consumer_bias is not None:
            consumer.bias.copy_(consumer_bias.to(consumer.bias))
    site.add_units(fan_in, fan_out, bias)


def set_tiny(
    grown: Site, site: Site, alpha: Tensor, omega: Tensor, delta: Tensor, gamma: float
) -> None:
    """Give ``grown`` (``site`` on a copy after ``apply_tiny`` at any γ) exactly the parameters
    that ``apply_tiny`` at ``gamma`` gives ``site``, in place."""
    fan_in, bias, fan_out, weight, consumer_bias = tiny_parameters(site, alpha, omega, delta, gamma)
    n, consumer = site.width, grown.consumer
    if weight is None:  # γ = 0: the consumer as it was
        weight = site.consumer.weight.detach()
        consumer_bias = None if site.consumer.bias is None else site.consumer.bias.detach()
    out = weight.shape[0]
    moved = weight.to(consumer.weight).reshape(out, n, site.positions).permute(1, 0, 2)
    grown.set_units(0, fan_out=torch.cat([moved.reshape(n, -1), fan_out.to(moved)]))
    grown.set_units(n, fan_in, bias=bias)
    if consumer_bias is not None:
        with torch.no_grad():
            consumer.bias.copy_(consumer_bias.to(consumer.bias))
