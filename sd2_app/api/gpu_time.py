"""ZeroGPU: how long to ask for the GPU, per call, from the job's cost; and the `spaces.GPU` wrapper.

On a ZeroGPU Space a GPU exists only inside a function decorated with `spaces.GPU(duration=...)`, and a
shorter duration gets a visitor a better place in ZeroGPU's queue (huggingface hub-docs, spaces-zerogpu.md,
"Dynamic duration": `duration` may be a function of the call's arguments). So each call asks for a time
computed from its own work, the job's cost (`sd2_app.api.cost.job_cost`): UNet evaluations x latent pixels
(steps, two evaluations with guidance, more for two-call samplers, batch size, size / 8 per side), at a rate
with ample margin, plus a fixed allowance for what does not scale with it (weights reaching the GPU, text
encoder, VAE decode, first-call set-up).
The figures and the reasoning are in docs/DESIGN.md ("ZeroGPU").
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from sd2_app.api.checked import Checked, check
from sd2_app.api.cost import job_cost
from sd2_app.api.plot import plot_cost
from sd2_app.api.requests import Request
from sd2_app.errors import InvalidRequest

if TYPE_CHECKING:
    from sd2_app.api.service import Service

F = TypeVar("F", bound=Callable[..., Any])

ZERO_GPU_ENV = "SPACES_ZERO_GPU"  # set by Hugging Face on ZeroGPU hardware (read by the `spaces` package too)
FIXED_SECONDS = 10.0  # weights to the GPU, text encoder, VAE decode, first-call set-up (docs/DESIGN.md)
SECONDS_PER_UNIT = 5e-6  # per UNet evaluation of one latent pixel, with margin (docs/DESIGN.md)
MIN_SECONDS, MAX_SECONDS = 15, 120  # never ask for less than a small job needs, nor past ZeroGPU's usual cap


def on_zerogpu(env: dict[str, str] | None = None) -> bool:
    return (os.environ if env is None else env).get(ZERO_GPU_ENV, "").lower() in ("1", "true")


def gpu_seconds(work: int) -> int:
    """The duration to ask ZeroGPU for, for a job of `work` units (`sd2_app.api.cost.job_cost`)."""
    return int(min(MAX_SECONDS, max(MIN_SECONDS, FIXED_SECONDS + work * SECONDS_PER_UNIT) + 0.999999))


def checked_seconds(service: Service, checked: Checked) -> int:
    """The duration for a request the Service checked (`sd2_app.api.checked.check`): a plot's cells one after the
    other, else the request's job."""
    if checked.plot is not None:
        return gpu_seconds(plot_cost(checked.plot.cells, service.catalog))
    return gpu_seconds(job_cost(checked.request, service.catalog))


def seconds_for(service: Service, request: Request) -> int:
    """The duration for `request` as the Service would run it; a request it refuses gets the minimum (the
    refusal comes before any GPU work)."""
    try:
        return checked_seconds(service, check(service, request))
    except InvalidRequest:
        return MIN_SECONDS


def _spaces_gpu() -> Callable[..., Callable[[F], F]] | None:
    """`spaces.GPU` where the `spaces` package is installed (Spaces), else None."""
    try:
        import spaces  # type: ignore[import-not-found]
    except ImportError:
        return None
    return spaces.GPU


def gpu(duration: int | Callable[..., int] = 120) -> Callable[[F], F]:
    """`spaces.GPU(duration=...)` where the `spaces` package is installed (Spaces), else a no-op.

    `duration` may be a function of the decorated function's arguments (the per-call duration)."""
    spaces_gpu = _spaces_gpu()
    return (lambda fn: fn) if spaces_gpu is None else spaces_gpu(duration=duration)


def gpu_calls_may_fork() -> bool:
    """Whether a `gpu` function may run in another process: on ZeroGPU `spaces.GPU` runs it in a forked worker
    and pickles its arguments and results (docs/DESIGN.md, "ZeroGPU"), so what it keeps stays there; the callers
    then run it unkept and keep its result themselves. Without `spaces` the call runs here, as it is."""
    return _spaces_gpu() is not None
