"""The model contract: what every zoo model (built-in or a ``growbench.models`` plugin) must do,
checked on tiny CPU inputs; ``growbench check --model NAME`` runs it.

The model is built from its default options (or the ones given), seed 0, for the registered
dataset with the smallest inputs that its ``check`` accepts, in float64, and run in eval mode on
``BATCH`` random inputs. The surgery rules grow every site in turn on one net and compare its
outputs with the start net's after each step: they may move by at most ``MODEL_EXACT`` times
max(1, the largest output's magnitude). Counts are compared exactly. A broken rule raises
``Violation`` with a message that names it; a rule that does not apply raises ``Skipped``; the
outcomes are the method contract's (``growbench.contract``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from growbench.contract import Outcome, Skipped, Violation, _same_state, outputs, require
from growbench.nn import GrowableNet, ModelConfig, build_model, insert_layer
from growbench.nn.activations import activation_info
from growbench.nn.counting import growth_cost, insertion_cost
from growbench.nn.zoo import get_model

BATCH = 4  # inputs the outputs are compared on
MODEL_EXACT = 1e-10  # relative to max(1, max |output|): float64 rounding through a deep net
NEW_UNITS = 2  # units added per site by add_units and the cost checks


@dataclass(frozen=True)
class ModelProbe:
    """What the rules run on: the model's config, the dataset whose shapes it takes, the inputs."""

    config: ModelConfig
    dataset: str
    inputs: Tensor

    def net(self) -> GrowableNet:
        """A fresh start net, float64, in eval mode."""
        return build_model(self.config, seed=0).double().eval()


def model_probe(name: str, options: Mapping[str, Any] | None = None) -> ModelProbe:
    """``name`` with ``options`` for the registered dataset with the fewest input values (then
    by name) whose input shape and output count the model accepts."""
    from growbench.datasets import dataset_names, dataset_spec

    get_model(name)  # an unknown name is its own error
    specs = []
    for dataset in dataset_names():
        try:
            specs.append(dataset_spec(dataset))
        except Exception:  # a broken dataset plugin is not the model's fault
            continue
    refusals = []
    for spec in sorted(specs, key=lambda s: (math.prod(s.input_shape), s.name)):
        try:
            config = ModelConfig(name, spec.input_shape, spec.num_outputs, **dict(options or {}))
        except ValueError as exc:
            refusals.append(f"{spec.name}: {exc}")
            continue
        generator = torch.Generator().manual_seed(0)
        inputs = torch.randn(BATCH, *config.input_shape, generator=generator, dtype=torch.float64)
        return ModelProbe(config, spec.name, inputs)
    raise Violation(
        f"builds for a registered dataset: it accepts none ({'; '.join(refusals[:2])}"
        f"{f'; and {len(refusals) - 2} more' if len(refusals) > 2 else ''})"
    )


# ------------------------------------------------------------------------------ helpers
def _require_kept(net: GrowableNet, probe: ModelProbe, before: Tensor, rule: str, step: str):
    after = outputs(net, probe.inputs)
    require(after.shape == before.shape, rule, f"{step}: output shape {tuple(after.shape)}")
    moved = float((after - before).abs().max()) / max(1.0, float(before.abs().max()))
    require(moved <= MODEL_EXACT, rule, f"{step}: outputs moved by {moved:.3g} (relative)")


def _add_silent_units(site, count: int, generator: torch.Generator) -> None:
    """``count`` units with random fan-in (and bias) and zero fan-out at ``site``."""
    has_bias = site.producer.bias is not None
    fan_in = torch.randn(count, site.fan_in_size - has_bias, generator=generator)
    bias = torch.randn(count, generator=generator) if has_bias else None
    site.add_units(fan_in.double(), torch.zeros(count, site.fan_out_size), bias)


def _split_first_and_last(site, generator: torch.Generator) -> int:
    """Split units 0 and n-1 in two, zero deltas, fan-out weights (w, 1 - w), w in (-1, 2)."""
    ids = sorted({0, site.width - 1})
    share = 3 * torch.rand(len(ids), 1, generator=generator, dtype=torch.float64) - 1
    deltas = torch.zeros(len(ids), 2, site.fan_in_size, dtype=torch.float64)
    site.split(ids, deltas, torch.cat([share, 1 - share], dim=1))
    return len(ids)


def _with_sites(probe: ModelProbe) -> GrowableNet:
    net = probe.net()
    if not net.sites:
        raise Skipped("it has no growable sites")
    return net


def _slots(net: GrowableNet) -> list[str]:
    """The sites where a layer can be inserted."""
    return [site.name for site in net.sites if site.slot is not None]


def _counted(net: GrowableNet, inputs: Tensor) -> dict[str, int]:
    """Params as Σ p.numel() and FLOPs per sample as torch's ``FlopCounterMode`` counts a forward
    pass of two samples, independently of the net's own (cached, one-sample) count."""
    batch = inputs[:2]
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(batch)
    total = counter.get_total_flops()
    flops = total // len(batch) if total % len(batch) == 0 else total / len(batch)
    return {"params": sum(p.numel() for p in net.parameters()), "flops": flops}


def _require_counts(net: GrowableNet, inputs: Tensor, step: str) -> dict[str, int]:
    counted = _counted(net, inputs)
    reported = {"params": net.params(), "flops": net.flops()}
    require(
        reported["params"] == counted["params"],
        "its params count is the sum of p.numel()",
        f"{step}: reported {reported['params']}, counted {counted['params']}",
    )
    require(
        reported["flops"] == counted["flops"],
        "its FLOPs count is torch's FlopCounterMode count per sample",
        f"{step}: reported {reported['flops']}, counted {counted['flops']:g}",
    )
    return counted


def _difference(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {metric: after[metric] - before[metric] for metric in before}


# ------------------------------------------------------------------------------ checks
def check_builds(probe: ModelProbe) -> None:
    net = probe.net()
    require(isinstance(net, GrowableNet), "builds a GrowableNet", type(net).__name__)
    require(
        tuple(net.input_shape) == probe.config.input_shape,
        "the net records the input shape it was built for",
        f"{net.input_shape} != {probe.config.input_shape}",
    )
    result = outputs(net, probe.inputs)
    expected = (BATCH, probe.config.num_outputs)
    require(
        tuple(result.shape) == expected,
        "the output has shape (batch, outputs)",
        f"{tuple(result.shape)} != {expected}",
    )
    require(bool(torch.isfinite(result).all()), "the outputs are finite")
    require(_same_state(net.state_dict(), probe.net().state_dict()), "a seed builds one net")


def check_sites(probe: ModelProbe) -> None:
    net = probe.net()
    sites = net.sites
    require(bool(sites), "enumerates at least one growable site")
    widths = tuple(net.widths().values())
    require(
        widths == probe.config.widths,
        "the sites have the widths the config asks for (build honours `widths`)",
        f"config {probe.config.widths}, sites {widths}",
    )
    layers = {m for site in sites for m in (site.producer, site.consumer)}
    seen: dict[nn.Module, tuple[Tensor, Tensor]] = {}

    def record(module: nn.Module, args: tuple, output: Tensor) -> None:
        seen.setdefault(module, (args[0], output))  # the first call

    hooks = [layer.register_forward_hook(record) for layer in layers]
    try:
        outputs(net, probe.inputs)
    finally:
        for hook in hooks:
            hook.remove()
    in_net = set(net.modules())
    for site in sites:
        name = site.name
        require(site.net is net, "every site belongs to the net", name)
        for role, layer in (("producer", site.producer), ("consumer", site.consumer)):
            require(layer in in_net and layer in seen, f"a site's {role} runs in the net", name)
        produced = seen[site.producer][1]
        units = produced.shape[-1 if isinstance(site.producer, nn.Linear) else 1]
        require(
            units == site.width, "a site's producer outputs its units", f"{name}: {units} units"
        )
        read = seen[site.consumer][0]
        linear = isinstance(site.consumer, nn.Linear)
        columns = read.shape[-1 if linear else 1]
        expected = site.width * site.positions if linear else site.width
        require(
            columns == expected,
            "a site's consumer reads its units",
            f"{name}: reads {columns}, expected {expected}",
        )
        with torch.no_grad():
            path = site.run_between(produced)
        scale = MODEL_EXACT * max(1.0, float(read.abs().max()))
        same = path.shape == read.shape and float((path - read).abs().max()) <= scale
        require(same, "a site's per-unit path leads from its producer to its consumer", name)


def check_split(probe: ModelProbe) -> None:
    net = _with_sites(probe)
    before = outputs(net, probe.inputs)
    generator = torch.Generator().manual_seed(0)
    rule = "splitting a unit (zero deltas, weights summing to 1) keeps the outputs"
    for site in net.sites:
        width = site.width
        parents = _split_first_and_last(site, generator)
        require(site.width == width + parents, "a split adds one unit per parent", site.name)
        _require_kept(net, probe, before, rule, f"split at {site.name}")


def check_add_units(probe: ModelProbe) -> None:
    net = _with_sites(probe)
    before = outputs(net, probe.inputs)
    generator = torch.Generator().manual_seed(0)
    rule = "adding units with zero fan-out keeps the outputs"
    for site in net.sites:
        width = site.width
        _add_silent_units(site, NEW_UNITS, generator)
        require(site.width == width + NEW_UNITS, "add_units adds the units", site.name)
        _require_kept(net, probe, before, rule, f"add_units at {site.name}")


def check_insert_layer(probe: ModelProbe) -> None:
    net = probe.net()
    places, free = _slots(net), list(net.free_slots)
    if not places and not free:
        raise Skipped("no site has a slot and there is no free slot: it does not grow deeper")
    before = outputs(net, probe.inputs)
    for place in [*places, *free]:
        activation = "identity"
        if place in places:
            info = activation_info(net.site(place).activation)
            activation = None if info.idempotent or info.identity_at_init else "identity"
        insert_layer(net, place, init="identity", activation=activation)
        rule = "inserting an identity layer keeps the outputs"
        _require_kept(net, probe, before, rule, f"at {place}")
    branched = probe.net()
    generator = torch.Generator().manual_seed(0)
    for place in places:
        insert_layer(branched, place, init="zero-branch", generator=generator)
        rule = "inserting a zero-branch residual layer keeps the outputs"
        _require_kept(branched, probe, before, rule, f"at {place}")


def check_costs(probe: ModelProbe) -> None:
    net, inputs = probe.net(), probe.inputs
    counted = _require_counts(net, inputs, "as built")
    additions = {site.name: NEW_UNITS for site in net.sites}
    predicted = growth_cost(net, additions)
    generator = torch.Generator().manual_seed(0)
    for site in net.sites:
        _add_silent_units(site, NEW_UNITS, generator)
    grown = _require_counts(net, inputs, f"after adding {NEW_UNITS} units at every site")
    realised = _difference(grown, counted)
    require(
        predicted == realised,
        "growth_cost prices new units exactly",
        f"predicted {predicted}, counted {realised}",
    )
    for site in net.sites:
        _split_first_and_last(site, generator)
    grown = _require_counts(net, inputs, "after splitting at every site")
    places = _slots(net)
    if places:
        predicted = insertion_cost(net, places[-1], init="zero-branch")
        insert_layer(net, places[-1], init="zero-branch", generator=torch.Generator())
        realised = _difference(_require_counts(net, inputs, "after inserting a layer"), grown)
        require(
            predicted == realised,
            "insertion_cost prices a new layer exactly",
            f"predicted {predicted}, counted {realised}",
        )


# ------------------------------------------------------------------------------ the rules
@dataclass(frozen=True)
class ModelCheck:
    rule: str
    says: str
    run: Callable[[ModelProbe], None]


MODEL_CHECKS = (
    ModelCheck(
        "builds",
        "builds for the smallest dataset it accepts, outputs shaped (batch, outputs)",
        check_builds,
    ),
    ModelCheck(
        "sites", "enumerates sites whose widths and shapes agree with its layers", check_sites
    ),
    ModelCheck(
        "split",
        f"keeps its outputs when units split (zero deltas, weights sum to 1; {MODEL_EXACT:g} "
        "relative)",
        check_split,
    ),
    ModelCheck(
        "add-units",
        f"keeps its outputs when units with zero fan-out are added ({MODEL_EXACT:g} relative)",
        check_add_units,
    ),
    ModelCheck(
        "insert-layer",
        "keeps its outputs when an identity or zero-branch layer is inserted "
        f"({MODEL_EXACT:g} relative)",
        check_insert_layer,
    ),
    ModelCheck(
        "costs",
        "counts params (sum of numel) and FLOPs (FlopCounterMode) exactly, built and grown",
        check_costs,
    ),
)


def run_model_contract(
    name: str,
    checks: tuple[ModelCheck, ...] = MODEL_CHECKS,
    options: Mapping[str, Any] | None = None,
) -> Iterator[tuple[ModelCheck, Outcome]]:
    """Every check of ``checks`` on model ``name`` (with ``options``), as it finishes."""
    try:
        probe = model_probe(name, options)
    except Exception as exc:  # no dataset it accepts, or options it refuses: nothing can run
        detail = str(exc) if isinstance(exc, Violation) else f"raised {type(exc).__name__}: {exc}"
        for check in checks:
            yield check, Outcome(name, check.rule, "-", "fail", f"it does not build: {detail}")
        return
    for check in checks:
        try:
            check.run(probe)
        except Skipped as exc:
            yield check, Outcome(name, check.rule, probe.dataset, "skip", str(exc))
        except Violation as exc:
            yield check, Outcome(name, check.rule, probe.dataset, "fail", str(exc))
        except Exception as exc:  # a crash breaks the contract too: say where
            detail = f"raised {type(exc).__name__}: {exc}"
            yield check, Outcome(name, check.rule, probe.dataset, "fail", detail)
        else:
            yield check, Outcome(name, check.rule, probe.dataset, "pass")
