"""Fixtures for the fetched datasets' tests: the documented test-only seam that accepts a
fixture archive's checksums beside the official ones."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from growbench.datasets import archives


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


@pytest.fixture
def accept(monkeypatch):
    """``accept(path, name=None)`` adds the md5 of ``path`` to the checksums accepted for
    ``name`` (default: the file's name), in a copy of ``archives.CHECKSUMS`` for this test."""
    table = {name: set(values) for name, values in archives.CHECKSUMS.items()}
    monkeypatch.setattr(archives, "CHECKSUMS", table)

    def add(path: Path, name: str | None = None) -> None:
        table.setdefault(name or path.name, set()).add(md5(path.read_bytes()))

    return add
