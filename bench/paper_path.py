"""Figures of the paper-scale training path (``bench/run.py --only paper-path``), on CIFAR-shaped
synthetic data (50,000 × 3×32×32 uint8 pixels with CIFAR-10's normalisation), CPU or GPU:

* harness throughput / a bare loop of the same net, precision and augmentation (target ≥ 0.95):
  the harness's batches (raw uint8 → device → prepared → augmented) through ``train_one_epoch``
  against an inline loop doing the same work;
* augmentation's share of a training step (target ≤ 5 %);
* the time to build an ImageNet-subset cache, per 1,000 JPEGs (ImageNet-sized, decoded and
  resized to 224 px).
"""

from __future__ import annotations

import io
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from PIL import Image

from growbench.benchmarks import accelerator
from growbench.benchmarks.augment import augmentation
from growbench.benchmarks.runner import train_one_epoch
from growbench.datasets import Dataset, DatasetSpec
from growbench.datasets.cifar import NORMALISATION
from growbench.nn import ModelConfig, build_model
from growbench.nn.losses import classification_loss

NETS = {
    "mobilenetv1": ("MobileNetV1-CIFAR, width 0.25", {"width_multiplier": 0.25}),
    "resnet18": ("ResNet-18-CIFAR, inner widths 1/8", {"inner_ratio": 0.125}),
}
BATCH = 128


def cifar_shaped(count: int = 50_000) -> Dataset:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (count, 3, 32, 32), generator=generator, dtype=torch.uint8)
    labels = torch.randint(0, 10, (count,), generator=generator)
    spec = DatasetSpec("cifar-shaped", "classification", (3, 32, 32), 10, "bench", "bench")
    return Dataset(spec, images, labels, images[:1000], labels[:1000], NORMALISATION["cifar10"])


def _timed(work) -> float:
    start = time.perf_counter()
    work()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def throughput(
    model: str, precision: str, policy: str, device: torch.device, batches: int, repeats: int
) -> tuple[float, float]:
    """(harness samples/s / bare samples/s, augmentation seconds / training-step seconds)."""
    data, copy = accelerator.place(cifar_shaped(), device)
    config = ModelConfig(model, (3, 32, 32), 10, **NETS[model][1])
    nets = [build_model(config, seed=0).to(device) for _ in range(2)]
    for net in nets:
        accelerator.to_memory_format(net, device.type == "cuda")
    optimizers = [torch.optim.SGD(n.parameters(), lr=0.01, momentum=0.9) for n in nets]
    cast = lambda: accelerator.autocast(device, precision)  # noqa: E731
    scalers = [accelerator.grad_scaler(device, precision) for _ in nets]
    augment = augmentation(policy, data.normalization)
    orders = [torch.Generator().manual_seed(1) for _ in nets]
    augment_generators = [torch.Generator(device=device).manual_seed(2) for _ in nets]
    channels_last = device.type == "cuda"

    def harness_batches() -> Iterator:
        raw = data.batches("train", BATCH, orders[0], raw=True)
        prepared = accelerator.device_batches(data, raw, device, copy, channels_last)
        for index, (inputs, targets) in enumerate(prepared):
            if index == batches:
                return
            yield augment(inputs, augment_generators[0]) if augment else inputs, targets

    def harness() -> None:
        train_one_epoch(
            nets[0], optimizers[0], harness_batches(), classification_loss, None, cast, scalers[0]
        )

    def bare() -> None:
        net, optimizer, scaler = nets[1], optimizers[1], scalers[1]
        net.train()
        order = torch.randperm(data.num_train, generator=orders[1]).to(data.train_inputs.device)
        mean, std = (
            torch.tensor(v, device=device).reshape(1, 3, 1, 1) for v in NORMALISATION["cifar10"]
        )
        for index in range(batches):
            pick = order[index * BATCH : (index + 1) * BATCH]
            inputs = data.train_inputs[pick].to(device, non_blocking=True)
            targets = data.train_targets[pick].to(device, non_blocking=True)
            inputs = (inputs.float() / 255 - mean) / std
            if channels_last:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            if augment:
                inputs = augment(inputs, augment_generators[1])
            optimizer.zero_grad(set_to_none=True)
            with cast():
                loss = classification_loss(net(inputs), targets, reduction="mean")
            if scaler is None:
                loss.backward()
                optimizer.step()
            else:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
        float(loss)

    harness(), bare()  # warm-up
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        times[0].append(_timed(harness))
        times[1].append(_timed(bare))
    ratio = statistics.median(times[1]) / statistics.median(times[0])
    share = float("nan")
    if augment is not None:
        sample = data.prepare(data.train_inputs[:BATCH].to(device))
        augment_time = statistics.median(
            _timed(lambda: augment(sample, augment_generators[0])) for _ in range(repeats * 3)
        )
        share = augment_time / (statistics.median(times[0]) / batches)
    return ratio, share


def cache_build_seconds_per_1000(images: int = 200, resolution: int = 224) -> float:
    """Seconds to decode and resize 1,000 ImageNet-sized (375×500) JPEGs into the uint8 cache."""
    from growbench.datasets import imagenet_subsets

    generator = torch.Generator().manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        base = Path(folder)
        items = []
        for index in range(images):
            pixels = torch.randint(0, 256, (375, 500, 3), generator=generator, dtype=torch.uint8)
            smooth = torch.nn.functional.avg_pool2d(pixels.permute(2, 0, 1).float()[None], 9, 1, 4)[
                0
            ].permute(1, 2, 0)  # JPEG-like content, not white noise
            out = io.BytesIO()
            Image.fromarray(smooth.byte().numpy()).save(out, format="JPEG", quality=90)
            path = base / f"{index}.JPEG"
            path.write_bytes(out.getvalue())
            items.append((path, index % 10))
        start = time.perf_counter()
        for path, _ in items:
            imagenet_subsets.decode(path, resolution)
        return (time.perf_counter() - start) * 1000 / images


def figures(device: torch.device, repeats: int) -> Iterator[str]:
    runs = [
        ("mobilenetv1", "fp32", "cifar", 20),
        ("mobilenetv1", "bf16", "cifar", 20),
        ("resnet18", "fp32", "cifar", 12),
    ]
    if device.type == "cuda":
        runs += [("mobilenetv1", "fp16", "cifar", 50), ("resnet18", "bf16", "cifar", 50)]
    for model, precision, policy, batches in runs:
        ratio, share = throughput(model, precision, policy, device, batches, repeats)
        yield (
            f"paper path, {NETS[model][0]}, {precision}, augmentation {policy}, {device.type}: "
            f"harness / bare loop throughput {ratio:.3f} (target >= 0.95); augmentation "
            f"{100 * share:.1f} % of a training step (target <= 5 %)"
        )
    yield (
        f"ImageNet-subset cache: {cache_build_seconds_per_1000():.1f} s per 1,000 JPEGs "
        "(375x500, decoded and resized to 224 px, one process)"
    )
