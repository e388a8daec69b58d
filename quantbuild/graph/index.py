"""The graph index every pass reads: which node produces a tensor, which nodes read it.

Built from the GraphProto as it is now; a pass that rewrites the graph builds a new one (or
uses graph/fold.Graph, which refreshes its index)."""

from __future__ import annotations

from collections import defaultdict

import onnx


def producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    """Tensor name -> the node that outputs it (omitted optional outputs, named "", excluded)."""
    return {o: n for n in graph.node for o in n.output if o}


def consumers(graph: onnx.GraphProto) -> defaultdict[str, list[onnx.NodeProto]]:
    """Tensor name -> the nodes that read it, in graph order (once per input slot)."""
    readers: defaultdict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            readers[name].append(node)
    return readers


def initializer_names(graph: onnx.GraphProto) -> set[str]:
    """Names of the graph's initializers (its constant tensors)."""
    return {t.name for t in graph.initializer}


def output_names(graph: onnx.GraphProto) -> set[str]:
    """Names of the graph's outputs."""
    return {o.name for o in graph.output}
