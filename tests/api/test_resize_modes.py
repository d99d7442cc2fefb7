"""Image to image's resize modes and the default output size (sd2_app/api/resize_modes.py). The modes' pixels are
A1111's (modules/images.py, `resize_image`): sizes by integer division, centred at W // 2 - w // 2, bands
stretched from the edge row or column."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sd2_app.api.resize_modes import RESIZE_MODES, fitted_size, own_size, resize_to


def test_the_default_size_keeps_the_inputs_aspect_at_the_checkpoints_resolution() -> None:
    assert fitted_size(1500, 1100, 512, 1024) == (600, 440)  # not 1024x744: the checkpoint's area
    assert fitted_size(512, 512, 768, 1024) == (768, 768)
    assert fitted_size(4000, 500, 768, 1024) == (1024, 128)  # the long side capped at max_side


def _halves(width: int, height: int) -> Image.Image:
    image = Image.new("RGB", (width, height), (255, 0, 0))
    image.paste((0, 0, 255), (width // 2, 0, width, height))  # left red, right blue
    return image


def test_crop_and_resize_cuts_the_centre_without_distortion() -> None:
    out = resize_to(_halves(200, 100), 64, 64, "Crop and resize")
    assert out.size == (64, 64)
    assert out.getpixel((2, 32)) == (255, 0, 0) and out.getpixel((61, 32)) == (0, 0, 255)


def test_resize_and_fill_keeps_everything_and_fills_the_bands() -> None:
    source = Image.new("RGB", (200, 100), (10, 200, 10))
    out = resize_to(source, 64, 64, "Resize and fill")
    assert out.size == (64, 64)
    assert out.getpixel((32, 2)) == (10, 200, 10) and out.getpixel((32, 62)) == (10, 200, 10)


def test_just_resize_stretches_and_an_unknown_mode_is_refused() -> None:
    assert resize_to(_halves(200, 100), 64, 64, "Just resize").size == (64, 64)
    with pytest.raises(ValueError, match="Resize mode must be one of Just resize, Crop and resize"):
        resize_to(_halves(20, 10), 8, 8, "Stretch")


def test_a_sent_images_own_size_is_rounded_to_multiples_of_8_and_scaled_into_the_largest_side() -> None:
    assert own_size(256, 192, 1024) == (256, 192)
    assert own_size(100, 70, 1024) == (104, 72)  # the service's rounding, halves up
    assert own_size(2048, 1536, 1024) == (1024, 768)  # an x4 upscale's result: both sides scaled down together
    assert own_size(40, 30, 1024) == (64, 64)  # no side under 64


def _gradient(width: int, height: int) -> Image.Image:
    """Every pixel different: red counts columns, green rows, so a misplaced pixel shows."""
    x, y = np.meshgrid(np.arange(width), np.arange(height))
    rgb = np.stack([x * 255 // (width - 1), y * 255 // (height - 1), (x + y) % 256], axis=-1)
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_the_modes_are_numbered_as_a1111s_resize_mode() -> None:
    assert RESIZE_MODES.index("Just resize") == 0
    assert RESIZE_MODES.index("Crop and resize") == 1
    assert RESIZE_MODES.index("Resize and fill") == 2


def test_crop_and_resize_scales_by_integer_division_and_cuts_the_centre() -> None:
    source = _gradient(303, 200)
    out = resize_to(source, 64, 64, "Crop and resize")
    covered = source.resize((303 * 64 // 200, 64), Image.Resampling.LANCZOS)  # 96x64: 96.96 floored
    left = 96 // 2 - 64 // 2  # A1111 pastes at 64 // 2 - 96 // 2 = -16
    assert np.array_equal(_pixels(out), _pixels(covered.crop((left, 0, left + 64, 64))))


def test_resize_and_fill_pastes_where_a1111_does_and_stretches_the_edge_rows_over_the_bands() -> None:
    source = _gradient(300, 200)
    out = _pixels(resize_to(source, 64, 64, "Resize and fill"))
    scaled = source.resize((64, 200 * 64 // 300), Image.Resampling.LANCZOS)
    assert scaled.height == 42  # 42.67 floored, as A1111's `//` (rounding would give 43)
    top = 64 // 2 - 42 // 2  # 11
    assert np.array_equal(out[top:top + 42], _pixels(scaled))
    # each band: the scaled image's edge (a zero-high box on its top or bottom border) stretched, as A1111 fills
    above = scaled.resize((64, top), Image.Resampling.LANCZOS, box=(0, 0, 64, 0))
    below = scaled.resize((64, 64 - top - 42), Image.Resampling.LANCZOS, box=(0, 42, 64, 42))
    assert np.array_equal(out[:top], _pixels(above)) and np.array_equal(out[top + 42:], _pixels(below))
    assert (out[:top] == out[0]).all() and (out[top + 42:] == out[-1]).all()  # one row, repeated
    assert not np.array_equal(out[0], out[-1])


def test_resize_and_fill_puts_a_taller_image_between_column_bands() -> None:
    source = _gradient(100, 300)
    out = _pixels(resize_to(source, 64, 48, "Resize and fill"))
    scaled = source.resize((100 * 48 // 300, 48), Image.Resampling.LANCZOS)  # 16x48
    left = 64 // 2 - 16 // 2  # 24
    assert np.array_equal(out[:, left:left + 16], _pixels(scaled))
    before = scaled.resize((left, 48), Image.Resampling.LANCZOS, box=(0, 0, 0, 48))
    after = scaled.resize((64 - left - 16, 48), Image.Resampling.LANCZOS, box=(16, 0, 16, 48))
    assert np.array_equal(out[:, :left], _pixels(before)) and np.array_equal(out[:, left + 16:], _pixels(after))
    assert (out[:, :left] == out[:, :1]).all() and not np.array_equal(out[:, 0], out[:, -1])
