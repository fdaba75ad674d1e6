"""Augmentation policies checked against brute force, and in the harness: seeded, the same for
every method, never on evaluation or the statistics set."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from growbench.benchmarks import augment


def test_cifar_crop_is_a_window_of_the_padded_image_or_its_flip():
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(16, 3, 8, 8, dtype=torch.float64)
    black = torch.tensor([-1.0, -2.0, -3.0], dtype=torch.float64)
    out = augment.cifar_crop_flip(images, generator, black)
    padded = black.reshape(1, 3, 1, 1).expand(16, 3, 16, 16).clone()
    padded[:, :, 4:12, 4:12] = images
    offsets_seen = set()
    for n in range(16):
        matches = [
            (dy, dx, flip)
            for dy in range(9)
            for dx in range(9)
            for flip in (False, True)
            if torch.equal(
                out[n],
                padded[n, :, dy : dy + 8, dx : dx + 8].flip(2)
                if flip
                else padded[n, :, dy : dy + 8, dx : dx + 8],
            )
        ]
        assert matches, n
        offsets_seen.add(matches[0])
    assert len(offsets_seen) > 8  # per-sample draws
    again = augment.cifar_crop_flip(images, torch.Generator().manual_seed(0), black)
    assert torch.equal(out, again)


def test_resized_crop_of_a_full_box_is_the_image_and_of_a_quadrant_its_upsampling():
    images = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    full = torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 2, dtype=torch.float64)
    assert torch.allclose(augment.resize_boxes(images, full), images, atol=1e-12)
    quadrant = torch.tensor([[-0.5, -0.5, 0.5, 0.5]] * 2, dtype=torch.float64)
    expected = F.interpolate(images[:, :, :4, :4], size=(8, 8), mode="bilinear")
    assert torch.allclose(augment.resize_boxes(images, quadrant), expected, atol=1e-12)


def test_crop_boxes_stay_in_the_image_with_areas_and_ratios_in_range():
    boxes = augment.crop_boxes(4000, torch.Generator().manual_seed(1), torch.zeros(1))
    x, y, w, h = boxes.unbind(1)
    assert bool(((x.abs() + w) <= 1 + 1e-6).all())
    assert bool(((y.abs() + h) <= 1 + 1e-6).all())
    area = w * h
    assert float(area.min()) >= 0.08 * 3 / 4 - 1e-6  # clipping can only shrink the area
    assert float(area.max()) <= 1 + 1e-6
    unclipped = (w < 1) & (h < 1)
    ratio = (w / h)[unclipped]
    assert float(ratio.min()) >= 3 / 4 - 1e-5
    assert float(ratio.max()) <= 4 / 3 + 1e-5


def test_pointcloud_augmentation_is_scale_shift_and_bounded_jitter():
    clouds = torch.randn(64, 32, 3)
    out = augment.pointcloud_scale_shift_jitter(clouds, torch.Generator().manual_seed(2))
    zero = augment.pointcloud_scale_shift_jitter(
        torch.zeros_like(clouds), torch.Generator().manual_seed(2)
    )
    assert float(zero.abs().max()) <= 0.1 + 0.05 + 1e-6  # shift + clipped jitter
    # out = clouds · scale + (zero's shift + jitter): the scale per cloud and axis in [0.8, 1.25]
    scale = ((out - zero) / clouds).median(dim=1).values
    assert float(scale.min()) >= 0.8 - 1e-4
    assert float(scale.max()) <= 1.25 + 1e-4


def test_policies_are_checked_against_the_data_shape():
    assert augment.check_shape("cifar", (3, 32, 32)) is None
    assert "needs images" in augment.check_shape("imagenet", (16, 3))
    assert "needs clouds" in augment.check_shape("pointcloud", (3, 32, 32))
    with pytest.raises(ValueError, match="augmentation must be one of"):
        augment.augmentation("mixup", None)
