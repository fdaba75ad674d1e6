"""Growable networks: named growth sites, the surgery on them, and depth growth.

A ``GrowableNet`` is an ordinary ``nn.Module`` run as a chain of *stages* (a stage is any module:
a conv block, a ResNet basic block, a classifier head) plus the list of its growth *sites*, which
the model builder enumerates and names. A site is a group of units between:

* a **producer** (``nn.Linear`` or an ungrouped ``nn.Conv2d``) whose output rows are the units'
  fan-in,
* the **per-unit path** (``Site.between``): every module the units pass through on their way to
  the consumer, each acting on each unit separately (BatchNorm, the site's activation, an
  insertion ``Slot``, a depthwise conv with its BatchNorm and activation, pooling, dropout, a
  flatten); ``growbench.nn.units`` says how each one resizes,
* a **consumer** (``nn.Linear`` or an ungrouped ``nn.Conv2d``) whose input columns are the units'
  fan-out.

Sites are found by name (``net.site("layer3.0")``), never by walking a chain, so they can sit
inside residual blocks (the inner width conv1 → conv2 of a basic block) or span two stages (a
MobileNet pointwise conv, the next depthwise conv, the next pointwise conv). Every method changes
a net only through ``Site.split``, ``Site.add_units`` and ``insert_layer``.

Flat layouts used by the operations (the notation of the method specifications):

* fan-in row of unit j: ``θ_j`` = the producer weight row flattened (``C_in·k·k`` for a conv),
  with the bias appended last when the producer has one; ``Site.fan_in_size`` is its length.
* fan-out column of unit j: the consumer weights that read unit j, flattened as
  ``(out, positions)``; ``positions`` is ``k·k`` for a conv consumer, 1 for a linear consumer
  after global pooling, and ``H·W`` for a linear consumer after a flatten.

Every operation replaces the parameters it changes by new ``nn.Parameter`` objects and records
each new parameter's *lineage* (the parameter the optimizer knows and, per dimension, which old
entry each new entry continues, -1 for a new entry), so ``carry_optimizer_state`` can move the
optimizer's state over. Offspring 0 of a split keeps the parent's index (and state); further
offspring and new units are appended at the end, in the order the caller gave them.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils import skip_init

from growbench.nn.activations import Activation, activation_info, make_activation
from growbench.nn.layer_maps import LayerMap, layer_map, norm_slope
from growbench.nn.units import (
    DepthwiseConv2d,
    Slot,
    UnitChange,
    ZeroBranchResidual,
    is_max_pool,
    new_unit_forward,
    replace_parameter,
    resize_units,
)

ParamLineage = dict[nn.Parameter, tuple[nn.Parameter, list[Tensor | None]]]
LAYER_TYPES = (nn.Linear, nn.Conv2d)
NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d)


@contextmanager
def eval_mode(modules: Iterable[nn.Module]) -> Iterator[None]:
    """Run ``modules`` (and their children) in eval mode inside the block; restore each one's
    own mode after (per module: a mixed train/eval net stays mixed)."""
    saved = [(m, m.training) for module in modules for m in module.modules()]
    for module, _ in saved:
        module.training = False
    try:
        yield
    finally:
        for module, training in saved:
            module.training = training


def _check_layer(layer: nn.Module, role: str, site: str) -> None:
    if not isinstance(layer, LAYER_TYPES) or isinstance(layer, DepthwiseConv2d):
        raise TypeError(
            f"site {site!r}: the {role} must be an nn.Linear or nn.Conv2d, "
            f"got {type(layer).__name__}"
        )
    if isinstance(layer, nn.Conv2d) and layer.groups != 1:
        raise TypeError(f"site {site!r}: the {role} is a grouped conv (groups={layer.groups})")


class Site:
    """The units between ``producer`` and ``consumer``, with the per-unit modules ``between``
    them in forward order. ``slot`` is where ``insert_layer`` puts a layer at this site (right
    after the site's activation); ``stage`` is the index of the net's stage holding the producer
    (``forward_until`` / ``forward_from`` cut the net there)."""

    def __init__(
        self,
        name: str,
        producer: nn.Linear | nn.Conv2d,
        between: Sequence[nn.Module],
        consumer: nn.Linear | nn.Conv2d,
        slot: Slot | None = None,
    ) -> None:
        _check_layer(producer, "producer", name)
        _check_layer(consumer, "consumer", name)
        self.name = name
        self.producer = producer
        self.between = list(between)
        self.consumer = consumer
        self.slot = slot
        self.stage = -1  # set by GrowableNet
        self.net: GrowableNet | None = None
        if not any(isinstance(m, Activation) for m in self.between):
            raise TypeError(f"site {name!r}: no Activation between its producer and consumer")
        if self.consumer.weight[0].numel() % self.width:
            raise TypeError(
                f"site {name!r}: the consumer reads {self.consumer.weight[0].numel()} inputs, "
                f"not a multiple of the site's {self.width} units"
            )

    def __repr__(self) -> str:
        return f"Site({self.name!r}, {self.kind}, width={self.width})"

    # --------------------------------------------------------------------- description
    @property
    def norm(self) -> nn.BatchNorm1d | nn.BatchNorm2d | None:
        """The BatchNorm right after the producer, if any (its gain is the b of the notation)."""
        first = self.between[0]
        return first if isinstance(first, NORM_TYPES) else None

    @property
    def act(self) -> Activation:
        """The site's activation: the first one on the per-unit path."""
        return next(m for m in self.between if isinstance(m, Activation))

    @property
    def activation(self) -> str:
        return self.act.name

    @property
    def activations(self) -> list[Activation]:
        """Every activation on the per-unit path (two after a MobileNet pointwise conv)."""
        return [m for m in self.between if isinstance(m, Activation)]

    @property
    def is_linear(self) -> bool:
        """Whether every activation on the path is the identity: the site's units then add
        nothing a wider layer could not (the splitting methods have no curvature to use)."""
        return all(activation_info(m.name).is_linear for m in self.activations)

    @property
    def kind(self) -> str:
        """``Linear`` or ``Conv2d``, ``+BN`` with a BatchNorm after the producer, ``+depthwise``
        when a depthwise conv lies on the path (MobileNet)."""
        kind = type(self.producer).__name__
        if self.norm is not None:
            kind += "+BN"
        if any(isinstance(m, DepthwiseConv2d) for m in self.between):
            kind += "+depthwise"
        return kind

    @property
    def max_pooled(self) -> bool:
        """Whether a max pool (local or global) lies between producer and consumer."""
        return any(is_max_pool(m) for m in self.between)

    @property
    def width(self) -> int:
        return self.producer.weight.shape[0]

    @property
    def fan_in_size(self) -> int:
        """p: length of a fan-in row, bias included."""
        return self.producer.weight[0].numel() + (self.producer.bias is not None)

    @property
    def positions(self) -> int:
        """How many consumer inputs read each unit (kernel taps, or flattened positions)."""
        return self.consumer.weight[0].numel() // self.width

    @property
    def fan_out_size(self) -> int:
        return self.consumer.weight.shape[0] * self.positions

    @property
    def producer_map(self) -> LayerMap:
        """The producer's linear algebra (patches, map with another weight, ...)."""
        return layer_map(self.producer)

    @property
    def consumer_map(self) -> LayerMap:
        """The consumer's linear algebra (what it reads of the path's maps, ...)."""
        return layer_map(self.consumer)

    def norm_gain(self) -> Tensor:
        """b = γ / sqrt(running_var + eps): the per-unit slope of the eval-mode BatchNorm after
        the producer, ones without one."""
        if self.norm is None:
            weight = self.producer.weight
            return torch.ones(self.width, dtype=weight.dtype, device=weight.device)
        return norm_slope(self.norm)

    def input_patches(self, producer_input: Tensor) -> Tensor:
        """The producer's im2col patches of its input, N × (C_in·kh·kw) × positions, each laid
        out like a fan-in row without the bias (a Linear producer: one position)."""
        return self.producer_map.patches(producer_input)

    def run_between(self, maps: Tensor) -> Tensor:
        """The per-unit path applied, in eval mode, to the producer's output (what the consumer
        reads)."""
        with eval_mode(self.between):
            for module in self.between:
                maps = module(maps)
        return maps

    def unit_path(self, maps: Tensor, linear_activations: bool = False) -> Tensor:
        """What the per-unit path computes, in eval mode, on brand-new units whose producer
        outputs are ``maps`` (N × k × ..., any k): BatchNorms and depthwise filters at their
        new-unit (identity) entries, activations and pools as they are. Stops before a flatten,
        so the result keeps one channel per unit (N × k × positions... for a Linear consumer
        after a flatten). ``linear_activations`` skips the activations (their slopes at 0 are
        ``path_slope``)."""
        with eval_mode(self.between):
            for module in self.between:
                if isinstance(module, nn.Flatten):
                    break
                if linear_activations and isinstance(module, Activation):
                    continue
                maps = new_unit_forward(module, maps)
        return maps

    def path_slope(self) -> float:
        """Product of σ'(0) over the activations on the path: the slope at 0 of a new unit's
        path apart from its linear (pooling, subsampling) part."""
        slope = 1.0
        for act in self.activations:
            slope *= activation_info(act.name).slope_at_zero
        return slope

    def fan_in_matrix(self) -> Tensor:
        """W_in (n × p): row j is θ_j, bias last."""
        rows = self.producer.weight.detach().reshape(self.width, -1)
        if self.producer.bias is not None:
            rows = torch.cat([rows, self.producer.bias.detach()[:, None]], dim=1)
        return rows

    def fan_out_matrix(self) -> Tensor:
        """(n × out·positions): row j is unit j's fan-out column, flattened."""
        return self._consumer_view().permute(1, 0, 2).reshape(self.width, -1)

    def _consumer_view(self) -> Tensor:
        weight = self.consumer.weight.detach()
        return weight.reshape(weight.shape[0], self.width, self.positions)

    def cost_of_units(self, count: int) -> dict[str, int]:
        """Exact params and FLOPs that ``count`` more units at this site add."""
        from growbench.nn.counting import growth_cost

        return growth_cost(self.net, {self.name: count})

    # ------------------------------------------------------------------------ surgery
    def split(
        self,
        neuron_ids: Sequence[int],
        fan_in_deltas: Tensor,
        fan_out_weights: Tensor,
    ) -> list[list[int]]:
        """Split each unit of ``neuron_ids`` into m offspring.

        ``fan_in_deltas`` (k × m × p) is added to the parent's fan-in row θ (bias last);
        ``fan_out_weights`` (k × m) multiplies its fan-out column. Weights summing to 1 with zero
        deltas keep the function. Per-unit modules (BatchNorm, a depthwise filter) copy the
        parent's entries. Returns, per parent, the indices of its offspring (offspring 0 keeps the
        parent's index).
        """
        ids = [int(i) for i in neuron_ids]
        n, p = self.width, self.fan_in_size
        if len(set(ids)) != len(ids):
            raise ValueError(f"split at site {self.name!r}: neuron_ids has duplicates: {ids}")
        if any(not 0 <= i < n for i in ids):
            raise ValueError(f"split at site {self.name!r}: neuron_ids must lie in [0, {n})")
        k = len(ids)
        if fan_in_deltas.ndim != 3 or fan_in_deltas.shape[0] != k or fan_in_deltas.shape[2] != p:
            raise ValueError(
                f"split at site {self.name!r}: fan_in_deltas must have shape ({k}, m, {p}), "
                f"got {tuple(fan_in_deltas.shape)}"
            )
        m = fan_in_deltas.shape[1]
        if tuple(fan_out_weights.shape) != (k, m):
            raise ValueError(
                f"split at site {self.name!r}: fan_out_weights must have shape ({k}, {m}), "
                f"got {tuple(fan_out_weights.shape)}"
            )
        if k == 0 or m < 1:
            return [[i] for i in ids]
        weight = self.producer.weight
        device = weight.device
        deltas = fan_in_deltas.to(weight)
        scale = fan_out_weights.to(weight)
        parents = torch.tensor(ids, dtype=torch.long, device=device)
        extra_parents = parents.repeat_interleave(m - 1)
        source = torch.cat([torch.arange(n, device=device), extra_parents])

        rows = self.fan_in_matrix()[source].clone()
        rows[parents] += deltas[:, 0]
        rows[n:] += deltas[:, 1:].reshape(-1, p)
        columns = self._consumer_view()[:, source].clone()
        columns[:, parents] *= scale[:, 0][None, :, None]
        columns[:, n:] *= scale[:, 1:].reshape(-1)[None, :, None]
        self._rebuild(rows, columns, source)
        self.net.surgery.append({"op": "split", "site": self.name, "units": ids, "copies": m})
        offspring = []
        for parent_pos, parent in enumerate(ids):
            start = n + parent_pos * (m - 1)
            offspring.append([parent, *range(start, start + m - 1)])
        return offspring

    def add_units(self, fan_in: Tensor, fan_out: Tensor, bias: Tensor | None = None) -> list[int]:
        """Append k new units.

        ``fan_in`` (k × d) are the new producer weight rows without bias (d = ``fan_in_size``
        minus the bias entry), ``bias`` (k,) defaults to 0, ``fan_out`` (k × out·positions) their
        consumer columns. Per-unit modules give them their new-unit entries, which are the
        identity in eval mode (BatchNorm: mean 0, var 1, γ = sqrt(1 + eps), β = 0; a depthwise
        conv: the identity filter). Returns the new units' indices.
        """
        n = self.width
        weight = self.producer.weight
        has_bias = self.producer.bias is not None
        d = self.fan_in_size - has_bias
        k = fan_in.shape[0]
        if fan_in.ndim != 2 or fan_in.shape[1] != d:
            raise ValueError(
                f"add_units at site {self.name!r}: fan_in must have shape (k, {d}), "
                f"got {tuple(fan_in.shape)}"
            )
        if tuple(fan_out.shape) != (k, self.fan_out_size):
            raise ValueError(
                f"add_units at site {self.name!r}: fan_out must have shape ({k}, "
                f"{self.fan_out_size}), got {tuple(fan_out.shape)}"
            )
        if bias is not None and not has_bias and bool((bias != 0).any()):
            raise ValueError(f"add_units at site {self.name!r}: the producer has no bias")
        if bias is not None and tuple(bias.shape) != (k,):
            raise ValueError(
                f"add_units at site {self.name!r}: bias must have shape ({k},), "
                f"got {tuple(bias.shape)}"
            )
        if k == 0:
            return []
        new_rows = fan_in.to(weight)
        if has_bias:
            new_bias = torch.zeros(k, 1).to(weight) if bias is None else bias.to(weight)[:, None]
            new_rows = torch.cat([new_rows, new_bias], dim=1)
        rows = torch.cat([self.fan_in_matrix(), new_rows])
        out = self.consumer.weight.shape[0]
        new_columns = fan_out.to(weight).reshape(k, out, self.positions).permute(1, 0, 2)
        columns = torch.cat([self._consumer_view(), new_columns], dim=1)
        device = weight.device
        source = torch.cat([torch.arange(n, device=device), torch.full((k,), -1, device=device)])
        self._rebuild(rows, columns, source)
        self.net.surgery.append({"op": "add_units", "site": self.name, "count": k})
        return list(range(n, n + k))

    def set_units(
        self,
        first: int,
        fan_in: Tensor | None = None,
        fan_out: Tensor | None = None,
        bias: Tensor | None = None,
    ) -> None:
        """Overwrite in place, with no record, the fan-in rows (k × d), biases (k,) and fan-out
        columns (k × out·positions) of the units first … first + k − 1, each given as
        ``add_units`` takes it (None: left as it is): to try other values for units a copy
        already has."""
        weight = self.producer.weight
        with torch.no_grad():
            if fan_in is not None:
                units = slice(first, first + len(fan_in))
                weight[units] = fan_in.to(weight).reshape(len(fan_in), *weight.shape[1:])
            if bias is not None:
                self.producer.bias[first : first + len(bias)] = bias.to(weight)
            if fan_out is not None:
                consumer, k = self.consumer.weight, len(fan_out)
                out = consumer.shape[0]
                columns = self._consumer_view().clone()  # any memory format, written back whole
                new = fan_out.to(weight).reshape(k, out, self.positions).permute(1, 0, 2)
                columns[:, first : first + k] = new
                consumer.copy_(columns.reshape(consumer.shape))

    def _rebuild(self, rows: Tensor, columns: Tensor, source: Tensor) -> None:
        """Install new producer rows and consumer columns, resize the per-unit modules and
        record lineage. ``source`` gives, per new unit, the old unit whose per-unit entries it
        copies (-1: new-unit entries); old units keep their index and state, the appended ones
        start with fresh optimizer state."""
        net, producer, consumer = self.net, self.producer, self.consumer
        n_old, positions = self.width, self.positions
        n_new = rows.shape[0]
        device = rows.device
        state = torch.cat(
            [torch.arange(n_old, device=device), torch.full((n_new - n_old,), -1, device=device)]
        )
        change = UnitChange(net, source, state)
        has_bias = producer.bias is not None
        weight_rows = rows[:, : rows.shape[1] - has_bias]
        change.replace(producer, "weight", weight_rows.reshape(n_new, *producer.weight.shape[1:]))
        if has_bias:
            change.replace(producer, "bias", rows[:, -1])
        if isinstance(producer, nn.Linear):
            producer.out_features = n_new
        else:
            producer.out_channels = n_new
        for module in self.between:
            resize_units(module, change)

        if isinstance(consumer, nn.Conv2d):
            consumer_shape = (consumer.weight.shape[0], n_new, *consumer.weight.shape[2:])
            consumer_map = state
            consumer.in_channels = n_new
        else:
            consumer_shape = (consumer.weight.shape[0], n_new * positions)
            offsets = torch.arange(positions, device=device)
            consumer_map = torch.where(
                state[:, None] >= 0, state[:, None] * positions + offsets, -1
            ).reshape(-1)
            consumer.in_features = n_new * positions
        replace_parameter(
            net,
            consumer,
            "weight",
            columns.reshape(consumer_shape),
            [None, consumer_map] + [None] * (consumer.weight.ndim - 2),
        )


@dataclass
class FreeSlot:
    """An insertion point that belongs to no site (an MLP's input, before its first layer)."""

    slot: Slot
    consumer: nn.Linear | nn.Conv2d
    width: int
    stage: int


_FLOPS_BY_ARCHITECTURE: dict[tuple, int] = {}  # see GrowableNet.flops


class GrowableNet(nn.Module):
    """``stages`` run in order; ``sites`` are the growth sites the builder enumerated, in forward
    order (the output layer is never a site). ``free_slots`` names insertion points outside any
    site (``{"input": (slot, first layer)}`` for an MLP, so depth can grow from no hidden layer)."""

    def __init__(
        self,
        stages: Sequence[nn.Module],
        sites: Sequence[Site],
        input_shape: Sequence[int],
        free_slots: dict[str, tuple[Slot, nn.Module]] | None = None,
    ) -> None:
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.input_shape = tuple(input_shape)
        self.lineage: ParamLineage = {}
        self._sites: list[Site] = []
        self._inserted = 0
        # Every structural change, in order, as JSON-ready dicts: replayed on a fresh start net,
        # it rebuilds this architecture (``growbench.benchmarks.checkpoint``).
        self.surgery: list[dict] = []
        for site in sites:
            self._attach(site)
        names = [site.name for site in self._sites]
        if len(set(names)) != len(names):
            raise ValueError(f"site names must be unique, got {names}")
        self.free_slots: dict[str, FreeSlot] = {}
        for name, (slot, consumer) in (free_slots or {}).items():
            width = consumer.weight.shape[1]
            self.free_slots[name] = FreeSlot(slot, consumer, width, self._stage_of(slot))

    def _stage_of(self, module: nn.Module) -> int:
        for index, stage in enumerate(self.stages):
            if any(m is module for m in stage.modules()):
                return index
        raise ValueError(f"{type(module).__name__} is in none of the net's stages")

    def _attach(self, site: Site) -> None:
        site.net = self
        site.stage = self._stage_of(site.producer)
        self._sites.append(site)

    def _sort_sites(self) -> None:
        """Sites in forward order: the order their producers are registered in, which is the
        order they run in for the zoo's models (and must be for a model that grows deeper)."""
        order = {module: index for index, module in enumerate(self.modules())}
        self._sites.sort(key=lambda site: order[site.producer])

    def forward(self, x: Tensor) -> Tensor:
        for stage in self.stages:
            x = stage(x)
        return x

    # ------------------------------------------------------------- partial forward passes
    def forward_until(self, site: Site | str, x: Tensor) -> Tensor:
        """The input of the stage that holds ``site``'s producer; ``forward_from`` goes on."""
        return self.run_stages(x, 0, self._resolve(site).stage)

    def forward_from(self, site: Site | str, state: Tensor) -> Tensor:
        """The net's output from what ``forward_until(site, ·)`` returned."""
        return self.run_stages(state, self._resolve(site).stage)

    def run_stages(self, x: Tensor, start: int = 0, stop: int | None = None) -> Tensor:
        """Stages ``start`` to ``stop`` (exclusive; default: to the output) applied to ``x``."""
        for stage in self.stages[start:stop]:
            x = stage(x)
        return x

    def stage_of(self, module: nn.Module) -> int:
        """The index of the stage that holds ``module``."""
        return self._stage_of(module)

    def copy_for(self, site: Site | str) -> GrowableNet:
        """A copy in which only ``site``'s producer, per-unit modules and consumer (and the
        containers around them) are copied, and every other layer is shared: the cheap way to try
        surgery at ``site`` and run ``forward_from`` on the result."""
        site = self._resolve(site)
        own = {
            id(m)
            for module in (site.producer, *site.between, site.consumer)
            for m in module.modules()
        }
        memo: dict[int, object] = {}
        for module in self.modules():
            if id(module) not in own and next(module.children(), None) is None:
                memo[id(module)] = module
        return self.clone(memo)

    def clone(self, memo: dict[int, object] | None = None) -> GrowableNet:
        """A deep copy without the pending lineage (it refers to replaced parameters)."""
        lineage, self.lineage = self.lineage, {}
        try:
            copied = copy.deepcopy(self, memo if memo is not None else {})
        finally:
            self.lineage = lineage
        copied.__dict__.pop("_cost_cache", None)
        return copied

    # ----------------------------------------------------------------- sites and description
    @property
    def sites(self) -> list[Site]:
        return list(self._sites)

    def _resolve(self, key: Site | int | str) -> Site:
        return key if isinstance(key, Site) else self.site(key)

    def site(self, key: int | str) -> Site:
        """The site at position ``key`` or named ``key``."""
        sites = self._sites
        if isinstance(key, int):
            if not -len(sites) <= key < len(sites):
                raise IndexError(f"site index {key} out of range: the net has {len(sites)} sites")
            return sites[key]
        for site in sites:
            if site.name == key:
                return site
        raise KeyError(f"no site named {key!r}; sites are {[s.name for s in sites]}")

    def widths(self) -> dict[str, int]:
        return {site.name: site.width for site in self._sites}

    def params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops(self, input_shape: Sequence[int] | None = None) -> int:
        """Forward FLOPs of one sample (a multiply-add is 2 FLOPs). Counting runs a forward pass,
        and growers and the runner ask before and after every step, so counts are cached per
        architecture (the modules' reprs, which hold strides and paddings, and the parameter
        shapes), across nets."""
        from growbench.nn.counting import count_flops

        shape = tuple(input_shape or self.input_shape)
        shapes = tuple((name, tuple(p.shape)) for name, p in self.named_parameters())
        key = (shape, repr(self), shapes)
        if key not in _FLOPS_BY_ARCHITECTURE:
            if len(_FLOPS_BY_ARCHITECTURE) >= 4096:
                _FLOPS_BY_ARCHITECTURE.clear()
            _FLOPS_BY_ARCHITECTURE[key] = count_flops(self, shape)
        return _FLOPS_BY_ARCHITECTURE[key]

    def macs(self, input_shape: Sequence[int] | None = None) -> int:
        """Multiply-accumulates of one forward pass: FLOPs / 2, since torch's counter counts
        exactly the matrix multiplies and convolutions, two FLOPs per multiply-add (the CIFAR
        splitting code reports 2×MACs, the ImageNet tables MACs)."""
        return self.flops(input_shape) // 2

    def describe(self) -> dict:
        """A JSON-ready description of the architecture."""
        paths = {module: name for name, module in self.named_modules()}
        return {
            "input_shape": list(self.input_shape),
            "sites": [
                {
                    "name": site.name,
                    "kind": site.kind,
                    "width": site.width,
                    "activation": site.activation,
                    "producer": paths.get(site.producer, "?"),
                    "consumer": paths.get(site.consumer, "?"),
                }
                for site in self._sites
            ],
            "widths": self.widths(),
            "params": self.params(),
            "modules": repr(self),
        }

    # ------------------------------------------------------------------------ lineage
    def record_lineage(
        self, new: nn.Parameter, old: nn.Parameter, maps: list[Tensor | None]
    ) -> None:
        """Remember that ``new`` continues ``old``; compose with ``old``'s own lineage."""
        if old in self.lineage:
            root, root_maps = self.lineage.pop(old)
            composed = []
            for outer, inner in zip(maps, root_maps, strict=True):
                if outer is None:
                    composed.append(inner)
                elif inner is None:
                    composed.append(outer)
                else:
                    composed.append(torch.where(outer >= 0, inner[outer.clamp_min(0)], -1))
            old, maps = root, composed
        self.lineage[new] = (old, maps)

    def pop_lineage(self) -> ParamLineage:
        lineage, self.lineage = self.lineage, {}
        return lineage


# ---------------------------------------------------------------------------- depth growth
INSERT_INITS = ("identity", "zero-branch")


@dataclass
class _InsertionPoint:
    """Where a layer goes: a site's slot or a free slot, and what it reads and feeds."""

    place: str
    site: Site | None
    free: FreeSlot | None
    slot: Slot
    consumer: nn.Module  # what reads the slot's output now
    reference: nn.Module  # whose dtype, device, kind and mode the new layer takes
    units: int
    previous: str | None  # the activation the slot follows (None at the input)


def _insertion_point(net: GrowableNet, where: Site | str) -> _InsertionPoint:
    if not isinstance(where, Site) and where in net.free_slots:
        free = net.free_slots[where]
        return _InsertionPoint(
            where, None, free, free.slot, free.consumer, free.consumer, free.width, None
        )
    site = net._resolve(where)
    if site.slot is None:
        raise ValueError(f"insert_layer at {site.name!r}: the model builder gave it no slot")
    return _InsertionPoint(
        site.name, site, None, site.slot, site.consumer, site.producer, site.width, site.activation
    )


def insert_layer(
    net: GrowableNet,
    where: Site | str,
    init: str = "identity",
    activation: str | None = None,
    kernel_size: int | None = None,
    batchnorm: bool | None = None,
    width: int | None = None,
    generator: torch.Generator | None = None,
) -> Site:
    """Grow ``net`` one layer deeper at a site (right after its activation) or at a free slot
    (``"input"``); returns the new layer's site.

    ``init="identity"``: a width-preserving layer of the site's kind (Linear, or a conv of
    ``kernel_size``, default the producer's when odd, else 1, with "same" padding; 1×1 keeps
    point-wise data point-wise), initialised to the identity, followed by a BatchNorm (default:
    when the site has one) at identity entries and ``activation`` (default: the site's). The
    function is unchanged when the new activation is the identity at its initial parameters, or
    is the site's own activation and idempotent (relu: σ(σ(z)) = σ(z)); otherwise it is refused.
    The site's consumer becomes the new layer; the new site reads into the old consumer.

    ``init="zero-branch"``: a residual block ``h + L2(σ(BN(L1 h)))`` with ``L1`` (``width`` units,
    default the site's) drawn from ``generator`` and ``L2`` zero, so it starts as the identity
    for any activation. The new site is the branch's inner width (L1 → L2). The old site's units
    then feed both the branch and, through the skip, the old consumer: a residual stream, which is
    not growable, so the old site leaves ``net.sites``.

    Exact in eval mode. In train mode a new BatchNorm normalises with the batch's statistics
    instead of its identity entries, so the output moves at once (by several per cent on the zoo
    nets); pass ``batchnorm=False`` for a layer that is exact in both modes.
    """
    if init not in INSERT_INITS:
        raise ValueError(f"insert_layer: unknown init {init!r}; choose one of {INSERT_INITS}")
    point = _insertion_point(net, where)
    name = activation or point.previous
    if name is None:
        raise ValueError(f"insert_layer at {point.place!r}: name the new layer's activation")
    info = activation_info(name)
    if init == "identity" and not (
        info.identity_at_init or (name == point.previous and info.idempotent)
    ):
        after = f"after activation {point.previous!r}" if point.previous else "at the input"
        raise ValueError(
            f"insert_layer at {point.place!r}: an identity layer with activation {name!r} "
            f"{after} would change the function; use an idempotent activation (relu) at a relu "
            "site, activation='identity', or init='zero-branch'"
        )
    if init == "zero-branch" and (point.site is None or generator is None):
        raise ValueError(
            "insert_layer: init='zero-branch' needs a site (not a free slot) and a `generator` "
            "to draw its first layer from"
        )
    conv = isinstance(point.reference, nn.Conv2d)
    if kernel_size is None:
        kernel_size = point.reference.kernel_size[0] if conv and point.site is not None else 1
        kernel_size = kernel_size if kernel_size % 2 == 1 else 1
    if kernel_size % 2 != 1:
        raise ValueError(f"insert_layer: kernel_size must be odd, got {kernel_size}")
    if batchnorm is None:
        batchnorm = point.site is not None and point.site.norm is not None
    bias = point.reference.bias is not None if point.site is not None else True
    inner = point.units if width is None else int(width)
    factory = {"dtype": point.reference.weight.dtype, "device": point.reference.weight.device}
    first = _new_layer(conv, point.units, inner, kernel_size, bias, factory)
    chain: list[nn.Module] = []
    if batchnorm:
        norm = (nn.BatchNorm2d if conv else nn.BatchNorm1d)(inner, **factory)
        with torch.no_grad():
            norm.weight.fill_(math.sqrt(1.0 + norm.eps))  # identity in eval mode
        chain.append(norm)
    chain.append(make_activation(name, inner))
    if init == "identity":
        _identity_(first)
        new_site = _insert_identity(net, point, first, chain)
    else:
        with torch.no_grad():
            nn.init.kaiming_uniform_(first.weight, a=math.sqrt(5), generator=generator)
            if first.bias is not None:
                first.bias.zero_()
        second = _new_layer(conv, inner, point.units, kernel_size, bias, factory)
        with torch.no_grad():
            second.weight.zero_()
            if second.bias is not None:
                second.bias.zero_()
        new_site = _insert_zero_branch(net, point, first, chain, second)
    net._attach(new_site)
    net._sort_sites()
    net.__dict__.pop("_cost_cache", None)
    net.surgery.append(
        {
            "op": "insert_layer",
            "where": point.place,
            "init": init,
            "activation": name,
            "kernel_size": kernel_size,
            "batchnorm": batchnorm,
            "width": inner,
        }
    )
    return new_site


def _site_name(net: GrowableNet, place: str) -> str:
    net._inserted += 1
    return f"{place}+{net._inserted}"


def _insert_identity(
    net: GrowableNet, point: _InsertionPoint, first: nn.Module, chain: list[nn.Module]
) -> Site:
    """``slot: [first, norm, act, slot'(what the slot held)]``; the old site's path ends at the
    slot and it feeds ``first``; the new site runs on to the old consumer."""
    slot, site = point.slot, point.site
    moved = Slot(list(slot.contents))  # an earlier insertion here reads on after the new layer
    mode = point.reference.training  # new modules follow the net's mode; moved ones keep theirs
    for module in (first, *chain):
        module.train(mode)
    moved.training = mode
    slot.contents = nn.ModuleList([first, *chain, moved])
    between = [*chain] if not moved.empty else [*chain, moved]
    if site is not None and moved.empty:
        cut = next(i for i, m in enumerate(site.between) if m is slot)
        between += site.between[cut + 1 :]
        site.between = site.between[:cut]
    if site is None:
        point.free.consumer = first
    else:
        site.consumer = first
    return Site(_site_name(net, point.place), first, between, point.consumer, moved)


def _insert_zero_branch(
    net: GrowableNet,
    point: _InsertionPoint,
    first: nn.Module,
    chain: list[nn.Module],
    second: nn.Module,
) -> Site:
    """``slot: [x + second(act(norm(first(x)))), slot'(what the slot held)]``; the branch's
    inner width is the new site, and the old site (now a residual stream) leaves the net's
    sites."""
    inner_slot = Slot()
    residual = ZeroBranchResidual([first, *chain, inner_slot, second])
    residual.train(point.reference.training)
    point.slot.contents = nn.ModuleList([residual, Slot(list(point.slot.contents))])
    net._sites.remove(point.site)
    return Site(_site_name(net, point.place), first, [*chain, inner_slot], second, inner_slot)


def _new_layer(
    conv: bool, in_units: int, out_units: int, kernel_size: int, bias: bool, factory: dict
) -> nn.Linear | nn.Conv2d:
    """An uninitialised layer (every caller writes all its entries): built without drawing from
    the global RNG, so growing a layer leaves it untouched."""
    if conv:
        return skip_init(
            nn.Conv2d, in_units, out_units, kernel_size, padding=kernel_size // 2, bias=bias,
            **factory,
        )  # fmt: skip
    return skip_init(nn.Linear, in_units, out_units, bias=bias, **factory)


def _identity_(layer: nn.Linear | nn.Conv2d) -> None:
    with torch.no_grad():
        layer.weight.zero_()
        width = layer.weight.shape[0]
        eye = torch.eye(width, dtype=layer.weight.dtype, device=layer.weight.device)
        if isinstance(layer, nn.Conv2d):
            k = layer.kernel_size
            layer.weight[:, :, k[0] // 2, k[1] // 2] = eye
        else:
            layer.weight.copy_(eye)
        if layer.bias is not None:
            layer.bias.zero_()
