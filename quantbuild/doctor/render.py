"""A doctor report as plain text (one finding per line) or JSON."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from typing import Any

from quantbuild.doctor import Report

SHOWN = 10  # findings per check in text output unless --all


def _finite(value: Any) -> Any:
    """JSON has no inf/nan: write them as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def render_json(report: Report) -> str:
    """Every finding of every check (never capped)."""
    data = asdict(report)
    for check in data["checks"]:
        del check["_peak"]
        for finding in check["findings"]:
            del finding["severity"]  # an ordering key, not a measurement
    return json.dumps(_finite(data), indent=1) + "\n"


def render_text(report: Report, show_all: bool = False) -> str:
    """Checks in order, each with its worst findings first."""
    facts = report.facts
    prepared = facts.get("prepared", {})
    head = f"doctor {report.model}"
    if report.recipe:
        head += (
            f" (recipe {report.recipe}, {facts.get('calibration_frames', 0)} calibration frames)"
        )
    lines = [
        head,
        f"{facts['nodes']} nodes, {facts['convolutions']} convolutions, "
        f"{facts['batchnorm_nodes']} BatchNormalization; prepared for quantization: "
        f"{prepared.get('nodes')} nodes, {prepared.get('batchnorm_folded', 0)} BatchNorm folded",
    ]
    total = 0
    for check in report.checks:
        total += len(check.findings)
        lines.append("")
        lines.append(
            f"[{check.check}] {check.title}: {len(check.findings)} of {check.checked}"
            if check.findings
            else f"[{check.check}] {check.title}: none ({check.checked} checked)"
        )
        if check.largest and not check.findings:  # how far from the limit
            lines.append(f"  largest: {check.largest}")
        if check.note:
            lines.append(f"  note: {check.note}")
        shown = check.findings if show_all else check.findings[:SHOWN]
        for f in shown:
            lines.append(f"  {f.layer}: {f.evidence}. Remedy: {f.remedy}.")
        if len(shown) < len(check.findings):
            lines.append(f"  ... {len(check.findings) - len(shown)} more (--all lists them)")
    for skipped, why in report.skipped.items():
        lines.append("")
        lines.append(f"[{skipped}] skipped: {why}")
    lines.append("")
    lines.append(
        f"{total} findings in {sum(bool(c.findings) for c in report.checks)} of "
        f"{len(report.checks)} checks"
    )
    return "\n".join(lines) + "\n"
