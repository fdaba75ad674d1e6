"""``firefly``: Firefly neural architecture descent (Wu, Liu, Stone & Liu, NeurIPS 2020,
arXiv 2102.08574).

Rule: grow by a short optimisation instead of a closed form. On top of the frozen net (eval mode,
hooks only; the net is not changed during the search) a *super-network* switches on, at every
site, a split direction v_i per existing unit (two children θ_i ± v_i with half the fan-out
each) and K brand-new candidate units (fan-in α_k over the producer's old input, bias 0, the
per-unit path at its new-unit entries) whose fan-out Ω reaches every unit of the consumer,
including the next site's candidates:

    old unit i:  u_i = ½ [path(z_i + v_iᵀx) + path(z_i − v_iᵀx)]      (z_i includes Ω_(s−1) terms)
    candidate k: u_k = path_new(α_kᵀx + m_k)

Only {v, α, Ω} are trained, by RMSprop (lr 1e-3, momentum 0.1, alpha 0.9) on mini-batches of
the statistics set (a fresh seeded order each pass) on L_super + 1e-2·Σ‖v‖² + 1e-4·Σ‖α‖², for
``search_steps`` batches or, by default, one pass of the statistics set. Each candidate's score
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
every GrowableNet is supported, not only chains of convs; the code re-draws the classifier's bias
at every growth step (a defect: it changes the function for no reason; we leave it alone).
Changed: where a max pool follows a split unit, its two children are averaged after the pool
(the per-unit path as the net runs it); the code averages before it. Measured on the same net:
score Spearman 0.93, 18 of 20 kept candidates the same. Otherwise a Firefly step equals the
code's to 1.3e-13 on the same net, data and weights. ``max_search_bytes`` caps K on conv sites
so the super-network's extra activations fit (an estimate, recorded per site): under its
default (1 GiB) VGG-19's first two sites at 16 channels get K = 1 instead of 70, so a suite
that promises the code's K raises it (``firefly-cifar10`` does).

Search length (a decision, 2026-12-06): the code searches one epoch of its training data; we
search one pass of the statistics set unless ``search_steps`` is set: the code's length where
the statistics set is the whole training set (every task of the default suite), far shorter at
paper scale, where a suite sets the code's count (``firefly-cifar10``: 390). The former default,
128 steps, was 11 to 18 passes of the default tasks' training sets and made a growth step cost 10
to 26 training epochs; one pass changes which candidates are kept (measured in
docs/methods/firefly.md). ``search_tolerance`` stops a longer search at the end of the first pass
whose mean objective is below the previous pass's by less than that share of it; it is off by
default (the default search has one pass, and the paper suite promises the code's full epoch).
The event records the objective curve, the steps planned, the tolerance and whether the search
stopped early.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor, nn

from growbench.claims import Claim
from growbench.methods.base import Grower, GrowerConfig, GrowthContext, GrowthEvent
from growbench.methods.registry import register
from growbench.methods.selection import Candidate, Selection, select_within_budget, unit_pricing
from growbench.nn import GrowableNet, NonFiniteStatisticsError, Site, insert_layer
from growbench.nn.activations import activation_info, make_activation
from growbench.nn.counting import insertion_cost
from growbench.nn.growable import eval_mode


@dataclass
class FireflyConfig(GrowerConfig):
    positive: ClassVar[tuple[str, ...]] = ("growth_ratio", "lr", "search_batch", "max_search_bytes")
    at_most: ClassVar[dict[str, float]] = {"growth_ratio": 100.0}
    non_negative: ClassVar[tuple[str, ...]] = (
        "candidates",
        "search_steps",
        "search_tolerance",
        "momentum",
        "alpha",
        "split_penalty",
        "new_penalty",
        "max_layers",
    )
    candidates: int = 32
    """K, the brand-new candidate units offered at each site (≥ 0; max_search_bytes may lower it on
    conv sites)."""
    search_steps: int | None = None
    """Mini-batches of RMSprop that train the candidates' perturbations before scoring (≥ 0);
    None sizes the search by the problem: one pass of the statistics set, ⌊samples /
    search_batch⌋ batches (at least 1), as the official code searches one epoch of its training
    data."""
    search_tolerance: float = 0.0
    """Convergence stop: the search ends after a whole pass of the statistics set whose mean
    objective is below the previous pass's mean by less than this share of it (≥ 0; 0 never
    stops early)."""
    search_batch: int = 128
    """Statistics samples per step of the candidate search (> 0)."""
    lr: float = 1e-3
    """Learning rate of the search's RMSprop (> 0)."""
    momentum: float = 0.1
    """Momentum of the search's RMSprop (≥ 0)."""
    alpha: float = 0.9
    """Smoothing constant of the search's RMSprop (≥ 0)."""
    split_penalty: float = 1e-2
    """Weight of the Σ‖v‖² penalty on the split directions in the search objective (≥ 0)."""
    new_penalty: float = 1e-4
    """Weight of the Σ‖α‖² penalty on the new units' fan-in in the search objective (≥ 0)."""
    growth_ratio: float = 0.3
    """Candidates kept per growth step, as a share of all units of the growable sites (> 0, at most
    100)."""
    max_search_bytes: float = 2**30
    """Cap in bytes on the super-network's extra activations; lowers K on conv sites to fit
    (> 0)."""
    depth: bool = False
    """Also offer a new width-preserving layer after every site's activation as a candidate."""
    max_layers: int = 1
    """Most layers inserted in one growth step when depth is on (≥ 0)."""


# --------------------------------------------------------------------- the super-network
LAYER_INIT = 1e-2  # a candidate layer's perturbation E starts at U(±LAYER_INIT)


@dataclass
class LayerCandidate:
    """A layer that could be inserted right after a site's activation, with its trained weight
    perturbation E: ``identity``, σ(h + E h), where σ (a fresh copy of the site's activation) is
    idempotent or the identity at its initial parameters, so E = 0 is the identity; otherwise
    ``zero-branch``, h + E σ(W₁ h) with W₁ drawn and fixed. New units of the same site bypass it
    in the super-network (a site takes a layer or new width in one step, never both)."""

    kind: str
    perturbation: Tensor  # E: n × n (× k × k)
    first: Tensor | None  # W₁ of a zero-branch layer
    activation: nn.Module
    cut: int  # the layer runs after between[:cut]
    gate: Tensor = field(init=False)
    mask: Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.gate = torch.ones(1, dtype=self.perturbation.dtype, device=self.perturbation.device)
        self.mask = torch.ones_like(self.gate)

    @property
    def kernel_size(self) -> int:
        return self.perturbation.shape[-1] if self.perturbation.ndim == 4 else 1

    def __call__(self, site: Site, maps: Tensor) -> Tensor:
        perturbation = self.perturbation * (self.gate * self.mask)
        if self.kind == "identity":
            return self.activation(maps + site.producer_map.same_shape(maps, perturbation))
        inner = self.activation(site.producer_map.same_shape(maps, self.first))
        return maps + site.producer_map.same_shape(inner, perturbation)


def layer_candidate(site: Site, generator: torch.Generator) -> LayerCandidate | None:
    """The candidate layer at ``site`` (None when the site has no slot on its path)."""
    if site.slot is None or not any(m is site.slot for m in site.between):
        return None
    weight = site.producer.weight
    n, dtype = site.width, weight.dtype
    shape: tuple[int, ...] = (n, n)
    if site.producer_map.is_conv:
        k = site.producer.kernel_size[0]
        k = k if k % 2 == 1 else 1
        shape = (n, n, k, k)
    info = activation_info(site.activation)
    kind = "identity" if info.identity_at_init or info.idempotent else "zero-branch"
    perturbation = (torch.rand(shape, generator=generator, dtype=dtype) * 2 - 1) * LAYER_INIT
    first = None
    if kind == "zero-branch":  # as insert_layer draws a zero-branch's first layer
        first = torch.empty(shape, dtype=dtype)
        nn.init.kaiming_uniform_(first, a=math.sqrt(5), generator=generator)
        first = first.to(weight.device)
    activation = make_activation(site.activation, n).to(dtype=dtype, device=weight.device)
    cut = next(i for i, m in enumerate(site.between) if m is site.slot) + 1
    return LayerCandidate(kind, perturbation.to(weight.device), first, activation.eval(), cut)


def _run_between(site: Site, maps: Tensor, layer: LayerCandidate | None) -> Tensor:
    """``Site.run_between`` with the candidate layer (if any) at the site's slot; the caller
    holds the net in eval mode (``Firefly.grow_step`` does)."""
    for index, module in enumerate(site.between):
        maps = module(maps)
        if layer is not None and index == layer.cut - 1:
            maps = layer(site, maps)
    return maps


@dataclass
class SiteSearch:
    """One site's search variables and gates."""

    site: Site
    split: Tensor  # V, the producer's weight shape: a direction per old unit
    new: Tensor  # α (K × the producer's fan-in shape)
    omega: Tensor  # Ω (consumer rows + the next site's K) × K × T
    next_site: str | None  # the growable site this site's consumer produces, if any
    consumer_outputs: int  # the consumer's output units before the step (Ω's first rows)
    layer: LayerCandidate | None = None
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
        layer = [self.layer.perturbation] if self.layer is not None else []
        return [self.split, self.new, self.omega, *layer]

    def gates(self) -> list[Tensor]:
        layer = [self.layer.gate] if self.layer is not None else []
        return [self.split_gate, self.new_gate, *layer]


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
            delta = site.producer_map.apply(x, search.split)
            delta = delta * _per_channel(search.split_gate * search.split_mask, delta)
            plus, minus = z + delta, z - delta
            old = 0.5 * (
                _run_between(site, plus, search.layer) + _run_between(site, minus, search.layer)
            )
            pre = site.producer_map.apply(x, search.new)
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
            added = search.site.consumer_map.apply(state["u_new"], search.omega)
            rows = search.consumer_outputs
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
        if site.producer_map.is_conv:
            itemsize = site.producer.weight.element_size()
            per_map = config.search_batch * sizes[site.name] * itemsize * (len(site.between) + 2)
            doubled = 2 * site.width * (2 if config.depth else 1)  # the layer runs per child
            affordable = int(share // max(1, per_map)) - doubled
            count = max(1, min(count, affordable))
        counts[site.name] = count
    return counts


def build_searches(
    net: GrowableNet, sites: list[Site], config: FireflyConfig, ctx: GrowthContext
) -> dict[str, SiteSearch]:
    """The search variables at their initialisations (ctx.generator): v ~ U(±0.1),
    α ~ N(0, 0.1²), Ω ~ U(±0.01), and with ``depth`` each site's candidate layer, E ~ U(±0.01)."""
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
        layer = layer_candidate(site, g) if config.depth else None
        searches[site.name] = SiteSearch(
            site, split, new, omega.to(device), following.name if following else None, rows, layer
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
        with torch.no_grad(), eval_mode([net]):
            net(sample)
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
        if search.layer is not None:  # E perturbs the existing function, as v does
            total = total + config.split_penalty * (search.layer.perturbation**2).sum()
    return total


@dataclass
class SearchRun:
    """What the candidate search did: the objective at every step, the steps it planned, and
    the tolerance of its convergence stop."""

    curve: list[float]
    planned_steps: int
    tolerance: float

    @property
    def stopped_early(self) -> bool:
        """Whether the convergence stop ended the search before ``planned_steps``."""
        return len(self.curve) < self.planned_steps


def batches_per_pass(samples: int, batch: int) -> int:
    """Search steps in one pass of a statistics set of ``samples`` (the search draws whole
    batches, so a pass drops the remainder; a set smaller than a batch is one step)."""
    return max(1, samples // batch)


def planned_steps(samples: int, config: FireflyConfig) -> int:
    """``search_steps``, or when it is None one pass of the statistics set."""
    if config.search_steps is not None:
        return config.search_steps
    return batches_per_pass(samples, config.search_batch)


def search_batches(ctx: GrowthContext, batch: int) -> Iterator[Tensor]:
    """Seeded mini-batch indices of the statistics set, without end: a fresh permutation
    (ctx.generator) for each pass, drawn when the pass starts."""
    count = len(ctx.inputs)
    while True:
        order = torch.randperm(count, generator=ctx.generator)
        for start in range(0, batches_per_pass(count, batch) * batch, batch):
            yield order[start : start + batch].to(ctx.device)


def has_converged(curve: list[float], per_pass: int, tolerance: float) -> bool:
    """At the end of a pass: whether its mean objective is below the previous pass's mean by
    less than ``tolerance`` times that mean (never when the tolerance is 0)."""
    if tolerance <= 0 or len(curve) < 2 * per_pass or len(curve) % per_pass:
        return False
    previous = sum(curve[-2 * per_pass : -per_pass]) / per_pass
    current = sum(curve[-per_pass:]) / per_pass
    return previous - current < tolerance * abs(previous)


def search(
    net: GrowableNet,
    searches: dict[str, SiteSearch],
    ctx: GrowthContext,
    config: FireflyConfig,
) -> SearchRun:
    """RMSprop on {v, α, Ω} over seeded mini-batches of the statistics set, for
    ``planned_steps`` batches or until the objective has converged (``search_tolerance``)."""
    variables = [v for s in searches.values() for v in s.variables()]
    optimizer = torch.optim.RMSprop(
        variables, lr=config.lr, momentum=config.momentum, alpha=config.alpha, foreach=True
    )
    run = SearchRun([], planned_steps(len(ctx.inputs), config), config.search_tolerance)
    per_pass = batches_per_pass(len(ctx.inputs), config.search_batch)
    batches = search_batches(ctx, config.search_batch)
    while len(run.curve) < run.planned_steps:
        batch = next(batches)
        with torch.enable_grad():
            objective = super_loss(
                net, searches, ctx.inputs[batch], ctx.targets[batch], ctx.loss_fn
            ) + penalty(searches, config)
            grads = torch.autograd.grad(objective, variables)
        value = float(objective.detach())
        if not math.isfinite(value):
            raise NonFiniteStatisticsError(
                f"firefly: the search objective became {value} (the statistics batch or the "
                "net's weights hold NaN/inf); lower the learning rate or check the data"
            )
        for variable, grad in zip(variables, grads):
            variable.grad = grad
        optimizer.step()
        run.curve.append(value)
        if has_converged(run.curve, per_pass, run.tolerance):
            break
    for variable in variables:
        variable.grad = None
    return run


def gate_scores(
    net: GrowableNet, searches: dict[str, SiteSearch], ctx: GrowthContext
) -> dict[str, dict[str, Tensor]]:
    """∂L_super/∂(gate) at gate 1 for every candidate (``split``, ``new`` and, with depth,
    ``layer`` per site), over one pass of the statistics set (mean loss per batch, batches
    weighted by size)."""
    kinds = {name: ["split", "new", "layer"][: len(s.gates())] for name, s in searches.items()}
    gates = [gate for s in searches.values() for gate in s.gates()]
    for gate in gates:
        gate.requires_grad_(True)
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
    if not all(bool(torch.isfinite(total).all()) for total in totals):
        raise NonFiniteStatisticsError(
            "firefly: a candidate's score is not finite (the statistics batch or the net's "
            "weights hold NaN/inf); lower the learning rate or check the data"
        )
    flat = iter(totals)
    return {name: {kind: next(flat).detach() for kind in kinds[name]} for name in searches}


# ---------------------------------------------------------------------------- selection
KIND_ORDER = ("split", "new", "layer")


def rank_candidates(scores: dict[str, dict[str, Tensor]], site_order: list[str]) -> list[Candidate]:
    """Every candidate (site, kind, index, score), most negative first; ties: site order, then
    splits, new units, layers, then index. A split or new unit adds one unit at its site; a
    layer none (``layer_cost`` prices it)."""
    pool = []
    for position, name in enumerate(site_order):
        for kind, values in scores[name].items():
            rank = KIND_ORDER.index(kind)
            pool += [
                (float(v), position, rank, i, name, kind) for i, v in enumerate(values.tolist())
            ]
    pool.sort()
    return [
        Candidate(name, kind, index, score, units=int(kind != "layer"))
        for score, _, _, index, name, kind in pool
    ]


def select(
    net: GrowableNet,
    searches: dict[str, SiteSearch],
    ranked: list[Candidate],
    n_select: int,
    ctx: GrowthContext,
    config: FireflyConfig,
) -> list[Candidate]:
    """Walk the ranking and keep each candidate whose exact cost, with those kept before, fits
    the budget, until ``n_select`` are kept. A split or new unit costs one unit at its site; a
    layer costs what inserting it adds (measured on a clone), at most ``max_layers`` of them. A
    site takes a layer or new width in one step, never both, so each layer's cost is priced at
    its site's final width: the candidate met second in the ranking is skipped."""

    def layer_or_width(candidate: Candidate, selection: Selection) -> bool:
        if candidate.kind == "layer":
            return (
                candidate.site not in selection.units
                and selection.count("layer") < config.max_layers
            )
        return not selection.count("layer", candidate.site)

    def layer_cost(candidate: Candidate) -> float:
        if candidate.kind != "layer":
            return 0
        layer = searches[candidate.site].layer
        options = {"init": layer.kind, "batchnorm": False}
        if layer.perturbation.ndim == 4:
            options["kernel_size"] = layer.kernel_size
        return insertion_cost(net, candidate.site, **options)[ctx.budget_metric]

    return select_within_budget(
        ranked,
        ctx.remaining_budget,
        unit_pricing(net, ctx),
        limit=n_select,
        admits=layer_or_width,
        extra_cost=layer_cost,
    ).kept


# ------------------------------------------------------------------------------ surgery
def apply_selection(
    net: GrowableNet,
    searches: dict[str, SiteSearch],
    chosen: list[Candidate],
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
                    r if kind == "old" else search.consumer_outputs + r
                    for kind, r in consumer_origins(search, origins)
                ]
                columns = search.omega.detach()[rows][:, news]  # units × kept × T
                columns = columns.permute(1, 0, 2).reshape(len(news), -1)
                fan_in = search.new.detach()[news].reshape(len(news), -1)
                units = site.add_units(fan_in, columns)
                origin.update((unit, ("new", k)) for unit, k in zip(units, news))
        origins[name] = [origin[i] for i in range(site.width)]
        event.selected[name] = [[i, "split"] for i in splits] + [[k, "new"] for k in news]
    for name in reversed(order):  # layers last: their sites took no new width
        if any(s == name and kind == "layer" for s, kind, _, _ in chosen):
            insert_candidate_layer(net, searches[name])
            event.selected.setdefault(name, []).append([0, "layer"])


def insert_candidate_layer(net: GrowableNet, search: SiteSearch) -> Site:
    """Insert the site's candidate layer with its searched weights (no BatchNorm, so it is exact
    in train mode too): the identity layer's weight becomes I + E; a zero-branch layer's first
    weight W₁ and its last E."""
    layer = search.layer
    options = {"kernel_size": layer.kernel_size} if layer.perturbation.ndim == 4 else {}
    new = insert_layer(
        net, search.site, init=layer.kind, batchnorm=False, generator=torch.Generator(), **options
    )
    with torch.no_grad():
        if layer.kind == "identity":
            new.producer.weight.add_(layer.perturbation.detach())
        else:
            new.producer.weight.copy_(layer.first)
            new.consumer.weight.copy_(layer.perturbation.detach())
    return new


def consumer_origins(
    search: SiteSearch, origins: dict[str, list[tuple[str, int]]]
) -> list[tuple[str, int]]:
    """What each of the consumer's current units was in the super-network."""
    if search.next_site is not None and search.next_site in origins:
        return origins[search.next_site]
    return [("old", i) for i in range(search.consumer_outputs)]


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
    notes = (
        "Depth growth (`depth = true`) is ours: the paper grows deeper, the official code does "
        "not; a candidate layer per site (identity after ReLU or a rational activation, else a "
        "zero-branch residual) is trained and ranked with the splits and new units.",
    )
    claims = (
        Claim(
            paper="Wu, Liu, Stone & Liu, NeurIPS 2020, arXiv:2102.08574",
            statement="Firefly descent beats splitting steepest descent at equal parameters",
            method="firefly",
            baseline="s2d",
            matched=True,
        ),
        Claim(
            paper="Wu, Liu, Stone & Liu, NeurIPS 2020, arXiv:2102.08574",
            statement="Firefly descent beats random growth at equal parameters",
            method="firefly",
            baseline="random-add",
            matched=True,
        ),
    )

    def grow_step(self, net: GrowableNet, ctx: GrowthContext, event: GrowthEvent) -> None:
        config = self.config
        sites = self.growable_sites(net)
        if not sites:
            event.stop_reason = "no site to grow (firefly grows only after a site's activation)"
            return
        # at least one: the code's floor alone would never grow a net of fewer than 4 units
        n_select = max(1, math.floor(config.growth_ratio * sum(site.width for site in sites)))
        with eval_mode([net]):
            with event.phase("search"):
                searches = build_searches(net, sites, config, ctx)
                run = search(net, searches, ctx, config)
            with event.phase("select"):
                scores = gate_scores(net, searches, ctx)
                ranked = rank_candidates(scores, [site.name for site in sites])
                chosen = select(net, searches, ranked, n_select, ctx, config)
            record_search(event, searches, scores, run, config.depth)
            if not chosen:
                event.extras["search_loss_drop"] = 0.0
                event.stop_reason = "budget exhausted"
                return
            with event.phase("apply"):
                base_loss = ctx.loss(net)
                apply_selection(net, searches, chosen, event)
                # the grown net in eval mode is the super-network restricted to ``chosen``
                event.extras["search_loss_drop"] = ctx.loss(net) - base_loss


def record_search(
    event: GrowthEvent,
    searches: dict[str, SiteSearch],
    scores: dict[str, dict[str, Tensor]],
    run: SearchRun,
    depth: bool,
) -> None:
    """The event's record of the search: every candidate's score, the objective curve, the
    steps planned and whether the convergence stop (its tolerance recorded) ended the search
    early, K per site and, with ``depth``, the layer kinds."""
    for name, by_kind in scores.items():
        event.scores[name] = by_kind["split"].tolist()
        event.scores[f"{name}/new"] = by_kind["new"].tolist()
        if "layer" in by_kind:
            event.scores[f"{name}/layer"] = by_kind["layer"].tolist()
    event.extras["search_objective"] = run.curve
    event.extras["search_planned_steps"] = run.planned_steps
    event.extras["search_tolerance"] = run.tolerance
    event.extras["search_stopped_early"] = run.stopped_early
    event.extras["candidates"] = {n: s.new.shape[0] for n, s in searches.items()}
    if depth:
        event.extras["layer_candidates"] = {
            n: s.layer.kind for n, s in searches.items() if s.layer is not None
        }


def restrict(searches: dict[str, SiteSearch], chosen: list[Candidate]) -> None:
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
        if s.layer is not None:
            s.layer.mask = torch.full_like(s.layer.mask, float((name, "layer", 0) in kept))
