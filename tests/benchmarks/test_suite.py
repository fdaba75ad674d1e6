"""Suite files: every kind of mistake is one SuiteError naming the field and the valid choices."""

from __future__ import annotations

import pytest

from growbench.benchmarks.suite import (
    SuiteError,
    load_suite,
    packaged_suites,
    parse_suite,
    resolve_suite_path,
)
from growbench.methods import available_methods
from tests.benchmarks.conftest import TINY_SUITE

TASK = '[[tasks]]\ndataset = "spirals"\nmodel = "mlp"\nmodel_options = { widths = [4] }\n'


def suite_text(top: str = "", sections: str = "", tasks: str = TASK) -> str:
    return f'name = "t"\nepochs = 3\n{top}\n{sections}\n{tasks}'


@pytest.mark.parametrize(
    ("text", "field", "choices"),
    [
        (suite_text(top="colour = 1"), "unknown field colour", "methods"),
        (suite_text(sections="[training]\nlr_decay = 0.1"), "training.lr_decay", "optimizer"),
        (suite_text(sections='[training]\noptimizer = "adamw"'), "training.optimizer", "'sgd'"),
        (suite_text(top='methods = ["none", "nope"]'), "methods[1]", "random-add"),
        (suite_text(top='methods = "none"'), "methods", '"*"'),
        (
            suite_text(tasks=TASK + TASK.replace("spirals", "mnist")),
            "tasks[1].dataset",
            "fashion-mnist",
        ),
        (suite_text(tasks=TASK.replace('"mlp"', '"resnet"')), "tasks[0].model", "one of cnn, mlp"),
        (suite_text(tasks=TASK + "widht = [3]\n"), "tasks[0].widht", "model_options"),
        (suite_text(tasks=TASK.replace("[4]", "[4, 0]")), "tasks[0]", "positive integers"),
        (
            suite_text(tasks=TASK.replace("widths", "widhts")),
            "tasks[0].model_options.widhts",
            "widths",
        ),
        (suite_text(tasks=TASK + "widths = [3]\n"), "tasks[0].widths", "model_options ="),
        (
            suite_text(tasks=TASK.replace("widths = [4]", "widths = [4], depth = 2")),
            "depth",
            "widths",
        ),
        (suite_text(sections="[budget]\nfactor = -1.0"), "budget.factor", "greater than 1"),
        (suite_text(sections="[budget]\nfactor = 1"), "budget.factor", "greater than 1"),
        (suite_text(sections='[budget]\nmetric = "macs"'), "budget.metric", "'flops'"),
        (suite_text().replace("epochs = 3", 'epochs = "ten"'), "epochs", "an integer"),
        (suite_text(top="seeds = true"), "seeds", "an integer"),
        (suite_text(sections="[training]\nlr = 0"), "training.lr", "greater than 0"),
        (suite_text(sections="[growth]\nevery = 0"), "growth.every", "at least 1"),
        (suite_text(sections="[growth]\nfirst_epoch = 3"), "growth.first_epoch", "epochs = 3"),
        (
            suite_text(sections="[method_options.random-add]\ncolour = 1"),
            "method_options.random-add.colour",
            "growth_ratio",
        ),
        (
            suite_text(sections='[method_options.random-split]\ngrowth_ratio = "big"'),
            "method_options.random-split.growth_ratio",
            "a number",
        ),
        (
            suite_text(sections='[method_options.random-add]\nmode = "sideways"'),
            "method_options.random-add",
            "zero-fan-in",
        ),
        (suite_text(sections="[method_options.nope]\nx = 1"), "method_options.nope", "none"),
        (
            suite_text(tasks=TASK + "dataset_options = { size = 3 }\n"),
            "tasks[0].dataset_options.size",
            "n_train",
        ),
        (
            suite_text(tasks=TASK + "dataset_options = { n_train = 'many' }\n"),
            "tasks[0].dataset_options.n_train",
            "an integer",
        ),
        (suite_text(tasks=TASK + TASK), "tasks[1].name", "spirals-mlp"),
        (suite_text(tasks=TASK.replace('"mlp"', '"cnn"')), "tasks[0]", "cnn"),
        (
            suite_text(tasks=TASK + "training = { momentum = 1.5 }\n"),
            "tasks[0].training.momentum",
            "less than 1",
        ),
        (suite_text(tasks=""), "tasks", "[[tasks]]"),
        (
            suite_text(top='methods = ["none"]\n[methods.none]\nx = 1'),
            "not valid TOML",
            "method_options",
        ),
    ],
)
def test_bad_suite_is_one_error_naming_field_and_choices(
    text: str, field: str, choices: str
) -> None:
    with pytest.raises(SuiteError) as caught:
        parse_suite(text, source="bad.toml")
    message = str(caught.value)
    assert field in message
    assert choices in message
    assert message.startswith("bad.toml: ")
    assert "\n" not in message


def test_defaults_and_overrides_resolve() -> None:
    text = suite_text(
        top="seeds = [3, 5]",
        sections="[training]\nlr = 1\n[method_options.random-add]\ngrowth_ratio = 1",
        tasks=TASK + "epochs = 7\ntraining = { batch_size = 8 }\ngrowth = { every = 2 }\n",
    )
    suite = parse_suite(text)
    task = suite.tasks[0]
    assert suite.seeds == (3, 5)
    assert suite.methods == tuple(available_methods())
    assert task.name == "spirals-mlp"
    assert task.epochs == 7
    assert task.training.lr == 1.0
    assert isinstance(task.training.lr, float)
    assert task.training.batch_size == 8
    assert task.training.optimizer == "sgd"
    assert task.growth.every == 2
    assert task.growth.max_rounds is None
    assert suite.method_options["random-add"]["growth_ratio"] == 1.0
    assert suite.method_options["random-add"]["mode"] == "zero-fan-out"  # the default, resolved


def test_config_hash_covers_what_changes_results_only() -> None:
    base = parse_suite(suite_text()).cells()[0]
    renamed = parse_suite(suite_text(tasks=TASK + 'name = "other"\n')).cells()[0]
    same_float = parse_suite(suite_text(sections="[training]\nlr = 0.05")).cells()[0]
    other_lr = parse_suite(suite_text(sections="[training]\nlr = 0.06")).cells()[0]
    other_epochs = parse_suite(suite_text(tasks=TASK + "epochs = 4\n")).cells()[0]
    assert len(base.config_hash()) == 64
    assert renamed.config_hash() == base.config_hash()
    assert same_float.config_hash() == base.config_hash()  # 0.05 is the default lr
    assert other_lr.config_hash() != base.config_hash()
    assert other_epochs.config_hash() != base.config_hash()


def test_cells_go_seed_by_seed_and_select_narrows() -> None:
    suite = parse_suite(
        suite_text(
            top='seeds = 2\nmethods = ["none", "random-add"]',
            tasks=TASK + TASK.replace("spirals", "moons"),
        )
    )
    labels = [cell.label for cell in suite.cells()]
    assert labels[:4] == [
        "spirals-mlp/none/seed0",
        "spirals-mlp/random-add/seed0",
        "moons-mlp/none/seed0",
        "moons-mlp/random-add/seed0",
    ]
    narrow = suite.select(methods=["random-add"], datasets=["moons"], seeds=1)
    assert [cell.label for cell in narrow.cells()] == ["moons-mlp/random-add/seed0"]
    with pytest.raises(SuiteError, match=r"--methods: 'static'.*none, random-add"):
        suite.select(methods=["static"])
    with pytest.raises(SuiteError, match="--datasets: 'digits'"):
        suite.select(datasets=["digits"])


def test_suite_name_defaults_to_file_stem(write_suite) -> None:
    path = write_suite(TINY_SUITE.replace('name = "tiny"', ""), name="my-suite")
    assert load_suite(path).name == "my-suite"


def test_unknown_suite_names_packaged_ones() -> None:
    with pytest.raises(SuiteError, match=r"no suite 'nope'.*default"):
        resolve_suite_path("nope")


@pytest.mark.parametrize("name", ["default", "fashion-cpu"])
def test_packaged_suites_validate(name: str) -> None:
    assert name in packaged_suites()
    suite = load_suite(name)
    assert suite.name == name
    assert suite.methods == tuple(available_methods())
    assert len(suite.seeds) == 3
    assert suite.cells()
