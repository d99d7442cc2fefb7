"""AUTOMATIC1111's web UI API in our vocabulary: its request fields -> our requests, our results -> its responses.

Field names, meanings and response shapes follow A1111's modules/api/models.py (the txt2img and img2img
processing models, TextToImageResponse, ProgressResponse, SamplerItem, SDModelItem) and modules/processing.py
(`Processed.js`, the `info` JSON). No web framework here: `a1111_routes.py` serves these over HTTP.

A1111 clients send every field of its request model, most at neutral values (webuiapi sends
`enable_hr: false`, `alwayson_scripts: {}`, `restore_faces: false`, ...). So each field is one of:
- SUPPORTED: mapped onto our request;
- NEUTRAL: accepted while it asks for nothing (its neutral value), refused with a 422 naming it otherwise;
- IGNORED: has no effect here (saving switches, hires settings while hires is off, ...);
- anything else: unknown, ignored with a log line (extensions add fields of their own).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from PIL import Image

from sd2_app import infotext_keys as keys
from sd2_app.api import requests as rq
from sd2_app.api.a1111_hires import hires_fix
from sd2_app.api.a1111_samplers import SCHEDULERS, read_sampler, schedule_label
from sd2_app.api.tasks import TASKS
from sd2_app.api.batch_count import checked_batch_count
from sd2_app.api.checks import Limits, flag, resolve_seed
from sd2_app.api.resize_modes import RESIZE_MODES, resize_to, shaped
from sd2_app.api.task_checks import img2img_size
from sd2_app.api.results import Result
from sd2_app.byte_limits import MAX_BASE64_CHARS, MAX_IMAGE_FILE_BYTES, MB
from sd2_app.errors import InvalidRequest, shown
from sd2_app.pipelines.metadata import parse_parameters
from sd2_app.prompt_styles import StyleBook

log = logging.getLogger(__name__)

IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"RIFF")  # PNG, JPEG, WebP (RIFF....WEBP)

COMMON_FIELDS = frozenset({
    "prompt", "negative_prompt", "steps", "cfg_scale", "sampler_name", "sampler_index", "scheduler", "seed",
    "batch_size", "n_iter", "width", "height", "eta", "override_settings", "send_images", "styles",
})
TXT2IMG_FIELDS = COMMON_FIELDS | {
    "enable_hr", "hr_upscaler", "hr_scale", "hr_resize_x", "hr_resize_y", "hr_second_pass_steps",
    "hr_sampler_name", "hr_scheduler", "hr_prompt", "hr_negative_prompt", "denoising_strength", "subseed",
    "subseed_strength",
    "seed_resize_from_w",
    "seed_resize_from_h", "tiling",
}
IMG2IMG_FIELDS = COMMON_FIELDS | {
    "init_images", "mask", "denoising_strength", "mask_blur", "inpainting_fill", "inpaint_full_res",
    "inpaint_full_res_padding", "inpainting_mask_invert", "resize_mode",
}


def _off(value: Any) -> bool:
    return not value  # False, 0, None, "", [], {}


NEUTRAL: dict[str, tuple[Callable[[Any], bool], str]] = {
    # field: (is it neutral?, what to say when it is not)
    "enable_hr": (_off, "hires fix (enable_hr) is available in txt2img only"),
    "alwayson_scripts": (_off, "scripts and extensions (alwayson_scripts) are not supported"),
    "script_name": (_off, "scripts (script_name) are not supported"),
    "script_args": (_off, "scripts (script_args) are not supported"),
    "restore_faces": (_off, "face restoration (restore_faces) is not available"),
    "tiling": (_off, "tiling is available in txt2img only"),
    "subseed_strength": (_off, "variation seeds (subseed_strength > 0) are available in txt2img only"),
    "s_churn": (_off, "s_churn is not available"),
    "s_noise": (lambda v: v in (None, 1, 1.0), "s_noise other than 1 is not available"),
    "s_min_uncond": (_off, "s_min_uncond is not available"),
    "initial_noise_multiplier": (lambda v: v in (None, 1, 1.0), "initial_noise_multiplier other than 1 is not available"),
    "refiner_checkpoint": (_off, "refiner checkpoints are not available"),
    "image_cfg_scale": (lambda v: True, ""),  # instruct-pix2pix only: A1111 itself ignores it for other models
}
IGNORED = frozenset({
    "do_not_save_samples", "do_not_save_grid", "save_images", "override_settings_restore_afterwards", "subseed",
    "seed_resize_from_h", "seed_resize_from_w", "firstphase_width", "firstphase_height", "hr_scale",
    "hr_upscaler", "hr_second_pass_steps", "hr_resize_x", "hr_resize_y",
    "hr_checkpoint_name",  # the second pass's own checkpoint is refused by `a1111_hires.hires_fix`
    "hr_sampler_name", "hr_scheduler", "hr_additional_modules",
    "s_tmax", "s_tmin", "include_init_images", "refiner_switch_at", "disable_extra_networks", "comments",
    "force_task_id", "infotext", "mask_blur_x", "mask_blur_y", "mask_round", "latent_mask", "firstpass_image",
})
INPAINTING_FILL_DEFAULT = 0  # A1111's "fill" (modules/processing.py, StableDiffusionProcessingImg2Img.inpainting_fill)


# (the name a call gives, or None; its task) -> our checkpoint key (`A1111Api.checkpoint_for`)
CheckpointFor = Callable[[Any, str], str]


@dataclass(frozen=True)
class Job:
    """One A1111 call as our request, `n_iter` as its batch count (the seed already drawn): the routes check it
    whole, then run each of its batches (`batch_count.batch_requests`) as a job of its own."""

    task: str  # "txt2img", "img2img", "inpaint" or "upscale"
    request: rq.TaskRequest
    checkpoint: str
    send_images: bool = True
    styles: tuple[str, ...] = ()  # the prompt styles applied, by name (A1111's `styles` in `info`)
    warnings: tuple[str, ...] = ()  # said while the call was read (an inpainting size rounded), before the results'


# A1111's titles of its plot scripts (scripts/xyz_grid.py's `Script.title`; "X/Y plot", the older
# scripts/xy_grid.py's), in any case as `script_name` matches them (modules/api/api.py, `script_name_to_index`).
PLOT_SCRIPTS = ("x/y/z plot", "x/y plot")
PLOT_SCRIPT_REFUSED = (
    "The X/Y/Z plot script (script_name) is not run through this API: A1111's script_args give each axis as a "
    "position in A1111's own list of axis types, which differs between A1111 versions, txt2img and img2img and "
    "installed extensions, so they cannot be read reliably here. Run the plot with this app's /xyz_plot endpoint "
    "(gradio_client: x_type='steps', x_values='10, 20', y_type=..., the README's API section) or its X/Y/Z plot "
    "tab; send script_name at its default or leave it out."
)


def check_fields(body: Mapping[str, Any], supported: frozenset[str] | set[str]) -> None:
    """Refuse what asks for a feature we lack; log (and ignore) fields nobody here knows."""
    script = body.get("script_name")
    if isinstance(script, str) and script.strip().lower() in PLOT_SCRIPTS:
        raise InvalidRequest(PLOT_SCRIPT_REFUSED)  # before script_args, whose refusal would not say where to go
    unknown = []
    for name, value in body.items():
        if name in supported or name in IGNORED:
            continue
        if name in NEUTRAL:
            is_neutral, message = NEUTRAL[name]
            if not is_neutral(value):
                raise InvalidRequest(f"{message}; send {name} at its default or leave it out.")
            continue
        unknown.append(name)
    if unknown:
        log.info("A1111 API: ignoring unknown field(s) %s", ", ".join(sorted(unknown)[:20]))


def image_bytes(value: Any, what: str) -> bytes:
    """The file of a base64 image (raw or a data URL) that claims to be a PNG, JPEG or WebP (its magic bytes)."""
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"{what} must be a base64-encoded PNG, JPEG or WebP image.")
    too_large = InvalidRequest(f"{what} is larger than the {MAX_IMAGE_FILE_BYTES // MB} MiB limit.")
    if len(value) > MAX_BASE64_CHARS:  # refused before decoding; the exact file size is checked after
        raise too_large
    if value.startswith("data:"):
        value = value.partition(",")[2]
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as error:
        raise InvalidRequest(f"{what} is not valid base64 ({error}).") from error
    if len(data) > MAX_IMAGE_FILE_BYTES:
        raise too_large
    if not data.startswith(IMAGE_MAGIC) or (data.startswith(b"RIFF") and data[8:12] != b"WEBP"):
        raise InvalidRequest(f"{what} must be a PNG, JPEG or WebP image.")
    return data


def decode_image(value: Any, what: str) -> Image.Image:
    """A base64 image (`image_bytes`), opened lazily: validation checks its size from the header."""
    data = image_bytes(value, what)
    try:
        return Image.open(io.BytesIO(data))
    except (OSError, Image.DecompressionBombError) as error:
        raise InvalidRequest(f"{what} could not be read ({error}).") from error


def _sampler(body: Mapping[str, Any], names: list[str], task: str) -> tuple[str, str]:
    """(our sampler, schedule type) from sampler_name (or the older sampler_index) and scheduler
    (`read_sampler`)."""
    raw = body.get("sampler_name") or body.get("sampler_index") or TASKS[task].sampler
    if not isinstance(raw, str):
        raise InvalidRequest(f"sampler_name must be text, got {shown(raw)}.")
    scheduler = body.get("scheduler") or "automatic"
    sampler, schedule = read_sampler(raw, scheduler, names)
    if sampler is None:
        raise InvalidRequest(f"Sampler {shown(raw)} is not available; choose one of: {', '.join(names)}.")
    if schedule_label(scheduler) is None:
        raise InvalidRequest(f"Scheduler {shown(scheduler)} is not available; choose one of: {', '.join(SCHEDULERS)}.")
    return sampler, schedule


def _checkpoint(body: Mapping[str, Any], task: str, checkpoint_for: CheckpointFor) -> str:
    """The checkpoint of the call: `checkpoint_for(override_settings.sd_model_checkpoint or None, task)`."""
    override = body.get("override_settings") or {}
    if not isinstance(override, Mapping):
        raise InvalidRequest("override_settings must be an object.")
    for name in override:
        if name != "sd_model_checkpoint":
            log.info("A1111 API: ignoring override setting %s", name)
    return checkpoint_for(override.get("sd_model_checkpoint") or None, task)


def _sampling(body: Mapping[str, Any], names: list[str], seed: int, n_iter: int, task: str) -> rq.Sampling:
    """Fields left out take the task's defaults (sd2_app/api/tasks.py), as in the web UI."""
    sampler, schedule = _sampler(body, names, task)
    row = TASKS[task]
    return rq.Sampling(
        sampler=sampler, schedule=schedule, steps=body.get("steps", row.steps),
        cfg_scale=body.get("cfg_scale", row.cfg_scale), eta=body.get("eta") or 0.0, seed=seed,
        batch_size=body.get("batch_size", 1), batch_count=n_iter,
    )


def _batches(body: Mapping[str, Any], limits: Limits) -> tuple[int, int]:
    """(n_iter, first seed): -1 draws one seed. n_iter is the request's batch count, whose rule (its limits in
    this API's names, each batch's seed, the cost of them all) is the web UI's: sd2_app/api/batch_count.py."""
    n_iter = checked_batch_count(body.get("n_iter", 1), body.get("batch_size", 1), limits, ("n_iter", "batch_size"))
    return n_iter, resolve_seed(body.get("seed", -1))


def _seed_extras(body: Mapping[str, Any]) -> rq.SeedExtras:
    """subseed / subseed_strength (a variation seed) and seed_resize_from_w/h (-1 or 0: off)."""
    resize_w, resize_h = body.get("seed_resize_from_w", -1), body.get("seed_resize_from_h", -1)
    resize = None if all(v in (None, -1, 0) for v in (resize_w, resize_h)) else (resize_w, resize_h)
    return rq.SeedExtras(variation_seed=body.get("subseed", -1), variation_strength=body.get("subseed_strength", 0.0),
                         resize_from=resize)


def _prompts(body: Mapping[str, Any], styles: StyleBook) -> dict[str, Any]:
    """The request's prompt and negative prompt with its `styles` applied (A1111 applies them before parsing)."""
    prompt, negative = body.get("prompt", ""), body.get("negative_prompt", "")
    styles.picked(body.get("styles"))  # a list of known names, or refused (422)
    if all(isinstance(text, str) or text is None for text in (prompt, negative)):  # others: refused by validation
        prompt, negative = styles.apply(prompt, negative, body.get("styles"))
    return {"prompt": prompt, "negative_prompt": negative}


def txt2img_job(body: Mapping[str, Any], checkpoint_for: CheckpointFor, names: list[str], limits: Limits,
                styles: StyleBook = StyleBook()) -> Job:
    check_fields(body, TXT2IMG_FIELDS)
    prompts = _prompts(body, styles)
    n_iter, seed = _batches(body, limits)
    checkpoint = _checkpoint(body, "txt2img", checkpoint_for)
    sampling = _sampling(body, names, seed, n_iter, "txt2img")
    hires = hires_fix(body, names, styles)
    request = rq.Txt2ImgRequest(**prompts, checkpoint=checkpoint, width=body.get("width", 512),
                                height=body.get("height", 512), sampling=sampling, hires=hires,
                                seed_extras=_seed_extras(body), tiling=body.get("tiling", False))
    return Job("txt2img", request, checkpoint, _send_images(body), tuple(body.get("styles") or ()))


def _send_images(body: Mapping[str, Any]) -> bool:
    """send_images, true or false (absent or null: true)."""
    send = body.get("send_images")
    return True if send is None else flag(send, "send_images")


def _masked_content(body: Mapping[str, Any]) -> str:
    """inpainting_fill: the index of A1111's "Masked content" choices (`MASKED_CONTENT`); A1111's default is 0."""
    fill = body.get("inpainting_fill", INPAINTING_FILL_DEFAULT)
    if isinstance(fill, bool) or not isinstance(fill, int) or not 0 <= fill < len(rq.MASKED_CONTENT):
        choices = ", ".join(f"{i} ({name})" for i, name in enumerate(rq.MASKED_CONTENT))
        raise InvalidRequest(f"inpainting_fill must be one of {choices}; got {shown(fill)}.")
    return rq.MASKED_CONTENT[fill]


def _inpaint_fields(body: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "masked_content": _masked_content(body),
        "mask_mode": _mask_mode(body),
        "mask_blur": body.get("mask_blur", 4),
        "only_masked": flag(body.get("inpaint_full_res", False), "inpaint_full_res"),  # "false" is not off
        "only_masked_padding": body.get("inpaint_full_res_padding", 32),
    }


def _mask_mode(body: Mapping[str, Any]) -> str:
    """inpainting_mask_invert: the index of A1111's "Mask mode" choices (`MASK_MODES`), or a boolean; default 0."""
    invert = body.get("inpainting_mask_invert", 0)
    if not isinstance(invert, (bool, int)) or invert not in (0, 1):
        choices = ", ".join(f"{i} ({name})" for i, name in enumerate(rq.MASK_MODES))
        raise InvalidRequest(f"inpainting_mask_invert must be one of {choices}; got {shown(invert)}.")
    return rq.MASK_MODES[int(invert)]


def _resize_mode(body: Mapping[str, Any]) -> str:
    """resize_mode: the index of A1111's resize modes (`RESIZE_MODES`; its 3, "Just resize (latent upscale)",
    is not offered); default 0."""
    mode = body.get("resize_mode", 0)
    if isinstance(mode, (int, float)) and mode in range(len(RESIZE_MODES)):  # a list or a dict is never equal
        return RESIZE_MODES[int(mode)]
    choices = ", ".join(f"{index} ({name})" for index, name in enumerate(RESIZE_MODES))
    raise InvalidRequest(f"resize_mode must be one of {choices}; got {shown(mode)}.")


def _inpaint_inputs(body: Mapping[str, Any], image: Image.Image, mask: Image.Image, mode: str, limits: Limits,
                    only_masked: bool, warnings: list[str]) -> tuple[Image.Image, Image.Image]:
    """The image and mask an inpainting call runs on. A1111 inpaints the whole image at width x height, image and
    mask resized in the resize mode (modules/processing.py, `StableDiffusionProcessingImg2Img.init`); so here,
    where a size is given (an empty side is the image's). "Only masked" (inpaint_full_res) keeps the image's size:
    its crop works at the checkpoint's resolution, as in the web UI. A side rounded to a multiple of 8 is said in
    `warnings`. An image or mask over the pixel limit is left as it is for validation to refuse, unread."""
    width, height = body.get("width"), body.get("height")
    if only_masked or (width is None and height is None):
        return image, mask
    if max(image.width * image.height, mask.width * mask.height) > limits.max_input_pixels:
        return image, mask
    size = img2img_size(width, height, image.size, limits, warnings)
    return resize_to(image, *size, mode), resize_to(mask.convert("L"), *size, mode)


def img2img_job(body: Mapping[str, Any], checkpoint_for: CheckpointFor, names: list[str], limits: Limits,
                styles: StyleBook = StyleBook()) -> Job:
    check_fields(body, IMG2IMG_FIELDS)
    prompts = _prompts(body, styles)
    images = body.get("init_images") or []
    if not isinstance(images, list) or len(images) != 1:
        raise InvalidRequest("init_images must hold exactly one base64 image.")
    mode = _resize_mode(body)
    warnings: list[str] = []
    n_iter, seed = _batches(body, limits)
    task = "inpaint" if body.get("mask") else "img2img"
    checkpoint = _checkpoint(body, task, checkpoint_for)
    sampling = _sampling(body, names, seed, n_iter, task)
    image = decode_image(images[0], "init_images[0]")
    common = {**prompts, "checkpoint": checkpoint, "image": image,
              "strength": body.get("denoising_strength", TASKS[task].strength)}
    if task == "inpaint":
        extra = _inpaint_fields(body)
        common["image"], mask = _inpaint_inputs(body, image, decode_image(body["mask"], "mask"), mode, limits,
                                                extra["only_masked"], warnings)
        base: rq.InpaintRequest | rq.Img2ImgRequest = rq.InpaintRequest(mask=mask, sampling=sampling, **common, **extra)
    else:
        width, height = body.get("width"), body.get("height")
        if width is not None or height is not None:
            common["image"] = shaped(limits, image, width, height, mode)
        base = rq.Img2ImgRequest(width=width, height=height, sampling=sampling, **common)
    return Job(task, base, checkpoint, _send_images(body), tuple(body.get("styles") or ()), tuple(warnings))


# The parameters text's keys A1111's `info` gives fields of their own (modules/processing.py, `create_infotext`'s
# fixed part); the rest of the first image's text is its `extra_generation_params` ("Schedule type", the hires
# fix's, "Denoising strength", "Mask blur", ...), as `Processed.js` gives them.
OWN_FIELDS = frozenset({keys.PROMPT, keys.NEGATIVE_PROMPT, keys.STEPS, keys.SAMPLER, keys.CFG_SCALE, keys.SEED,
                        keys.SIZE, keys.MODEL_HASH, keys.MODEL, keys.VARIATION_SEED, keys.VARIATION_SEED_STRENGTH,
                        keys.SEED_RESIZE_FROM, keys.TILING, keys.BATCH_SIZE, keys.BATCH_POS})


def info_json(job: Job, results: list[Result], started: float) -> str:
    """A1111's `info`: the first request's settings, then per image its seed and parameters text (none when
    /interrupt stopped the job before its first step: then the job request's settings, in that shape)."""
    first = results[0].request if results else job.request
    sampling = first.sampling
    images = [image for result in results for image in result.images]
    seeds = [result.image_seed(index) for result in results for index in range(len(result.images))]
    infotexts = [image.info.get(keys.PARAMETERS_KEY, "") for image in images]
    # each image's variation seed (A1111's subseed), -1 without one: the rule its noise was drawn by
    subseeds = [-1 if variation is None else variation
                for result in results for _, variation in rq.request_seeds(result.request, len(result.images))]
    extras = getattr(first, "seed_extras", None) or rq.SeedExtras()
    resize_w, resize_h = extras.resize_from or (-1, -1)
    width, height = (images[0].size if images else (getattr(first, "width", 0), getattr(first, "height", 0)))
    parsed = parse_parameters(infotexts[0]) if infotexts else {}  # the first image's settings, as A1111 gives them
    hires = getattr(first, "hires", None)
    return json.dumps({
        "prompt": first.prompt, "all_prompts": [first.prompt] * len(images),
        "negative_prompt": first.negative_prompt, "all_negative_prompts": [first.negative_prompt] * len(images),
        "seed": first.sampling.seed, "all_seeds": seeds, "subseed": subseeds[0] if subseeds else -1,
        "all_subseeds": subseeds, "subseed_strength": extras.variation_strength, "width": width, "height": height, "sampler_name": sampling.sampler,
        "scheduler": sampling.schedule, "cfg_scale": sampling.cfg_scale,
        "steps": sampling.steps, "batch_size": sampling.batch_size, "restore_faces": False,
        "face_restoration_model": None, "sd_model_name": job.checkpoint,
        "sd_model_hash": parsed.get(keys.MODEL_HASH),
        "sd_vae_name": None, "sd_vae_hash": None, "seed_resize_from_w": resize_w, "seed_resize_from_h": resize_h,
        "denoising_strength": getattr(hires or first, "denoising_strength", getattr(first, "strength", None)),
        "extra_generation_params": {key: value for key, value in parsed.items() if key not in OWN_FIELDS},
        "index_of_first_image": 0, "infotexts": infotexts, "styles": list(job.styles),
        "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(started)), "clip_skip": 1,
        "is_using_inpainting_conditioning": job.task == "inpaint", "version": "sd2-app",
        "warnings": [*job.warnings, *(w for result in results for w in result.warnings)],
    })


def echo_parameters(body: Mapping[str, Any]) -> dict[str, Any]:
    """A1111's `parameters`: the request as received, images left out (as A1111 does by default)."""
    return {k: (None if k in ("init_images", "mask", "image") else v) for k, v in body.items()}
