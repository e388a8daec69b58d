"""Variants of one QDQ model run by their differences only.

Automatic mixed precision measures hundreds of variants of one QDQ model, each with a layer or
two at another precision. A variant's nodes that neither differ from the model's (its
"background") nor read a tensor that does compute exactly what the background computes, so
only the rest (its suffix: the changed nodes and everything downstream of them) is run, fed
with the background's own tensors where it reads across the cut. The outputs are the ones a
whole run of the variant gives, bit for bit (tests/mixed/test_variants.py): same kernels on
the same inputs, no graph optimization on either side.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from quantbuild.evaluate.layerwise import has_subgraph
from quantbuild.runtime import session, with_outputs

# Variants measured per pass of the background that feeds them: the tensors they read across
# their cuts are held for every frame, so a bounded number of variants bounds that memory.
CHUNK = 16

Feed = dict[str, np.ndarray]


@dataclass
class Suffix:
    """What a variant runs beyond its background."""

    model: onnx.ModelProto  # the changed nodes and everything they reach
    reads: list[str]  # tensors it takes from the background's run (or the feed)
    kept: list[str]  # graph outputs the background computes for it unchanged


def _key(node: onnx.NodeProto) -> tuple[str, ...]:
    return tuple(node.output)  # outputs are unique: a node's identity across variants


class Background:
    """A QDQ model run on some frames, against which variants of it are measured."""

    def __init__(self, model: onnx.ModelProto, feeds: list[Feed]):
        self.model, self.feeds = model, feeds
        self.outputs = [o.name for o in model.graph.output]
        self._inits = {t.name: t.SerializeToString() for t in model.graph.initializer}
        self._nodes = {_key(n): n.SerializeToString() for n in model.graph.node}
        self.runnable = not any(has_subgraph(n) for n in model.graph.node)

    def run(self) -> list[list[np.ndarray]]:
        """The background's own outputs on every frame."""
        runner = session(self.model)
        return [runner.run(self.outputs, feed) for feed in self.feeds]

    def suffix(self, variant: onnx.ModelProto) -> Suffix | None:
        """The part of `variant` that computes differently from the background; None when the
        variant must run whole (subgraphs, whose outer-scope reads the cut cannot see)."""
        if not self.runnable or any(has_subgraph(n) for n in variant.graph.node):
            return None
        inits = {t.name: t for t in variant.graph.initializer}
        changed = {n for n, t in inits.items() if self._inits.get(n) != t.SerializeToString()}
        nodes = []
        for node in variant.graph.node:  # topological: a changed input is known before its use
            if self._nodes.get(_key(node)) != node.SerializeToString() or any(
                i in changed for i in node.input
            ):
                nodes.append(node)
                changed.update(o for o in node.output if o)
        produced = {o for n in nodes for o in n.output}
        reads = list(
            dict.fromkeys(
                i for n in nodes for i in n.input if i and i not in produced and i not in inits
            )
        )
        outputs = [o for o in variant.graph.output if o.name in produced]
        model = onnx.ModelProto()
        model.CopyFrom(variant)
        graph = model.graph
        used = {i for n in nodes for i in n.input}
        del graph.node[:], graph.input[:], graph.output[:], graph.initializer[:]
        graph.node.extend(nodes)
        graph.initializer.extend(t for name, t in inits.items() if name in used)
        graph.output.extend(outputs)
        inner = [v for v in graph.value_info if v.name in produced]
        del graph.value_info[:]
        graph.value_info.extend(inner)
        kept = [o.name for o in variant.graph.output if o.name not in produced]
        return Suffix(model, reads, kept)

    def measure(self, variants: Iterable[onnx.ModelProto]) -> Iterator[list[list[np.ndarray]]]:
        """Each variant's outputs on every frame (graph output order), in order; CHUNK variants
        at a time share one pass of the background over the frames."""
        chunk: list[onnx.ModelProto] = []
        for variant in variants:
            chunk.append(variant)
            if len(chunk) == CHUNK:
                yield from self._measure(chunk)
                chunk = []
        if chunk:
            yield from self._measure(chunk)

    def _measure(self, variants: list[onnx.ModelProto]) -> Iterator[list[list[np.ndarray]]]:
        suffixes = [self.suffix(v) for v in variants]
        fed = set(self.feeds[0]) if self.feeds else set()
        wanted = list(
            dict.fromkeys(
                name
                for s in suffixes
                if s is not None
                for name in s.reads + s.kept
                if name not in fed
            )
        )
        cut: list[Feed] = [dict(feed) for feed in self.feeds]
        if wanted:
            runner = session(with_outputs(self.model, wanted))
            for values, feed in zip(cut, self.feeds):
                values.update(zip(wanted, runner.run(wanted, feed)))
        for variant, suffix in zip(variants, suffixes):
            if suffix is None:
                whole = session(variant)
                names = [o.name for o in variant.graph.output]
                yield [whole.run(names, feed) for feed in self.feeds]
                continue
            yield self._run_suffix(suffix, cut)

    def _run_suffix(self, suffix: Suffix, cut: list[Feed]) -> list[list[np.ndarray]]:
        model = suffix.model
        for name in suffix.reads:
            value = cut[0][name]
            elem = helper.np_dtype_to_tensor_dtype(value.dtype)
            model.graph.input.append(helper.make_tensor_value_info(name, elem, None))
        produced = [o.name for o in model.graph.output]
        runner = session(model) if produced else None
        results = []
        for values in cut:
            outputs: Feed = {}
            if runner is not None:
                feed = {name: values[name] for name in suffix.reads}
                outputs = dict(zip(produced, runner.run(produced, feed)))
            results.append([outputs[n] if n in outputs else values[n] for n in self.outputs])
        return results
