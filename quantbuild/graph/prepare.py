"""Canonical float model: constants as initializers, opset >= 13, BatchNorm folded, shapes inferred."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference, version_converter

from quantbuild.errors import ModelError
from quantbuild.graph import index as graph_index
from quantbuild.graph.fold import simplify
from quantbuild.graph.onnx_utils import initializers, opset_version

MIN_OPSET = 13  # per-axis QuantizeLinear/DequantizeLinear


def _upgrade_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    if opset_version(model) >= MIN_OPSET:
        return model
    try:
        return version_converter.convert_version(model, MIN_OPSET)
    except Exception as err:
        raise ModelError(
            f"cannot upgrade the model from opset {opset_version(model)} to {MIN_OPSET} ({err}); "
            f"re-export it with opset >= {MIN_OPSET}"
        ) from None


def _constants_to_initializers(graph: onnx.GraphProto) -> None:
    kept = []
    for node in graph.node:
        if (
            node.op_type == "Constant"
            and node.domain in ("", "ai.onnx")
            and len(node.attribute) == 1
        ):
            attr = node.attribute[0]
            value = helper.get_attribute_value(attr)
            if attr.name == "value":
                array = numpy_helper.to_array(value)
            elif attr.name in ("value_float", "value_int"):
                array = np.array(
                    value, dtype=np.float32 if attr.name == "value_float" else np.int64
                )
            elif attr.name in ("value_floats", "value_ints"):
                array = np.array(
                    value, dtype=np.float32 if attr.name == "value_floats" else np.int64
                )
            else:
                kept.append(node)
                continue
            graph.initializer.append(numpy_helper.from_array(array, node.output[0]))
            continue
        kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)


def _name_nodes(graph: onnx.GraphProto) -> None:
    """Give every node a unique, stable name (layer names are user-facing)."""
    seen = Counter(n.name for n in graph.node if n.name)
    used = set(seen)
    for index, node in enumerate(graph.node):
        if not node.name or seen[node.name] > 1:
            base = node.name or f"{node.op_type}_{index}"
            name, n = base, 1
            while name in used:
                name, n = f"{base}_{n}", n + 1
            node.name = name
            used.add(name)


def _fold_batchnorm(graph: onnx.GraphProto) -> int:
    """Fold BatchNormalization into the Conv that feeds it alone; returns how many."""
    inits = {t.name: t for t in graph.initializer}
    consumers = Counter(i for n in graph.node for i in n.input)
    outputs = graph_index.output_names(graph)
    producer = graph_index.producers(graph)
    folded, drop = 0, set()
    for bn in graph.node:
        if bn.op_type != "BatchNormalization" or len(bn.output) != 1:
            continue
        conv = producer.get(bn.input[0])
        params = bn.input[1:5]
        if (
            conv is None
            or conv.op_type != "Conv"
            or consumers[bn.input[0]] != 1
            or bn.input[0] in outputs
            or not all(p in inits for p in params)
            or conv.input[1] not in inits
            or consumers[conv.input[1]] != 1
            or (len(conv.input) > 2 and conv.input[2] and conv.input[2] not in inits)
        ):
            continue
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        gamma, beta, mean, var = (
            numpy_helper.to_array(inits[p]).astype(np.float64) for p in params
        )
        factor = gamma / np.sqrt(var + eps)
        w_init = inits[conv.input[1]]
        weight = numpy_helper.to_array(w_init).astype(np.float64)
        has_bias = len(conv.input) > 2 and conv.input[2]
        bias = numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64) if has_bias else 0.0
        new_w = (weight * factor.reshape(-1, *([1] * (weight.ndim - 1)))).astype(np.float32)
        new_b = ((bias - mean) * factor + beta).astype(np.float32)
        w_init.CopyFrom(numpy_helper.from_array(new_w, w_init.name))
        bias_name = conv.input[2] if has_bias else f"{conv.name}.bias"
        if has_bias:
            inits[bias_name].CopyFrom(numpy_helper.from_array(new_b, bias_name))
        else:
            graph.initializer.append(numpy_helper.from_array(new_b, bias_name))
            inits[bias_name] = graph.initializer[-1]
            if len(conv.input) == 2:
                conv.input.append(bias_name)
            else:
                conv.input[2] = bias_name
        conv.output[0] = bn.output[0]
        drop.add(id(bn))
        folded += 1
    kept = [n for n in graph.node if id(n) not in drop]
    del graph.node[:]
    graph.node.extend(kept)
    used = {i for n in graph.node for i in n.input} | outputs
    unused = [t for t in graph.initializer if t.name not in used]
    for t in unused:
        graph.initializer.remove(t)
    return folded


def prepare_model(
    model: onnx.ModelProto, rewrite: bool = True
) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Return the canonical float model and a summary of what preparation changed.

    `rewrite=False` keeps every weight as it is (no BatchNorm folding or graph rewrites): the
    parameters of a pre-quantized model name its weights. The argument is left untouched."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    model = _upgrade_opset(copy)
    graph = model.graph
    _constants_to_initializers(graph)
    init_names = set(initializers(model))
    inputs = [i for i in graph.input if i.name not in init_names]
    del graph.input[:]
    graph.input.extend(inputs)
    _name_nodes(graph)
    folded = _fold_batchnorm(graph) if rewrite else 0
    model = shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    graph = model.graph
    rewrites = simplify(model) if rewrite else {}
    if rewrites.get("fuse_hardswish") and opset_version(model) < 14:
        # HardSwish is an opset-14 operator; nothing else in use changed meaning from 13 to 14.
        for entry in model.opset_import:
            if entry.domain in ("", "ai.onnx"):
                entry.version = 14
    del graph.value_info[:]
    try:
        model = shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as err:
        raise ModelError(f"shape inference failed ({str(err).splitlines()[0]})") from None
    onnx.checker.check_model(model)
    summary = {"opset": opset_version(model), "batchnorm_folded": folded, "nodes": len(graph.node)}
    return model, {**summary, **{name: n for name, n in rewrites.items() if n}}
