"""A1111's resampling upscalers for the A1111 API's `/extra-single-image`: "Lanczos" and "Nearest" (A1111's
modules/upscaler.py, `UpscalerLanczos` and `UpscalerNearest`), a PIL resize with no model and no GPU.

Sizes are A1111's (scripts/postprocessing_upscale.py, `ScriptPostprocessingUpscale.upscale`, and
modules/upscaler.py, `Upscaler.upscale`): `resize_mode` 0 scales by `upscaling_resize`; 1 scales by the larger of
`upscaling_resize_w / width` and `upscaling_resize_h / height`, then with `upscaling_crop` centres the image on a
black canvas of exactly that size (cut where it is larger). The resampler makes `int(side * scale)` and, where
that is not a multiple of 8, the image is resized (Lanczos, whichever upscaler) to the multiple of 8 below it.

The result is bounded in pixels (`max_pixels`, every image made on the way counted): the extras route allows what
the server takes as an input image, so a resized image can go on to image to image.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from PIL import Image

from sd2_app.api.checks import flag, integer, number
from sd2_app.api.image_inputs import too_large
from sd2_app.errors import InvalidRequest, shown

# A1111's resampling upscalers, by the names its /upscalers lists
RESAMPLING = {"Lanczos": Image.Resampling.LANCZOS, "Nearest": Image.Resampling.NEAREST}
MAX_SCALE = 8.0  # upscaling_resize, as A1111's API takes it (modules/api/models.py: ge=1, le=8)
# A1111's API defaults (modules/api/models.py, the extras request)
DEFAULT_SCALE = 2.0
DEFAULT_SIDE = 512
MAX_SIDE = 8192  # upscaling_resize_w and _h: A1111's own sliders' range (its API takes any; the pixels are bounded)
RESIZE_MODES = (0, 1)


@dataclass(frozen=True)
class ResizePlan:
    """The sizes of one resize: `scaled`, what the resampler makes; `size`, that floored to multiples of 8;
    `canvas`, the crop's exact size (None: no crop)."""

    scaled: tuple[int, int]
    size: tuple[int, int]
    canvas: tuple[int, int] | None


def resize_plan(width: int, height: int, body: Mapping[str, Any], max_pixels: int) -> ResizePlan:
    """The sizes an extras request's resize settings give an image of `width` x `height`, each checked."""
    mode = body.get("resize_mode", 0)
    if isinstance(mode, bool) or mode not in RESIZE_MODES:
        raise InvalidRequest(f"resize_mode must be 0 (scale by upscaling_resize) or 1 (scale to upscaling_resize_w x "
                             f"upscaling_resize_h), got {shown(mode)}.")
    canvas = None
    if mode == 0:
        scale = number(body.get("upscaling_resize", DEFAULT_SCALE), "upscaling_resize", 1, MAX_SCALE)
        how = f"by {scale:g}"
    else:
        target = (integer(body.get("upscaling_resize_w", DEFAULT_SIDE), "upscaling_resize_w", 1, MAX_SIDE),
                  integer(body.get("upscaling_resize_h", DEFAULT_SIDE), "upscaling_resize_h", 1, MAX_SIDE))
        scale = max(target[0] / width, target[1] / height)
        canvas = target if flag(body.get("upscaling_crop", True), "upscaling_crop") else None
        how = f"to {target[0]}x{target[1]}"
    scaled = (int(width * scale), int(height * scale))
    size = (scaled[0] // 8 * 8, scaled[1] // 8 * 8)
    largest = max(scaled, canvas or (0, 0), key=lambda made: made[0] * made[1])  # every image made is counted
    if largest[0] * largest[1] > max_pixels:
        raise InvalidRequest(too_large(f"upscaling {width}x{height} {how} gives an image that", *largest, max_pixels))
    if min(size) < 8:
        raise InvalidRequest(f"Upscaling {width}x{height} {how} makes {size[0]}x{size[1]}; each side needs at "
                             "least 8 pixels.")
    return ResizePlan(scaled, size, canvas)


def resampled(image: Image.Image, resampler: str, plan: ResizePlan) -> Image.Image:
    """`image` (RGB) resized by `resampler` (a RESAMPLING name) as `plan` says."""
    out = image.resize(plan.scaled, resample=RESAMPLING[resampler])
    if out.size != plan.size:
        out = out.resize(plan.size, resample=Image.Resampling.LANCZOS)
    if plan.canvas is None:
        return out
    canvas = Image.new("RGB", plan.canvas)
    canvas.paste(out, box=(plan.canvas[0] // 2 - out.width // 2, plan.canvas[1] // 2 - out.height // 2))
    return canvas
