"""preprocess_image and check_channels on real PIL images with known pixels."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from quantbuild.data.preprocess import check_channels, preprocess_image


def _rgb(pixels) -> Image.Image:
    return Image.fromarray(np.asarray(pixels, dtype=np.uint8), "RGB")


def _solid(h: int, w: int, rgb=(10, 20, 30)) -> Image.Image:
    return _rgb(np.broadcast_to(np.asarray(rgb, dtype=np.uint8), (h, w, 3)))


def _ramp(h: int, w: int) -> Image.Image:
    """Pixel (y, x) = (10 * y + x, 100 + 10 * y + x, 200) so crops are recognisable."""
    y, x = np.mgrid[0:h, 0:w]
    base = 10 * y + x
    return _rgb(np.stack([base, 100 + base, np.full_like(base, 200)], axis=-1))


def test_default_is_rgb_nchw_float32_with_batch_axis():
    out = preprocess_image(_ramp(4, 5), {})
    assert out.shape == (1, 3, 4, 5)
    assert out.dtype == np.float32
    assert out.flags["C_CONTIGUOUS"]
    assert out[0, 0, 2, 3] == 23
    assert out[0, 1, 2, 3] == 123
    assert out[0, 2, 2, 3] == 200


@pytest.mark.parametrize(
    ("hw", "resize", "expected"),
    [
        ((20, 40), 10, (10, 20)),  # landscape: height is the shorter side
        ((30, 15), 10, (20, 10)),  # portrait: width is the shorter side
        ((10, 15), 4, (4, 6)),
        ((12, 12), 6, (6, 6)),
        ((9, 7), 7, (9, 7)),  # already that size
    ],
)
def test_integer_resize_sets_the_shorter_side_keeping_aspect(hw, resize, expected):
    out = preprocess_image(_solid(*hw), {"resize": resize})
    assert out.shape == (1, 3, *expected)


def test_list_resize_is_exact_height_width():
    out = preprocess_image(_solid(20, 40), {"resize": [5, 7]})
    assert out.shape == (1, 3, 5, 7)


@pytest.mark.parametrize("interpolation", ["bilinear", "nearest", "bicubic"])
def test_resize_of_a_solid_image_keeps_its_color(interpolation):
    out = preprocess_image(
        _solid(10, 16, (10, 20, 30)), {"resize": [5, 4], "interpolation": interpolation}
    )
    np.testing.assert_array_equal(out[0, :, :, :].reshape(3, -1).min(axis=1), [10, 20, 30])
    np.testing.assert_array_equal(out[0, :, :, :].reshape(3, -1).max(axis=1), [10, 20, 30])


def test_nearest_upscaling_repeats_pixels():
    image = _rgb([[[0, 0, 0], [100, 100, 100]], [[200, 200, 200], [50, 50, 50]]])
    out = preprocess_image(image, {"resize": [4, 4], "interpolation": "nearest", "color": "gray"})
    np.testing.assert_array_equal(
        out[0, 0],
        [[0, 0, 100, 100], [0, 0, 100, 100], [200, 200, 50, 50], [200, 200, 50, 50]],
    )


def test_center_crop_list():
    out = preprocess_image(_ramp(6, 8), {"crop": [2, 4]})
    assert out.shape == (1, 3, 2, 4)
    # rows 2..3, columns 2..5
    np.testing.assert_array_equal(out[0, 0], [[22, 23, 24, 25], [32, 33, 34, 35]])


def test_center_crop_integer_is_square():
    out = preprocess_image(_ramp(6, 8), {"crop": 4})
    assert out.shape == (1, 3, 4, 4)
    np.testing.assert_array_equal(out[0, 0, 0], [12, 13, 14, 15])
    np.testing.assert_array_equal(out[0, 0, :, 0], [12, 22, 32, 42])


def test_resize_then_crop_like_imagenet():
    out = preprocess_image(_solid(10, 20), {"resize": 8, "crop": 8})
    assert out.shape == (1, 3, 8, 8)


def test_pad_bottom_right_with_pad_value():
    out = preprocess_image(_ramp(2, 3), {"pad": [4, 5], "pad_value": 7})
    assert out.shape == (1, 3, 4, 5)
    np.testing.assert_array_equal(
        out[0, 0],
        [[0, 1, 2, 7, 7], [10, 11, 12, 7, 7], [7, 7, 7, 7, 7], [7, 7, 7, 7, 7]],
    )
    np.testing.assert_array_equal(out[0, 2], [[200, 200, 200, 7, 7]] * 2 + [[7] * 5] * 2)


def test_pad_integer_is_square_and_default_value_is_zero():
    out = preprocess_image(_solid(2, 3, (9, 9, 9)), {"pad": 4})
    assert out.shape == (1, 3, 4, 4)
    assert out[0, 0, :2, :3].tolist() == [[9, 9, 9]] * 2
    assert out[0, :, 2:, :].max() == 0
    assert out[0, :, :, 3:].max() == 0


def test_pad_never_crops():
    out = preprocess_image(_ramp(5, 6), {"pad": [3, 3]})
    assert out.shape == (1, 3, 5, 6)


def test_gray_has_one_channel():
    out = preprocess_image(_solid(3, 4, (10, 20, 30)), {"color": "gray"})
    assert out.shape == (1, 1, 3, 4)
    # ITU-R 601-2 luma, as Pillow's "L" conversion: 10*0.299 + 20*0.587 + 30*0.114 = 18.15
    assert np.all(out == 18)


def test_gray_image_decoded_as_rgb_has_three_equal_channels():
    gray = Image.fromarray(np.full((2, 2), 77, dtype=np.uint8), "L")
    out = preprocess_image(gray, {"color": "rgb"})
    assert out.shape == (1, 3, 2, 2)
    assert np.all(out == 77)


def test_rgba_is_decoded_as_rgb():
    rgba = Image.fromarray(np.full((2, 2, 4), (1, 2, 3, 4), dtype=np.uint8), "RGBA")
    out = preprocess_image(rgba, {})
    assert out.shape == (1, 3, 2, 2)
    assert out[0, :, 0, 0].tolist() == [1, 2, 3]


def test_rgb_and_bgr_channel_order():
    image = _solid(2, 2, (10, 20, 30))
    assert preprocess_image(image, {"color": "rgb"})[0, :, 0, 0].tolist() == [10, 20, 30]
    assert preprocess_image(image, {"color": "bgr"})[0, :, 0, 0].tolist() == [30, 20, 10]


def test_bgr_mean_and_scale_apply_to_output_channel_order():
    out = preprocess_image(
        _solid(1, 1, (10, 20, 30)), {"color": "bgr", "mean": [1, 2, 3], "scale": [1, 10, 100]}
    )
    assert out[0, :, 0, 0].tolist() == [29, 180, 700]


def test_nchw_and_nhwc_hold_the_same_values():
    image = _ramp(3, 4)
    nchw = preprocess_image(image, {"layout": "NCHW"})
    nhwc = preprocess_image(image, {"layout": "NHWC"})
    assert nchw.shape == (1, 3, 3, 4)
    assert nhwc.shape == (1, 3, 4, 3)
    assert nhwc.dtype == np.float32
    assert nhwc.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(nhwc[0].transpose(2, 0, 1), nchw[0])
    assert nhwc[0, 2, 1, 1] == 121


def test_gray_nhwc_has_a_trailing_channel_axis():
    out = preprocess_image(_solid(3, 4), {"color": "gray", "layout": "NHWC"})
    assert out.shape == (1, 3, 4, 1)


def test_mean_and_scale_per_channel():
    out = preprocess_image(_solid(2, 2, (10, 20, 30)), {"mean": [1, 2, 3], "scale": [0.5, 0.25, 2]})
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0, :, 1, 1], [4.5, 4.5, 54.0])
    np.testing.assert_allclose(out[0, :, 0, 0], [4.5, 4.5, 54.0])


def test_single_mean_and_scale_apply_to_every_channel():
    out = preprocess_image(_solid(1, 1, (10, 20, 30)), {"mean": [10], "scale": [0.5]})
    np.testing.assert_allclose(out[0, :, 0, 0], [0.0, 5.0, 10.0])


def test_mean_only_and_scale_only():
    image = _solid(1, 1, (10, 20, 30))
    np.testing.assert_allclose(
        preprocess_image(image, {"mean": [1, 1, 1]})[0, :, 0, 0], [9, 19, 29]
    )
    np.testing.assert_allclose(
        preprocess_image(image, {"scale": [2, 2, 2]})[0, :, 0, 0], [20, 40, 60]
    )


def test_padding_is_normalised_like_pixels():
    # order: pad (pixel units) then (x - mean) * scale
    out = preprocess_image(
        _solid(1, 1, (10, 10, 10)), {"pad": [1, 2], "pad_value": 4, "mean": [2], "scale": [0.5]}
    )
    np.testing.assert_allclose(out[0, 0], [[4.0, 1.0]])


def test_full_pipeline_shape_and_values():
    options = {
        "color": "bgr",
        "resize": [6, 6],
        "interpolation": "nearest",
        "crop": [4, 4],
        "pad": [5, 5],
        "pad_value": 0,
        "mean": [30, 20, 10],
        "scale": [1, 1, 1],
        "layout": "NHWC",
    }
    out = preprocess_image(_solid(12, 12, (10, 20, 30)), options)
    assert out.shape == (1, 5, 5, 3)
    assert out[0, 0, 0].tolist() == [0, 0, 0]
    assert out[0, 4, 4].tolist() == [-30, -20, -10]


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"mean": [1, 2, 3], "scale": [1, 2, 3]},
        {"mean": [1], "scale": [2]},
        {"color": "gray", "mean": [128], "scale": [0.5]},
        {"color": "bgr", "mean": [1, 2, 3]},
    ],
)
def test_check_channels_accepts_one_or_one_per_channel(options):
    assert check_channels(options) is None


def test_check_channels_mean_length_for_rgb():
    assert check_channels({"mean": [1, 2]}) == (
        "mean has 2 values but color 'rgb' gives 3 channel(s); give 1 or 3 values"
    )


def test_check_channels_scale_length_for_bgr():
    assert check_channels({"color": "bgr", "scale": [1, 2, 3, 4]}) == (
        "scale has 4 values but color 'bgr' gives 3 channel(s); give 1 or 3 values"
    )


def test_check_channels_three_values_for_gray():
    message = check_channels({"color": "gray", "mean": [1, 2, 3]})
    assert message is not None
    assert message.startswith("mean has 3 values but color 'gray' gives 1 channel(s)")


def test_check_channels_reports_mean_before_scale():
    message = check_channels({"mean": [1, 2], "scale": [1, 2, 3, 4]})
    assert message is not None and message.startswith("mean has 2 values")
