"""Tests for the in-memory Dataset: validation, device moves, batches and subsets."""

import pytest
import torch

from growbench.datasets import Dataset, DatasetSpec

SPEC = DatasetSpec("toy", "classification", (3,), 50, "toy", "tests")


def make_dataset(n_train: int = 50, n_test: int = 7) -> Dataset:
    """Sample i has input (i, i, i) and target i, so batches reveal which samples they hold."""

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.arange(n)
        return ids.float()[:, None].expand(n, 3).contiguous(), ids

    return Dataset(SPEC, *split(n_train), *split(n_test))


def epoch_ids(batches) -> list[int]:
    ids = []
    for inputs, targets in batches:
        assert torch.equal(inputs[:, 0].long(), targets)  # inputs and targets stay paired
        ids += targets.tolist()
    return ids


def test_sizes() -> None:
    data = make_dataset(50, 7)
    assert (data.num_train, data.num_test) == (50, 7)


def test_batches_without_generator_are_in_order_with_partial_last() -> None:
    sizes = [len(t) for _, t in make_dataset().batches("train", 16)]
    assert sizes == [16, 16, 16, 2]
    assert epoch_ids(make_dataset().batches("train", 16)) == list(range(50))
    assert epoch_ids(make_dataset().batches("test", 5)) == list(range(7))


def test_batches_shuffle_each_sample_once_per_epoch() -> None:
    data = make_dataset()
    generator = torch.Generator().manual_seed(0)
    batches = list(data.batches("train", 16, generator))
    assert [len(t) for _, t in batches] == [16, 16, 16, 2]
    ids = epoch_ids(batches)
    assert sorted(ids) == list(range(50))
    assert ids != list(range(50))


def test_batches_same_seed_same_order_different_seed_different_order() -> None:
    data = make_dataset()

    def epochs(seed: int) -> list[list[int]]:
        generator = torch.Generator().manual_seed(seed)
        return [epoch_ids(data.batches("train", 8, generator)) for _ in range(2)]

    first, second = epochs(1)
    assert epochs(1) == [first, second]
    assert first != second  # a fresh permutation every epoch
    assert epochs(2)[0] != first


def test_batches_draw_the_order_at_the_call() -> None:
    # Two epochs requested up front get the orders of two successive calls, however consumed.
    data = make_dataset()
    generator = torch.Generator().manual_seed(3)
    one, two = data.batches("train", 8, generator), data.batches("train", 8, generator)
    second, first = epoch_ids(two), epoch_ids(one)
    generator.manual_seed(3)
    assert epoch_ids(data.batches("train", 8, generator)) == first
    assert epoch_ids(data.batches("train", 8, generator)) == second


def test_batches_reject_bad_arguments() -> None:
    data = make_dataset()
    with pytest.raises(ValueError, match="split"):
        data.batches("valid", 4)
    with pytest.raises(ValueError, match="batch_size"):
        data.batches("train", 0)


def subset(data, split, count, generator):
    return data.subsets(split, [count], generator)[0]


def test_subset_is_seeded_and_sized() -> None:
    data = make_dataset()
    inputs, targets = subset(data, "train", 10, torch.Generator().manual_seed(0))
    assert inputs.shape == (10, 3)
    assert torch.equal(inputs[:, 0].long(), targets)
    assert len(set(targets.tolist())) == 10
    again = subset(data, "train", 10, torch.Generator().manual_seed(0))[1]
    other = subset(data, "train", 10, torch.Generator().manual_seed(1))[1]
    assert torch.equal(again, targets)
    assert not torch.equal(other, targets)


def test_subsets_are_disjoint_and_shorter_past_the_end() -> None:
    data = make_dataset()
    total = len(data.train_targets)
    sets = data.subsets("train", [total - 3, 2, 5], torch.Generator().manual_seed(0))
    assert [len(targets) for _, targets in sets] == [total - 3, 2, 1]
    seen = [t for _, targets in sets for t in targets.tolist()]
    assert len(seen) == len(set(seen)) == total  # every sample once


@pytest.mark.parametrize("count", [7, 100])
def test_subset_returns_everything_when_count_reaches_size(count: int) -> None:
    data = make_dataset()
    inputs, targets = subset(data, "test", count, torch.Generator().manual_seed(0))
    assert torch.equal(inputs, data.test_inputs)
    assert torch.equal(targets, data.test_targets)


def test_to_moves_every_tensor_and_keeps_the_original() -> None:
    data = make_dataset()
    moved = data.to("meta")
    tensors = [moved.train_inputs, moved.train_targets, moved.test_inputs, moved.test_targets]
    assert all(t.device.type == "meta" for t in tensors)
    assert moved.spec == data.spec
    assert data.train_inputs.device.type == "cpu"
    inputs, targets = next(moved.batches("train", 16, torch.Generator().manual_seed(0)))
    assert inputs.device.type == "meta"
    assert inputs.shape == (16, 3)
    assert targets.shape == (16,)


def test_dataset_checks_tensors_against_spec() -> None:
    inputs, targets = torch.zeros(4, 3), torch.zeros(4, dtype=torch.int64)
    with pytest.raises(ValueError, match="float32"):
        Dataset(SPEC, inputs.double(), targets, inputs, targets)
    with pytest.raises(ValueError, match="shape"):
        Dataset(SPEC, torch.zeros(4, 2), targets, inputs, targets)
    with pytest.raises(ValueError, match="targets"):
        Dataset(SPEC, inputs, targets, inputs, targets[:3])
    regression = DatasetSpec("r", "regression", (3,), 2, "r", "tests")
    with pytest.raises(ValueError, match="targets"):
        Dataset(regression, inputs, torch.zeros(4, 3), inputs, torch.zeros(4, 2))
    with pytest.raises(ValueError, match="task"):
        DatasetSpec("x", "ranking", (3,), 2, "x", "tests")


def test_uint8_pixels_are_prepared_per_batch_and_need_a_normalization() -> None:
    spec = DatasetSpec("pixels", "classification", (2, 3, 3), 2, "test", "test")
    pixels = torch.arange(4 * 18, dtype=torch.uint8).reshape(4, 2, 3, 3)
    labels = torch.tensor([0, 1, 0, 1])
    with pytest.raises(ValueError, match="uint8 inputs need a normalization"):
        Dataset(spec, pixels, labels, pixels, labels)
    with pytest.raises(ValueError, match="2 channels"):
        Dataset(spec, pixels, labels, pixels, labels, normalization=((0.5,), (0.5,)))
    data = Dataset(spec, pixels, labels, pixels, labels, normalization=((0.5, 0.0), (0.25, 1.0)))
    expected = pixels.float() / 255
    expected[:, 0] = (expected[:, 0] - 0.5) / 0.25
    batch, _ = next(data.batches("train", 4))
    assert batch.dtype == torch.float32
    assert torch.allclose(batch, expected)
    inputs, _ = subset(data, "test", 10, torch.Generator())
    assert torch.allclose(inputs, expected)
    shuffled = torch.cat([x for x, _ in data.batches("train", 3, torch.Generator().manual_seed(0))])
    assert torch.allclose(shuffled.sort(dim=0).values, expected.sort(dim=0).values)
