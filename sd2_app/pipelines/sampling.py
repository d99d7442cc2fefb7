"""Per-request sampling set-up shared by the tasks: the seeded generator, noise draws, the schedule slice."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from sd2_app.errors import InvalidRequest
from sd2_app.requests import Sampling


@dataclass(frozen=True)
class SamplingPlan:
    """The sampler, its (possibly strength-cut) schedule and extra keyword arguments for its function."""

    spec: Any  # samplers.SamplerSpec
    schedule: Any  # samplers.Schedule
    options: dict[str, Any]


def make_generator(device: torch.device, seed: int) -> torch.Generator:
    """One generator per request, on the components' device, so a seed reproduces the reference's draws."""
    return torch.Generator(device=device).manual_seed(int(seed))


def draw_noise(
    shape: tuple[int, ...], generator: torch.Generator, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Unit normal noise drawn like the reference's `randn_tensor` (in the model dtype), returned as fp32."""
    noise = torch.randn(shape, generator=generator, device=generator.device, dtype=dtype)
    return noise.to(device=device, dtype=torch.float32)


def plan_sampling(config: Any, sampling: Sampling, strength: float | None = None) -> SamplingPlan:
    """Schedule for the request's sampler; with `strength`, only its last `int(N * strength)` steps."""
    from sd2_app.samplers import SAMPLERS, make_schedule, start_at

    if sampling.sampler not in SAMPLERS:
        raise InvalidRequest(f"unknown sampler {sampling.sampler!r}; choose one of {', '.join(SAMPLERS)}")
    spec = SAMPLERS[sampling.sampler]
    schedule = make_schedule(config, sampling.sampler, sampling.steps, use_karras=sampling.use_karras)
    if strength is not None:
        schedule = start_at(schedule, strength)
        if len(schedule.sigmas) < 2:
            raise InvalidRequest(
                f"strength {strength} with {sampling.steps} steps leaves no step to run; raise either"
            )
    options: dict[str, Any] = {}
    if sampling.eta > 0 and spec.name == "DDIM":  # only DDIM's function takes eta
        options["eta"] = sampling.eta
    return SamplingPlan(spec=spec, schedule=schedule, options=options)
