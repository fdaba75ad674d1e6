"""Suite files: which cells a benchmark runs, checked in full before anything is trained or logged.

A suite is a TOML file. A mistake in it should cost one clear message, not a half-written MLflow
store, so ``load_suite`` checks every field and raises one ``SuiteError`` naming the field by its
dotted path (``training.optimizer``, ``tasks[1].dataset``) and what would be valid. Every field
but ``epochs`` and the two task keys marked required is optional; the values shown are the
defaults, except where a comment says "example":

    name = "default"              # experiment "growbench:<name>"; default: the file's stem
    description = ""
    seeds = 1                     # N (seeds 0..N-1) or a list of distinct seeds, e.g. [0, 7]
    epochs = 10                   # required (example value); a task may override it
    methods = ["*"]               # "*" = every registered method, or a list of method names

    [training]                    # a task may override any key in its own [tasks.training]
    optimizer = "sgd"             # "sgd" | "adam" (Adam keeps its default betas)
    lr = 0.05                     # > 0
    momentum = 0.9                # SGD only, in [0, 1)
    nesterov = false              # SGD only
    weight_decay = 0.0            # >= 0
    batch_size = 64
    lr_schedule = "constant"      # "constant" | "cosine" | "multistep", stepped per epoch over
                                  # the schedule's span
    milestones = [0.5, 0.75]      # multistep: x lr_gamma at these fractions of the span
    lr_gamma = 0.1
    schedule_span = "run"         # "run": the epochs left; "round": until the next growth round
    optimizer_after_growth = "carry"  # "carry": state sliced over to the grown net; "reset":
                                      # fresh optimizer and schedule over a new span
    eval_batch_size = 1024
    augmentation = "none"         # "none" | "cifar" | "imagenet" | "pointcloud" (train batches)
    precision = "fp32"            # "fp32" | "bf16" | "fp16" (autocast; fp16 with a grad scaler)
    channels_last = false         # conv nets and image batches in channels-last memory format

    [growth]                      # a task may override any key in [tasks.growth]
    first_epoch = 1               # grow after epochs first_epoch, first_epoch + every, ...
    every = 1                     # ... never after the last epoch, only while budget remains,
    # max_rounds = 3              # and at most max_rounds times (default: no limit)
    # last_epoch = 10             # example: no growth after this epoch (a growth phase, then
                                  # training only, the papers' protocol; default: none)
    stats_samples = 2048          # size of the statistics subset handed to the grower
    heldout_samples = 512         # two more disjoint training subsets of at most this size
                                  # (each at most 1/8 of the split): one the grower may tune
                                  # its step on, one the harness measures growth health on

    [budget]                      # a task may override any key in [tasks.budget]
    metric = "params"             # "params" | "flops"
    factor = 2.0                  # limit = factor x cost of the common start net; > 1

    [method_options.random-split] # example: overrides of a method's Config, typed like the
    growth_ratio = 0.5            # defaults and checked by the method's own Config

    [method_options.fast-s2d]     # an option that is a table of options (the estimator's),
    rayleigh = { steps = 800 }    # its keys typed and checked the same way

    matched_static = false        # true: every growing method of the suite gets a matched
                                  # static net per cell (`static@<method>`, below); or a list
                                  # of the methods to match

    [variants.s2d-eps1e-3]        # example: an ablation, a method of its own named in `methods`
    method = "s2d"                # the registered method it runs
    options = { epsilon = 1e-3 }  # its Config overrides, checked like method_options

    [[tasks]]                     # at least one
    dataset = "digits"            # required: a name from `growbench datasets`
    model = "mlp"                 # required: a name from `growbench models`
    model_options = { widths = [16], activation = "relu" }  # the model's options (example)
    name = "digits-mlp"           # default "<dataset>-<model>"; unique within the suite
    dataset_options = {}          # the dataset's load options (`growbench datasets`)
    epochs = 20                   # example override; also training/growth/budget = { ... }

Per-method options live in ``[method_options.NAME]``, not ``[methods.NAME]``: TOML cannot make
``methods`` both the list of names and a table. A variant runs a registered method under another
name with other options, so one suite can hold ``s2d`` at two step sizes side by side: each is a
method of its own in MLflow, tables and figures, and its cells record the base method and the
options (``"*"`` takes the variants too). A matched static net (``static@tiny``) is the ``static``
baseline trained from scratch at exactly the widths one cell of a growing method ended with, same
task, seed, epochs and data order: the like-for-like reference of "same-size" claims, whatever
size the method actually reached. It is planned once that cell has finished (``matched_cell``).

Every model takes ``widths`` (the start width of each growth site, in site order) and
``activation``; ``growbench models`` lists the rest. A
growth schedule that never fires (``first_epoch >= epochs``) is an error. Dataset names, option
keys and model shapes are checked here against the dataset's default spec; option *values* are
checked when the data is loaded, which the harness also does before it touches the tracking
store.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from growbench.benchmarks.augment import AUGMENTATIONS, check_shape
from growbench.claims import matched_static
from growbench.datasets import dataset_names, dataset_options, dataset_spec
from growbench.datasets.base import DatasetSpec
from growbench.datasets.registry import dataset_entry
from growbench.datasets.synthetic import PREFIX as SYNTHETIC_PREFIX
from growbench.methods import Grower, available_methods, make_grower
from growbench.methods.base import BUDGET_METRICS
from growbench.methods.fingerprint import method_fingerprint
from growbench.nn import GrowableNet, ModelConfig
from growbench.nn.zoo import available_models, model_options
from growbench.plugins import (
    UnknownOptionError,
    option_defaults,
    refuse_unknown_options,
    unknown_name,
)

SUITES_PACKAGE = "growbench.benchmarks"
# The packaged suites that mirror the papers (GPU-scale; smoke-tested on fixture data).
PAPER_SUITES = (
    "s2d-cifar10",
    "splitting-cifar100",
    "firefly-cifar10",
    "tiny-cifar100",
    "signed-s2d-modelnet40",
    "imagenet-mobilenet",
    "cifar10-all",
)
OPTIMIZERS = ("sgd", "adam")
LR_SCHEDULES = ("constant", "cosine", "multistep")
SCHEDULE_SPANS = ("run", "round")
SMOKE_TRAIN, SMOKE_TEST = 64, 32  # samples kept by Suite.smoke()
AFTER_GROWTH = ("carry", "reset")
PRECISIONS = ("fp32", "bf16", "fp16")
MAX_SEEDS = 10_000  # seeds of one suite (file or --seeds): far beyond any study, and each a run


# Bump when the runner changes what a run produces or logs (a new metric, a changed training
# step): it is part of every config hash, so runs of an older harness are never reused. Methods
# need no such number: their part of the hash is the fingerprint of their code.
# 2: the ``train_flops`` metric. 3: named sites, model options, ``macs``, refusals recorded.
# 4: augmentation, precision, channels-last, multistep schedules and per-round spans.
# 5: held-out samples beside the statistics set (to the grower, and a probe for growth health).
HARNESS_VERSION = 5


STATIC = "static"  # the baseline a matched static cell runs


class SuiteError(ValueError):
    """A suite that cannot run; the message names the field and what would be valid."""


@dataclass(frozen=True)
class Training:
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    batch_size: int = 64
    lr_schedule: str = "constant"
    milestones: tuple[float, ...] = (0.5, 0.75)  # multistep: fractions of the schedule's span
    lr_gamma: float = 0.1  # multistep: the factor at each milestone
    schedule_span: str = "run"  # "run": the epochs left; "round": until the next growth round
    optimizer_after_growth: str = "carry"
    eval_batch_size: int = 1024
    augmentation: str = "none"
    precision: str = "fp32"
    channels_last: bool = False


@dataclass(frozen=True)
class Growth:
    first_epoch: int = 1
    every: int = 1
    max_rounds: int | None = None  # None: as many rounds as the epochs and the budget allow
    last_epoch: int | None = None  # None: growth may go on to the last epoch
    stats_samples: int = 2048
    heldout_samples: int = 512


@dataclass(frozen=True)
class Budget:
    metric: str = "params"
    factor: float = 2.0


@dataclass(frozen=True)
class Rule:
    """How one scalar field is checked: its type, and its choices or bounds."""

    kind: str  # "int" | "number" | "str" | "bool"
    choices: tuple[str, ...] = ()
    at_least: float | None = None
    above: float | None = None
    below: float | None = None


SECTION_RULES: dict[str, dict[str, Rule]] = {
    "training": {
        "optimizer": Rule("str", choices=OPTIMIZERS),
        "lr": Rule("number", above=0),
        "momentum": Rule("number", at_least=0, below=1),
        "nesterov": Rule("bool"),
        "weight_decay": Rule("number", at_least=0),
        "batch_size": Rule("int", at_least=1),
        "lr_schedule": Rule("str", choices=LR_SCHEDULES),
        "milestones": Rule("numbers", above=0, below=1),
        "lr_gamma": Rule("number", above=0),
        "schedule_span": Rule("str", choices=SCHEDULE_SPANS),
        "optimizer_after_growth": Rule("str", choices=AFTER_GROWTH),
        "eval_batch_size": Rule("int", at_least=1),
        "augmentation": Rule("str", choices=AUGMENTATIONS),
        "precision": Rule("str", choices=PRECISIONS),
        "channels_last": Rule("bool"),
    },
    "growth": {
        "first_epoch": Rule("int", at_least=1),
        "every": Rule("int", at_least=1),
        "max_rounds": Rule("int", at_least=0),
        "last_epoch": Rule("int", at_least=1),
        "stats_samples": Rule("int", at_least=1),
        "heldout_samples": Rule("int", at_least=0),
    },
    "budget": {
        "metric": Rule("str", choices=BUDGET_METRICS),
        "factor": Rule("number", above=1),
    },
}
SECTION_TYPES = {"training": Training, "growth": Growth, "budget": Budget}
TOP_LEVEL_FIELDS = (
    "name",
    "description",
    "seeds",
    "epochs",
    "methods",
    "training",
    "growth",
    "budget",
    "method_options",
    "variants",
    "matched_static",
    "tasks",
)
TASK_FIELDS = (
    "dataset",
    "model",
    "model_options",
    "name",
    "dataset_options",
    "epochs",
    "training",
    "growth",
    "budget",
)


@dataclass(frozen=True)
class Task:
    """One (dataset, model) pair of a suite, with its training settings resolved."""

    name: str
    path: str  # where it was defined, e.g. "tasks[1]", for error messages
    dataset: str
    dataset_options: dict[str, Any]
    model: str
    model_options: dict[str, Any]  # as the suite gives them; ModelConfig fills in the rest
    epochs: int
    training: Training
    growth: Growth
    budget: Budget

    def model_config(self, spec: DatasetSpec | None = None) -> ModelConfig:
        """The common start architecture, shaped for the dataset (default: its default spec)."""
        spec = spec or dataset_spec(self.dataset)
        return ModelConfig(self.model, spec.input_shape, spec.num_outputs, **self.model_options)


@dataclass(frozen=True)
class CellConfig:
    """One (task, method, seed) cell: everything the runner needs, and what identifies a run."""

    suite: str
    task: Task
    method: str
    method_options: dict[str, Any]  # the method's full Config, defaults included
    seed: int
    method_code: str = ""  # ``fingerprint.method_fingerprint`` of the method's class
    base_method: str = ""  # for a variant, the registered method it runs ("" = ``method``)

    @property
    def label(self) -> str:
        return f"{self.task.name}/{self.method}/seed{self.seed}"

    @property
    def registered_method(self) -> str:
        """The registered method this cell's grower is made from."""
        return self.base_method or self.method

    def make_grower(self) -> Grower:
        return make_grower(self.registered_method, self.method_options)

    def resolved(self) -> dict[str, Any]:
        """Every setting that affects the results (the task's name and the suite's do not),
        defaults included, so a changed default is a new configuration."""
        task = self.task
        data_options = {**dataset_options(task.dataset), **task.dataset_options}
        return {
            "harness": HARNESS_VERSION,
            "dataset": {"name": task.dataset, "options": data_options},
            "model": task.model_config().to_dict(),
            "method": {
                "name": self.method,
                "code": self.method_code,
                "options": dict(self.method_options),
                **({"base": self.base_method} if self.base_method else {}),
            },
            "seed": self.seed,
            "epochs": task.epochs,
            "training": dataclasses.asdict(task.training),
            "growth": dataclasses.asdict(task.growth),
            "budget": dataclasses.asdict(task.budget),
        }

    def config_hash(self) -> str:
        """sha256 of the canonical JSON of ``resolved()``: equal hashes, equal runs."""
        canonical = json.dumps(self.resolved(), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()

    def params(self) -> dict[str, str]:
        """``resolved()`` flattened to dotted keys, as MLflow params."""
        return flatten(self.resolved())


def unsupported_reason(grower: Grower, net: GrowableNet) -> str | None:
    """Why ``grower`` can grow no site of ``net`` at all, or None when it can grow one (sites it
    refuses among others are recorded in its growth events)."""
    refused = grower.refusals(net)
    if not net.sites or len(refused) < len(net.sites):
        return None
    return f"method {grower.name!r} can grow none of the sites: " + "; ".join(
        f"{name}: {reason}" for name, reason in refused.items()
    )


@dataclass(frozen=True)
class Variant:
    """A registered ``method`` run under another name with ``options`` (an ablation)."""

    method: str
    options: dict[str, Any]  # the overrides the suite file gives, as written there


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    seeds: tuple[int, ...]
    methods: tuple[str, ...]
    method_options: dict[str, dict[str, Any]]  # per selected method, its full resolved Config
    tasks: tuple[Task, ...]
    source: str = "<string>"
    text: str = ""
    variants: dict[str, Variant] = dataclasses.field(default_factory=dict)
    matched: tuple[str, ...] = ()  # the methods whose cells get a matched static net

    def base_of(self, method: str) -> str:
        """The registered method behind ``method`` (itself unless it is a variant)."""
        variant = self.variants.get(method)
        return variant.method if variant else method

    def cells(self) -> list[CellConfig]:
        """Every cell, seed by seed, so a stopped run has whole comparisons for the first seeds."""
        classes = available_methods()
        return [
            CellConfig(
                self.name,
                task,
                method,
                self.method_options[method],
                seed,
                method_fingerprint(classes[self.base_of(method)]),
                self.variants[method].method if method in self.variants else "",
            )
            for seed in self.seeds
            for task in self.tasks
            for method in self.methods
        ]

    def matched_cell(
        self, cell: CellConfig, final_widths: Mapping[str, int], start_sites: Sequence[str]
    ) -> tuple[CellConfig, str | None]:
        """The matched static cell of ``cell`` (``static@<method>``: ``static`` at the widths
        ``final_widths`` that cell ended with, same task and seed), and None, or why it cannot
        be built: a net that inserted layers has sites the start net's model cannot express, so
        its matched cell is a placeholder the harness never trains."""
        sites = list(final_widths)
        reason = None
        widths: list[int] = []
        if sites == list(start_sites):
            widths = [int(final_widths[site]) for site in sites]
        else:
            inserted = [site for site in sites if site not in start_sites]
            reason = (
                f"{cell.label} inserted layers ({', '.join(inserted) or 'sites changed'}); a "
                "matched static net is built only for widened nets, not deepened ones"
            )
        options = _resolve_options(STATIC, {"widths": widths})
        fingerprint = method_fingerprint(available_methods()[STATIC])
        name = matched_static(cell.method)
        return CellConfig(
            self.name, cell.task, name, options, cell.seed, fingerprint, STATIC
        ), reason

    def smoke(self) -> Suite:
        """This suite at smoke scale, to check that it runs end to end (``--smoke``): named
        ``<name>-smoke`` (its own experiment), one seed, two epochs with one growth round after
        the first, batches of at most 16, 32 statistics samples, 64 train and 32 test samples
        where the dataset takes ``train_subset``/``test_subset``, images at most 32 px where it
        takes a ``resolution``, nets at most 1/16 of their width (explicit ``widths`` divided by
        8), and each method with its ``quick_overrides`` (cheap estimator settings)."""
        tasks = []
        for task in self.tasks:
            data = dict(task.dataset_options)
            known = dataset_options(task.dataset)
            if {"train_subset", "test_subset"} <= set(known):
                data.update(train_subset=SMOKE_TRAIN, test_subset=SMOKE_TEST)
            if "resolution" in known:
                data["resolution"] = min(data.get("resolution", known["resolution"]), 32)
            model = dict(task.model_options)
            if model.get("widths"):
                model["widths"] = tuple(max(2, w // 8) for w in model["widths"])
            elif "width_multiplier" in model_options(task.model):
                model["width_multiplier"] = min(model.get("width_multiplier", 1.0), 1 / 16)
            growth = dataclasses.replace(
                task.growth,
                first_epoch=1,
                every=1,
                max_rounds=1,
                last_epoch=None,
                stats_samples=32,
            )
            training = dataclasses.replace(
                task.training, batch_size=min(task.training.batch_size, 16)
            )
            tasks.append(
                dataclasses.replace(
                    task, dataset_options=data, model_options=model, epochs=2, growth=growth,
                    training=training,
                )
            )  # fmt: skip
        classes = available_methods()
        options = {
            method: _merged(
                chosen, getattr(classes.get(self.base_of(method)), "quick_overrides", {})
            )
            for method, chosen in self.method_options.items()
        }
        return dataclasses.replace(
            self, name=f"{self.name}-smoke", seeds=(0,), tasks=tuple(tasks), method_options=options
        )

    def synthetic(self) -> Suite:
        """This suite on random data of its datasets' real shapes (``--synthetic``, see
        ``growbench.datasets.synthetic``): named ``<name>-synthetic`` (its own experiment), each
        task's dataset ``synthetic:<dataset>`` with the same options."""
        tasks = tuple(
            dataclasses.replace(task, dataset=SYNTHETIC_PREFIX + task.dataset)
            for task in self.tasks
        )
        return dataclasses.replace(self, name=f"{self.name}-synthetic", tasks=tasks)

    def select(
        self,
        methods: Iterable[str] | None = None,
        datasets: Iterable[str] | None = None,
        seeds: int | None = None,
        tasks_option: str = "--datasets",
    ) -> Suite:
        """A narrower suite (the command line's ``--methods``, ``--datasets``, ``--seeds``);
        ``tasks_option`` names the tasks filter in error messages."""
        suite = self
        if methods is not None:
            chosen = tuple(methods)
            _check_subset("--methods", chosen, self.methods, f"suite {self.name!r} runs")
            suite = dataclasses.replace(
                suite,
                methods=chosen,
                matched=tuple(m for m in self.matched if m in chosen),
                variants={k: v for k, v in self.variants.items() if k in chosen},
            )
        if datasets is not None:
            chosen = tuple(datasets)
            known = sorted({t.dataset for t in self.tasks} | {t.name for t in self.tasks})
            _check_subset(tasks_option, chosen, known, f"suite {self.name!r} has")
            tasks = tuple(t for t in self.tasks if t.dataset in chosen or t.name in chosen)
            suite = dataclasses.replace(suite, tasks=tasks)
        if seeds is not None:
            if seeds < 1:
                raise SuiteError(f"--seeds must be at least 1, got {seeds}")
            if seeds > MAX_SEEDS:
                raise SuiteError(f"--seeds must be at most {MAX_SEEDS} (seeds 0..N-1), got {seeds}")
            suite = dataclasses.replace(suite, seeds=tuple(range(seeds)))
        return suite


def _check_subset(option: str, chosen: tuple[str, ...], known: Iterable[str], what: str) -> None:
    known = list(known)
    unknown = [name for name in chosen if name not in known]
    if unknown or not chosen:
        raise SuiteError(
            f"{option}: {', '.join(map(repr, unknown)) or 'nothing chosen'}; "
            f"{what}: {', '.join(known)}"
        )


# ------------------------------------------------------------------------------- loading
def packaged_suites() -> list[str]:
    folder = resources.files(SUITES_PACKAGE) / "suites"
    return sorted(
        p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml")
    )


def resolve_suite_path(name_or_path: str | Path) -> Path:
    """A packaged suite's file by name (``default``), else the path as given."""
    path = Path(name_or_path)
    try:
        packaged = resources.files(SUITES_PACKAGE) / "suites" / f"{name_or_path}.toml"
        if packaged.is_file():
            return Path(str(packaged))
        if path.is_file():
            return path
        exists = path.exists()
    except (OSError, ValueError) as exc:  # a name too long for a file, a NUL byte in it
        raise SuiteError(
            f"no suite {str(name_or_path)!r}: {getattr(exc, 'strerror', None) or exc}; pass a "
            "packaged suite's name or a suite file's path"
        ) from None
    if exists:
        raise SuiteError(f"{name_or_path} is not a file; pass a suite's TOML file")
    raise SuiteError(
        f"no suite {str(name_or_path)!r}: not a packaged suite ({', '.join(packaged_suites())}) "
        "and no such file"
    )


def load_suite(name_or_path: str | Path) -> Suite:
    path = resolve_suite_path(name_or_path)
    try:
        text = path.read_bytes().decode()
    except OSError as exc:
        raise SuiteError(
            f"{path}: cannot be read ({exc.strerror or exc}); pass a suite file you can read"
        ) from None
    except UnicodeDecodeError as exc:
        raise SuiteError(
            f"{path}: not UTF-8 text (byte {exc.start} is {exc.object[exc.start]:#04x}); a suite "
            "must be a UTF-8 TOML file: save it as UTF-8"
        ) from None
    return parse_suite(text, default_name=path.stem, source=str(path))


def parse_suite(text: str, default_name: str = "suite", source: str = "<string>") -> Suite:
    """Parse and check a suite's TOML text (a UTF-8 byte order mark before it is dropped);
    raise one ``SuiteError`` for the first problem."""
    text = text.removeprefix("\ufeff")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        hint = ""
        if "methods" in str(exc):
            hint = "; per-method options go in [method_options.NAME], `methods` is the name list"
        raise SuiteError(f"{source}: not valid TOML: {exc}{hint}") from None
    except RecursionError:
        raise SuiteError(
            f"{source}: nested too deeply to read (arrays or tables inside one another); a "
            "suite needs a few levels at most"
        ) from None
    try:
        return _build_suite(data, default_name, source, text)
    except SuiteError as exc:
        raise SuiteError(f"{source}: {exc}") from None


def _build_suite(data: dict[str, Any], default_name: str, source: str, text: str) -> Suite:
    _reject_unknown(data, TOP_LEVEL_FIELDS, "")
    name = _name(data.get("name", default_name), "name")
    description = _string(data.get("description", ""), "description")
    if "epochs" not in data:
        raise SuiteError("epochs is required (how many epochs every cell trains)")
    epochs = _scalar(data["epochs"], "epochs", Rule("int", at_least=1))
    seeds = _seeds(data.get("seeds", 1))
    variants = _variants(data.get("variants", {}))
    methods = _methods(data.get("methods", ["*"]), variants)
    all_options = _method_options(data.get("method_options", {}), variants)
    sections = {
        key: _section(data.get(key, {}), key, SECTION_TYPES[key](), rules)
        for key, rules in SECTION_RULES.items()
    }
    tasks = _tasks(data.get("tasks"), epochs, sections)
    options = {
        method: all_options[method] if method in all_options else _resolve_options(method, {})
        for method in methods
    }
    chosen = {name: variant for name, variant in variants.items() if name in methods}
    matched = _matched(data.get("matched_static", False), methods, chosen)
    return Suite(name, description, seeds, methods, options, tasks, source, text, chosen, matched)


def _matched(
    value: Any, methods: tuple[str, ...], variants: Mapping[str, Variant]
) -> tuple[str, ...]:
    classes = available_methods()

    def grows(method: str) -> bool:
        return classes[variants[method].method if method in variants else method].grows

    if value is True:
        return tuple(method for method in methods if grows(method))
    if value is False:
        return ()
    if not isinstance(value, list):
        raise SuiteError(f"matched_static must be true, false or a list of methods, got {value!r}")
    for i, method in enumerate(value):
        path = f"matched_static[{i}]"
        if _string(method, path) not in methods:
            raise SuiteError(f"{path}: {method!r} is not among the suite's methods")
        if not grows(method):
            raise SuiteError(f"{path}: {method!r} never grows; there is no size to match")
    return tuple(dict.fromkeys(value))


def _seeds(value: Any) -> tuple[int, ...]:
    if isinstance(value, list):
        seeds = tuple(
            _scalar(seed, f"seeds[{i}]", Rule("int", at_least=0)) for i, seed in enumerate(value)
        )
        if not seeds or len(set(seeds)) != len(seeds):
            raise SuiteError(f"seeds must be a non-empty list of distinct seeds, got {value}")
        return seeds
    count = _scalar(value, "seeds", Rule("int", at_least=1))
    if count > MAX_SEEDS:
        raise SuiteError(f"seeds must be at most {MAX_SEEDS} (seeds 0..N-1), got {count}")
    return tuple(range(count))


def _variants(value: Any) -> dict[str, Variant]:
    table = _table(value, "variants")
    registered = available_methods()
    variants = {}
    for name, entry in table.items():
        path = f"variants.{name}"
        _name(name, path)
        if name in registered:
            raise SuiteError(
                f"{path}: {name!r} is a registered method; give the variant a new name"
            )
        entry = _table(entry, path)
        _reject_unknown(entry, ("method", "options"), path)
        if "method" not in entry:
            raise SuiteError(f"{path}.method is required: the registered method it runs")
        base = _string(entry["method"], f"{path}.method")
        if base not in registered:
            raise SuiteError(
                f"{path}.method: {unknown_name('method', base, registered)} "
                "(a variant runs a registered method)"
            )
        options = _table(entry.get("options", {}), f"{path}.options")
        _resolve_options(base, options, f"{path}.options")
        variants[name] = Variant(base, dict(options))
    return variants


def _methods(value: Any, variants: Mapping[str, Variant]) -> tuple[str, ...]:
    known = [*available_methods(), *variants]
    if value == "*" or value == ["*"]:
        return tuple(known)
    if not isinstance(value, list) or not value:
        raise SuiteError(
            f'methods must be "*" or a non-empty list of method names, got {value!r}; '
            "per-method options go in [method_options.NAME]"
        )
    for i, method in enumerate(value):
        path = f"methods[{i}]"
        if _string(method, path) not in known:
            raise SuiteError(
                f"{path}: {unknown_name('method', method, known)} "
                "(or declare it in [variants.NAME])"
            )
    if len(set(value)) != len(value):
        raise SuiteError(f"methods lists a method twice: {value}")
    return tuple(value)


def _method_options(value: Any, variants: Mapping[str, Variant]) -> dict[str, dict[str, Any]]:
    table = _table(value, "method_options")
    registered = list(available_methods())
    resolved = {}
    for method, options in table.items():
        path = f"method_options.{method}"
        if method in variants:
            raise SuiteError(
                f"{path}: {method!r} is a variant; its options go in [variants.{method}]"
            )
        if method not in registered:
            raise SuiteError(f"{path}: {unknown_name('method', method, registered)}")
        resolved[method] = _resolve_options(method, _table(options, path), path)
    for name, variant in variants.items():
        resolved[name] = _resolve_options(variant.method, variant.options, f"variants.{name}")
    return resolved


def _resolve_options(method: str, options: dict[str, Any], path: str = "") -> dict[str, Any]:
    """The method's full Config with ``options`` applied, each typed like its default."""
    config_type = available_methods()[method].Config
    checked = _typed_options(config_type, options, f"method {method!r}", path)
    try:
        grower = make_grower(method, checked)
    except (TypeError, ValueError) as exc:
        raise SuiteError(f"{path or method}: {exc}") from None
    return dataclasses.asdict(grower.config)


def _typed_options(
    options_class: type, options: Mapping[str, Any], owner: str, path: str
) -> dict[str, Any]:
    """``options`` of ``owner`` (``method 's2d'``...) refused when a key is no field of the
    dataclass ``options_class``, else each value checked to be typed like its default."""
    try:
        refuse_unknown_options(options_class, options, owner)
    except UnknownOptionError as exc:
        raise SuiteError(f"{path}.{exc.unknown[0]}: {exc}") from None
    defaults = option_defaults(options_class)
    return {
        key: _like_default(value, defaults[key], f"{path}.{key}") for key, value in options.items()
    }


def _like_default(value: Any, default: Any, path: str) -> Any:
    """Check ``value`` has the type of ``default`` (ints pass for floats); None accepts anything."""
    if default is None:
        return value
    if isinstance(default, bool):
        return _scalar(value, path, Rule("bool"))
    if isinstance(default, int):
        return _scalar(value, path, Rule("int"))
    if isinstance(default, float):
        return _scalar(value, path, Rule("number"))
    if isinstance(default, str):
        return _string(value, path)
    if isinstance(default, (list, tuple)) and not isinstance(value, list):
        raise SuiteError(f"{path} must be a list like its default {default!r}, got {value!r}")
    if dataclasses.is_dataclass(default):  # a table of options, such as fast-s2d's ``rayleigh``
        if not isinstance(value, dict):
            raise SuiteError(f"{path} must be a table of options, got {value!r}")
        return _typed_options(type(default), value, path.rpartition(".")[2], path)
    return value


def _merged(options: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` with ``overrides`` applied, a table (such as fast-s2d's ``rayleigh``) merged
    key by key rather than replaced whole."""
    merged = dict(options)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            value = _merged(merged[key], value)
        merged[key] = value
    return merged


def _tasks(value: Any, epochs: int, sections: dict[str, Any]) -> tuple[Task, ...]:
    if not isinstance(value, list) or not value:
        raise SuiteError("tasks: a suite needs at least one [[tasks]] table")
    tasks = []
    seen: dict[str, str] = {}
    for i, table in enumerate(value):
        task = _task(_table(table, f"tasks[{i}]"), f"tasks[{i}]", epochs, sections)
        if task.name in seen:
            raise SuiteError(
                f"{task.path}.name: task name {task.name!r} is taken by {seen[task.name]}; "
                "set `name` to tell them apart"
            )
        seen[task.name] = task.path
        tasks.append(task)
    return tuple(tasks)


def _task(table: dict[str, Any], path: str, epochs: int, sections: dict[str, Any]) -> Task:
    _reject_unknown(table, TASK_FIELDS, path)
    for key in ("dataset", "model"):
        if key not in table:
            raise SuiteError(f"{path}.{key} is required")
    names = dataset_names()
    dataset = _string(table["dataset"], f"{path}.dataset")
    if dataset not in names:
        raise SuiteError(f"{path}.dataset: {unknown_name('dataset', dataset, names)}")
    models = available_models()
    model = _string(table["model"], f"{path}.model")
    if model not in models:
        raise SuiteError(f"{path}.model: {unknown_name('model', model, models)}")
    chosen = _model_options(
        model, _table(table.get("model_options", {}), f"{path}.model_options"), path
    )
    name = _name(table.get("name", f"{dataset}-{model}"), f"{path}.name")
    options = _dataset_options(
        dataset,
        _table(table.get("dataset_options", {}), f"{path}.dataset_options"),
        f"{path}.dataset_options",
    )
    task_epochs = _scalar(table.get("epochs", epochs), f"{path}.epochs", Rule("int", at_least=1))
    overrides = {
        key: _section(table.get(key, {}), f"{path}.{key}", sections[key], rules)
        for key, rules in SECTION_RULES.items()
    }
    task = Task(name, path, dataset, options, model, chosen, task_epochs, **overrides)
    try:
        task.model_config(dataset_spec(dataset))
    except ValueError as exc:
        raise SuiteError(f"{path}: {exc}") from None
    training = task.training
    if training.schedule_span == "round" and training.optimizer_after_growth != "reset":
        raise SuiteError(
            f"{path}.training: schedule_span = 'round' starts a fresh optimizer every round; "
            "set optimizer_after_growth = 'reset' with it"
        )
    mismatch = check_shape(training.augmentation, dataset_spec(dataset).input_shape)
    if mismatch:
        raise SuiteError(f"{path}.training.augmentation ({name}, dataset {dataset}): {mismatch}")
    if task.growth.first_epoch >= task_epochs:
        raise SuiteError(
            f"{path} ({name}): growth.first_epoch = {task.growth.first_epoch} must be less than "
            f"epochs = {task_epochs}, since a net grows after an epoch and trains after that"
        )
    last = task.growth.last_epoch
    if last is not None and not task.growth.first_epoch <= last < task_epochs:
        raise SuiteError(
            f"{path} ({name}): growth.last_epoch = {last} must be at least growth.first_epoch "
            f"= {task.growth.first_epoch} and less than epochs = {task_epochs}"
        )
    return task


def _model_options(model: str, options: dict[str, Any], path: str) -> dict[str, Any]:
    """A model's options from the suite, each typed like its default (lists become tuples);
    the values themselves are checked when the task builds its ModelConfig."""
    options_class = available_models()[model].Options
    checked = _typed_options(options_class, options, f"model {model!r}", f"{path}.model_options")
    return {key: tuple(v) if isinstance(v, list) else v for key, v in checked.items()}


def _dataset_options(dataset: str, options: dict[str, Any], path: str) -> dict[str, Any]:
    return _typed_options(dataset_entry(dataset).options, options, f"dataset {dataset!r}", path)


def _section(value: Any, path: str, base: Any, rules: dict[str, Rule]) -> Any:
    """A [training]/[growth]/[budget] table checked key by key and laid over ``base``."""
    table = _table(value, path)
    _reject_unknown(table, tuple(rules), path)
    checked = {key: _scalar(table[key], f"{path}.{key}", rules[key]) for key in table}
    return dataclasses.replace(base, **checked)


# ----------------------------------------------------------------------- field checks
def _reject_unknown(table: Mapping[str, Any], allowed: tuple[str, ...], path: str) -> None:
    for key in table:
        if key not in allowed:
            where = f"{path}.{key}" if path else key
            hint = ""
            if key in ("widths", "activation", "batchnorm") and "model_options" in allowed:
                hint = f"; model options go in {path}.model_options = {{ {key} = ... }}"
            raise SuiteError(
                f"unknown field {where}; valid fields here: {', '.join(allowed)}{hint}"
            )


def _table(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SuiteError(f"{path} must be a table, got {value!r}")
    return value


# Suite and task names become file names (reports/<suite>/), MLflow experiment and run names
# (at most 250 characters with the cell's method and seed) and table labels.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
MAX_NAME_LENGTH = 100


def _name(value: Any, path: str) -> str:
    name = _string(value, path)
    if len(name) > MAX_NAME_LENGTH:
        raise SuiteError(f"{path} is {len(name)} characters long; use at most {MAX_NAME_LENGTH}")
    if not NAME_PATTERN.fullmatch(name):
        raise SuiteError(
            f"{path} {name!r} must start with a letter or digit and hold only letters, digits "
            'and . _ + - (it names files and MLflow runs); set name = "..." in the suite'
        )
    return name


def _string(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise SuiteError(f"{path} must be a string, got {value!r} ({type(value).__name__})")
    return value


TYPE_NAMES = {"int": "an integer", "number": "a number", "str": "a string", "bool": "true or false"}


def _scalar(value: Any, path: str, rule: Rule) -> Any:
    """Check one value against ``rule``; numbers come back as floats so hashes are canonical
    (a ``numbers`` rule: a list of numbers, each checked, back as a sorted tuple)."""
    if rule.kind == "numbers":
        if not isinstance(value, list):
            raise SuiteError(f"{path} must be a list of numbers, got {value!r}")
        each = dataclasses.replace(rule, kind="number")
        return tuple(sorted(_scalar(v, f"{path}[{i}]", each) for i, v in enumerate(value)))
    is_bool = isinstance(value, bool)
    valid_type = {
        "int": isinstance(value, int) and not is_bool,
        "number": isinstance(value, (int, float)) and not is_bool,
        "str": isinstance(value, str),
        "bool": is_bool,
    }[rule.kind]
    if not valid_type:
        raise SuiteError(
            f"{path} must be {TYPE_NAMES[rule.kind]}, got {value!r} ({type(value).__name__})"
        )
    if rule.kind == "number":
        value = float(value)
        if not math.isfinite(value):
            raise SuiteError(f"{path} must be a finite number, got {value!r}")
    if rule.choices and value not in rule.choices:
        raise SuiteError(
            f"{path} must be one of {', '.join(map(repr, rule.choices))}, got {value!r}"
        )
    if rule.at_least is not None and value < rule.at_least:
        raise SuiteError(f"{path} must be at least {rule.at_least:g}, got {value!r}")
    if rule.above is not None and not value > rule.above:
        raise SuiteError(f"{path} must be greater than {rule.above:g}, got {value!r}")
    if rule.below is not None and not value < rule.below:
        raise SuiteError(f"{path} must be less than {rule.below:g}, got {value!r}")
    return value


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested dicts to ``{"a.b": "value"}``; lists and scalars become their JSON text."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value if isinstance(value, str) else json.dumps(value, default=str)
    return flat


__all__ = [
    "Budget",
    "CellConfig",
    "Growth",
    "Suite",
    "SuiteError",
    "Task",
    "Training",
    "load_suite",
    "packaged_suites",
    "parse_suite",
    "resolve_suite_path",
]
