"""Held-out image sets: other material, another renderer, never used to choose a default.

The tuning sets (data.py) draw DejaVu fonts, license texts and 15 scikit-image photos with one
page/scene generator. These sets share none of that:
- fonts: matplotlib's STIX and Computer Modern TTFs;
- text: docstrings of Python's standard library (read from source, nothing imported);
- photos: scikit-image images data.py does not use (including the scanned `page.png` and
  `text.png`) and matplotlib's sample photos;
- renderer: documents are forms, tables, slides, receipts and letters photographed on a desk
  (page pasted on a photo, small skew, uneven light, JPEG); scenes have rotated, outlined and
  shadowed text of wider size range, coloured ink and JPEG artefacts.

Layout on disk is data.py's (eval/, calib_<N>/, eval_gt.json), under
work/data/<model>-heldout-<eval images>/, so the harness evaluates either set unchanged.
"""

from __future__ import annotations

import ast
import importlib
import io
import re
import sysconfig
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont

import data
from common import MODELS, package_dir
from data import DET_SIZE, _overlap, _wrap

VERSION = 2  # bump when rendering changes: cached sets are re-rendered
FONTS = ["STIXGeneral", "STIXGeneralBol", "STIXGeneralItalic", "STIXGeneralBolIta"]
FONTS += ["cmr10", "cmss10", "cmtt10", "cmb10", "cmti10"]
SKIMAGE_PHOTOS = ["horse.png", "color.png", "microaneurysms.png", "motorcycle_right.png"]
SKIMAGE_PHOTOS += ["page.png", "text.png", "logo.png", "phantom.png"]
MPL_PHOTOS = ["grace_hopper.jpg", "Minduka_Present_Blue_Pack.png"]
TEXT_PHOTOS = {"page.png", "text.png", "logo.png"}
STDLIB_MODULES = ["argparse", "collections/__init__", "csv", "difflib", "email/message"]
STDLIB_MODULES += ["fractions", "heapq", "json/__init__", "logging/__init__", "pathlib"]
STDLIB_MODULES += ["shutil", "statistics", "string", "textwrap", "zipfile"]
SEEDS = {"orientation/eval": 5005, "orientation/calib": 6006}
SEEDS |= {"detection/eval": 7007, "detection/calib": 8008}


# -- material -----------------------------------------------------------------------------------
@cache
def words() -> tuple[str, ...]:
    """Docstring prose of standard-library modules, read from their source files."""
    lib = Path(sysconfig.get_paths()["stdlib"])
    texts = []
    for name in STDLIB_MODULES:
        tree = ast.parse((lib / f"{name}.py").read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef):
                doc = ast.get_docstring(node)
                if doc:
                    texts.append(doc)
    text = re.sub(r"[^A-Za-z0-9.,;:'()\-/ $%]+", " ", " ".join(texts))
    return tuple(w for w in text.split() if not set(w) <= set("-=*_.") and len(w) < 18)


@cache
def font(index: int, size: int) -> ImageFont.FreeTypeFont:
    folder = package_dir("matplotlib") / "mpl-data" / "fonts" / "ttf"
    return ImageFont.truetype(str(folder / f"{FONTS[index]}.ttf"), size)


@cache
def photos() -> tuple[Image.Image, ...]:
    sk = package_dir("skimage") / "data"
    mpl = package_dir("matplotlib") / "mpl-data" / "sample_data"
    files = [sk / n for n in SKIMAGE_PHOTOS] + [mpl / n for n in MPL_PHOTOS]
    return tuple(Image.open(f).convert("RGB") for f in files)


def material_digest() -> str:
    fonts = [font(i, 10).path for i in range(len(FONTS))]
    return data.digest(words(), fonts, photos())


def _phrase(rng: np.random.Generator, count: int) -> str:
    start = int(rng.integers(0, len(words()) - count))
    return " ".join(words()[start : start + count])


def _font(rng: np.random.Generator, size: int) -> ImageFont.FreeTypeFont:
    return font(int(rng.integers(len(FONTS))), size)


def _photo(rng: np.random.Generator, w: int, h: int, scenes: bool = False) -> Image.Image:
    """A random crop of a random photo scaled to cover (w, h); `scenes`: none that shows text
    (detection backgrounds must not hold unlabelled text)."""
    names = SKIMAGE_PHOTOS + MPL_PHOTOS
    choices = [p for n, p in zip(names, photos()) if not (scenes and n in TEXT_PHOTOS)]
    photo = choices[int(rng.integers(len(choices)))]
    zoom = max(w / photo.width, h / photo.height) * rng.uniform(1.0, 2.0)
    size = (max(w, round(photo.width * zoom)), max(h, round(photo.height * zoom)))
    photo = photo.resize(size, Image.Resampling.BICUBIC)
    x = int(rng.integers(0, photo.width - w + 1))
    y = int(rng.integers(0, photo.height - h + 1))
    return photo.crop((x, y, x + w, y + h))


def _ink(rng: np.random.Generator) -> tuple[int, int, int]:
    if rng.random() < 0.3:  # coloured ink: blue pen, red stamp, green
        return tuple(int(v) for v in rng.choice([[20, 40, 150], [150, 20, 20], [20, 100, 40]]))
    return tuple(int(v) for v in rng.integers(0, 90, 3))


def _jpeg(rng: np.random.Generator, image: Image.Image, quality: tuple[int, int]) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=int(rng.integers(*quality)))
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


# -- orientation: documents photographed on a desk ----------------------------------------------
def _text_block(draw, rng, x, y, width, bottom, fnt, leading, ink) -> int:
    while y < bottom - leading:
        for line in _wrap(_phrase(rng, int(rng.integers(12, 60))).split(), fnt, width):
            if y >= bottom - leading:
                return y
            draw.text((x, y), line, fill=ink, font=fnt)
            y += leading
        y += leading // 2
    return y


def render_document(rng: np.random.Generator) -> Image.Image:
    """An upright page of one of five kinds, on its own paper."""
    kind = rng.choice(
        ["form", "table", "slide", "receipt", "letter"], p=[0.2, 0.25, 0.15, 0.15, 0.25]
    )
    if kind == "slide":
        w, h = int(rng.integers(640, 800)), 0
        h = int(w * 0.5625 if rng.random() < 0.5 else w * 0.75)
    elif kind == "receipt":
        w = int(rng.integers(260, 340))
        h = int(w * rng.uniform(2.2, 3.2))
    else:
        w = int(rng.integers(520, 640))
        h = int(w * rng.uniform(1.3, 1.42))
    tone = rng.uniform(200, 255, 3) if kind != "slide" else rng.uniform(30, 255, 3)
    page = Image.new("RGB", (w, h), tuple(int(v) for v in tone))
    draw = ImageDraw.Draw(page)
    dark_bg = kind == "slide" and float(np.mean(tone)) < 120
    ink = (240, 240, 240) if dark_bg else _ink(rng)
    size = int(rng.integers(11, 20))
    fnt = _font(rng, size)
    leading = int(size * rng.uniform(1.2, 1.5))
    m = int(rng.integers(20, 50)) if kind != "receipt" else 14
    y = m
    if kind == "slide":
        title = _font(rng, int(rng.integers(30, 48)))
        draw.text((m, y), _phrase(rng, int(rng.integers(2, 5))), fill=ink, font=title)
        y += int(title.size * 1.8)
        bullet = _font(rng, int(rng.integers(18, 28)))
        while y < h - m - bullet.size * 2:
            draw.ellipse((m, y + bullet.size // 3, m + 8, y + bullet.size // 3 + 8), fill=ink)
            draw.text((m + 20, y), _phrase(rng, int(rng.integers(3, 7))), fill=ink, font=bullet)
            y += int(bullet.size * rng.uniform(1.6, 2.4))
        if rng.random() < 0.5:
            pw, ph = w // 3, h // 3
            page.paste(_photo(rng, pw, ph), (w - m - pw, h - m - ph))
        return page
    header = _font(rng, int(size * rng.uniform(1.4, 2.0)))
    draw.text((m, y), _phrase(rng, int(rng.integers(2, 6))), fill=ink, font=header)
    y += int(header.size * 1.6)
    if kind == "form":
        while y < h - m - 3 * leading:
            label = _phrase(rng, int(rng.integers(1, 4))) + ":"
            draw.text((m, y), label, fill=ink, font=fnt)
            x = m + int(fnt.getlength(label)) + 10
            draw.line((x, y + size, w - m, y + size), fill=ink, width=1)
            if rng.random() < 0.6:  # filled in by hand-ish: another font, coloured
                draw.text(
                    (x + 6, y - 2),
                    _phrase(rng, int(rng.integers(1, 5))),
                    fill=_ink(rng),
                    font=_font(rng, size + 2),
                )
            y += int(leading * rng.uniform(1.6, 2.4))
            if rng.random() < 0.15:
                draw.rectangle((m, y, m + 12, y + 12), outline=ink)
                draw.text((m + 20, y - 2), _phrase(rng, 4), fill=ink, font=fnt)
                y += 2 * leading
    elif kind == "table":
        y = _text_block(draw, rng, m, y, w - 2 * m, y + 3 * leading, fnt, leading, ink)
        cols = int(rng.integers(3, 6))
        col_w = (w - 2 * m) // cols
        row_h = leading + 6
        top = y
        while y < h - m - row_h:
            for c in range(cols):
                cell = (
                    _phrase(rng, 1)
                    if c == 0
                    else f"{rng.uniform(0, 9999):.{int(rng.integers(0, 3))}f}"
                )
                draw.text((m + c * col_w + 4, y + 3), cell, fill=ink, font=fnt)
            y += row_h
            draw.line((m, y, w - m, y), fill=ink, width=1)
        for c in range(cols + 1):
            draw.line((m + c * col_w, top, m + c * col_w, y), fill=ink, width=1)
    elif kind == "receipt":
        mono = font(FONTS.index("cmtt10"), size)
        while y < h - m - leading:
            item = _phrase(rng, int(rng.integers(1, 3)))[:18]
            price = f"{rng.uniform(0.5, 99):.2f}"
            draw.text((m, y), item, fill=ink, font=mono)
            draw.text((w - m - mono.getlength(price), y), price, fill=ink, font=mono)
            y += leading
            if rng.random() < 0.08:
                draw.line((m, y + 2, w - m, y + 2), fill=ink)
                y += leading
    else:  # letter: address block, date, body, signature
        for _ in range(int(rng.integers(2, 5))):
            draw.text((w // 2, y), _phrase(rng, int(rng.integers(2, 5))), fill=ink, font=fnt)
            y += leading
        y += leading
        y = _text_block(draw, rng, m, y, w - 2 * m, h - m - 4 * leading, fnt, leading, ink)
        draw.text((m, y + leading), _phrase(rng, 2), fill=_ink(rng), font=_font(rng, size + 6))
    return page


def photograph(rng: np.random.Generator, page: Image.Image) -> Image.Image:
    """The page as a phone photo: on a desk photo, slightly skewed, uneven light, JPEG."""
    pad = int(max(page.size) * rng.uniform(0.03, 0.15))
    w, h = page.width + 2 * pad, page.height + 2 * pad
    desk = _photo(rng, w, h).filter(ImageFilter.GaussianBlur(2))
    angle = float(rng.uniform(-4, 4))
    turned = page.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)
    mask = Image.new("L", page.size, 255).rotate(angle, expand=True)
    desk.paste(turned, ((w - turned.width) // 2, (h - turned.height) // 2), mask)
    # Uneven light: a linear gradient in a random direction, 0.65..1.1 of the brightness.
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    theta = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(theta) * xx / w + np.sin(theta) * yy / h
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    light = rng.uniform(0.65, 0.85) + ramp * rng.uniform(0.1, 0.3)
    pixels = np.asarray(desk, dtype=np.float32) * light[:, :, None]
    pixels += rng.normal(0, rng.uniform(2, 7), pixels.shape[:2] + (1,))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    image = ImageEnhance.Contrast(image).enhance(float(rng.uniform(0.75, 1.2)))
    return _jpeg(rng, image, (35, 90))


def document_photo(rng: np.random.Generator) -> Image.Image:
    """An upright document of one of five kinds, photographed on a desk."""
    return photograph(rng, render_document(rng))


# -- detection: street-sign style scene text --------------------------------------------------------
def render_scene(rng: np.random.Generator) -> tuple[Image.Image, list[list[int]]]:
    """A 480x480 photo scene with text lines (outlined, shadowed, slightly rotated); returns it and
    the axis-aligned boxes of each line's ink."""
    s = DET_SIZE
    image = _photo(rng, s, s, scenes=True)
    if rng.random() < 0.3:
        image = ImageEnhance.Brightness(image).enhance(float(rng.uniform(0.5, 1.3)))
    boxes: list[list[int]] = []
    taken: list[tuple[int, ...]] = []
    wanted = int(rng.integers(2, 9))
    for _ in range(60):
        if len(boxes) == wanted:
            break
        fnt = _font(rng, int(rng.integers(12, 56)))
        text = _phrase(rng, int(rng.integers(1, 5)))
        x0, y0, x1, y1 = fnt.getbbox(text)
        tw, th = x1 - x0 + 8, y1 - y0 + 8
        if tw > s - 24:
            continue
        # Render the line on its own transparent layer, rotate it a little, then place it.
        layer = Image.new("RGBA", (tw + 16, th + 16), (0, 0, 0, 0))
        draw = ImageDraw.Draw(layer)
        origin = (8 - x0 + 4, 8 - y0 + 4)
        light_text = rng.random() < 0.5
        fill = tuple(
            int(v) for v in (rng.integers(200, 256, 3) if light_text else rng.integers(0, 60, 3))
        )
        style = rng.choice(["plain", "outline", "shadow", "plate"], p=[0.3, 0.3, 0.2, 0.2])
        if style == "plate":
            plate = (30, 30, 40, 230) if light_text else (240, 235, 220, 230)
            draw.rounded_rectangle((2, 2, layer.width - 3, layer.height - 3), radius=6, fill=plate)
        if style == "shadow":
            draw.text((origin[0] + 2, origin[1] + 2), text, fill=(0, 0, 0, 160), font=fnt)
        stroke = 2 if style == "outline" else 0
        outline = (0, 0, 0, 255) if light_text else (255, 255, 255, 255)
        draw.text(
            origin, text, fill=fill + (255,), font=fnt, stroke_width=stroke, stroke_fill=outline
        )
        # The line box, as the tuning set annotates lines: the ink's horizontal extent and the
        # font's full line height (not a plate around it), turned with the layer; its
        # axis-aligned bounds are the ground truth.
        glyphs = Image.new("L", layer.size, 0)
        ImageDraw.Draw(glyphs).text(origin, text, fill=255, font=fnt, stroke_width=stroke)
        ink_x = np.nonzero(np.asarray(glyphs).max(axis=0) > 96)[0]
        if ink_x.size == 0:
            continue
        ascent, descent = fnt.getmetrics()
        line = Image.new("L", layer.size, 0)
        top = min(origin[1], int(np.nonzero(np.asarray(glyphs).max(axis=1) > 96)[0].min()))
        ImageDraw.Draw(line).rectangle(
            (int(ink_x.min()), top, int(ink_x.max()), origin[1] + ascent + descent), fill=255
        )
        angle = float(rng.uniform(-6, 6))
        layer = layer.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)
        line = line.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)
        ys, xs = np.nonzero(np.asarray(line) > 127)
        if xs.size == 0 or layer.width > s - 8 or layer.height > s - 8:
            continue
        x = int(rng.integers(4, s - layer.width - 4 + 1))
        y = int(rng.integers(4, s - layer.height - 4 + 1))
        box = (x + int(xs.min()), y + int(ys.min()), x + int(xs.max()) + 1, y + int(ys.max()) + 1)
        pad = max(4, fnt.size // 2)
        grown = (box[0] - pad, box[1] - pad, box[2] + pad, box[3] + pad)
        if any(_overlap(grown, t) for t in taken):
            continue
        image.paste(layer, (x, y), layer)
        taken.append(grown)
        boxes.append(list(box))
    if rng.random() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.0))))
    return _jpeg(rng, image, (40, 95)), boxes


def prepare(work: Path, model: str, eval_count: int, frames: int) -> Path:
    """Render (or reuse) the held-out sets of one model under work/data/<model>-heldout-<n>/
    (the sets of the photo, recognition and box models: photos.py, lines.py, boxes.py)."""
    if MODELS[model].data != "rendered":  # the module named by the model's spec
        module = importlib.import_module(MODELS[model].data)
        return module.prepare(work, model, eval_count, frames, held_out=True)
    root = work / "data" / f"{model}-heldout-{eval_count}"
    manifest = {"version": VERSION, "material": material_digest(), "eval": eval_count}
    seeds = (SEEDS[f"{model}/eval"], SEEDS[f"{model}/calib"])
    if model == "orientation":
        pages = eval_count // 4
        render = lambda: data.render_orientation(root, pages, frames, document_photo, seeds)  # noqa: E731
    else:
        render = lambda: data.render_detection(root, eval_count, frames, render_scene, seeds)  # noqa: E731
    return data.render_set(root, manifest, frames, render)
