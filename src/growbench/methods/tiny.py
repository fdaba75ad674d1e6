"""``tiny``: Growing Tiny Networks (Verbockhaven et al., TMLR 2024, arXiv 2405.19816).

Rule (shared/methods/tiny.md §3): the consumer's pre-activation should move along −g_a. The best
change of the consumer's existing weights is δ = (S_h⁻¹ M_h)ᵀ; the rest, r = −g_a + δh̃, is the
expressivity bottleneck. New units with fan-in α and fan-out ω fit r through their linearised
activity ωαx̃: a rank-K regression solved by the SVD of S_x^{-1/2} N with N = −M_x + Pδᵀ. The new
units (γα, γω) and the consumer update −γ²δ are scaled by an amplitude γ found by a line search
on the statistics set; the site with the largest first-order gain is grown.

Kept from GroMo 0.1.0 (the group's library, our oracle): δ with the pinv fallback, the projected
N, eigen-thresholded S_x^{-1/2}, the significance threshold on s_k, the log-grid line search with
decade extension. Changed: all linear algebra in float64, a coarser grid, at most
ceil(0.3·width) units per event, canonical SVD signs, and the first-order gain with the cross
term −σ'(0)·tr(ωαPδᵀ) that GroMo omits (FO_exact; FO_homog, measured on the data, for positively
homogeneous σ).

Sites (``_bottleneck.pair_kind``): Linear→Linear; Conv2d→global-average-pool→Linear, where the new
unit's linearised contribution is ωα·mean_y(X_y) so x̃ is the position-averaged im2col patch;
Conv2d→Conv2d, with GroMo 0.1.0's full-conv coupling of producer patches and consumer kernel
taps, also across an average or max pool. Across a max pool a new unit's pooled map is not linear
in its fan-in, so its average stands in for it when choosing the units (our decision, the method
notes are silent); the first-order gain is then measured through the real max pool
(``measured_gain``: FO_homog for ReLU, FO_max_pool for smooth σ), which keeps the prediction
exact to first order.
A site whose pair is unsupported is left out of the candidates and recorded in
``event.extras["excluded_sites"]``; with no candidate left the event stops with a reason.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from growbench.claims import Claim
from growbench.methods._amplitude import search_amplitude
from growbench.methods._bottleneck import (
    BottleneckStatistics,
    inverse_sqrt,
    pair_kind,
    pool_is_linear,
    site_statistics,
    with_ones,
)
from growbench.methods.base import Grower, GrowerConfig, GrowthContext, GrowthEvent
from growbench.methods.registry import register
from growbench.nn import GrowableNet, Site
from growbench.nn.activations import activation_info

SITE_SELECTIONS = ("best-fo", "round-robin")
LINE_SEARCHES = ("grid", "refine")
HOMOGENEOUS = frozenset({"relu", "leaky_relu", "identity"})
MAX_SEARCH_ROWS = 2**16  # rows evaluated at once by the line search (γ values × samples)


@dataclass
class TinyConfig(GrowerConfig):
    numerical_threshold: float = 1e-6
    statistical_threshold: float = 1e-3
    max_added: int | None = None  # None: ceil(max_added_ratio · site width)
    max_added_ratio: float = 0.3
    compute_delta: bool = True
    use_projection: bool = True
    gamma_min: float = 1e-4
    gamma_top: float = 1.0
    gamma_points: int = 20
    gamma_max: float = 1e3
    gamma_fixed: float | None = None  # skip the line search and use this amplitude
    line_search: str = "grid"  # "grid": GroMo's dense log grid; "refine": coarse grid + Brent
    site_selection: str = "best-fo"

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

    def fo_gromo(self, k: int) -> float:
        return self.gain_delta + self.slope * float((self.singular_values[:k] ** 2).sum())

    def fo_exact(self, k: int, stats: BottleneckStatistics) -> float:
        """Δ − σ'(0)·tr(ωαM_x) over the first k units."""
        cross = float((self.alpha[:k] @ stats.M_x * self.omega[:k]).sum())
        return self.gain_delta - self.slope * cross

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
        solution, info = torch.linalg.solve_ex(S_h, M_h)  # no exception to raise and catch
        delta = solution.T
        gain = float((delta.T * M_h).sum())
        if int(info) != 0 or not math.isfinite(gain) or gain < 0:
            delta = (torch.linalg.pinv(S_h) @ M_h).T
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


@register
class Tiny(Grower):
    name = "tiny"
    Config = TinyConfig
    preserves_function = "at_zero_step"
    version = 2  # 2: grows across average and max pools between convs
    zero_step_overrides = {"gamma_fixed": 0.0}
    small_step_overrides = {"gamma_fixed": 1e-3}
    description = (
        "TINY: add units whose fan-in/fan-out best fit the expressivity bottleneck (one SVD), "
        "with the consumer's best update, scaled by a line-searched amplitude"
    )
    claims = (
        Claim(
            paper="Verbockhaven et al., TMLR 2024, arXiv:2405.19816",
            statement=(
                "Growing with TINY reaches the accuracy of the same-size network trained from "
                "scratch"
            ),
            method="tiny",
            baseline="static",
            relation="non_inferior",
            margin=0.01,
        ),
    )

    def __init__(self, config: GrowerConfig | None = None) -> None:
        super().__init__(config)
        self._round_robin = 0

    def grow_step(self, net: GrowableNet, ctx: GrowthContext, event: GrowthEvent) -> None:
        config = self.config
        all_sites = net.sites
        excluded = {}
        for site in all_sites:
            reason = pair_kind(site)[1]
            if reason is not None:
                excluded[site.name] = reason
        sites = [site for site in all_sites if site.name not in excluded]
        if excluded:
            event.extras["excluded_sites"] = excluded
        if not sites:
            event.stop_reason = "no supported site: " + "; ".join(
                f"{name}: {reason}" for name, reason in excluded.items()
            )
            return
        for site in sites:
            info = activation_info(site.activation)
            if not info.zero_at_zero:
                raise ValueError(
                    f"tiny: site {site.name!r} uses activation {site.activation!r} with "
                    "σ(0) ≠ 0; TINY linearises new units at 0 and needs σ(0) = 0"
                )
        measured = frozenset(s.name for s in sites if gain_is_measured(s))
        with event.phase("stats"):
            statistics = site_statistics(net, ctx, sites, self.name, keep_rows=measured)
        solutions: dict[str, SiteSolution] = {}
        with event.phase("solve"):
            for site in sites:
                limit = config.max_added
                if limit is None:
                    limit = math.ceil(config.max_added_ratio * site.width)
                slope = activation_info(site.activation).slope_at_zero
                solutions[site.name] = solve_site(statistics[site.name], config, limit, slope)
        with event.phase("solve"):
            fo_measured = {
                site.name: measured_gain(site, solutions[site.name], statistics[site.name])
                for site in sites
                if site.name in measured
            }
        report = {}
        gains = {}
        for site in sites:
            solution, stats = solutions[site.name], statistics[site.name]
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
            if site.name in fo_measured:
                key = "fo_homog" if site.activation in HOMOGENEOUS else "fo_max_pool"
                entry[key] = fo_measured[site.name]
            gains[site.name] = fo_measured.get(site.name, entry["fo_exact"])
            report[site.name] = entry
            event.scores[site.name] = solution.singular_values.tolist()
        event.extras["sites"] = report

        with event.phase("select"):
            if config.site_selection == "best-fo":
                order = sorted(range(len(sites)), key=lambda i: (-gains[sites[i].name], i))
            else:
                start = self._round_robin % len(all_sites)
                names = [site.name for site in sites]
                rotated = [
                    all_sites[(start + i) % len(all_sites)].name for i in range(len(all_sites))
                ]
                order = [names.index(name) for name in rotated if name in names]
            chosen, k = None, 0
            for position in order:
                site = sites[position]
                k = solutions[site.name].count
                while (
                    k > 0
                    and math.isfinite(ctx.remaining_budget)
                    and site.cost_of_units(k)[ctx.budget_metric] > ctx.remaining_budget
                ):
                    k -= 1
                if k > 0:
                    chosen = site
                    break
        if chosen is None:
            event.stop_reason = "budget exhausted"
            return
        if config.site_selection == "round-robin":
            self._round_robin = chosen.index + 1
        solution, stats = solutions[chosen.name], statistics[chosen.name]
        if k < solution.count:
            event.stop_reason = "budget exhausted"
        alpha, omega = solution.alpha[:k], solution.omega[:k]
        if chosen.name in measured:
            if k < solution.count:
                fo = measured_gain(chosen, _truncated(solution, k), stats)
            else:
                fo = fo_measured[chosen.name]
        else:
            fo = solution.fo_exact(k, stats)
        event.extras.update(site=chosen.name, K=k, first_order_gain=fo)

        with event.phase("search"):
            if config.gamma_fixed is not None:
                gamma = config.gamma_fixed
            else:
                gamma, curve = self._line_search(net, ctx, chosen, alpha, omega, solution.delta)
                event.extras["line_search"] = curve
                if gamma == 0.0:
                    event.stop_reason = "line search chose gamma = 0"
                    event.extras["gamma"] = 0.0
                    return
        event.extras["gamma"] = gamma
        with event.phase("apply"):
            apply_tiny(chosen, alpha, omega, solution.delta, gamma)
        event.selected = {chosen.name: [[chosen.width - k + i, "new"] for i in range(k)]}
        event.predicted_loss_change = -(gamma**2) * fo

    # ------------------------------------------------------------------ helpers
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
        grid = torch.logspace(
            math.log10(config.gamma_min), math.log10(config.gamma_top), config.gamma_points
        ).tolist()
        decades = math.log10(config.gamma_top / config.gamma_min)
        per_decade = max(1, round((config.gamma_points - 1) / decades)) if decades > 0 else 1
        curve = [list(pair) for pair in zip([0.0, *grid], evaluate([0.0, *grid]), strict=True)]
        top = grid[-1]
        while min(curve, key=lambda c: c[1])[0] == top and top * 10 <= config.gamma_max * (
            1 + 1e-12
        ):
            extra = torch.logspace(math.log10(top), math.log10(top * 10), per_decade + 1).tolist()[
                1:
            ]
            curve += [list(pair) for pair in zip(extra, evaluate(extra), strict=True)]
            top = extra[-1]
        best = min(curve, key=lambda c: c[1])
        return best[0], curve


def gain_is_measured(site: Site) -> bool:
    """Whether the site's first-order gain is measured on the kept rows (``measured_gain``)
    rather than read from the closed form FO_exact: positively homogeneous σ, or a max pool."""
    return site.activation in HOMOGENEOUS or not pool_is_linear(site)


def measured_gain(site: Site, solution: SiteSolution, stats: BottleneckStatistics) -> float:
    """Δ − E[g_aᵀ · what the new units add to the consumer at γ = 1], from the kept rows, the
    new units' maps passing through the block's real pooling (conv) and consumer kernel.

    FO_homog: positively homogeneous σ adds exactly γ²·ωσ(αx̃), so σ itself is used.
    FO_max_pool: any other σ (σ(0) = 0, σ'(0) > 0, increasing near 0) commutes with a max pool,
    so a new unit adds γ²·σ'(0)·ω·maxpool(αX) + O(γ³): σ is linearised. Both are exact to
    first order although the units were chosen through the pool's average stand-in."""
    _, g = stats.rows
    k = solution.count
    act = site.block.act if site.activation in HOMOGENEOUS else (lambda u: solution.slope * u)
    output = stats.new_unit_output(act, solution.alpha[:k], solution.omega[:k])
    return solution.gain_delta - float((output * g.double()).sum()) / stats.count


def _truncated(solution: SiteSolution, k: int) -> SiteSolution:
    return SiteSolution(
        solution.delta,
        solution.gain_delta,
        solution.N,
        solution.singular_values,
        solution.alpha,
        solution.omega,
        k,
        solution.slope,
    )


def loss_at_gamma(
    net: GrowableNet,
    ctx: GrowthContext,
    site: Site,
    alpha: Tensor,
    omega: Tensor,
    delta: Tensor,
):
    """The batched L(γ) evaluator of a site: ``_LossAtGamma`` for Linear→Linear sites (fast,
    prefix and consumer input cached), ``_GrownTailLoss`` for conv sites (the net from the
    producer block on, grown on a copy at each γ)."""
    if pair_kind(site)[0] == "linear":
        return _LossAtGamma(net, ctx, site, alpha, omega, delta)
    return _GrownTailLoss(net, ctx, site, alpha, omega, delta)


def _producer_inputs(net: GrowableNet, ctx: GrowthContext, site: Site):
    """(input of the site's producer block, targets) per batch of the statistics set."""
    for inputs, targets in ctx.batches():
        with torch.no_grad():  # not around the yield: grad mode is global state
            x = inputs.flatten(1) if net.flatten_input else inputs
            for previous in net.blocks[: site.index]:
                x = previous(x)
        yield x, targets


class _GrownTailLoss:
    """Mean loss on the statistics set, eval mode, of the net grown at amplitude γ, without
    touching it: the input of the producer block is computed once; at each γ a copy of the
    blocks from the producer on is grown with ``apply_tiny`` and run on it."""

    def __init__(
        self,
        net: GrowableNet,
        ctx: GrowthContext,
        site: Site,
        alpha: Tensor,
        omega: Tensor,
        delta: Tensor,
    ) -> None:
        self.ctx, self.count = ctx, len(ctx.inputs)
        self.alpha, self.omega, self.delta = alpha, omega, delta
        net.eval()  # stays in eval mode while the search runs; Grower.grow restores the mode
        self.tail = list(net.blocks[site.index :])
        self.cache = list(_producer_inputs(net, ctx, site))

    def __call__(self, gammas: list[float]) -> list[float]:
        losses = []
        with torch.no_grad():
            for gamma in gammas:
                tail = GrowableNet(copy.deepcopy(self.tail), (), flatten_input=False)
                if gamma != 0.0:
                    apply_tiny(Site(tail, 0), self.alpha, self.omega, self.delta, gamma)
                tail.eval()
                total = 0.0
                for x, targets in self.cache:
                    total += float(self.ctx.loss_fn(tail(x), targets).double().sum())
                losses.append(total / self.count)
        return losses


class _LossAtGamma:
    """Mean loss on the statistics set, eval mode, of the net grown at amplitude γ, without
    touching it: everything before the consumer's pre-activation is computed once."""

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
        block, consumer = site.block, site.consumer
        dtype = site.producer.weight.dtype
        alpha_m, delta_m = alpha.to(dtype), delta.to(dtype)
        self.omega = omega.to(dtype)
        parts = []
        with torch.no_grad():
            for x, targets in _producer_inputs(net, ctx, site):
                h = block(x)  # post is elementwise (Identity or Dropout, checked)
                x_tilde = with_ones(x, site.producer.bias is not None)
                h_tilde = with_ones(h, consumer.bias is not None)
                parts.append((consumer(h), x_tilde @ alpha_m.T, h_tilde @ delta_m.T, targets))
        self.cache = tuple(torch.cat(part) for part in zip(*parts, strict=True))
        # σ positively homogeneous: σ(γu) = γσ(u) for γ ≥ 0, so the consumer's pre-activation
        # is a0 + γ²·(σ(xα)ω − hδ), one direction computed once for every γ.
        self.direction = None
        if site.activation in HOMOGENEOUS:
            _, x_alpha, h_delta, _ = self.cache
            with torch.no_grad():
                self.direction = block.post(block.act(x_alpha)) @ self.omega - h_delta

    def __call__(self, gammas: list[float]) -> list[float]:
        """L(γ) for every γ of ``gammas``, evaluated together in chunks of about
        ``MAX_SEARCH_ROWS`` rows."""
        site = self.site
        consumer_block = site.consumer_block
        act, post = site.block.act, site.block.post
        rest = self.net.blocks[site.index + 2 :]
        a0, x_alpha, h_delta, targets = self.cache
        per_chunk = max(1, MAX_SEARCH_ROWS // max(1, self.count))
        losses = []
        with torch.no_grad():
            for start in range(0, len(gammas), per_chunk):
                chunk = gammas[start : start + per_chunk]
                g = torch.tensor(chunk, dtype=a0.dtype, device=a0.device)[:, None, None]
                if self.direction is not None and min(chunk) >= 0:
                    a = a0 + (g * g) * self.direction
                else:
                    new = post(act(g * x_alpha))
                    a = a0 + g * (new @ self.omega) - g * g * h_delta
                a = a.reshape(-1, a.shape[-1])
                if consumer_block.norm is not None:
                    a = consumer_block.norm(a)
                out = consumer_block.post(consumer_block.act(a))
                for block in rest:
                    out = block(out)
                per_sample = self.ctx.loss_fn(
                    out, targets.repeat(len(chunk), *[1] * (targets.ndim - 1))
                )
                totals = per_sample.double().reshape(len(chunk), -1).sum(dim=1)
                losses += (totals / self.count).tolist()
        return losses


def apply_tiny(site: Site, alpha: Tensor, omega: Tensor, delta: Tensor, gamma: float) -> None:
    """Add units (γα, γω) at ``site`` and move the consumer by −γ²δ (bias column included)."""
    consumer = site.consumer
    has_bias = site.producer.bias is not None
    p = alpha.shape[1]
    fan_in = gamma * alpha[:, : p - has_bias]
    bias = gamma * alpha[:, -1] if has_bias else None
    if gamma != 0.0:
        n = consumer.weight[0].numel()  # the consumer's fan-in (n·kh·kw for a conv)
        with torch.no_grad():
            flat = consumer.weight.double().reshape(consumer.weight.shape[0], -1)
            weight = (flat - gamma**2 * delta[:, :n]).reshape(consumer.weight.shape)
            consumer.weight.copy_(weight.to(consumer.weight))
            if consumer.bias is not None:
                b = consumer.bias.double() - gamma**2 * delta[:, n]
                consumer.bias.copy_(b.to(consumer.bias))
    site.add_units(fan_in, gamma * omega, bias)
