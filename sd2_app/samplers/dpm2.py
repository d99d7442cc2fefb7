"""DPM2 and DPM2 ancestral: second-order steps through a log-midpoint sigma (k-diffusion, after Karras et al. 2022)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from sd2_app.samplers.base import Denoiser, NoiseSource, StepFn, ancestral_step, randn_like, to_d
from sd2_app.samplers.schedules import Schedule


def _log_midpoint(sigma_a: float, sigma_b: float) -> float:
    """exp of the mean of the logs, rounded to fp32 like diffusers' sigmas_interpol table."""
    return float(np.float32(math.sqrt(sigma_a * sigma_b)))


@torch.no_grad()
def sample_dpm_2(
    denoise: Denoiser, x: Tensor, schedule: Schedule, *,
    generator: NoiseSource | None = None, on_step: StepFn | None = None,
) -> Tensor:
    """DPM-Solver-2 in sigma: an Euler half-step to the log-midpoint, then the full step with its slope.

    The midpoint UNet timestep is fractional (schedule.sigma_to_t); the final step to sigma = 0 is plain Euler.
    """
    sigmas, timesteps = schedule.sigmas, schedule.timesteps
    for i, t in enumerate(timesteps):
        x0 = denoise(x, sigmas[i], t)
        d = to_d(x, sigmas[i], x0)
        if sigmas[i + 1] == 0.0:
            x = x + d * (sigmas[i + 1] - sigmas[i])
        else:
            sigma_mid = _log_midpoint(sigmas[i], sigmas[i + 1])
            x_mid = x + d * (sigma_mid - sigmas[i])
            d_mid = to_d(x_mid, sigma_mid, denoise(x_mid, sigma_mid, schedule.sigma_to_t(sigma_mid)))
            x = x + d_mid * (sigmas[i + 1] - sigmas[i])
        if on_step is not None:
            on_step(i, x, x0)
    return x


@torch.no_grad()
def sample_dpm_2_ancestral(
    denoise: Denoiser, x: Tensor, schedule: Schedule, *,
    generator: NoiseSource | None = None, on_step: StepFn | None = None,
) -> Tensor:
    """DPM2 to sigma_down (midpoint between sigma and sigma_down), then noise up to the next sigma."""
    sigmas, timesteps = schedule.sigmas, schedule.timesteps
    for i, t in enumerate(timesteps):
        x0 = denoise(x, sigmas[i], t)
        d = to_d(x, sigmas[i], x0)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1])
        if sigma_down == 0.0:
            x = x + d * (sigma_down - sigmas[i])  # no second call and no noise on the final step
        else:
            sigma_mid = _log_midpoint(sigmas[i], sigma_down)
            x_mid = x + d * (sigma_mid - sigmas[i])
            d_mid = to_d(x_mid, sigma_mid, denoise(x_mid, sigma_mid, schedule.sigma_to_t(sigma_mid)))
            x = x + d_mid * (sigma_down - sigmas[i])
            x = x + randn_like(x, generator) * sigma_up
        if on_step is not None:
            on_step(i, x, x0)
    return x
