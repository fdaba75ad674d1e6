"""The digits split is a fixed, stratified partition of scikit-learn's data, standardised."""

import numpy as np
import torch
from sklearn.datasets import load_digits

from growbench.datasets import load_dataset


def raw_pixels(standardised: torch.Tensor, reference: torch.Tensor) -> np.ndarray:
    """Undo the standardisation: raw pixels are the integers 0..16, so the smallest and second
    smallest standardised values in ``reference`` are the raw 0 and 1."""
    low, next_up = reference.unique()[:2].tolist()
    return np.rint((standardised.numpy() - low) / (next_up - low)).astype(int).reshape(-1, 64)


def test_split_is_fixed() -> None:
    first, second = load_dataset("digits"), load_dataset("digits")
    assert torch.equal(first.train_inputs, second.train_inputs)
    assert torch.equal(first.test_inputs, second.test_inputs)
    assert torch.equal(first.test_targets, second.test_targets)


def test_split_is_a_stratified_partition() -> None:
    data = load_dataset("digits")
    images, labels = load_digits(return_X_y=True)
    assert data.num_train + data.num_test == len(labels) == 1797
    assert data.num_test == 360
    # every original (image, label) pair lands in exactly one split
    split_rows = np.concatenate(
        [
            np.column_stack([raw_pixels(inputs, data.train_inputs), targets.numpy()])
            for inputs, targets in [
                (data.train_inputs, data.train_targets),
                (data.test_inputs, data.test_targets),
            ]
        ]
    )
    original_rows = np.column_stack([images.astype(int), labels])
    assert np.array_equal(
        split_rows[np.lexsort(split_rows.T)], original_rows[np.lexsort(original_rows.T)]
    )
    # each class's share of the test split is its share of the data, to within one sample
    expected = np.bincount(labels) * data.num_test / len(labels)
    assert np.abs(np.bincount(data.test_targets.numpy()) - expected).max() <= 1


def test_standardised_with_train_statistics() -> None:
    data = load_dataset("digits")
    assert abs(data.train_inputs.mean().item()) < 1e-5
    assert abs(data.train_inputs.std().item() - 1) < 1e-5
    # the test split went through the same shift and scale, not its own
    assert data.test_inputs.mean().item() != data.train_inputs.mean().item()
    assert data.test_inputs.unique()[0] == data.train_inputs.unique()[0]
