"""``gradmax``: new units with zero fan-in whose fan-out maximises their fan-in gradient.

GradMax (Evci et al., ICLR 2022, arXiv 2201.05125; shared/methods/baselines.md, Part A). A new
unit k at a site gets fan-in α_k = 0 (weights and bias) and fan-out ω_k. With σ(0) = 0 it outputs
exactly 0, so the function is unchanged, while its fan-in gradient is

    ∇_{α_k} L = σ'(0) · ω_kᵀ Γ,      Γ = E[g_a xᵀ]   (fan-out size × producer input size),

g_a the consumer pre-activation gradient (per sample, at every consumer output position) and x the
producer input without the constant 1. Among orthogonal fan-outs of norm c, Σ_k ‖∇_{α_k} L‖² is
largest for ω_k = c·u_k, u_k the top-K left singular vectors of Γ, and is σ'(0)²c²Σ_k s_k².

How Γ is computed for each pair (all from one batch of taps, eval mode, float64):

* every producer input is first turned into *patch maps* P (batch × d_in × H₁ × W₁): for a Linear
  producer P = x (H₁ = W₁ = 1), for a conv producer P holds the im2col patch X_q that produces
  hidden position q. P has the layout of the hidden map h with one "channel" per fan-in entry.
* the producer block's pooling acts on P as it acts, to first order, on a zero channel:
  none (identity); global average pool (P is averaged over positions, ``conv→GAP→linear``:
  Γ = E[g_a (mean_q X_q)ᵀ]); max-pool with kernel = stride and no padding (a constant-zero
  channel ties in every window and autograd routes the gradient to the window's first element,
  so P is subsampled at each window's top-left corner; this relies on PyTorch's max-pool
  kernels keeping the first maximum on ties, checked against autograd by the tests).
* the consumer then reads P as it reads h, so Γ[(o, t), i] = E[Σ_y g_a[o, y] P_i(s₂y + t − p₂)]
  is the consumer's weight gradient with input P and output gradient g_a (``conv2d_weight`` for a
  conv consumer; E[g_a Pᵀ] for a linear one), laid out like the fan-out: (out, kh, kw) × d_in.
* a BatchNorm after the consumer (eval mode) scales g_a by γ/sqrt(var + eps) per channel, since
  the taps give the gradient after it.

Pairs outside these (grouped or dilated producers, a flatten with several positions, other
pooling) fall back to ``random-add``'s zero-fan-in rule (U[0, 1) fan-out of norm c), recorded in
``event.extras[site]["fallback"]``.

Decisions [ours]: sites whose activation is the identity are not grown (as ``random-add``);
K per site is ceil(growth_fraction · the site's width at this grower's first ``grow()``), capped
at the fan-out size (no more orthogonal directions exist); all Γ and c are computed on the net
before any change and sites are applied from the output side (README convention 9), the fan-out of
a site towards new units of the next site being 0; the prediction of the gradient norm holds in
eval mode (BN in train mode rescales gradients of a zero channel, baselines.md A8).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from growbench.claims import Claim
from growbench.methods.base import (
    Grower,
    GrowerConfig,
    GrowthContext,
    GrowthEvent,
    take_within_budget,
)
from growbench.methods.registry import register
from growbench.nn import GrowableNet, Site, collect_taps
from growbench.nn.losses import PerSampleLoss

SCALE_METHODS = ("mean_norm", "fixed")
SCHEDULES = ("all-at-once", "round-robin")
FALLBACK = "random-add zero-fan-in"


@dataclass
class GradMaxConfig(GrowerConfig):
    epsilon: float = 0.0  # fan-in scale of the new units; the official configs all use 0
    scale_method: str = "mean_norm"  # c = scale · mean fan-out column norm, or c = scale
    scale: float = 0.5
    growth_fraction: float = 0.25  # K per site = ceil(fraction · initial width)
    schedule: str = "all-at-once"  # or "round-robin": one site per growth event, in order
    stats_samples: int = 128  # Γ from the first samples of the statistics set

    def __post_init__(self) -> None:
        if self.scale_method not in SCALE_METHODS:
            raise ValueError(
                f"gradmax: unknown scale_method {self.scale_method!r}; choose one of "
                f"{SCALE_METHODS}"
            )
        if self.schedule not in SCHEDULES:
            raise ValueError(
                f"gradmax: unknown schedule {self.schedule!r}; choose one of {SCHEDULES}"
            )
        if self.epsilon != 0.0:
            raise ValueError(
                "gradmax: only epsilon = 0 (zero fan-in, as every official config) is "
                "implemented; a nonzero fan-in would change the function"
            )
        if self.scale <= 0 or self.growth_fraction <= 0 or self.stats_samples < 1:
            raise ValueError("gradmax: scale, growth_fraction and stats_samples must be positive")


# ------------------------------------------------------------------------------ helpers


def slope_at_zero(site: Site) -> float:
    """σ(0) = 0 and σ'(0) ≠ 0 as autograd sees the site's activation module, else one error."""
    zero = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    value = site.block.act(zero)
    (slope,) = torch.autograd.grad(value.sum(), zero)
    value = value.detach()
    if float(value) != 0.0:
        raise ValueError(
            f"gradmax at site {site.name!r}: activation {site.activation!r} has σ(0) = "
            f"{float(value)} ≠ 0, so zero-fan-in units would change the function; use an "
            "activation with σ(0) = 0 such as the zoo's relu or tanh"
        )
    if float(slope) == 0.0:
        raise ValueError(
            f"gradmax at site {site.name!r}: activation {site.activation!r} has autograd "
            "derivative 0 at 0 (as torch.relu / F.relu / clamp_min), so zero-fan-in units never "
            "move; use the zoo's relu (growbench.nn.activations, derivative 1 at 0)"
        )
    return float(slope)


def canonical_sign(vectors: Tensor) -> Tensor:
    """Flip each row so its largest-magnitude entry (first on ties) is positive (convention 6)."""
    index = vectors.abs().argmax(dim=-1, keepdim=True)
    signs = torch.sign(torch.gather(vectors, -1, index))
    signs[signs == 0] = 1
    return vectors * signs


def _pool_kind(post: nn.Module) -> str | None:
    """How the producer block's pooling acts on a zero channel: 'none', 'gap', 'maxpool'."""
    if isinstance(post, nn.Identity):
        return "none"
    if isinstance(post, nn.Sequential) and len(post) == 2:
        pool, flatten = post[0], post[1]
        if (
            isinstance(pool, nn.AdaptiveAvgPool2d)
            and pool.output_size in (1, (1, 1))
            and isinstance(flatten, nn.Flatten)
        ):
            return "gap"
    if isinstance(post, nn.MaxPool2d):
        kernel, stride = _pair(post.kernel_size), _pair(post.stride)
        plain = _pair(post.padding) == (0, 0) and _pair(post.dilation) == (1, 1)
        if kernel == stride and plain and not post.ceil_mode:
            return "maxpool"
    return None


def _pair(value) -> tuple[int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def unsupported_reason(site: Site) -> str | None:
    """Why Γ cannot be computed for this pair (None when it can)."""
    producer, consumer = site.producer, site.consumer
    pool = _pool_kind(site.block.post)
    if pool is None:
        return f"pooling {site.block.post!r} between producer and consumer"
    if isinstance(producer, nn.Conv2d):
        if producer.groups != 1 or _pair(producer.dilation) != (1, 1):
            return "grouped or dilated producer conv"
        if producer.padding_mode != "zeros" or isinstance(producer.padding, str):
            return "producer conv padding other than explicit zeros"
        if isinstance(consumer, nn.Linear) and pool != "gap":
            return "conv producer read by a linear consumer without global pooling"
    elif pool != "none":
        return "pooling after a linear producer"
    if isinstance(consumer, nn.Conv2d):
        if consumer.groups != 1 or consumer.padding_mode != "zeros":
            return "grouped consumer conv or non-zero padding"
        if isinstance(consumer.padding, str):
            return "consumer conv padding given as a string"
        if not isinstance(producer, nn.Conv2d):
            return "linear producer read by a conv consumer"
    return None


def gamma_from_taps(
    site: Site, block_input: Tensor, grad_consumer_pre: Tensor, count: int
) -> Tensor:
    """Γ (fan-out size × producer input size, float64) from one batch's taps; ``count`` is N."""
    producer, consumer = site.producer, site.consumer
    x = block_input.double()
    grad = grad_consumer_pre.double()
    gain = site.consumer_block.norm_gain()
    if gain is not None:
        gain = gain.double()
        shape = (1, -1) + (1,) * (grad.ndim - 2)
        grad = grad * gain.reshape(shape)
    if isinstance(producer, nn.Conv2d):
        kernel = _pair(producer.kernel_size)
        patches = site.input_patches(x)  # (B, d_in, H1·W1), laid out like a fan-in row
        padding, stride = _pair(producer.padding), _pair(producer.stride)
        height = (x.shape[2] + 2 * padding[0] - kernel[0]) // stride[0] + 1
        width = (x.shape[3] + 2 * padding[1] - kernel[1]) // stride[1] + 1
        maps = patches.reshape(x.shape[0], patches.shape[1], height, width)
    else:
        maps = x.reshape(x.shape[0], -1, 1, 1)
    pool = _pool_kind(site.block.post)
    if pool == "gap":
        maps = maps.mean(dim=(2, 3), keepdim=True)
    elif pool == "maxpool":
        post = site.block.post
        kernel = _pair(post.kernel_size)
        rows = (maps.shape[2] - kernel[0]) // kernel[0] + 1
        cols = (maps.shape[3] - kernel[1]) // kernel[1] + 1
        maps = maps[:, :, :: kernel[0], :: kernel[1]][:, :, :rows, :cols]
    if isinstance(consumer, nn.Conv2d):
        d_in = maps.shape[1]
        weight_grad = torch.nn.grad.conv2d_weight(
            maps,
            (consumer.out_channels, d_in, *_pair(consumer.kernel_size)),
            grad,
            stride=_pair(consumer.stride),
            padding=_pair(consumer.padding),
            dilation=_pair(consumer.dilation),
        )  # (out, d_in, kh, kw)
        gamma = weight_grad.permute(0, 2, 3, 1).reshape(-1, d_in)
    else:
        gamma = grad.reshape(grad.shape[0], -1).T @ maps.flatten(1)
    return gamma / count


def compute_gamma(
    net: GrowableNet,
    site: Site | str | int,
    inputs: Tensor,
    targets: Tensor,
    loss_fn: PerSampleLoss,
) -> Tensor:
    """Γ of one site on the batch (inputs, targets), eval mode, float64."""
    if not isinstance(site, Site):
        site = net.site(site)
    reason = unsupported_reason(site)
    if reason is not None:
        raise ValueError(f"gradmax: no Γ for site {site.name!r}: {reason}")
    taps, _ = collect_taps(
        net, inputs, targets, loss_fn, blocks=[site.name, site.consumer_block.name]
    )
    return gamma_from_taps(
        site, taps[site.name].input, taps[site.consumer_block.name].grad_pre, len(inputs)
    )


def fan_out_norm(site: Site, config: GradMaxConfig) -> float:
    """c: ``scale`` times the mean fan-out column norm of the existing units, or ``scale``."""
    if config.scale_method == "fixed":
        return float(config.scale)
    return float(config.scale * site.fan_out_matrix().double().norm(dim=1).mean())


# ------------------------------------------------------------------------------ the grower


@dataclass
class _Plan:
    site_name: str
    wanted: int
    c: float
    slope: float
    directions: Tensor | None  # (K', fan-out size) unit rows, or None for the fallback
    singular_values: list[float]
    fallback: str | None
    fan_out_size: int


@register
class GradMax(Grower):
    name = "gradmax"
    Config = GradMaxConfig
    preserves_function = "exact"
    description = (
        "add zero-fan-in units whose fan-out (top singular vectors of E[g_a xᵀ]) maximises "
        "their fan-in gradient (GradMax, arXiv 2201.05125)"
    )
    claims = (
        Claim(
            paper="Evci et al., ICLR 2022, arXiv:2201.05125",
            statement="GradMax's gradient-maximising new units train better than random new units",
            method="gradmax",
            baseline="random-add",
            tasks=("teacher-student",),
        ),
    )

    def __init__(self, config: GrowerConfig | None = None) -> None:
        super().__init__(config)
        self._initial_widths: dict[str, int] = {}  # plain ints: no tensor is ever kept
        self._round_robin_next = 0

    def _chosen_sites(self, net: GrowableNet) -> list[Site]:
        sites = [site for site in net.sites if site.activation != "identity"]
        for site in sites:
            self._initial_widths.setdefault(site.name, site.width)
        if self.config.schedule == "round-robin" and sites:
            position = self._round_robin_next % len(sites)
            self._round_robin_next += 1
            sites = [sites[position]]
        return sites

    def grow_step(self, net: GrowableNet, ctx: GrowthContext, event: GrowthEvent) -> None:
        config = self.config
        sites = self._chosen_sites(net)
        slopes = {site.name: slope_at_zero(site) for site in sites}
        plans: list[_Plan] = []
        with event.phase("stats"):
            supported = [site for site in sites if unsupported_reason(site) is None]
            gammas: dict[str, Tensor] = {}
            if supported:
                inputs = ctx.inputs[: config.stats_samples]
                targets = ctx.targets[: config.stats_samples]
                names = sorted(
                    {s.name for s in supported} | {s.consumer_block.name for s in supported},
                    key=[b.name for b in net.blocks].index,
                )
                taps, _ = collect_taps(net, inputs, targets, ctx.loss_fn, blocks=names)
                for site in supported:
                    gammas[site.name] = gamma_from_taps(
                        site,
                        taps[site.name].input,
                        taps[site.consumer_block.name].grad_pre,
                        len(inputs),
                    )
                del taps
        with event.phase("solve"):
            for site in sites:
                wanted = math.ceil(config.growth_fraction * self._initial_widths[site.name])
                wanted = min(wanted, site.fan_out_size)
                c = fan_out_norm(site, config)
                gamma = gammas.get(site.name)
                if gamma is None:
                    plans.append(
                        _Plan(
                            site.name,
                            wanted,
                            c,
                            slopes[site.name],
                            None,
                            [],
                            f"{FALLBACK}: {unsupported_reason(site)}",
                            site.fan_out_size,
                        )
                    )
                    continue
                left, values, _ = torch.linalg.svd(gamma, full_matrices=True)
                directions = canonical_sign(left[:, :wanted].T.contiguous())
                plans.append(
                    _Plan(
                        site.name,
                        wanted,
                        c,
                        slopes[site.name],
                        directions,
                        values.tolist(),
                        None,
                        site.fan_out_size,
                    )
                )
        with event.phase("select"):
            candidates = [plan.site_name for plan in plans for _ in range(plan.wanted)]
            accepted = take_within_budget(net, ctx, candidates)
            counts = {plan.site_name: 0 for plan in plans}
            for name, ok in zip(candidates, accepted):
                counts[name] += ok
        if not all(accepted):
            event.stop_reason = "budget exhausted"
        event.predicted_loss_change = 0.0  # new units output exactly 0
        with event.phase("apply"):
            for plan in reversed(plans):  # output side first (README convention 9)
                self._apply(net, ctx, event, plan, counts[plan.site_name])

    def _apply(
        self, net: GrowableNet, ctx: GrowthContext, event: GrowthEvent, plan: _Plan, count: int
    ) -> None:
        site = net.site(plan.site_name)
        extras = {
            "c": plan.c,
            "sigma_prime_zero": plan.slope,
            "wanted": plan.wanted,
            "added": count,
            "fallback": plan.fallback,
        }
        if plan.directions is not None:
            values = plan.singular_values
            extras["singular_values"] = values
            top = sum(value**2 for value in values[:count])
            extras["predicted_grad_norm_sq"] = plan.slope**2 * plan.c**2 * top
            event.scores[site.name] = values
        event.extras[site.name] = extras
        if count == 0:
            return
        if plan.directions is not None:
            fan_out = plan.c * plan.directions[:count]
        else:
            size = plan.fan_out_size
            fan_out = torch.rand(count, size, generator=ctx.generator, dtype=torch.float64)
            fan_out *= plan.c / fan_out.norm(dim=1, keepdim=True)
        fan_out = _pad_fan_out(site, fan_out)
        d_in = site.fan_in_size - (site.producer.bias is not None)
        fan_in = torch.zeros(count, d_in, dtype=torch.float64)
        new_ids = site.add_units(fan_in, fan_out)
        kind = "new" if plan.directions is not None else "random"
        event.selected[site.name] = [[unit, kind] for unit in new_ids]


def _pad_fan_out(site: Site, fan_out: Tensor) -> Tensor:
    """Zero entries for consumer outputs added after Γ was taken (new units of the next site)."""
    if fan_out.shape[1] == site.fan_out_size:
        return fan_out
    positions = site.positions
    count = fan_out.shape[0]
    outs_then = fan_out.shape[1] // positions
    outs_now = site.fan_out_size // positions
    padded = fan_out.new_zeros(count, outs_now, positions)
    padded[:, :outs_then] = fan_out.reshape(count, outs_then, positions)
    return padded.reshape(count, -1)
