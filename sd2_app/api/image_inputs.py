"""Uploaded images: size checks from the header, decoding to RGB, masks and depth maps, fitting to a size.

A decompression bomb is refused from its header before it is decoded; a corrupt file is refused in words.
Used by the per-task checks (`task_checks`), the A1111 API (inverted masks) and the UI (upload limits).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from sd2_app.errors import InvalidRequest

MIN_IMAGE_SIDE = 8


def to_rgb(image: Image.Image) -> Image.Image:
    """Upright 8-bit RGB: EXIF rotation applied, transparency flattened on white, 16-bit scaled down."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)  # (H, W)
        peak = 1.0 if image.mode == "F" and array.max(initial=0) <= 1 else (255.0 if array.max(initial=0) <= 255 else 65535.0)
        image = Image.fromarray(np.clip(array / peak * 255 + 0.5, 0, 255).astype(np.uint8))  # "L"
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return image.convert("RGB")


def too_large(what: str, width: int, height: int, max_pixels: int) -> str:
    """The refusal of an image over `max_pixels`, with the limit as the square it allows."""
    side = math.isqrt(max_pixels)
    return (f"{what[0].upper()}{what[1:]} is {width}x{height}; images up to {side}x{side} pixels (or the same area "
            "in another shape) are accepted.")


def check_size(value: Any, what: str, max_pixels: int) -> Image.Image:
    """Type and size checks, from the header only: a lazily opened decompression bomb is never decoded."""
    if value is None:
        raise InvalidRequest(f"Upload {what} first.")
    if not isinstance(value, Image.Image):
        raise InvalidRequest(f"{what[0].upper()}{what[1:]} must be an image, got {type(value).__name__}.")
    width, height = value.size
    if min(width, height) < MIN_IMAGE_SIDE:
        raise InvalidRequest(f"{what[0].upper()}{what[1:]} is {width}x{height}; each side needs at least {MIN_IMAGE_SIDE} pixels.")
    if width * height > max_pixels:
        raise InvalidRequest(too_large(what, width, height, max_pixels))
    return value


def decoded(convert: Callable[[Image.Image], Image.Image], image: Image.Image, what: str) -> Image.Image:
    """`convert(image)`, with a corrupt, truncated or unconvertible file refused in words."""
    try:
        return convert(image)
    except (OSError, SyntaxError, ValueError) as error:  # what PIL raises for broken files and odd modes
        raise InvalidRequest(f"{what[0].upper()}{what[1:]} could not be read ({error}); upload a PNG or JPEG.") from error


def checked_image(value: Any, what: str, max_pixels: int) -> Image.Image:
    """An uploaded image, size-checked and decoded to RGB."""
    return decoded(to_rgb, check_size(value, what, max_pixels), what)


def to_mask(mask: Image.Image) -> Image.Image:
    """An "L" mask (white = repaint): the alpha channel when it is not opaque (a painted layer), else luminance."""
    mask = ImageOps.exif_transpose(mask)
    if mask.mode in ("RGBA", "LA", "PA", "P"):
        rgba = mask.convert("RGBA")
        alpha = rgba.getchannel("A")
        if alpha.getextrema()[0] < 255:
            return alpha
        return rgba.convert("L")
    return to_rgb(mask).convert("L")


def to_depth(image: Image.Image) -> Image.Image:
    """A depth map at full precision as a float32 ("F") image, white or large = near.

    8-bit maps are divided by 255 and 16-bit PNGs (modes I;16, I) by 65535; 32-bit float TIFFs keep their
    values. The pipeline min/max-normalises the map anyway, so only its precision matters here.
    """
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image).astype(np.float32) / np.float32(65535)
    elif image.mode == "F":
        array = np.asarray(image, dtype=np.float32)
    else:
        array = np.asarray(to_rgb(image).convert("L")).astype(np.float32) / 255.0
    return Image.fromarray(np.ascontiguousarray(array, dtype=np.float32))


def fit_inside(image: Image.Image, max_side: int, warnings: list[str]) -> Image.Image:
    """Shrink an input that is larger than a generated image may be, and make its sides multiples of 8."""
    width, height = image.size
    scale = min(1.0, max_side / max(width, height))
    new = (max(8, int(width * scale) // 8 * 8), max(8, int(height * scale) // 8 * 8))
    if new != (width, height):
        if scale < 1.0:
            warnings.append(f"The image ({width}x{height}) was resized to {new[0]}x{new[1]} to fit {max_side} pixels.")
        image = image.resize(new, Image.Resampling.LANCZOS)
    return image
