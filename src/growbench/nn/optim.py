"""Carry an optimizer's state across network surgery.

Surgery replaces parameters by new, larger ones. ``carry_optimizer_state`` edits the optimizer
in place (so learning-rate schedulers bound to it keep working): each replaced parameter is
swapped for its successor, and every state tensor shaped like the parameter (momentum, Adam
moments) is sliced along the lineage maps the surgery recorded; entries that continue an old entry
keep its state, new entries start at zero. Scalar state (Adam's step) is copied. Parameters that
are new altogether (an inserted layer) join the first parameter group with empty state.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from growbench.nn.growable import GrowableNet


def carry_optimizer_state(optimizer: torch.optim.Optimizer, net: GrowableNet) -> None:
    lineage = net.pop_lineage()
    successor = {id(old): (new, maps) for new, (old, maps) in lineage.items()}
    current = {id(p): p for p in net.parameters()}
    placed: set[int] = set()
    for group in optimizer.param_groups:
        params = []
        for param in group["params"]:
            state = optimizer.state.pop(param, None)
            if id(param) in successor:
                new, maps = successor[id(param)]
                if state:
                    optimizer.state[new] = {
                        key: _slice_state(value, param, new, maps) for key, value in state.items()
                    }
                param = new
            elif id(param) not in current:
                continue  # removed from the net
            elif state is not None:
                optimizer.state[param] = state
            if id(param) not in placed:
                params.append(param)
                placed.add(id(param))
        group["params"] = params
    fresh = [p for key, p in current.items() if key not in placed]
    optimizer.param_groups[0]["params"].extend(fresh)


def _slice_state(
    value: object, old: nn.Parameter, new: nn.Parameter, maps: list[Tensor | None]
) -> object:
    if not isinstance(value, Tensor) or value.shape != old.shape:
        return value.clone() if isinstance(value, Tensor) else value
    result = value
    for dim, index in enumerate(maps):
        if index is None:
            continue
        result = result.index_select(dim, index.clamp_min(0).to(result.device))
        fresh = (index < 0).to(result.device)
        if bool(fresh.any()):
            shape = [1] * result.ndim
            shape[dim] = -1
            result = result.masked_fill(fresh.reshape(shape), 0)
    assert result.shape == new.shape, (result.shape, new.shape)
    return result.contiguous()
