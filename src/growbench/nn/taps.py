"""Per-sample statistics taps: what a site's producer, activation and consumer see, and gradients.

Growth methods score units from per-sample quantities. ``collect_taps`` runs one batch with
forward hooks on the chosen sites' producers, activations and consumers (hooks exist only inside
the call, so ordinary training steps pay nothing) and takes the gradients of the *sum* of the
per-sample losses, i.e. per-sample gradients when samples do not interact, which is why taps run
in eval mode (BatchNorm on running statistics) by default. Instead of a loss, the backward pass
can be seeded with a given gradient of the net's output (``output_grad``). Gradients are taken
with ``torch.autograd.grad``, so parameters' ``.grad`` are left untouched. A statistic that is not
finite (a NaN or inf in the net or the batch) is one clear error, raised here for every method.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields

import torch
from torch import Tensor, nn

from growbench.nn.growable import GrowableNet, Site
from growbench.nn.losses import PerSampleLoss


class NonFiniteStatisticsError(ValueError):
    """A tapped statistic holds NaN or inf: growth cannot be scored from it."""


@dataclass
class Taps:
    """What one site saw on one batch; every tensor is detached, batch first (None where not
    asked for)."""

    input: Tensor | None = None  # x: the producer's input
    pre: Tensor | None = None  # z: the site activation's input (after the producer and its BN)
    post: Tensor | None = None  # h = σ(z)
    grad_pre: Tensor | None = None  # ∂(Σ ℓ)/∂z
    grad_post: Tensor | None = None  # ∂(Σ ℓ)/∂h
    consumer_input: Tensor | None = None  # what the consumer reads (after the per-unit path)
    grad_consumer_input: Tensor | None = None  # ∂(Σ ℓ)/∂(consumer input)
    grad_output: Tensor | None = None  # g_a = ∂(Σ ℓ)/∂(consumer output), before any later norm


TAP_FIELDS = tuple(f.name for f in fields(Taps))
_GRADIENTS = {  # gradient field -> the tapped tensor it is taken with respect to
    "grad_pre": "pre",
    "grad_post": "post",
    "grad_consumer_input": "consumer_input",
    "grad_output": "out",
}


def collect_taps(
    net: GrowableNet,
    inputs: Tensor,
    targets: Tensor | None = None,
    loss_fn: PerSampleLoss | None = None,
    sites: Iterable[Site | int | str] | None = None,
    eval_mode: bool = True,
    output_grad: Tensor | None = None,
    want: Collection[str] = TAP_FIELDS,
) -> tuple[dict[str, Taps], Tensor | None]:
    """Run one batch with taps on ``sites`` (default: all); return taps by site name and the
    per-sample losses ℓ (None when the backward pass is seeded with ``output_grad``, a tensor
    shaped like the net's output). ``want`` names the ``Taps`` fields to keep."""
    unknown = set(want) - set(TAP_FIELDS)
    if unknown:
        raise ValueError(
            f"collect_taps: unknown fields {sorted(unknown)}; choose from {TAP_FIELDS}"
        )
    if output_grad is None and (loss_fn is None or targets is None):
        raise ValueError("collect_taps needs a loss_fn and targets, or an output_grad")
    chosen = net.sites if sites is None else [net._resolve(key) for key in sites]
    records: dict[str, dict[str, Tensor]] = {site.name: {} for site in chosen}
    handles = [handle for site in chosen for handle in _hook(site, records[site.name])]
    modes = [(module, module.training) for module in net.modules()]
    if eval_mode:
        net.eval()
    try:
        with torch.enable_grad():
            outputs = net(inputs)
            keys = [key for field, key in _GRADIENTS.items() if field in want]
            wanted_grads = [(name, key) for name in records for key in keys]
            tensors = [records[name][key] for name, key in wanted_grads]
            if output_grad is None:
                losses = loss_fn(outputs, targets)
                seed, seed_grad = losses.sum(), None
            else:
                losses = None
                seed, seed_grad = outputs, output_grad.to(outputs)
            grads = ()
            if tensors:
                grads = torch.autograd.grad(
                    seed, tensors, grad_outputs=seed_grad, allow_unused=True, materialize_grads=True
                )
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes:  # per module: a mixed train/eval net stays mixed
            module.training = training  # not .train(): that recurses, n² over the tree
    gradient = dict(zip(wanted_grads, grads, strict=True))
    taps = {}
    for name, record in records.items():
        kept = {}
        for key in want:
            value = gradient[(name, _GRADIENTS[key])] if key in _GRADIENTS else record[key]
            kept[key] = value.detach()
        for key, value in kept.items():
            if not bool(torch.isfinite(value).all()):
                raise NonFiniteStatisticsError(
                    f"statistics at site {name!r} are not finite (NaN or inf in {key}): the net's "
                    "weights or the statistics batch hold NaN/inf; lower the learning rate or "
                    "check the data"
                )
        taps[name] = Taps(**kept)
    if losses is not None and not bool(torch.isfinite(losses).all()):
        raise NonFiniteStatisticsError(
            "the loss on the statistics batch is not finite: the net's weights or the data hold "
            "NaN/inf; lower the learning rate or check the data"
        )
    return taps, None if losses is None else losses.detach()


def _hook(site: Site, record: dict[str, Tensor]) -> list[torch.utils.hooks.RemovableHandle]:
    """Hooks that store the producer's input, the activation's input and output and the
    consumer's input and output of one forward pass in ``record``."""

    def store(key: str, value: Tensor) -> None:
        if key in record:
            raise RuntimeError(
                f"site {site.name!r}: a tapped module ran twice in one forward pass; a site's "
                "modules must each be used once"
            )
        record[key] = value

    def on_producer(module: nn.Module, args: tuple) -> None:
        store("input", args[0])

    def on_activation(module: nn.Module, args: tuple, output: Tensor) -> None:
        store("pre", args[0])
        store("post", output)

    def on_consumer(module: nn.Module, args: tuple, output: Tensor) -> None:
        store("consumer_input", args[0])
        store("out", output)

    return [
        site.producer.register_forward_pre_hook(on_producer),
        site.act.register_forward_hook(on_activation),
        site.consumer.register_forward_hook(on_consumer),
    ]


@contextmanager
def record_inputs(modules: Iterable[nn.Module]) -> Iterator[dict[nn.Module, Tensor]]:
    """Inside the block, the input of each of ``modules`` on its latest call, by module."""
    seen: dict[nn.Module, Tensor] = {}

    def store(module: nn.Module, args: tuple) -> None:
        seen[module] = args[0]

    handles = [module.register_forward_pre_hook(store) for module in modules]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()
