"""Render the benchmark's image sets offline, deterministically, from real fonts, photos and text.

Fonts: the DejaVu TTFs shipped in matplotlib. Photos: scikit-image's bundled images (files
read directly; no download). Text: license texts shipped in installed packages and the Zen
of Python. Every image depends only on (set seed, index), so sets of different sizes share
their first images and re-rendering is reproducible.

    python benchmarks/data.py --work benchmarks/work --eval 600 --calib 512
"""

from __future__ import annotations

import argparse
import ast
import codecs
import hashlib
import importlib.metadata
import importlib.util
import json
import re
import shutil
from collections.abc import Callable
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from common import MODELS, list_frames, list_images, package_dir, write_json

VERSION = 2  # bump when rendering changes: cached sets are re-rendered
PHOTOS = [
    "astronaut.png",
    "brick.png",
    "camera.png",
    "chelsea.png",
    "coffee.png",
    "coins.png",
    "grass.png",
    "gravel.png",
    "hubble_deep_field.jpg",
    "motorcycle_left.png",  # shows lettering: not used behind detection scenes
    "rocket.jpg",
    "moon.png",
    "ihc.png",
    "clock_motion.png",
    "retina.jpg",
    "cell.png",
]
TEXT_SOURCES = [
    ("numpy", "LICENSE.txt"),
    ("scipy", "LICENSE.txt"),
    ("matplotlib", "LICENSE"),
    ("scikit-image", "LICENSE.txt"),
    ("pillow", "LICENSE"),
]
# Seeds of the four sets: evaluation and calibration never share a seed.
SEEDS = {"orientation/eval": 1001, "orientation/calib": 2002, "detection/eval": 3003}
SEEDS["detection/calib"] = 4004


# -- real material ------------------------------------------------------------------------------
@cache
def words() -> tuple[str, ...]:
    """English prose available offline: the Zen of Python and license texts of installed packages."""
    source = Path(importlib.util.find_spec("this").origin).read_text(encoding="utf-8")
    texts = [codecs.decode(ast.literal_eval(_assigned(source, "s")), "rot13")]
    for dist, name in TEXT_SOURCES:
        for file in importlib.metadata.distribution(dist).files or []:
            if file.name == name and "dist-info" in str(file):
                texts.append(Path(file.locate()).read_text(encoding="utf-8", errors="ignore"))
                break
    text = " ".join(texts)
    text = re.sub(r"[^A-Za-z0-9.,;:'()\-/ ]+", " ", text)
    return tuple(w for w in text.split() if not set(w) <= set("-=*_.") and len(w) < 18)


def _assigned(source: str, name: str) -> str:
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == name:
            return ast.unparse(node.value)
    raise ValueError(name)


@cache
def font_files() -> tuple[Path, ...]:
    folder = package_dir("matplotlib") / "mpl-data" / "fonts" / "ttf"
    return tuple(sorted(p for p in folder.glob("DejaVu*.ttf") if "Display" not in p.name))


@cache
def font(index: int, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(font_files()[index]), size)


@cache
def photos() -> tuple[Image.Image, ...]:
    folder = package_dir("skimage") / "data"
    return tuple(Image.open(folder / name).convert("RGB") for name in PHOTOS)


def material_digest() -> str:
    """sha256 of the words, fonts and photos used: changes when the installed material changes."""
    return digest(words(), font_files(), photos())


def digest(text: tuple[str, ...], fonts: list[Path] | tuple[Path, ...], images) -> str:
    """sha256 (16 hex digits) of a set's words, font files and photos."""
    h = hashlib.sha256(" ".join(text).encode())
    for f in fonts:
        h.update(Path(f).read_bytes())
    for p in images:
        h.update(p.tobytes())
    return h.hexdigest()[:16]


# -- drawing helpers ----------------------------------------------------------------------------
def _phrase(rng: np.random.Generator, count: int) -> str:
    start = int(rng.integers(0, len(words()) - count))
    return " ".join(words()[start : start + count])


def _photo_crop(
    rng: np.random.Generator, w: int, h: int, exclude: tuple[str, ...] = ()
) -> Image.Image:
    """A random crop of a random photo (not one of `exclude`), scaled to cover (w, h)."""
    choices = [p for name, p in zip(PHOTOS, photos()) if name not in exclude]
    photo = choices[int(rng.integers(len(choices)))]
    zoom = max(w / photo.width, h / photo.height) * rng.uniform(1.0, 1.8)
    photo = photo.resize(
        (max(w, round(photo.width * zoom)), max(h, round(photo.height * zoom))),
        Image.Resampling.BILINEAR,
    )
    x = int(rng.integers(0, photo.width - w + 1))
    y = int(rng.integers(0, photo.height - h + 1))
    return photo.crop((x, y, x + w, y + h))


def _paper(rng: np.random.Generator, w: int, h: int, texture: float) -> Image.Image:
    """Paper-toned background, optionally blended with a photo texture, with mild noise."""
    tone = np.array([rng.uniform(225, 255), rng.uniform(220, 250), rng.uniform(205, 245)])
    base = np.broadcast_to(tone, (h, w, 3)).astype(np.float32)
    if texture > 0:
        photo = np.asarray(_photo_crop(rng, w, h), dtype=np.float32)
        base = base * (1 - texture) + photo * texture
    base = base + rng.normal(0, 3.0, (h, w, 1))
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))


def _wrap(text_words: list[str], fnt: ImageFont.FreeTypeFont, width: int) -> list[str]:
    lines, line = [], ""
    for word in text_words:
        candidate = f"{line} {word}".strip()
        if line and fnt.getlength(candidate) > width:
            lines.append(line)
            line = word
        else:
            line = candidate
    if line:
        lines.append(line)
    return lines


# -- orientation: document pages ------------------------------------------------------------------
def render_page(rng: np.random.Generator) -> Image.Image:
    """An upright document page: a title and paragraphs in one or two columns, sometimes with
    photos; some pages are mostly a figure with a caption, some hold only a few short lines."""
    landscape = rng.random() < 0.15
    w = int(rng.integers(560, 681))
    h = int(w * rng.uniform(1.28, 1.45))
    if landscape:
        w, h = h, w
    page = _paper(rng, w, h, texture=float(rng.uniform(0.05, 0.3)) if rng.random() < 0.5 else 0.0)
    draw = ImageDraw.Draw(page)
    faded = rng.random() < 0.15
    ink = tuple(int(v) for v in (rng.integers(60, 140, 3) if faded else rng.integers(0, 70, 3)))
    margin = int(rng.integers(30, 70))
    kind = rng.choice(["text", "figure", "sparse"], p=[0.6, 0.25, 0.15])
    columns = 2 if kind == "text" and w > 620 and rng.random() < 0.4 else 1
    gap = 24
    col_w = (w - 2 * margin - gap * (columns - 1)) // columns
    size = int(rng.integers(10, 24))
    fnt = font(int(rng.integers(0, len(font_files()))), size)
    leading = int(size * rng.uniform(1.25, 1.6))
    y = margin
    title = font(int(rng.integers(0, len(font_files()))), int(size * rng.uniform(1.5, 2.2)))
    for line in _wrap(_phrase(rng, int(rng.integers(3, 8))).split(), title, w - 2 * margin)[:2]:
        draw.text((margin, y), line, fill=ink, font=title)
        y += int(title.size * 1.3)
    y += leading
    if kind == "sparse":  # a letter or cover page: a few short lines, much white space
        for _ in range(int(rng.integers(3, 9))):
            y += int(leading * rng.uniform(1.0, 4.0))
            if y >= h - margin - leading:
                break
            x = margin + int(rng.integers(0, w // 3))
            text = _wrap(_phrase(rng, int(rng.integers(2, 8))).split(), fnt, w - margin - x)[0]
            draw.text((x, y), text, fill=ink, font=fnt)
        return _finish(rng, page)
    if kind == "figure":  # a large figure, its caption, then text again
        pw = int((w - 2 * margin) * rng.uniform(0.6, 1.0))
        ph = int((h - y - margin) * rng.uniform(0.45, 0.7))
        page.paste(_photo_crop(rng, pw, ph), ((w - pw) // 2, y))
        y += ph + leading // 2
        for line in _wrap(_phrase(rng, int(rng.integers(8, 30))).split(), fnt, pw)[:3]:
            draw.text(((w - pw) // 2, y), line, fill=ink, font=fnt)
            y += leading
        y += leading
    top = y
    for col in range(columns):
        x0, y = margin + col * (col_w + gap), top
        while y < h - margin - leading:
            if kind == "text" and rng.random() < 0.12 and h - margin - y > 160:
                pw = int(col_w * rng.uniform(0.5, 0.95))
                ph = int(min(h - margin - y - leading, rng.uniform(80, 220)))
                page.paste(_photo_crop(rng, pw, ph), (x0 + (col_w - pw) // 2, y))
                y += ph + leading
                continue
            indent = int(size * 2) if rng.random() < 0.5 else 0
            lines = _wrap(_phrase(rng, int(rng.integers(20, 90))).split(), fnt, col_w - indent)
            for i, line in enumerate(lines):
                if y >= h - margin - leading:
                    break
                draw.text((x0 + (indent if i == 0 else 0), y), line, fill=ink, font=fnt)
                y += leading
            y += int(leading * rng.uniform(0.3, 1.0))
    return _finish(rng, page)


def _finish(rng: np.random.Generator, page: Image.Image) -> Image.Image:
    """Scanner softness on some pages."""
    if rng.random() < 0.3:
        page = page.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 0.8))))
    return page


# Image.transpose operations for the four classes, in the model's label order 0/90/180/270:
# the model's "90" is a page turned 90 degrees clockwise, i.e. PIL's ROTATE_270 (PIL turns
# counter-clockwise); checked against the float model.
ROTATIONS = [None, Image.Transpose.ROTATE_270, Image.Transpose.ROTATE_180]
ROTATIONS.append(Image.Transpose.ROTATE_90)


def rotate(page: Image.Image, label: int) -> Image.Image:
    op = ROTATIONS[label]
    return page if op is None else page.transpose(op)


def render_orientation(
    root: Path,
    pages: int,
    frames: int,
    page: Callable[[np.random.Generator], Image.Image] | None = None,
    seeds: tuple[int, int] = (SEEDS["orientation/eval"], SEEDS["orientation/calib"]),
) -> None:
    """eval/<label>/<page>.png for all four rotations of `pages` pages (labels 0..3 = 0/90/180/270);
    calib_<frames>/<i>.png: other pages, each at a random rotation. `page` draws an upright page
    from a generator seeded with (seed, index): render_page by default."""
    page = page or render_page
    for label in range(4):
        (root / "eval" / str(label)).mkdir(parents=True, exist_ok=True)
    for i in range(pages):
        files = [root / "eval" / str(label) / f"{i:04d}.png" for label in range(4)]
        if all(f.is_file() for f in files):
            continue
        upright = page(np.random.default_rng([seeds[0], i]))
        for label, file in enumerate(files):
            rotate(upright, label).save(file)
    calib = root / f"calib_{frames}"
    calib.mkdir(parents=True, exist_ok=True)
    for i in range(frames):
        file = calib / f"{i:04d}.png"
        if not file.is_file():
            rng = np.random.default_rng([seeds[1], i])
            rotate(page(rng), int(rng.integers(4))).save(file)


# -- detection: text lines over photos and paper ---------------------------------------------------
DET_SIZE = 480


def render_scene(rng: np.random.Generator) -> tuple[Image.Image, list[list[int]]]:
    """A 480x480 scene with horizontal text lines; returns it and the lines' ink boxes."""
    s = DET_SIZE
    if rng.random() < 0.55:
        image = _photo_crop(rng, s, s, exclude=("motorcycle_left.png",))
    else:
        image = _paper(rng, s, s, texture=float(rng.uniform(0.0, 0.4)))
    pixels = np.asarray(image, dtype=np.float32).mean(axis=2)
    boxes: list[list[int]] = []
    taken: list[tuple[int, int, int, int]] = []
    wanted = int(rng.integers(3, 10))
    for _ in range(60):
        if len(boxes) == wanted:
            break
        fnt = font(int(rng.integers(0, len(font_files()))), int(rng.integers(14, 38)))
        text = _phrase(rng, int(rng.integers(1, 6)))
        x0, y0, x1, y1 = fnt.getbbox(text)
        tw, th = x1 - x0, y1 - y0
        if tw > s - 16:
            continue
        x = int(rng.integers(8, s - 8 - tw + 1)) - x0
        y = int(rng.integers(8, s - 8 - th + 1)) - y0
        box = (x + x0, y + y0, x + x1, y + y1)
        pad = int(fnt.size * 0.6)
        grown = (box[0] - pad, box[1] - pad, box[2] + pad, box[3] + pad)
        if any(_overlap(grown, t) for t in taken):
            continue
        region = pixels[box[1] : box[3], box[0] : box[2]]
        # A plate (label, sign) behind text on busy or mid-grey backgrounds keeps it legible.
        plate = abs(region.mean() - 128) < 40 or (region.std() > 45 and rng.random() < 0.6)
        mask = Image.new("L", (s, s), 0)
        ImageDraw.Draw(mask).text((x, y), text, fill=255, font=fnt)
        ys, xs = np.nonzero(np.asarray(mask))
        if xs.size == 0:
            continue
        draw = ImageDraw.Draw(image, "RGBA")
        light = region.mean() > 128
        if plate:
            p = int(fnt.size * 0.3)
            fill = (235, 235, 225, 220) if light else (20, 20, 30, 220)
            draw.rectangle((box[0] - p, box[1] - p, box[2] + p, box[3] + p), fill=fill)
        lo, hi = (0, 60) if light else (210, 256)
        ink = tuple(int(v) for v in rng.integers(lo, hi, 3))
        draw.text((x, y), text, fill=ink, font=fnt)
        taken.append(grown)
        # Line box: the ink's horizontal extent, the font's full line height (ascent + descent)
        # vertically, as text lines are usually annotated (covering the ink when it overhangs).
        ascent, descent = fnt.getmetrics()
        top, bottom = min(y, int(ys.min())), max(y + ascent + descent, int(ys.max()) + 1)
        boxes.append([int(xs.min()), top, int(xs.max()) + 1, bottom])
    if rng.random() < 0.25:
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 0.9))))
    return image, boxes


def _overlap(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def render_detection(
    root: Path,
    images: int,
    frames: int,
    scene: Callable[[np.random.Generator], tuple[Image.Image, list[list[int]]]] | None = None,
    seeds: tuple[int, int] = (SEEDS["detection/eval"], SEEDS["detection/calib"]),
) -> None:
    """eval/<i>.png with eval_gt.json ({file name: [[x0, y0, x1, y1], ...]}); calib_<frames>/.
    `scene` draws an image and its line boxes: render_scene by default."""
    scene = scene or render_scene
    gt_file = root / "eval_gt.json"
    files = [root / "eval" / f"{i:04d}.png" for i in range(images)]
    if not (gt_file.is_file() and all(f.is_file() for f in files)):
        files[0].parent.mkdir(parents=True, exist_ok=True)
        gt = {}
        for i, file in enumerate(files):
            image, boxes = scene(np.random.default_rng([seeds[0], i]))
            image.save(file)
            gt[file.name] = boxes
        write_json(gt_file, gt)
    calib = root / f"calib_{frames}"
    calib.mkdir(parents=True, exist_ok=True)
    for i in range(frames):
        file = calib / f"{i:04d}.png"
        if not file.is_file():
            scene(np.random.default_rng([seeds[1], i]))[0].save(file)


# -- entry point ---------------------------------------------------------------------------------
def image_digest(file: Path) -> str:
    return hashlib.sha256(np.asarray(Image.open(file).convert("RGB")).tobytes()).hexdigest()


def frame_digest(file: Path) -> str:
    """The arrays of an .npz frame (names and values), hashed."""
    h = hashlib.sha256()
    with np.load(file) as arrays:
        for name in sorted(arrays.files):
            h.update(name.encode())
            h.update(np.ascontiguousarray(arrays[name]).tobytes())
    return h.hexdigest()


def check_disjoint(eval_dir: Path, calib_dir: Path) -> None:
    """Fail when an evaluation image (same pixels) or .npz frame (same arrays) also appears in
    the calibration set."""
    for listing, digest in ((list_images, image_digest), (list_frames, frame_digest)):
        seen = {digest(f) for f in listing(eval_dir)}
        shared = [f.name for f in listing(calib_dir) if digest(f) in seen]
        assert not shared, f"calibration frames also in the evaluation set: {shared[:5]}"


def render_set(root: Path, manifest: dict, frames: int, render: Callable[[], None]) -> Path:
    """Render one set under `root` unless it is there with the same manifest (a stale set is
    removed first), check that calibration and evaluation share no image, stamp it."""
    stamp = root / "manifest.json"
    old = json.loads(stamp.read_text()) if stamp.is_file() else None
    if old is not None and {k: old.get(k) for k in manifest} != manifest:
        shutil.rmtree(root)
    render()
    check_disjoint(root / "eval", root / f"calib_{frames}")
    write_json(stamp, manifest)
    return root


def prepare(work: Path, model: str, eval_count: int, frames: int) -> Path:
    """Render (or reuse) the sets of one model under work/data/<model>-<eval_count>/ (the sets
    of the photo, recognition and box models: photos.py, lines.py, boxes.py)."""
    if MODELS[model].data != "rendered":  # the module named by the model's spec
        module = importlib.import_module(MODELS[model].data)
        return module.prepare(work, model, eval_count, frames, held_out=False)
    root = work / "data" / f"{model}-{eval_count}"
    manifest = {"version": VERSION, "material": material_digest(), "eval": eval_count}
    if model == "orientation":
        return render_set(
            root, manifest, frames, lambda: render_orientation(root, eval_count // 4, frames)
        )
    return render_set(root, manifest, frames, lambda: render_detection(root, eval_count, frames))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path(__file__).parent / "work")
    parser.add_argument("--models", default="orientation,detection")
    parser.add_argument("--eval", type=int, default=0, help="evaluation images (0: model default)")
    parser.add_argument("--calib", type=int, default=64)
    args = parser.parse_args()
    for model in args.models.split(","):
        count = args.eval or {"orientation": 600, "detection": 100}.get(model, 200)
        print(prepare(args.work, model, count, args.calib))


if __name__ == "__main__":
    main()
