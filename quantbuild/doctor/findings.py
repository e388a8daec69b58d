"""Findings, check results and the graph helpers the checks share.

Pure analysis (onnx + numpy); thresholds and remedies are described in docs/doctor.md."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import onnx
from onnx import helper

from quantbuild.graph import index as graph_index
from quantbuild.graph.ops import CONVS


@dataclass(frozen=True)
class Finding:
    """One problem of one layer: what is wrong (evidence, with numbers) and what to do."""

    layer: str  # node name (the name recipes use, e.g. in mixed_precision lists)
    op: str
    evidence: str
    remedy: str
    severity: float = 0.0  # larger is worse; orders the findings of a check
    values: dict[str, Any] = field(
        default_factory=dict[str, Any]
    )  # the numbers behind the evidence


@dataclass
class CheckResult:
    """The findings of one check, worst first, and a note that applies to all of them."""

    check: str
    title: str
    checked: int  # layers or tensors examined
    findings: list[Finding] = field(default_factory=list)
    note: str = ""
    largest: str = ""  # the largest measured value, finding or not (how far from the limit)
    _peak: float = field(default=-math.inf, repr=False)

    def measure(self, value: float, text: str) -> None:
        """Keep `text` as `largest` when `value` is the largest seen so far."""
        if value > self._peak:
            self._peak, self.largest = value, text

    def sort(self) -> CheckResult:
        self.findings.sort(key=lambda f: -f.severity)  # stable: graph order among equals
        return self


def attributes(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def is_weighted(node: onnx.NodeProto, inits: set[str]) -> bool:
    """A layer with its own weights (a MatMul of two activations is not one)."""
    if node.op_type in CONVS:
        return True
    return node.op_type in ("Gemm", "MatMul") and any(i in inits for i in node.input[:2])


def prediction_tensors(graph: onnx.GraphProto, inits: set[str]) -> set[str]:
    """Tensors from which a graph output is reached without passing another weighted layer.

    Walks backwards from the outputs through layers without weights; a conv whose output is
    in this set is a prediction layer (TI allows it to go without BatchNormalization)."""
    producer = graph_index.producers(graph)
    free = graph_index.output_names(graph)
    stack = list(free)
    while stack:
        node = producer.get(stack.pop())
        if node is None or is_weighted(node, inits):
            continue
        for name in node.input:
            if name and name not in free and name not in inits:
                free.add(name)
                stack.append(name)
    return free


def kernel_size(dims: list[int]) -> str:
    return "x".join(str(d) for d in dims[2:]) or "1"


def safe_ratio(a: float, b: float) -> float:
    return a / b if b > 0 else math.inf


def times(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.1f}"
