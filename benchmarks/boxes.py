"""Box-detection images for the YOLOX model (ddddocr's common_det.onnx, 416x416, one class).

ddddocr's detector finds the characters of click captchas: single glyphs scattered over a
photo, each turned a little, in varied colours. These scenes are that: 416x416 (the model's
input, so ddddocr's letterbox is an identity), 3-9 separate characters whose ink is 32-48 px
tall (held-out 28-54: the model misses much smaller or larger glyphs), each one box of ground
truth: the extent of its ink (alpha > 64 of the turned glyph) and MARGIN (3) pixels around
it, as the model draws its boxes, in eval_gt.json ({file name: [[x0, y0, x1, y1], ...]},
data.py's layout).

Tuning set: data.py's material (DejaVu fonts; the letters and digits of its license texts and
the Zen of Python; its photos, or its paper), plain glyphs turned up to 25 degrees, ink
contrasting with the background, some scenes blurred. Held-out set: heldout.py's material
(STIX and Computer Modern fonts, the letters and digits of standard-library docstrings, its
photos without text), glyphs turned up to 40 degrees, coloured, outlined or shadowed, brightness
changes, blur, JPEG quality 40-95. Every image depends only on (set seed, index); calibration
and evaluation use different seeds and are asserted to share no image (data.check_disjoint).

    python benchmarks/boxes.py --work benchmarks/work [--eval 200] [--calib 64] [--held-out]
"""

from __future__ import annotations

import argparse
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont

import data
import heldout
from common import YOLOX_SIZE

VERSION = 1  # bump when rendering changes: cached sets are re-rendered
# Seeds of the four sets: no two sets share a seed (nor one of the other renderers').
SEEDS = {"tuning/eval": 15015, "tuning/calib": 16016}
SEEDS |= {"heldout/eval": 17017, "heldout/calib": 18018}
INK_ALPHA = 64  # a pixel of the turned glyph counts as ink above this alpha (of 255)
# The ground-truth box: the ink's extent and MARGIN pixels around it, as the model draws its
# boxes (on the tuning set they measure a median 5-6 px wider and taller than the ink).
MARGIN = 3
HEIGHTS = (32, 48)  # ink height of a glyph before turning, pixels: tuning set
HELD_OUT_HEIGHTS = (28, 54)  # held-out set


# -- material -----------------------------------------------------------------------------------
@cache
def characters(held_out: bool) -> str:
    """The letters and digits of the set's text, in text order (frequent letters come often)."""
    words = heldout.words() if held_out else data.words()
    return "".join(c for w in words for c in w if c.isascii() and c.isalnum())


def _font_at(held_out: bool, index: int, size: int) -> ImageFont.FreeTypeFont:
    return heldout.font(index, size) if held_out else data.font(index, size)


def material_digest(held_out: bool) -> str:
    return heldout.material_digest() if held_out else data.material_digest()


# -- rendering ----------------------------------------------------------------------------------
def _glyph(
    rng: np.random.Generator, held_out: bool, char: str, fnt: ImageFont.FreeTypeFont, light: bool
) -> tuple[Image.Image, Image.Image]:
    """(RGBA layer with the styled glyph, L mask of its ink), both turned."""
    x0, y0, x1, y1 = fnt.getbbox(char)
    pad = 6 + fnt.size // 6
    size = (x1 - x0 + 2 * pad, y1 - y0 + 2 * pad)
    origin = (pad - x0, pad - y0)
    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    stroke, outline = 0, None
    if held_out:
        ink = tuple(int(v) for v in rng.integers(200, 256, 3)) if light else heldout._ink(rng)
        style = rng.choice(["plain", "outline", "shadow"], p=[0.4, 0.35, 0.25])
        if style == "outline":
            stroke = max(1, fnt.size // 20)
            outline = (0, 0, 0, 255) if light else (255, 255, 255, 255)
        elif style == "shadow":
            shadow = (0, 0, 0, 170) if light else (255, 255, 255, 170)
            draw.text((origin[0] + 2, origin[1] + 2), char, fill=shadow, font=fnt)
    else:
        lo, hi = (150, 256) if light else (0, 90)
        ink = tuple(int(v) for v in rng.integers(lo, hi, 3))
    draw.text(origin, char, fill=ink + (255,), font=fnt, stroke_width=stroke, stroke_fill=outline)
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).text(origin, char, fill=255, font=fnt, stroke_width=stroke)
    limit = 40.0 if held_out else 25.0
    angle = float(rng.uniform(-limit, limit))
    layer = layer.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)
    mask = mask.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)
    return layer, mask


def render_scene(rng: np.random.Generator, held_out: bool) -> tuple[Image.Image, list[list[int]]]:
    """A 416x416 scene with scattered characters and the boxes of their ink."""
    s = YOLOX_SIZE
    if held_out:
        image = heldout._photo(rng, s, s, scenes=True)
        if rng.random() < 0.4:
            image = ImageEnhance.Brightness(image).enhance(float(rng.uniform(0.5, 1.4)))
    elif rng.random() < 0.7:
        image = data._photo_crop(rng, s, s, exclude=("motorcycle_left.png",))
    else:
        image = data._paper(rng, s, s, texture=float(rng.uniform(0.0, 0.5)))
    gray = np.asarray(image.convert("L"), dtype=np.float32)
    text = characters(held_out)
    boxes: list[list[int]] = []
    taken: list[tuple[int, ...]] = []
    wanted = int(rng.integers(3, 10))
    for _ in range(80):
        if len(boxes) == wanted:
            break
        char = text[int(rng.integers(len(text)))]
        # the font size that gives the glyph an ink height of `tall` pixels (before turning)
        tall = float(rng.uniform(*(HELD_OUT_HEIGHTS if held_out else HEIGHTS)))
        index = int(rng.integers(len(heldout.FONTS) if held_out else len(data.font_files())))
        x0, y0, x1, y1 = _font_at(held_out, index, 100).getbbox(char)
        fnt = _font_at(held_out, index, int(np.clip(round(100 * tall / (y1 - y0)), 12, 160)))
        probe = fnt.getbbox(char)
        w, h = probe[2] - probe[0] + 40, probe[3] - probe[1] + 40
        x = int(rng.integers(0, s - w + 1))
        y = int(rng.integers(0, s - h + 1))
        light = float(gray[y : y + h, x : x + w].mean()) < 110
        layer, mask = _glyph(rng, held_out, char, fnt, light)
        ys, xs = np.nonzero(np.asarray(mask) > INK_ALPHA)
        if xs.size == 0:
            continue
        # place the layer so that the ink's centre is at the probe window's centre
        left = x + w // 2 - (int(xs.min()) + int(xs.max())) // 2
        top = y + h // 2 - (int(ys.min()) + int(ys.max())) // 2
        box = (left + int(xs.min()) - MARGIN, top + int(ys.min()) - MARGIN)
        box += (left + int(xs.max()) + 1 + MARGIN, top + int(ys.max()) + 1 + MARGIN)
        if box[0] < 2 or box[1] < 2 or box[2] > s - 2 or box[3] > s - 2:
            continue
        gap = max(6, fnt.size // 4)
        grown = (box[0] - gap, box[1] - gap, box[2] + gap, box[3] + gap)
        if any(data._overlap(grown, t) for t in taken):
            continue
        image.paste(layer, (left, top), layer)
        taken.append(grown)
        boxes.append(list(box))
    if held_out:
        if rng.random() < 0.3:
            image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.0))))
        image = heldout._jpeg(rng, image, (40, 96))
    elif rng.random() < 0.25:
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 0.8))))
    return image, boxes


# -- entry point ---------------------------------------------------------------------------------
def prepare(work: Path, model: str, eval_count: int, frames: int, held_out: bool) -> Path:
    """Render (or reuse) the box sets: eval/<i>.png with eval_gt.json and calib_<frames>/<i>.png
    under work/data/<model>-<eval_count>/ or <model>-heldout-<eval_count>/."""
    root = work / "data" / f"{model}-{'heldout-' if held_out else ''}{eval_count}"
    name = "heldout" if held_out else "tuning"
    manifest = {
        "version": VERSION,
        "material": material_digest(held_out),
        "eval": eval_count,
        "set": name,
    }
    seeds = SEEDS[f"{name}/eval"], SEEDS[f"{name}/calib"]
    scene = lambda rng: render_scene(rng, held_out)  # noqa: E731
    return data.render_set(
        root,
        manifest,
        frames,
        lambda: data.render_detection(root, eval_count, frames, scene, seeds),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path(__file__).parent / "work")
    parser.add_argument("--eval", type=int, default=200, help="evaluation images")
    parser.add_argument("--calib", type=int, default=64)
    parser.add_argument("--held-out", action="store_true")
    args = parser.parse_args()
    print(prepare(args.work, "yolox", args.eval, args.calib, args.held_out))


if __name__ == "__main__":
    main()
