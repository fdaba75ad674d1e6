"""Test-wide settings: one torch thread.

Tests use tiny tensors, where a second thread buys nothing, and on a busy 2-core machine torch's
spinning worker threads made steps up to 100× slower. The harness defaults to one thread too.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
