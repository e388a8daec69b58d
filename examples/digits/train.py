"""Train a small CNN on scikit-learn's bundled 8x8 digits and export it to ONNX.

Run from anywhere (outputs go next to this file; re-running overwrites them)::

    pip install torch==2.13.0 scikit-learn onnx onnxruntime pillow numpy
    python examples/digits/train.py

Writes:
    data/calib/<class>/<index>.png   100 calibration images (10 per class, taken from train)
    data/val/<class>/<index>.png     360 held-out evaluation images (36 per class)
    models/digits_cnn.onnx           float32; input "input" [1,1,16,16] -> output "logits" [1,10]

Preprocessing (identical in training and evaluation): open the 8x8 PNG as "L", resize to 16x16
with ``Image.resize((16, 16), Image.BILINEAR)``, float32, multiply by 1/255 (no mean subtraction).

The ONNX graph is written by hand with ``onnx.helper`` so that every BatchNormalization stays a
separate node carrying its trained running statistics (the quantization tool folds them itself).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from sklearn.datasets import load_digits
from torch import nn

HERE = Path(__file__).resolve().parent
DATA, MODEL_PATH = HERE / "data", HERE / "models" / "digits_cnn.onnx"
SEED, N_CALIB, N_VAL = 0, 10, 36  # per class
OPSET, IR_VERSION, BN_EPS = 17, 8, 1e-5
# ONNX BatchNormalization inputs after X, and the torch BatchNorm2d attribute each comes from.
BN_INPUTS = [
    ("scale", "weight"),
    ("bias", "bias"),
    ("mean", "running_mean"),
    ("var", "running_var"),
]


def preprocess(img: Image.Image) -> np.ndarray:
    """8x8 "L" image -> float32 [1, 1, 16, 16] in [0, 1]; the model's exact preprocessing."""
    img = img.convert("L").resize((16, 16), Image.BILINEAR)
    return (np.asarray(img, dtype=np.float32) * (1.0 / 255.0))[None, None]


def split(y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Deterministic per-class split -> (train, calib, val) indices; calib is a subset of train."""
    rng = np.random.default_rng(SEED)
    train, calib, val = [], [], []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(y == c))
        val.append(idx[:N_VAL])
        train.append(idx[N_VAL:])
        calib.append(idx[N_VAL : N_VAL + N_CALIB])
    return tuple(np.sort(np.concatenate(s)) for s in (train, calib, val))


def write_pngs(images: np.ndarray, y: np.ndarray, indices: np.ndarray, root: Path) -> None:
    """Write uint8 8x8 images as ``root/<class>/<index:04d>.png`` (directory is recreated)."""
    shutil.rmtree(root, ignore_errors=True)
    for i in indices:
        path = root / str(y[i]) / f"{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i], mode="L").save(path)


def augmented(images: np.ndarray) -> np.ndarray:
    """All +-1 pixel shifts (zero fill) of uint8 8x8 images, preprocessed -> [9N, 1, 16, 16]."""
    out = []
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            padded = np.pad(images, ((0, 0), (1, 1), (1, 1)))
            shifted = padded[:, 1 + dy : 9 + dy, 1 + dx : 9 + dx]
            out += [preprocess(Image.fromarray(im, mode="L")) for im in shifted]
    return np.concatenate(out)


class DigitsCNN(nn.Module):
    """conv-BN-ReLU x3, MaxPool, depthwise conv-BN-ReLU, GlobalAveragePool, Linear."""

    def __init__(self) -> None:
        super().__init__()
        # (in, out, stride, groups, bias); conv0 has no bias so both folding paths are exercised.
        self.specs = [
            (1, 16, 1, 1, False),
            (16, 32, 2, 1, True),
            (32, 32, 1, 1, True),
            (32, 32, 1, 32, True),
        ]
        self.convs = nn.ModuleList(
            nn.Conv2d(i, o, 3, stride=s, padding=1, groups=g, bias=b)
            for i, o, s, g, b in self.specs
        )
        self.bns = nn.ModuleList(nn.BatchNorm2d(o, eps=BN_EPS) for _, o, *_ in self.specs)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for k, (conv, bn) in enumerate(zip(self.convs, self.bns, strict=True)):
            x = torch.relu(bn(conv(x)))
            if k == 2:
                x = nn.functional.max_pool2d(x, 2)
        return self.fc(x.mean((2, 3)))


def train(x: np.ndarray, y: np.ndarray, epochs: int = 15, batch: int = 64) -> DigitsCNN:
    """Adam + one-cycle LR on the (already augmented) training tensors; no weight decay."""
    torch.manual_seed(SEED)
    model = DigitsCNN()
    # No weight decay: with it, several channels died and their BN running_var collapsed to ~0.
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    steps = epochs * ((len(x) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=steps)
    xt, yt, gen = torch.from_numpy(x), torch.from_numpy(y), torch.Generator().manual_seed(SEED)
    model.train()
    for epoch in range(epochs):
        perm, total = torch.randperm(len(x), generator=gen), 0.0
        for s in range(0, len(x), batch):
            b = perm[s : s + batch]
            loss = nn.functional.cross_entropy(model(xt[b]), yt[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(b)
        print(f"epoch {epoch + 1:2d}  loss {total / len(x):.4f}")
    return model.eval()


def to_onnx(model: DigitsCNN) -> onnx.ModelProto:
    """Hand-build the ONNX graph, keeping BatchNormalization nodes unfolded."""
    inits: list[TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def init(name: str, t: torch.Tensor) -> str:
        inits.append(numpy_helper.from_array(t.detach().numpy().astype(np.float32), name))
        return name

    x = "input"
    for k, ((_, _, s, g, _), conv, bn) in enumerate(
        zip(model.specs, model.convs, model.bns, strict=True)
    ):
        ins = [x, init(f"conv{k}.weight", conv.weight)]
        if conv.bias is not None:
            ins.append(init(f"conv{k}.bias", conv.bias))
        bn_ins = [f"conv{k}_out"] + [init(f"bn{k}.{n}", getattr(bn, a)) for n, a in BN_INPUTS]
        nodes += [
            helper.make_node(
                "Conv",
                ins,
                [f"conv{k}_out"],
                f"conv{k}",
                kernel_shape=[3, 3],
                pads=[1, 1, 1, 1],
                strides=[s, s],
                group=g,
            ),
            helper.make_node(
                "BatchNormalization", bn_ins, [f"bn{k}_out"], f"bn{k}", epsilon=BN_EPS
            ),
            helper.make_node("Relu", [f"bn{k}_out"], [f"relu{k}_out"], f"relu{k}"),
        ]
        x = f"relu{k}_out"
        if k == 2:
            nodes.append(
                helper.make_node(
                    "MaxPool", [x], ["pool_out"], "pool", kernel_shape=[2, 2], strides=[2, 2]
                )
            )
            x = "pool_out"
    fc_ins = ["flat_out", init("fc.weight", model.fc.weight), init("fc.bias", model.fc.bias)]
    nodes += [
        helper.make_node("GlobalAveragePool", [x], ["gap_out"], "gap"),
        helper.make_node("Flatten", ["gap_out"], ["flat_out"], "flatten", axis=1),
        helper.make_node("Gemm", fc_ins, ["logits"], "fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "digits_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        inits,
    )
    m = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="quantbuild-examples-digits",
        ir_version=IR_VERSION,
    )
    m.doc_string = "8x8 sklearn digits -> L -> BILINEAR resize 16x16 -> float32 /255"
    return m


def evaluate(model_path: Path, root: Path, reference: DigitsCNN) -> float:
    """Top-1 of the ONNX model on ``root/<class>/*.png`` (onnxruntime); checks it matches torch."""
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    files = sorted(root.glob("*/*.png"))
    x = np.concatenate([preprocess(Image.open(f)) for f in files])
    logits = np.concatenate([sess.run(["logits"], {"input": xi[None]})[0] for xi in x])
    with torch.no_grad():
        np.testing.assert_allclose(logits, reference(torch.from_numpy(x)).numpy(), atol=1e-3)
    labels = np.array([int(f.parent.name) for f in files])
    return float(np.mean(logits.argmax(1) == labels))


def main() -> None:
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    digits = load_digits()
    images = np.round(digits.images * 255.0 / 16.0).astype(np.uint8)
    y = digits.target.astype(np.int64)
    tr, calib, val = split(y)
    assert not set(val) & set(tr) and set(calib) <= set(tr)
    write_pngs(images, y, calib, DATA / "calib")
    write_pngs(images, y, val, DATA / "val")
    print(f"train {len(tr)}  calib {len(calib)}  val {len(val)}")

    model = train(augmented(images[tr]), np.tile(y[tr], 9))
    MODEL_PATH.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(to_onnx(model), MODEL_PATH)
    onnx.checker.check_model(onnx.load(MODEL_PATH), full_check=True)
    print(f"saved {MODEL_PATH.relative_to(HERE)} ({MODEL_PATH.stat().st_size} bytes)")
    print(f"float top-1 on data/val: {evaluate(MODEL_PATH, DATA / 'val', model):.4f}")


if __name__ == "__main__":
    main()
