"""Shared tiny tasks for method tests ("Shared fixtures" of the method notes), float64.

``tanh_mlp`` 3→4→3→2 and ``relu_mlp`` on 400 Gaussian inputs with MSE to a random teacher, trained
200 full-batch GD steps so statistics are not trivial; ``conv_bn`` two conv3×3+BN+SiLU blocks
(3→4→5 channels) on 64 random 8×8 images, global average pool, linear 5→3, cross-entropy, with
BN running statistics from a few train-mode passes; and the ``ZOO`` models at tiny widths on 24
random inputs, 5 train-mode steps. Each test gets a fresh copy.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import cache

import pytest
import torch

from growbench.methods import GrowthContext
from growbench.nn import GrowableNet, ModelConfig, build_model
from growbench.nn.losses import PerSampleLoss, classification_loss, regression_loss

TASKS = ("tanh_mlp", "relu_mlp", "conv_bn")
# The papers' networks (and PointNet) at tiny widths, ReLU, 3 classes: the contract's zoo cases.
ZOO = {
    "vgg": ModelConfig("vgg", (3, 32, 32), 3, width_multiplier=1 / 32),
    "mobilenetv1": ModelConfig("mobilenetv1", (3, 32, 32), 3, width_multiplier=1 / 16),
    "resnet18": ModelConfig("resnet18", (3, 16, 16), 3, width_multiplier=1 / 16),
    "pointnet": ModelConfig("pointnet", (16, 3), 3, width_multiplier=1 / 32),
}


@dataclass
class Task:
    net: GrowableNet
    inputs: torch.Tensor
    targets: torch.Tensor
    loss_fn: PerSampleLoss

    def context(
        self, remaining_budget: float = float("inf"), metric: str = "params", seed: int = 0
    ) -> GrowthContext:
        return GrowthContext(
            inputs=self.inputs,
            targets=self.targets,
            loss_fn=self.loss_fn,
            budget_metric=metric,
            remaining_budget=remaining_budget,
            generator=torch.Generator().manual_seed(seed),
            batch_size=128,
        )


@cache
def _trained(name: str) -> Task:
    generator = torch.Generator().manual_seed(1234)
    if name in ("tanh_mlp", "relu_mlp", "rational_mlp"):
        activation = name.removesuffix("_mlp")
        config = ModelConfig("mlp", (3,), 2, (4, 3), activation=activation)
        net = build_model(config, seed=0).double()
        inputs = torch.randn(400, 3, generator=generator, dtype=torch.float64)
        teacher = torch.randn(3, 2, generator=generator, dtype=torch.float64)
        targets = torch.tanh(inputs @ teacher)
        loss_fn = regression_loss
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
        for _ in range(200):
            optimizer.zero_grad()
            loss_fn(net(inputs), targets).mean().backward()
            optimizer.step()
    elif name.split(":")[0] in ZOO:  # "resnet18", or "resnet18:tanh" for another activation
        model, _, activation = name.partition(":")
        config = ZOO[model].with_options(activation=activation or "relu")
        net = build_model(config, seed=0).double()
        inputs = torch.randn(24, *config.input_shape, generator=generator, dtype=torch.float64)
        targets = torch.randint(0, 3, (24,), generator=generator)
        loss_fn = classification_loss
        _train(net, inputs, targets, loss_fn, steps=5)
        for module in net.modules():  # running statistics = the data's, so eval mode is sane
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.reset_running_stats()
                module.momentum = None
        with torch.no_grad():
            net(inputs)
        for module in net.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.momentum = 0.1
    else:
        config = ModelConfig("cnn", (3, 8, 8), 3, (4, 5), activation="silu", batchnorm=True)
        net = build_model(config, seed=0).double()
        inputs = torch.randn(64, 3, 8, 8, generator=generator, dtype=torch.float64)
        targets = torch.randint(0, 3, (64,), generator=generator)
        loss_fn = classification_loss
        _train(net, inputs, targets, loss_fn, steps=20)
    net.eval()
    return Task(net, inputs, targets, loss_fn)


def _train(net, inputs, targets, loss_fn, steps: int) -> None:
    """Full-batch SGD in train mode, so BatchNorm statistics and weights are not at init."""
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
    net.train()
    for _ in range(steps):
        optimizer.zero_grad()
        loss_fn(net(inputs), targets).mean().backward()
        optimizer.step()


def make_task(name: str) -> Task:
    task = _trained(name)
    net = copy.deepcopy(task.net)
    net.lineage = {}
    return Task(net, task.inputs, task.targets, task.loss_fn)


@pytest.fixture(params=TASKS)
def task(request: pytest.FixtureRequest) -> Task:
    return make_task(request.param)
