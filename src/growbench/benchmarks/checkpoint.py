"""Checkpoints of a training cell: everything needed to go on bit for bit, in tensors and plain
containers only, so a checkpoint loads with ``torch.load(weights_only=True)``.

A grown net cannot be pickled safely, so its architecture is stored as its surgery log
(``GrowableNet.surgery``: every split, unit addition and layer insertion, in order) and rebuilt by
replaying the log on a fresh start net with placeholder values, then loading the weights into it.
The optimizer's state is stored with its parameters' names in the optimizer's own order (growth
appends new parameters to it, so it is not ``net.parameters()`` order). A grower's state is its
instance attributes other than its config, which must be numbers, strings, tensors or lists and
dicts of them (a method holding something else overrides ``Grower.state_dict``). The runner
(``_CellRun.state_dict``) adds every RNG, the schedule, the history and the epoch.
"""

from __future__ import annotations

import hashlib
import io
from typing import Any

import torch
from torch import Tensor, nn

from growbench.methods import Grower
from growbench.nn import GrowableNet
from growbench.nn.growable import insert_layer

FORMAT = 1


class CheckpointError(RuntimeError):
    """A state that cannot be saved, or a checkpoint that does not fit the cell."""


def replay_surgery(net: GrowableNet, log: list[dict[str, Any]]) -> None:
    """Apply ``log`` to ``net`` (a fresh start net) with placeholder values: the architecture
    afterwards is the one the log was recorded on, ready for ``load_state_dict``."""
    device = next(net.parameters()).device
    for step in log:
        op = step["op"]
        if op == "split":
            site, units, copies = net.site(step["site"]), step["units"], step["copies"]
            deltas = torch.zeros(len(units), copies, site.fan_in_size)
            site.split(units, deltas, torch.full((len(units), copies), 1.0 / copies))
        elif op == "add_units":
            site, count = net.site(step["site"]), step["count"]
            has_bias = site.producer.bias is not None
            fan_in = torch.zeros(count, site.fan_in_size - has_bias)
            site.add_units(fan_in, torch.zeros(count, site.fan_out_size))
        elif op == "insert_layer":
            insert_layer(
                net,
                step["where"],
                init=step["init"],
                activation=step["activation"],
                kernel_size=step["kernel_size"],
                batchnorm=step["batchnorm"],
                width=step["width"],
                generator=torch.Generator(device=device),
            )
        else:
            raise CheckpointError(f"unknown surgery step {op!r} in a checkpoint")
    net.pop_lineage()


def net_state(net: GrowableNet) -> dict[str, Any]:
    return {"surgery": [dict(step) for step in net.surgery], "weights": net.state_dict()}


def load_net_state(net: GrowableNet, state: dict[str, Any]) -> None:
    replay_surgery(net, state["surgery"])
    net.load_state_dict(state["weights"])


def optimizer_state(optimizer: torch.optim.Optimizer, net: nn.Module) -> dict[str, Any]:
    names = {id(param): name for name, param in net.named_parameters()}
    order = [[names[id(p)] for p in group["params"]] for group in optimizer.param_groups]
    return {"order": order, "state": optimizer.state_dict()}


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, net: nn.Module, state: dict[str, Any]
) -> None:
    """Put ``optimizer``'s parameters in the saved order, then load the saved state."""
    params = dict(net.named_parameters())
    if len(state["order"]) != len(optimizer.param_groups):
        raise CheckpointError("the checkpoint's optimizer has another number of groups")
    for group, names in zip(optimizer.param_groups, state["order"], strict=True):
        group["params"] = [params[name] for name in names]
    optimizer.load_state_dict(state["state"])


def grower_state(grower: Grower) -> dict[str, Any]:
    """``grower.state_dict()``, checked to be checkpointable."""
    state = grower.state_dict()
    for key, value in state.items():
        _check_plain(value, f"{type(grower).__name__}.{key}")
    return state


PLAIN = (int, float, str, bool, type(None), Tensor)


def _check_plain(value: Any, where: str) -> None:
    if isinstance(value, PLAIN):
        return
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check_plain(item, f"{where}[{index}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise CheckpointError(f"{where} has a key of type {type(key).__name__}")
            _check_plain(item, f"{where}[{key!r}]")
        return
    raise CheckpointError(
        f"{where} is a {type(value).__name__}, which a checkpoint cannot hold; the method "
        "should override Grower.state_dict and load_state_dict"
    )


def to_bytes(state: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buffer)
    return buffer.getvalue()


def from_bytes(data: bytes, map_location: torch.device | str = "cpu") -> dict[str, Any]:
    """A checkpoint loaded safely (``weights_only``); ``CheckpointError`` when it is not one."""
    try:
        state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"not a readable checkpoint: {exc}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError("not a growbench checkpoint of this version")
    return state


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
