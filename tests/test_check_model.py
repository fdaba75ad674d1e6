"""``growbench check --model``: the model contract passes on every built-in model (at its smallest
widths) and on a LeNet-5 plugin installed from a scratch package (a real ``.dist-info`` on
``sys.path``, as pip leaves one); variants that misreport their FLOPs or their sites' widths fail
on the rule they break, and the command exits 1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from growbench.cli import main
from growbench.contract import CHECKS
from growbench.model_contract import MODEL_CHECKS, run_model_contract
from growbench.nn.zoo import available_models
from tests.conftest import install_distribution

# Every built-in model at its smallest widths, so the contract takes a second or so on a CPU.
SMALLEST = {
    "cnn": {"widths": (2, 3)},
    "mlp": {"widths": (3, 2)},
    "mobilenetv1": {"width_multiplier": 1 / 32},
    "pointnet": {"width_multiplier": 1 / 64},
    "resnet18": {"width_multiplier": 1 / 32},
    "vgg": {"width_multiplier": 1 / 64},
}

LENET = '''
from dataclasses import dataclass

from torch import nn

from growbench.nn import GrowableNet
from growbench.nn.zoo import ZooModel
from growbench.nn.zoo.layers import ChainLayer, chain_net, check_image


@dataclass(frozen=True)
class Options:
    widths: tuple[int, ...] | None = (6, 16, 120, 84)  # c1, c3, f5, f6
    activation: str = "tanh"


class LeNet5(ZooModel):
    """conv 5×5 (padded) → avg pool → conv 5×5 → avg pool → FC → FC → output; 28×28 and up."""

    name = "scratch-lenet5"
    Options = Options
    description = "LeNet-5: two 5×5 convs with average pools, then two Linear layers"

    @classmethod
    def default_widths(cls, options, input_shape):
        return tuple(options.widths)

    @classmethod
    def check(cls, options, input_shape, num_outputs):
        check_image(cls.name, input_shape, 28)

    @classmethod
    def build(cls, options, input_shape, num_outputs):
        c1, c3, f5, f6 = cls.layer_widths(options)
        act = options.activation
        height, width = ((side // 2 - 4) // 2 for side in input_shape[1:])
        layers = [
            ChainLayer("c1", nn.Conv2d(input_shape[0], c1, 5, padding=2), None, act,
                       [nn.AvgPool2d(2)]),
            ChainLayer("c3", nn.Conv2d(c1, c3, 5), None, act, [nn.AvgPool2d(2), nn.Flatten()]),
            ChainLayer("f5", nn.Linear(c3 * height * width, f5), None, act),
            ChainLayer("f6", nn.Linear(f5, f6), None, act),
            ChainLayer("output", nn.Linear(f6, num_outputs)),
        ]
        return cls.wrap(chain_net(layers, input_shape))

    @classmethod
    def layer_widths(cls, options):
        return options.widths

    @classmethod
    def wrap(cls, net):
        return net


class MiscountingNet(GrowableNet):
    """Counts a conv's FLOPs once per weight, not once per weight and output position."""

    def flops(self, input_shape=None):
        layers = [m for m in self.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
        return sum(2 * layer.weight.numel() for layer in layers)


class Miscounts(LeNet5):
    name = "scratch-lenet5-miscounts"

    @classmethod
    def wrap(cls, net):
        return MiscountingNet(list(net.stages), net.sites, net.input_shape)


class Misreports(LeNet5):
    """Builds f6 with 4 more units than its widths say: its sites are not the config's."""

    name = "scratch-lenet5-misreports"

    @classmethod
    def layer_widths(cls, options):
        return (*options.widths[:3], options.widths[3] + 4)
'''  # fmt: skip
ENTRIES = {
    "scratch-lenet5": "scratch_models:LeNet5",
    "scratch-lenet5-miscounts": "scratch_models:Miscounts",
    "scratch-lenet5-misreports": "scratch_models:Misreports",
}
RULES = [check.rule for check in MODEL_CHECKS]


@pytest.fixture
def scratch_models(plugin_site: Path) -> None:
    install_distribution(
        plugin_site,
        "scratch-models",
        "0.1",
        ENTRIES,
        ("scratch_models", LENET),
        group="growbench.models",
    )


def check(capsys, *argv: str) -> tuple[int, list[str]]:
    status = main(["check", *argv])
    return status, capsys.readouterr().out.splitlines()


def test_every_builtin_model_is_covered() -> None:
    builtins = {
        n for n, cls in available_models().items() if cls.__module__.startswith("growbench")
    }
    assert builtins == set(SMALLEST)


@pytest.mark.parametrize("name", sorted(SMALLEST))
def test_the_contract_passes_on_every_builtin_model(name: str) -> None:
    outcomes = [outcome for _, outcome in run_model_contract(name, options=SMALLEST[name])]
    assert [outcome.rule for outcome in outcomes] == RULES
    failed = [outcome.line("") for outcome in outcomes if outcome.status != "pass"]
    assert failed == []


def test_a_lenet5_plugin_passes_every_rule(scratch_models, capsys) -> None:
    status, lines = check(capsys, "--model", "scratch-lenet5")
    assert status == 0, "\n".join(lines)
    assert [line.split()[:3] for line in lines[:-1]] == [
        ["PASS", "scratch-lenet5", rule] for rule in RULES
    ]
    assert all(" on fashion-mnist: " in line for line in lines[:-1])  # the smallest it accepts
    assert lines[-1] == "growbench check: every check passed (scratch-lenet5)"


@pytest.mark.parametrize(
    ("name", "rule", "says"),
    [
        ("scratch-lenet5-miscounts", "costs", "its FLOPs count is torch's FlopCounterMode count"),
        ("scratch-lenet5-misreports", "sites", "the sites have the widths the config asks for"),
    ],
)
def test_a_broken_model_fails_on_the_rule_it_breaks(scratch_models, capsys, name, rule, says):
    status, lines = check(capsys, "--model", name)
    assert status == 1
    failed = [line for line in lines if line.startswith("FAIL")]
    assert [line.split()[1:3] for line in failed] == [[name, rule]], "\n".join(lines)
    assert says in failed[0]
    assert lines[-1] == f"growbench check: 1 check(s) failed ({name})"


def test_check_model_mlp_as_a_command() -> None:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONWARNINGS"}
    command = [sys.executable, "-m", "growbench.cli", "check", "--model", "mlp"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[:3] for line in lines[:-1]] == [["PASS", "mlp", rule] for rule in RULES]
    assert lines[-1] == "growbench check: every check passed (mlp)"


def test_check_help_lists_the_rules_of_both_contracts(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["check", "--help"])
    assert exit_info.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    for check_ in (*CHECKS, *MODEL_CHECKS):
        assert any(line.split()[:1] == [check_.rule] and check_.says in line for line in lines)


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        ([], "growbench check --model NAME), one of the two"),
        (["none", "--model", "mlp"], "one of the two"),
        (["--model", "no-such-model"], "no-such-model"),
        (["--model", "mlp", "--rules", "budget"], "unknown rule(s) budget"),  # a method rule
    ],
)
def test_check_model_mistakes_are_one_line(capsys, argv, says) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["check", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert says in err
