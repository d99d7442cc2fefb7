"""What one job costs the server, and the operator's cap on it.

The cost of a validated request is its UNet work: UNet evaluations times latent pixels. One sampling step is
one UNet call per image, two with classifier-free guidance (the conditional and unconditional halves; one more
for each further part of a composable prompt, A1111's AND), and two again for the two-call samplers (Heun, DPM2:
`SamplerSpec.order`); a hires fix adds its second pass, and a batch count runs it all that many times
(sd2_app/api/batch_count.py). Latent
pixels are the generated size over 8 per side (the SD VAE's factor); the x4 upscaler denoises at the input's
own size, so its latent pixels are the input's pixels. Text encoding and the VAE are small beside this and
are left out.

`job_cost(request, catalog)` is the one measure; `check_job_cost` refuses a job over the cap with a message
that says what to lower. Every caller that turns visitor input into work (the UI, the HTTP and MCP APIs, an
X/Y/Z plot) goes through `validate`, which calls both for every request (a plot: for the sum of its cells).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING

from sd2_app.api.requests import (
    LATENT_FACTOR,
    DepthRequest,
    Img2ImgRequest,
    InpaintRequest,
    OutpaintRequest,
    Request,
    Sampling,
    Txt2ImgRequest,
    UpscaleRequest,
    XYZPlotRequest,
    X4_UPSCALER,
    guidance_on,
)
from sd2_app.errors import InvalidRequest
from sd2_app.prompt_syntax import prompt_parts

if TYPE_CHECKING:
    from sd2_app.api.checks import Catalog  # checks imports this module (Limits' default cap)

# One 768x768 image at 150 steps of a two-call sampler with guidance is 5,529,600; an x4 upscale of a
# 256x256 input at the upscale tab's 50 steps with guidance is 6,553,600. The default allows both, and
# every tab's defaults, and refuses 8 images x 150 Heun steps or 12 samplers x 150 steps of a 512 image.
DEFAULT_MAX_JOB_COST = 6_553_600


def _unet_calls_per_step(sampling: Sampling, calls_per_step: Mapping[str, int], parts: int) -> int:
    guidance = 1 + parts if guidance_on(sampling.cfg_scale) else 1  # without it, no unconditional half (nor parts)
    return guidance * int(calls_per_step.get(sampling.sampler, 1))


def _latent_pixels(width: int, height: int) -> int:
    return (width // LATENT_FACTOR) * (height // LATENT_FACTOR)


def _steps_run(steps: int, strength: float | None) -> int:
    """The steps a strength-cut schedule runs (never more than `steps`)."""
    return steps if strength is None else min(steps, max(1, math.ceil(steps * strength)))


def _pass(sampling: Sampling, pixels: int, calls_per_step: Mapping[str, int], strength: float | None = None,
          parts: int = 1) -> int:
    steps = _steps_run(sampling.steps, strength)
    return steps * _unet_calls_per_step(sampling, calls_per_step, parts) * sampling.batch_size * pixels


def _hires_cost(request: Txt2ImgRequest, calls_per_step: Mapping[str, int], parts: int) -> int:
    """The hires fix's second pass (and the x4 stage when the "SD2 x4" upscaler makes the first image bigger)."""
    hires = request.hires
    if hires is None:
        return 0
    width, height = request.width or 0, request.height or 0
    steps = hires.steps or request.sampling.steps
    second = replace(request.sampling, steps=hires.second_pass_steps(request.sampling.steps),
                     sampler=hires.sampler_and_schedule(request.sampling)[0])  # it runs exactly these steps
    second_parts = len(prompt_parts(hires.prompts(request.prompt, request.negative_prompt)[0]))
    cost = _pass(second, _latent_pixels(*hires.target(width, height)), calls_per_step, parts=second_parts)
    if hires.upscaler == X4_UPSCALER:  # DDIM with guidance at the hires steps, at the first image's pixels
        cost += steps * (1 + parts) * request.sampling.batch_size * width * height
    return cost


def _image_pixels(request: Request, native: Mapping[str, int]) -> int:
    """Latent pixels one image of `request` is denoised at."""
    if isinstance(request, Txt2ImgRequest):
        return _latent_pixels(request.width or 0, request.height or 0)
    if isinstance(request, UpscaleRequest):
        return request.image.width * request.image.height
    if isinstance(request, InpaintRequest) and request.only_masked:
        side = native.get(request.checkpoint, max(request.image.size))
        return _latent_pixels(side, side)
    if isinstance(request, OutpaintRequest):
        return _latent_pixels(request.image.width + request.left + request.right,
                              request.image.height + request.up + request.down)
    if isinstance(request, (Img2ImgRequest, InpaintRequest, DepthRequest)):
        return _latent_pixels(*request.image.size)
    raise TypeError(f"no cost for {type(request).__name__}")


def job_cost(request: Request, catalog: Catalog) -> int:
    """UNet evaluations x latent pixels of one validated request (sizes filled in, images present).

    `catalog` is the service's `Catalog`: its `calls_per_step` (UNet calls per step of each sampler, missing:
    1) and `resolutions` (a checkpoint's side; the only-masked inpaint works at that size). An X/Y/Z plot's
    cost is the sum of its cells' (`sd2_app.api.plot.validate_plot` adds them up).
    """
    calls = getattr(catalog, "calls_per_step", {}) or {}
    native = getattr(catalog, "resolutions", {}) or {}
    strength = getattr(request, "strength", None)
    parts = len(prompt_parts(request.prompt))  # type: ignore[union-attr]
    cost = _pass(request.sampling, _image_pixels(request, native), calls, strength, parts)  # type: ignore[union-attr]
    if isinstance(request, Txt2ImgRequest):
        cost += _hires_cost(request, calls, parts)
    return cost * _batch_count(request)


def _batch_count(request: Request) -> int:
    """The batches a request runs one after another (sd2_app/api/batch_count.py): each costs what the first does."""
    return max(1, int(getattr(request.sampling, "batch_count", 1)))  # type: ignore[union-attr]


def steps_that_fit(request: UpscaleRequest, catalog: Catalog, max_cost: int | None) -> int | None:
    """The most steps `request` may run within `max_cost` with its other settings unchanged (0: not even one;
    None: no cap). An upscale's cost grows in proportion to its steps, so this is the cap over one step's cost:
    the Upscale tab sets its steps from it when an image arrives (sd2_app/ui/upscale.py)."""
    if max_cost is None:
        return None
    return max_cost // job_cost(replace(request, sampling=replace(request.sampling, steps=1)), catalog)


def _what_to_lower(request: Request) -> str:
    said = _settings_to_lower(request)
    if not isinstance(request, XYZPlotRequest) and _batch_count(request) > 1:
        said = said.replace("the steps, ", "the steps, the batch count, ", 1)
    return said


def _settings_to_lower(request: Request) -> str:
    if isinstance(request, XYZPlotRequest):
        hires = isinstance(request.base, Txt2ImgRequest) and request.base.hires is not None
        return f"the number of cells, the steps{', the size or the hires fix' if hires else ' or the size'}"
    if isinstance(request, UpscaleRequest):
        return "the steps, the images per prompt or the input image's size"
    if isinstance(request, Txt2ImgRequest):
        return "the steps, the images per prompt, the width and height or the hires fix"
    return "the steps, the strength, the images per prompt or the image's size"


def check_job_cost(request: Request, cost: int, max_cost: int | None) -> None:
    """Refuse a job whose `cost` (from `job_cost`) is over `max_cost` (None: no cap), saying what to lower."""
    if max_cost is None or cost <= max_cost:
        return
    steps = (request.base if isinstance(request, XYZPlotRequest) else request).sampling.steps  # type: ignore[union-attr]
    fitting = steps * max_cost // cost
    hint = f" (at most {fitting} steps fit with the other settings unchanged)" if fitting >= 1 else ""
    if isinstance(request, XYZPlotRequest) and any(axis is not None and axis.kind == "steps"
                                                   for axis in (request.x, request.y, request.z)):
        hint = ""  # its cells run the axis's steps, not the base's: a count of the base's would mislead
    raise InvalidRequest(
        f"This job is too large for this server: it costs {cost:,} UNet evaluations x latent pixels and the "
        f"limit is {max_cost:,}. Lower {_what_to_lower(request)}{hint}."
    )
