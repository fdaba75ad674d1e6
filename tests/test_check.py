"""``growbench check`` on plugins installed from a scratch package (a real ``.dist-info`` on
``sys.path``, as pip leaves one): a good plugin passes every rule; plugins that overspend their
budget, break declared function preservation, leave gradients behind, reseed the global RNG or
wreck the net's loss on samples they never saw fail, each on the line of the rule it breaks, and
the command exits 1."""

from __future__ import annotations

from pathlib import Path

import pytest

from growbench import provenance
from growbench.cli import main
from tests.conftest import install_distribution

PLUGINS = '''
from dataclasses import dataclass

import torch

from growbench.methods import Grower, GrowerConfig
from growbench.methods.selection import take_within_budget


@dataclass
class Config(GrowerConfig):
    units: int = 2


class Good(Grower):
    """Silent units (zero fan-out) on the last site, within the budget."""

    name = "scratch-good"
    Config = Config
    preserves_function = "exact"
    fan_out_scale = 0.0

    def grow_step(self, net, ctx, event):
        site = self.growable_sites(net)[-1]
        count = self.units(net, ctx, site)
        if count == 0:
            event.stop_reason = "budget exhausted"
            return
        size = site.fan_in_size - (site.producer.bias is not None)
        fan_in = torch.randn(count, size, generator=ctx.generator, dtype=torch.float64)
        fan_out = self.fan_out_scale * torch.ones(count, site.fan_out_size, dtype=torch.float64)
        self.before_surgery(net, ctx)
        site.add_units(0.1 * fan_in, fan_out)
        event.predicted_loss_change = 0.0 if self.fan_out_scale == 0 else None

    def units(self, net, ctx, site):
        return sum(take_within_budget(net, ctx, [site.name] * self.config.units))

    def before_surgery(self, net, ctx):
        pass


class Overspends(Good):
    name = "scratch-overspends"

    def units(self, net, ctx, site):
        return self.config.units  # ignores the budget


class Unfaithful(Good):
    name = "scratch-unfaithful"
    fan_out_scale = 0.5  # declares "exact", but the new units speak


class LeavesGradients(Good):
    name = "scratch-leaves-gradients"

    def before_surgery(self, net, ctx):
        ctx.loss_fn(net(ctx.inputs), ctx.targets).mean().backward()


class Wrecks(Good):
    name = "scratch-wrecks"
    preserves_function = "no"
    fan_out_scale = 30.0  # new units that shout: the loss everywhere jumps


class Reseeds(Good):
    name = "scratch-reseeds"

    def before_surgery(self, net, ctx):
        torch.manual_seed(0)
'''
ENTRIES = {
    "scratch-good": "Good",
    "scratch-overspends": "Overspends",
    "scratch-unfaithful": "Unfaithful",
    "scratch-leaves-gradients": "LeavesGradients",
    "scratch-reseeds": "Reseeds",
    "scratch-wrecks": "Wrecks",
}


@pytest.fixture
def scratch_package(plugin_site: Path) -> None:
    methods = {name: f"scratch_plugins:{cls}" for name, cls in ENTRIES.items()}
    install_distribution(
        plugin_site, "scratch-plugins", "0.1", methods, ("scratch_plugins", PLUGINS)
    )


def check(capsys, *argv: str) -> tuple[int, list[str]]:
    status = main(["check", *argv])
    return status, capsys.readouterr().out.splitlines()


def test_a_good_plugin_passes_every_rule(scratch_package, capsys) -> None:
    status, lines = check(capsys, "scratch-good")
    assert status == 0, "\n".join(lines)
    rules = {line.split()[2] for line in lines if line.startswith("PASS")}
    assert rules >= {"registration", "event", "budget", "function", "side-effects", "zoo"}
    assert not [line for line in lines if line.startswith("FAIL")]
    assert lines[-1] == "growbench check: every check passed (scratch-good)"
    assert provenance.provider(__import__("scratch_plugins").Good) == "scratch-plugins 0.1"


@pytest.mark.parametrize(
    ("name", "rule", "says"),
    [
        ("scratch-overspends", "budget", "must truncate to the budget"),
        ("scratch-unfaithful", "function", "preserves the function as declared"),
        ("scratch-leaves-gradients", "side-effects", "leaves no .grad"),
        ("scratch-reseeds", "side-effects", "leaves the global RNGs alone"),
        ("scratch-wrecks", "step-safety", "raises the loss on unseen samples by at most 5%"),
    ],
)
def test_a_broken_plugin_fails_on_the_rule_it_breaks(scratch_package, capsys, name, rule, says):
    status, lines = check(capsys, name, "--rules", f"registration,{rule}")
    assert status == 1
    failed = [line for line in lines if line.startswith("FAIL")]
    assert failed, "\n".join(lines)
    assert all(line.split()[1:3] == [name, rule] for line in failed)
    assert any(says in line for line in failed), "\n".join(failed)
    assert any(line.startswith(f"PASS  {name}  registration") for line in lines)
    assert "check(s) failed" in lines[-1]


def test_unknown_names_and_rules_are_one_line(capsys) -> None:
    for argv in (["no-such-method"], ["none", "--rules", "no-such-rule"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["check", *argv])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0
        assert "no-such" in err
