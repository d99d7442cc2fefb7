"""Server-side checks of the text-to-image workflow options: the hires fix and the seed extras.

Called by `task_checks.validate_task` for every `Txt2ImgRequest` (and so for every plot's base request).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from sd2_app.api.requests import HIRES_UPSCALERS, X4_UPSCALER, HiresFix, Sampling, SeedExtras
from sd2_app.api.checks import Catalog, Limits, clean_text, integer, number, resolve_seed, schedule_name
from sd2_app.api.upscaler_names import hires_upscaler_named, x4_checkpoint
from sd2_app.errors import InvalidRequest, shown
from sd2_app.samplers.registry import AUTOMATIC

MAX_HIRES_SCALE = 4.0


def _optional_int(value: Any, what: str, low: int, high: int) -> int | None:
    """None or 0 mean "not set" (the UI's 0 = off); anything else must be a whole number in range."""
    if value is None or (not isinstance(value, bool) and value == 0):
        return None
    return integer(value, what, low, high)


def check_hires(
    hires: HiresFix | None, size: tuple[int, int], sampling: Sampling, catalog: Catalog, limits: Limits
) -> HiresFix | None:
    """A complete hires fix for a first pass of `size` (width, height), or None when it is off (an API
    client may send anything: the type is checked too)."""
    if hires is None:
        return None
    if not isinstance(hires, HiresFix):
        raise InvalidRequest(f"Hires fix must be a HiresFix, got {type(hires).__name__}.")
    upscaler = hires_upscaler_named(hires.upscaler, catalog)  # any case; the x4 also by its checkpoint's names
    if upscaler is None:
        raise InvalidRequest(f"Unknown hires upscaler {shown(hires.upscaler)}; choose one of: {', '.join(HIRES_UPSCALERS)}.")
    if upscaler == X4_UPSCALER:
        if x4_checkpoint(catalog) is None:
            raise InvalidRequest("The SD2 x4 hires upscaler needs the x4 upscaler checkpoint, which this server lacks.")
    sampler = hires.sampler or None
    if sampler is not None and (not isinstance(sampler, str) or sampler not in catalog.samplers):
        raise InvalidRequest(f"Unknown hires sampler {shown(sampler)}; choose one of: {', '.join(catalog.samplers)}.")
    schedule = _hires_schedule(hires.schedule, sampler, sampling, catalog)
    checked = replace(
        hires,
        upscaler=upscaler,
        sampler=sampler,
        schedule=schedule,
        scale=number(hires.scale, "Hires upscale", 1.0, MAX_HIRES_SCALE),
        width=_optional_int(hires.width, "Hires width", 64, limits.max_side),
        height=_optional_int(hires.height, "Hires height", 64, limits.max_side),
        steps=_optional_int(hires.steps, "Hires steps", 1, limits.max_steps),
        denoising_strength=number(hires.denoising_strength, "Hires denoising strength", 0.0, 1.0),
        prompt=clean_text(hires.prompt, "Hires prompt"),
        negative_prompt=clean_text(hires.negative_prompt, "Hires negative prompt"),
    )
    target = checked.target(*size)
    if max(target) > limits.max_side:
        raise InvalidRequest(f"The hires target {target[0]}x{target[1]} is larger than this server's limit of "
                             f"{limits.max_side} pixels per side; lower the upscale or the size.")
    cover = checked.upscale_size(*size)  # what the first pass is upscaled (and VAE-encoded) to before the crop
    if max(cover) > limits.max_side:
        raise InvalidRequest(f"The hires fix upscales {size[0]}x{size[1]} to {cover[0]}x{cover[1]} before cropping "
                             f"it to {target[0]}x{target[1]}, larger than this server's limit of {limits.max_side} "
                             "pixels per side; give the hires width and height the image's shape, or only one of them.")
    if checked.second_pass_steps(sampling.steps) < 1:
        raise InvalidRequest("Hires denoising strength 0 runs no hires step; raise it (or turn the hires fix off).")
    return checked


def _hires_schedule(schedule: Any, sampler: str | None, sampling: Sampling, catalog: Catalog) -> str:
    """The hires schedule type ("" or None: the first pass's, given back as ""), one the second pass's sampler
    (`sampler`, checked; None: the first pass's) offers: Automatic for a sampler with no other."""
    own = "" if schedule is None or schedule == "" else schedule_name(schedule, "Hires schedule type")
    second_sampler = sampler or sampling.sampler
    if (own or sampling.schedule) == AUTOMATIC or catalog.samplers[second_sampler]:
        return own
    if own:
        raise InvalidRequest(f"Hires schedule type {own} is not available for the {second_sampler} sampler; pick "
                             f"{AUTOMATIC}, or a hires sampler that offers it.")
    raise InvalidRequest(f"Schedule type {sampling.schedule} is not available for the hires sampler {second_sampler}; "
                         f"pick a hires schedule type of {AUTOMATIC}, or another hires sampler.")


def check_seed_extras(extras: SeedExtras, limits: Limits) -> SeedExtras:
    """Variation strength in [0, 1] with a resolved variation seed when it is used; resize size in range."""
    if not isinstance(extras, SeedExtras):
        raise InvalidRequest(f"Seed extras must be SeedExtras, got {type(extras).__name__}.")
    strength = number(extras.variation_strength, "Variation strength", 0.0, 1.0)
    seed = resolve_seed(extras.variation_seed, "Variation seed") if strength > 0 else None
    resize = extras.resize_from
    if resize is not None:
        if not isinstance(resize, (tuple, list)) or len(resize) != 2:
            raise InvalidRequest(f"Seed resize from must be (width, height), got {shown(resize)}.")
        width = _optional_int(resize[0], "Seed resize from width", 64, limits.max_side)
        height = _optional_int(resize[1], "Seed resize from height", 64, limits.max_side)
        if (width is None) != (height is None):
            raise InvalidRequest("Seed resize from needs both a width and a height (0 for both turns it off).")
        resize = None if width is None or height is None else (width // 8 * 8, height // 8 * 8)
    return SeedExtras(variation_seed=seed, variation_strength=strength, resize_from=resize)
