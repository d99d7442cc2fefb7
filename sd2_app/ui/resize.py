"""Image to image's resize modes (as A1111 names them): how an input of another shape becomes the output size.

- "Just resize": stretch to the size (the shape may distort).
- "Crop and resize": scale to cover the size, then cut the centre (nothing distorts; edges may go).
- "Resize and fill": scale to fit inside, then fill the bands with the stretched image (nothing is lost).
"""

from __future__ import annotations

import math

from PIL import Image

from sd2_app.api.checks import MIN_SIDE, to_multiple_of_8

RESIZE_MODES = ("Just resize", "Crop and resize", "Resize and fill")


def fitted_size(width: int, height: int, native: int, max_side: int) -> tuple[int, int]:
    """The input's aspect at the checkpoint's resolution: about native² pixels, sides multiples of 8."""
    scale = math.sqrt(native * native / (width * height))
    return own_size(width * scale, height * scale, max_side)


def own_size(width: float, height: float, max_side: int) -> tuple[int, int]:
    """`width` x `height` as a run can make it: shrunk, keeping the aspect, until the long side fits `max_side`,
    and each side rounded to a multiple of 8 (`to_multiple_of_8`, the service's one rounding), at least MIN_SIDE."""
    shrink = min(1.0, max_side / max(width, height))
    return max(MIN_SIDE, to_multiple_of_8(width * shrink)), max(MIN_SIDE, to_multiple_of_8(height * shrink))


def resize_to(image: Image.Image, width: int, height: int, mode: str) -> Image.Image:
    """`image` at width x height in resize `mode` (one of RESIZE_MODES)."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"Resize mode must be one of {', '.join(RESIZE_MODES)}.")
    if image.size == (width, height) or mode == "Just resize":
        return image.resize((width, height), Image.Resampling.LANCZOS)
    cover = mode == "Crop and resize"
    pick = max if cover else min
    scale = pick(width / image.width, height / image.height)
    inner = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    scaled = image.resize(inner, Image.Resampling.LANCZOS)
    left, top = (width - inner[0]) // 2, (height - inner[1]) // 2
    if cover:
        return scaled.crop((-left, -top, -left + width, -top + height))
    canvas = image.resize((width, height), Image.Resampling.LANCZOS)  # the stretched image fills the bands
    canvas.paste(scaled, (left, top))
    return canvas
