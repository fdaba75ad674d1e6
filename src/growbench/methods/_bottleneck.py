"""Second-moment statistics of a growth site shared by TINY and GradMax (Linear→Linear sites).

For one site (producer block i, consumer block i + 1), with the notation of
``shared/methods/README.md`` (x̃ the producer input with the constant 1 last when the producer has
a bias, h̃ the consumer input with the constant 1 last when the consumer has a bias, g_a the
per-sample gradient of the sum-reduced loss with respect to the consumer's pre-activation a):

    S_x = E[x̃ x̃ᵀ]   S_h = E[h̃ h̃ᵀ]   M_x = E[x̃ g_aᵀ]   M_h = E[h̃ g_aᵀ]   P = E[x̃ h̃ᵀ]

E is the mean over the samples of the statistics set. Per-batch products run in the model dtype
and are summed across batches in float64 (README convention 3). With BatchNorm after the consumer
layer, g_a = b ⊙ ∂ℓ/∂z with b the eval-mode BN gain. ``inverse_sqrt`` gives the eigenvalue-
thresholded S^{-1/2} (float64) that both methods use.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from growbench.methods.base import GrowthContext
from growbench.nn import GrowableNet, Site, collect_taps

LINEAR_KINDS = frozenset({"Linear", "Linear+BN"})


@dataclass
class BottleneckStatistics:
    """Float64 means over the statistics set of one Linear→Linear site."""

    S_x: Tensor  # p × p
    S_h: Tensor  # (n + 1) × (n + 1)
    M_x: Tensor  # p × q
    M_h: Tensor  # (n + 1) × q
    P: Tensor  # p × (n + 1)
    G_trace: float  # E[‖g_a‖²]
    count: int
    producer_bias: bool
    consumer_bias: bool
    rows: tuple[Tensor, Tensor] | None = None  # per-sample (x̃, g_a) when asked to keep them

    def residual_norm(self, delta: Tensor) -> float:
        """E‖r‖² with r = −g_a + δh̃: the bottleneck left after the consumer update δ."""
        return (
            self.G_trace
            - 2 * float((delta.T * self.M_h).sum())
            + float((delta @ self.S_h * delta).sum())
        )


def require_linear_pair(site: Site, method: str) -> None:
    """One clear error for a site this module cannot describe."""
    if not isinstance(site.producer, nn.Linear) or not isinstance(site.consumer, nn.Linear):
        raise ValueError(
            f"method {method!r}: site {site.name!r} ({site.kind} → "
            f"{type(site.consumer).__name__}) is not a Linear→Linear site"
        )
    if site.positions != 1:
        raise ValueError(f"method {method!r}: site {site.name!r} has {site.positions} positions")
    if not isinstance(site.block.post, (nn.Identity, nn.Dropout)):
        raise ValueError(
            f"method {method!r}: site {site.name!r} has a non-elementwise post module "
            f"{type(site.block.post).__name__}"
        )


def consumer_gain(site: Site) -> Tensor | None:
    """b of the eval-mode BatchNorm after the consumer layer (None without BN)."""
    norm = site.consumer_block.norm
    if norm is None:
        return None
    gain = 1.0 / torch.sqrt(norm.running_var + norm.eps)
    if norm.affine:
        gain = gain * norm.weight.detach()
    return gain


def with_ones(rows: Tensor, bias: bool) -> Tensor:
    if not bias:
        return rows
    return torch.cat([rows, rows.new_ones(rows.shape[0], 1)], dim=1)


def site_rows(site: Site, producer_taps, consumer_taps) -> tuple[Tensor, Tensor, Tensor]:
    """x̃, h̃ and g_a rows (batch first) of one batch of taps at a Linear→Linear site."""
    x = with_ones(producer_taps.input.flatten(1), site.producer.bias is not None)
    h = with_ones(consumer_taps.input.flatten(1), site.consumer.bias is not None)
    g = consumer_taps.grad_pre
    gain = consumer_gain(site)
    if gain is not None:
        g = g * gain.to(g)
    return x, h, g


def check_per_sample(losses: Tensor, batch: int) -> None:
    if losses.ndim != 1 or losses.shape[0] != batch:
        raise ValueError(
            "statistics need per-sample losses (reduction='none'); the loss returned shape "
            f"{tuple(losses.shape)} for a batch of {batch}: a mean-reduced loss would silently "
            "scale every statistic by 1/batch"
        )


def site_statistics(
    net: GrowableNet,
    ctx: GrowthContext,
    sites: list[Site],
    method: str = "tiny",
    keep_rows: frozenset[str] = frozenset(),
) -> dict[str, BottleneckStatistics]:
    """One eval-mode pass over the statistics set; float64 means for every site. For the sites
    named in ``keep_rows`` the per-sample rows (x̃, g_a) are kept too (model dtype)."""
    for site in sites:
        require_linear_pair(site, method)
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
            x, h, g = site_rows(site, taps[site.name], taps[site.consumer_block.name])
            parts = [x.T @ x, h.T @ h, x.T @ g, h.T @ g, x.T @ h, (g * g).sum()]
            parts = [part.double() for part in parts]
            if site.name in kept:
                kept[site.name].append((x, g))
            if site.name not in sums:
                sums[site.name] = parts
            else:
                sums[site.name] = [a + b for a, b in zip(sums[site.name], parts, strict=True)]
    result = {}
    for site in sites:
        S_x, S_h, M_x, M_h, P, G = (part / count for part in sums[site.name])
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
        )
    return result


def inverse_sqrt(matrix: Tensor, threshold: float) -> tuple[Tensor, int]:
    """Symmetric S^{-1/2} from ``eigh`` (float64), eigenvalues ≤ ``threshold`` dropped; and the
    number of eigenvalues kept."""
    values, vectors = torch.linalg.eigh(matrix.double())
    keep = values > threshold
    kept = vectors[:, keep]
    return (kept * values[keep].rsqrt()) @ kept.T, int(keep.sum())
