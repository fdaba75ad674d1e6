"""Per-sample statistics taps: a block's input, pre- and post-activation, and their gradients.

Growth methods score units from per-sample quantities. Taps are switched on only inside
``collect_taps`` (a block checks one attribute otherwise), so ordinary training steps pay nothing.
Gradients are those of the *sum* of per-sample losses, i.e. per-sample gradients when samples do
not interact, which is why taps run in eval mode (BatchNorm on running statistics) by default.
Gradients are taken with ``torch.autograd.grad``, so parameters' ``.grad`` are left untouched.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from growbench.nn.growable import GrowableNet
from growbench.nn.losses import PerSampleLoss


@dataclass
class Taps:
    """What one block saw on one batch; every tensor is detached, batch first."""

    input: Tensor  # the block's input x (the producer's input)
    pre: Tensor  # z: after the layer and BatchNorm, before the activation
    post: Tensor  # h = σ(z)
    grad_pre: Tensor  # ∂(Σ ℓ)/∂z
    grad_post: Tensor  # ∂(Σ ℓ)/∂h


class Recorder:
    def __init__(self) -> None:
        self.tensors: tuple[Tensor, Tensor, Tensor] | None = None

    def record(self, x: Tensor, z: Tensor, h: Tensor) -> None:
        self.tensors = (x, z, h)


def collect_taps(
    net: GrowableNet,
    inputs: Tensor,
    targets: Tensor,
    loss_fn: PerSampleLoss,
    blocks: Iterable[int | str] | None = None,
    eval_mode: bool = True,
) -> tuple[dict[str, Taps], Tensor]:
    """Run one batch with taps on ``blocks`` (default: all); return taps by block name and ℓ."""
    chosen = list(net.blocks) if blocks is None else [_block(net, key) for key in blocks]
    recorders = {block.name: Recorder() for block in chosen}
    modes = [(module, module.training) for module in net.modules()]
    if eval_mode:
        net.eval()
    try:
        for block in chosen:
            block.tap = recorders[block.name]
        with torch.enable_grad():
            losses = loss_fn(net(inputs), targets)
            wanted = []
            for recorder in recorders.values():
                _, z, h = recorder.tensors
                wanted += [z, h]
            grads = torch.autograd.grad(losses.sum(), wanted, allow_unused=True)
    finally:
        for block in chosen:
            block.tap = None
        for module, training in modes:  # per module: a mixed train/eval net stays mixed
            module.training = training  # not .train(): that recurses, n² over the tree
    taps = {}
    for position, (name, recorder) in enumerate(recorders.items()):
        x, z, h = recorder.tensors
        grad_pre, grad_post = grads[2 * position], grads[2 * position + 1]
        taps[name] = Taps(
            input=x.detach(),
            pre=z.detach(),
            post=h.detach(),
            grad_pre=_zeros_if_none(grad_pre, z),
            grad_post=_zeros_if_none(grad_post, h),
        )
    return taps, losses.detach()


def _zeros_if_none(grad: Tensor | None, like: Tensor) -> Tensor:
    return torch.zeros_like(like) if grad is None else grad.detach()


def _block(net: GrowableNet, key: int | str):
    if isinstance(key, int):
        return net.blocks[key]
    for block in net.blocks:
        if block.name == key:
            return block
    raise KeyError(f"no block named {key!r}; blocks are {[b.name for b in net.blocks]}")
