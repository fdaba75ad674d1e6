"""``fast-s2d``: energy-aware fast splitting (Wang, Wu, Li, Chandra, Liu, arXiv 1910.03103).

Rule: S2D's split (θ ± εv, fan-out halved, loss change (ε²/2)·vᵀS_jv) with two changes
(docs/methods/fast-s2d.md). (1) The splitting matrices are never formed: each unit's smallest
eigenpair is estimated by stochastic descent on the Rayleigh quotient R(v) = vᵀSv / vᵀv, whose
gradient needs only S_B·v_j, and the statistics taps of a mini-batch (x̃ and c per sample) give
S_B·v_j for every unit of every site at once (``x̃ᵀ (c ⊙ x̃Vᵀ)/|B|``). The net and the set stay
fixed during the estimation, so one forward/backward pass per statistics sample gives taps that
every step reuses, gathering its mini-batch, while they fit in ``rq_cache_bytes`` (else each step
runs its mini-batch through the taps again; same estimates up to float rounding). (2) Which units to
split is a knapsack over per-unit costs τ_j, relaxed to a linear program: minimise Σ β_j λ̂_j
subject to a cost budget per group of sites and a cap per site, 0 ≤ β ≤ 1, only units with
λ̂ < 0 as variables; units with β ≥ β_keep are split.

Kept from the official code (dilinwang820/fast-energy-aware-splitting): RMSprop on the directions
(momentum 0.9, alpha 0.9) with the gradient of R set by hand and the iterate renormalised after
every step, LR decays by ×0.2, estimates averaged over the final window (λ̂ = mean R_B, v̂ = mean v
renormalised), v initialised U(−0.1, 0.1), the LP relaxation with groups, ≤ 2× caps and β_keep,
ε on the unit-norm direction, the ±εv̂ split with fan-out weights ½, ½ of s2d.

Changed ([ours] where marked):
* the whole net runs in eval mode (the code leaves all but the split conv's BN in train mode and
  overwrites running statistics), on the fixed, un-augmented statistics set;
* 1,600 steps of 64 from lr 1e-2, decays at 20/40/60/80 % of the steps, window = last 10 % (the
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
  agreement with exact eigenpairs.

``rayleigh_extremes`` also estimates the largest eigenpair (R of −S); ``rayleigh_eigen`` returns
both in ``site_eigen``'s shape, for ``signed-s2d``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linprog
from scipy.stats import spearmanr
from torch import Tensor, nn
from torch.nn.grad import conv2d_weight

from growbench.claims import Claim
from growbench.methods._splitting import (
    Eigen,
    PathCurvature,
    PlannedSplit,
    SecondCurvature,
    SiteRows,
    apply_splits,
    bn_gain,
    canonical_sign,
    check_splitting_matrix,
    curvature_route,
    prediction_is_heuristic,
    second_derivative,
    site_rows,
    site_taps,
    splittable_sites,
    splitting_matrices,
    splitting_products,
    splitting_refusal,
    unit_chunks,
)
from growbench.methods.base import (
    Grower,
    GrowerConfig,
    GrowthContext,
    GrowthEvent,
    take_within_budget,
)
from growbench.methods.registry import register
from growbench.nn import GrowableNet, Site, Taps

COST_TRANSFORMS = ("identity", "sqrt", "log")
EXTREMES = ("min", "max")
UNCONVERGED_NORM = 0.5  # ‖window mean of v‖ below this: v wandered (or flipped) in the window
FRACTIONAL = (0.01, 0.99)  # β strictly inside counts as fractional in the LP report


# ------------------------------------------------------------------------ Rayleigh estimator


@dataclass(frozen=True)
class RayleighSchedule:
    """Settings of the stochastic Rayleigh-quotient descent (CPU defaults)."""

    steps: int = 1600
    batch_size: int = 64
    lr: float = 1e-2
    momentum: float = 0.9
    alpha: float = 0.9
    eps: float = 1e-8
    decay: float = 0.2
    milestones: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8)
    window: float = 0.1
    init_scale: float = 0.1
    matrix: str = "exact"  # the splitting matrix estimated (``_splitting.SPLITTING_MATRICES``)
    cache_bytes: int = 2 * 2**30  # the statistics set's per-sample quantities, if they fit

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("fast-s2d: rq_steps and rq_batch_size must be positive")
        if not 0 < self.window <= 1:
            raise ValueError(f"fast-s2d: rq_window must lie in (0, 1], got {self.window}")

    def lr_at(self, step: int) -> float:
        """×decay at each milestone (a fraction of the steps) already reached."""
        passed = sum(step >= math.floor(m * self.steps) for m in self.milestones)
        return self.lr * self.decay**passed

    def window_start(self, pass_length: int) -> int:
        """First step of the averaging window: the last ``window`` share of the steps, rounded
        up to whole passes of ``pass_length`` steps (the run ends on a pass boundary, see
        ``minibatch_indices``), so that for a still direction the size-weighted window mean of
        R_B is vᵀSv over the statistics set exactly, as with the code's last-epoch window."""
        passes = max(1, math.ceil(self.window * self.steps / pass_length))
        return max(0, self.steps - passes * pass_length)


@dataclass
class RayleighEstimate:
    """Estimates for the units of one site, float64."""

    values: Tensor  # λ̂ (n,): mean of R_B(v) over the window
    vectors: Tensor  # v̂ (n × p): window mean of v, renormalised, canonical sign
    mean_norms: Tensor  # ‖window mean of v‖ before renormalising (n,)


def rayleigh_gradient(directions: Tensor, products: Tensor) -> tuple[Tensor, Tensor]:
    """Row-wise R(v) = vᵀSv / vᵀv and ∇R(v) = (2 / vᵀv)(Sv − R(v)v), given the products Sv."""
    squared = (directions * directions).sum(dim=1, keepdim=True)
    quotient = (directions * products).sum(dim=1, keepdim=True) / squared
    gradient = 2 / squared * (products - quotient * directions)
    return quotient[:, 0], gradient


class _RMSprop:
    """torch.optim.RMSprop's update (not centred, no weight decay) on a plain float64 tensor."""

    def __init__(self, like: Tensor, schedule: RayleighSchedule) -> None:
        self.schedule = schedule
        self.square_avg = torch.zeros_like(like)
        self.buffer = torch.zeros_like(like)

    def step(self, values: Tensor, gradient: Tensor, lr: float) -> Tensor:
        s = self.schedule
        self.square_avg.mul_(s.alpha).addcmul_(gradient, gradient, value=1 - s.alpha)
        average = self.square_avg.sqrt().add_(s.eps)
        self.buffer.mul_(s.momentum).addcdiv_(gradient, average)
        return values - lr * self.buffer


def _normalised(rows: Tensor) -> Tensor:
    return rows / torch.linalg.vector_norm(rows, dim=1, keepdim=True).clamp_min(1e-300)


def minibatch_indices(
    count: int, batch_size: int, steps: int, generator: torch.Generator
) -> Iterator[Tensor]:
    """``steps`` mini-batches of a set of ``count`` samples, in passes: each pass a fresh seeded
    permutation cut into batches of ``batch_size`` (the last of a pass may be smaller). The first
    pass is cut short (its first ``steps mod pass length`` batches) so that the run ends on a pass
    boundary."""
    pass_length = math.ceil(count / batch_size)
    skip = (pass_length - steps % pass_length) % pass_length
    produced = 0
    while produced < steps:
        order = torch.randperm(count, generator=generator)
        starts = range(0, count, batch_size)
        if produced == 0:
            starts = starts[: pass_length - skip]
        for start in starts:
            if produced == steps:
                return
            yield order[start : start + batch_size]
            produced += 1


class SiteBatch:
    """The per-sample quantities of one site for a set of samples (a mini-batch, or the whole
    statistics set), ready to give S_B·v_j for every unit j.

    Closed form (``_splitting.closed_form``), Linear producers: rows x̃ and c, then
    ``x̃ᵀ (c ⊙ x̃Vᵀ) / |B|`` (``splitting_products``). Conv producers never unfold: x̃Vᵀ is a
    convolution of the site's input with V as kernels, and x̃ᵀ(c ⊙ ·) is that convolution's weight
    gradient (what autograd gives the code's zero dummy q), which is several times faster than
    building the im2col rows and uses no patch matrix. A MobileNet site, whose path has a second
    activation after the depthwise conv, also keeps d and e₂ and replaces c ⊙ · by
    ``SecondCurvature.times`` (two depthwise convs more); any other path keeps the gradient at
    the consumer's input and takes a Hessian-vector product through it (``PathCurvature``).
    Every tensor is
    indexed by sample first, so ``take`` gathers a mini-batch from a larger set. Products run in
    the model dtype and come back in float64.
    """

    def __init__(
        self,
        site: Site,
        inputs: Tensor,
        coefficients: Tensor | None = None,
        path_grad: Tensor | None = None,
        slopes: Tensor | None = None,
        second: Tensor | None = None,
    ) -> None:
        self.site = site
        self.conv = isinstance(site.producer, nn.Conv2d)
        self.inputs = inputs  # closed-form linear: rows x̃ (samples × p); else the producer input
        self.coefficients = coefficients  # c = g·σ''(z)·b²
        self.path_grad = path_grad  # ĝ at the consumer's input (the path route)
        self.slopes, self.second = slopes, second  # d and e₂ of ``SecondCurvature``
        self._curvature: PathCurvature | None = None  # built once, for every extreme

    @classmethod
    def from_taps(cls, site: Site, taps: Taps, matrix: str = "exact") -> SiteBatch:
        route = curvature_route(site, matrix)
        if route == "second":
            c1, d, e2 = SecondCurvature.of(site).coefficients(taps)
            return cls(site, taps.input, c1, slopes=d, second=e2)
        if route == "path":
            return cls(site, taps.input, path_grad=taps.grad_consumer_input)
        if not isinstance(site.producer, nn.Conv2d):
            rows = site_rows(site, taps.input, taps.pre, taps.grad_post)
            return cls(site, rows.inputs, rows.coefficients)
        gain = bn_gain(site).to(taps.pre).reshape(1, -1, 1, 1)
        curvature = second_derivative(site.activation, taps.pre)
        return cls(site, taps.input, taps.grad_post * curvature * gain * gain)

    def tensors(self) -> dict[str, Tensor]:
        names = ("inputs", "coefficients", "path_grad", "slopes", "second")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    def take(self, index: Tensor) -> SiteBatch:
        """The samples ``index`` of this set."""
        picked = {name: t.index_select(0, index) for name, t in self.tensors().items()}
        return SiteBatch(self.site, **picked)

    def products(self, directions: Tensor) -> Tensor:
        """S_B·v_j for the rows v_j of ``directions`` (n × p), float64."""
        count = len(self.inputs)
        if not self.conv and self.path_grad is None:
            return splitting_products(SiteRows(self.inputs, self.coefficients), directions, count)
        layer, width = self.site.producer, self.site.width
        has_bias = layer.bias is not None
        v = directions.to(self.inputs)
        weight = v[:, : v.shape[1] - has_bias].reshape(width, *layer.weight.shape[1:])
        bias = v[:, -1] if has_bias else None
        if self.conv:
            geometry = (layer.stride, layer.padding, layer.dilation)
            along = F.conv2d(self.inputs, weight, bias, *geometry)
        else:
            along = F.linear(self.inputs, weight, bias)
        if self.second is not None:
            curvature = SecondCurvature.of(self.site)
            weighted = curvature.times(self.coefficients, self.slopes, self.second, along)
        elif self.path_grad is None:
            weighted = self.coefficients * along
        else:
            if self._curvature is None:
                self._curvature = PathCurvature(self.site, self.inputs, self.path_grad)
            weighted = self._curvature.times(along)
        if self.conv:
            gradient = conv2d_weight(self.inputs, weight.shape, weighted, *geometry)
            parts = [gradient.reshape(width, -1)]
            bias_part = weighted.sum(dim=(0, 2, 3))
        else:
            parts = [weighted.T @ self.inputs]
            bias_part = weighted.sum(dim=0)
        if has_bias:
            parts.append(bias_part[:, None])
        return torch.cat(parts, dim=1).double() / count


def site_batches(
    net: GrowableNet,
    ctx: GrowthContext,
    sites: Sequence[Site],
    inputs: Tensor,
    targets: Tensor,
    matrix: str = "exact",
) -> dict[str, SiteBatch]:
    """One eval-mode forward and ONE backward through the taps of all ``sites`` for a batch."""
    taps = site_taps(net, ctx, list(sites), inputs, targets, matrix)
    return {site.name: SiteBatch.from_taps(site, taps[site.name], matrix) for site in sites}


def statistics_set_batches(
    net: GrowableNet,
    ctx: GrowthContext,
    sites: Sequence[Site],
    batch_size: int,
    max_bytes: int,
    matrix: str = "exact",
) -> dict[str, SiteBatch] | None:
    """``site_batches`` of the whole statistics set, from one taps pass in batches of
    ``batch_size``, or None when they would take more than ``max_bytes`` (judged from the first
    batch, before anything else is computed)."""
    count = len(ctx.inputs)
    whole: dict[str, SiteBatch] = {}
    for start in range(0, count, batch_size):
        stop = min(start + batch_size, count)
        inputs, targets = ctx.inputs[start:stop], ctx.targets[start:stop]
        batch = site_batches(net, ctx, sites, inputs, targets, matrix)
        if start == 0:
            tensors = [t for part in batch.values() for t in part.tensors().values()]
            if sum(t[0].nelement() * t.element_size() for t in tensors) * count > max_bytes:
                return None
            whole = {
                name: SiteBatch(
                    part.site,
                    **{key: t.new_empty(count, *t.shape[1:]) for key, t in part.tensors().items()},
                )
                for name, part in batch.items()
            }
        for name, part in batch.items():
            target = whole[name].tensors()
            for key, t in part.tensors().items():
                target[key][start:stop] = t
    return whole


def rayleigh_extremes(
    net: GrowableNet,
    ctx: GrowthContext,
    sites: Sequence[Site],
    schedule: RayleighSchedule,
    extremes: Sequence[str] = ("min",),
) -> dict[str, dict[str, RayleighEstimate]]:
    """Estimate the smallest (``"min"``) and/or largest (``"max"``, descent on R of −S) eigenpair
    of every unit's splitting matrix at ``sites``.

    The taps of all sites are taken once for the whole statistics set (``statistics_set_batches``,
    within ``schedule.cache_bytes``; otherwise ONE forward/backward per step). Every step draws
    one mini-batch (seeded order from ``ctx.generator``), gathers its taps, forms S_B·v for every
    unit and every requested extreme, sets ∇R by hand, takes an RMSprop step and renormalises.
    Directions start U(−init_scale, init_scale) (drawn site by site, ``min`` before ``max``),
    normalised. Returns ``{extreme: {site name: RayleighEstimate}}``.
    """
    for extreme in extremes:
        if extreme not in EXTREMES:
            raise ValueError(f"unknown extreme {extreme!r}; choose from {EXTREMES}")
    generator = ctx.generator
    keys = [(extreme, site) for extreme in extremes for site in sites]
    directions: dict[tuple[str, str], Tensor] = {}
    optimisers: dict[tuple[str, str], _RMSprop] = {}
    quotient_sums: dict[tuple[str, str], Tensor] = {}
    direction_sums: dict[tuple[str, str], Tensor] = {}
    for extreme, site in keys:
        key = (extreme, site.name)
        draw = torch.rand(site.width, site.fan_in_size, generator=generator, dtype=torch.float64)
        directions[key] = _normalised((2 * draw - 1) * schedule.init_scale)
        optimisers[key] = _RMSprop(directions[key], schedule)
        quotient_sums[key] = torch.zeros(site.width, dtype=torch.float64)
        direction_sums[key] = torch.zeros(site.width, site.fan_in_size, dtype=torch.float64)
    window_samples = 0
    window_start = schedule.window_start(math.ceil(len(ctx.inputs) / schedule.batch_size))
    batches = minibatch_indices(len(ctx.inputs), schedule.batch_size, schedule.steps, generator)
    matrix = schedule.matrix
    cached = statistics_set_batches(
        net, ctx, sites, schedule.batch_size, schedule.cache_bytes, matrix
    )
    for step, index in enumerate(batches):
        index = index.to(ctx.device)
        if cached is None:
            batch = site_batches(net, ctx, sites, ctx.inputs[index], ctx.targets[index], matrix)
        else:
            batch = {name: whole.take(index) for name, whole in cached.items()}
        lr = schedule.lr_at(step)
        in_window = step >= window_start
        window_samples += len(index) if in_window else 0
        for extreme, site in keys:
            key = (extreme, site.name)
            v = directions[key]
            products = batch[site.name].products(v)
            quotient, gradient = rayleigh_gradient(v, products)
            if in_window:  # v and R_B(v) before the step, as the code records them
                quotient_sums[key] += quotient * len(index)
                direction_sums[key] += v * len(index)
            if extreme == "max":  # ascend R: descend R of −S
                gradient = -gradient
            directions[key] = _normalised(optimisers[key].step(v, gradient, lr))
    window = float(window_samples)
    estimates: dict[str, dict[str, RayleighEstimate]] = {extreme: {} for extreme in extremes}
    for extreme, site in keys:
        key = (extreme, site.name)
        mean = direction_sums[key] / window
        estimates[extreme][site.name] = RayleighEstimate(
            values=quotient_sums[key] / window,
            vectors=canonical_sign(_normalised(mean)),
            mean_norms=torch.linalg.vector_norm(mean, dim=1),
        )
    return estimates


def rayleigh_eigen(
    net: GrowableNet, ctx: GrowthContext, sites: Sequence[Site], schedule: RayleighSchedule
) -> dict[str, Eigen]:
    """Both extreme eigenpairs per site in the shape of ``site_eigen`` (for ``signed-s2d``):
    one run of ``rayleigh_extremes(..., ("min", "max"))``; the spectral norm is estimated as
    max(|λ̂_min|, |λ̂_max|)."""
    both = rayleigh_extremes(net, ctx, sites, schedule, ("min", "max"))
    eigen = {}
    for site in sites:
        low, high = both["min"][site.name], both["max"][site.name]
        eigen[site.name] = Eigen(
            lambda_min=low.values,
            vector_min=low.vectors,
            lambda_max=high.values,
            vector_max=high.vectors,
            matrix_norm=torch.maximum(low.values.abs(), high.values.abs()),
        )
    return eigen


def quadratic_forms(
    net: GrowableNet,
    ctx: GrowthContext,
    sites: Sequence[Site],
    vectors: dict[str, Tensor],
    matrix: str = "exact",
) -> dict[str, Tensor]:
    """v_jᵀ S_j v_j over the whole statistics set for given unit vectors (one pass, no S)."""
    totals = {site.name: torch.zeros(site.width, dtype=torch.float64) for site in sites}
    count = 0
    for inputs, targets in ctx.batches():
        batch = site_batches(net, ctx, sites, inputs, targets, matrix)
        for site in sites:
            v = vectors[site.name]
            totals[site.name] += (v * batch[site.name].products(v)).sum(dim=1) * len(inputs)
        count += len(inputs)
    return {name: total / count for name, total in totals.items()}


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
    positive: ClassVar[tuple[str, ...]] = (
        "growth_ratio",
        "rq_steps",
        "rq_batch_size",
        "rq_lr",
        "rq_decay",
        "rq_window",
        "rq_cache_bytes",
        "max_stat_bytes",
    )
    non_negative: ClassVar[tuple[str, ...]] = (
        "epsilon",
        "rq_momentum",
        "rq_alpha",
        "rq_eps",
        "rq_init_scale",
        "site_cap_ratio",
    )
    # growth_ratio over 100 is beyond any budget; site_cap_ratio over 1 caps nothing (a unit
    # splits once at most)
    at_most: ClassVar[dict[str, float]] = {"growth_ratio": 100.0, "site_cap_ratio": 1.0}
    epsilon: float = 1e-2
    """Split step ε: the two copies move by ±ε along the estimated unit-norm direction v̂ (≥ 0)."""
    growth_ratio: float = 0.3
    """Each group's budget per round, as a share of its current (transformed) cost (> 0, at most
    100)."""
    rq_steps: int = 1600
    """Steps of the stochastic Rayleigh-quotient descent that estimates each unit's v_min (> 0)."""
    rq_batch_size: int = 64
    """Statistics samples per step of the Rayleigh-quotient descent (> 0)."""
    rq_lr: float = 1e-2
    """Initial learning rate of the descent's RMSprop (> 0)."""
    rq_momentum: float = 0.9
    """RMSprop momentum of the descent (≥ 0)."""
    rq_alpha: float = 0.9
    """RMSprop smoothing constant of the squared-gradient average (≥ 0)."""
    rq_eps: float = 1e-8
    """RMSprop's term added to the root of the squared-gradient average (≥ 0)."""
    rq_decay: float = 0.2
    """Factor the learning rate is multiplied by at each milestone (> 0)."""
    rq_milestones: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8)
    """Points of the run, as shares of rq_steps, where the learning rate decays."""
    rq_window: float = 0.1
    """Share of the final steps averaged into λ̂ and v̂, rounded up to whole passes over the set:
    (0, 1]."""
    rq_init_scale: float = 0.1
    """Directions start uniform in (−rq_init_scale, rq_init_scale) (≥ 0)."""
    rq_cache_bytes: int = 2 * 2**30
    """Keep the whole statistics set's taps in memory if they fit in this many bytes; else each step
    recomputes its mini-batch's (> 0)."""
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
    """Report |λ̂ − v̂ᵀSv̂| for each unit, at the cost of one more pass (phase "diagnostics")."""
    exact_diagnostics: bool = False
    """Also form each unit's exact S_j and report the estimates' agreement with it (cosine, λ error,
    Spearman, Jaccard)."""
    max_stat_bytes: int = 512 * 2**20
    """Most bytes of exact splitting matrices held at once; used by exact_diagnostics only (> 0)."""
    splitting_matrix: str = "exact"
    """Splitting matrix S_j estimated: "exact" (the curvature of the unit's whole path to its
    consumer) or "first-activation" (S2D's official code's, stopping at the first activation)."""

    def __post_init__(self) -> None:
        check_splitting_matrix("fast-s2d", self.splitting_matrix)
        if self.cost_transform not in COST_TRANSFORMS:
            raise ValueError(
                f"fast-s2d: unknown cost_transform {self.cost_transform!r}; "
                f"choose {COST_TRANSFORMS}"
            )
        self.rq_milestones = tuple(float(m) for m in self.rq_milestones)
        self.groups = tuple(tuple(str(name) for name in group) for group in self.groups)
        if not 0 < self.beta_keep <= 1:
            raise ValueError(f"fast-s2d: beta_keep must lie in (0, 1], got {self.beta_keep}")
        self.schedule()  # validates the estimator settings

    def schedule(self) -> RayleighSchedule:
        return RayleighSchedule(
            steps=self.rq_steps,
            batch_size=self.rq_batch_size,
            lr=self.rq_lr,
            momentum=self.rq_momentum,
            alpha=self.rq_alpha,
            eps=self.rq_eps,
            decay=self.rq_decay,
            milestones=self.rq_milestones,
            window=self.rq_window,
            init_scale=self.rq_init_scale,
            cache_bytes=self.rq_cache_bytes,
            matrix=self.splitting_matrix,
        )


@register
class FastS2D(Grower):
    name = "fast-s2d"
    Config = FastS2DConfig
    preserves_function = "at_zero_step"
    zero_step_overrides = {"epsilon": 0.0}
    small_step_overrides = {"epsilon": 1e-3}
    prediction_tolerance = 0.05  # the prediction uses estimated eigenvalues (README check 5)
    quick_overrides = {"rq_steps": 160}
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
            estimates = rayleigh_extremes(net, ctx, sites, config.schedule())["min"]
        unconverged = {}
        for site in sites:
            estimate = estimates[site.name]
            event.scores[site.name] = estimate.values.tolist()
            flagged = torch.nonzero(estimate.mean_norms < UNCONVERGED_NORM).flatten().tolist()
            if flagged:
                unconverged[site.name] = flagged
        event.extras["unconverged_units"] = unconverged

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
        # diagnostics of the estimates, not the method's own work: timed apart
        with event.phase("diagnostics"):
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
            if config.check_estimates:
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
            half = torch.tensor([0.5, 0.5], dtype=torch.float64)
            plans = []
            for position, j in chosen:
                site = sites[position]
                direction = estimates[site.name].vectors[j]
                deltas = torch.stack([config.epsilon * direction, -config.epsilon * direction])
                plans.append(PlannedSplit(site.name, j, deltas, half, "split"))
            event.selected = apply_splits(net, plans)
        event.predicted_loss_change = sum(
            config.epsilon**2 / 2 * float(estimates[sites[p].name].values[j]) for p, j in chosen
        )

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
