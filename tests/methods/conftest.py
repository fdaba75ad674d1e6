"""Shared tiny tasks for method tests: the plugin contract's own (``growbench.contract``), so the
tests and ``growbench check`` judge methods on the same nets. ``tanh_mlp`` and ``relu_mlp``,
``conv_bn``, ``rational_mlp`` and the ``ZOO`` models; each test gets a fresh copy."""

from __future__ import annotations

import pytest

from growbench.contract import FIXTURES as TASKS
from growbench.contract import ZOO, GrowthCase, make_task

__all__ = ["TASKS", "ZOO", "GrowthCase", "make_task", "task"]


@pytest.fixture(params=TASKS)
def task(request: pytest.FixtureRequest) -> GrowthCase:
    return make_task(request.param)
