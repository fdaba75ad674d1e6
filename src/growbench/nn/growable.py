"""Growable networks: blocks, growth sites and the three surgery operations.

A ``GrowableNet`` is a chain of ``Block``s (layer, optional BatchNorm, activation, optional
pooling). The units a block produces form a *growth site*: the block's layer is their fan-in
(producer), the next block's layer their fan-out (consumer). Every method changes a net only through
``split``, ``add_units`` and ``insert_layer`` on a ``Site``, so those three are the code that has
to be right, for every layer kind, once.

Flat layouts used by the operations (the notation of ``shared/methods/README.md``):

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

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from growbench.nn.activations import Activation, activation_info

ParamLineage = dict[nn.Parameter, tuple[nn.Parameter, list[Tensor | None]]]


class Block(nn.Module):
    """``post(activation(norm(layer(x))))``, with an optional statistics tap."""

    def __init__(
        self,
        name: str,
        layer: nn.Linear | nn.Conv2d,
        norm: nn.BatchNorm1d | nn.BatchNorm2d | None,
        activation: str,
        post: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        self.layer = layer
        self.norm = norm
        self.act = Activation(activation)
        self.post = post if post is not None else nn.Identity()
        self.tap = None  # a taps.Recorder while statistics are being collected

    @property
    def activation(self) -> str:
        return self.act.name

    @property
    def kind(self) -> str:
        kind = type(self.layer).__name__
        return f"{kind}+BN" if self.norm is not None else kind

    def norm_gain(self) -> Tensor | None:
        """b = γ / sqrt(running_var + eps): the slope of the eval-mode BatchNorm (None without)."""
        if self.norm is None:
            return None
        gain = 1.0 / torch.sqrt(self.norm.running_var + self.norm.eps)
        if self.norm.affine:
            gain = gain * self.norm.weight.detach()
        return gain

    def forward(self, x: Tensor) -> Tensor:
        z = self.layer(x)
        if self.norm is not None:
            z = self.norm(z)
        h = self.act(z)
        if self.tap is not None:
            self.tap.record(x, z, h)
        return self.post(h)


_FLOPS_BY_ARCHITECTURE: dict[tuple, int] = {}  # see GrowableNet.flops


class GrowableNet(nn.Module):
    """A chain of blocks; the last block is the output layer and is not a growth site."""

    def __init__(
        self, blocks: Sequence[Block], input_shape: Sequence[int], flatten_input: bool
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.input_shape = tuple(input_shape)
        self.flatten_input = flatten_input
        self.lineage: ParamLineage = {}
        self._next_block_id = len(blocks)

    def forward(self, x: Tensor) -> Tensor:
        if self.flatten_input:
            x = x.flatten(1)
        for block in self.blocks:
            x = block(x)
        return x

    # ----------------------------------------------------------------- sites and description
    @property
    def sites(self) -> list[Site]:
        return [Site(self, i) for i in range(len(self.blocks) - 1)]

    def site(self, key: int | str) -> Site:
        """The site at position ``key`` or whose producer block is named ``key``."""
        sites = self.sites
        if isinstance(key, int):
            if not -len(sites) <= key < len(sites):
                raise IndexError(f"site index {key} out of range: the net has {len(sites)} sites")
            return sites[key]
        for site in sites:
            if site.name == key:
                return site
        raise KeyError(f"no site named {key!r}; sites are {[s.name for s in sites]}")

    def widths(self) -> dict[str, int]:
        return {site.name: site.width for site in self.sites}

    def params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops(self, input_shape: Sequence[int] | None = None) -> int:
        """Forward FLOPs of one sample. Counting runs a forward pass, and growers and the runner
        ask before and after every step, so counts are cached per architecture (the modules'
        reprs, which hold strides and paddings, and the parameter shapes), across nets."""
        from growbench.nn.counting import count_flops

        shape = tuple(input_shape or self.input_shape)
        shapes = tuple((name, tuple(p.shape)) for name, p in self.named_parameters())
        key = (shape, repr(self), shapes)
        if key not in _FLOPS_BY_ARCHITECTURE:
            if len(_FLOPS_BY_ARCHITECTURE) >= 4096:
                _FLOPS_BY_ARCHITECTURE.clear()
            _FLOPS_BY_ARCHITECTURE[key] = count_flops(self, shape)
        return _FLOPS_BY_ARCHITECTURE[key]

    def describe(self) -> dict:
        """A JSON-ready description of the architecture."""
        return {
            "input_shape": list(self.input_shape),
            "blocks": [
                {
                    "name": block.name,
                    "kind": block.kind,
                    "layer": repr(block.layer),
                    "activation": block.activation,
                    "post": repr(block.post),
                }
                for block in self.blocks
            ],
            "widths": self.widths(),
            "params": self.params(),
        }

    def new_block_name(self) -> str:
        name = f"block{self._next_block_id}"
        self._next_block_id += 1
        return name

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


class Site:
    """A view of the units between block ``index`` (producer) and block ``index + 1`` (consumer)."""

    def __init__(self, net: GrowableNet, index: int) -> None:
        self.net = net
        self.index = index

    def __repr__(self) -> str:
        return f"Site({self.name!r}, {self.kind}, width={self.width})"

    @property
    def block(self) -> Block:
        return self.net.blocks[self.index]

    @property
    def consumer_block(self) -> Block:
        return self.net.blocks[self.index + 1]

    @property
    def name(self) -> str:
        return self.block.name

    @property
    def producer(self) -> nn.Linear | nn.Conv2d:
        return self.block.layer

    @property
    def norm(self) -> nn.BatchNorm1d | nn.BatchNorm2d | None:
        return self.block.norm

    @property
    def consumer(self) -> nn.Linear | nn.Conv2d:
        return self.consumer_block.layer

    @property
    def kind(self) -> str:
        return self.block.kind

    @property
    def activation(self) -> str:
        return self.block.activation

    @property
    def width(self) -> int:
        return self.producer.weight.shape[0]

    @property
    def fan_in_size(self) -> int:
        """p: length of a fan-in row, bias included."""
        return self.producer.weight[0].numel() + (self.producer.bias is not None)

    @property
    def positions(self) -> int:
        """How many consumer inputs read each unit (kernel taps, or flattened pixels)."""
        return self.consumer.weight[0].numel() // self.width

    @property
    def fan_out_size(self) -> int:
        return self.consumer.weight.shape[0] * self.positions

    def input_patches(self, block_input: Tensor) -> Tensor:
        """The producer's im2col patches of ``block_input``, N × (C_in·kh·kw) × positions, each
        laid out like a fan-in row without the bias (a Linear producer: one position)."""
        producer = self.producer
        if isinstance(producer, nn.Linear):
            return block_input.reshape(block_input.shape[0], -1, 1)
        return F.unfold(
            block_input,
            producer.kernel_size,
            dilation=producer.dilation,
            padding=producer.padding,
            stride=producer.stride,
        )

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
        deltas keep the function. BatchNorm entries are copied. Returns, per parent, the indices
        of its offspring (offspring 0 keeps the parent's index).
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
        deltas = fan_in_deltas.to(weight)
        scale = fan_out_weights.to(weight)
        parents = torch.tensor(ids, dtype=torch.long, device=weight.device)
        extra_parents = parents.repeat_interleave(m - 1)
        source = torch.cat([torch.arange(n, device=weight.device), extra_parents])

        rows = self.fan_in_matrix()[source].clone()
        rows[parents] += deltas[:, 0]
        rows[n:] += deltas[:, 1:].reshape(-1, p)
        columns = self._consumer_view()[:, source].clone()
        columns[:, parents] *= scale[:, 0][None, :, None]
        columns[:, n:] *= scale[:, 1:].reshape(-1)[None, :, None]
        self._rebuild(rows, columns, norm_source=source, new_count=k * (m - 1))
        offspring = []
        for parent_pos, parent in enumerate(ids):
            start = n + parent_pos * (m - 1)
            offspring.append([parent, *range(start, start + m - 1)])
        return offspring

    def add_units(self, fan_in: Tensor, fan_out: Tensor, bias: Tensor | None = None) -> list[int]:
        """Append k new units.

        ``fan_in`` (k × d) are the new producer weight rows without bias (d = ``fan_in_size``
        minus the bias entry), ``bias`` (k,) defaults to 0, ``fan_out`` (k × out·positions) their
        consumer columns. New BatchNorm entries are the identity in eval mode (mean 0, var 1,
        γ = sqrt(1 + eps), β = 0). Returns the new units' indices.
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
        source = torch.cat(
            [torch.arange(n, device=weight.device), torch.full((k,), -1, device=weight.device)]
        )
        self._rebuild(rows, columns, norm_source=source, new_count=k)
        return list(range(n, n + k))

    def _rebuild(self, rows: Tensor, columns: Tensor, norm_source: Tensor, new_count: int) -> None:
        """Install new producer rows, consumer columns and BN entries; record lineage.

        ``norm_source`` gives, per new unit, the old unit whose BN entries it copies (-1: identity
        entries). Lineage maps keep old units at their index and mark the ``new_count`` appended
        units as new.
        """
        net, producer, consumer = self.net, self.producer, self.consumer
        n_old, positions = self.width, self.positions
        n_new = rows.shape[0]
        device = rows.device
        survivors = torch.cat(
            [torch.arange(n_old, device=device), torch.full((new_count,), -1, device=device)]
        )
        has_bias = producer.bias is not None
        weight_rows = rows[:, : rows.shape[1] - has_bias]
        _replace(
            net,
            producer,
            "weight",
            weight_rows.reshape(n_new, *producer.weight.shape[1:]),
            [survivors] + [None] * (producer.weight.ndim - 1),
        )
        if has_bias:
            _replace(net, producer, "bias", rows[:, -1], [survivors])
        if isinstance(producer, nn.Linear):
            producer.out_features = n_new
        else:
            producer.out_channels = n_new

        if isinstance(consumer, nn.Conv2d):
            consumer_shape = (consumer.weight.shape[0], n_new, *consumer.weight.shape[2:])
            consumer_map = survivors
            consumer.in_channels = n_new
        else:
            consumer_shape = (consumer.weight.shape[0], n_new * positions)
            offsets = torch.arange(positions, device=device)
            consumer_map = torch.where(
                survivors[:, None] >= 0, survivors[:, None] * positions + offsets, -1
            ).reshape(-1)
            consumer.in_features = n_new * positions
        _replace(
            net,
            consumer,
            "weight",
            columns.reshape(consumer_shape),
            [None, consumer_map] + [None] * (consumer.weight.ndim - 2),
        )

        norm = self.norm
        if norm is not None:
            copied = norm_source.clamp_min(0)
            fresh = norm_source < 0
            mean = torch.where(fresh, 0.0, norm.running_mean[copied])
            var = torch.where(fresh, 1.0, norm.running_var[copied])
            norm.running_mean = mean
            norm.running_var = var
            if norm.affine:
                identity_gamma = math.sqrt(1.0 + norm.eps)
                gamma = torch.where(fresh, identity_gamma, norm.weight.detach()[copied])
                beta = torch.where(fresh, 0.0, norm.bias.detach()[copied])
                _replace(net, norm, "weight", gamma, [survivors])
                _replace(net, norm, "bias", beta, [survivors])
            norm.num_features = n_new


def _replace(
    net: GrowableNet, module: nn.Module, name: str, value: Tensor, maps: list[Tensor | None]
) -> None:
    old = getattr(module, name)
    new = nn.Parameter(value.detach().clone().contiguous(), requires_grad=old.requires_grad)
    setattr(module, name, new)
    net.record_lineage(new, old, maps)


def insert_layer(net: GrowableNet, site: Site | int | str, init: str = "identity") -> Block:
    """Insert a width-preserving block right after the producer block of ``site``.

    The new block repeats the site's layer kind (Linear, or a 3×3 same-padding conv), BatchNorm
    and activation, initialised to the identity, and takes over the producer block's pooling.
    The function is unchanged when the activation is idempotent (relu, identity): σ(σ(z)) = σ(z).
    Returns the new block; its units form a new site right after ``site``.
    """
    if init != "identity":
        raise ValueError(f"insert_layer: unknown init {init!r}; the only choice is 'identity'")
    if not isinstance(site, Site):
        site = net.site(site)
    block = site.block
    if not activation_info(block.activation).idempotent:
        raise ValueError(
            f"insert_layer at site {site.name!r}: an identity layer after activation "
            f"{block.activation!r} would change the function; use relu or identity"
        )
    width = site.width
    weight = block.layer.weight
    factory = {"dtype": weight.dtype, "device": weight.device}
    if isinstance(block.layer, nn.Conv2d):
        layer = nn.Conv2d(width, width, 3, padding=1, bias=block.layer.bias is not None, **factory)
        with torch.no_grad():
            layer.weight.zero_()
            layer.weight[:, :, 1, 1] = torch.eye(width, **factory)
    else:
        layer = nn.Linear(width, width, bias=block.layer.bias is not None, **factory)
        with torch.no_grad():
            layer.weight.copy_(torch.eye(width, **factory))
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    norm = None
    if block.norm is not None:
        norm = type(block.norm)(width, eps=block.norm.eps, momentum=block.norm.momentum, **factory)
        with torch.no_grad():
            norm.weight.fill_(math.sqrt(1.0 + norm.eps))
    new_block = Block(net.new_block_name(), layer, norm, block.activation, post=block.post)
    new_block.train(block.training)
    block.post = nn.Identity()
    net.blocks.insert(site.index + 1, new_block)
    return new_block
