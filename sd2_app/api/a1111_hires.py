"""The A1111 API's hires fix: `enable_hr` and its `hr_*` fields read as our `HiresFix` (A1111's
modules/processing.py, StableDiffusionProcessingTxt2Img, and modules/api/models.py for the field names).
No web framework here: `a1111.txt2img_job` calls it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sd2_app.api import requests as rq
from sd2_app.api.a1111_samplers import sampler_named, schedule_label
from sd2_app.api.checks import flag
from sd2_app.errors import InvalidRequest
from sd2_app.prompt_styles import StyleBook


def hires_fix(body: Mapping[str, Any], names: list[str], styles: StyleBook) -> rq.HiresFix | None:
    """enable_hr and its hr_* fields (A1111's names; 0 or empty means "as the first pass"); hr_sampler_name is
    read as sampler_name is (`sampler_named`), a name we lack is left for the Service to refuse. enable_hr is
    true or false (`checks.flag`; absent or null: off): the text "false" turned the fix on, as anything non-empty
    is true. hr_prompt and hr_negative_prompt are the second pass's own prompts (empty: the first pass's); a
    checkpoint (hr_checkpoint_name) and a schedule type (hr_scheduler other than the first pass's) of its own are
    refused, as `_own_hires_settings` says. The host's `styles` named in the call apply to its own prompts, as
    to the prompts."""
    enable = body.get("enable_hr")
    if enable is None or not flag(enable, "enable_hr"):
        return None
    _own_hires_settings(body)
    hires_sampler = body.get("hr_sampler_name") or None
    if isinstance(hires_sampler, str):
        hires_sampler = sampler_named(hires_sampler, names) or hires_sampler
    hires = rq.HiresFix(
        upscaler=body.get("hr_upscaler") or "Latent", scale=body.get("hr_scale", 2.0),
        width=body.get("hr_resize_x") or None, height=body.get("hr_resize_y") or None,
        steps=body.get("hr_second_pass_steps") or None, denoising_strength=body.get("denoising_strength", 0.7),
        sampler=hires_sampler, prompt=body.get("hr_prompt") or "", negative_prompt=body.get("hr_negative_prompt") or "",
    )
    if not all(isinstance(text, str) for text in (hires.prompt, hires.negative_prompt)):
        return hires  # refused by validation
    return styles.hires_applied(hires, body.get("styles"))


SAME_AS_FIRST_PASS = (None, "", "Use same checkpoint", "Use same scheduler")  # A1111's words for "as the first pass"


def _own_hires_settings(body: Mapping[str, Any]) -> None:
    """Refuse hr_checkpoint_name and hr_scheduler that ask the second pass for something other than the first
    pass's: this app's hires fix runs with the first pass's (A1111's defaults)."""
    if body.get("hr_checkpoint_name") not in SAME_AS_FIRST_PASS:
        raise InvalidRequest("hr_checkpoint_name (a checkpoint of the hires pass's own) is not available: leave it "
                             "out, and the hires pass runs the first pass's checkpoint.")
    scheduler = body.get("hr_scheduler")
    first = schedule_label(body.get("scheduler") or "automatic")
    if scheduler not in SAME_AS_FIRST_PASS and schedule_label(scheduler) != first:
        raise InvalidRequest("hr_scheduler (a schedule type of the hires pass's own) is not available: leave it "
                             "out, and the hires pass runs the first pass's schedule type.")
