"""What one job costs the server, and the operator's cap on it.

The cost of a validated request is its UNet work: UNet evaluations times latent pixels. One sampling step is
one UNet call per image, two with classifier-free guidance (the conditional and unconditional halves), and two
again for the two-call samplers (Heun, DPM2: `SamplerSpec.order`); a comparison adds up its samplers. Latent
pixels are the generated size over 8 per side (the SD VAE's factor); the x4 upscaler denoises at the input's
own size, so its latent pixels are the input's pixels. Text encoding and the VAE are small beside this and
are left out.

`job_cost(request, catalog)` is the one measure; `check_job_cost` refuses a job over the cap with a message
that says what to lower. Every caller that turns visitor input into work (the UI, the HTTP and MCP APIs, a
grid of jobs) checks through these two functions: `validate` calls `check_job_cost` for every request.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace

from sd2_app.api.requests import (
    CompareRequest,
    DepthRequest,
    Img2ImgRequest,
    InpaintRequest,
    Request,
    Sampling,
    Txt2ImgRequest,
    UpscaleRequest,
)
from sd2_app.errors import InvalidRequest

LATENT_FACTOR = 8  # image pixels per latent pixel, per side (SD 2 VAE)
# One 768x768 image at 150 steps of a two-call sampler with guidance is 5,529,600; an x4 upscale of a
# 256x256 input at the upscale tab's 50 steps with guidance is 6,553,600. The default allows both, and
# every tab's defaults, and refuses 8 images x 150 Heun steps or a 14-sampler comparison at 150 steps.
DEFAULT_MAX_JOB_COST = 6_553_600


def _unet_calls_per_step(sampling: Sampling, calls_per_step: Mapping[str, int]) -> int:
    guidance = 2 if sampling.cfg_scale > 1 else 1  # the pipelines skip the unconditional half at cfg <= 1
    return guidance * int(calls_per_step.get(sampling.sampler, 1))


def _latent_pixels(width: int, height: int) -> int:
    return (width // LATENT_FACTOR) * (height // LATENT_FACTOR)


def _steps_run(steps: int, strength: float | None) -> int:
    """The steps a strength-cut schedule runs (never more than `steps`)."""
    return steps if strength is None else min(steps, max(1, math.ceil(steps * strength)))


def _one_job(request: Request, calls_per_step: Mapping[str, int], native: Mapping[str, int]) -> int:
    sampling = request.sampling  # type: ignore[union-attr]
    strength = getattr(request, "strength", None)
    if isinstance(request, Txt2ImgRequest):
        pixels = _latent_pixels(request.width or 0, request.height or 0)
    elif isinstance(request, UpscaleRequest):
        pixels = request.image.width * request.image.height
    elif isinstance(request, InpaintRequest) and request.only_masked:
        side = native.get(request.checkpoint, max(request.image.size))
        pixels = _latent_pixels(side, side)
    elif isinstance(request, (Img2ImgRequest, InpaintRequest, DepthRequest)):
        pixels = _latent_pixels(*request.image.size)
    else:
        raise TypeError(f"no cost for {type(request).__name__}")
    steps = _steps_run(sampling.steps, strength)
    return steps * _unet_calls_per_step(sampling, calls_per_step) * sampling.batch_size * pixels


def job_cost(request: Request, calls_per_step: Mapping[str, int], native: Mapping[str, int] | None = None) -> int:
    """UNet evaluations x latent pixels of a validated request (sizes filled in, images present).

    `calls_per_step` maps a sampler name to its UNet calls per step (missing: 1); `native` a checkpoint key to
    its side in pixels (only the only-masked inpaint, which works at that size, needs it).
    """
    native = native or {}
    if isinstance(request, CompareRequest):
        base = replace(request.base, sampling=replace(request.base.sampling, batch_size=1))
        return sum(_one_job(replace(base, sampling=replace(base.sampling, sampler=name)), calls_per_step, native)
                   for name in request.samplers)
    return _one_job(request, calls_per_step, native)


def _what_to_lower(request: Request) -> str:
    if isinstance(request, CompareRequest):
        return "the steps, the size or the number of samplers"
    if isinstance(request, UpscaleRequest):
        return "the steps, the images per prompt or the input image's size"
    if isinstance(request, Txt2ImgRequest):
        return "the steps, the images per prompt or the width and height"
    return "the steps, the strength, the images per prompt or the image's size"


def check_job_cost(request: Request, cost: int, max_cost: int | None) -> None:
    """Refuse a job whose `cost` (from `job_cost`) is over `max_cost` (None: no cap), saying what to lower."""
    if max_cost is None or cost <= max_cost:
        return
    steps = (request.base if isinstance(request, CompareRequest) else request).sampling.steps  # type: ignore[union-attr]
    fitting = steps * max_cost // cost
    hint = f" (at most {fitting} steps fit with the other settings unchanged)" if fitting >= 1 else ""
    raise InvalidRequest(
        f"This job is too large for this server: it costs {cost:,} UNet evaluations x latent pixels and the "
        f"limit is {max_cost:,}. Lower {_what_to_lower(request)}{hint}."
    )
