"""doit reporter: doit's console format, with quantbuild's one-line errors."""

from __future__ import annotations

from doit.reporter import ConsoleReporter

from quantbuild.pipeline import failures


class QuantbuildReporter(ConsoleReporter):
    """`.  stage:recipe` when a stage runs, `-- stage:recipe` when up to date, as doit prints;
    a user error is one line `ERROR stage:recipe: file:line:col: message` (no traceback)."""

    desc = "quantbuild console output"

    def _write_failure(self, result, write_exception=True):
        error = failures.for_task(result["task"].name)
        if error is None:  # a bug, not bad input: keep doit's full report
            return super()._write_failure(result, write_exception)
        self.write(f"ERROR {result['task'].name}: {error}\n")

    def complete_run(self):
        # doit repeats failures with captured output at the end; ours are already one line.
        self.failures = [f for f in self.failures if failures.for_task(f["task"].name) is None]
        super().complete_run()
