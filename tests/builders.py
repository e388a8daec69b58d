"""Tiny real ONNX models, datasets and recipe projects for tests (built with onnx.helper)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from quantbuild.pipeline.project import CONFIG_TEXT


def _init(name: str, array: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)


def small_cnn(
    channels: int = 3,
    size: int = 8,
    classes: int = 5,
    opset: int = 13,
    batchnorm: bool = True,
    seed: int = 0,
) -> onnx.ModelProto:
    """input[1,C,S,S] -> Conv-BN-Relu -> MaxPool -> Conv-Relu -> Add(const) -> GAP -> Flatten -> Gemm."""
    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("Conv", ["input", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1])]
    inits = [_init("w1", rng.normal(0, 0.5, (4, channels, 3, 3)))]
    if batchnorm:
        nodes.append(
            helper.make_node(
                "BatchNormalization", ["c1", "g1", "b1", "m1", "v1"], ["bn1"], name="bn1"
            )
        )
        inits += [
            _init("g1", rng.uniform(0.5, 1.5, 4)),
            _init("b1", rng.normal(0, 0.1, 4)),
            _init("m1", rng.normal(0, 0.2, 4)),
            _init("v1", rng.uniform(0.5, 2.0, 4)),
        ]
        act_in = "bn1"
    else:
        act_in = "c1"
    nodes += [
        helper.make_node("Relu", [act_in], ["r1"], name="relu1"),
        helper.make_node(
            "MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]
        ),
        helper.make_node("Conv", ["p1", "w2", "bias2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Add", ["r2", "offset"], ["a2"], name="add2"),
        helper.make_node("GlobalAveragePool", ["a2"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "wfc", "bfc"], ["logits"], name="fc", transB=1),
    ]
    inits += [
        _init("w2", rng.normal(0, 0.3, (6, 4, 3, 3))),
        _init("bias2", rng.normal(0, 0.1, 6)),
        _init("offset", rng.normal(0, 0.1, (1, 6, 1, 1))),
        _init("wfc", rng.normal(0, 0.5, (classes, 6))),
        _init("bfc", rng.normal(0, 0.1, classes)),
    ]
    graph = helper.make_graph(
        nodes,
        "small_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, channels, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, classes])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def separable(seed: int = 0, shared_weight: bool = False, size: int = 8) -> onnx.ModelProto:
    """x -> Conv(3->4) -> Conv dw(4) -> HardSwish -> BN (affine) -> Conv dw(4) -> Conv(4->2) -> y.

    The depthwise weights span two orders of magnitude across channels, as in PP-OCRv4."""
    rng = np.random.default_rng(seed)
    spread = np.array([0.05, 0.5, 2.0, 8.0])[:, None, None, None]
    inits = [
        _init("w0", rng.normal(0, 0.5, (4, 3, 3, 3))),
        _init("b0", rng.normal(0, 0.1, 4)),
        _init("wd1", rng.normal(0, 1, (4, 1, 3, 3)) * spread),
        _init("bd1", rng.normal(0, 0.1, 4)),
        _init("scale", rng.uniform(0.2, 3.0, 4)),
        _init("shift", rng.normal(0, 0.3, 4)),
        _init("mean", np.zeros(4)),
        _init("var", np.ones(4) - 1e-5),
        _init("wd2", rng.normal(0, 1, (4, 1, 3, 3)) * spread[::-1]),
        _init("bd2", rng.normal(0, 0.1, 4)),
        _init("w3", rng.normal(0, 0.5, (2, 4, 1, 1))),
        _init("b3", rng.normal(0, 0.1, 2)),
    ]
    pads = [1, 1, 1, 1]
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], name="conv0", pads=pads),
        helper.make_node("Conv", ["c0", "wd1", "bd1"], ["d1"], name="dw1", pads=pads, group=4),
        helper.make_node("HardSwish", ["d1"], ["h1"], name="hswish"),
        helper.make_node(
            "BatchNormalization", ["h1", "scale", "shift", "mean", "var"], ["a1"], name="affine"
        ),
        helper.make_node(
            "Conv",
            ["a1", "wd1" if shared_weight else "wd2", "bd2"],
            ["d2"],
            name="dw2",
            pads=pads,
            group=4,
        ),
        helper.make_node("Conv", ["d2", "w3", "b3"], ["y"], name="pw3"),
    ]
    graph = helper.make_graph(
        nodes,
        "separable",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, size, size])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_model(path: Path, model: onnx.ModelProto | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model or small_cnn(), str(path))
    return path


def write_npz(
    path: Path,
    frames: int,
    shape=(1, 3, 8, 8),
    seed: int = 0,
    name: str = "input",
    labels: int | None = None,
) -> Path:
    """An .npz with `frames` frames of `shape[1:]` under `name` (first axis = frames)."""
    rng = np.random.default_rng(seed)
    arrays = {name: rng.normal(0, 1, (frames, *shape[1:])).astype(np.float32)}
    if labels:
        arrays["labels"] = rng.integers(0, labels, frames)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def write_images(
    root: Path,
    per_class: int = 3,
    classes: int = 2,
    size: int = 10,
    seed: int = 0,
    mode: str = "RGB",
) -> Path:
    """PNG images in class sub-folders root/<class>/<i>.png."""
    rng = np.random.default_rng(seed)
    channels = 3 if mode == "RGB" else 1
    for c in range(classes):
        folder = root / str(c)
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, channels), dtype=np.uint8)
            Image.fromarray(pixels.squeeze() if channels == 1 else pixels, mode).save(
                folder / f"{i}.png"
            )
    return root


RECIPE = """\
version: 1
model: model.onnx
calibration:
  data: {{tensors: calib.npz}}
evaluation:
  data: {{tensors: val.npz, labels: labels}}
{extra}"""


def device_recipes() -> dict[str, str]:
    """RECIPE for TDA4VM and for AM68A: two recipes sharing model and calibration data."""
    body = RECIPE.split("\n", 1)[1].format(extra="")
    return {
        "a_tda4vm": "version: 1\nextends: [devices/tda4vm]\n" + body,
        "b_am68a": "version: 1\nextends: [devices/am68a]\n" + body,
    }


def make_project(
    root: Path, recipes: dict[str, str] | None = None, calib_frames: int = 8, val_frames: int = 6
) -> Path:
    """A recipe project: doit.cfg, model.onnx, calib.npz, val.npz and the given recipes."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "doit.cfg").write_text(CONFIG_TEXT, encoding="utf-8")
    write_model(root / "model.onnx")
    write_npz(root / "calib.npz", calib_frames, seed=1)
    write_npz(root / "val.npz", val_frames, seed=2, labels=5)
    if recipes is None:
        recipes = {"base": RECIPE.format(extra="")}
    for name, text in recipes.items():
        (root / f"{name}.yaml").write_text(text, encoding="utf-8")
    return root


def heavy_cnn(size: int = 64, width: int = 64, seed: int = 0) -> onnx.ModelProto:
    """A model slow enough (~0.3 GMAC per frame) to interrupt mid-statistics."""
    rng = np.random.default_rng(seed)
    nodes, inits, prev, cin = [], [], "input", 3
    for i in range(3):
        nodes += [
            helper.make_node(
                "Conv", [prev, f"w{i}", f"b{i}"], [f"c{i}"], name=f"conv{i}", pads=[1, 1, 1, 1]
            ),
            helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}"),
        ]
        inits += [
            _init(f"w{i}", rng.normal(0, 0.1, (width, cin, 3, 3))),
            _init(f"b{i}", rng.normal(0, 0.1, width)),
        ]
        prev, cin = f"r{i}", width
    nodes += [
        helper.make_node("GlobalAveragePool", [prev], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "wfc", "bfc"], ["logits"], name="fc", transB=1),
    ]
    inits += [_init("wfc", rng.normal(0, 0.5, (5, width))), _init("bfc", np.zeros(5))]
    graph = helper.make_graph(
        nodes,
        "heavy_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 5])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def _layernorm(prefix: str, x: str, dim: int, rng: np.random.Generator):
    """A LayerNorm as exporters write it below opset 17 (ReduceMean ... Mul gamma, Add beta)."""
    p = prefix
    nodes = [
        helper.make_node("ReduceMean", [x], [f"{p}.mean"], name=f"{p}.mean", axes=[-1]),
        helper.make_node("Sub", [x, f"{p}.mean"], [f"{p}.centred"], name=f"{p}.sub"),
        helper.make_node("Pow", [f"{p}.centred", "two"], [f"{p}.square"], name=f"{p}.pow"),
        helper.make_node("ReduceMean", [f"{p}.square"], [f"{p}.var"], name=f"{p}.var", axes=[-1]),
        helper.make_node("Add", [f"{p}.var", "eps"], [f"{p}.var_eps"], name=f"{p}.add_eps"),
        helper.make_node("Sqrt", [f"{p}.var_eps"], [f"{p}.std"], name=f"{p}.sqrt"),
        helper.make_node("Div", [f"{p}.centred", f"{p}.std"], [f"{p}.norm"], name=f"{p}.div"),
        helper.make_node("Mul", [f"{p}.norm", f"{p}.gamma"], [f"{p}.scaled"], name=f"{p}.gamma"),
        helper.make_node("Add", [f"{p}.scaled", f"{p}.beta"], [f"{p}.out"], name=f"{p}.beta"),
    ]
    gamma = rng.uniform(0.5, 1.5, dim)
    gamma[0] = 8.0  # an outlier channel, as trained transformers have
    inits = [_init(f"{p}.gamma", gamma), _init(f"{p}.beta", rng.normal(0, 0.1, dim))]
    return nodes, inits, f"{p}.out"


def _linear(name: str, x: str, rows: int, cols: int, rng: np.random.Generator):
    """MatMul by a constant weight, then Add of a constant bias (a PyTorch nn.Linear export)."""
    nodes = [
        helper.make_node("MatMul", [x, f"{name}.w"], [f"{name}.mm"], name=f"{name}.matmul"),
        helper.make_node("Add", [f"{name}.b", f"{name}.mm"], [f"{name}.out"], name=f"{name}.add"),
    ]
    weight = rng.normal(0, 1 / np.sqrt(rows), (rows, cols))
    return nodes, [_init(f"{name}.w", weight), _init(f"{name}.b", rng.normal(0, 0.1, cols))]


def attention_block(dim: int = 16, hidden: int = 32, seed: int = 0) -> onnx.ModelProto:
    """x[batch, seq, dim] (both dynamic) -> a pre-norm transformer block: LayerNorm, single-head
    attention (MatMul-Softmax-MatMul of two activations), residual, LayerNorm, MLP with the erf
    GELU, LayerScale, residual -> y. Opset 14, as PyTorch exports it."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], [_init("two", 2.0), _init("eps", 1e-6)]
    n, i, h1 = _layernorm("ln1", "x", dim, rng)
    nodes += n
    inits += i
    for part in ("q", "k", "v", "proj"):
        n, i = _linear(part, "attn" if part == "proj" else h1, dim, dim, rng)
        nodes += n
        inits += i
        if part == "proj":
            break
        if part == "k":
            nodes.append(
                helper.make_node("Transpose", ["k.out"], ["kT"], name="kT", perm=[0, 2, 1])
            )
        if part == "v":
            nodes += [
                helper.make_node("MatMul", ["q.out", "kT"], ["scores"], name="scores"),
                helper.make_node("Mul", ["scores", "inv_sqrt_d"], ["scaled"], name="scale"),
                helper.make_node("Softmax", ["scaled"], ["probs"], name="softmax", axis=-1),
                helper.make_node("MatMul", ["probs", "v.out"], ["attn"], name="context"),
            ]
    inits.append(_init("inv_sqrt_d", 1 / np.sqrt(dim)))
    nodes.append(helper.make_node("Add", ["x", "proj.out"], ["res1"], name="residual1"))
    n, i, h2 = _layernorm("ln2", "res1", dim, rng)
    nodes += n
    inits += i
    n, i = _linear("fc1", h2, dim, hidden, rng)
    nodes += n
    inits += i
    nodes += [
        helper.make_node("Div", ["fc1.out", "sqrt2"], ["g.div"], name="gelu.div"),
        helper.make_node("Erf", ["g.div"], ["g.erf"], name="gelu.erf"),
        helper.make_node("Add", ["g.erf", "one"], ["g.add"], name="gelu.add"),
        helper.make_node("Mul", ["fc1.out", "g.add"], ["g.mul"], name="gelu.mul"),
        helper.make_node("Mul", ["g.mul", "half"], ["gelu"], name="gelu.half"),
    ]
    inits += [_init("sqrt2", np.sqrt(2.0)), _init("one", 1.0), _init("half", 0.5)]
    n, i = _linear("fc2", "gelu", hidden, dim, rng)
    nodes += n
    inits += i
    nodes += [
        helper.make_node("Mul", ["fc2.out", "layer_scale"], ["scaled_mlp"], name="layer_scale"),
        helper.make_node("Add", ["res1", "scaled_mlp"], ["y"], name="residual2"),
    ]
    inits.append(_init("layer_scale", rng.uniform(0.01, 1.0, dim)))
    graph = helper.make_graph(
        nodes,
        "attention_block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", dim])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", dim])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model
