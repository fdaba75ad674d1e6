"""``senn``: Self-Expanding Neural Networks (Mitchell, Menzenbach, Kersting, Mundt, 2307.04526).

Rule: add capacity only where it raises the natural-gradient length η = ∇Lᵀ F⁻¹ ∇L (the loss
decrease one natural-gradient step can reach) a lot compared with what the existing layer offers.
At a site and its consumer (Kronecker factors, the consumer's bias left out as the official code
does): A = E[h hᵀ] and M = E[h g_aᵀ] over the consumer's inputs h (its im2col patches for a conv)
and output gradients g_a, Ĝ = E[ĝ ĝᵀ] over the gradients of the *normalised* per-sample output
gradients ê = e/‖e‖, G_reg = Ĝ + 0.1·(tr Ĝ / q)·I, and the layer's reference η_W = tr(Mᵀ A⁺ M Ĝ⁺).
The residual r = g_a − Mᵀ A⁺ h is what the existing inputs cannot explain. A candidate unit with
fan-in α gives the consumer new inputs f (its output through the site's per-unit path: one value
per sample for a Linear consumer after a global pool, the kernel taps for a conv, the positions
after a flatten), and its score is the Kronecker lower bound of the rise of η

    Δη′ = tr(cᵀ A_f⁺ c G_reg⁺),   c = E[f rᵀ],  A_f = E[f fᵀ],

invariant to the scale of f, so the new unit's fan-out starts at 0 and the function is unchanged.
Per site, ``proposals`` random fan-ins (weights from the producer's default init, bias N(0, 1),
``ctx.generator``) are improved by ascent on Δη′/η_W; one is drawn with probabilities
softmax(Δη′/(T·η_W)) and the site's score is Σ π·Δη′. A site is accepted when score/η_W > τ and
score/E‖e‖² > α_abs; the best accepted site gets its drawn unit, and with ``recursive`` the
statistics are taken again and the round repeats until nothing passes, the budget is spent or
``max_additions`` units were added.

Kept from the official code (ml-research/self-expanding-neural-networks, ``senn_mlp``): the
score, the thresholds and their defaults' meaning, the softmax draw, zero fan-out, recursion, the
bias left out of the factors, Ĝ from normalised output gradients, pinv everywhere. Changed [ours]:
the proposal search is deterministic ascent (normalised gradient steps from 0.3, ×1.3 on
success, ÷3 and undone on failure, with a 1e-2·log(‖w‖²)² penalty keeping the fan-in weight norm
near 1, our reading of the code's log-det term) instead of MALA; conv sites use the same score
on the consumer's patches (K-FAC for convolutions); everything is float64; the suite's optimiser
trains the net (the official code trains with natural gradient).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from growbench.claims import Claim
from growbench.methods._bottleneck import consumer_taps, output_rows, patch_maps, unsupported_reason
from growbench.methods.base import Grower, GrowerConfig, GrowthContext, GrowthEvent
from growbench.methods.registry import register
from growbench.nn import GrowableNet, Site, collect_taps


@dataclass
class SENNConfig(GrowerConfig):
    threshold: float = 0.03  # τ: accept when score / η_W exceeds it
    abs_threshold: float = 2.5e-3  # α_abs: and when score / E‖e‖² exceeds it
    proposals: int = 32
    proposal_steps: int = 50
    proposal_step: float = 0.3
    temperature: float = 10.0
    proposal_samples: int = 512  # the first samples of the statistics set
    g_tikhonov: float = 0.1  # G_reg = Ĝ + g_tikhonov · (tr Ĝ / q) · I
    norm_penalty: float = 1e-2  # · log(‖w‖²)² on each proposal's fan-in weights
    recursive: bool = True
    max_additions: int = 64  # units added in one event at most

    def __post_init__(self) -> None:
        if self.proposals < 1 or self.proposal_steps < 0 or self.proposal_samples < 1:
            raise ValueError("senn: proposals and proposal_samples must be positive")
        for name in ("threshold", "abs_threshold", "proposal_step", "temperature", "g_tikhonov"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"senn: {name} must be a positive number, got {value!r}")
        if self.max_additions < 1:
            raise ValueError("senn: max_additions must be at least 1")


# ------------------------------------------------------------------------- the statistics
def consumer_rows(site: Site, consumer_input: Tensor) -> Tensor:
    """h as rows (sample, output position) × m, the consumer's bias left out."""
    consumer = site.consumer
    if isinstance(consumer, nn.Linear):
        return consumer_input.flatten(1)
    taps = consumer_taps(site, consumer_input)  # N × C × T × O
    return taps.flatten(1, 2).transpose(1, 2).reshape(-1, taps.shape[1] * taps.shape[2])


def gradient_rows(grad_output: Tensor) -> Tensor:
    """g_a as rows (sample, output position) × q."""
    rows = output_rows(grad_output)  # N × q × O
    return rows.transpose(1, 2).reshape(-1, rows.shape[1])


@dataclass
class SiteStatistics:
    """The factors of one site on the proposal batch (float64)."""

    eta: float  # η_W = tr(Mᵀ A⁺ M Ĝ⁺)
    residual: Tensor  # r rows (sample, output position) × q
    g_reg_inverse: Tensor  # G_reg⁻¹ (q × q)
    maps: Tensor  # the producer's patch maps x̃ (N × p × H × W), for the candidates' features
    count: int


def output_gradients(net: GrowableNet, inputs: Tensor, targets: Tensor, loss_fn) -> Tensor:
    """e = ∂ℓ/∂y per sample, eval mode."""
    training = net.training
    net.eval()
    try:
        with torch.enable_grad():
            outputs = net(inputs).detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(loss_fn(outputs, targets).sum(), outputs)
    finally:
        net.train(training)
    return grad


def site_statistics(
    net: GrowableNet, inputs: Tensor, targets: Tensor, loss_fn, sites: list[Site], tikhonov: float
) -> tuple[dict[str, SiteStatistics], float]:
    """The factors of every site, and E‖e‖², from two taps passes on one batch: with the loss
    (h, g_a, the producer input) and seeded with the normalised output gradients (ĝ)."""
    e = output_gradients(net, inputs, targets, loss_fn)
    loss_sqnorm = float((e.double() ** 2).flatten(1).sum(1).mean())
    normalised = e / e.flatten(1).norm(dim=1).clamp_min(1e-30).reshape(-1, *[1] * (e.ndim - 1))
    raw, _ = collect_taps(
        net, inputs, targets, loss_fn, sites=sites, want=("input", "consumer_input", "grad_output")
    )
    seeded, _ = collect_taps(
        net, inputs, output_grad=normalised, sites=sites, want=("grad_output",)
    )
    count = len(inputs)
    result = {}
    for site in sites:
        h = consumer_rows(site, raw[site.name].consumer_input).double()
        g = gradient_rows(raw[site.name].grad_output).double()
        hat = gradient_rows(seeded[site.name].grad_output).double()
        A, M, G = h.T @ h / count, h.T @ g / count, hat.T @ hat / count
        projection = torch.linalg.pinv(A) @ M  # A⁺M, m × q
        eta = float((M * (projection @ torch.linalg.pinv(G).T)).sum())  # tr(Mᵀ A⁺ M G⁺)
        q = G.shape[0]
        g_reg = G + tikhonov * float(G.trace()) / q * torch.eye(q, dtype=G.dtype)
        result[site.name] = SiteStatistics(
            eta,
            g - h @ projection,
            torch.linalg.inv(g_reg),
            patch_maps(site, raw[site.name].input).double(),
            count,
        )
    return result, loss_sqnorm


# ------------------------------------------------------------------------ the candidates
def candidate_features(site: Site, maps: Tensor, alpha: Tensor) -> Tensor:
    """f of K candidate units with fan-in rows α (K × p, bias last): the consumer's new inputs,
    rows (sample, output position) × K × T (T = kernel taps or flattened positions)."""
    units = torch.einsum("nphw,kp->nkhw", maps, alpha)
    read = consumer_taps(site, site.unit_path(units))  # N × K × T × O
    return read.permute(0, 3, 1, 2).reshape(-1, read.shape[1], read.shape[2])


def expansion_scores(features: Tensor, stats: SiteStatistics) -> Tensor:
    """Δη′ = tr(cᵀ A_f⁺ c G_reg⁻¹) of each candidate (K,), c = E[f rᵀ], A_f = E[f fᵀ]."""
    count = stats.count
    c = torch.einsum("rkt,rq->ktq", features, stats.residual) / count  # K × T × q
    a_f = torch.einsum("rkt,rks->kts", features, features) / count  # K × T × T
    if a_f.shape[1] == 1:  # one new input per unit: A_f⁺ is 1/E[f²] (0 for a dead candidate)
        inverse = torch.where(a_f > 1e-300, 1 / a_f.clamp_min(1e-300), torch.zeros_like(a_f))
    else:
        inverse = torch.linalg.pinv(a_f, hermitian=True)
    solved = inverse @ c @ stats.g_reg_inverse
    return (solved * c).sum(dim=(1, 2))


def proposal_objective(site: Site, stats: SiteStatistics, alpha: Tensor, penalty: float) -> Tensor:
    """Δη′/η_W minus the fan-in norm penalty, per proposal (K,)."""
    scores = expansion_scores(candidate_features(site, stats.maps, alpha), stats)
    weights = alpha[:, : alpha.shape[1] - (site.producer.bias is not None)]
    norm_term = torch.log((weights * weights).sum(dim=1).clamp_min(1e-30)) ** 2
    return scores / max(stats.eta, 1e-30) - penalty * norm_term


def improve_proposals(
    site: Site, stats: SiteStatistics, alpha: Tensor, config: SENNConfig
) -> Tensor:
    """Ascent on ``proposal_objective``, one step size per proposal: a normalised gradient step;
    kept and the step ×1.3 if the objective rose, undone and the step ÷3 if not. One evaluation
    (value and gradient) per step."""

    def evaluate(point: Tensor) -> tuple[Tensor, Tensor]:
        with torch.enable_grad():
            leaf = point.detach().requires_grad_(True)
            value = proposal_objective(site, stats, leaf, config.norm_penalty)
            (gradient,) = torch.autograd.grad(value.sum(), leaf)
        return value.detach(), gradient

    step = torch.full((alpha.shape[0], 1), config.proposal_step, dtype=alpha.dtype)
    current = alpha.detach()
    value, gradient = evaluate(current)
    for _ in range(config.proposal_steps):
        direction = gradient / gradient.norm(dim=1, keepdim=True).clamp_min(1e-30)
        trial = current + step * direction
        trial_value, trial_gradient = evaluate(trial)
        better = (trial_value > value)[:, None]
        step = torch.where(better, step * 1.3, step / 3)
        current = torch.where(better, trial, current)
        gradient = torch.where(better, trial_gradient, gradient)
        value = torch.where(better[:, 0], trial_value, value)
    return current


def initial_proposals(site: Site, count: int, generator: torch.Generator) -> Tensor:
    """Fan-in rows (count × p): weights as the producer's default init (uniform in
    ±1/sqrt(fan-in)), bias N(0, 1)."""
    fan_in = site.producer.weight[0].numel()
    bound = 1.0 / math.sqrt(fan_in)
    weights = (2 * torch.rand(count, fan_in, generator=generator, dtype=torch.float64) - 1) * bound
    if site.producer.bias is None:
        return weights
    bias = torch.randn(count, 1, generator=generator, dtype=torch.float64)
    return torch.cat([weights, bias], dim=1)


# ------------------------------------------------------------------------------ the plugin
@dataclass
class SiteDecision:
    """One site's drawn candidate and whether it passes the thresholds."""

    site: str
    alpha: Tensor  # the drawn fan-in row (p,)
    score: float  # Σ π·Δη′
    eta: float
    relative: float  # score / η_W
    absolute: float  # score / E‖e‖²
    accepted: bool
    scores: list[float]  # Δη′ of every proposal after the ascent


def decide(
    name: str,
    scores: Tensor,
    proposals: Tensor,
    eta: float,
    loss_sqnorm: float,
    config: SENNConfig,
    generator: torch.Generator,
) -> SiteDecision:
    """π = softmax(Δη′/(T·η_W)), one proposal drawn from π, score Σ π·Δη′, two thresholds."""
    weights = torch.softmax(scores / (config.temperature * max(eta, 1e-30)), dim=0)
    drawn = int(torch.multinomial(weights.float(), 1, generator=generator))
    score = float((weights * scores).sum())
    relative, absolute = score / max(eta, 1e-30), score / max(loss_sqnorm, 1e-30)
    accepted = relative > config.threshold and absolute > config.abs_threshold
    return SiteDecision(
        name, proposals[drawn], score, eta, relative, absolute, accepted, scores.tolist()
    )


@register
class SENN(Grower):
    name = "senn"
    Config = SENNConfig
    preserves_function = "exact"
    quick_overrides = {
        "proposals": 4,
        "proposal_steps": 4,
        "proposal_samples": 64,
        "max_additions": 3,
    }
    description = (
        "self-expanding nets: add a unit where the natural-expansion score Δη′ (a lower bound of "
        "the rise in natural-gradient length) passes relative and absolute thresholds"
    )
    claims = (
        Claim(
            paper="Mitchell, Menzenbach, Kersting & Mundt 2023, arXiv:2307.04526",
            statement=(
                "Self-expanding nets reach the loss of the fixed-size net trained at the budget "
                "while adding units only while they help"
            ),
            method="senn",
            baseline="static",
            relation="non_inferior",
            margin=0.01,
        ),
    )

    def refusal(self, site: Site) -> str | None:
        return super().refusal(site) or unsupported_reason(site)

    def grow_step(self, net: GrowableNet, ctx: GrowthContext, event: GrowthEvent) -> None:
        config = self.config
        inputs = ctx.inputs[: config.proposal_samples]
        targets = ctx.targets[: config.proposal_samples]
        spent = 0.0
        rounds = []
        event.predicted_loss_change = 0.0  # new units have zero fan-out
        while len(rounds) < config.max_additions:
            sites = [site for site in self.growable_sites(net) if site.activation != "identity"]
            with event.phase("stats"):
                stats, loss_sqnorm = site_statistics(
                    net, inputs, targets, ctx.loss_fn, sites, config.g_tikhonov
                )
            decisions = []
            for site in sites:
                site_stats = stats[site.name]
                with event.phase("search"):
                    start = initial_proposals(site, config.proposals, ctx.generator)
                    proposals = improve_proposals(site, site_stats, start, config)
                    with torch.no_grad():
                        features = candidate_features(site, site_stats.maps, proposals)
                        scores = expansion_scores(features, site_stats)
                with event.phase("select"):
                    decisions.append(
                        decide(site.name, scores, proposals, site_stats.eta, loss_sqnorm,
                               config, ctx.generator)
                    )  # fmt: skip
            del stats
            if not rounds:
                for decision in decisions:
                    event.scores[decision.site] = decision.scores
            accepted = sorted(
                (d for d in decisions if d.accepted), key=lambda d: (-d.score, d.site)
            )
            chosen = None
            for decision in accepted:
                cost = net.site(decision.site).cost_of_units(1)[ctx.budget_metric]
                if spent + cost <= ctx.remaining_budget:
                    chosen = decision
                    break
            rounds.append(
                {
                    "loss_sqnorm": loss_sqnorm,
                    "sites": {
                        d.site: {
                            "eta": d.eta,
                            "score": d.score,
                            "relative": d.relative,
                            "absolute": d.absolute,
                            "accepted": d.accepted,
                        }
                        for d in decisions
                    },
                    "added": chosen.site if chosen else None,
                }
            )
            if chosen is None:
                if accepted:
                    event.stop_reason = "budget exhausted"
                elif not event.grew and len(rounds) == 1:
                    event.stop_reason = "no proposal passed thresholds"
                break
            with event.phase("apply"):
                site = net.site(chosen.site)
                spent += site.cost_of_units(1)[ctx.budget_metric]
                has_bias = site.producer.bias is not None
                fan_in = chosen.alpha[: len(chosen.alpha) - has_bias][None]
                bias = chosen.alpha[-1:] if has_bias else None
                unit = site.add_units(
                    fan_in, torch.zeros(1, site.fan_out_size, dtype=torch.float64), bias
                )
                event.selected.setdefault(site.name, []).extend([u, "new"] for u in unit)
            if not config.recursive:
                break
        event.extras["rounds"] = rounds
        event.extras["predicted_eta_gain"] = [
            r["sites"][r["added"]]["score"] for r in rounds if r["added"] is not None
        ]
