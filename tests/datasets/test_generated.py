"""The generated datasets: teacher-student, rational-teacher, spirals and moons."""

import pytest
import torch

from growbench.datasets import load_dataset


def teacher_by_hand(n_train: int, n_test: int, sizes: tuple[int, int, int], seed: int):
    """The documented draw order, and the teacher evaluated one multiply-add at a time."""
    d_in, hidden, d_out = sizes
    generator = torch.Generator().manual_seed(seed)
    first = torch.rand(hidden, d_in, generator=generator) * 2 - 1
    second = torch.rand(d_out, hidden, generator=generator) * 2 - 1
    splits = []
    for n in (n_train, n_test):
        x = torch.randn(n, d_in, generator=generator)
        y = torch.zeros(n, d_out)
        for i in range(n):
            for h in range(hidden):
                pre = sum(first[h, j].item() * x[i, j].item() for j in range(d_in))
                for o in range(d_out):
                    y[i, o] += second[o, h].item() * max(pre, 0.0)
        splits.append((x, y))
    return splits


def test_teacher_student_targets_match_brute_force() -> None:
    options = {"n_train": 6, "n_test": 4, "input_dim": 3, "hidden": 5, "output_dim": 2, "seed": 7}
    data = load_dataset("teacher-student", **options)
    assert data.spec.input_shape == (3,)
    assert data.spec.num_outputs == 2
    (x_train, y_train), (x_test, y_test) = teacher_by_hand(6, 4, (3, 5, 2), seed=7)
    assert torch.equal(data.train_inputs, x_train)
    assert torch.equal(data.test_inputs, x_test)
    assert torch.allclose(data.train_targets, y_train, atol=1e-5)
    assert torch.allclose(data.test_targets, y_test, atol=1e-5)
    assert (y_train != 0).any()
    other = load_dataset("teacher-student", **{**options, "seed": 8})
    assert not torch.allclose(other.train_targets, data.train_targets)


def test_teacher_student_relu_is_active() -> None:
    # With the default sizes some hidden units are off for some inputs: the teacher is not linear.
    data = load_dataset("teacher-student", n_train=200)
    x, y = data.train_inputs, data.train_targets
    least_squares = torch.linalg.lstsq(x, y).solution
    assert (x @ least_squares - y).pow(2).mean() > 0.1 * y.pow(2).mean()


def test_rational_teacher_is_a_standardised_nonlinear_1d_target() -> None:
    data = load_dataset("rational-teacher")
    x, y = data.train_inputs, data.train_targets
    assert x.shape == (50, 1)
    assert y.shape == (50, 1)
    assert float(y.mean()) == pytest.approx(0.0, abs=1e-5)
    assert float(y.std()) == pytest.approx(1.0, rel=1e-5)
    design = torch.cat([x, torch.ones_like(x)], dim=1)
    line = torch.linalg.lstsq(design, y).solution
    assert (design @ line - y).pow(2).mean() > 0.05  # not a straight line
    deeper = load_dataset("rational-teacher", depth=2, seed=0)
    assert not torch.allclose(deeper.train_targets, y)


@pytest.mark.parametrize("name", ["teacher-student", "rational-teacher", "spirals", "moons"])
def test_generated_data_is_seeded_and_leaves_global_rng_alone(name: str) -> None:
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first, second = load_dataset(name), load_dataset(name)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first.train_inputs, second.train_inputs)
    assert torch.equal(first.test_targets, second.test_targets)
    other = load_dataset(name, seed=1)
    assert not torch.equal(other.train_inputs, first.train_inputs)
    assert not torch.equal(first.train_inputs, first.test_inputs)  # test is a fresh draw


@pytest.mark.parametrize("name", ["spirals", "moons"])
def test_toy2d_is_balanced_standardised_and_learnable(name: str) -> None:
    data = load_dataset(name, n_train=600, n_test=400)
    assert (data.num_train, data.num_test) == (600, 400)
    assert data.train_targets.bincount().tolist() == [300, 300]
    assert data.test_targets.bincount().tolist() == [200, 200]
    assert data.train_inputs.mean(0).abs().max() < 1e-5
    assert (data.train_inputs.std(0) - 1).abs().max() < 1e-5
    # classes are structured: nearest train neighbour mostly has the same class, not always
    nearest = torch.cdist(data.test_inputs, data.train_inputs).argmin(1)
    accuracy = (data.train_targets[nearest] == data.test_targets).float().mean().item()
    assert 0.85 < accuracy < 0.995


def test_noise_options_make_the_problem_harder() -> None:
    def nearest_neighbour_accuracy(name: str, noise: float) -> float:
        data = load_dataset(name, noise=noise)
        nearest = torch.cdist(data.test_inputs, data.train_inputs).argmin(1)
        return (data.train_targets[nearest] == data.test_targets).float().mean().item()

    assert nearest_neighbour_accuracy("spirals", 0.2) < nearest_neighbour_accuracy("spirals", 0.05)
    assert nearest_neighbour_accuracy("moons", 0.5) < nearest_neighbour_accuracy("moons", 0.1)


def test_spirals_turns_option() -> None:
    one, two = load_dataset("spirals", turns=1.0), load_dataset("spirals", turns=2.0)
    assert not torch.equal(one.train_inputs, two.train_inputs)
    assert torch.equal(one.train_targets, two.train_targets)
