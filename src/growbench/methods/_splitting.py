"""The splitting machinery shared by ``s2d``, ``signed-s2d`` and ``fast-s2d``.

All three score a unit j by its splitting matrix (docs/methods/s2d.md)

    S_j = E[ g_j · σ''(z_j) · b_j² · x̃ x̃ᵀ ]

with g_j the per-sample loss gradient w.r.t. the unit's output, b_j its eval-mode BatchNorm gain
and x̃ the producer's input (an im2col patch for a conv) with the constant 1 last when the
producer has a bias; E averages over samples and sums over positions. From the statistics taps
this is, per site and unit, ``S_j = x̃ᵀ diag(c_j) x̃ / N`` with c_rj = g σ''(z) b² per row
r (a sample, or a sample and position), so no double-backward per unit is ever run. ``fast-s2d``
needs only products S_j v_j, which are ``x̃ᵀ (c ⊙ (x̃ Vᵀ)) / N``, never forming S.

ReLU's σ'' is 0 almost everywhere, so its units are scored with the softplus(β = 3) surrogate
(convention 5, docs/conventions.md) and the method's loss prediction is then a ranking heuristic.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import partial
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from growbench.methods.base import GrowthContext, GrowthEvent
from growbench.nn import Activation, DepthwiseConv2d, GrowableNet, Site, Slot, collect_taps
from growbench.nn.activations import LEAKY_SLOPE, RELU_SURROGATE_BETA, activation_info
from growbench.nn.growable import eval_mode
from growbench.nn.layer_maps import norm_slope, pair, with_ones

# The splitting matrix a method forms: "exact", the Hessian of the unit's whole per-unit path
# (with a second curved activation when the path has one: ``SecondCurvature``,
# ``PathCurvature``); "first-activation", the official codes' E[g σ''(z) b² x̃x̃ᵀ] at the first
# activation only, which is the exact matrix on every site ``closed_form`` accepts.
SPLITTING_MATRICES = ("exact", "first-activation")
UNFOLD_SAMPLE_BYTES = 2**16
"""A closed-form conv site's batches are rows (x̃ and c per sample and output position, as a
Linear site's) when those take at most this many bytes per sample: on small maps two GEMMs on
the rows cost a fraction of a convolution and its weight gradient (about 35 against 150 µs per
product on the digits CNN's sites). Larger sites stay convolutions: their rows would hold each
input value once per kernel tap."""


def second_derivative(activation: str, z: Tensor) -> Tensor:
    """σ''(z) for the S2D family from the activation table (convention 5, docs/conventions.md):
    surrogates where σ'' is 0 or a kink."""
    curvature = activation_info(activation).second_derivative
    if curvature is None:
        raise ValueError(f"no second derivative known for activation {activation!r}")
    return curvature(z)


def splitting_refusal(site: Site) -> str | None:
    """Why the S2D family cannot score ``site``: an activation on its path without a σ'' in the
    table (one with trained per-unit parameters, such as SENN's rational activation)."""
    for act in site.activations:
        if activation_info(act.name).parametric:
            return f"activation {act.name!r} has per-unit parameters and no σ'' in the table"
    return None


def splittable_sites(sites: list[Site]) -> list[Site]:
    """Sites whose activation has curvature (linear units are never split)."""
    return [site for site in sites if not site.is_linear]


def uses_surrogate(sites: list[Site]) -> bool:
    return any(
        activation_info(act.name).surrogate_curvature for site in sites for act in site.activations
    )


def prediction_is_heuristic(sites: list[Site], matrix: str = "exact") -> bool:
    """Whether the second-order prediction (ε²/2)·vᵀSv is only a ranking heuristic here: a
    surrogate σ'' was used, a max pool (local or global) follows a site (two copies of a
    channel may pick different maxima when a pooling window holds near-ties, a first-order
    change S misses), or the first-activation matrix stands in for a longer path's."""
    truncated = matrix == "first-activation" and not all(closed_form(site) for site in sites)
    return any(site.max_pooled for site in sites) or uses_surrogate(sites) or truncated


def closed_form(site: Site) -> bool:
    """Whether S_j = E[g_j σ''(z_j) b_j² x̃x̃ᵀ] is the whole Hessian of the unit's path: its only
    curved module is its activation, with at most the producer's BatchNorm before it (what comes
    after is linear or piecewise linear per unit, so g at the activation's output carries it).
    A MobileNet site's path has a second activation after the depthwise conv
    (``SecondCurvature``); any other path gets Hessian-vector products (``PathCurvature``)."""
    curved = [m for m in site.activations if not activation_info(m.name).is_linear]
    return len(curved) <= 1 and site.between.index(site.act) <= (site.norm is not None)


def check_splitting_matrix(method: str, matrix: str) -> None:
    """A method's ``splitting_matrix`` option, checked where its Config is."""
    if matrix not in SPLITTING_MATRICES:
        raise ValueError(
            f"{method}: unknown splitting_matrix {matrix!r}; choose {SPLITTING_MATRICES}"
        )


def curvature_route(site: Site, matrix: str = "exact") -> CurvatureRoute:
    """How S_j is formed at ``site`` for the splitting matrix ``matrix`` (``SPLITTING_MATRICES``):
    ``ClosedRoute`` (E[c x̃x̃ᵀ] from the first activation), ``SecondRoute``
    (``SecondCurvature``) or ``PathRoute`` (``PathCurvature``). The one place that chooses."""
    if matrix not in SPLITTING_MATRICES:
        raise ValueError(f"unknown splitting_matrix {matrix!r}; choose {SPLITTING_MATRICES}")
    if matrix == "first-activation" or closed_form(site):
        return ClosedRoute(site)
    second = SecondCurvature.of(site)
    return SecondRoute(site, second) if second else PathRoute(site)


_SHAPE_KEEPING = (Slot, nn.Identity, nn.Dropout, nn.Dropout2d)
_LINEAR_SEGMENT = (DepthwiseConv2d, nn.BatchNorm2d, *_SHAPE_KEEPING)


class SecondCurvature:
    """The Hessian of a path ``[BN] σ₁ L σ₂`` in the producer's output U, where L is linear per
    unit (a depthwise conv, a BatchNorm, empty slots: the MobileNet site) and σ₂ feeds the
    consumer directly. With z₁, z₂ the activations' inputs, g₁, g₂ the gradients at their
    outputs, b₁ the first BatchNorm's gain and L the linear part of the segment between:

        H_U = diag(g₁ σ₁''(z₁) b₁²) + D Lᵀ diag(g₂ σ₂''(z₂)) L D,    D = diag(σ₁'(z₁) b₁)

    so S_j = E[c₁ x̃x̃ᵀ] + E[Σ_y e₂ w_y w_yᵀ] with w = L_j(d ⊙ X), and S·v needs two more
    depthwise convs, no autograd graph (``times``). ``of`` returns None for other paths."""

    def __init__(self, site: Site, linear: list[nn.Module], second: Activation) -> None:
        self.site, self.linear, self.second = site, linear, second
        self.kernels, self.gain = self._folded(linear)

    @staticmethod
    def _folded(linear: list[nn.Module]) -> tuple[list[tuple[Tensor, tuple]], Tensor | None]:
        """L's depthwise kernels with their geometries, every BatchNorm's slope multiplied into
        the first kernel (a per-channel gain commutes with a depthwise conv and its zero
        padding), so a product runs no full-map multiply for the gains; the gain stays apart
        only when L has no conv."""
        kernels, gain = [], None
        for module in linear:
            if isinstance(module, DepthwiseConv2d):
                geometry = (pair(module.stride), pair(module.padding), pair(module.dilation))
                kernels.append((module.weight.detach(), geometry))
            elif isinstance(module, nn.BatchNorm2d):
                slope = norm_slope(module).detach()
                gain = slope if gain is None else gain * slope
        if kernels and gain is not None:
            kernels[0] = (kernels[0][0] * gain.reshape(-1, 1, 1, 1), kernels[0][1])
            gain = None
        return kernels, gain

    @classmethod
    def of(cls, site: Site) -> SecondCurvature | None:
        between = site.between
        curved = [i for i, m in enumerate(between) if isinstance(m, Activation)]
        curved = [i for i in curved if not activation_info(between[i].name).is_linear]
        if len(curved) != 2 or not site.producer_map.is_conv:
            return None
        first, second = curved
        linear, rest = between[first + 1 : second], between[second + 1 :]
        if first != (site.norm is not None) or not all(
            isinstance(m, _LINEAR_SEGMENT) for m in linear
        ):
            return None
        if not all(isinstance(m, _SHAPE_KEEPING) for m in rest):
            return None
        return cls(site, linear, between[second])

    def coefficients(self, taps) -> tuple[Tensor, Tensor, Tensor]:
        """(c₁, d, e₂) per sample and unit, shaped like U, from eval-mode taps."""
        site = self.site
        gain = site.norm_gain().to(taps.pre).reshape(1, -1, 1, 1)
        c1 = curvature_coefficients(site, taps.pre, taps.grad_post)
        d = first_derivative(site.act, taps.pre) * gain
        with torch.no_grad(), eval_mode(self.linear):
            z2 = taps.post
            for module in self.linear:
                z2 = module(z2)
        e2 = taps.grad_consumer_input * second_derivative(self.second.name, z2)
        return c1, d, e2

    def _apply(self, maps: Tensor, units: slice | None = None) -> tuple[Tensor, list]:
        """L (its linear part: no biases, no means) on N × C × H × W maps of all units, or of
        one unit ``units`` repeated over the C channels; and the input shapes, for ``_adjoint``."""
        shapes = []
        for weight, geometry in self.kernels:
            shapes.append(maps.shape)
            weight = weight.to(maps)
            if units is not None:
                weight = weight[units].expand(maps.shape[1], -1, -1, -1)
            maps = F.conv2d(maps, weight, None, *geometry, groups=maps.shape[1])
        if self.gain is not None:
            gain = self.gain.to(maps)
            gain = gain[units].expand(maps.shape[1]) if units is not None else gain
            maps = maps * gain.reshape(1, -1, 1, 1)
        return maps, shapes

    def _adjoint(self, maps: Tensor, shapes: list) -> Tensor:
        """Lᵀ of all units' maps: each kernel's transposed convolution (which torch runs 2-3×
        faster than the input gradient of the convolution, the same numbers), last one first."""
        if self.gain is not None:
            maps = maps * self.gain.to(maps).reshape(1, -1, 1, 1)
        for (weight, (stride, padding, dilation)), shape in zip(
            reversed(self.kernels), reversed(shapes), strict=True
        ):
            weight = weight.to(maps)
            # the input rows and columns the strided convolution never reached, given back
            extra = tuple(
                shape[2 + axis]
                - (maps.shape[2 + axis] - 1) * stride[axis]
                + 2 * padding[axis]
                - dilation[axis] * (weight.shape[2 + axis] - 1)
                - 1
                for axis in (0, 1)
            )
            maps = F.conv_transpose2d(
                maps, weight, None, stride, padding, extra, maps.shape[1], dilation
            )
        return maps

    def times(self, c1: Tensor, d: Tensor, e2: Tensor, direction: Tensor) -> Tensor:
        """H_U · direction for every unit at once (shaped like U)."""
        along, shapes = self._apply(d * direction)
        return torch.addcmul(c1 * direction, d, self._adjoint(e2 * along, shapes))

    def matrices(self, producer_input: Tensor, c1, d, e2, units: range) -> Tensor:
        """Σ_batch S_j (float64) for ``units``: the closed form's term plus E[Σ_y e₂ w wᵀ]."""
        site = self.site
        patches = with_ones(site.input_patches(producer_input), site.producer.bias is not None)
        count, p = patches.shape[:2]
        maps_shape = (count, p, *d.shape[2:])
        rows = patches.transpose(1, 2).reshape(-1, p)
        first = c1.permute(0, 2, 3, 1).reshape(-1, site.width)
        parts = []
        for j in units:
            one = (rows * first[:, j, None]).T @ rows
            w, _ = self._apply(
                (patches * d[:, j].reshape(count, 1, -1)).reshape(maps_shape), slice(j, j + 1)
            )
            w = w.flatten(2)  # N × p × positions after the segment
            weighted = w * e2[:, j].reshape(count, 1, -1)
            parts.append(one + torch.einsum("npl,nql->pq", weighted, w))
        return torch.stack(parts).double()


def first_derivative(act: Activation, z: Tensor) -> Tensor:
    """σ'(z) as autograd sees the activation module (the zoo's relu: 1 at 0)."""
    with torch.enable_grad():
        leaf = z.detach().requires_grad_(True)
        (slope,) = torch.autograd.grad(act(leaf).sum(), leaf)
    return slope


class _RectifierCurvature(torch.autograd.Function):
    """A (leaky) rectifier with its true value and slope and, for second derivatives, the
    softplus(β = 3) surrogate's curvature (convention 5, docs/conventions.md): the backward pass is
    written in differentiable ops whose derivative in z is the surrogate σ''."""

    @staticmethod
    def forward(ctx, z: Tensor, leak: float) -> Tensor:
        ctx.save_for_backward(z)
        ctx.leak = leak
        return torch.where(z < 0, leak * z, z)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (z,) = ctx.saved_tensors
        slope = torch.where(z < 0, ctx.leak, 1.0).to(z)
        smooth = (1 - ctx.leak) * torch.sigmoid(RELU_SURROGATE_BETA * z)
        return grad * (slope + smooth - smooth.detach()), None


def curvature_forward(module: nn.Module, maps: Tensor) -> Tensor:
    """``module(maps)``, with rectifiers given the surrogate curvature for double backward."""
    if isinstance(module, Activation) and module.name in ("relu", "leaky_relu"):
        return _RectifierCurvature.apply(maps, 0.0 if module.name == "relu" else LEAKY_SLOPE)
    return module(maps)


class PathCurvature:
    """The curvature of a site's whole per-unit path for one batch: H_U, the Hessian of
    Ψ(U) = Σ_samples ĝ · path(U) in the producer's output U (ĝ = the gradient at the consumer's
    input, held fixed). It is block-diagonal over units, so S_j v_j = J_jᵀ H_U (J V) for every unit
    at once, with J the (linear) producer map: Hessian-vector products by double backward."""

    def __init__(self, site: Site, producer_input: Tensor, path_grad: Tensor) -> None:
        self.site = site
        with torch.no_grad():
            outputs = site.producer(producer_input)
        self.outputs = outputs.detach().requires_grad_(True)
        with torch.enable_grad(), eval_mode(site.between):
            maps = self.outputs
            for module in site.between:
                maps = curvature_forward(module, maps)
            value = (maps * path_grad).sum()
            (self.gradient,) = torch.autograd.grad(value, self.outputs, create_graph=True)

    def times(self, direction: Tensor) -> Tensor:
        """H_U · direction (shaped like U)."""
        (product,) = torch.autograd.grad(
            self.gradient, self.outputs, grad_outputs=direction, retain_graph=True
        )
        return product


@dataclass
class SiteRows:
    """One batch of a site as rows: x̃ (rows × p) and c = g·σ''(z)·b² (rows × n)."""

    inputs: Tensor
    coefficients: Tensor


def site_rows(site: Site, producer_input: Tensor, pre: Tensor, grad_post: Tensor) -> SiteRows:
    """Rows of x̃ and c for one batch of taps at ``site`` (conv: one row per sample and position)."""
    view = site.producer_map
    patches = view.patches(producer_input)  # N × p × positions
    inputs = patches.transpose(1, 2).reshape(-1, patches.shape[1])
    pre, grad_post = view.output_rows(pre), view.output_rows(grad_post)
    inputs = with_ones(inputs, site.producer.bias is not None)
    return SiteRows(inputs, curvature_coefficients(site, pre, grad_post))


def curvature_coefficients(site: Site, pre: Tensor, grad_post: Tensor) -> Tensor:
    """c = g·σ''(z)·b² of the first activation, shaped like ``pre`` (units on dim 1: rows × n,
    or N × n × H × W)."""
    gain = site.norm_gain().to(pre).reshape(1, -1, *(1,) * (pre.dim() - 2))
    return grad_post * second_derivative(site.activation, pre) * gain * gain


class CurvatureRoute:
    """How S_j is formed at one site, chosen once by ``curvature_route`` so that no caller
    dispatches again: the taps a pass must record (``taps``), the per-sample tensors S·v needs
    (``batch``: each indexed by sample first; the producer's input under ``"inputs"``, or, on
    the closed form, the rows x̃ and c of each sample under ``"rows"`` and ``"coefficients"``),
    H_U· for such a batch (``operator``, U the producer's output) and Σ_batch S_j itself
    (``matrices``)."""

    name: ClassVar[str] = ""
    taps: ClassVar[tuple[str, ...]] = ()

    def __init__(self, site: Site) -> None:
        self.site = site

    def batch(self, taps) -> dict[str, Tensor]:
        raise NotImplementedError

    def operator(self, batch: dict[str, Tensor]) -> Callable[[Tensor], Tensor]:
        raise NotImplementedError

    def matrices(self, taps, units: range) -> Tensor:
        raise NotImplementedError


class ClosedRoute(CurvatureRoute):
    """S_j = E[c x̃x̃ᵀ] (``closed_form``, or the first-activation matrix): a batch is rows
    (``site_rows``, N × positions × p and N × positions × n) at a Linear producer and at a conv
    whose rows are small (``unfolds``); else the conv's input and c shaped like U."""

    name = "closed"
    taps = ("input", "pre", "grad_post")

    def batch(self, taps) -> dict[str, Tensor]:
        if self.unfolds(taps.input):
            rows = site_rows(self.site, taps.input, taps.pre, taps.grad_post)
            count = len(taps.input)
            return {
                "rows": rows.inputs.view(count, -1, rows.inputs.shape[1]),
                "coefficients": rows.coefficients.view(count, -1, rows.coefficients.shape[1]),
            }
        coefficients = curvature_coefficients(self.site, taps.pre, taps.grad_post)
        return {"inputs": taps.input, "coefficients": coefficients}

    def unfolds(self, producer_input: Tensor) -> bool:
        """Whether a batch of this producer input is taken as rows: always at a Linear
        producer; at a conv when its rows take at most ``UNFOLD_SAMPLE_BYTES`` per sample."""
        view, site = self.site.producer_map, self.site
        if not view.is_conv:
            return True
        positions = math.prod(view.output_size(*producer_input.shape[2:]))
        row_bytes = (site.fan_in_size + site.width) * producer_input.element_size()
        return positions * row_bytes <= UNFOLD_SAMPLE_BYTES

    def operator(self, batch: dict[str, Tensor]) -> Callable[[Tensor], Tensor]:
        coefficients = batch["coefficients"]
        return lambda direction: coefficients * direction

    def matrices(self, taps, units: range) -> Tensor:
        rows = site_rows(self.site, taps.input, taps.pre, taps.grad_post)
        # one (p × rows)(rows × p) product per unit: an einsum over three operands would
        # build a rows × units × p intermediate
        return torch.stack(
            [(rows.inputs * rows.coefficients[:, j, None]).T @ rows.inputs for j in units]
        ).double()


class SecondRoute(CurvatureRoute):
    """A MobileNet site: ``SecondCurvature``'s c₁, d and e₂, two depthwise convs per product."""

    name = "second"
    taps = ("input", "pre", "post", "grad_post", "grad_consumer_input")

    def __init__(self, site: Site, curvature: SecondCurvature) -> None:
        super().__init__(site)
        self.curvature = curvature

    def batch(self, taps) -> dict[str, Tensor]:
        c1, d, e2 = self.curvature.coefficients(taps)
        return {"inputs": taps.input, "coefficients": c1, "slopes": d, "second": e2}

    def operator(self, batch: dict[str, Tensor]) -> Callable[[Tensor], Tensor]:
        return partial(
            self.curvature.times, batch["coefficients"], batch["slopes"], batch["second"]
        )

    def matrices(self, taps, units: range) -> Tensor:
        return self.curvature.matrices(taps.input, *self.curvature.coefficients(taps), units)


class PathRoute(CurvatureRoute):
    """Any other path: the gradient at the consumer's input and Hessian-vector products through
    the path (``PathCurvature``, its graph built once per batch)."""

    name = "path"
    taps = ("input", "grad_consumer_input")

    def batch(self, taps) -> dict[str, Tensor]:
        return {"inputs": taps.input, "path_grad": taps.grad_consumer_input}

    def operator(self, batch: dict[str, Tensor]) -> Callable[[Tensor], Tensor]:
        return PathCurvature(self.site, batch["inputs"], batch["path_grad"]).times

    def matrices(self, taps, units: range) -> Tensor:
        return _path_matrices(self.site, taps.input, taps.grad_consumer_input, units)


def route_taps(
    net: GrowableNet, ctx: GrowthContext, routes: Sequence[CurvatureRoute], inputs, targets
) -> dict:
    """One eval-mode taps pass with what ``routes`` need at their sites."""
    want = set().union(*(route.taps for route in routes))
    sites = [route.site for route in routes]
    taps, _ = collect_taps(net, inputs, targets, ctx.loss_fn, sites=sites, want=want)
    return taps


def site_taps(
    net: GrowableNet,
    ctx: GrowthContext,
    sites: list[Site],
    inputs,
    targets,
    matrix: str = "exact",
) -> dict:
    """One eval-mode taps pass with what the splitting matrices of ``sites`` need."""
    routes = [curvature_route(site, matrix) for site in sites]
    return route_taps(net, ctx, routes, inputs, targets)


def unit_chunks(site: Site, max_stat_bytes: int) -> list[range]:
    """Ranges of units whose float64 splitting matrices fit in ``max_stat_bytes`` together."""
    per_unit = site.fan_in_size**2 * 8
    size = max(1, max_stat_bytes // per_unit)
    return [range(start, min(start + size, site.width)) for start in range(0, site.width, size)]


def splitting_matrices(
    net: GrowableNet, ctx: GrowthContext, site: Site, units: range, matrix: str = "exact"
) -> Tensor:
    """S_j for ``units`` of ``site`` (len × p × p, float64) over the whole statistics set."""
    total = None
    count = 0
    route = curvature_route(site, matrix)
    for inputs, targets in ctx.batches():
        taps = route_taps(net, ctx, [route], inputs, targets)[site.name]
        product = route.matrices(taps, units)
        total = product if total is None else total + product
        count += len(inputs)
    return (total / count + total.transpose(1, 2) / count) / 2


def _path_matrices(site: Site, producer_input: Tensor, path_grad: Tensor, units: range) -> Tensor:
    """Σ_batch S_j (float64) from p Hessian-vector products through the path: the direction e_a
    for every unit at once gives column a of every S_j."""
    curvature = PathCurvature(site, producer_input, path_grad)
    patches = with_ones(site.input_patches(producer_input), site.producer.bias is not None)
    shape = curvature.outputs.shape
    columns = []
    for a in range(patches.shape[1]):
        direction = patches[:, a : a + 1].expand(-1, site.width, -1).reshape(shape)
        product = curvature.times(direction).reshape(shape[0], site.width, -1)[:, list(units)]
        columns.append(torch.einsum("njl,npl->jp", product, patches))
    return torch.stack(columns, dim=2).double()


def splitting_products(rows: SiteRows, directions: Tensor, batch_size: int) -> Tensor:
    """S_B v_j for every unit j of one batch (n × p): x̃ᵀ (c ⊙ (x̃ Vᵀ)) / |B|, S never formed."""
    projections = rows.inputs @ directions.T.to(rows.inputs)  # rows × n
    weighted = rows.coefficients * projections
    return (weighted.T @ rows.inputs).double() / batch_size


def canonical_sign(vectors: Tensor) -> Tensor:
    """Flip each row so its largest-magnitude entry (first on ties) is positive (convention 6)."""
    index = vectors.abs().argmax(dim=-1, keepdim=True)
    signs = torch.sign(torch.gather(vectors, -1, index))
    signs[signs == 0] = 1
    return vectors * signs


@dataclass
class Eigen:
    """Extreme eigenpairs of every unit's splitting matrix (float64, unit vectors, canonical)."""

    lambda_min: Tensor
    vector_min: Tensor
    lambda_max: Tensor
    vector_max: Tensor
    matrix_norm: Tensor  # spectral norm of each S_j, for relative tolerances


def extreme_eigenpairs(matrices: Tensor) -> Eigen:
    symmetric = (matrices + matrices.transpose(1, 2)) / 2
    values, vectors = torch.linalg.eigh(symmetric.double())
    return Eigen(
        lambda_min=values[:, 0],
        vector_min=canonical_sign(vectors[:, :, 0]),
        lambda_max=values[:, -1],
        vector_max=canonical_sign(vectors[:, :, -1]),
        matrix_norm=values.abs().max(dim=1).values,
    )


def site_eigen(
    net: GrowableNet,
    ctx: GrowthContext,
    site: Site,
    max_stat_bytes: int,
    event: GrowthEvent | None = None,
    matrix: str = "exact",
) -> tuple[Eigen, int]:
    """Eigenpairs of every unit of ``site``, chunked so at most ``max_stat_bytes`` of splitting
    matrices are held at once; also returns the bytes of the largest chunk of matrices (the
    accumulation briefly holds about twice that). With an ``event``, the time spent forming the
    matrices is charged to its ``stats`` phase and the eigen-decompositions to ``solve``."""
    parts = []
    peak = 0
    for units in unit_chunks(site, max_stat_bytes):
        with _phase(event, "stats"):
            matrices = splitting_matrices(net, ctx, site, units, matrix)
        peak = max(peak, matrices.numel() * matrices.element_size())
        with _phase(event, "solve"):
            parts.append(extreme_eigenpairs(matrices))
        del matrices
    eigen = Eigen(*(torch.cat([getattr(p, f) for p in parts]) for f in Eigen.__dataclass_fields__))
    return eigen, peak


def _phase(event: GrowthEvent | None, name: str) -> AbstractContextManager:
    return nullcontext() if event is None else event.phase(name)


@dataclass
class PlannedSplit:
    """One unit to split: offspring fan-in deltas (m × p) and fan-out weights (m,)."""

    site: str
    unit: int
    deltas: Tensor
    weights: Tensor
    kind: str


def apply_splits(net: GrowableNet, splits: list[PlannedSplit]) -> dict[str, list]:
    """Apply the planned splits site by site from the output side to the input side (convention 9,
    docs/conventions.md), so directions computed on the old net never need re-indexing. Returns the
    event's ``selected`` entries."""
    selected: dict[str, list] = {}
    by_site: dict[str, list[PlannedSplit]] = {}
    for split in splits:
        by_site.setdefault(split.site, []).append(split)
    for site in reversed(net.sites):  # output side first
        planned = by_site.get(site.name)
        if not planned:
            continue
        copies = {len(split.weights) for split in planned}
        for m in sorted(copies):  # one split call per offspring count
            group = [split for split in planned if len(split.weights) == m]
            site.split(
                [split.unit for split in group],
                torch.stack([split.deltas for split in group]),
                torch.stack([split.weights for split in group]),
            )
        selected[site.name] = [[split.unit, split.kind] for split in planned]
    return selected
