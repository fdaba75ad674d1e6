"""Training-set augmentation as batched tensor ops on the batch's device, the same for every method.

Each policy transforms a whole batch of prepared (normalised) inputs at once, with per-sample
random draws from one generator on the batch's device that the runner seeds from the cell's seed
alone, so every method of a seed sees the same augmented samples in the same order (as long as
batches come in the same order, which the runner guarantees). Evaluation and the growth
statistics set are never augmented.

- ``cifar``: a random crop of the image padded by 4 pixels on each side (the padding is what a
  black pixel becomes after normalisation, as when the padding is done before it), then a
  horizontal flip with probability ½.
- ``imagenet``: a random-resized crop (area U(0.08, 1) of the image, aspect ratio log-uniform in
  [¾, 4⁄3], clipped to the image, resized back bilinearly), then a flip with probability ½. One
  draw per sample, not torchvision's ten tries: a box that does not fit is clipped instead.
- ``pointcloud``: PointNet's scaling U(0.8, 1.25) and translation U(−0.1, 0.1) per cloud and
  axis, then jitter N(0, 0.01²) clipped to ±0.05 per point.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

AUGMENTATIONS = ("none", "cifar", "imagenet", "pointcloud")
Augmentation = Callable[[Tensor, torch.Generator], Tensor]


def _uniform(shape: tuple[int, ...], low: float, high: float, like: Tensor, g) -> Tensor:
    return low + (high - low) * torch.rand(shape, generator=g, device=like.device, dtype=like.dtype)


def _flip(images: Tensor, g: torch.Generator) -> Tensor:
    flip = torch.rand(images.shape[0], generator=g, device=images.device) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(3), images)


def cifar_crop_flip(images: Tensor, g: torch.Generator, black: Tensor, pad: int = 4) -> Tensor:
    """Random crops of the ``pad``-padded images (filled with ``black``, per channel), then
    flips."""
    n, c, h, w = images.shape
    padded = black.reshape(1, c, 1, 1).to(images).expand(n, c, h + 2 * pad, w + 2 * pad).clone()
    padded[:, :, pad : pad + h, pad : pad + w] = images
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=g, device=images.device)
    rows = (offsets[:, :1] + torch.arange(h, device=images.device))[:, None, :, None]
    cols = (offsets[:, 1:] + torch.arange(w, device=images.device))[:, None, None, :]
    batch = torch.arange(n, device=images.device)[:, None, None, None]
    channel = torch.arange(c, device=images.device)[None, :, None, None]
    return _flip(padded[batch, channel, rows, cols], g)


def crop_boxes(
    n: int, g: torch.Generator, like: Tensor, scale: tuple[float, float] = (0.08, 1.0)
) -> Tensor:
    """N random boxes (centre x, centre y, width, height) in [−1, 1] image coordinates: area
    fraction in ``scale``, aspect ratio log-uniform in [¾, 4⁄3], clipped to the image."""
    area = _uniform((n,), *scale, like, g)
    ratio = _uniform((n,), math.log(3 / 4), math.log(4 / 3), like, g).exp()
    width = (area * ratio).sqrt().clamp(max=1.0)  # fractions of the image's side
    height = (area / ratio).sqrt().clamp(max=1.0)
    centre_x = (2 * _uniform((n,), 0, 1, like, g) - 1) * (1 - width)
    centre_y = (2 * _uniform((n,), 0, 1, like, g) - 1) * (1 - height)
    return torch.stack([centre_x, centre_y, width, height], dim=1)


def resize_boxes(images: Tensor, boxes: Tensor) -> Tensor:
    """Each image's box resized to the image's size, bilinearly, reading nothing outside the
    box (sample points are clamped to its edge pixels' centres, so a pixel-aligned box gives
    what cropping and then ``F.interpolate`` give)."""
    n, _, height, width = images.shape
    theta = torch.zeros(n, 2, 3, device=images.device, dtype=images.dtype)
    theta[:, 0, 0], theta[:, 0, 2] = boxes[:, 2], boxes[:, 0]
    theta[:, 1, 1], theta[:, 1, 2] = boxes[:, 3], boxes[:, 1]
    grid = F.affine_grid(theta, [n, 1, height, width], align_corners=False)
    for axis, (centre, half, size) in enumerate(
        ((boxes[:, 0], boxes[:, 2], width), (boxes[:, 1], boxes[:, 3], height))
    ):
        inset = torch.minimum(half, torch.full_like(half, 1.0 / size))  # half a pixel
        low = (centre - half + inset)[:, None, None]
        high = (centre + half - inset)[:, None, None]
        grid[..., axis] = torch.maximum(torch.minimum(grid[..., axis], high), low)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_resized_crop_flip(images: Tensor, g: torch.Generator) -> Tensor:
    """A random-resized crop of every image, then a flip with probability ½."""
    return _flip(resize_boxes(images, crop_boxes(images.shape[0], g, images)), g)


def pointcloud_scale_shift_jitter(clouds: Tensor, g: torch.Generator) -> Tensor:
    """Clouds N × points × 3: per-cloud scaling and translation per axis, per-point jitter."""
    n = clouds.shape[0]
    scale = _uniform((n, 1, 3), 0.8, 1.25, clouds, g)
    shift = _uniform((n, 1, 3), -0.1, 0.1, clouds, g)
    noise = torch.randn(clouds.shape, generator=g, device=clouds.device, dtype=clouds.dtype)
    return clouds * scale + shift + (0.01 * noise).clamp(-0.05, 0.05)


def augmentation(
    name: str, normalization: tuple[tuple[float, ...], tuple[float, ...]] | None
) -> Augmentation | None:
    """The batch transform of policy ``name`` (None for ``none``); image policies need the
    dataset's normalisation to know what a black pixel is."""
    if name not in AUGMENTATIONS:
        raise ValueError(f"augmentation must be one of {AUGMENTATIONS}, not {name!r}")
    if name == "none":
        return None
    if name == "pointcloud":
        return pointcloud_scale_shift_jitter
    if name == "imagenet":
        return random_resized_crop_flip
    mean, std = normalization or ((0.0,), (1.0,))
    black = -torch.tensor(mean) / torch.tensor(std)
    return lambda images, g: cifar_crop_flip(images, g, black.to(images.device))


def check_shape(name: str, input_shape: tuple[int, ...]) -> str | None:
    """Why policy ``name`` cannot apply to inputs of ``input_shape``, or None."""
    if name in ("cifar", "imagenet") and len(input_shape) != 3:
        return f"augmentation {name!r} needs images (C × H × W), not inputs of shape {input_shape}"
    if name == "pointcloud" and (len(input_shape) != 2 or input_shape[1] != 3):
        return f"augmentation 'pointcloud' needs clouds (points × 3), not {input_shape}"
    return None
