"""The stochastic Rayleigh-quotient estimator of extreme eigenpairs of the splitting matrices.

Two methods need each unit's extreme eigenpairs without forming its splitting matrix S_j:
``fast-s2d`` (v_min of every unit, arXiv 1910.03103) and ``signed-s2d`` (v_min and v_max where
``eigh`` of S_j would cost more, its ``eigen_solver``). This module is that estimator, on its own
so that both run the same code with the same settings: ``RayleighConfig``, which each method holds
as its ``rayleigh`` option, so a suite sets it as a table (``rayleigh = { passes = 25 }``) and a
method's ``quick_overrides`` reach it (``{"rayleigh": {"steps": 160}}``). A run lasts ``passes``
passes over the statistics set (its steps scale with the set's size), or exactly ``steps`` steps
when that override is set.

Each unit's smallest eigenpair is estimated by stochastic descent on the Rayleigh quotient
R(v) = vᵀSv / vᵀv, whose gradient needs only S_B·v_j, and the statistics taps of a mini-batch
give S_B·v_j for every unit of every site at once (``SiteBatch``; the curvature route of each site
is ``_splitting.curvature_route``'s). The largest is the descent on R of −S. The net and the set
stay fixed during the estimation, so one forward/backward pass per statistics sample gives taps
that every step reuses, gathering its mini-batch, while they fit in ``cache_bytes`` (else each
step runs its mini-batch through the taps again; same estimates up to float rounding).

The descent is fast-s2d's official code's (dilinwang820/fast-energy-aware-splitting) with the
changes listed in ``growbench.methods.fast_s2d``: RMSprop on the directions with the gradient of R
set by hand and the iterate renormalised after every step, stepwise LR decay, and estimates averaged
over a final window of whole passes (λ̂ = size-weighted mean of R_B, v̂ = mean v renormalised),
float64 throughout the sums and the directions.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar

import torch
from torch import Tensor

from growbench.methods._splitting import (
    CurvatureRoute,
    Eigen,
    SiteRows,
    canonical_sign,
    curvature_route,
    route_taps,
    splitting_products,
)
from growbench.methods.base import GrowthContext
from growbench.nn import GrowableNet, Site, Taps
from growbench.plugins import build_options

EXTREMES = ("min", "max")


@dataclass
class RayleighConfig:
    """Settings of the stochastic Rayleigh-quotient descent (CPU defaults): a method's
    ``rayleigh`` option, set in a suite as a table (``rayleigh = { passes = 25 }``).

    Default change (2026-12-06): the length was ``steps = 1600`` whatever the set, chosen as 50
    passes over a 2,048-sample set; it is now ``passes = 50`` with ``min_steps = 1200``, so a
    run over a smaller set is shorter (1,200 steps on the default suite's sets of 1,437 and 1,000
    samples and on MobileNetV1's 1,024), one over 2,048 samples unchanged and one over more
    samples longer. Measured effect on the growth decisions: docs/methods/fast-s2d.md, "Cost of
    the search"."""

    positive: ClassVar[tuple[str, ...]] = (
        "passes",
        "min_steps",
        "steps",
        "batch_size",
        "lr",
        "decay",
        "window",
        "cache_bytes",
    )
    non_negative: ClassVar[tuple[str, ...]] = (
        "momentum",
        "alpha",
        "eps",
        "init_scale",
        "tolerance",
    )
    at_most: ClassVar[dict[str, float]] = {"window": 1.0}
    whole: ClassVar[tuple[str, ...]] = ("passes", "min_steps", "steps", "batch_size", "cache_bytes")
    passes: int = 50
    """Length of the descent in passes over the statistics set (> 0): it runs passes × ⌈samples /
    batch_size⌉ steps (at least ``min_steps``), as the official code runs its estimator for a
    number of epochs (50 passes of 64: the 1,600 steps of a 2,048-sample set, 2,350 on 3,000;
    1,150 on 1,437 samples and 800 on 1,024 are raised to ``min_steps``)."""
    min_steps: int = 1200
    """The fewest steps a run sized by ``passes`` takes (> 0). The descent converges in steps, not
    passes: on a 512-sample set (fan-ins 13 and 17) 800 steps left min cos(v̂, v) at 0.94 and
    λ errors of 12 %, 1,200 steps 0.995 and 1.4 % (the fidelity bounds: 0.99 and 5 %)."""
    steps: int | None = None
    """The descent's steps, overriding ``passes`` when set (> 0); None: sized by ``passes``."""
    batch_size: int = 64
    """Statistics samples per step of the descent (> 0)."""
    lr: float = 1e-2
    """Initial learning rate of the descent's RMSprop (> 0)."""
    momentum: float = 0.9
    """RMSprop momentum of the descent (≥ 0)."""
    alpha: float = 0.9
    """RMSprop smoothing constant of the squared-gradient average (≥ 0)."""
    eps: float = 1e-8
    """RMSprop's term added to the root of the squared-gradient average (≥ 0)."""
    decay: float = 0.2
    """Factor the learning rate is multiplied by at each milestone (> 0)."""
    milestones: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8)
    """Points of the run, as shares of the steps, where the learning rate decays."""
    window: float = 0.1
    """Share of the final steps averaged into λ̂ and v̂, rounded up to whole passes over the set:
    (0, 1]."""
    init_scale: float = 0.1
    """Directions start uniform in (−init_scale, init_scale) (≥ 0)."""
    tolerance: float = 0.0
    """Convergence stop (≥ 0; 0 runs every step): after each whole pass over the set, the pass
    means of R_B(v) and v are compared with the previous pass's; when every unit's mean R_B moved
    by at most tolerance × the largest |mean R_B| of its site and its mean direction by at most
    tolerance in norm, the run skips to the next learning-rate milestone (before the window) or
    stops (in the window, after at least one whole pass there)."""
    cache_bytes: int = 2 * 2**30
    """Keep the whole statistics set's taps in memory if they fit in this many bytes; else each step
    recomputes its mini-batch's (> 0)."""

    def __post_init__(self) -> None:
        self.milestones = tuple(float(m) for m in self.milestones)

    @classmethod
    def of(cls, value: RayleighConfig | Mapping[str, Any], method: str) -> RayleighConfig:
        """``value``, or a table of its fields (a suite's ``rayleigh = { passes = 25 }``, whose
        unknown keys are refused with the valid ones listed) made into one, checked for
        ``method``'s Config."""
        if isinstance(value, Mapping):
            value = build_options(cls, value, f"{method}: rayleigh")
        if not isinstance(value, cls):
            raise ValueError(
                f"{method}: rayleigh must be a table of {', '.join(f.name for f in fields(cls))}, "
                f"got {value!r}"
            )
        value.check(method)
        return value

    def check(self, method: str) -> None:
        """Raise ``ValueError`` in ``GrowerConfig.check``'s words, the field named
        ``rayleigh.NAME``: a ``whole`` field not an integer, a non-finite number, a ``positive``
        field not > 0 (``steps`` may be None), a ``non_negative`` one < 0, one above its bound in
        ``at_most``."""

        def refuse(name: str, rule: str) -> None:
            raise ValueError(
                f"{method}: rayleigh.{name} must be {rule}, got {getattr(self, name)!r}"
            )

        for name in self.whole:
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                refuse(name, "a whole number")
        for field in fields(self):
            value = getattr(self, field.name)
            items = value if isinstance(value, tuple) else (value,)
            if any(isinstance(item, float) and not math.isfinite(item) for item in items):
                refuse(field.name, "a finite number")
        for name in self.positive:
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                refuse(name, "greater than 0")
        for name in self.non_negative:
            if getattr(self, name) < 0:
                refuse(name, "0 or more")
        for name, limit in self.at_most.items():
            if getattr(self, name) > limit:
                refuse(name, f"at most {limit:g}")

    def steps_for(self, samples: int) -> int:
        """The steps of a run over a statistics set of ``samples``: ``steps`` when set, else
        ``passes`` whole passes of ⌈samples / batch_size⌉ batches, at least ``min_steps``."""
        if self.steps is not None:
            return self.steps
        return max(self.min_steps, self.passes * math.ceil(samples / self.batch_size))

    def schedule(self, samples: int) -> RayleighConfig:
        """This config with ``steps`` set for a statistics set of ``samples`` (``steps_for``):
        what ``lr_at``, ``window_start`` and ``next_jump`` read."""
        return replace(self, steps=self.steps_for(samples))

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


def _normalised(rows: Tensor) -> Tensor:
    return rows / torch.linalg.vector_norm(rows, dim=1, keepdim=True).clamp_min(1e-300)


def minibatch_passes(
    count: int, batch_size: int, steps: int, generator: torch.Generator
) -> Iterator[tuple[Tensor, int]]:
    """The passes of ``steps`` mini-batches over a set of ``count`` samples: each a fresh seeded
    permutation, cut into batches of ``batch_size`` (the last of a pass may be smaller), with the
    number of its batches the run takes. The first pass is cut short (its first ``steps mod pass
    length`` batches) so that the run ends on a pass boundary."""
    pass_length = math.ceil(count / batch_size)
    skip = (pass_length - steps % pass_length) % pass_length
    produced = 0
    while produced < steps:
        order = torch.randperm(count, generator=generator)
        take = min(pass_length - skip if produced == 0 else pass_length, steps - produced)
        yield order, take
        produced += take


def minibatch_indices(
    count: int, batch_size: int, steps: int, generator: torch.Generator
) -> Iterator[Tensor]:
    """The ``steps`` mini-batches of ``minibatch_passes``, one index tensor each."""
    for order, take in minibatch_passes(count, batch_size, steps, generator):
        yield from order.split(batch_size)[:take]


class SiteBatch:
    """The per-sample quantities of one site for a set of samples (a mini-batch, or the whole
    statistics set), ready to give S_B·v_j for every unit j: what its curvature route
    (``_splitting.CurvatureRoute``) keeps, every tensor indexed by sample first, so ``take``
    gathers a mini-batch from a larger set.

    Closed-form sites whose route gives rows (``ClosedRoute.unfolds``: Linear producers, small
    convs) hold x̃ and c per sample and output position, then ``x̃ᵀ (c ⊙ x̃Vᵀ) / |B|``
    (``splitting_products``). Every other site never unfolds: x̃Vᵀ is a linear map or a
    convolution of the site's input with V as weights or kernels, the route's ``operator`` applies
    H_U to it (c ⊙ · on the closed form, two depthwise convs more on a MobileNet site, a
    Hessian-vector product through the path otherwise, its graph built once per batch for every
    extreme), and x̃ᵀ(·) is that map's weight gradient (what autograd gives the code's zero dummy
    q), several times faster than building the im2col rows and with no patch matrix. Products run
    in the model dtype and come back in float64.
    """

    def __init__(self, route: CurvatureRoute, tensors: dict[str, Tensor]) -> None:
        self.route, self.site = route, route.site
        self.tensors = {name: channels_last(t) for name, t in tensors.items()}
        self.rows = "rows" in tensors  # x̃ and c per sample and position, else the input
        self.inputs = self.tensors["rows" if self.rows else "inputs"]
        self._operator = None  # H_U· of this batch, built on first use

    @classmethod
    def from_taps(cls, route: CurvatureRoute, taps: Taps) -> SiteBatch:
        return cls(route, route.batch(taps))

    def take(self, index: Tensor) -> SiteBatch:
        """The samples ``index`` of this set."""
        picked = {name: take_samples(t, index) for name, t in self.tensors.items()}
        return SiteBatch(self.route, picked)

    def products(self, directions: Tensor) -> Tensor:
        """S_B·v_j for the rows v_j of ``directions`` (n × p), float64."""
        count = self.inputs.shape[0]
        if self.rows:
            rows = SiteRows(self.inputs.flatten(0, 1), self.tensors["coefficients"].flatten(0, 1))
            return splitting_products(rows, directions, count)
        layer, width, view = self.site.producer, self.site.width, self.site.producer_map
        has_bias = layer.bias is not None
        v = directions.to(self.inputs)
        weight = v[:, : v.shape[1] - has_bias].reshape(width, *layer.weight.shape[1:])
        bias = v[:, -1] if has_bias else None
        along = view.apply(self.inputs, weight, bias)
        if self._operator is None:
            self._operator = self.route.operator(self.tensors)
        weighted = self._operator(along)
        parts = [view.weight_gradient(self.inputs, weighted).reshape(width, -1)]
        bias_part = view.bias_gradient(weighted)
        if has_bias:
            parts.append(bias_part[:, None])
        return torch.cat(parts, dim=1).double() / count

    def stacked_products(self, directions: Tensor, stacked: int) -> Tensor:
        """``products`` of ``stacked`` sets of directions of every unit, one after another in the
        rows of ``directions``: on the closed form one x̃Vᵀ and one x̃ᵀ(·) for all of them."""
        if stacked == 1:
            return self.products(directions)
        if not self.rows:
            return torch.cat([self.products(part) for part in directions.chunk(stacked)])
        count, inputs = self.inputs.shape[0], self.inputs.flatten(0, 1)
        projections = inputs @ directions.T.to(inputs.dtype)  # rows × stacked·n
        coefficients = self.tensors["coefficients"].flatten(0, 1)[:, None]
        rows = len(inputs)
        weighted = (projections.view(rows, stacked, -1) * coefficients).view(rows, -1)
        return (weighted.T @ inputs).double() / count


def channels_last(tensor: Tensor) -> Tensor:
    """Maps (N × C × H × W) in channels-last order, anything else as it is: the products'
    convolutions run 1.3-3.5× faster on it (torch 2.14's mkldnn, MobileNetV1's sites: its
    depthwise convs and their transposes most)."""
    if tensor.dim() != 4:
        return tensor
    return tensor.contiguous(memory_format=torch.channels_last)


def take_samples(tensor: Tensor, index: Tensor) -> Tensor:
    """The samples ``index`` of ``tensor`` (first dimension), in its memory order: channels-last
    maps are gathered as the contiguous N × H × W × C tensor they are, as fast as a plain one."""
    if tensor.dim() == 4 and tensor.is_contiguous(memory_format=torch.channels_last):
        return tensor.permute(0, 2, 3, 1).index_select(0, index).permute(0, 3, 1, 2)
    return tensor.index_select(0, index)


def _empty_set(batch_tensor: Tensor, count: int) -> Tensor:
    """An uninitialised tensor for ``count`` samples of ``batch_tensor``'s kind and layout."""
    layout = torch.channels_last if batch_tensor.dim() == 4 else torch.contiguous_format
    return torch.empty(
        (count, *batch_tensor.shape[1:]),
        dtype=batch_tensor.dtype,
        device=batch_tensor.device,
        memory_format=layout,
    )


def site_batches(
    net: GrowableNet,
    ctx: GrowthContext,
    routes: Sequence[CurvatureRoute],
    inputs: Tensor,
    targets: Tensor,
) -> dict[str, SiteBatch]:
    """One eval-mode forward and ONE backward through the taps of all ``routes``' sites for a
    batch."""
    taps = route_taps(net, ctx, routes, inputs, targets)
    return {route.site.name: SiteBatch.from_taps(route, taps[route.site.name]) for route in routes}


def statistics_set_batches(
    net: GrowableNet,
    ctx: GrowthContext,
    routes: Sequence[CurvatureRoute],
    batch_size: int,
    max_bytes: int,
) -> dict[str, SiteBatch] | None:
    """``site_batches`` of the whole statistics set, from one taps pass in batches of
    ``batch_size``, or None when they would take more than ``max_bytes`` (judged from the first
    batch, before anything else is computed)."""
    count = len(ctx.inputs)
    whole: dict[str, SiteBatch] = {}
    for start in range(0, count, batch_size):
        stop = min(start + batch_size, count)
        inputs, targets = ctx.inputs[start:stop], ctx.targets[start:stop]
        batch = site_batches(net, ctx, routes, inputs, targets)
        if start == 0:
            tensors = [t for part in batch.values() for t in part.tensors.values()]
            if sum(t[0].nelement() * t.element_size() for t in tensors) * count > max_bytes:
                return None
            whole = {
                name: SiteBatch(
                    part.route,
                    {key: _empty_set(t, count) for key, t in part.tensors.items()},
                )
                for name, part in batch.items()
            }
        for name, part in batch.items():
            target = whole[name].tensors
            for key, t in part.tensors.items():
                target[key][start:stop] = t
    return whole


class _Block:
    """One site's rows in ``_Directions``: its directions of every extreme stacked (extreme after
    extreme, ``width`` rows each), views of the step's gradients and R_B(v) for them, and the
    scratch of ``_Directions.step`` (v ⊙ v and v ⊙ Sv side by side, summed in one reduction)."""

    def __init__(
        self,
        name: str,
        width: int,
        directions: Tensor,
        gradients: Tensor,
        quotients: Tensor,
        quotient_sums: Tensor,
        direction_sums: Tensor,
    ) -> None:
        self.name, self.width = name, width
        self.directions, self.gradients, self.quotients = directions, gradients, quotients
        self.quotient_sums, self.direction_sums = quotient_sums, direction_sums
        self.terms = directions.new_empty(2, *directions.shape)
        self.squares, self.dots = self.terms[0], self.terms[1]
        self.sums = directions.new_empty(2, len(directions), 1)
        self.squared, self.dotted = self.sums[0], self.sums[1]
        self.two = directions.new_full((len(directions), 1), 2.0)
        self.scale = torch.empty_like(self.two)


class _Directions:
    """The directions of every (extreme, site) being descended, their RMSprop states and their
    running sums of |B|·R_B(v) and |B|·v (the current pass's, or the window's).

    Everything lives in flat float64 buffers allocated once: a site's directions of all
    ``extremes`` are one block of rows (one S_B·v product per step on the closed form), and the
    RMSprop update (torch.optim.RMSprop's, not centred, no weight decay), the running sums and
    the gradients' sign for ``"max"`` run once per step over all sites, in place."""

    def __init__(
        self,
        sites: Sequence[Site],
        extremes: Sequence[str],
        config: RayleighConfig,
        generator: torch.Generator,
    ) -> None:
        self.config, self.extremes = config, tuple(extremes)
        stacked = len(self.extremes)
        sizes = [stacked * site.width * site.fan_in_size for site in sites]
        units = sum(stacked * site.width for site in sites)
        self.values = torch.empty(sum(sizes), dtype=torch.float64)
        self.gradients = torch.empty_like(self.values)
        self.square_avg = torch.zeros_like(self.values)
        self.buffer = torch.zeros_like(self.values)
        self.average = torch.empty_like(self.values)
        self.update = torch.empty_like(self.values)
        self.direction_sums = torch.zeros_like(self.values)
        self.quotients = self.values.new_empty(units, 1)
        self.quotient_sums = self.values.new_zeros(units, 1)
        self.blocks: list[_Block] = []
        offset = unit = 0
        for site, size in zip(sites, sizes):
            rows, shape = stacked * site.width, (stacked * site.width, site.fan_in_size)
            flat, units_of = slice(offset, offset + size), slice(unit, unit + rows)
            self.blocks.append(
                _Block(
                    site.name,
                    site.width,
                    self.values[flat].view(shape),
                    self.gradients[flat].view(shape),
                    self.quotients[units_of],
                    self.quotient_sums[units_of],
                    self.direction_sums[flat].view(shape),
                )
            )
            offset, unit = offset + size, unit + rows
        # drawn extreme by extreme, site by site (min before max)
        for i, _ in enumerate(self.extremes):
            for site, block in zip(sites, self.blocks):
                draw = torch.rand(
                    site.width, site.fan_in_size, generator=generator, dtype=torch.float64
                )
                rows = slice(i * block.width, (i + 1) * block.width)
                block.directions[rows] = _normalised((2 * draw - 1) * config.init_scale)
        # ascend R for "max": descend R of −S, whose gradient is −∇R
        self.ascending = [
            block.gradients[i * block.width : (i + 1) * block.width]
            for block in self.blocks
            for i, extreme in enumerate(self.extremes)
            if extreme == "max"
        ]
        self.samples = 0

    def reset_sums(self) -> None:
        """Start the running sums afresh."""
        self.samples = 0
        self.quotient_sums.zero_()
        self.direction_sums.zero_()

    def step(self, batch: dict[str, SiteBatch], size: int, lr: float, record: bool) -> None:
        """One RMSprop step of every direction on S_B, adding v and R_B(v) before the step to the
        running sums when ``record``."""
        stacked = len(self.extremes)
        for block in self.blocks:
            v = block.directions
            products = batch[block.name].stacked_products(v, stacked)
            # rayleigh_gradient's operations, written into preallocated buffers: vᵀv and vᵀSv
            # in one row-wise reduction, and 2 / vᵀv in one division (``2 / tensor`` computes
            # 2·(1 / vᵀv), the same number: scaling by 2 commutes with rounding)
            torch.mul(v, v, out=block.squares)
            torch.mul(v, products, out=block.dots)
            torch.sum(block.terms, dim=2, keepdim=True, out=block.sums)
            torch.div(block.dotted, block.squared, out=block.quotients)
            torch.div(block.two, block.squared, out=block.scale)
            torch.mul(block.scale, products.sub_(block.quotients * v), out=block.gradients)
        for gradient in self.ascending:
            gradient.neg_()
        if record:  # v and R_B(v) before the step, as the code records them
            self.samples += size
            self.quotient_sums += self.quotients * size
            self.direction_sums += self.values * size
        c, gradient = self.config, self.gradients
        self.square_avg.mul_(c.alpha).addcmul_(gradient, gradient, value=1 - c.alpha)
        torch.sqrt(self.square_avg, out=self.average).add_(c.eps)
        self.buffer.mul_(c.momentum).addcdiv_(gradient, self.average)
        self.values.sub_(torch.mul(self.buffer, lr, out=self.update))
        for block in self.blocks:
            v = block.directions
            v.div_(torch.linalg.vector_norm(v, dim=1, keepdim=True).clamp_min_(1e-300))

    def means(self) -> dict[tuple[str, str], tuple[Tensor, Tensor]]:
        """The size-weighted means of R_B(v) and of v over the running sums, per key (extreme,
        site name), extreme by extreme."""
        samples = float(self.samples)
        means = {}
        for i, extreme in enumerate(self.extremes):
            for block in self.blocks:
                rows = slice(i * block.width, (i + 1) * block.width)
                means[(extreme, block.name)] = (
                    block.quotient_sums[rows, 0] / samples,
                    block.direction_sums[rows] / samples,
                )
        return means


def settled(
    previous: dict[tuple[str, str], tuple[Tensor, Tensor]],
    current: dict[tuple[str, str], tuple[Tensor, Tensor]],
    tolerance: float,
) -> bool:
    """Whether every unit's mean of R_B moved by at most ``tolerance`` × its site's largest |mean|
    and its mean direction (renormalised) by at most ``tolerance`` in norm, from ``previous`` to
    ``current`` means."""
    for key, (values, vectors) in current.items():
        old_values, old_vectors = previous[key]
        scale = old_values.abs().max().clamp_min(1e-300)
        if float((values - old_values).abs().max()) > tolerance * float(scale):
            return False
        moved = torch.linalg.vector_norm(_normalised(vectors) - _normalised(old_vectors), dim=1)
        if float(moved.max()) > tolerance:
            return False
    return True


def next_jump(config: RayleighConfig, step: int, pass_length: int) -> int:
    """Where a run whose means settled at the pass boundary ``step`` (before the window)
    continues: the last pass boundary at or before the next learning-rate milestone, or the
    window's start when no milestone lies before it. Pass boundaries are ``config.steps`` minus
    whole passes, so the run still ends on one."""
    window_start = config.window_start(pass_length)
    ahead = [math.floor(m * config.steps) for m in config.milestones]
    ahead = [milestone for milestone in ahead if step < milestone < window_start]
    if not ahead:
        return window_start
    passes_before = math.ceil((config.steps - min(ahead)) / pass_length)
    return max(step, config.steps - passes_before * pass_length)


def _batch(
    net: GrowableNet,
    ctx: GrowthContext,
    routes: Sequence[CurvatureRoute],
    cached: dict[str, SiteBatch] | None,
    index: Tensor,
) -> dict[str, SiteBatch]:
    """Every site's taps of the mini-batch ``index``: gathered from the set's cached taps, or run
    through the taps when they are not cached. (Gathering a whole pass at once saved a few per
    cent of a step on small sites but held the taps twice: +1.5 GiB on MobileNetV1.)"""
    if cached is None:
        return site_batches(net, ctx, routes, ctx.inputs[index], ctx.targets[index])
    return {name: whole.take(index) for name, whole in cached.items()}


def rayleigh_extremes(
    net: GrowableNet,
    ctx: GrowthContext,
    sites: Sequence[Site],
    config: RayleighConfig,
    extremes: Sequence[str] = ("min",),
    matrix: str = "exact",
    report: dict | None = None,
) -> dict[str, dict[str, RayleighEstimate]]:
    """Estimate the smallest (``"min"``) and/or largest (``"max"``, descent on R of −S) eigenpair
    of every unit's splitting matrix ``matrix`` (``_splitting.SPLITTING_MATRICES``) at ``sites``.

    The taps of all sites are taken once for the whole statistics set (``statistics_set_batches``,
    within ``config.cache_bytes``; otherwise ONE forward/backward per step). Every step draws
    one mini-batch (seeded order from ``ctx.generator``), gathers its taps, forms S_B·v for every
    unit and every requested extreme, sets ∇R by hand, takes an RMSprop step and renormalises.
    Directions start U(−init_scale, init_scale) (drawn site by site, ``min`` before ``max``),
    normalised. With ``config.tolerance`` > 0 the means of R_B and v are compared after every
    whole pass: once they settle (``settled``) before the window the run skips to the next
    milestone (``next_jump``), and in the window it stops. ``report``, if given, receives the
    tolerance, the statistics samples, the passes that sized the run (None when ``steps`` was
    set), the steps of the schedule (``RayleighConfig.steps_for``), the steps taken and whether
    the run stopped early.
    Returns ``{extreme: {site name: RayleighEstimate}}``.
    """
    for extreme in extremes:
        if extreme not in EXTREMES:
            raise ValueError(f"unknown extreme {extreme!r}; choose from {EXTREMES}")
    count, tolerance = len(ctx.inputs), config.tolerance
    passes_set = config.passes if config.steps is None else None
    config = config.schedule(count)
    state = _Directions(sites, extremes, config, ctx.generator)
    pass_length = math.ceil(count / config.batch_size)
    window_start = config.window_start(pass_length)
    batches = minibatch_indices(count, config.batch_size, config.steps, ctx.generator)
    routes = [curvature_route(site, matrix) for site in sites]
    cached = statistics_set_batches(net, ctx, routes, config.batch_size, config.cache_bytes)
    step, taken, previous = 0, 0, None
    for index in batches:
        if step == config.steps:  # after a jump, the schedule ends before the batches
            break
        batch = _batch(net, ctx, routes, cached, index.to(ctx.device))
        record = step >= window_start or tolerance > 0
        state.step(batch, len(index), config.lr_at(step), record)
        step, taken = step + 1, taken + 1
        if tolerance == 0 or (config.steps - step) % pass_length:
            continue  # checks come at pass boundaries only
        if state.samples >= count:  # not after the first pass when cut short
            current = state.means()
            if previous is not None and settled(previous, current, tolerance):
                if step > window_start:
                    break
                step = next_jump(config, step, pass_length)
            previous = current
        if step <= window_start:
            state.reset_sums()
    if report is not None:
        stopped = step < config.steps
        report.update(
            tolerance=tolerance,
            samples=count,
            passes=passes_set,
            steps=config.steps,
            steps_taken=taken,
            stopped=stopped,
        )
    estimates: dict[str, dict[str, RayleighEstimate]] = {extreme: {} for extreme in extremes}
    for (extreme, name), (values, mean) in state.means().items():
        estimates[extreme][name] = RayleighEstimate(
            values=values,
            vectors=canonical_sign(_normalised(mean)),
            mean_norms=torch.linalg.vector_norm(mean, dim=1),
        )
    return estimates


def search_costs(site: Site, samples: int, steps: int, batch_size: int) -> dict[str, int]:
    """Multiply-adds of the two ways to a unit's extreme eigenpairs at ``site`` (n units, fan-in
    p), per row of a sample (conv positions multiply both alike): this estimator's ``steps``
    steps of ``batch_size`` rows, two products x̃Vᵀ and x̃ᵀ(·) of n·p each, against forming every
    S_j from the ``samples`` rows, n·p² (its ``eigh``, ~n·p³, is left out: p ≪ samples). So the
    exact computation is the cheaper while samples·p ≤ 2·steps·batch_size."""
    n, p = site.width, site.fan_in_size
    return {"estimator": 2 * steps * batch_size * n * p, "exact": samples * n * p * p}


def rayleigh_eigen(
    net: GrowableNet,
    ctx: GrowthContext,
    sites: Sequence[Site],
    config: RayleighConfig,
    matrix: str = "exact",
) -> dict[str, Eigen]:
    """Both extreme eigenpairs per site in the shape of ``site_eigen`` (for ``signed-s2d``):
    one run of ``rayleigh_extremes(..., ("min", "max"))``; the spectral norm is estimated as
    max(|λ̂_min|, |λ̂_max|)."""
    both = rayleigh_extremes(net, ctx, sites, config, ("min", "max"), matrix)
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
    routes = [curvature_route(site, matrix) for site in sites]
    totals = {site.name: torch.zeros(site.width, dtype=torch.float64) for site in sites}
    count = 0
    for inputs, targets in ctx.batches():
        batch = site_batches(net, ctx, routes, inputs, targets)
        for site in sites:
            v = vectors[site.name]
            totals[site.name] += (v * batch[site.name].products(v)).sum(dim=1) * len(inputs)
        count += len(inputs)
    return {name: total / count for name, total in totals.items()}
