"""Image to image's resize modes, as A1111 names, numbers and draws them: how an input of another shape becomes the
output size. A mode's place in RESIZE_MODES is A1111's `resize_mode` number (its API's field).

- "Just resize": stretch to the size (the shape may distort).
- "Crop and resize": scale to cover the size, then cut the centre (nothing distorts; edges may go).
- "Resize and fill": scale to fit inside, centred, and fill each band by stretching the image's edge row or column
  over it (nothing is lost).

The pixel arithmetic is A1111's (modules/images.py, `resize_image` with no img2img upscaler set, its default):
Lanczos resampling, the scaled side by integer division, the image pasted at (width // 2 - w // 2, ...), each
band made from the one-pixel edge of the scaled image. Used by the Image to image tab and the A1111 API alike.
"""

from __future__ import annotations

import math
from typing import Any, TYPE_CHECKING

from PIL import Image

from sd2_app.api.checks import MIN_SIDE, to_multiple_of_8
from sd2_app.api.task_checks import img2img_size
from sd2_app.errors import InvalidRequest

if TYPE_CHECKING:
    from sd2_app.api.checks import Limits

RESIZE_MODES = ("Just resize", "Crop and resize", "Resize and fill")
LANCZOS = Image.Resampling.LANCZOS


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
    if mode == "Just resize":
        return image.resize((width, height), LANCZOS)
    cover = mode == "Crop and resize"
    wider = width * image.height < image.width * height  # the image is wider than the target's shape
    fit_width = wider != cover  # "fill" fits a wider image's width; "crop" covers with a taller one's width
    inner_w = width if fit_width else image.width * height // image.height
    inner_h = image.height * width // image.width if fit_width else height
    scaled = image.resize((inner_w, inner_h), LANCZOS)
    canvas = Image.new(image.mode, (width, height))
    left, top = width // 2 - inner_w // 2, height // 2 - inner_h // 2
    canvas.paste(scaled, (left, top))
    if not cover:
        _fill_bands(canvas, scaled, left, top)
    return canvas


def _fill_bands(canvas: Image.Image, scaled: Image.Image, left: int, top: int) -> None:
    """Each empty band beside the pasted `scaled` image: its nearest edge row (or column) stretched over it."""
    width, height = canvas.size
    if top > 0:  # bands above and below
        below = height - top - scaled.height
        canvas.paste(scaled.resize((width, top), LANCZOS, box=(0, 0, width, 0)), (0, 0))
        if below > 0:
            edge = (0, scaled.height, width, scaled.height)
            canvas.paste(scaled.resize((width, below), LANCZOS, box=edge), (0, top + scaled.height))
    elif left > 0:  # bands left and right
        right = width - left - scaled.width
        canvas.paste(scaled.resize((left, height), LANCZOS, box=(0, 0, 0, height)), (0, 0))
        if right > 0:
            edge = (scaled.width, 0, scaled.width, height)
            canvas.paste(scaled.resize((right, height), LANCZOS, box=edge), (left + scaled.width, 0))


def shaped(limits: Limits, picture: Any, w: Any, h: Any, mode: Any) -> Any:
    """The init image in the resize mode at the size the service runs (`task_checks.img2img_size`: an empty side
    is the image's, sides rounded to multiples of 8, halves up); left as it is (for the service to refuse in its
    words) when the image, a size or the mode is out of bounds, so nothing huge is decoded or allocated here."""
    if not (isinstance(picture, Image.Image) and picture.width * picture.height <= limits.max_input_pixels
            and mode in RESIZE_MODES):
        return picture
    try:
        size = img2img_size(w, h, picture.size, limits, [])
    except InvalidRequest:
        return picture
    return resize_to(picture, *size, mode)
