"""DDIM, DDPM and PLMS, the variance-preserving samplers, rewritten in sigma space (x_sigma = x_vp / sqrt(abar)).

In that space a DDIM step is x0 + sigma_next * eps, and DDPM's posterior is DDIM with eta = 1 (an ancestral step).
"""

from __future__ import annotations

import torch
from torch import Tensor

from sd2_app.samplers.base import Denoiser, NoiseSource, StepFn, ancestral_step, randn_like, to_d
from sd2_app.samplers.schedules import Schedule


@torch.no_grad()
def sample_ddim(
    denoise: Denoiser, x: Tensor, schedule: Schedule, *,
    generator: NoiseSource | None = None, on_step: StepFn | None = None, eta: float = 0.0,
) -> Tensor:
    """DDIM (Song et al. 2021, eq. 12); eta > 0 adds eta-scaled posterior noise, eta = 1 is DDPM-like.

    diffusers steps to t - T // N whatever the spacing; we step to the next scheduled timestep, which is the same
    for the default "leading" spacing of every SD2 config.
    """
    sigmas, timesteps = schedule.sigmas, schedule.timesteps
    for i, t in enumerate(timesteps):
        x0 = denoise(x, sigmas[i], t)
        eps = to_d(x, sigmas[i], x0)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        x = x0 + eps * sigma_down
        if eta > 0:
            x = x + randn_like(x, generator) * sigma_up
        if on_step is not None:
            on_step(i, x, x0)
    return x


@torch.no_grad()
def sample_ddpm(
    denoise: Denoiser, x: Tensor, schedule: Schedule, *,
    generator: NoiseSource | None = None, on_step: StepFn | None = None,
) -> Tensor:
    """Ancestral sampling from the DDPM posterior q(x_prev | x_t, x0) with the "fixed_small" variance (Ho et al. 2020)."""
    sigmas, timesteps = schedule.sigmas, schedule.timesteps
    for i, t in enumerate(timesteps):
        x0 = denoise(x, sigmas[i], t)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1])
        x = x0 + to_d(x, sigmas[i], x0) * sigma_down
        if t > 0:  # diffusers draws at every t > 0, even where the variance is ~0
            x = x + randn_like(x, generator) * sigma_up
        if on_step is not None:
            on_step(i, x, x0)
    return x


def _plms_combine(history: list[Tensor]) -> Tensor:
    """Adams-Bashforth combination of the last 2-4 noise predictions (newest last)."""
    if len(history) == 2:
        return (3 * history[-1] - history[-2]) / 2
    if len(history) == 3:
        return (23 * history[-1] - 16 * history[-2] + 5 * history[-3]) / 12
    return (55 * history[-1] - 59 * history[-2] + 37 * history[-3] - 9 * history[-4]) / 24


@torch.no_grad()
def sample_plms(
    denoise: Denoiser, x: Tensor, schedule: Schedule, *,
    generator: NoiseSource | None = None, on_step: StepFn | None = None,
) -> Tensor:
    """Pseudo linear multistep (PNDM with skip_prk_steps, Liu et al. 2022): DDIM transfer with multistep eps.

    The first step is a pseudo improved-Euler warm-up with two model calls (diffusers' duplicated second
    timestep). Two deliberate differences from diffusers' PNDMScheduler:
    - the multistep combination is over eps. diffusers combines raw model outputs, so for v-prediction it mixes
      v's and converts with the current sample; the original SD2 PLMS (and our single denoiser) combine eps.
    - an img2img slice restarts the warm-up at its first step; diffusers' sliced PNDM mis-times its warm-up
      (its counter assumes the duplicated timestep), so img2img + PNDM differs from diffusers by design.
    txt2img with eps-prediction matches diffusers step for step.
    """
    sigmas, timesteps = schedule.sigmas, schedule.timesteps
    history: list[Tensor] = []  # eps of past steps, newest last (the warm-up's second call is not kept)
    for i, t in enumerate(timesteps):
        x0 = denoise(x, sigmas[i], t)
        eps = to_d(x, sigmas[i], x0)
        if i == 0:
            history = [eps]
            if len(timesteps) > 1:
                x_pred = x + eps * (sigmas[1] - sigmas[0])
                eps = (eps + to_d(x_pred, sigmas[1], denoise(x_pred, sigmas[1], timesteps[1]))) / 2
        else:
            history = [*history[-3:], eps]
            eps = _plms_combine(history)
        x = x + eps * (sigmas[i + 1] - sigmas[i])
        if on_step is not None:
            on_step(i, x, x0)
    return x
