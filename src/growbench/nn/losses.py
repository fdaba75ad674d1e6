"""Per-sample losses.

Everything in growbench computes a vector of per-sample losses ℓ(ξ): training minimises their
mean, and the statistics taps differentiate their sum, which gives per-sample gradients (the
convention of ``shared/methods/README.md``). One function per task keeps the two consistent.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor

PerSampleLoss = Callable[[Tensor, Tensor], Tensor]


def classification_loss(outputs: Tensor, targets: Tensor) -> Tensor:
    return F.cross_entropy(outputs, targets, reduction="none")


def regression_loss(outputs: Tensor, targets: Tensor) -> Tensor:
    """Squared error averaged over output dimensions (so its mean is ``F.mse_loss``)."""
    return (outputs - targets).pow(2).flatten(1).mean(dim=1)


def loss_for_task(task: str) -> PerSampleLoss:
    if task == "classification":
        return classification_loss
    if task == "regression":
        return regression_loss
    raise ValueError(f"unknown task {task!r}; choose 'classification' or 'regression'")
