"""The fidelity figures of the docs' method pages, written to ``docs/fidelity.md``.

For every built-in method, on the plugin contract's three fixtures (float64): the loss change its
growth step predicts against the one it realises (the method's small-step settings, as the
contract's prediction rule uses them) and, for a method that declares it preserves the function,
the largest change of the outputs such a step makes. Run ``python bench/fidelity.py`` in the
torch environment (``.nox/growbench``) to regenerate the page; ``--out`` writes it elsewhere.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from growbench import contract
from growbench.methods import available_methods, get_method, make_grower

ROOT = Path(__file__).resolve().parents[1]
HEADER = """# Fidelity figures

Measured by `bench/fidelity.py` on the plugin contract's fixtures (float64): for each built-in
method, the loss change one growth step predicts and the one it realises on the statistics
batch (the method's small-step settings; on `tanh_mlp` the contract requires
|realised / predicted − 1| within the method's `prediction_tolerance`), and, for a method that
declares it keeps the function, the largest change of the outputs after a function-preserving
step (the contract requires at most 1e-12). "—": the method makes no prediction, or declares no
function preservation. On `relu_mlp` the splitting methods score with the softplus surrogate
([convention 5](conventions.md)): their prediction is a ranking heuristic, as the ratio shows.
"""


def measure(name: str, task_name: str) -> dict[str, str]:
    cls = get_method(name)
    row = {"method": f"`{name}`", "fixture": task_name}
    try:
        task = contract.supported_task(name, task_name)
    except contract.Skipped:
        return {**row, "predicted": "refused", "realised": "", "ratio": "", "moved": ""}
    ctx = task.context()
    before = ctx.loss(task.net)
    event = make_grower(name, cls.small_step_overrides).grow(task.net, ctx)
    realised = ctx.loss(task.net) - before
    predicted = event.predicted_loss_change
    row["predicted"] = "—" if predicted is None else f"{predicted:.4g}"
    row["realised"] = f"{realised:.4g}"
    row["ratio"] = (
        f"{realised / predicted:.4f}"
        if predicted not in (None, 0.0) and math.isfinite(predicted)
        else "—"
    )
    row["moved"] = "—"
    if cls.preserves_function != "no":
        task = contract.make_task(task_name)
        task.net.eval()
        outputs = contract.outputs(task.net, task.inputs)
        contract.quick_grower(name, **contract.preserving_overrides(cls)).grow(
            task.net, task.context()
        )
        moved = (contract.outputs(task.net, task.inputs) - outputs).abs().max()
        row["moved"] = f"{float(moved):.1e}"
    return row


def page() -> str:
    columns = ["method", "fixture", "predicted", "realised", "ratio", "moved"]
    titles = ["method", "fixture", "predicted ΔL", "realised ΔL", "realised / predicted",
              "largest output change (function kept)"]  # fmt: skip
    lines = [HEADER, "| " + " | ".join(titles) + " |", "|" + "---|" * len(titles)]
    built_in = [
        name for name, cls in available_methods().items() if cls.__module__.startswith("growbench.")
    ]
    for name in sorted(built_in):
        for task_name in contract.FIXTURES:
            row = measure(name, task_name)
            lines.append("| " + " | ".join(row[column] for column in columns) + " |")
    return "\n".join(lines) + "\n"


def hand_written(path: Path) -> str:
    """The page's sections after the generated table (from its first ``## `` heading), which a
    regeneration keeps: the end-to-end comparisons are tests' results, not this script's."""
    if not path.exists():
        return ""
    text = path.read_text(encoding="utf-8")
    start = text.find("\n## ")
    return text[start:] if start >= 0 else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "fidelity.md")
    args = parser.parse_args()
    args.out.write_text(page() + hand_written(args.out), encoding="utf-8")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
