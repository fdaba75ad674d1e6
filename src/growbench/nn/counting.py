"""Parameter and FLOP counts, the currency growth budgets are spent in.

FLOPs are what ``torch.utils.flop_counter.FlopCounterMode`` counts for one forward pass of one
sample (matrix multiplies and convolutions; a multiply-add is 2 FLOPs), so the numbers match what
torch users quote; ``TotalFlops`` applies the same formulas without FlopCounterMode's per-module
bookkeeping, which cost most of a count on a small net. The cost of growing is measured the same
way, on grown copies of the net, so budget checks and reported costs can never disagree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from growbench.nn.growable import GrowableNet, eval_mode, insert_layer


class TotalFlops(TorchDispatchMode):
    """The total of ``FlopCounterMode``'s count: each operator that torch has a FLOP formula for
    adds that formula's value, and one without a formula is first offered its decomposition (so
    a composite operator is counted through its parts), as FlopCounterMode does; what it does
    not keep is the count per module, whose module hooks cost more than the forward pass on a
    small net."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in flop_registry and func is not torch.ops.prim.device.default:
            with self:
                decomposed = func.decompose(*args, **kwargs)
            if decomposed is not NotImplemented:
                return decomposed
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


def count_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def count_flops(net: nn.Module, input_shape: Sequence[int]) -> int:
    """Forward FLOPs of one sample, measured in eval mode without autograd."""
    reference = next(net.parameters())
    sample = torch.zeros(1, *input_shape, dtype=reference.dtype, device=reference.device)
    with eval_mode([net]), torch.no_grad(), TotalFlops() as counter:
        net(sample)
    return int(counter.total)


def growth_cost(net: GrowableNet, additions: Mapping[str, int]) -> dict[str, int]:
    """Exact params and FLOPs that adding ``additions[site]`` units at each named site adds.

    Params and FLOPs of a growable net are affine in each site's width, with products only of
    the widths of two *coupled* sites, where one site's consumer is the other's producer (that
    layer's weights join both widths); per-unit modules (BatchNorm, a depthwise conv) are affine
    in one width. So the cost of any growth is Σ_s u_s·Δ_s + Σ_(s,t) x_st·Δ_s·Δ_t over the coupled
    pairs, with per-unit costs u and cross terms x measured on grown copies of the net, again
    only when the architecture changes, not when its widths do (``_cost_coefficients``). The
    measurement also grows every site by two units and checks that the cost is affine, so a
    model that breaks the assumption fails loudly here instead of being charged wrongly.
    """
    per_unit, cross = _cost_coefficients(net)
    unknown = set(additions) - set(per_unit)
    if unknown:
        raise KeyError(f"no site named {sorted(unknown)}; sites are {list(per_unit)}")
    total = {"params": 0, "flops": 0}
    for metric in total:
        for name, cost in per_unit.items():
            total[metric] += cost[metric] * int(additions.get(name, 0))
        for (first, second), cost in cross.items():
            count = int(additions.get(first, 0)) * int(additions.get(second, 0))
            total[metric] += cost[metric] * count
    return total


def coupled_sites(net: GrowableNet) -> list[tuple[str, str]]:
    """Pairs (s, t) of sites where s's consumer is t's producer."""
    sites = net.sites
    return [
        (first.name, second.name)
        for first in sites
        for second in sites
        if first is not second and first.consumer is second.producer
    ]


def _cost_coefficients(
    net: GrowableNet,
) -> tuple[dict[str, dict[str, int]], dict[tuple[str, str], dict[str, int]]]:
    """Per-unit costs at the net's current widths and the cross terms of coupled pairs.

    The cross terms are constants of the architecture, so they are measured once per
    architecture (the sites, their kinds and the parameter tensors; not the widths), with the
    per-unit costs at the widths of that measurement; at other widths w, a site's per-unit cost
    is its measured one plus Σ_t (x_st + x_ts)·(w_t − w_t at the measurement), exactly what the
    cost polynomial gives. So a method that adds units one by one does not measure again."""
    key = (
        net.input_shape,
        tuple((s.name, s.kind) for s in net.sites),
        tuple(name for name, _ in net.named_parameters()),
    )
    cached = getattr(net, "_cost_cache", None)
    if cached is None or cached[0] != key:
        cached = (key, net.widths(), *_measure_coefficients(net))
        net._cost_cache = cached
    _, measured_widths, per_unit, cross = cached
    shift = {name: width - measured_widths[name] for name, width in net.widths().items()}
    current = {name: dict(cost) for name, cost in per_unit.items()}
    for (first, second), cost in cross.items():
        for metric, value in cost.items():
            current[first][metric] += value * shift[second]
            current[second][metric] += value * shift[first]
    return current, cross


def _measure_coefficients(
    net: GrowableNet,
) -> tuple[dict[str, dict[str, int]], dict[tuple[str, str], dict[str, int]]]:
    """Per-unit costs and cross terms measured on grown copies of ``net`` at its widths."""
    names = [site.name for site in net.sites]
    base = _measure(net, {})
    single = {name: _measure(net, {name: 1}) for name in names}
    per_unit = {name: _difference(single[name], base) for name in names}
    for name in names:
        double = _difference(_measure(net, {name: 2}), base)
        if any(double[m] != 2 * per_unit[name][m] for m in base):
            raise ValueError(
                f"the cost of units at site {name!r} is not affine in its width (1 unit adds "
                f"{per_unit[name]}, 2 add {double}): growth_cost cannot price this model"
            )
    cross = {}
    for first, second in coupled_sites(net):
        both = _measure(net, {first: 1, second: 1})
        cross[(first, second)] = {
            metric: both[metric] - single[first][metric] - single[second][metric] + base[metric]
            for metric in base
        }
    return per_unit, cross


def _difference(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {metric: after[metric] - before[metric] for metric in before}


def _measure(net: GrowableNet, additions: Mapping[str, int]) -> dict[str, int]:
    """Params and FLOPs of a copy of ``net`` grown by zero-initialised units."""
    trial = net
    if additions:
        trial = net.clone()
        for name, count in additions.items():
            site = trial.site(name)
            reference = site.producer.weight
            has_bias = site.producer.bias is not None
            site.add_units(
                reference.new_zeros(count, site.fan_in_size - has_bias),
                reference.new_zeros(count, site.fan_out_size),
            )
    return {"params": count_params(trial), "flops": count_flops(trial, net.input_shape)}


def insertion_cost(net: GrowableNet, where: str, **options) -> dict[str, int]:
    """Exact params and FLOPs that ``insert_layer(net, where, **options)`` adds, measured on a
    clone (a zero-branch layer's first weights are drawn from a throwaway generator)."""
    trial = net.clone()
    params, flops = trial.params(), trial.flops()
    options.setdefault("generator", torch.Generator())
    insert_layer(trial, where, **options)
    return {"params": trial.params() - params, "flops": trial.flops() - flops}
