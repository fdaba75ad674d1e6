"""Tiny float64 nets shared by the tests of ``growbench.nn``.

Every site kind the surgery supports has a case here: Linear→Linear, Linear+BN→Linear,
Conv2d→Conv2d, Conv2d+BN→Conv2d, Conv2d→global-average-pool→Linear (with and without BN) and a
hand-built Conv2d→flatten→Linear whose consumer reads every unit at 2×2 = 4 positions.
BatchNorm layers get random running statistics and affine parameters, so an operation that
forgets them cannot pass by accident.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from growbench.nn import GrowableNet, ModelConfig, build_model
from growbench.nn.zoo.layers import chain_sites, unit_stage

DTYPE = torch.float64
NUM_OUTPUTS = 3


def randomize_batchnorm(net: nn.Module, seed: int) -> None:
    """Random running statistics and affine parameters for every BatchNorm of ``net``."""
    gen = torch.Generator().manual_seed(seed)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
            n = module.num_features
            with torch.no_grad():
                module.running_mean.copy_(0.5 * torch.randn(n, generator=gen, dtype=DTYPE))
                module.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=gen, dtype=DTYPE))
                module.weight.copy_(0.5 + torch.rand(n, generator=gen, dtype=DTYPE))
                module.bias.copy_(0.3 * torch.randn(n, generator=gen, dtype=DTYPE))
                module.num_batches_tracked.fill_(7)


def make_mlp(batchnorm: bool = False, activation: str = "tanh", seed: int = 0) -> GrowableNet:
    """5 → 4 → 6 → 3."""
    config = ModelConfig(
        "mlp", (5,), NUM_OUTPUTS, (4, 6), activation=activation, batchnorm=batchnorm
    )
    net = build_model(config, seed=seed).double()
    randomize_batchnorm(net, seed + 100)
    return net


def make_cnn(batchnorm: bool = False, activation: str = "tanh", seed: int = 0) -> GrowableNet:
    """2×6×6 → conv 3 → max-pool → conv 4 → global average pool → linear 3."""
    config = ModelConfig(
        "cnn", (2, 6, 6), NUM_OUTPUTS, (3, 4), activation=activation, batchnorm=batchnorm
    )
    net = build_model(config, seed=seed).double()
    randomize_batchnorm(net, seed + 100)
    return net


def make_flat_cnn(batchnorm: bool = False, activation: str = "tanh", seed: int = 0) -> GrowableNet:
    """2×4×4 → conv 3 → max-pool → flatten (3·2·2) → linear 5 → linear 3, built by hand."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        conv = unit_stage(
            nn.Conv2d(2, 3, 3, padding=1, bias=not batchnorm),
            activation,
            batchnorm,
            [("pool", nn.MaxPool2d(2)), ("flatten", nn.Flatten())],
        )
        fc = unit_stage(nn.Linear(3 * 2 * 2, 5), activation, False)
        head = nn.Linear(5, NUM_OUTPUTS)
    sites = chain_sites(["conv", "fc"], [conv, fc], [fc.layer, head])
    net = GrowableNet([conv.module, fc.module, head], sites, (2, 4, 4)).double()
    randomize_batchnorm(net, seed + 100)
    return net


BUILDERS: dict[str, Callable[..., GrowableNet]] = {
    "mlp": make_mlp,
    "cnn": make_cnn,
    "flat": make_flat_cnn,
}


def make_inputs(net: GrowableNet, count: int = 16, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(count, *net.input_shape, generator=gen, dtype=DTYPE)


def make_targets(count: int = 16, seed: int = 2) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, NUM_OUTPUTS, (count,), generator=gen)


@dataclass(frozen=True)
class SiteCase:
    """One site kind: which net, which site, what the site's consumer looks like."""

    name: str
    builder: str
    batchnorm: bool
    site: int
    positions: int  # how many consumer inputs read each unit

    def net(self, activation: str = "tanh", seed: int = 0) -> GrowableNet:
        return BUILDERS[self.builder](self.batchnorm, activation, seed)

    def inputs(self, net: GrowableNet, count: int = 16, seed: int = 1) -> torch.Tensor:
        return make_inputs(net, count, seed)

    def __str__(self) -> str:
        return self.name


SITE_CASES = [
    SiteCase("linear", "mlp", False, 0, 1),
    SiteCase("linear_bn", "mlp", True, 0, 1),
    SiteCase("linear_bn_to_head", "mlp", True, 1, 1),
    SiteCase("conv", "cnn", False, 0, 9),
    SiteCase("conv_bn", "cnn", True, 0, 9),
    SiteCase("conv_gap_linear", "cnn", False, 1, 1),
    SiteCase("conv_bn_gap_linear", "cnn", True, 1, 1),
    SiteCase("conv_flatten_linear", "flat", False, 0, 4),
    SiteCase("conv_bn_flatten_linear", "flat", True, 0, 4),
]


@pytest.fixture(params=SITE_CASES, ids=str)
def case(request: pytest.FixtureRequest) -> SiteCase:
    return request.param


@pytest.fixture(params=[c for c in SITE_CASES if c.batchnorm], ids=str)
def bn_case(request: pytest.FixtureRequest) -> SiteCase:
    return request.param


@pytest.fixture
def inputs_for() -> Callable[..., torch.Tensor]:
    return make_inputs


@pytest.fixture
def targets_for() -> Callable[..., torch.Tensor]:
    return make_targets


@pytest.fixture
def make_net() -> Callable[..., GrowableNet]:
    """``make_net(kind, batchnorm=False, activation="tanh", seed=0)`` with kind mlp/cnn/flat."""

    def make(kind: str, batchnorm: bool = False, activation: str = "tanh", seed: int = 0):
        return BUILDERS[kind](batchnorm, activation, seed)

    return make
