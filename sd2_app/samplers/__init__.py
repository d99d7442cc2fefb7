"""Samplers in k-diffusion's sigma space: schedules, the eps/v denoiser wrapper and one module per family.

Contract (docs/DESIGN.md "Samplers"): `schedule = make_schedule(config, name, steps, use_karras=...)`,
`denoise = make_denoiser(model_fn, config.prediction_type)`, then
`SAMPLERS[name].fn(denoise, x, schedule, generator=g, on_step=cb)`; the final latent is
`x / sqrt(1 + schedule.sigmas[-1] ** 2)`.
"""

from sd2_app.samplers.base import Denoiser, StepFn
from sd2_app.samplers.denoiser import make_denoiser
from sd2_app.samplers.registry import SAMPLERS, SamplerSpec, make_schedule
from sd2_app.samplers.schedules import Schedule, SchedulerConfig, add_noise, start_at

__all__ = [
    "SAMPLERS", "Denoiser", "SamplerSpec", "Schedule", "SchedulerConfig", "StepFn",
    "add_noise", "make_denoiser", "make_schedule", "start_at",
]
