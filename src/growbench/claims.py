"""What a method's paper claims, written down beside the method so a report can test it.

A growth method ships with the claims of its paper as data (``Grower.claims``); the report
(``growbench.reports.claims``) checks each one against the suite's runs with a paired test and says
whether it was reproduced. This module holds only the ``Claim`` record, with no heavy imports, so
the method modules can declare claims without pulling in pandas or scipy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

RELATIONS = ("better", "non_inferior")
SCORE = "score"
MATCHED_PREFIX = "static@"  # the method name of a matched static net: static@<growing method>


def matched_static(method: str) -> str:
    """The name under which the matched static nets of ``method``'s cells run."""
    return f"{MATCHED_PREFIX}{method}"


@dataclass(frozen=True)
class Claim:
    """One qualitative claim of a paper: ``method`` compares to ``baseline`` on ``metric``.

    ``relation``: ``"better"``: the method beats the baseline (one-sided paired test);
    ``"non_inferior"``: the method is worse than the baseline by less than ``margin`` times the
    baseline's mean (0.01: within 1 %), a fraction so that one margin fits accuracy and loss
    tasks alike. ``metric`` is ``"score"`` (direction from the task's
    ``higher_is_better``) or a numeric column of the ``cells`` table, for which
    ``higher_is_better`` says the direction. ``tasks`` names tasks or datasets; empty means every
    task where both methods have cells. The claim is reproduced on a task when the one-sided
    p-value is below ``alpha`` over at least ``min_pairs`` paired seeds.

    ``statement`` says what is tested, in the metric tested: with ``metric`` "score" that is each
    task's score, test accuracy on classification tasks and test loss on regression tasks, so a
    statement about "the loss" (or "the accuracy") alone misdescribes the rows of the other kind;
    name the score, or restrict ``tasks``. A statement is part of the method's code (its
    fingerprint): reword it only when it is wrong.

    ``matched`` compares at the size the method actually reached rather than at the budget (a
    "same-size" or "at equal parameters" claim): the baseline ``static`` is replaced by the
    method's matched static net ``static@<method>`` (trained from scratch at the widths each seed's
    cell ended with), and a growing baseline is compared by each side's advantage over its own
    matched static net, seed by seed (method − static@method against baseline −
    static@baseline), so that a method that grew bigger gains nothing from its size alone. Such
    a claim needs a suite that runs the matched static nets (``matched_static``).
    """

    paper: str
    statement: str
    method: str
    baseline: str
    metric: str = SCORE
    relation: Literal["better", "non_inferior"] = "better"
    margin: float = 0.0
    tasks: tuple[str, ...] = ()
    min_pairs: int = 3
    alpha: float = 0.05
    higher_is_better: bool | None = None
    matched: bool = False

    def __post_init__(self) -> None:
        for name in ("paper", "statement", "method", "baseline", "metric"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"Claim.{name} must be a non-empty string, got {value!r}")
        if "\n" in self.statement:
            raise ValueError("Claim.statement must be one line")
        if not isinstance(self.matched, bool):
            raise ValueError(f"Claim.matched must be True or False, got {self.matched!r}")
        if self.method == self.baseline:
            raise ValueError(f"Claim compares {self.method!r} with itself")
        if self.relation not in RELATIONS:
            raise ValueError(f"Claim.relation must be one of {RELATIONS}, got {self.relation!r}")
        if isinstance(self.margin, bool) or not isinstance(self.margin, int | float):
            raise ValueError(f"Claim.margin must be a number, got {self.margin!r}")
        if not (math.isfinite(self.margin) and self.margin >= 0):
            raise ValueError(f"Claim.margin must be finite and ≥ 0, got {self.margin!r}")
        if self.relation == "better" and self.margin != 0:
            raise ValueError("Claim.margin is used only by non_inferior claims; leave it 0")
        if isinstance(self.tasks, str):
            raise ValueError("Claim.tasks must be a tuple of names, not one string")
        object.__setattr__(self, "tasks", tuple(self.tasks))
        if not all(isinstance(task, str) and task for task in self.tasks):
            raise ValueError(f"Claim.tasks must hold non-empty names, got {self.tasks!r}")
        if isinstance(self.min_pairs, bool) or not isinstance(self.min_pairs, int):
            raise ValueError(f"Claim.min_pairs must be an int, got {self.min_pairs!r}")
        if self.min_pairs < 2:
            raise ValueError(
                f"Claim.min_pairs must be ≥ 2 (a t-test needs 2), got {self.min_pairs}"
            )
        if not (isinstance(self.alpha, int | float) and 0 < self.alpha < 1):
            raise ValueError(f"Claim.alpha must lie in (0, 1), got {self.alpha!r}")
        if self.metric == SCORE:
            if self.higher_is_better is not None:
                raise ValueError(
                    "Claim.higher_is_better must stay None for metric 'score': "
                    "the task's higher_is_better gives the direction"
                )
        elif not isinstance(self.higher_is_better, bool):
            raise ValueError(
                f"Claim.higher_is_better (True or False) is required for metric {self.metric!r}"
            )
