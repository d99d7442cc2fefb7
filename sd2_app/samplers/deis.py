"""DEIS (Zhang & Chen 2023), "logrho" multistep of order 2, in sigma space.

diffusers' DEIS works on eps with rho = sigma_vp / alpha, which is exactly the k-diffusion sigma, so a step is
x_t = x_s + sum_k c_k eps_k with c_k the integral of the Lagrange basis (in log rho) of past eps over [rho_s, rho_t].
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sd2_app.samplers.base import Denoiser, NoiseSource, StepFn, to_d
from sd2_app.samplers.schedules import Schedule

_LOWER_ORDER_FINAL_BELOW = 15  # diffusers drops to first order on the last step only for short schedules


def _integral(t: float, b: float, c: float) -> float:
    """Antiderivative at t of the linear Lagrange basis in log rho that is 1 at b and 0 at c."""
    return t * (-math.log(c) + math.log(t) - 1) / (math.log(b) - math.log(c))


@torch.no_grad()
def sample_deis(
    denoise: Denoiser, x: Tensor, schedule: Schedule, *,
    generator: NoiseSource | None = None, on_step: StepFn | None = None,
) -> Tensor:
    """DEIS-2 (multistep eps extrapolation); the first step, and the last when the full run is short, are Euler."""
    sigmas, timesteps = schedule.sigmas, schedule.timesteps
    total = schedule.start_index + len(timesteps)
    eps_prev: Tensor | None = None
    for i, t in enumerate(timesteps):
        x0 = denoise(x, sigmas[i], t)
        eps = to_d(x, sigmas[i], x0)
        is_last_short = i == len(timesteps) - 1 and total < _LOWER_ORDER_FINAL_BELOW
        rho_t, rho_s0 = sigmas[i + 1], sigmas[i]
        if eps_prev is None or is_last_short:
            x = x + (rho_t - rho_s0) * eps
        else:
            rho_s1 = sigmas[i - 1]
            c0 = _integral(rho_t, rho_s0, rho_s1) - _integral(rho_s0, rho_s0, rho_s1)
            c1 = _integral(rho_t, rho_s1, rho_s0) - _integral(rho_s0, rho_s1, rho_s0)
            x = x + c0 * eps + c1 * eps_prev
        eps_prev = eps
        if on_step is not None:
            on_step(i, x, x0)
    return x
