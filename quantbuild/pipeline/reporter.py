"""doit reporter: doit's console format, with quantbuild's one-line errors."""

from __future__ import annotations

import sys
from typing import Any

from doit.reporter import ConsoleReporter

from quantbuild.pipeline import failures as task_failures


class QuantbuildReporter(ConsoleReporter):  # type: ignore[misc]  # doit ships no types
    """`.  stage:recipe` when a stage runs, `-- stage:recipe` when up to date, as doit prints;
    a user error is one line `ERROR stage:recipe: file:line:col: message` (no traceback)."""

    desc = "quantbuild console output"
    failures: list[dict[str, Any]]  # doit's ConsoleReporter collects them

    def _write_failure(self, result: dict[str, Any], write_exception: bool = True) -> None:
        error = task_failures.for_task(result["task"].name)
        if error is None:  # a bug, not bad input: keep doit's full report
            super()._write_failure(result, write_exception)
            return
        # On stderr, like every other error: stdout stays the build's progress.
        sys.stderr.write(f"ERROR {result['task'].name}: {error}\n")
        sys.stderr.flush()

    def complete_run(self) -> None:
        # doit repeats failures with captured output at the end; ours are already one line.
        self.failures = [f for f in self.failures if task_failures.for_task(f["task"].name) is None]
        super().complete_run()
