"""Parameter and FLOP counts, the currency growth budgets are spent in.

FLOPs are what ``torch.utils.flop_counter.FlopCounterMode`` counts for one forward pass of one
sample (matrix multiplies and convolutions; a multiply-add is 2 FLOPs), so the numbers match what
torch users quote. The cost of growing is measured the same way, on grown copies of the net, so
budget checks and reported costs can never disagree.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

if TYPE_CHECKING:
    from growbench.nn.growable import GrowableNet


def count_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def count_flops(net: nn.Module, input_shape: Sequence[int]) -> int:
    """Forward FLOPs of one sample, measured in eval mode without autograd."""
    reference = next(net.parameters())
    sample = torch.zeros(1, *input_shape, dtype=reference.dtype, device=reference.device)
    modes = [(module, module.training) for module in net.modules()]
    net.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            net(sample)
    finally:
        for module, training in modes:  # per module: a mixed train/eval net stays mixed
            module.training = training  # not .train(): that recurses, n² over the tree
    return int(counter.get_total_flops())


def growth_cost(net: GrowableNet, additions: Mapping[str, int]) -> dict[str, int]:
    """Exact params and FLOPs that adding ``additions[site]`` units at each named site adds.

    A chain net's params and FLOPs are affine in each site's width alone, with products only of
    adjacent widths (a layer's weights join its input and output widths). So the cost of any
    growth is Σ_s u_s·Δ_s + Σ_s x_s·Δ_s·Δ_(s+1), with per-unit costs u and cross terms x
    measured once per architecture on grown copies of the net (cached until the widths change).
    """
    per_unit, cross = _cost_coefficients(net)
    names = list(per_unit)
    unknown = set(additions) - set(names)
    if unknown:
        raise KeyError(f"no site named {sorted(unknown)}; sites are {names}")
    total = {"params": 0, "flops": 0}
    for metric in total:
        for position, name in enumerate(names):
            count = int(additions.get(name, 0))
            total[metric] += per_unit[name][metric] * count
            if position + 1 < len(names):
                following = int(additions.get(names[position + 1], 0))
                total[metric] += cross[name][metric] * count * following
    return total


def _cost_coefficients(
    net: GrowableNet,
) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, int]]]:
    key = (tuple(net.widths().items()), net.input_shape, tuple(b.kind for b in net.blocks))
    cached = getattr(net, "_cost_cache", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    names = [site.name for site in net.sites]
    base = _measure(net, {})
    single = {name: _measure(net, {name: 1}) for name in names}
    per_unit = {name: _difference(single[name], base) for name in names}
    cross = {}
    for first, second in itertools.pairwise(names):
        both = _measure(net, {first: 1, second: 1})
        cross[first] = {
            metric: both[metric] - single[first][metric] - single[second][metric] + base[metric]
            for metric in base
        }
    coefficients = (per_unit, cross)
    net._cost_cache = (key, coefficients)
    return coefficients


def _difference(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {metric: after[metric] - before[metric] for metric in before}


def _measure(net: GrowableNet, additions: Mapping[str, int]) -> dict[str, int]:
    """Params and FLOPs of a copy of ``net`` grown by zero-initialised units."""
    trial = net
    if additions:
        trial = copy.deepcopy(net)
        trial.__dict__.pop("_cost_cache", None)
        for name, count in additions.items():
            site = trial.site(name)
            reference = site.producer.weight
            has_bias = site.producer.bias is not None
            site.add_units(
                reference.new_zeros(count, site.fan_in_size - has_bias),
                reference.new_zeros(count, site.fan_out_size),
            )
    return {"params": count_params(trial), "flops": count_flops(trial, net.input_shape)}
