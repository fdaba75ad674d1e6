"""Second-moment statistics of a growth site shared by TINY and GradMax.

For one site (producer block i, consumer block i + 1), with the notation of
``shared/methods/README.md`` (x̃ the producer input with the constant 1 last when the producer has
a bias, h̃ the consumer input with the constant 1 last when the consumer has a bias, g_a the
per-sample gradient of the sum-reduced loss with respect to the consumer's pre-activation a):

    S_x = E[x̃ x̃ᵀ]   S_h = E[h̃ h̃ᵀ]   M_x = E[x̃ g_aᵀ]   M_h = E[h̃ g_aᵀ]   P = E[x̃ h̃ᵀ]

E is the mean over the samples of the statistics set and the sum over the consumer's output
positions. Per-batch products run in the model dtype and are summed across batches in float64
(README convention 3). With BatchNorm after the consumer layer, g_a = b ⊙ ∂ℓ/∂z with b the
eval-mode BN gain. ``inverse_sqrt`` gives the eigenvalue-thresholded S^{-1/2} (float64).

Three pair kinds (``pair_kind``); a new unit with fan-in α (eval-mode BN after the producer is the
identity on new units, σ linearised at 0) adds to the consumer pre-activation:

* ``linear`` (Linear → Linear): σ'(0)·ω α x̃.
* ``conv-gap`` (Conv2d → global average pool → Linear): the unit's map σ'(0)·α·X_y is averaged
  over the hidden positions y, so the contribution is σ'(0)·ω α x̄ with x̄ = mean_y X_y (the
  position-averaged im2col patch, constant 1 last when the producer has a bias). The site is then
  exactly a Linear→Linear site with x̃ := x̄; h̃ is the pooled activation the Linear reads, so δ and
  the cross term tr(ωαPδᵀ) keep their Linear form with P = E[x̄ h̃ᵀ].
* ``conv-conv`` (Conv2d → Conv2d, no pooling between), GroMo 0.1.0's ``FullConv2dGrowingModule``
  definitions: at consumer output position o and kernel tap t the consumer reads hidden position
  y(o, t), whose producer patch is B_{o,t} (zero where y falls in the consumer's zero padding).
  The unit adds σ'(0)·Σ_t ω[:, t] α·B_{o,t} at o, ω laid out (out, kh, kw) like the fan-out.
  Then M_x[a, (c, t)] = E[Σ_o B_{o,t,a} g_{o,c}] (p × out·kh·kw, the fan-out layout),
  P is the 3-tensor P[t, a, e] = E[Σ_o B_{o,t,a} h̃_{o,e}] and "Pδᵀ" is Σ_e P[t, a, e] δ[c, e]
  (``projected``). GroMo's S_growth = E[Σ_{o,t} B_{o,t} B_{o,t}ᵀ] drops the cross-tap products
  (t ≠ t'), so the SVD solves a tap-decoupled quadratic; the first-order gain
  FO_exact = Δ − σ'(0)·tr(ωαM_x) is exact regardless.
* ``conv-conv`` with a 2-D average or max pool between (``hidden_pool``): the statistics use the
  producer patches pooled by the average pool, B_{o,t} = avgpool(X)_{y(o,t)}. For an average pool
  that is exact (the pool is linear). A max pool is not linear in a new unit's fan-in (its window
  maximum depends on α), so its *average* stands in for it when choosing α, ω: the directions
  and FO_exact are then a surrogate (``pool_is_linear`` is False, and TINY flags the prediction
  as heuristic). FO_homog stays exact: for positively homogeneous σ the new unit's map is
  γ·maxpool(σ(αX)) exactly, which ``new_unit_output`` computes through the real pool.

Pairs outside these (another pooling, a flatten with several positions, grouped or dilated
convs, Linear → Conv2d) are unsupported: ``unsupported_reason`` says why.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from growbench.methods.base import GrowthContext
from growbench.nn import GrowableNet, Site, collect_taps

LINEAR_KINDS = frozenset({"Linear", "Linear+BN"})
ELEMENTWISE_POST = (nn.Identity, nn.Dropout)


@dataclass
class BottleneckStatistics:
    """Float64 means over the statistics set of one site."""

    S_x: Tensor  # p × p
    S_h: Tensor  # m × m, m = consumer fan-in (+1 for its bias)
    M_x: Tensor  # p × F, F the fan-out size (out · positions)
    M_h: Tensor  # m × q
    P: Tensor  # p × m (linear, conv-gap) or T × p × m (conv-conv)
    G_trace: float  # E[‖g_a‖²]
    count: int
    producer_bias: bool
    consumer_bias: bool
    rows: tuple[Tensor, Tensor] | None = None  # per-sample (x̃, g_a) when asked to keep them
    kind: str = "linear"
    # conv-conv: new units' hidden maps (N × k × H × W) → what the consumer reads of them,
    # N × k × T × L (the block's real pooling, then the consumer's kernel taps)
    read_units: Callable[[Tensor], Tensor] | None = None

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

    def new_unit_output(self, act, alpha: Tensor, omega: Tensor) -> Tensor:
        """Σ_k ω_k σ(α_k x̃) per kept row, laid out like the kept g_a rows (float64)."""
        x, _ = self.rows
        x = x.double()
        if self.kind == "linear":
            return act(x @ alpha.T) @ omega
        if self.kind == "conv-gap":  # x: N × positions × p
            return act(x @ alpha.T).mean(dim=1) @ omega
        # conv-conv, x: producer patch maps N × p × H × W
        k = alpha.shape[0]
        taps = self.read_units(act(torch.einsum("iphw,kp->ikhw", x, alpha)))
        kernels = omega.reshape(k, -1, taps.shape[2])
        return torch.einsum("iktl,kct->icl", taps, kernels)


def _pair(value) -> tuple[int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _is_gap(post: nn.Module) -> bool:
    return (
        isinstance(post, nn.Sequential)
        and len(post) == 2
        and isinstance(post[0], nn.AdaptiveAvgPool2d)
        and _pair(post[0].output_size) == (1, 1)
        and isinstance(post[1], nn.Flatten)
    )


POOLS = (nn.MaxPool2d, nn.AvgPool2d)


def _plain_pool(pool: nn.Module) -> bool:
    return (
        _pair(getattr(pool, "dilation", 1)) == (1, 1)
        and not pool.ceil_mode
        and getattr(pool, "divisor_override", None) is None
    )


def hidden_pool(site: Site) -> nn.MaxPool2d | nn.AvgPool2d | None:
    """The 2-D pool between a conv→conv pair's producer and consumer, if any."""
    post = site.block.post
    return post if isinstance(post, POOLS) else None


def pool_is_linear(site: Site) -> bool:
    """Whether what a new unit adds to the consumer is linear in its fan-in (not a max pool)."""
    return not isinstance(hidden_pool(site), nn.MaxPool2d)


def _linear_pool(pool: nn.MaxPool2d | nn.AvgPool2d | None, maps: Tensor) -> Tensor:
    """``pool`` on maps if it is an average pool; a max pool's average stand-in otherwise (its
    padding, like a max pool's, never counts in a window)."""
    if pool is None:
        return maps
    include_pad = bool(getattr(pool, "count_include_pad", False))
    return F.avg_pool2d(maps, pool.kernel_size, pool.stride, pool.padding, False, include_pad)


def _plain_conv(conv: nn.Conv2d) -> bool:
    return (
        conv.groups == 1
        and _pair(conv.dilation) == (1, 1)
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
    )


def pair_kind(site: Site) -> tuple[str | None, str | None]:
    """(kind, None) for a supported pair, (None, reason) otherwise."""
    producer, consumer, post = site.producer, site.consumer, site.block.post
    if isinstance(producer, nn.Linear):
        if not isinstance(consumer, nn.Linear):
            return None, f"Linear producer read by a {type(consumer).__name__} consumer"
        if site.positions != 1:
            return None, f"{site.positions} positions per unit"
        if not isinstance(post, ELEMENTWISE_POST):
            return None, f"non-elementwise post module {type(post).__name__}"
        return "linear", None
    if not isinstance(producer, nn.Conv2d):
        return None, f"producer {type(producer).__name__}"
    if not _plain_conv(producer):
        return None, "grouped, dilated or non-zero-padded producer conv"
    if isinstance(consumer, nn.Linear):
        if _is_gap(post):
            return "conv-gap", None
        return None, f"Conv2d read by a Linear through {type(post).__name__} (not a global pool)"
    if not isinstance(consumer, nn.Conv2d):
        return None, f"consumer {type(consumer).__name__}"
    if not _plain_conv(consumer):
        return None, "grouped, dilated or non-zero-padded consumer conv"
    if isinstance(post, POOLS):
        if not _plain_pool(post):
            return None, f"dilated or ceil-mode {type(post).__name__} between the convs"
        return "conv-conv", None
    if not isinstance(post, (*ELEMENTWISE_POST, nn.Dropout2d)):
        return None, f"{type(post).__name__} between producer and consumer"
    return "conv-conv", None


def unsupported_reason(site: Site) -> str | None:
    return pair_kind(site)[1]


def require_linear_pair(site: Site, method: str) -> None:
    """One clear error for a site this module cannot describe (any supported pair passes)."""
    reason = unsupported_reason(site)
    if reason is not None:
        raise ValueError(
            f"method {method!r}: site {site.name!r} ({site.kind} → "
            f"{type(site.consumer).__name__}) is not supported: {reason}"
        )


def consumer_gain(site: Site) -> Tensor | None:
    """b of the eval-mode BatchNorm after the consumer layer (None without BN)."""
    return site.consumer_block.norm_gain()


def with_ones(rows: Tensor, bias: bool) -> Tensor:
    if not bias:
        return rows
    return torch.cat([rows, rows.new_ones(rows.shape[0], 1)], dim=1)


def _ones_channel(maps: Tensor, bias: bool) -> Tensor:
    """Append a constant-1 channel (dim 1) to N × C × ... maps when ``bias``."""
    if not bias:
        return maps
    return torch.cat([maps, maps.new_ones(maps.shape[0], 1, *maps.shape[2:])], dim=1)


def producer_patches(site: Site, block_input: Tensor) -> Tensor:
    """Producer im2col patches x̃ (N × p × hidden positions), constant 1 last with a bias."""
    return _ones_channel(site.input_patches(block_input), site.producer.bias is not None)


def _scaled_grad(site: Site, grad: Tensor) -> Tensor:
    gain = consumer_gain(site)
    if gain is None:
        return grad
    return grad * gain.to(grad).reshape(1, -1, *[1] * (grad.ndim - 2))


def bottleneck_rows(site: Site, producer_taps, consumer_taps) -> tuple[Tensor, Tensor, Tensor]:
    """x̃, h̃ and g_a rows (batch first) of one batch at a linear or conv-gap site."""
    kind = pair_kind(site)[0]
    if kind == "conv-gap":
        x = producer_patches(site, producer_taps.input).mean(dim=2)
    elif kind == "linear":
        x = with_ones(producer_taps.input.flatten(1), site.producer.bias is not None)
    else:
        raise ValueError(f"site {site.name!r}: per-sample rows exist for linear and conv-gap")
    h = with_ones(consumer_taps.input.flatten(1), site.consumer.bias is not None)
    g = _scaled_grad(site, consumer_taps.grad_pre)
    return x, h, g


def patch_maps(site: Site, block_input: Tensor) -> Tensor:
    """Producer patches x̃ laid out as maps over the hidden positions, N × p × H × W."""
    patches = producer_patches(site, block_input)
    producer = site.producer
    kernel, padding = _pair(producer.kernel_size), _pair(producer.padding)
    stride = _pair(producer.stride)
    height = (block_input.shape[2] + 2 * padding[0] - kernel[0]) // stride[0] + 1
    width = (block_input.shape[3] + 2 * padding[1] - kernel[1]) // stride[1] + 1
    return patches.reshape(block_input.shape[0], patches.shape[1], height, width)


def kernel_taps(site: Site, maps: Tensor) -> Tensor:
    """What the consumer conv reads of N × C × H' × W' maps: N × C × T × L (T kernel taps, L
    output positions)."""
    consumer = site.consumer
    unfolded = F.unfold(
        maps,
        kernel_size=consumer.kernel_size,
        dilation=consumer.dilation,
        padding=consumer.padding,
        stride=consumer.stride,
    )
    return unfolded.reshape(maps.shape[0], maps.shape[1], -1, unfolded.shape[-1])


def unit_reader(site: Site) -> Callable[[Tensor], Tensor]:
    """New units' hidden maps → their consumer taps, through the block's real pooling."""
    pool = hidden_pool(site)
    return lambda maps: kernel_taps(site, maps if pool is None else pool(maps))


def conv_pair_tensors(site: Site, producer_taps, consumer_taps) -> tuple[Tensor, Tensor, Tensor]:
    """Conv→conv: B (N × p × T × L), h̃ (N × m × L), g_a (N × q × L); T kernel taps and L
    output positions of the consumer. With a pool between, B reads the (average-)pooled patches."""
    consumer = site.consumer
    maps = _linear_pool(hidden_pool(site), patch_maps(site, producer_taps.input))
    big = kernel_taps(site, maps)
    h = _ones_channel(
        kernel_taps(site, consumer_taps.input).flatten(1, 2), consumer.bias is not None
    )
    g = _scaled_grad(site, consumer_taps.grad_pre).flatten(2)
    return big, h, g


def check_per_sample(losses: Tensor, batch: int) -> None:
    if losses.ndim != 1 or losses.shape[0] != batch:
        raise ValueError(
            "statistics need per-sample losses (reduction='none'); the loss returned shape "
            f"{tuple(losses.shape)} for a batch of {batch}: a mean-reduced loss would silently "
            "scale every statistic by 1/batch"
        )


def _batch_parts(site: Site, kind: str, producer_taps, consumer_taps, keep: bool):
    """Per-batch sums in float64, and the rows to keep: [S_x, S_h, M_x, M_h, P, ‖g‖²] for a
    conv-conv pair; for the others one Gram matrix of [x̃ | h̃ | g_a], which holds all of them
    (``_gram_parts`` cuts it once the batches are summed), and the sizes of x̃ and h̃."""
    if kind == "conv-conv":
        big, h, g = conv_pair_tensors(site, producer_taps, consumer_taps)
        p = big.shape[1]
        flat = big.flatten(2)
        parts = [
            torch.einsum("iaz,ibz->ab", flat, flat),
            torch.einsum("iel,ifl->ef", h, h),
            torch.einsum("iatl,icl->act", big, g).reshape(p, -1),
            torch.einsum("iel,icl->ec", h, g),
            torch.einsum("iatl,iel->tae", big, h),
            (g * g).sum(),
        ]
        parts = [part.double() for part in parts]
        rows = (patch_maps(site, producer_taps.input), g) if keep else None
    else:
        x, h, g = bottleneck_rows(site, producer_taps, consumer_taps)
        p, m = x.shape[1], h.shape[1]
        joined = torch.cat([x, h, g], dim=1)
        parts = [(joined.T @ joined).double(), (p, m)]
        rows = None
        if keep:
            if kind == "conv-gap":
                rows = (producer_patches(site, producer_taps.input).transpose(1, 2), g)
            else:
                rows = (x, g)
    return parts, rows


def _gram_parts(gram: Tensor, sizes: tuple[int, int]) -> list[Tensor]:
    """[S_x, S_h, M_x, M_h, P, ‖g‖²] cut from the summed Gram matrix of [x̃ | h̃ | g_a]."""
    p, m = sizes
    x, h, g = slice(0, p), slice(p, p + m), slice(p + m, None)
    blocks = [gram[x, x], gram[h, h], gram[x, g], gram[h, g], gram[x, h], gram[g, g].trace()]
    return [block.contiguous() for block in blocks]


def site_statistics(
    net: GrowableNet,
    ctx: GrowthContext,
    sites: list[Site],
    method: str = "tiny",
    keep_rows: frozenset[str] = frozenset(),
) -> dict[str, BottleneckStatistics]:
    """One eval-mode pass over the statistics set; float64 means for every site. For the sites
    named in ``keep_rows`` the per-sample rows are kept too (model dtype): (x̃, g_a) for linear
    sites, (patches N × positions × p, g_a) for conv-gap, (patch maps N × p × H × W, g_a) for
    conv-conv."""
    kinds = {}
    for site in sites:
        require_linear_pair(site, method)
        kinds[site.name] = pair_kind(site)[0]
    blocks = sorted({b for s in sites for b in (s.index, s.index + 1)})
    names = [net.blocks[i].name for i in blocks]
    sums: dict[str, list[Tensor]] = {}
    kept: dict[str, list[tuple[Tensor, Tensor]]] = {name: [] for name in keep_rows}
    count = 0
    for inputs, targets in ctx.batches():
        taps, losses = collect_taps(net, inputs, targets, ctx.loss_fn, blocks=names)
        check_per_sample(losses, len(inputs))
        count += len(inputs)
        for site in sites:
            parts, rows = _batch_parts(
                site,
                kinds[site.name],
                taps[site.name],
                taps[site.consumer_block.name],
                site.name in kept,
            )
            if rows is not None:
                kept[site.name].append(rows)
            if site.name not in sums:
                sums[site.name] = parts
            elif kinds[site.name] == "conv-conv":
                sums[site.name] = [a + b for a, b in zip(sums[site.name], parts, strict=True)]
            else:  # [Gram, sizes]
                sums[site.name][0] = sums[site.name][0] + parts[0]
    result = {}
    for site in sites:
        parts = sums[site.name]
        if kinds[site.name] != "conv-conv":
            parts = _gram_parts(*parts)
        S_x, S_h, M_x, M_h, P, G = (part / count for part in parts)
        rows = None
        if site.name in kept:
            rows = (
                torch.cat([x for x, _ in kept[site.name]]),
                torch.cat([g for _, g in kept[site.name]]),
            )
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
            rows,
            kinds[site.name],
            unit_reader(site) if kinds[site.name] == "conv-conv" else None,
        )
    return result


def inverse_sqrt(matrix: Tensor, threshold: float) -> tuple[Tensor, int]:
    """Symmetric S^{-1/2} from ``eigh`` (float64), eigenvalues ≤ ``threshold`` dropped; and the
    number of eigenvalues kept."""
    values, vectors = torch.linalg.eigh(matrix.double())
    keep = values > threshold
    kept = vectors[:, keep]
    return (kept * values[keep].rsqrt()) @ kept.T, int(keep.sum())
