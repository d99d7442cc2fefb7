"""The A1111 API's hires fix: `enable_hr` and its `hr_*` fields read as our `HiresFix` (A1111's
modules/processing.py, StableDiffusionProcessingTxt2Img, and modules/api/models.py for the field names).
No web framework here: `a1111.txt2img_job` calls it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sd2_app.api import requests as rq
from sd2_app.api.a1111_samplers import read_sampler, sampler_named, schedule_label
from sd2_app.api.checks import flag
from sd2_app.errors import InvalidRequest
from sd2_app.prompt_styles import StyleBook


def hires_fix(body: Mapping[str, Any], names: list[str], styles: StyleBook) -> rq.HiresFix | None:
    """enable_hr and its hr_* fields (A1111's names; 0, empty or A1111's "Use same ..." means "as the first
    pass"); hr_sampler_name and hr_scheduler are read as sampler_name and scheduler are (`hires_sampler`), a name
    we lack is left for the Service to refuse. enable_hr is true or false (`checks.flag`; absent or null: off):
    the text "false" turned the fix on, as anything non-empty is true. hr_prompt and hr_negative_prompt are the
    second pass's own prompts (empty: the first pass's); a checkpoint of its own (hr_checkpoint_name) is refused.
    The host's `styles` named in the call apply to its own prompts, as to the prompts."""
    enable = body.get("enable_hr")
    if enable is None or not flag(enable, "enable_hr"):
        return None
    if body.get("hr_checkpoint_name") not in A1111_SAME:
        raise InvalidRequest("hr_checkpoint_name (a checkpoint of the hires pass's own) is not available: leave it "
                             "out, and the hires pass runs the first pass's checkpoint.")
    sampler, schedule = hires_sampler(body.get("hr_sampler_name"), body.get("hr_scheduler"), names)
    hires = rq.HiresFix(
        upscaler=body.get("hr_upscaler") or "Latent", scale=body.get("hr_scale", 2.0),
        width=body.get("hr_resize_x") or None, height=body.get("hr_resize_y") or None,
        steps=body.get("hr_second_pass_steps") or None, denoising_strength=body.get("denoising_strength", 0.7),
        sampler=sampler, schedule=schedule, prompt=body.get("hr_prompt") or "",
        negative_prompt=body.get("hr_negative_prompt") or "",
    )
    if not all(isinstance(text, str) for text in (hires.prompt, hires.negative_prompt)):
        return hires  # refused by validation
    return styles.hires_applied(hires, body.get("styles"))


# A1111's words for "as the first pass" (its hires fix dropdowns' first choices), and the empty values.
A1111_SAME = (None, "", "Use same checkpoint", "Use same sampler", "Use same scheduler")


def hires_sampler(name: Any, scheduler: Any, names: list[str]) -> tuple[Any, Any]:
    """(HiresFix.sampler, HiresFix.schedule) for hr_sampler_name and hr_scheduler: None and "" for the first
    pass's; names read as `a1111_samplers.read_sampler` reads sampler_name and scheduler (any case, a schedule at
    the end of the sampler's name winning, "DPM++ 2M Karras"); anything else as it came, for validation to refuse
    with its message."""
    schedule = "" if scheduler in A1111_SAME else schedule_label(scheduler) or scheduler
    if name in A1111_SAME:
        return None, schedule
    if not isinstance(name, str):
        return name, schedule
    sampler = sampler_named(name, names)
    if sampler is not None:
        return sampler, schedule
    named, suffix = read_sampler(name, None, names)
    return (named, suffix) if named is not None else (name, schedule)
