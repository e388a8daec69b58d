"""Image preprocessing like edgeai-benchmark: color, resize, crop, pad, layout, mean/scale."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

# PIL is imported where images are decoded: a no-op build only lists and hashes the files
if TYPE_CHECKING:
    from PIL import Image

# recipe interpolation -> PIL's Image.Resampling member
_RESAMPLE = {
    "bilinear": "BILINEAR",
    "nearest": "NEAREST",
    "bicubic": "BICUBIC",
    "lanczos": "LANCZOS",
}


def _size(value: int | list[int], image_hw: tuple[int, int]) -> tuple[int, int]:
    """(height, width) for an exact [h, w] or a shorter-side integer."""
    if isinstance(value, list):
        return value[0], value[1]
    h, w = image_hw
    if h <= w:
        return value, max(1, round(w * value / h))
    return max(1, round(h * value / w)), value


def preprocess_image(image: Image.Image, options: dict) -> np.ndarray:
    """Turn a decoded image into a float32 tensor with a leading batch axis of 1."""
    from PIL import Image

    color = options.get("color", "rgb")
    image = image.convert("L" if color == "gray" else "RGB")
    if "resize" in options:
        h, w = _size(options["resize"], (image.height, image.width))
        if (h, w) != (image.height, image.width):
            resample = Image.Resampling[_RESAMPLE[options.get("interpolation", "bilinear")]]
            image = image.resize((w, h), resample)
    if "crop" in options:
        h, w = _size(options["crop"], (image.height, image.width))
        if isinstance(options["crop"], int):
            h = w = options["crop"]
        top = max(0, (image.height - h) // 2)
        left = max(0, (image.width - w) // 2)
        image = image.crop((left, top, left + w, top + h))
    array = np.asarray(image, dtype=np.float32)
    if array.ndim == 2:
        array = array[:, :, None]
    if color == "bgr":
        array = array[:, :, ::-1]
    if "pad" in options:
        h, w = _size(options["pad"], array.shape[:2])
        if isinstance(options["pad"], int):
            h = w = options["pad"]
        ph, pw = max(0, h - array.shape[0]), max(0, w - array.shape[1])
        value = float(options.get("pad_value", 0))
        array = np.pad(array, ((0, ph), (0, pw), (0, 0)), constant_values=value)
    if "mean" in options:
        array = array - np.asarray(options["mean"], dtype=np.float32)
    if "scale" in options:
        array = array * np.asarray(options["scale"], dtype=np.float32)
    if options.get("layout", "NCHW") == "NCHW":
        array = array.transpose(2, 0, 1)
    return np.ascontiguousarray(array[None], dtype=np.float32)


def check_channels(options: dict) -> str | None:
    """A problem with per-channel mean/scale lengths, or None."""
    channels = 1 if options.get("color") == "gray" else 3
    for key in ("mean", "scale"):
        values = options.get(key)
        if values is not None and len(values) not in (1, channels):
            return (
                f"{key} has {len(values)} values but color {options.get('color', 'rgb')!r} "
                f"gives {channels} channel(s); give "
                + ("1 value" if channels == 1 else f"1 or {channels} values")
            )
    zero = [i for i, value in enumerate(options.get("scale") or []) if value == 0]
    if zero:
        return (
            f"scale[{zero[0]}] is 0: every input value of that channel would be 0; "
            "pixels are multiplied by scale (1/255 = 0.00392156862745098 maps 8-bit to [0, 1])"
        )
    return None
