"""What a site's new units would add to its consumer: the statistics TINY and GradMax share.

A new unit at a site has fan-in α (a row over the producer's patches x̃, the constant 1 last
when the producer has a bias) and fan-out ω. Its producer output αX runs through the site's
per-unit path at the new-unit entries (BatchNorm and depthwise filters are the identity for it)
and is read by the consumer. Linearised at 0, the path is the slope ∏σ'(0) of its activations
times a *linear part* ``linear_path``: pooling, the depthwise conv's strided identity, nothing for
BatchNorm, dropout and the slot. Where the path holds a max pool, which is not linear in α, a
method picks how it stands in: ``"average"`` (the pool's average over the same windows, TINY's
choice for choosing α and ω) or ``"first"`` (where autograd routes the gradient of an all-zero
input: each window's first element, which is exact for GradMax's zero-fan-in units).

Let B = what the consumer reads of the linear part applied to the producer patch maps: for a
conv consumer its im2col taps, N × p × T × O (T kernel taps, O output positions); for a Linear
consumer after a flatten, the positions of each unit, N × p × T × 1 (T = positions, 1 for a
global pool). With h̃ the consumer's input (its taps for a conv, the constant 1 last with a bias)
and g_a the per-sample gradient at the consumer's output, E the mean over samples and the sum
over output positions (notation of the method specifications):

    S_x = E[Σ_t B_t B_tᵀ]   S_h = E[h̃ h̃ᵀ]   M_x[a, (c, t)] = E[B_{t,a} g_c]   M_h = E[h̃ g_aᵀ]
    P[t, a, e] = E[B_{t,a} h̃_e]   (with T = 1 simply P = E[x̃ h̃ᵀ])

so a new unit adds σ'(0)·Σ_t ω[:, t] α·B_t to the consumer's output, to first order. This covers
Linear→Linear (T = O = 1), conv → global pool → Linear (B = the position-averaged patch), conv →
[pool] → conv (GroMo 0.1.0's ``FullConv2dGrowingModule`` definitions, whose S_growth drops the
cross-tap products t ≠ t', so the SVD solves a tap-decoupled quadratic; the first-order gain
FO_exact = Δ − σ'(0)·tr(ωαM_x) is exact regardless), a conv read by a Linear at several flattened
positions, and the MobileNet path through a depthwise conv. With T = 1 every statistic is one
Gram matrix of [B | h̃ | g_a] rows (sample and position), summed across batches in float64 and cut
once; T > 1 uses the tensor products. Per-batch products run in the model dtype (convention 3,
docs/conventions.md).

``bottleneck_refusal`` says why a site cannot be described this way (a module on the path whose
linear part is unknown, a Linear producer read by a conv, σ(0) ≠ 0, ...).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from growbench.methods.base import GrowthContext
from growbench.nn import Activation, DepthwiseConv2d, GrowableNet, Site, Slot, Taps, collect_taps
from growbench.nn.activations import activation_info
from growbench.nn.growable import eval_mode
from growbench.nn.layer_maps import pair, with_ones
from growbench.nn.units import new_unit_forward

LINEAR_KINDS = frozenset({"Linear", "Linear+BN"})
MAX_POOL_RULES = ("average", "first")
_PER_UNIT = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    Activation,
    Slot,
    DepthwiseConv2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.MaxPool2d,
    nn.AdaptiveMaxPool2d,
    nn.Dropout,
    nn.Dropout2d,
    nn.Identity,
    nn.Flatten,
)


def bottleneck_refusal(site: Site) -> str | None:
    """Why a site's new units cannot be described by these statistics (None when they can)."""
    producer, consumer = site.producer_map, site.consumer_map
    for role, view in (("producer", producer), ("consumer", consumer)):
        if view.refusal() is not None:
            return f"{role} conv with {view.refusal()}"
    if consumer.is_conv and not producer.is_conv:
        return "Linear producer read by a Conv2d consumer"
    for position, module in enumerate(site.between):
        if not isinstance(module, _PER_UNIT):
            return f"{type(module).__name__} on the path between producer and consumer"
        if isinstance(module, nn.MaxPool2d) and (
            pair(module.dilation) != (1, 1) or module.ceil_mode
        ):
            return "a dilated or ceil-mode max pool between producer and consumer"
        if isinstance(module, nn.AvgPool2d) and (
            module.ceil_mode or module.divisor_override is not None
        ):
            return "a ceil-mode or divisor-override average pool between producer and consumer"
        if isinstance(module, nn.Flatten) and position != len(site.between) - 1:
            return "modules after the flatten between producer and consumer"
    if producer.is_conv and not consumer.is_conv and not isinstance(site.between[-1], nn.Flatten):
        return "a conv producer read by a Linear consumer without a flatten"
    for act in site.activations:
        if not activation_info(act.name).zero_at_zero:
            return f"activation {act.name!r} has σ(0) ≠ 0, so new units cannot start silent"
    return None


def linear_path(site: Site, maps: Tensor, max_pool: str) -> Tensor:
    """The linear part of the new-unit path (activations dropped, max pools by ``max_pool``),
    applied in eval mode to N × C × H × W maps; stops before a flatten."""
    if max_pool not in MAX_POOL_RULES:
        raise ValueError(f"unknown max_pool rule {max_pool!r}; choose one of {MAX_POOL_RULES}")
    with eval_mode(site.between):
        for module in site.between:
            if isinstance(module, nn.Flatten):
                break
            if isinstance(module, Activation):
                continue
            if isinstance(module, (nn.MaxPool2d, nn.AdaptiveMaxPool2d)):
                maps = _max_pool_stand_in(module, maps, max_pool)
            else:
                maps = new_unit_forward(module, maps)
    return maps


def _max_pool_stand_in(pool: nn.Module, maps: Tensor, rule: str) -> Tensor:
    if rule == "first":  # the derivative at an all-zero input: autograd's routing on ties
        zeros = torch.zeros_like(maps[:1, :1])
        if isinstance(pool, nn.AdaptiveMaxPool2d):
            _, index = F.adaptive_max_pool2d(zeros, pool.output_size, return_indices=True)
        else:
            _, index = F.max_pool2d(
                zeros, pool.kernel_size, pool.stride, pool.padding, pool.dilation,
                pool.ceil_mode, return_indices=True,
            )  # fmt: skip
        flat = index.flatten(2).expand(maps.shape[0], maps.shape[1], -1)
        picked = maps.flatten(2).gather(2, flat)
        return picked.reshape(*maps.shape[:2], *index.shape[2:])
    if isinstance(pool, nn.AdaptiveMaxPool2d):
        return F.adaptive_avg_pool2d(maps, pool.output_size)
    # a max pool's padding never wins a window, so it never counts in the average either
    return F.avg_pool2d(maps, pool.kernel_size, pool.stride, pool.padding, False, False)


def patch_maps(site: Site, producer_input: Tensor, bias: bool = True) -> Tensor:
    """Producer patches x̃ laid out as maps over the producer's output positions, N × p × H × W
    (constant 1 last when the producer has a bias and ``bias``; a Linear producer: 1 × 1)."""
    patches = site.input_patches(producer_input)
    if bias:
        patches = with_ones(patches, site.producer.bias is not None)
    return site.producer_map.patch_maps(producer_input, patches)


def consumer_inputs(site: Site, consumer_input: Tensor) -> Tensor:
    """h̃ as N × m × O: the consumer's input taps (constant 1 last with a bias)."""
    rows = site.consumer_map.reads(consumer_input).flatten(1, 2)
    return with_ones(rows, site.consumer.bias is not None)


def output_rows(grad_output: Tensor) -> Tensor:
    """g_a as N × q × O."""
    return grad_output.reshape(grad_output.shape[0], grad_output.shape[1], -1)


@dataclass
class BottleneckStatistics:
    """Float64 means over the statistics set of one site."""

    S_x: Tensor  # p × p
    S_h: Tensor  # m × m, m = consumer fan-in (+1 for its bias)
    M_x: Tensor  # p × F, F the fan-out size (out · T)
    M_h: Tensor  # m × q
    P: Tensor  # p × m (T = 1) or T × p × m
    G_trace: float  # E[‖g_a‖²]
    count: int
    producer_bias: bool
    consumer_bias: bool

    def residual_norm(self, delta: Tensor) -> float:
        """E‖r‖² with r = −g_a + δh̃: the bottleneck left after the consumer update δ."""
        return (
            self.G_trace
            - 2 * float((delta.T * self.M_h).sum())
            + float((delta @ self.S_h * delta).sum())
        )

    def projected(self, delta: Tensor) -> Tensor:
        """The cross product E[x̃ (δh̃)ᵀ] ("Pδᵀ") in the fan-out layout (p × F)."""
        if self.P.ndim == 2:
            return self.P @ delta.T
        return torch.einsum("tae,ce->act", self.P, delta).reshape(self.P.shape[1], -1)


def check_per_sample(losses: Tensor, batch: int) -> None:
    if losses.ndim != 1 or losses.shape[0] != batch:
        raise ValueError(
            "statistics need per-sample losses (reduction='none'); the loss returned shape "
            f"{tuple(losses.shape)} for a batch of {batch}: a mean-reduced loss would silently "
            "scale every statistic by 1/batch"
        )


def require_supported(site: Site, method: str) -> None:
    """One clear error for a site this module cannot describe."""
    reason = bottleneck_refusal(site)
    if reason is not None:
        raise ValueError(
            f"method {method!r}: site {site.name!r} ({site.kind} → "
            f"{type(site.consumer).__name__}) is not supported: {reason}"
        )


BOTTLENECK_TAPS = ("input", "consumer_input", "grad_output")


def site_statistics(
    net: GrowableNet, ctx: GrowthContext, sites: list[Site], method: str = "tiny"
) -> dict[str, BottleneckStatistics]:
    """One eval-mode pass over the statistics set; float64 means for every site."""
    for site in sites:
        require_supported(site, method)
    sums: dict[str, list[Tensor]] = {}
    sizes: dict[str, tuple[int, int] | None] = {}
    count = 0
    for inputs, targets in ctx.batches():
        taps, losses = collect_taps(
            net, inputs, targets, ctx.loss_fn, sites=sites, want=BOTTLENECK_TAPS
        )
        check_per_sample(losses, len(inputs))
        count += len(inputs)
        for site in sites:
            for chunk in sample_chunks(site, taps[site.name], BOTTLENECK_TAPS):
                parts, size = _batch_parts(site, chunk)
                sizes[site.name] = size
                if site.name not in sums:
                    sums[site.name] = parts
                else:
                    sums[site.name] = [a + b for a, b in zip(sums[site.name], parts, strict=True)]
    result = {}
    for site in sites:
        parts = sums[site.name]
        if sizes[site.name] is not None:
            parts = _gram_parts(parts[0], sizes[site.name])
        S_x, S_h, M_x, M_h, P, G = (part / count for part in parts)
        result[site.name] = BottleneckStatistics(
            (S_x + S_x.T) / 2,
            (S_h + S_h.T) / 2,
            M_x,
            M_h,
            P,
            float(G),
            count,
            site.producer.bias is not None,
            site.consumer.bias is not None,
        )
    return result


MAX_CHUNK_BYTES = 256 * 2**20  # patch taps B of the samples processed at once


def sample_chunks(site: Site, taps: Taps, fields: tuple[str, ...]) -> Iterator[Taps]:
    """``taps`` (the given ``fields``) cut into runs of samples whose patch maps and patch taps B
    (p × H × W and p × T × O per sample) stay under ``MAX_CHUNK_BYTES`` in float64: a full-width
    conv site's B for a whole batch would not fit in memory."""
    first = taps.input[:1]
    hidden = site.input_patches(first).shape[2]  # the producer's output positions
    outputs = 1
    if taps.grad_output is not None:
        outputs = taps.grad_output[0].numel() // taps.grad_output.shape[1]
    kernel = site.consumer_map.kernel_taps
    per_sample = site.fan_in_size * max(hidden, kernel * outputs, site.positions) * 8
    step = max(1, MAX_CHUNK_BYTES // per_sample)
    count = taps.input.shape[0]
    for start in range(0, count, step):
        yield Taps(**{name: getattr(taps, name)[start : start + step] for name in fields})


def _batch_parts(site: Site, taps) -> tuple[list[Tensor], tuple[int, int] | None]:
    """Per-batch sums in float64: one Gram matrix of [B | h̃ | g_a] rows and the sizes of B and
    h̃ when T = 1 (``_gram_parts`` cuts it once the batches are summed), else
    [S_x, S_h, M_x, M_h, P, ‖g‖²]. With T > 1, S_x = Σ_(o,t) B B ᵀ is Σ_y count(y)·X_y X_yᵀ
    over the maps' positions y (count: how many (o, t) read y; zero padding adds nothing), T
    times cheaper than over the taps, and a conv consumer's M_x is its weight gradient with the
    maps as input."""
    maps = linear_path(site, patch_maps(site, taps.input), "average")
    big = site.consumer_map.reads(maps)
    h = consumer_inputs(site, taps.consumer_input)
    g = output_rows(taps.grad_output)
    p = big.shape[1]
    if big.shape[2] == 1:
        x = big[:, :, 0]
        rows = torch.cat([x, h, g], dim=1).transpose(1, 2).reshape(-1, p + h.shape[1] + g.shape[1])
        return [(rows.T @ rows).double()], (p, h.shape[1])
    flat = maps.flatten(2)  # N × p × positions
    count = site.consumer_map.read_counts(maps)
    m_x = site.consumer_map.reads_gradient(maps, taps.grad_output)
    weighted = flat if count is None else flat * count
    parts = [
        torch.einsum("iaz,ibz->ab", weighted, flat),
        torch.einsum("iel,ifl->ef", h, h),
        m_x,
        torch.einsum("iel,icl->ec", h, g),
        torch.einsum("iatl,iel->tae", big, h),
        (g * g).sum(),
    ]
    return [part.double() for part in parts], None


def _gram_parts(gram: Tensor, sizes: tuple[int, int]) -> list[Tensor]:
    """[S_x, S_h, M_x, M_h, P, ‖g‖²] cut from the summed Gram matrix of [x̃ | h̃ | g_a]."""
    p, m = sizes
    x, h, g = slice(0, p), slice(p, p + m), slice(p + m, None)
    blocks = [gram[x, x], gram[h, h], gram[x, g], gram[h, g], gram[x, h], gram[g, g].trace()]
    return [block.contiguous() for block in blocks]


def new_unit_contribution(
    site: Site,
    producer_input: Tensor,
    alpha: Tensor,
    omega: Tensor,
    linearised: bool,
    per_unit: bool = False,
) -> Tensor:
    """What new units (fan-in rows α over x̃, fan-out rows ω) add to the consumer's output,
    N × q × O (N × K × q × O, unit by unit, with ``per_unit``): their producer output through
    the real new-unit path (real max pools; real activations, or ``linearised`` ones times the
    path slope) and the consumer's reading."""
    maps = patch_maps(site, producer_input).double()
    units = torch.einsum("iphw,kp->ikhw", maps, alpha.double())
    path = site.unit_path(units, linear_activations=linearised)
    if linearised:
        path = path * site.path_slope()
    read = site.consumer_map.reads(path)  # N × k × T × O
    kernels = omega.double().reshape(alpha.shape[0], -1, read.shape[2])
    return torch.einsum("iktl,kct->ikcl" if per_unit else "iktl,kct->icl", read, kernels)


def inverse_sqrt(matrix: Tensor, threshold: float) -> tuple[Tensor, int]:
    """Symmetric S^{-1/2} from ``eigh`` (float64), eigenvalues ≤ ``threshold`` dropped; and the
    number of eigenvalues kept."""
    values, vectors = torch.linalg.eigh(matrix.double())
    keep = values > threshold
    kept = vectors[:, keep]
    return (kept * values[keep].rsqrt()) @ kept.T, int(keep.sum())
