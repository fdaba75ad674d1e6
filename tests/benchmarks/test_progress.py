"""Progress off a terminal: a piped ``growbench run`` logs one line per finished cell (task,
method, seed, score, seconds) and draws no bar; on a terminal the bars stay."""

from __future__ import annotations

import io
import re
import subprocess
import sys

from growbench import progress
from growbench.benchmarks.suite import parse_suite
from tests.benchmarks.conftest import TINY_SUITE, user_environment

LINE = re.compile(
    r"^\[(\d+)/(\d+)\] (\S+)/(\S+)/seed(\d+) finished: (acc \d+\.\d\d %|test loss \S+), "
    r"\d+\.\d s$"
)


def test_a_piped_run_logs_one_line_per_cell_and_no_bars(write_suite, tmp_path) -> None:
    path = write_suite()
    command = [sys.executable, "-m", "growbench.cli", "run", "--suite", str(path)]
    command += ["--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--device", "cpu"]
    env = user_environment()
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr
    for bar_text in ("\r", "epoch/s", "cell/s"):
        assert bar_text not in done.stderr
    lines = [LINE.match(line) for line in done.stderr.splitlines()]
    found = [match.groups() for match in lines if match]
    cells = parse_suite(TINY_SUITE, "tiny").cells()
    assert [(task, method, int(seed)) for _, _, task, method, seed, _ in found] == [
        (cell.task.name, cell.method, cell.seed) for cell in cells
    ]
    assert [(int(done), int(total)) for done, total, *_ in found] == [
        (index, len(cells)) for index in range(1, len(cells) + 1)
    ]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bars_show_on_a_terminal_only(monkeypatch) -> None:
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert progress.on_terminal()
    assert not progress.bar(range(3), progress=True).disable
    assert progress.bar(range(3), progress=False).disable
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert not progress.on_terminal()
    assert progress.bar(range(3), progress=True).disable


def test_the_cell_line_names_task_method_seed_score_and_seconds() -> None:
    line = progress.cell_line(3, 12, "digits-mlp/s2d/seed1", "finished", "acc 97.50 %", 4.06)
    assert line == "[3/12] digits-mlp/s2d/seed1 finished: acc 97.50 %, 4.1 s"
    assert LINE.match(line)
