"""Per-sample losses: the fused "mean" training uses equals the mean of the per-sample losses."""

from __future__ import annotations

import pytest
import torch

from growbench.nn.losses import classification_loss, loss_for_task, regression_loss


def test_reductions_agree_with_the_per_sample_losses():
    generator = torch.Generator().manual_seed(0)
    outputs = torch.randn(7, 3, generator=generator, dtype=torch.float64)
    for loss, targets in (
        (classification_loss, torch.randint(0, 3, (7,), generator=generator)),
        (regression_loss, torch.randn(7, 3, generator=generator, dtype=torch.float64)),
    ):
        per_sample = loss(outputs, targets)
        assert per_sample.shape == (7,)
        torch.testing.assert_close(loss(outputs, targets, reduction="mean"), per_sample.mean())
        torch.testing.assert_close(loss(outputs, targets, reduction="sum"), per_sample.sum())
    by_hand = ((outputs - targets) ** 2).mean(dim=1)
    torch.testing.assert_close(regression_loss(outputs, targets), by_hand, rtol=0, atol=0)


def test_unknown_task_is_a_clear_error():
    assert loss_for_task("classification") is classification_loss
    with pytest.raises(ValueError, match="unknown task 'ranking'"):
        loss_for_task("ranking")
