"""What a cell needs to train fast on an accelerator: mixed precision, channels-last, where the
data lives. Every piece also runs on the CPU (bf16 and fp16 autocast exist there), so it is
tested here.

- ``precision``: ``fp32``, or autocast to ``bf16`` or ``fp16`` for the forward pass and the loss
  of training and evaluation, with a gradient scaler for ``fp16``. Parameters and optimizer state
  stay fp32, and growth (its statistics, scores and surgery) always runs outside autocast in the
  precision each method computes in.
- ``channels_last``: conv nets and 4-D batches in channels-last memory format, which tensor
  cores prefer; re-applied after every growth step, whose surgery builds new weights.
- placement: the whole dataset is moved to the device when it takes under half of the free
  device memory (CIFAR and ModelNet40 do, even at fp32), else it stays in pinned host memory
  and each batch is copied without blocking; uint8 images are copied as uint8 and normalised on
  the device.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from growbench.datasets import Dataset

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context of ``precision`` (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES[precision])


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler | None:
    """fp16 needs its gradients scaled against underflow; bf16 and fp32 do not."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


def uses_channels_last(net: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in net.modules())


def to_memory_format(net: nn.Module, channels_last: bool) -> None:
    """Put ``net``'s 4-D weights in channels-last format (in place: parameters keep their
    identity, so an optimizer holding them is unaffected)."""
    if channels_last and uses_channels_last(net):
        net.to(memory_format=torch.channels_last)


def dataset_bytes(dataset: Dataset) -> int:
    tensors = (
        dataset.train_inputs,
        dataset.train_targets,
        dataset.test_inputs,
        dataset.test_targets,
    )
    return sum(t.numel() * t.element_size() for t in tensors)


def place(dataset: Dataset, device: torch.device) -> tuple[Dataset, bool]:
    """The dataset where training reads it, and whether batches must still be copied to
    ``device`` (pinned host memory when it does not fit in half the free device memory)."""
    if device.type != "cuda":
        return dataset.to(device), False
    free, _ = torch.cuda.mem_get_info(device)
    if dataset_bytes(dataset) < free // 2:
        return dataset.to(device), False
    return dataset.pin_memory(), True


def device_batches(
    dataset: Dataset,
    batches: Iterator[tuple[Tensor, Tensor]],
    device: torch.device,
    copy: bool,
    channels_last: bool,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Raw batches copied to ``device`` when ``copy`` (without blocking), prepared there, and in
    channels-last format for 4-D inputs when asked."""
    for inputs, targets in batches:
        if copy:
            inputs = inputs.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
        inputs = dataset.prepare(inputs)
        if channels_last and inputs.ndim == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        yield inputs, targets
