"""ZeroGPU: how long to ask for the GPU, per call, from the job's cost; and the `spaces.GPU` wrapper.

On a ZeroGPU Space a GPU exists only inside a function decorated with `spaces.GPU(duration=...)`, and a
shorter duration gets a visitor a better place in ZeroGPU's queue (huggingface hub-docs, spaces-zerogpu.md,
"Dynamic duration": `duration` may be a function of the call's arguments). So each call asks for a time
computed from its own work: UNet evaluations x latent pixels (steps, two evaluations with guidance, more
for two-call samplers, batch size, size / 8 per side), at a rate with ample margin, plus a fixed allowance
for what does not scale with it (weights reaching the GPU, text encoder, VAE decode, first-call set-up).
The figures and the reasoning are in docs/DESIGN.md ("ZeroGPU").
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from sd2_app.api.plot import plan_cells
from sd2_app.api.requests import Request, TaskRequest, Txt2ImgRequest, XYZPlotRequest
from sd2_app.errors import InvalidRequest

if TYPE_CHECKING:
    from sd2_app.api.service import Service

F = TypeVar("F", bound=Callable[..., Any])

ZERO_GPU_ENV = "SPACES_ZERO_GPU"  # set by Hugging Face on ZeroGPU hardware (read by the `spaces` package too)
FIXED_SECONDS = 10.0  # weights to the GPU, text encoder, VAE decode, first-call set-up (docs/DESIGN.md)
SECONDS_PER_UNIT = 5e-6  # per UNet evaluation of one latent pixel, with margin (docs/DESIGN.md)
MIN_SECONDS, MAX_SECONDS = 15, 120  # never ask for less than a small job needs, nor past ZeroGPU's usual cap
LATENT_FACTOR = 8  # image pixels per latent pixel, per side


def on_zerogpu(env: dict[str, str] | None = None) -> bool:
    return (os.environ if env is None else env).get(ZERO_GPU_ENV, "").lower() in ("1", "true")


def unet_work(request: TaskRequest, calls_per_step: dict[str, int] | None = None) -> int:
    """UNet evaluations x latent pixels of a validated request; `calls_per_step`: sampler -> UNet calls per
    step (Heun, DPM2: 2; missing: 1)."""
    sampling = request.sampling
    image = getattr(request, "image", None)
    if request.task == "upscale":
        pixels = image.width * image.height  # the x4 model denoises at the input's size
    elif image is not None:
        pixels = (image.width // LATENT_FACTOR) * (image.height // LATENT_FACTOR)
    else:
        pixels = (int(request.width) // LATENT_FACTOR) * (int(request.height) // LATENT_FACTOR)
    strength = getattr(request, "strength", None)
    steps = sampling.steps if strength is None else max(1, int(sampling.steps * strength + 0.999999))
    per_step = (2 if sampling.cfg_scale > 1 else 1) * int((calls_per_step or {}).get(sampling.sampler, 1))
    work = steps * per_step * sampling.batch_size * pixels
    if getattr(request, "hires", None) is not None:
        work += hires_work(request, calls_per_step)
    return work


def hires_work(request: Txt2ImgRequest, calls_per_step: dict[str, int] | None = None) -> int:
    """The hires fix's work after its first pass: the second pass at the target size (its strength-cut steps,
    its sampler) and, for the "SD2 x4" upscaler, the x4 model at the first pass's pixel size (guided)."""
    hires, sampling = request.hires, request.sampling
    width, height = hires.target(int(request.width), int(request.height))
    sampler = hires.sampler or sampling.sampler
    per_step = (2 if sampling.cfg_scale > 1 else 1) * int((calls_per_step or {}).get(sampler, 1))
    pixels = (width // LATENT_FACTOR) * (height // LATENT_FACTOR)
    work = hires.second_pass_steps(sampling.steps) * per_step * sampling.batch_size * pixels
    if hires.upscaler == "SD2 x4":  # api/hires_x4.py: hires steps, CFG 9, at the first image's size
        work += (hires.steps or sampling.steps) * 2 * int(request.width) * int(request.height)
    return work


def gpu_seconds(work: int) -> int:
    """The duration to ask ZeroGPU for, for a job of `work` units."""
    return int(min(MAX_SECONDS, max(MIN_SECONDS, FIXED_SECONDS + work * SECONDS_PER_UNIT) + 0.999999))


def _calls_per_step() -> dict[str, int]:
    from sd2_app.samplers import SAMPLERS  # lazily: it loads torch, and the UI imports this module

    return {name: int(spec.order) for name, spec in SAMPLERS.items()}


def seconds_for(service: Service, request: Request) -> int:
    """The duration for `request` as the Service would run it; a request it refuses gets the minimum (the
    refusal comes before any GPU work)."""
    try:
        checked, _ = service.validate(request)
    except InvalidRequest:
        return MIN_SECONDS
    calls = _calls_per_step()
    if isinstance(checked, XYZPlotRequest):  # its cells one after the other
        cells, _ = plan_cells(checked, service.catalog, service.limits)
        return gpu_seconds(sum(unet_work(cell.request, calls) for cell in cells))
    return gpu_seconds(unet_work(checked, calls))


def values_seconds(service: Service, make_request: Callable[..., Request], values: tuple[Any, ...]) -> int:
    """The duration for a UI handler's widget values (`make_request(*values)` is the tab's request)."""
    try:
        return seconds_for(service, make_request(*values))
    except (InvalidRequest, TypeError, ValueError):
        return MIN_SECONDS


def gpu(duration: int | Callable[..., int] = 120) -> Callable[[F], F]:
    """`spaces.GPU(duration=...)` where the `spaces` package is installed (Spaces), else a no-op.

    `duration` may be a function of the decorated function's arguments (the per-call duration)."""
    try:
        import spaces  # type: ignore[import-not-found]
    except ImportError:
        return lambda fn: fn
    return spaces.GPU(duration=duration)
