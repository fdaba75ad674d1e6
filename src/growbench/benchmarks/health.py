"""Growth health: whether a growth step destabilised training, whether a cell ended broken.

A verdict over seeds averages a wrecked cell in with the others; these flags make it visible in
the run output and the report. The thresholds are stated here, once:

* a growth event is **destabilised** when the training loss or the test loss of the epoch after
  it is not finite or exceeds ``DESTABILISED_FACTOR`` times the same loss of the epoch before it
  (growth that works leaves the next epoch's losses near or below the last ones). The test loss
  is read as well because the training loss is an average over the epoch: a net that broke
  during it can still show a normal one (a TINY growth on a rational-activation toy: training
  loss 0.22, test loss 0.31 → 75, and the training loss 69 only an epoch later);
* a classification cell is **at chance** when its final test accuracy is within
  ``CHANCE_MARGIN`` of 1 / classes;
* any cell is **worse than its start** when its final test loss exceeds ``WORSE_FACTOR`` times
  the test loss of its untrained start net (step 0).

Each event also records the loss on the *probe*: training samples outside both the statistics
set and the held-out set the grower may tune on, measured in eval mode before and after the
change, so a step that fits its own samples and hurts the rest shows; the report counts the steps
that raised it by more than ``PROBE_TOLERANCE`` of its value (a split's own ε-sized change and
float noise stay below it).
"""

from __future__ import annotations

import math
from typing import Any

DESTABILISED_FACTOR = 3.0
CHANCE_MARGIN = 0.02
WORSE_FACTOR = 1.1
PROBE_TOLERANCE = 1e-3  # a probe loss "rose" when it grew by more than this share of itself


def destabilised(loss_before: float, next_loss: float) -> bool:
    """Whether a loss (training or test) moved from ``loss_before`` the growth to ``next_loss``
    the epoch after as a destabilised step moves it."""
    return not math.isfinite(next_loss) or next_loss > DESTABILISED_FACTOR * loss_before


def after_next_epoch(record: dict[str, Any], next_epoch: dict[str, float]) -> None:
    """Complete an event's ``health`` entry with the training and test losses of the epoch after
    it (``next_epoch``: that epoch's metrics; a loss it lacks, or one not recorded before the
    growth, is not judged)."""
    health = record.setdefault("health", {})
    judged = False
    for loss in ("train_loss", "test_loss"):
        before, after = health.get(f"{loss}_before"), next_epoch.get(loss)
        if after is not None:
            health[f"next_{loss}"] = after
        judged |= before is not None and after is not None and destabilised(before, after)
    health["destabilised"] = judged


def cell_flags(
    history: list[dict[str, float]], events: list[dict[str, Any]], num_classes: int | None
) -> list[str]:
    """The health flags of a finished cell, in words (empty when healthy). ``num_classes`` is
    None for a regression task."""
    flags = []
    count = sum(1 for event in events if event.get("health", {}).get("destabilised"))
    if count:
        flags.append(f"{count} destabilised growth event{'s' * (count != 1)}")
    final, start = history[-1], history[0]
    accuracy = final.get("test_accuracy")
    if num_classes and accuracy is not None and accuracy <= 1 / num_classes + CHANCE_MARGIN:
        flags.append(f"at chance ({100 * accuracy:.1f} %)")
    loss, start_loss = final.get("test_loss"), start.get("test_loss")
    if loss is not None and start_loss is not None and not loss <= WORSE_FACTOR * start_loss:
        flags.append(f"worse than its start net (test loss {loss:.3g} vs {start_loss:.3g})")
    return flags
