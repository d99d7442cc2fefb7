"""Hires fix (A1111's txt2img option, learned from modules/processing.py, `sample_hr_pass`): generate at the
request's size, upscale, then image-to-image at `denoising_strength` to the target size, running exactly the
hires steps at the end of a schedule of hires steps / strength (`HiresFix.schedule_steps`), as A1111 does.

Both passes are the one shared loop (`generate.generate`, then a cut schedule's `Job.denoise`). Upscalers:
"Latent" (bilinear) and "Latent (nearest-exact)" resize the first pass's latents; "Lanczos" resizes the
decoded image; "SD2 x4" runs the decoded image through the x4 upscaler, which the service brings in with
the model manager (api/service.py) and hands back as `HiresPassRequest.images`.

The second pass draws from fresh generators seeded with the images' seeds (A1111 does the same), so it is
image-to-image by hand with that seed and that schedule (where its strength cut runs the hires steps): for
pixel upscalers, the posterior sample of the upscaled image, then the noise; for latent upscalers, only the
noise. The seed extras shape the first pass only. Progress counts both passes on one bar: the first pass's
steps, then the second's after them. Stop in the second pass keeps its image so far, at the target size
(pipelines/sampling.py, `finished`); Stop in the first pass keeps nothing.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from sd2_app import infotext_keys as keys
from sd2_app.api.requests import ETA_SAMPLERS, HiresFix, HiresPassRequest, Sampling, Txt2ImgRequest, guidance_on
from sd2_app.checkpoints.components import Components
from sd2_app.errors import InvalidRequest
from sd2_app.pipelines.images import LANCZOS, postprocess, preprocess_image
from sd2_app.pipelines.loop import LatentProgressFn
from sd2_app.pipelines.metadata import Settings
from sd2_app.pipelines.output import PipelineOutput, label_images
from sd2_app.pipelines.prompt_plan import hires_prompt_steps, prompt_steps
from sd2_app.pipelines.prompt_schedule import plan_of
from sd2_app.pipelines.run_mode import NORMAL, RunMode
from sd2_app.pipelines.sampling import Job, changed, draw_noise, finished, start_job
from sd2_app.pipelines.seamless import tiled_components
from sd2_app.pipelines.generate import generate, txt2img_settings
from sd2_app.pipelines.vae_io import decode_in, encode, vae_factor
from sd2_app.samplers import add_noise

LATENT_MODES = {"Latent": "bilinear", "Latent (nearest-exact)": "nearest-exact"}  # F.interpolate modes


def hires_sampling(sampling: Sampling, hires: HiresFix) -> Sampling:
    """The second pass's sampling: the hires sampler and schedule type where given, a schedule of
    `HiresFix.schedule_steps`, the rest (seed too) unchanged."""
    sampler, schedule = hires.sampler_and_schedule(sampling)
    return replace(sampling, sampler=sampler, schedule=schedule, steps=hires.schedule_steps(sampling.steps))


def upscale_latents(latents: torch.Tensor, size: tuple[int, int], upscaler: str) -> torch.Tensor:
    """(B, 4, h, w) -> (B, 4, H, W) latents with A1111's latent upscale modes (no antialiasing)."""
    mode = LATENT_MODES[upscaler]
    options: dict[str, Any] = {"align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(latents, size=size, mode=mode, **options)


def crop_latents(latents: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, 4, H, W) latents centre-cropped to `size` (h, w), as A1111 crops an upscale that covers an explicit
    hires width and height (modules/processing.py, `sample_hr_pass`): an odd row or column comes off the bottom
    or the right. Latents already of that size come back as they are."""
    h, w = size
    top, left = (latents.shape[2] - h) // 2, (latents.shape[3] - w) // 2
    return latents[:, :, top:top + h, left:left + w]


def upscaled_pixels(hires: HiresFix, first_size: tuple[int, int], factor: int) -> tuple[int, int]:
    """(width, height) a pixel upscaler resizes the first image to: `HiresFix.upscale_size` in whole latents."""
    width, height = hires.upscale_size(*first_size)
    return width // factor * factor, height // factor * factor


def hires_settings(request: Txt2ImgRequest, components: Components, width: int, height: int, job: Job) -> Settings:
    """The first pass's settings plus A1111's hires keys ("Size" stays the first pass's size, as there)."""
    hires = request.hires
    assert hires is not None
    settings = txt2img_settings(request, components, width, height, job)
    settings[keys.DENOISING_STRENGTH] = hires.denoising_strength
    if hires.width or hires.height:  # what was asked, 0 for a side left to the proportion (A1111 writes the same)
        settings[keys.HIRES_RESIZE] = f"{hires.width or 0}x{hires.height or 0}"
    else:
        settings[keys.HIRES_UPSCALE] = hires.scale
    # Unset, the second pass runs the first pass's steps and, as in A1111, no key is written (modules/processing.py,
    # StableDiffusionProcessingTxt2Img.init): reading a text without it sets 0, the same steps.
    if hires.steps:
        settings[keys.HIRES_STEPS] = hires.steps
    settings[keys.HIRES_UPSCALER] = hires.upscaler
    if hires.sampler and hires.sampler != request.sampling.sampler:
        settings[keys.HIRES_SAMPLER] = hires.sampler
    if hires.schedule and hires.schedule != request.sampling.schedule:  # Automatic too, unlike A1111, so it reads back
        settings[keys.HIRES_SCHEDULE_TYPE] = hires.schedule
    prompt, negative = hires.prompts(request.prompt, request.negative_prompt)  # written where they differ, as A1111
    if prompt != request.prompt:
        settings[keys.HIRES_PROMPT] = prompt
    if negative != request.negative_prompt:
        settings[keys.HIRES_NEGATIVE_PROMPT] = negative
    if request.sampling.eta > 0 and hires.sampler in ETA_SAMPLERS:  # eta changes the second pass only
        settings.setdefault(keys.ETA_DDIM, request.sampling.eta)
    return settings


def second_pass(
    components: Components,
    request: Txt2ImgRequest,
    start: torch.Tensor | list[Image.Image],
    first_size: tuple[int, int],
    on_step: LatentProgressFn | None = None,
    mode: RunMode = NORMAL,
) -> PipelineOutput:
    """Image-to-image at the target size from upscaled latents (B, 4, H/8, W/8) or upscaled images."""
    hires = request.hires
    assert hires is not None
    factor = vae_factor(components.vae)
    prompt, negative = hires.prompts(request.prompt, request.negative_prompt)
    job = start_job(components, replace(request, prompt=prompt, negative_prompt=negative,
                                        sampling=hires_sampling(request.sampling, hires)),
                    last_steps=hires.second_pass_steps(request.sampling.steps), mode=mode,  # fresh generators, seeded
                    prompt_calls=hires_prompt_steps(request.sampling, hires))
    if isinstance(start, torch.Tensor):
        init = start.float()
    else:
        pixels = torch.cat([preprocess_image(image, factor=factor) for image in start])  # (B, 3, H, W)
        init = encode(components.vae, pixels, job.generator)  # (B, 4, H/8, W/8)
    target_w, target_h = hires.target(*first_size)
    init = crop_latents(init, (target_h // factor, target_w // factor))  # an upscale covering an explicit size
    noise = draw_noise(tuple(init.shape), job.generator, components.device, components.dtype)

    # "Pad conds" where either pass padded (A1111 keeps its first pass's flag); the first pass's plan is the one
    # its validation made
    first_plan = plan_of(components, request.prompt, request.negative_prompt,
                         use_cfg=guidance_on(request.sampling.cfg_scale), steps=prompt_steps(request.sampling))
    labelled = replace(job, padded=job.padded or first_plan.padded)

    def finish(latents: torch.Tensor) -> PipelineOutput:
        images = postprocess(job.decode(latents))
        height, width = images[0].height, images[0].width
        settings = hires_settings(request, components, *first_size, labelled)
        label_images(images, request.prompt, request.negative_prompt, settings)
        return PipelineOutput(images=images, latents=latents, width=width, height=height)

    start_latents = add_noise(init, noise, job.plan.schedule.sigmas[0])
    return finished(lambda: job.denoise(start_latents, on_step=on_step), finish)


def _offset(on_step: LatentProgressFn | None, before: int, total: int) -> LatentProgressFn | None:
    if on_step is None:
        return None
    return lambda done, _steps, x0: on_step(before + done, total, x0)


@torch.inference_mode()
def hires_fix(components: Components, request: Txt2ImgRequest, on_step: LatentProgressFn | None = None,
              mode: RunMode = NORMAL) -> PipelineOutput:
    """Both passes with a latent or Lanczos upscale, under one progress bar (first steps, then second)."""
    hires = request.hires
    assert hires is not None
    if hires.upscaler not in (*LATENT_MODES, "Lanczos"):
        raise InvalidRequest(f"The {hires.upscaler} hires upscaler runs through the service (Service.run), "
                             "which brings its model in.")
    factor = vae_factor(components.vae)
    first_steps = request.sampling.steps
    total = first_steps + hires.second_pass_steps(first_steps)
    components = tiled_components(components, request.tiling)  # the job's own circular view when tiling
    latents, width, height, warnings = generate(components, request, _offset(on_step, 0, total), mode)
    cover_w, cover_h = upscaled_pixels(hires, (width, height), factor)
    if hires.upscaler in LATENT_MODES:
        start: torch.Tensor | list[Image.Image] = upscale_latents(
            latents, (cover_h // factor, cover_w // factor), hires.upscaler)
    else:
        pixels = postprocess(decode_in(mode, components.vae, latents))
        start = [image.resize((cover_w, cover_h), LANCZOS) for image in pixels]
    # The warnings are the first pass's (the second pass runs at the size it was given).
    return changed(lambda: second_pass(components, request, start, (width, height),
                                       _offset(on_step, first_steps, total), mode),
                   lambda output: replace(output, warnings=warnings))


@torch.inference_mode()
def hires_pass(components: Components, request: HiresPassRequest, on_step: LatentProgressFn | None = None,
               mode: RunMode = NORMAL) -> PipelineOutput:
    """The second pass alone, from images another model upscaled (the service's SD2 x4 route)."""
    base = request.base
    assert base.hires is not None
    cover = upscaled_pixels(base.hires, request.first_size, vae_factor(components.vae))
    images = [image.convert("RGB").resize(cover, LANCZOS) for image in request.images]
    return second_pass(tiled_components(components, base.tiling), base, images, request.first_size, on_step, mode)
