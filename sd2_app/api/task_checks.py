"""The checks of one task request (not a plot): common fields, then the task's own fields, then its cost.

`validate_task(request, catalog, limits)` returns a complete copy (seed drawn, size filled in and rounded,
images converted to RGB) and the warnings to show; `InvalidRequest` otherwise. `validation.validate` is the
front door (it sends a plot to `plot.validate_plot`, which checks each cell here).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np
from PIL import Image

from sd2_app.api.batch_count import checked_batch_count
from sd2_app.api.checks import (MIN_SIDE, Catalog, Limits, check_sampler_names, check_schedule, clean_text, flag,
                                integer, number, resolve_seed, to_multiple_of_8)
from sd2_app.api.cost import check_job_cost, job_cost
from sd2_app.api.image_inputs import check_size, checked_image, decoded, fit_inside, to_depth, to_mask
from sd2_app.api.requests import (
    DepthRequest,
    HiresFix,
    Img2ImgRequest,
    MASK_MODES,
    MASKED_CONTENT,
    OUTPAINT_FILLS,
    InpaintRequest,
    OutpaintRequest,
    REQUEST_TYPES,
    Sampling,
    TaskRequest,
    Txt2ImgRequest,
    UpscaleRequest,
    guidance_on,
)
from sd2_app.api.txt2img_options import check_hires, check_seed_extras
from sd2_app.errors import InvalidRequest, shown
from sd2_app.lora_tags import is_lora_tag, lora_tags
from sd2_app.prompt_syntax import (EXTRA_NETWORK, EXTRA_NETWORKS, MAX_WEIGHT, clamped_weights, prompt_parts,
                                   unsupported_syntax)

MAX_NOISE_LEVEL = 350  # x4 upscaler's model_index.json

OUTPAINT_SIDES = ("left", "right", "up", "down")


def validate_task(request: TaskRequest, catalog: Catalog, limits: Limits, *,
                  priced: bool = True) -> tuple[TaskRequest, list[str]]:
    """A complete, in-range copy of `request` and the warnings to show; its cost within `limits.max_job_cost`
    unless not `priced` (an X/Y/Z plot's base and cells: the plot prices their sum and says what to lower in
    the plot's terms, `sd2_app.api.plot.check_plot`)."""
    checked, warnings = _validate_fields(request, catalog, limits)
    if priced:
        check_job_cost(checked, job_cost(checked, catalog), limits.max_job_cost)
    return checked, warnings


def checked_sampling(s: Sampling, catalog: Catalog, limits: Limits) -> Sampling:
    """`s` as every task's check takes it (raises InvalidRequest); the Upscale tab prices its steps with it."""
    check_sampler_names((s.sampler,), catalog)
    check_schedule(s.schedule, s.sampler, catalog)
    checked = replace(
        s,
        steps=integer(s.steps, "Steps", 1, limits.max_steps),
        cfg_scale=number(s.cfg_scale, "Guidance scale", 0.0, 30.0),
        guidance_rescale=number(s.guidance_rescale, "Guidance rescale", 0.0, 1.0),
        eta=number(s.eta, "Eta", 0.0, 1.0),
        seed=resolve_seed(s.seed),
        batch_size=integer(s.batch_size, "Images per prompt", 1, limits.max_batch),
    )
    return replace(checked, batch_count=checked_batch_count(s.batch_count, checked.batch_size, limits))


def _checkpoint(key: Any, task: str, catalog: Catalog) -> str:
    if isinstance(key, str) and key not in catalog.tasks and "/" in key:
        raise InvalidRequest(
            f"Custom model repos such as {shown(key)} are not allowed on this server; the operator can allow "
            "some with SD2APP_ALLOWED_REPOS."
        )
    if not isinstance(key, str) or key not in catalog.tasks:
        raise InvalidRequest(f"Unknown checkpoint {shown(key)}; choose one of: {', '.join(catalog.tasks)}.")
    if task not in catalog.tasks[key]:
        fits = [k for k, tasks in catalog.tasks.items() if task in tasks]
        raise InvalidRequest(f"Checkpoint {shown(key)} cannot do {task}; use one of: {', '.join(fits)}.")
    return key


def image_side(value: Any, what: str, limits: Limits, warnings: list[str]) -> int:
    """A run's width or height from `value`: a whole number in range (else InvalidRequest) rounded to a multiple of
    8 within the limits, with a warning where that changed it. The tabs' size controls show a typed side as this
    makes it (`ui.size_boxes`)."""
    side = integer(value, what, MIN_SIDE, limits.max_side)
    rounded = max(MIN_SIDE, min(limits.max_side - limits.max_side % 8, to_multiple_of_8(side)))
    if rounded != side:
        warnings.append(f"{what} {side} was rounded to {rounded} (a multiple of 8).")
    return rounded


def img2img_size(width: Any, height: Any, image_size: tuple[int, int], limits: Limits,
                 warnings: list[str]) -> tuple[int, int]:
    """The size an image-to-image run makes of an image of `image_size` asked for `width` x `height` (one of them
    may be None: that side is the image's): each side rounded to a multiple of 8, with a warning where that
    changed a given side. The Image to image tab resizes in its resize mode to this size, so it is one rule."""
    return (image_side(_given_or_image_side(width, image_size[0], "Width", limits), "Width", limits, warnings),
            image_side(_given_or_image_side(height, image_size[1], "Height", limits), "Height", limits, warnings))


def _given_or_image_side(value: Any, own_side: int, what: str, limits: Limits) -> Any:
    """An image-to-image side: `value` as given, or the image's own `own_side` where it was left out (the other
    side given); an image's side out of range is refused saying it is the image's, not a typed one."""
    if value is not None:
        return value
    if not MIN_SIDE <= own_side <= limits.max_side:
        other = "Height" if what == "Width" else "Width"
        raise InvalidRequest(f"{what} is empty, so it would be the image's {what.lower()}, {own_side}, which is not "
                             f"between {MIN_SIDE} and {limits.max_side}: type a {what.lower()}, or clear {other} too "
                             "to fit the image.")
    return own_side


def weight_warnings(prompt: str, label: str, shown: int = 3) -> list[str]:
    """The warning for attention weights in `prompt` beyond ±MAX_WEIGHT (prompt_syntax clamps them), naming
    the first `shown` stretches of text, what they asked for and what was used; [] when none was clamped."""
    clamped = clamped_weights(prompt)
    if not clamped:
        return []
    named = [(" ".join(text.split()) or text, weight) for text, weight in clamped[:shown]]
    asked = ", ".join(f'{weight:.3g} on "{_shortened(text)}"' for text, weight in named)
    if len(clamped) > shown:
        asked += f" and {len(clamped) - shown} more"
    used = ", ".join(f"{math.copysign(MAX_WEIGHT, weight):g}" for _, weight in named)
    plural = len(clamped) > 1
    return [f"The {label} asks for weight{'s' if plural else ''} {asked}; attention weights are limited to "
            f"±{MAX_WEIGHT:g}, so {used}{' and so on' if len(clamped) > shown else ''} "
            f"{'were' if plural else 'was'} used."]


def syntax_warnings(prompt: str, label: str) -> list[str]:
    """The warnings for A1111 prompt syntax we do not support (prompt_syntax.unsupported_syntax), naming each
    kind found with its first use; [] when there is none. Extra networks in the prompt (not the negative
    prompt) have their own: they are left out of what the model reads, as A1111 leaves them out."""
    found = unsupported_syntax(prompt)
    left_out = [text for name, text in found if name == EXTRA_NETWORKS] if label == "prompt" else []
    read = [(name, text) for name, text in found if not left_out or name != EXTRA_NETWORKS]
    warnings = []
    if read:
        uses = ", ".join(f'{name} "{_shortened(text)}"' for name, text in read)
        warnings.append(f"The {label} uses A1111 syntax that this app does not support: {uses}. It is read as plain "
                        "text (brackets still weight what they enclose); see the README's Prompts section.")
    if left_out:
        warnings.append(f'The {label} names an extra network that this app does not have: '
                        f'"{_shortened(left_out[0])}". As in A1111, such tags are left out of the text the model '
                        "reads; see the README's Prompts section.")
    return warnings


def part_weight_warnings(prompt: str) -> list[str]:
    """The warning for a prompt of one part read with a weight other than 1 (a number after a colon at its end,
    `prompt_syntax.subprompts`): A1111 reads it so, as this app does, and it is seldom meant ("16:9")."""
    parts = prompt_parts(prompt)
    if len(parts) > 1 or parts[0][1] == 1.0:
        return []
    text, weight = parts[0]
    return [f'The prompt ends in ":{weight:g}", which A1111 reads as the weight of the prompt\'s guidance, as this '
            f'app does: "{_shortened(text)}" is guided x{weight:g}. End the prompt with "," to keep the number as '
            "text."]


def hires_prompt_warnings(hires: HiresFix | None, prompt: str) -> list[str]:
    """The warnings for a hires fix's own prompts: attention weights over the limit, and LoRA tags other than the
    prompt's (the LoRAs are merged for the whole job: both passes run with the prompt's)."""
    if hires is None:
        return []
    warnings = weight_warnings(hires.prompt, "hires prompt") + weight_warnings(hires.negative_prompt,
                                                                                "hires negative prompt")
    if hires.prompt and lora_tags(hires.prompt) != lora_tags(prompt):
        warnings.append("The hires prompt's LoRA tags differ from the prompt's; both passes run with the prompt's "
                        "LoRAs.")
    return warnings


def lora_warnings(prompt: str, negative_prompt: str, loras: frozenset[str]) -> list[str]:
    """The warnings for the prompt's LoRA tags naming a LoRA the host lacks (left out, as A1111 leaves them out
    with "Networks not found") and for LoRA tags in the negative prompt (read as text there, as A1111 reads
    them); raises InvalidRequest for a tag that cannot be read (`lora_tags`)."""
    missing = [tag.name for tag in lora_tags(prompt) if tag.name not in loras]
    warnings = []
    if missing:
        have = f"the LoRAs here are {', '.join(sorted(loras))}" if loras else "this app has no LoRAs"
        warnings.append(f"LoRA{'s' if len(missing) > 1 else ''} not found: {', '.join(map(shown, missing))} "
                        f"({have}); {'their tags are' if len(missing) > 1 else 'its tag is'} left out of the prompt.")
    negative = [match.group(0) for match in EXTRA_NETWORK.finditer(negative_prompt) if is_lora_tag(match.group(0))]
    if negative:
        warnings.append(f'The negative prompt has a LoRA tag, "{_shortened(negative[0])}": as in A1111, LoRAs are '
                        "read from the prompt only; in the negative prompt the tag is read as plain text.")
    return warnings


def _shortened(text: str) -> str:
    return text if len(text) <= 30 else text[:29] + "…"


def _strength(value: Any, steps: int) -> float:
    strength = number(value, "Strength", 0.0, 1.0)
    if int(steps * strength) < 1:
        raise InvalidRequest(
            f"Strength {strength:g} with {steps} steps runs no denoising step; raise the strength or the steps."
        )
    return strength



def _validate_fields(request: TaskRequest, catalog: Catalog, limits: Limits) -> tuple[TaskRequest, list[str]]:
    warnings: list[str] = []
    if type(request) not in REQUEST_TYPES.values():
        raise InvalidRequest(f"Unknown request type {type(request).__name__}.")
    task = request.task
    common: dict[str, Any] = {
        "prompt": clean_text(request.prompt, "Prompt"),
        "negative_prompt": clean_text(request.negative_prompt, "Negative prompt"),
        "checkpoint": _checkpoint(request.checkpoint, task, catalog),
        "sampling": checked_sampling(request.sampling, catalog, limits),
    }
    warnings += weight_warnings(common["prompt"], "prompt") + syntax_warnings(common["prompt"], "prompt")
    warnings += part_weight_warnings(common["prompt"])
    negative = common["negative_prompt"] if guidance_on(common["sampling"].cfg_scale) else ""  # read with guidance
    warnings += weight_warnings(negative, "negative prompt") + syntax_warnings(negative, "negative prompt")
    warnings += lora_warnings(common["prompt"], negative, catalog.loras)
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
    common["width"] = image_side(width, "Width", limits, warnings)
    common["height"] = image_side(height, "Height", limits, warnings)
    common["hires"] = check_hires(request.hires, (common["width"], common["height"]), common["sampling"],
                                  catalog, limits)
    warnings += hires_prompt_warnings(common["hires"], common["prompt"])
    common["seed_extras"] = check_seed_extras(request.seed_extras, limits)
    common["tiling"] = flag(request.tiling, "Tiling")


def _img2img_fields(
    request: Img2ImgRequest, common: dict[str, Any], catalog: Catalog, limits: Limits, warnings: list[str]
) -> None:
    """The init image (resized to the requested size, or fitted), strength, seed extras and tiling."""
    steps = common["sampling"].steps
    image = checked_image(request.image, "an init image", limits.max_input_pixels)
    if request.width is not None or request.height is not None:
        width, height = img2img_size(request.width, request.height, image.size, limits, warnings)
        image = image.resize((width, height), Image.Resampling.LANCZOS) if image.size != (width, height) else image
    else:
        image = fit_inside(image, limits.max_side, warnings)
    common.update(image=image, width=image.width, height=image.height, strength=_strength(request.strength, steps))
    extras = check_seed_extras(request.seed_extras, limits)
    if extras.resize_from is not None:
        raise InvalidRequest("Seed resize applies to text to image only; leave it at 0 for image to image.")
    common.update(seed_extras=extras, tiling=flag(request.tiling, "Tiling"))


def _inpaint_fields(
    request: InpaintRequest, common: dict[str, Any], catalog: Catalog, limits: Limits, warnings: list[str]
) -> None:
    """The image, its mask (resized to it, not empty), strength and the paste-back settings."""
    steps = common["sampling"].steps
    image = fit_inside(checked_image(request.image, "an image to inpaint", limits.max_input_pixels), limits.max_side, warnings)
    if request.mask is None:
        raise InvalidRequest("Paint a mask over the area to repaint (or upload a mask image).")
    mask = decoded(to_mask, check_size(request.mask, "the mask", limits.max_input_pixels), "the mask")
    if mask.size != image.size:
        warnings.append(f"The mask ({mask.width}x{mask.height}) was resized to the image ({image.width}x{image.height}).")
        mask = mask.resize(image.size, Image.Resampling.NEAREST)
    mask_mode = _choice(request.mask_mode, MASK_MODES, "mask mode")
    darkest, lightest = mask.getextrema()
    if mask_mode == MASK_MODES[0] and lightest < 128:
        raise InvalidRequest("The mask is empty: paint over the area to repaint (white = repaint).")
    if mask_mode == MASK_MODES[1] and darkest >= 128:
        raise InvalidRequest(f"The mask covers the whole image, and Mask mode \"{MASK_MODES[1]}\" repaints what it "
                             "does not cover: nothing.")
    common.update(
        image=image,
        mask=mask,
        mask_mode=mask_mode,
        strength=_strength(request.strength, steps),
        mask_blur=integer(request.mask_blur, "Mask blur", 0, 64),
        only_masked=flag(request.only_masked, "Only masked area"),
        only_masked_padding=integer(request.only_masked_padding, "Only-masked padding", 0, 256),
        keep_unmasked=flag(request.keep_unmasked, "Keep unmasked"),
        masked_content=_choice(request.masked_content, MASKED_CONTENT, "masked content"),
    )


def _choice(value: Any, choices: tuple[str, ...], name: str) -> str:
    """`value` when it is one of `choices` (a setting of fixed names), else the refusal naming them."""
    if not isinstance(value, str) or value not in choices:
        raise InvalidRequest(f"Unknown {name} {shown(value)}; choose one of: {', '.join(choices)}.")
    return value


def _upscale_fields(
    request: UpscaleRequest, common: dict[str, Any], catalog: Catalog, limits: Limits, warnings: list[str]
) -> None:
    """The low-resolution image, noise level and tile size."""
    image = checked_image(request.image, "an image to upscale", limits.max_upscale_input_pixels)
    common.update(
        image=image,
        noise_level=integer(request.noise_level, "Noise level", 0, MAX_NOISE_LEVEL),
        tile_size=integer(request.tile_size, "Tile size", 32, 512),
    )


def _depth_fields(
    request: DepthRequest, common: dict[str, Any], catalog: Catalog, limits: Limits, warnings: list[str]
) -> None:
    """The image, an optional depth map (finite values) and strength."""
    steps = common["sampling"].steps
    image = fit_inside(checked_image(request.image, "an image", limits.max_input_pixels), limits.max_side, warnings)
    depth = request.depth_map
    if depth is not None:
        depth = decoded(to_depth, check_size(depth, "the depth map", limits.max_input_pixels), "the depth map")
        if not np.isfinite(np.asarray(depth)).all():
            raise InvalidRequest("The depth map has NaN or infinite values; save it with finite depths.")
    common.update(image=image, depth_map=depth, strength=_strength(request.strength, steps))


def _outpaint_fields(request: OutpaintRequest, steps: int, limits: Limits) -> dict[str, Any]:
    """The image (never resized: its pixels come back unchanged), margins, fill and blur of an outpaint."""
    image = checked_image(request.image, "an image to outpaint", limits.max_input_pixels)
    sides = {side: integer(getattr(request, side), f"Outpaint {side}", 0, limits.max_side) for side in OUTPAINT_SIDES}
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
        raise InvalidRequest(f"Unknown outpaint fill {shown(request.fill)}; choose one of: {', '.join(OUTPAINT_FILLS)}.")
    return {**sides, "image": image, "fill": request.fill, "strength": _strength(request.strength, steps),
            "mask_blur": integer(request.mask_blur, "Mask blur", 0, 64),
            "keep_original": flag(request.keep_original, "Keep the original")}
