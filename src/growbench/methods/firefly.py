"""``firefly``: Firefly neural architecture descent (Wu, Liu, Stone & Liu, NeurIPS 2020,
arXiv 2102.08574).

Rule: grow by a short optimisation instead of a closed form. On top of the frozen net (eval mode,
hooks only; the net is not changed during the search) a *super-network* switches on, at every
site, a split direction v_i per existing unit (two children θ_i ± v_i with half the fan-out
each) and K brand-new candidate units (fan-in α_k over the producer's old input, bias 0, the
per-unit path at its new-unit entries) whose fan-out Ω reaches every unit of the consumer,
including the next site's candidates:

    old unit i:  u_i = ½ [path(z_i + v_iᵀx) + path(z_i − v_iᵀx)]      (z_i includes Ω_{s−1} terms)
    candidate k: u_k = path_new(α_kᵀx + m_k)

Only {v, α, Ω} are trained, by RMSprop (lr 1e-3, momentum 0.1, alpha 0.9) for ``search_steps``
mini-batches of the statistics set on L_super + 1e-2·Σ‖v‖² + 1e-4·Σ‖α‖². Each candidate's score
is the gradient of L_super with respect to a gate scaling its perturbation (±v_iᵀx for a split,
α_kᵀx for a new unit) at scale 1, over one pass of the statistics set: its first-order loss
change when the trained perturbation is scaled up, negative being good. The ``growth_ratio`` ·
(units of all sites) most negative scores of the pooled splits and new units are kept (ties:
site order, splits before new units, index), each costing one unit, truncated to the budget.
Surgery runs from the output side to the input side and writes the searched weights, so the
grown net in eval mode computes the super-network restricted to the kept candidates.

Kept from the official code (klightz/Firefly, ``fireflyn``): the candidate super-network with
cand→cand fan-out, the search objective and optimiser, the initialisations (v ~ U(±0.1),
α ~ N(0, 0.1²), Ω ~ U(±0.01)), the gate-gradient score at one point, the global ranking, the
unscaled split step. Not copied: the code keeps n_select + 1 candidates (we keep n_select); it
writes zero fan-out for the last hidden site's new units (we write the trained Ω); every site of
every GrowableNet is supported, not only chains of convs. ``max_search_bytes`` caps K on conv
sites so the super-network's extra activations fit (an estimate, recorded per site).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
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
from growbench.nn import GrowableNet, Site


@dataclass
class FireflyConfig(GrowerConfig):
    candidates: int = 32  # K new candidate units per site
    search_steps: int = 200
    search_batch: int = 128
    lr: float = 1e-3
    momentum: float = 0.1
    alpha: float = 0.9  # RMSprop's smoothing constant
    split_penalty: float = 1e-2  # · Σ‖v‖²
    new_penalty: float = 1e-4  # · Σ‖α‖²
    growth_ratio: float = 0.3
    max_search_bytes: float = 2**30  # cap on the candidates' extra activations, conv sites

    def __post_init__(self) -> None:
        if self.candidates < 0 or self.search_steps < 0 or self.search_batch < 1:
            raise ValueError("firefly: candidates, search_steps must be >= 0, search_batch >= 1")
        for name in ("lr", "growth_ratio", "max_search_bytes"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"firefly: {name} must be a positive number")
        if self.split_penalty < 0 or self.new_penalty < 0:
            raise ValueError("firefly: the penalties must be >= 0")


# --------------------------------------------------------------------- the super-network
def _apply_producer(site: Site, x: Tensor, weight: Tensor) -> Tensor:
    """The producer's linear map with another weight (no bias)."""
    producer = site.producer
    if isinstance(producer, nn.Linear):
        return F.linear(x, weight)
    return F.conv2d(
        x, weight, None, producer.stride, producer.padding, producer.dilation, producer.groups
    )


def _apply_consumer(site: Site, units: Tensor, omega: Tensor) -> Tensor:
    """The consumer's linear map of new units' path outputs (N × K × ...) with fan-out Ω
    (rows × K × T), no bias."""
    consumer = site.consumer
    if isinstance(consumer, nn.Linear):
        return F.linear(units.flatten(1), omega.flatten(1))
    kernel = omega.reshape(omega.shape[0], omega.shape[1], *consumer.kernel_size)
    return F.conv2d(
        units, kernel, None, consumer.stride, consumer.padding, consumer.dilation, consumer.groups
    )


@dataclass
class SiteSearch:
    """One site's search variables and gates."""

    site: Site
    split: Tensor  # V, the producer's weight shape: a direction per old unit
    new: Tensor  # α (K × the producer's fan-in shape)
    omega: Tensor  # Ω (consumer rows + the next site's K) × K × T
    next_site: str | None  # the growable site this site's consumer produces, if any
    consumer_rows: int
    split_gate: Tensor = field(init=False)
    new_gate: Tensor = field(init=False)
    new_mask: Tensor = field(init=False)  # 1 keeps a candidate in the super-network
    split_mask: Tensor = field(init=False)

    def __post_init__(self) -> None:
        like = self.split
        self.split_gate = torch.ones(self.split.shape[0], dtype=like.dtype, device=like.device)
        self.new_gate = torch.ones(self.new.shape[0], dtype=like.dtype, device=like.device)
        self.new_mask = torch.ones_like(self.new_gate)
        self.split_mask = torch.ones_like(self.split_gate)

    def variables(self) -> list[Tensor]:
        return [self.split, self.new, self.omega]


def _per_channel(values: Tensor, like: Tensor) -> Tensor:
    return values.reshape(1, -1, *[1] * (like.ndim - 2))


class SuperNetwork:
    """Hooks that turn the frozen net into the super-network of ``searches`` while active."""

    def __init__(self, net: GrowableNet, searches: dict[str, SiteSearch]) -> None:
        self.net, self.searches = net, searches
        self.record: dict[str, dict[str, Tensor]] = {}

    def __enter__(self) -> SuperNetwork:
        self.handles = []
        for name, search in self.searches.items():  # Ω into the consumer, first
            self.handles.append(search.site.consumer.register_forward_hook(self._fan_out(name)))
        for name, search in self.searches.items():
            site = search.site
            self.handles.append(site.producer.register_forward_hook(self._record(name)))
            self.handles.append(site.consumer.register_forward_pre_hook(self._replace(name)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        self.record = {}

    def _record(self, name: str):
        def hook(_module, args, output):
            self.record.setdefault(name, {}).update(x=args[0], z=output)

        return hook

    def _replace(self, name: str):
        search = self.searches[name]
        site = search.site

        def hook(_module, args):
            state = self.record[name]
            x, z = state["x"], state["z"]
            delta = _apply_producer(site, x, search.split)
            delta = delta * _per_channel(search.split_gate * search.split_mask, delta)
            old = 0.5 * (site.run_between(z + delta) + site.run_between(z - delta))
            pre = _apply_producer(site, x, search.new)
            pre = pre * _per_channel(search.new_gate, pre)
            if "m" in state:
                pre = pre + state["m"]
            state["u_new"] = site.unit_path(pre) * _per_channel(search.new_mask, pre)
            return (old,)

        return hook

    def _fan_out(self, name: str):
        search = self.searches[name]

        def hook(_module, _args, output):
            state = self.record[name]
            if search.new.shape[0] == 0:
                return output
            added = _apply_consumer(search.site, state["u_new"], search.omega)
            rows = search.consumer_rows
            if search.next_site is not None:
                self.record.setdefault(search.next_site, {})["m"] = added[:, rows:]
            return output + added[:, :rows]

        return hook


# ------------------------------------------------------------------------------ building
def candidate_counts(
    net: GrowableNet, sites: list[Site], config: FireflyConfig, sample: Tensor
) -> dict[str, int]:
    """K per site: ``candidates``, capped on conv sites so that, on one search batch, the extra
    activations of the super-network (the old units' doubled path and the candidates' maps, each
    kept along the per-unit path for the backward pass) fit an equal share of
    ``max_search_bytes``."""
    sizes = output_sizes(net, sites, sample)
    share = config.max_search_bytes / max(1, len(sites))
    counts = {}
    for site in sites:
        count = config.candidates
        if isinstance(site.producer, nn.Conv2d):
            itemsize = site.producer.weight.element_size()
            per_map = config.search_batch * sizes[site.name] * itemsize * (len(site.between) + 2)
            affordable = int(share // max(1, per_map)) - 2 * site.width
            count = max(1, min(count, affordable))
        counts[site.name] = count
    return counts


def build_searches(
    net: GrowableNet, sites: list[Site], config: FireflyConfig, ctx: GrowthContext
) -> dict[str, SiteSearch]:
    """The search variables at their initialisations (ctx.generator): v ~ U(±0.1),
    α ~ N(0, 0.1²), Ω ~ U(±0.01)."""
    by_producer = {id(site.producer): site for site in sites}
    counts = candidate_counts(net, sites, config, ctx.inputs[:1])
    searches = {}
    for site in sites:
        weight = site.producer.weight
        dtype, device, g = weight.dtype, weight.device, ctx.generator  # drawn on the CPU
        split = (torch.rand(weight.shape, generator=g, dtype=dtype) * 0.2 - 0.1).to(device)
        k = counts[site.name]
        new = (0.1 * torch.randn(k, *weight.shape[1:], generator=g, dtype=dtype)).to(device)
        following = by_producer.get(id(site.consumer))
        rows = site.consumer.weight.shape[0]
        extra = counts[following.name] if following is not None else 0
        taps = site.fan_out_size // rows
        omega = torch.rand(rows + extra, k, taps, generator=g, dtype=dtype) * 0.02 - 0.01
        searches[site.name] = SiteSearch(
            site, split, new, omega.to(device), following.name if following else None, rows
        )
    for search in searches.values():
        for variable in search.variables():
            variable.requires_grad_(True)
    return searches


def output_sizes(net: GrowableNet, sites: list[Site], sample: Tensor) -> dict[str, int]:
    """Output positions of each site's producer (1 for a Linear), from one sample."""
    sizes = {}
    handles = [
        site.producer.register_forward_hook(
            lambda _m, _a, out, name=site.name: sizes.__setitem__(name, out[0, 0].numel())
        )
        for site in sites
    ]
    try:
        with torch.no_grad():
            training = net.training
            net.eval()
            net(sample)
            net.train(training)
    finally:
        for handle in handles:
            handle.remove()
    return sizes


# ------------------------------------------------------------------------ search, scores
def super_loss(
    net: GrowableNet, searches: dict[str, SiteSearch], inputs: Tensor, targets: Tensor, loss_fn
) -> Tensor:
    """Mean loss of the super-network on a batch."""
    with SuperNetwork(net, searches):
        return loss_fn(net(inputs), targets).mean()


def penalty(searches: dict[str, SiteSearch], config: FireflyConfig) -> Tensor:
    total = 0.0
    for search in searches.values():
        total = total + config.split_penalty * (search.split**2).sum()
        total = total + config.new_penalty * (search.new**2).sum()
    return total


def search(
    net: GrowableNet,
    searches: dict[str, SiteSearch],
    ctx: GrowthContext,
    config: FireflyConfig,
) -> list[float]:
    """RMSprop on {v, α, Ω} for ``search_steps`` seeded mini-batches; the objective curve."""
    variables = [v for s in searches.values() for v in s.variables()]
    optimizer = torch.optim.RMSprop(
        variables, lr=config.lr, momentum=config.momentum, alpha=config.alpha
    )
    curve = []
    count = len(ctx.inputs)
    order = torch.randperm(count, generator=ctx.generator)
    cursor = 0
    for _ in range(config.search_steps):
        if cursor + config.search_batch > count and cursor > 0:
            order, cursor = torch.randperm(count, generator=ctx.generator), 0
        batch = order[cursor : cursor + config.search_batch].to(ctx.device)
        cursor += config.search_batch
        with torch.enable_grad():
            objective = super_loss(
                net, searches, ctx.inputs[batch], ctx.targets[batch], ctx.loss_fn
            ) + penalty(searches, config)
            grads = torch.autograd.grad(objective, variables)
        for variable, grad in zip(variables, grads):
            variable.grad = grad
        optimizer.step()
        curve.append(float(objective.detach()))
    for variable in variables:
        variable.grad = None
    return curve


def gate_scores(
    net: GrowableNet, searches: dict[str, SiteSearch], ctx: GrowthContext
) -> dict[str, tuple[Tensor, Tensor]]:
    """∂L_super/∂(gate) at gate 1 for every split and new candidate, over one pass of the
    statistics set (mean loss per batch, batches weighted by size)."""
    gates = []
    for s in searches.values():
        s.split_gate.requires_grad_(True)
        s.new_gate.requires_grad_(True)
        gates += [s.split_gate, s.new_gate]
    totals = [torch.zeros_like(g) for g in gates]
    count = len(ctx.inputs)
    try:
        for inputs, targets in ctx.batches():
            with torch.enable_grad():
                loss = super_loss(net, searches, inputs, targets, ctx.loss_fn)
                grads = torch.autograd.grad(loss, gates, allow_unused=True)
            for total, grad in zip(totals, grads):
                if grad is not None:
                    total += grad * (len(inputs) / count)
    finally:
        for gate in gates:
            gate.requires_grad_(False)
    result = {}
    for index, name in enumerate(searches):
        result[name] = (totals[2 * index].detach(), totals[2 * index + 1].detach())
    return result


# ---------------------------------------------------------------------------- selection
def rank_candidates(
    scores: dict[str, tuple[Tensor, Tensor]], site_order: list[str]
) -> list[tuple[str, str, int, float]]:
    """Every candidate (site, kind, index, score), most negative first; ties: site order, splits
    before new units, index."""
    pool = []
    for position, name in enumerate(site_order):
        split, new = scores[name]
        pool += [(float(v), position, 0, i, name, "split") for i, v in enumerate(split.tolist())]
        pool += [(float(v), position, 1, k, name, "new") for k, v in enumerate(new.tolist())]
    pool.sort()
    return [(name, kind, index, score) for score, _, _, index, name, kind in pool]


def select(
    net: GrowableNet, ranked: list, n_select: int, ctx: GrowthContext
) -> list[tuple[str, str, int, float]]:
    """The first ``n_select`` of the ranking that fit the budget together (one unit each)."""
    fits = take_within_budget(net, ctx, [name for name, *_ in ranked])
    chosen = [candidate for candidate, ok in zip(ranked, fits) if ok]
    return chosen[:n_select]


# ------------------------------------------------------------------------------ surgery
def apply_selection(
    net: GrowableNet,
    searches: dict[str, SiteSearch],
    chosen: list[tuple[str, str, int, float]],
    event: GrowthEvent,
) -> None:
    """Write the kept candidates, sites from the output side to the input side, so a site's new
    units see the consumer's final units: a split consumer unit's offspring take the parent's
    Ω entry, the next site's new units take the cand→cand entries."""
    origins: dict[str, list[tuple[str, int]]] = {}
    order = [site.name for site in net.sites if site.name in searches]
    for name in reversed(order):
        search = searches[name]
        site = search.site
        splits = sorted(i for s, kind, i, _ in chosen if s == name and kind == "split")
        news = sorted(k for s, kind, k, _ in chosen if s == name and kind == "new")
        origin: dict[int, tuple[str, int]] = {i: ("old", i) for i in range(site.width)}
        with torch.no_grad():
            if splits:
                has_bias = site.producer.bias is not None
                v = search.split.detach()[splits].reshape(len(splits), -1)
                if has_bias:
                    v = torch.cat([v, v.new_zeros(len(splits), 1)], dim=1)
                deltas = torch.stack([v, -v], dim=1)
                halves = torch.full((len(splits), 2), 0.5, dtype=v.dtype, device=v.device)
                offspring = site.split(splits, deltas, halves)
                for parent, children in zip(splits, offspring):
                    origin.update((child, ("old", parent)) for child in children)
            if news:
                rows = [
                    r if kind == "old" else search.consumer_rows + r
                    for kind, r in consumer_origins(search, origins)
                ]
                columns = search.omega.detach()[rows][:, news]  # units × kept × T
                columns = columns.permute(1, 0, 2).reshape(len(news), -1)
                fan_in = search.new.detach()[news].reshape(len(news), -1)
                units = site.add_units(fan_in, columns)
                origin.update((unit, ("new", k)) for unit, k in zip(units, news))
        origins[name] = [origin[i] for i in range(site.width)]
        event.selected[name] = [[i, "split"] for i in splits] + [[k, "new"] for k in news]


def consumer_origins(
    search: SiteSearch, origins: dict[str, list[tuple[str, int]]]
) -> list[tuple[str, int]]:
    """What each of the consumer's current units was in the super-network."""
    if search.next_site is not None and search.next_site in origins:
        return origins[search.next_site]
    return [("old", i) for i in range(search.consumer_rows)]


# ------------------------------------------------------------------------------ the plugin
@register
class Firefly(Grower):
    name = "firefly"
    Config = FireflyConfig
    preserves_function = "no"
    quick_overrides = {"candidates": 3, "search_steps": 3}
    description = (
        "Firefly descent: train split directions and new candidate units together in a "
        "super-network for a few steps, keep the candidates whose gate gradient is most negative"
    )
    claims = (
        Claim(
            paper="Wu, Liu, Stone & Liu, NeurIPS 2020, arXiv:2102.08574",
            statement="Firefly descent beats splitting steepest descent at equal parameters",
            method="firefly",
            baseline="s2d",
        ),
        Claim(
            paper="Wu, Liu, Stone & Liu, NeurIPS 2020, arXiv:2102.08574",
            statement="Firefly descent beats random growth at equal parameters",
            method="firefly",
            baseline="random-add",
        ),
    )

    def grow_step(self, net: GrowableNet, ctx: GrowthContext, event: GrowthEvent) -> None:
        config = self.config
        sites = self.growable_sites(net)
        n_select = math.floor(config.growth_ratio * sum(site.width for site in sites))
        if n_select < 1:
            event.stop_reason = "growth_ratio selects no unit"
            return
        training = net.training
        net.eval()
        try:
            with event.phase("search"):
                searches = build_searches(net, sites, config, ctx)
                curve = search(net, searches, ctx, config)
            with event.phase("select"):
                scores = gate_scores(net, searches, ctx)
                ranked = rank_candidates(scores, [site.name for site in sites])
                chosen = select(net, ranked, n_select, ctx)
                base = ctx.loss(net)
                restrict(searches, chosen)
                with torch.no_grad():
                    restricted = sum(
                        float(super_loss(net, searches, x, y, ctx.loss_fn)) * len(x)
                        for x, y in ctx.batches()
                    ) / len(ctx.inputs)
            for name, (split, new) in scores.items():
                event.scores[name] = split.tolist()
                event.scores[f"{name}/new"] = new.tolist()
            event.extras["search_objective"] = curve
            event.extras["search_loss_drop"] = restricted - base
            event.extras["candidates"] = {n: s.new.shape[0] for n, s in searches.items()}
            if not chosen:
                event.stop_reason = "budget exhausted"
                return
            with event.phase("apply"):
                apply_selection(net, searches, chosen, event)
        finally:
            net.train(training)


def restrict(searches: dict[str, SiteSearch], chosen: list[tuple[str, str, int, float]]) -> None:
    """Switch off every candidate not in ``chosen`` (its split direction or its unit)."""
    kept = {(name, kind, index) for name, kind, index, _ in chosen}
    for name, s in searches.items():
        s.split_mask = torch.tensor(
            [float((name, "split", i) in kept) for i in range(len(s.split_mask))],
            dtype=s.split_mask.dtype,
            device=s.split_mask.device,
        )
        s.new_mask = torch.tensor(
            [float((name, "new", k) in kept) for k in range(len(s.new_mask))],
            dtype=s.new_mask.dtype,
            device=s.new_mask.device,
        )
