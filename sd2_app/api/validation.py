"""Server-side checks of every request field, so the API cannot bypass what the UI's widgets limit.

`validate(request, catalog, limits)` returns a complete request (seed drawn, size filled in and rounded,
images converted to RGB) and the warnings the user should see; anything it cannot repair becomes an
`InvalidRequest` whose message is shown to the user as is. It imports no torch: the UI may call it too.
"""

from __future__ import annotations

import math
import random
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from sd2_app.api.cost import DEFAULT_MAX_JOB_COST, check_job_cost, job_cost
from sd2_app.errors import InvalidRequest
from sd2_app.api.requests import (
    DepthRequest,
    Img2ImgRequest,
    OUTPAINT_FILLS,
    InpaintRequest,
    OutpaintRequest,
    REQUEST_TYPES,
    Request,
    Sampling,
    Txt2ImgRequest,
    UpscaleRequest,
    XYZPlotRequest,
)

MAX_SEED = 2**32 - 1
MAX_PROMPT_CHARS = 2000  # only stops abuse; the pipeline refuses a prompt over 8 chunks of 75 tokens
MIN_IMAGE_SIDE = 8
MAX_NOISE_LEVEL = 350  # x4 upscaler's model_index.json

OUTPAINT_SIDES = ("left", "right", "up", "down")


@dataclass(frozen=True)
class Limits:
    """What the server accepts; configurable so a big GPU can allow more and a Space less."""

    max_side: int = 1024  # width/height of a generated image
    max_input_pixels: int = 2048 * 2048  # an uploaded image (img2img, inpaint, depth)
    max_upscale_input_pixels: int = 512 * 512  # the x4 output is 16x this (tiled)
    max_steps: int = 150
    max_batch: int = 8
    max_plot_cells: int = 64  # cells of one X/Y/Z plot (all Z values together)
    max_job_cost: int | None = DEFAULT_MAX_JOB_COST  # UNet evaluations x latent pixels (sd2_app.api.cost); None: no cap


@dataclass(frozen=True)
class Catalog:
    """The names a request may use: samplers (-> supports Karras) and checkpoints (-> resolution, tasks)."""

    samplers: Mapping[str, bool]
    resolutions: Mapping[str, int]
    tasks: Mapping[str, tuple[str, ...]]
    labels: Mapping[str, str] = field(default_factory=dict)
    calls_per_step: Mapping[str, int] = field(default_factory=dict)  # UNet calls per step per sampler (missing: 1)


def _clean_text(value: Any, what: str) -> str:
    """Strip control characters (they confuse the tokenizer and the PNG text chunk); keep newlines."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidRequest(f"{what} must be text, got {type(value).__name__}.")
    if len(value) > MAX_PROMPT_CHARS:
        raise InvalidRequest(f"{what} is {len(value)} characters long; the limit is {MAX_PROMPT_CHARS}.")
    kept = [" " if ch == "\t" else ch for ch in value if ch in "\n\t" or unicodedata.category(ch) != "Cc"]
    return "".join(kept).strip()


def _number(value: Any, what: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequest(f"{what} must be a number, got {value!r}.")
    if not math.isfinite(value) or not low <= value <= high:
        raise InvalidRequest(f"{what} must be between {low:g} and {high:g}, got {value!r}.")
    return float(value)


def _integer(value: Any, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
        isinstance(value, float) and not (math.isfinite(value) and value.is_integer())
    ):
        raise InvalidRequest(f"{what} must be a whole number, got {value!r}.")
    if not low <= value <= high:
        raise InvalidRequest(f"{what} must be between {low} and {high}, got {int(value)}.")
    return int(value)


def _flag(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidRequest(f"{what} must be true or false, got {value!r}.")
    return value


def resolve_seed(seed: Any) -> int:
    """None or -1 draws a fresh seed (reported back, so the image can be reproduced)."""
    if seed is None or (not isinstance(seed, bool) and isinstance(seed, (int, float)) and seed == -1):
        return random.SystemRandom().randint(0, MAX_SEED)
    return _integer(seed, "Seed", 0, MAX_SEED)


def check_sampler_names(names: tuple[Any, ...], catalog: Catalog) -> None:
    """The one check of sampler names (a request's sampler, or a comparison's list)."""
    unknown = [name for name in names if not isinstance(name, str) or name not in catalog.samplers]
    if not unknown:
        return
    choices = ", ".join(catalog.samplers)
    if len(names) == 1:
        raise InvalidRequest(f"Unknown sampler {unknown[0]!r}; choose one of: {choices}.")
    raise InvalidRequest(f"Unknown sampler(s) {', '.join(map(repr, unknown))}; choose from: {choices}.")


def _sampling(s: Sampling, catalog: Catalog, limits: Limits, *, karras_optional: bool = False) -> Sampling:
    check_sampler_names((s.sampler,), catalog)
    use_karras = _flag(s.use_karras, "Karras sigmas")
    if use_karras and not catalog.samplers[s.sampler] and not karras_optional:
        raise InvalidRequest(f"Karras sigmas are not available for the {s.sampler} sampler; untick Karras.")
    return replace(
        s,
        steps=_integer(s.steps, "Steps", 1, limits.max_steps),
        use_karras=use_karras,
        cfg_scale=_number(s.cfg_scale, "Guidance scale", 0.0, 30.0),
        guidance_rescale=_number(s.guidance_rescale, "Guidance rescale", 0.0, 1.0),
        eta=_number(s.eta, "Eta", 0.0, 1.0),
        seed=resolve_seed(s.seed),
        batch_size=_integer(s.batch_size, "Images per prompt", 1, limits.max_batch),
    )


def _checkpoint(key: Any, task: str, catalog: Catalog) -> str:
    if isinstance(key, str) and key not in catalog.tasks and "/" in key:
        raise InvalidRequest(
            f"Custom model repos such as {key[:100]!r} are not allowed on this server; the operator can allow "
            "some with SD2APP_ALLOWED_REPOS."
        )
    if not isinstance(key, str) or key not in catalog.tasks:
        raise InvalidRequest(f"Unknown checkpoint {key!r}; choose one of: {', '.join(catalog.tasks)}.")
    if task not in catalog.tasks[key]:
        fits = [k for k, tasks in catalog.tasks.items() if task in tasks]
        raise InvalidRequest(f"Checkpoint {key!r} cannot do {task}; use one of: {', '.join(fits)}.")
    return key


def _side(value: Any, what: str, limits: Limits, warnings: list[str]) -> int:
    side = _integer(value, what, 64, limits.max_side)
    rounded = max(64, min(limits.max_side - limits.max_side % 8, int(side / 8 + 0.5) * 8))  # halves round up
    if rounded != side:
        warnings.append(f"{what} {side} was rounded to {rounded} (a multiple of 8).")
    return rounded


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


def _check_size(value: Any, what: str, max_pixels: int) -> Image.Image:
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


def _decoded(convert: Any, image: Image.Image, what: str) -> Image.Image:
    """`convert(image)`, with a corrupt, truncated or unconvertible file refused in words."""
    try:
        return convert(image)
    except (OSError, SyntaxError, ValueError) as error:  # what PIL raises for broken files and odd modes
        raise InvalidRequest(f"{what[0].upper()}{what[1:]} could not be read ({error}); upload a PNG or JPEG.") from error


def _image(value: Any, what: str, max_pixels: int) -> Image.Image:
    return _decoded(to_rgb, _check_size(value, what, max_pixels), what)


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


def _fit_inside(image: Image.Image, max_side: int, warnings: list[str]) -> Image.Image:
    """Shrink an input that is larger than a generated image may be, and make its sides multiples of 8."""
    width, height = image.size
    scale = min(1.0, max_side / max(width, height))
    new = (max(8, int(width * scale) // 8 * 8), max(8, int(height * scale) // 8 * 8))
    if new != (width, height):
        if scale < 1.0:
            warnings.append(f"The image ({width}x{height}) was resized to {new[0]}x{new[1]} to fit {max_side} pixels.")
        image = image.resize(new, Image.Resampling.LANCZOS)
    return image


def _strength(value: Any, steps: int) -> float:
    strength = _number(value, "Strength", 0.0, 1.0)
    if int(steps * strength) < 1:
        raise InvalidRequest(
            f"Strength {strength:g} with {steps} steps runs no denoising step; raise the strength or the steps."
        )
    return strength


def validate(request: Request, catalog: Catalog, limits: Limits = Limits()) -> tuple[Request, list[str]]:
    """A complete, in-range copy of `request` and the warnings to show; `InvalidRequest` otherwise.

    The checked request's cost (`sd2_app.api.cost`) must also be within `limits.max_job_cost`.
    """
    if isinstance(request, XYZPlotRequest):
        from sd2_app.api.plot import validate_plot

        return validate_plot(request, catalog, limits)  # every cell, and the plot's total cost
    checked, warnings = _validate_fields(request, catalog, limits)
    check_job_cost(checked, job_cost(checked, catalog), limits.max_job_cost)
    return checked, warnings


def _validate_fields(request: Request, catalog: Catalog, limits: Limits) -> tuple[Request, list[str]]:
    warnings: list[str] = []
    if type(request) not in REQUEST_TYPES.values():
        raise InvalidRequest(f"Unknown request type {type(request).__name__}.")
    task = request.task
    common: dict[str, Any] = {
        "prompt": _clean_text(request.prompt, "Prompt"),
        "negative_prompt": _clean_text(request.negative_prompt, "Negative prompt"),
        "checkpoint": _checkpoint(request.checkpoint, task, catalog),
        "sampling": _sampling(request.sampling, catalog, limits),
    }
    fields = {  # each task's own fields, checked and completed into `common`
        Txt2ImgRequest: _txt2img_fields, Img2ImgRequest: _img2img_fields, InpaintRequest: _inpaint_fields,
        UpscaleRequest: _upscale_fields, DepthRequest: _depth_fields,
    }.get(type(request))
    if isinstance(request, OutpaintRequest):
        common.update(_outpaint_fields(request, common["sampling"].steps, limits))
    elif fields is not None:
        fields(request, common, catalog, limits, warnings)
    return replace(request, **common), warnings


def _txt2img_fields(
    request: Txt2ImgRequest, common: dict[str, Any], catalog: Catalog, limits: Limits, warnings: list[str]
) -> None:
    """Size (the checkpoint's native one by default), hires fix, seed extras and tiling."""
    native = catalog.resolutions[common["checkpoint"]]
    width = native if request.width is None else request.width
    height = native if request.height is None else request.height
    common["width"] = _side(width, "Width", limits, warnings)
    common["height"] = _side(height, "Height", limits, warnings)
    from sd2_app.api.txt2img_options import check_hires, check_seed_extras, check_tiling

    common["hires"] = check_hires(request.hires, (common["width"], common["height"]), common["sampling"],
                                  catalog, limits)
    common["seed_extras"] = check_seed_extras(request.seed_extras, limits)
    common["tiling"] = check_tiling(request.tiling)


def _img2img_fields(
    request: Img2ImgRequest, common: dict[str, Any], catalog: Catalog, limits: Limits, warnings: list[str]
) -> None:
    """The init image (resized to the requested size, or fitted), strength, seed extras and tiling."""
    steps = common["sampling"].steps
    image = _image(request.image, "an init image", limits.max_input_pixels)
    if request.width is not None or request.height is not None:
        width = _side(request.width if request.width is not None else image.width, "Width", limits, warnings)
        height = _side(request.height if request.height is not None else image.height, "Height", limits, warnings)
        image = image.resize((width, height), Image.Resampling.LANCZOS) if image.size != (width, height) else image
    else:
        image = _fit_inside(image, limits.max_side, warnings)
    common.update(image=image, width=image.width, height=image.height, strength=_strength(request.strength, steps))
    from sd2_app.api.txt2img_options import check_seed_extras, check_tiling

    extras = check_seed_extras(request.seed_extras, limits)
    if extras.resize_from is not None:
        raise InvalidRequest("Seed resize applies to text to image only; leave it at 0 for image to image.")
    common.update(seed_extras=extras, tiling=check_tiling(request.tiling))


def _inpaint_fields(
    request: InpaintRequest, common: dict[str, Any], catalog: Catalog, limits: Limits, warnings: list[str]
) -> None:
    """The image, its mask (resized to it, not empty), strength and the paste-back settings."""
    steps = common["sampling"].steps
    image = _fit_inside(_image(request.image, "an image to inpaint", limits.max_input_pixels), limits.max_side, warnings)
    if request.mask is None:
        raise InvalidRequest("Paint a mask over the area to repaint (or upload a mask image).")
    mask = _decoded(to_mask, _check_size(request.mask, "the mask", limits.max_input_pixels), "the mask")
    if mask.size != image.size:
        warnings.append(f"The mask ({mask.width}x{mask.height}) was resized to the image ({image.width}x{image.height}).")
        mask = mask.resize(image.size, Image.Resampling.NEAREST)
    if mask.getextrema()[1] < 128:
        raise InvalidRequest("The mask is empty: paint over the area to repaint (white = repaint).")
    common.update(
        image=image,
        mask=mask,
        strength=_strength(request.strength, steps),
        mask_blur=_integer(request.mask_blur, "Mask blur", 0, 64),
        only_masked=_flag(request.only_masked, "Only masked area"),
        only_masked_padding=_integer(request.only_masked_padding, "Only-masked padding", 0, 256),
        keep_unmasked=_flag(request.keep_unmasked, "Keep unmasked"),
    )


def _upscale_fields(
    request: UpscaleRequest, common: dict[str, Any], catalog: Catalog, limits: Limits, warnings: list[str]
) -> None:
    """The low-resolution image, noise level and tile size."""
    image = _image(request.image, "an image to upscale", limits.max_upscale_input_pixels)
    common.update(
        image=image,
        noise_level=_integer(request.noise_level, "Noise level", 0, MAX_NOISE_LEVEL),
        tile_size=_integer(request.tile_size, "Tile size", 32, 512),
    )


def _depth_fields(
    request: DepthRequest, common: dict[str, Any], catalog: Catalog, limits: Limits, warnings: list[str]
) -> None:
    """The image, an optional depth map (finite values) and strength."""
    steps = common["sampling"].steps
    image = _fit_inside(_image(request.image, "an image", limits.max_input_pixels), limits.max_side, warnings)
    depth = request.depth_map
    if depth is not None:
        depth = _decoded(to_depth, _check_size(depth, "the depth map", limits.max_input_pixels), "the depth map")
        if not np.isfinite(np.asarray(depth)).all():
            raise InvalidRequest("The depth map has NaN or infinite values; save it with finite depths.")
    common.update(image=image, depth_map=depth, strength=_strength(request.strength, steps))


def _outpaint_fields(request: OutpaintRequest, steps: int, limits: Limits) -> dict[str, Any]:
    """The image (never resized: its pixels come back unchanged), margins, fill and blur of an outpaint."""
    image = _image(request.image, "an image to outpaint", limits.max_input_pixels)
    sides = {side: _integer(getattr(request, side), f"Outpaint {side}", 0, limits.max_side) for side in OUTPAINT_SIDES}
    odd = [f"{side} {value}" for side, value in sides.items() if value % 8]
    if odd:
        raise InvalidRequest(f"Outpaint margins must be multiples of 8 pixels; got {', '.join(odd)}.")
    if not any(sides.values()):
        raise InvalidRequest("Choose how far to extend the image: left, right, up or down (multiples of 8).")
    width = image.width + sides["left"] + sides["right"]
    height = image.height + sides["up"] + sides["down"]
    if max(width, height) > limits.max_side:
        raise InvalidRequest(f"The extended image would be {width}x{height}; each side may be at most "
                             f"{limits.max_side} pixels. Extend less or start from a smaller image.")
    if request.fill not in OUTPAINT_FILLS:
        raise InvalidRequest(f"Unknown outpaint fill {request.fill!r}; choose one of: {', '.join(OUTPAINT_FILLS)}.")
    return {**sides, "image": image, "fill": request.fill, "strength": _strength(request.strength, steps),
            "mask_blur": _integer(request.mask_blur, "Mask blur", 0, 64),
            "keep_original": _flag(request.keep_original, "Keep the original")}
