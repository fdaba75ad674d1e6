"""Read IDX files, the format MNIST-style datasets ship in, with numpy only.

An IDX file is a big-endian header (two zero bytes, a type byte, the number of dimensions, then
each dimension as a uint32) followed by the data. growbench only needs unsigned bytes (type 0x08):
magic 0x00000803 for an image stack, 0x00000801 for a label vector. Reading it ourselves keeps the
loader independent of any downloader's private helpers, and lets us say exactly what is wrong
with a bad file.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

UBYTE = 0x08


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """The uint8 array in the IDX file ``path`` (plain, or gzipped if it ends in ``.gz``),
    which must have ``ndim`` dimensions; ``ValueError`` says what is wrong with a bad file."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as file:
            data = file.read()
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise ValueError(
            f"{path}: not a complete gzip file ({exc or 'it ends early'}); delete it and get "
            "the dataset's files again"
        ) from None
    expected_magic = (UBYTE << 8) | ndim
    if len(data) < 4:
        raise ValueError(f"{path}: {len(data)} bytes is too short for an IDX header")
    magic = int.from_bytes(data[:4], "big")
    if magic != expected_magic:
        raise ValueError(
            f"{path}: bad IDX magic number 0x{magic:08x}, expected 0x{expected_magic:08x} "
            f"(unsigned bytes, {ndim} dimension{'s' if ndim > 1 else ''})"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: file ends inside the IDX header ({len(data)} bytes)")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    size = int(np.prod(shape))
    if len(data) - header != size:
        raise ValueError(
            f"{path}: IDX header says shape {shape} ({size} bytes of data) "
            f"but the file has {len(data) - header} bytes after the header"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)
