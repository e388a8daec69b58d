"""Text-line images for the recognition model (rapidocr's PP-OCRv4 recognizer, 3x48xW).

Each image is one text line as a detector would crop it (the line's ink with a small margin),
laid out as rapidocr's resize_norm_img lays it out (common.rec_canvas): scaled to height 48,
at the left of a 48x320 canvas, grey to the right. Its ground truth is the rendered string
(eval_gt.json: {file name: text}); every character is in the model's dictionary (Latin letters,
digits and . , ; : ' ( ) - / %; the space is the dictionary's last class).

Tuning set: data.py's material (DejaVu fonts, the license texts and the Zen of Python, its
photos and paper), dark ink on paper or on a photo (a plate behind the text on busy photos),
some lines blurred. Held-out set: heldout.py's material (STIX and Computer Modern fonts,
standard-library docstrings, its photos), coloured, light-on-dark, outlined and shadowed ink,
tinted paper or photo backgrounds, a small tilt, uneven light, blur, JPEG quality 35-90.
Every image depends only on (set seed, index); calibration and evaluation use different seeds
and are asserted to share no image (data.check_disjoint).

    python benchmarks/lines.py --work benchmarks/work [--eval 300] [--calib 64] [--held-out]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont

import data
import heldout
from common import REC_HEIGHT, REC_WIDTH, rec_canvas, write_json

VERSION = 1  # bump when rendering changes: cached sets are re-rendered
# Seeds of the four sets: no two sets share a seed (nor one of data.py's, heldout.py's,
# photos.py's or boxes.py's).
SEEDS = {"tuning/eval": 11011, "tuning/calib": 12012}
SEEDS |= {"heldout/eval": 13013, "heldout/calib": 14014}
MAX_RATIO = REC_WIDTH / REC_HEIGHT  # widest line (w / h) that fits rapidocr's 320 columns


# -- material -----------------------------------------------------------------------------------
def _words(held_out: bool) -> tuple[str, ...]:
    """The set's words, without '$' (cmti10 draws it as a pound sign)."""
    return tuple(w for w in (heldout.words() if held_out else data.words()) if "$" not in w)


def _font(rng: np.random.Generator, held_out: bool, size: int) -> ImageFont.FreeTypeFont:
    if held_out:
        return heldout.font(int(rng.integers(len(heldout.FONTS))), size)
    return data.font(int(rng.integers(len(data.font_files()))), size)


def _text(rng: np.random.Generator, held_out: bool, fnt: ImageFont.FreeTypeFont) -> str:
    """1-5 consecutive words that fit one line (ink width at most MAX_RATIO x line height)."""
    words = _words(held_out)
    count = int(rng.integers(1, 6))
    start = int(rng.integers(0, len(words) - count))
    chosen = list(words[start : start + count])
    limit = MAX_RATIO * sum(fnt.getmetrics()) * 0.9
    while len(chosen) > 1 and fnt.getlength(" ".join(chosen)) > limit:
        chosen.pop()
    text = chosen[0] if len(chosen) == 1 else " ".join(chosen)
    while len(text) > 1 and fnt.getlength(text) > limit:  # one long word in a large font
        text = text[:-1]
    return text


def material_digest(held_out: bool) -> str:
    return heldout.material_digest() if held_out else data.material_digest()


# -- rendering ----------------------------------------------------------------------------------
def _background(rng: np.random.Generator, held_out: bool, w: int, h: int) -> Image.Image:
    if held_out:
        if rng.random() < 0.35:  # tinted paper: not data.py's paper tones
            tone = rng.uniform(150, 255, 3) * rng.uniform(0.7, 1.0, 3)
            base = np.broadcast_to(tone, (h, w, 3)) + rng.normal(0, 4.0, (h, w, 1))
            return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
        return heldout._photo(rng, w, h, scenes=True)
    if rng.random() < 0.5:
        return data._paper(rng, w, h, texture=float(rng.uniform(0.0, 0.4)))
    return data._photo_crop(rng, w, h, exclude=("motorcycle_left.png",))


def render_line(rng: np.random.Generator, held_out: bool) -> tuple[Image.Image, str]:
    """One 48x320 line image and its text."""
    fnt = _font(rng, held_out, int(rng.integers(18, 44)))
    text = _text(rng, held_out, fnt)
    ascent, descent = fnt.getmetrics()
    x0, _, x1, _ = fnt.getbbox(text)
    # A detector's crop: the ink's width and the font's line height, plus a margin.
    mx = int(rng.integers(2, max(3, fnt.size // 2)))
    my = int(rng.integers(1, max(2, fnt.size // 4)))
    w, h = x1 - x0 + 2 * mx, ascent + descent + 2 * my
    image = _background(rng, held_out, w, h)
    gray = float(np.asarray(image, dtype=np.float32).mean())
    busy = float(np.asarray(image.convert("L"), dtype=np.float32).std()) > 40
    draw = ImageDraw.Draw(image, "RGBA")
    light = gray > 128
    stroke, stroke_fill = 0, None
    if held_out:
        style = rng.choice(["plain", "outline", "shadow"], p=[0.5, 0.25, 0.25])
        light_ink = tuple(int(v) for v in rng.integers(200, 256, 3))
        ink = heldout._ink(rng) if light else light_ink
        if style == "outline" or (busy and style == "plain"):
            stroke, stroke_fill = 1, (255, 255, 255) if light else (0, 0, 0)
        if style == "shadow":
            shadow = (0, 0, 0, 150) if light else (255, 255, 255, 150)
            draw.text((mx - x0 + 2, my + 2), text, fill=shadow, font=fnt)
    else:
        if busy or abs(gray - 128) < 40:  # a label behind the text keeps it legible
            fill = (235, 235, 225, 220) if light else (20, 20, 30, 220)
            draw.rectangle((0, 0, w, h), fill=fill)
        lo, hi = (0, 70) if light else (200, 256)
        ink = tuple(int(v) for v in rng.integers(lo, hi, 3))
    draw.text((mx - x0, my), text, fill=ink, font=fnt, stroke_width=stroke, stroke_fill=stroke_fill)
    if held_out:
        if rng.random() < 0.5:  # a small tilt, as a slightly skewed crop
            angle = float(rng.uniform(-2.0, 2.0))
            image = image.rotate(
                angle, resample=Image.Resampling.BICUBIC, fillcolor=image.getpixel((0, 0))
            )
        ramp = np.linspace(rng.uniform(0.6, 1.0), rng.uniform(0.8, 1.15), w, dtype=np.float32)
        pixels = np.asarray(image, dtype=np.float32) * ramp[None, :, None]
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        image = ImageEnhance.Contrast(image).enhance(float(rng.uniform(0.7, 1.2)))
        if rng.random() < 0.4:
            image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.0))))
        image = heldout._jpeg(rng, image, (35, 91))
    elif rng.random() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 0.8))))
    return rec_canvas(image), text


def _render_set(
    folder: Path, count: int, seed: int, held_out: bool, gt_file: Path | None = None
) -> None:
    """folder/<i>.png for i < count; gt_file (when given): {file name: text}."""
    folder.mkdir(parents=True, exist_ok=True)
    files = [folder / f"{i:04d}.png" for i in range(count)]
    if all(f.is_file() for f in files) and (gt_file is None or gt_file.is_file()):
        return
    gt = {}
    for i, file in enumerate(files):
        image, text = render_line(np.random.default_rng([seed, i]), held_out)
        image.save(file)
        gt[file.name] = text
    if gt_file is not None:
        write_json(gt_file, gt)


# -- entry point ---------------------------------------------------------------------------------
def prepare(work: Path, model: str, eval_count: int, frames: int, held_out: bool) -> Path:
    """Render (or reuse) the recognition sets: eval/<i>.png with eval_gt.json and
    calib_<frames>/<i>.png under work/data/<model>-<eval_count>/ or <model>-heldout-<n>/."""
    root = work / "data" / f"{model}-{'heldout-' if held_out else ''}{eval_count}"
    name = "heldout" if held_out else "tuning"
    manifest = {
        "version": VERSION,
        "material": material_digest(held_out),
        "eval": eval_count,
        "set": name,
    }

    def render() -> None:
        seeds = SEEDS[f"{name}/eval"], SEEDS[f"{name}/calib"]
        _render_set(root / "eval", eval_count, seeds[0], held_out, root / "eval_gt.json")
        _render_set(root / f"calib_{frames}", frames, seeds[1], held_out)

    return data.render_set(root, manifest, frames, render)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path(__file__).parent / "work")
    parser.add_argument("--eval", type=int, default=300, help="evaluation lines")
    parser.add_argument("--calib", type=int, default=64)
    parser.add_argument("--held-out", action="store_true")
    args = parser.parse_args()
    print(prepare(args.work, "recognition", args.eval, args.calib, args.held_out))


if __name__ == "__main__":
    main()
