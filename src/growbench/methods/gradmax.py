"""``gradmax``: new units with zero fan-in whose fan-out maximises their fan-in gradient.

GradMax (Evci et al., ICLR 2022, arXiv 2201.05125; docs/methods/gradmax.md). A new
unit k at a site gets fan-in α_k = 0 (weights and bias) and fan-out ω_k. With σ(0) = 0 it outputs
exactly 0, so the function is unchanged, while its fan-in gradient is

    ∂L/∂α_k = σ'(0) · ω_kᵀ Γ,      Γ = E[g_a xᵀ]   (fan-out size × producer input size),

g_a the consumer pre-activation gradient (per sample, at every consumer output position) and x the
producer input without the constant 1. Among orthogonal fan-outs of norm c, Σ_k ‖∂L/∂α_k‖² is
largest for ω_k = c·u_k, u_k the top-K left singular vectors of Γ, and is σ'(0)²c²Σ_k s_k².

How Γ is computed (one batch of taps, eval mode, float64): the producer input becomes *patch
maps* P (batch × d_in × H₁ × W₁, one "channel" per fan-in entry: x itself for a Linear producer,
H₁ = W₁ = 1; the im2col patch X_q that produces hidden position q for a conv). A zero-fan-in unit's
path to the consumer is linear at 0 (``_bottleneck.linear_path`` with the ``"first"`` rule): new
BatchNorm entries and depthwise identity filters pass P through (strided), a global average pool
averages it, and a max pool routes a constant-zero channel's gradient to each window's first
element (autograd's choice on ties, which PyTorch's max-pool kernels make by keeping the first
maximum; checked against autograd by the tests). The consumer then reads the result as it reads
h, so Γ is the consumer's weight gradient with that input and output gradient g_a (taken at the
consumer's output, before any BatchNorm after it), laid out like the fan-out: (out, kh, kw) for a
conv, (out, positions) for a Linear after a flatten, × d_in. The slope ∏σ'(0) of the path's
activations, as autograd sees them, multiplies the prediction.

A site this cannot describe, or whose activations have σ(0) ≠ 0 or autograd slope 0 at 0, is
refused (``refusal``), recorded in the event.

Decisions [ours]: sites whose activation is the identity are not grown (as ``random-add``);
K per site is ceil(growth_fraction · the site's width at this grower's first ``grow()``), capped
at the fan-out size (no more orthogonal directions exist); all Γ and c are computed on the net
before any change and sites are applied from the output side (convention 9,
docs/conventions.md), the fan-out of a site towards new units of the next site being 0; the
prediction of the gradient norm holds in eval mode (BN in train mode rescales the gradients of a
zero channel).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from growbench.claims import Claim
from growbench.methods._bottleneck import bottleneck_refusal, linear_path, patch_maps
from growbench.methods.base import Grower, GrowerConfig, GrowthContext, GrowthEvent
from growbench.methods.registry import register
from growbench.methods.selection import Candidate, select_within_budget, unit_pricing
from growbench.nn import GrowableNet, Site, collect_taps
from growbench.nn.losses import PerSampleLoss
from growbench.nn.units import new_unit_forward

SCALE_METHODS = ("mean_norm", "fixed")
SCHEDULES = ("all-at-once", "round-robin")


@dataclass
class GradMaxConfig(GrowerConfig):
    positive: ClassVar[tuple[str, ...]] = ("scale", "growth_fraction", "stats_samples")
    non_negative: ClassVar[tuple[str, ...]] = ("epsilon",)
    at_most: ClassVar[dict[str, float]] = {"growth_fraction": 100.0}  # over 100: beyond any budget
    choices: ClassVar[dict[str, tuple]] = {"scale_method": SCALE_METHODS, "schedule": SCHEDULES}
    epsilon: float = 0.0  # the official configs all use 0
    """Scale of the new units' fan-in; only 0 (zero fan-in, the function kept) is implemented."""
    scale_method: str = "mean_norm"
    """How the fan-out norm c is set: "mean_norm" (scale × the mean norm of the site's existing
    fan-out columns) or "fixed" (c = scale)."""
    scale: float = 0.5
    """Multiplier (or, with scale_method "fixed", the value) of the new units' fan-out norm c
    (> 0)."""
    growth_fraction: float = 0.25
    """Units added per site and event: K = ceil(growth_fraction · the site's width at the first
    growth) (> 0, at most 100)."""
    schedule: str = "all-at-once"
    """Which sites grow each event: "all-at-once" (every site) or "round-robin" (one site per event,
    in order)."""
    stats_samples: int = 128
    """Γ = E[g_a xᵀ] is computed from this many first samples of the statistics set (> 0)."""

    def __post_init__(self) -> None:
        if self.epsilon != 0.0:
            raise ValueError(
                f"gradmax: epsilon must be 0, got {self.epsilon!r}: only zero fan-in (as every "
                "official config) is implemented; a nonzero fan-in would change the function"
            )


# ------------------------------------------------------------------------------ helpers


def slope_at_zero(site: Site) -> float:
    """∏σ'(0) over the path's activations as autograd sees them (``activation_problem`` checks
    that σ(0) = 0 and that no slope is 0)."""
    slope = 1.0
    for act in site.activations:
        zero = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        (derivative,) = torch.autograd.grad(new_unit_forward(act, zero).sum(), zero)
        slope *= float(derivative)
    return slope


def activation_problem(site: Site) -> str | None:
    """Why zero-fan-in units at this site would change the function or never learn (as the
    activations act on a new unit: a parametric one at its initial parameters)."""
    for act in site.activations:
        zero = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        value = new_unit_forward(act, zero)
        (derivative,) = torch.autograd.grad(value.sum(), zero)
        if float(value.detach()) != 0.0:
            return (
                f"activation {act.name!r} has σ(0) = {float(value.detach())} ≠ 0, so zero-fan-in "
                "units would change the function; use one with σ(0) = 0 such as the zoo's relu "
                "or tanh"
            )
        if float(derivative) == 0.0:
            return (
                f"activation {act.name!r} has autograd derivative 0 at 0 (as torch.relu / F.relu "
                "/ clamp_min), so zero-fan-in units never move; use the zoo's relu "
                "(growbench.nn.activations, derivative 1 at 0)"
            )
    return None


def canonical_sign(vectors: Tensor) -> Tensor:
    """Flip each row so its largest-magnitude entry (first on ties) is positive (convention 6)."""
    index = vectors.abs().argmax(dim=-1, keepdim=True)
    signs = torch.sign(torch.gather(vectors, -1, index))
    signs[signs == 0] = 1
    return vectors * signs


def gamma_from_taps(site: Site, producer_input: Tensor, grad_output: Tensor, count: int) -> Tensor:
    """Γ (fan-out size × producer input size, float64) from one batch's taps; ``count`` is N."""
    maps = linear_path(site, patch_maps(site, producer_input.double(), bias=False), "first")
    gradient = site.consumer_map.reads_gradient(maps, grad_output.double())  # d_in × (out·taps)
    return gradient.T / count


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
    reason = bottleneck_refusal(site)
    if reason is not None:
        raise ValueError(f"gradmax: no Γ for site {site.name!r}: {reason}")
    taps, _ = collect_taps(
        net, inputs, targets, loss_fn, sites=[site], want=("input", "grad_output")
    )
    return gamma_from_taps(site, taps[site.name].input, taps[site.name].grad_output, len(inputs))


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
    directions: Tensor  # (K', fan-out size) unit rows
    singular_values: list[float]


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

    def refusal(self, site: Site) -> str | None:
        return super().refusal(site) or activation_problem(site) or bottleneck_refusal(site)

    def _chosen_sites(self, net: GrowableNet) -> list[Site]:
        sites = [site for site in self.growable_sites(net) if not site.is_linear]
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
        plans: list[_Plan] = []
        with event.phase("stats"):
            gammas: dict[str, Tensor] = {}
            if sites:
                inputs = ctx.inputs[: config.stats_samples]
                targets = ctx.targets[: config.stats_samples]
                taps, _ = collect_taps(
                    net, inputs, targets, ctx.loss_fn, sites=sites, want=("input", "grad_output")
                )
                for site in sites:
                    gammas[site.name] = gamma_from_taps(
                        site, taps[site.name].input, taps[site.name].grad_output, len(inputs)
                    )
                del taps
        with event.phase("solve"):
            for site in sites:
                wanted = math.ceil(config.growth_fraction * self._initial_widths[site.name])
                wanted = min(wanted, site.fan_out_size)
                gamma = gammas[site.name]  # only the top `wanted` left vectors are needed
                left, values, _ = torch.linalg.svd(gamma, full_matrices=wanted > min(gamma.shape))
                directions = canonical_sign(left[:, :wanted].T.contiguous())
                plans.append(
                    _Plan(
                        site.name,
                        wanted,
                        fan_out_norm(site, config),
                        slope_at_zero(site),
                        directions,
                        values.tolist(),
                    )
                )
        with event.phase("select"):
            candidates = [
                Candidate(plan.site_name, "new") for plan in plans for _ in range(plan.wanted)
            ]
            selection = select_within_budget(
                candidates, ctx.remaining_budget, unit_pricing(net, ctx)
            )
        if selection.over_budget:
            event.stop_reason = "budget exhausted"
        event.predicted_loss_change = 0.0  # new units output exactly 0
        with event.phase("apply"):
            for plan in reversed(plans):  # output side first (convention 9, docs/conventions.md)
                self._apply(net, event, plan, selection.units.get(plan.site_name, 0))

    def _apply(self, net: GrowableNet, event: GrowthEvent, plan: _Plan, count: int) -> None:
        site = net.site(plan.site_name)
        values = plan.singular_values
        top = sum(value**2 for value in values[:count])
        event.extras[site.name] = {
            "c": plan.c,
            "sigma_prime_zero": plan.slope,
            "wanted": plan.wanted,
            "added": count,
            "singular_values": values,
            "predicted_grad_norm_sq": plan.slope**2 * plan.c**2 * top,
        }
        event.scores[site.name] = values
        if count == 0:
            return
        fan_out = _pad_fan_out(site, plan.c * plan.directions[:count])
        d_in = site.fan_in_size - (site.producer.bias is not None)
        fan_in = torch.zeros(count, d_in, dtype=torch.float64)
        new_ids = site.add_units(fan_in, fan_out)
        event.selected[site.name] = [[unit, "new"] for unit in new_ids]


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
