"""Image to image's resize modes and the default output size (sd2_app/ui/resize.py)."""

from __future__ import annotations

import pytest
from PIL import Image

from sd2_app.ui.resize import fitted_size, own_size, resize_to


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
