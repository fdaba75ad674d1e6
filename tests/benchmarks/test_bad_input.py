"""The catalogue of bad input: every case is caught before anything is written, and ends in exit
status 2 with one line on stderr that names what is wrong; the tracking store (which already holds
a finished suite) is byte for byte what it was, and no file appears beside it.

Cases are suite edits (a line replaced or appended in a valid suite), command-line arguments,
tracking URIs, environment settings and damaged files.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from growbench.benchmarks.executor import run_suite
from growbench.benchmarks.suite import load_suite, parse_suite
from growbench.cli import main
from growbench.datasets.fashion_mnist import FILES

VALID = """
name = "catalogue"
seeds = 1
epochs = 2
methods = ["none", "random-split"]

[training]
lr = 0.1
batch_size = 32

[growth]
stats_samples = 64

[budget]
factor = 2.0

[[tasks]]
dataset = "spirals"
model = "mlp"
model_options = { widths = [4] }
dataset_options = { n_train = 100, n_test = 50 }
"""

# (case id, a line of VALID to replace or "" to append, the new text, words the message holds)
SUITE_CASES = [
    ("lr-inf", "lr = 0.1", "lr = inf", "training.lr must be a finite number"),
    ("lr-nan", "lr = 0.1", "lr = nan", "training.lr must be a finite number"),
    ("lr-negative", "lr = 0.1", "lr = -0.1", "training.lr must be greater than 0"),
    ("weight-decay-nan", "lr = 0.1", "lr = 0.1\nweight_decay = nan", "training.weight_decay"),
    ("weight-decay-negative", "lr = 0.1", "lr = 0.1\nweight_decay = -1", "training.weight_decay"),
    ("momentum-one", "lr = 0.1", "lr = 0.1\nmomentum = 1.0", "training.momentum"),
    ("lr-gamma-inf", "lr = 0.1", "lr = 0.1\nlr_gamma = inf", "training.lr_gamma"),
    ("milestone-inf", "lr = 0.1", "lr = 0.1\nmilestones = [0.5, inf]", "training.milestones[1]"),
    ("milestone-beyond", "lr = 0.1", "lr = 0.1\nmilestones = [1.5]", "training.milestones[0]"),
    ("batch-size-zero", "batch_size = 32", "batch_size = 0", "training.batch_size"),
    ("batch-size-float", "batch_size = 32", "batch_size = 3.5", "training.batch_size"),
    ("eval-batch-negative", "lr = 0.1", "lr = 0.1\neval_batch_size = -3", "eval_batch_size"),
    ("optimizer-unknown", "lr = 0.1", 'lr = 0.1\noptimizer = "rmsprop"', "training.optimizer"),
    ("precision-unknown", "lr = 0.1", 'lr = 0.1\nprecision = "fp8"', "training.precision"),
    ("augment-mismatch", "lr = 0.1", 'lr = 0.1\naugmentation = "cifar"', "augmentation"),
    ("round-needs-reset", "lr = 0.1", 'lr = 0.1\nschedule_span = "round"', "schedule_span"),
    ("unknown-field", "lr = 0.1", "lr = 0.1\nlrr = 0.1", "unknown field training.lrr"),
    ("budget-inf", "factor = 2.0", "factor = inf", "budget.factor must be a finite number"),
    ("budget-below-one", "factor = 2.0", "factor = 0.5", "budget.factor must be greater than 1"),
    ("budget-metric", "factor = 2.0", 'factor = 2.0\nmetric = "macs"', "budget.metric"),
    ("every-zero", "stats_samples = 64", "stats_samples = 64\nevery = 0", "growth.every"),
    (
        "first-epoch-zero",
        "stats_samples = 64",
        "stats_samples = 64\nfirst_epoch = 0",
        "first_epoch",
    ),
    ("stats-zero", "stats_samples = 64", "stats_samples = 0", "growth.stats_samples"),
    ("rounds-negative", "stats_samples = 64", "stats_samples = 64\nmax_rounds = -1", "max_rounds"),
    ("epochs-zero", "epochs = 2", "epochs = 0", "epochs must be at least 1"),
    ("epochs-float", "epochs = 2", "epochs = 2.5", "epochs must be an integer"),
    ("seeds-zero", "seeds = 1", "seeds = 0", "seeds must be at least 1"),
    ("seeds-repeated", "seeds = 1", "seeds = [1, 1]", "distinct seeds"),
    ("name-escapes", 'name = "catalogue"', 'name = "../../x"', "name '../../x' must start"),
    ("name-too-long", 'name = "catalogue"', f'name = "{"x" * 300}"', "name is 300 characters"),
    ("name-empty", 'name = "catalogue"', 'name = ""', "name '' must start"),
    ("task-name-slash", 'model = "mlp"', 'model = "mlp"\nname = "a/b"', "tasks[0].name 'a/b'"),
    ("method-unknown", 'methods = ["none", "random-split"]', 'methods = ["nope"]', "methods[0]"),
    ("method-twice", 'methods = ["none", "random-split"]', 'methods = ["none", "none"]', "twice"),
    ("dataset-unknown", 'dataset = "spirals"', 'dataset = "nope"', "tasks[0].dataset"),
    ("model-unknown", 'model = "mlp"', 'model = "nope"', "tasks[0].model"),
    ("width-zero", "widths = [4]", "widths = [0]", "tasks[0]"),
    ("dataset-option-type", "n_train = 100", "n_train = 1.5", "dataset_options.n_train"),
    ("dataset-option-nan", "n_train = 100", "n_train = 100, noise = nan", "noise"),
    ("dataset-option-unknown", "n_train = 100", "n_train = 100, color = 1", "has no option"),
    ("dataset-option-value", "n_train = 100", "n_train = -5", "dataset_options"),
    ("ratio-negative", "", "[method_options.random-split]\ngrowth_ratio = -0.5", "growth_ratio"),
    ("epsilon-inf", "", "[method_options.s2d]\nepsilon = inf", "method_options.s2d.epsilon"),
    ("firefly-lr-nan", "", "[method_options.firefly]\nlr = nan", "method_options.firefly.lr"),
    ("tiny-gamma-points", "", "[method_options.tiny]\ngamma_points = 0", "gamma_points"),
    ("senn-threshold", "", "[method_options.senn]\nthreshold = -1.0", "threshold"),
    ("method-option-unknown", "", "[method_options.none]\nspeed = 1", "has no option 'speed'"),
    ("method-option-type", "", '[method_options.s2d]\nepsilon = "big"', "must be a number"),
    ("not-toml", "lr = 0.1", "lr = = 0.1", "not valid TOML"),
    ("seeds-huge", "seeds = 1", f"seeds = {10**23}", "seeds must be at most 10000"),
    (
        "ratio-overflow",
        "",
        "[method_options.random-split]\ngrowth_ratio = 1e308",
        "method_options.random-split: random-split: growth_ratio must be at most 1,",
    ),
    (
        "s2d-ratio-above-one",
        "",
        "[method_options.s2d]\ngrowth_ratio = 1.5",
        "method_options.s2d: s2d: growth_ratio must be at most 1,",
    ),
    (
        "variant-ratio-overflow",
        "",
        '[variants.big]\nmethod = "random-add"\noptions = { growth_ratio = 1e308 }',
        "variants.big.options: random-add: growth_ratio must be at most 100,",
    ),
]
ARGUMENT_CASES = [
    ("threads-zero", ["--threads", "0"], "--threads: must be at least 1"),
    ("threads-word", ["--threads", "two"], "--threads: must be a whole number"),
    ("seeds-flag-zero", ["--seeds", "0"], "--seeds must be at least 1"),
    ("checkpoint-every-negative", ["--checkpoint-every", "-1"], "--checkpoint-every"),
    ("checkpoint-seconds-inf", ["--checkpoint-seconds", "inf"], "--checkpoint-seconds"),
    ("device-unknown", ["--device", "tpu"], "unknown device 'tpu'"),
    ("methods-flag-unknown", ["--methods", "nope"], "--methods"),
    ("datasets-flag-unknown", ["--datasets", "nope"], "--datasets"),
    ("uri-scheme", ["--tracking-uri", "bogus://x"], "unknown scheme 'bogus'"),
    ("uri-unwritable", ["--tracking-uri", "sqlite:////proc/x.db"], "cannot write in /proc"),
    ("uri-file-store", ["--tracking-uri", "file:///tmp/mlruns"], "file stores are not supported"),
    ("uri-plain-path", ["--tracking-uri", "mlruns"], "file stores are not supported"),
    ("uri-sqlite-form", ["--tracking-uri", "sqlite://x.db"], "sqlite:///relative/path.db"),
    ("server-down", ["--tracking-uri", "http://127.0.0.1:9"], "is not reachable"),
    ("server-no-host", ["--tracking-uri", "http://"], "names no host"),
    ("device-index-word", ["--device", "cuda:x"], "unknown device 'cuda:x'; use auto, cpu, cuda"),
    ("device-cpu-index", ["--device", "cpu:abc"], "unknown device 'cpu:abc'"),
    ("seeds-flag-huge", ["--seeds", str(10**23)], "--seeds must be at most 10000"),
    ("seeds-flag-float", ["--seeds", "1e23"], "--seeds: must be a whole number"),
    ("threads-huge", ["--threads", str(10**20)], "--threads: must be at most 1024"),
    ("uri-empty", ["--tracking-uri", ""], "--tracking-uri is empty; pass a store such as"),
    ("uri-memory", ["--tracking-uri", "sqlite:///:memory:"], "in-memory database"),
    ("uri-bad-ipv6", ["--tracking-uri", "http://[::1"], "is not a valid URL"),
    ("uri-name-too-long", ["--tracking-uri", f"sqlite:///{'a' * 5000}.db"], "too long"),
]


def digest(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def filled_store(tmp_path_factory) -> Path:
    """A store holding the valid suite, run once; each test works on a copy."""
    folder = tmp_path_factory.mktemp("filled")
    run_suite(parse_suite(VALID, "catalogue"), f"sqlite:///{folder}/mlflow.db", "cpu")
    return folder


@pytest.fixture
def workdir(tmp_path: Path, filled_store: Path, monkeypatch) -> Path:
    for path in filled_store.rglob("*"):
        if path.is_file():
            target = tmp_path / path.relative_to(filled_store)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def refused(argv: list[str], capsys, folder: Path) -> str:
    """Run the command; check exit 2, one stderr line and an untouched folder; the line."""
    before = digest(folder)
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert digest(folder) == before
    return lines[0]


def test_the_catalogue_has_at_least_forty_cases() -> None:
    assert len(SUITE_CASES) + len(ARGUMENT_CASES) + len(OTHER_CASES) >= 40


@pytest.mark.parametrize(("old", "new", "words"), [c[1:] for c in SUITE_CASES],
                         ids=[c[0] for c in SUITE_CASES])  # fmt: skip
def test_a_bad_suite_is_refused_before_anything_is_written(
    old: str, new: str, words: str, workdir: Path, capsys
) -> None:
    text = VALID.replace(old, new, 1) if old else VALID + "\n" + new + "\n"
    assert text != VALID
    (workdir / "bad.toml").write_text(text)
    line = refused(["run", "--suite", "bad.toml", "--tracking-uri", "sqlite:///mlflow.db"],
                   capsys, workdir)  # fmt: skip
    assert line.startswith("growbench: error: ")
    assert words in line


@pytest.mark.parametrize(("arguments", "words"), [c[1:] for c in ARGUMENT_CASES],
                         ids=[c[0] for c in ARGUMENT_CASES])  # fmt: skip
def test_a_bad_argument_is_refused_before_anything_is_written(
    arguments: list[str], words: str, workdir: Path, capsys
) -> None:
    (workdir / "ok.toml").write_text(VALID)
    argv = ["run", "--suite", "ok.toml", *arguments]
    if "--tracking-uri" not in arguments:
        argv += ["--tracking-uri", "sqlite:///mlflow.db"]
    line = refused(argv, capsys, workdir)
    assert words in line


def corrupt_gzip(workdir: Path) -> list[str]:
    data = workdir / "fmnist"
    data.mkdir()
    for images, labels in FILES.values():
        for name in (images, labels):
            (data / f"{name}.gz").write_bytes(gzip.compress(b"\0\0\x08\x03" * 50)[:-9])
    text = (
        VALID.replace('dataset = "spirals"', 'dataset = "fashion-mnist"')
        .replace(
            "dataset_options = { n_train = 100, n_test = 50 }",
            f'dataset_options = {{ root = "{data}" }}',
        )
        .replace('model = "mlp"', 'model = "cnn"')
        .replace("widths = [4]", "widths = [4, 4]")
    )
    (workdir / "gz.toml").write_text(text)
    return ["run", "--suite", "gz.toml", "--tracking-uri", "sqlite:///mlflow.db"]


def report_under_a_file(workdir: Path) -> list[str]:
    (workdir / "afile").write_text("")
    (workdir / "ok.toml").write_text(VALID)
    return ["report", "--suite", "ok.toml", "--out", "afile/report"]


def lease_not_a_number(workdir: Path) -> list[str]:
    os.environ["GROWBENCH_LEASE_SECONDS"] = "soon"
    (workdir / "ok.toml").write_text(VALID)
    return ["run", "--suite", "ok.toml", "--tracking-uri", "sqlite:///mlflow.db"]


def suite_missing(workdir: Path) -> list[str]:
    return ["run", "--suite", "no-such-suite", "--tracking-uri", "sqlite:///mlflow.db"]


def damaged_store_dry_run(workdir: Path) -> list[str]:
    (workdir / "broken.db").write_bytes(b"this is not a database" * 100)
    (workdir / "ok.toml").write_text(VALID)
    return ["run", "--suite", "ok.toml", "--tracking-uri", "sqlite:///broken.db", "--dry-run"]


def suite_file(name: str, content: bytes):
    """A case that runs the suite file ``name`` holding ``content``."""

    def make(workdir: Path) -> list[str]:
        (workdir / name).write_bytes(content)
        return ["run", "--suite", name, "--tracking-uri", "sqlite:///mlflow.db"]

    return make


def suite_path(name: str):
    """A case that runs ``--suite name`` (a folder made under that name when it ends in /)."""

    def make(workdir: Path) -> list[str]:
        if name.endswith("/"):
            (workdir / name).mkdir()
        return ["run", "--suite", name, "--tracking-uri", "sqlite:///mlflow.db"]

    return make


def report_argument(*arguments: str):
    def make(workdir: Path) -> list[str]:
        (workdir / "ok.toml").write_text(VALID)
        return ["report", "--suite", "ok.toml", "--tracking-uri", "sqlite:///mlflow.db", *arguments]

    return make


def fetch_root_under_a_file(workdir: Path) -> list[str]:
    (workdir / "afile").write_text("")
    return ["data", "fetch", "cifar10", "--root", "afile/x"]


def fetch_mirror(mirror: str):
    def make(workdir: Path) -> list[str]:
        return ["data", "fetch", "cifar10", "--root", "data", "--mirror", mirror]

    return make


def verify_root(root: str):
    def make(workdir: Path) -> list[str]:
        return ["data", "verify", "cifar10", "--root", root]

    return make


DEEP = ("x = " + "[" * 50_000 + "]" * 50_000 + "\n").encode()
OTHER_CASES = [
    ("corrupt-gzip", corrupt_gzip, "not a complete gzip file"),
    (
        "suite-latin-1",
        suite_file("l1.toml", (VALID + "# café\n").encode("latin-1")),
        ("l1.toml: not UTF-8 text", "a suite must be a UTF-8 TOML file"),
    ),
    ("suite-utf-16", suite_file("u16.toml", VALID.encode("utf-16")), "u16.toml: not UTF-8 text"),
    ("suite-binary", suite_file("bin.toml", bytes(range(256)) * 4), "bin.toml: not UTF-8 text"),
    (
        "suite-nested-deep",
        suite_file("deep.toml", VALID.encode() + DEEP),
        "deep.toml: nested too deeply",
    ),
    ("suite-unreadable", suite_path("/proc/self/mem"), "/proc/self/mem: cannot be read"),
    ("suite-folder", suite_path("folder.toml/"), "folder.toml/ is not a file"),
    ("suite-name-too-long", suite_path("x" * 5000), "File name too long"),
    ("report-out-empty", report_argument("--out", ""), "argument --out: must name a folder"),
    ("report-uri-empty", report_argument("--tracking-uri", ""), "--tracking-uri is empty"),
    ("report-compare-empty", report_argument("--compare-uri", ""), "--compare-uri is empty"),
    ("fetch-root-under-a-file", fetch_root_under_a_file, ("data root afile/x", "--root")),
    ("fetch-mirror-not-a-url", fetch_mirror("not a url"), "http://, https:// or file://"),
    ("fetch-mirror-bad-ipv6", fetch_mirror("http://[::1"), "http://, https:// or file://"),
    ("verify-root-empty", verify_root(""), "argument --root: must name a folder, got ''"),
    ("verify-root-too-long", verify_root("x" * 5000), ("File name too long", "another --root")),
    ("report-out-under-a-file", report_under_a_file, "report folder afile/report"),
    ("lease-not-a-number", lease_not_a_number, "GROWBENCH_LEASE_SECONDS"),
    ("suite-missing", suite_missing, "no suite 'no-such-suite'"),
    ("store-damaged", damaged_store_dry_run, "cannot be opened"),
]


@pytest.mark.parametrize(("make", "words"), [c[1:] for c in OTHER_CASES],
                         ids=[c[0] for c in OTHER_CASES])  # fmt: skip
def test_bad_files_and_settings_are_refused_before_anything_is_written(
    make, words: str, workdir: Path, capsys, monkeypatch
) -> None:
    monkeypatch.setenv("GROWBENCH_LEASE_SECONDS", "300")
    argv = make(workdir)
    line = refused(argv, capsys, workdir)
    for word in [words] if isinstance(words, str) else words:
        assert word in line


def test_a_failed_fetch_from_a_mirror_suggests_checking_it_not_a_mirror(
    workdir: Path, capsys
) -> None:
    mirror = (workdir / "empty").as_uri()
    (workdir / "empty").mkdir()
    line = refused(["data", "fetch", "cifar10", "--root", "data", "--mirror", mirror],
                   capsys, workdir)  # fmt: skip
    assert f"Check that the mirror {mirror} holds cifar-10-python.tar.gz" in line
    assert "pass --mirror" not in line


@pytest.mark.parametrize("port", ["99999", "0", "-1", "65536", "5000x"])
def test_a_port_outside_1_to_65535_is_refused(port: str, workdir: Path, capsys, monkeypatch):
    monkeypatch.setattr(os, "execvp", lambda *_: pytest.fail("mlflow ui was started"))
    line = refused(["ui", "--port", port, "--tracking-uri", "sqlite:///mlflow.db"],
                   capsys, workdir)  # fmt: skip
    assert f"argument --port: must be a port number from 1 to 65535, got {port!r}" in line


def test_the_ui_help_shows_the_default_port(capsys) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["ui", "--help"])
    assert stopped.value.code == 0
    assert "(default 5000)" in " ".join(capsys.readouterr().out.split())


def test_a_suite_file_may_start_with_a_utf8_bom(tmp_path: Path) -> None:
    (tmp_path / "bom.toml").write_bytes(b"\xef\xbb\xbf" + VALID.encode())
    suite = load_suite(tmp_path / "bom.toml")
    assert suite.name == "catalogue"
    assert not suite.text.startswith("\ufeff")


def test_the_installed_command_prints_one_line_and_no_traceback(workdir: Path) -> None:
    """The console entry point, in a process of its own (what a user sees)."""
    (workdir / "ok.toml").write_text(VALID)
    (workdir / "deep.toml").write_bytes(VALID.encode() + DEEP)
    (workdir / "afile").write_text("")
    store = ["--tracking-uri", "sqlite:///mlflow.db"]
    cases = [
        ["run", "--suite", "ok.toml", "--device", "cuda:x", *store],
        ["run", "--suite", "deep.toml", *store],
        ["data", "fetch", "cifar10", "--root", "afile/x"],
    ]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    before = digest(workdir)
    for argv in cases:
        done = subprocess.run([sys.executable, "-m", "growbench.cli", *argv], cwd=workdir,
                              env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode == 2, (argv, done.stderr)
        assert len(lines) == 1, (argv, lines)
        assert lines[0].startswith("growbench")  # "growbench run: error: " from argparse
        assert ": error: " in lines[0]
        assert "Traceback" not in done.stderr
    assert digest(workdir) == before


def test_a_run_whose_cells_all_fail_exits_one_and_names_them(workdir: Path, capsys) -> None:
    (workdir / "diverges.toml").write_text(VALID.replace("lr = 0.1", "lr = 1e30"))
    code = main(["run", "--suite", "diverges.toml", "--tracking-uri", "sqlite:///mlflow.db"])
    assert code == 1
    err = capsys.readouterr().err
    assert "2 of 2 cells failed: spirals-mlp/none/seed0, spirals-mlp/random-split/seed0" in err
