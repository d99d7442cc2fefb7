"""Euler, Euler ancestral, Heun and LMS: the k-diffusion samplers that step directly in sigma."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from sd2_app.samplers.base import Denoiser, NoiseSource, StepFn, ancestral_step, randn_like, to_d
from sd2_app.samplers.schedules import Schedule

_GAUSS_NODES, _GAUSS_WEIGHTS = np.polynomial.legendre.leggauss(4)  # exact for the cubic Lagrange bases below


@torch.no_grad()
def sample_euler(
    denoise: Denoiser, x: Tensor, schedule: Schedule, *,
    generator: NoiseSource | None = None, on_step: StepFn | None = None,
) -> Tensor:
    """Euler's method on the probability-flow ODE (Karras et al. 2022, Algorithm 2 without churn)."""
    sigmas, timesteps = schedule.sigmas, schedule.timesteps
    for i, t in enumerate(timesteps):
        x0 = denoise(x, sigmas[i], t)
        x = x + to_d(x, sigmas[i], x0) * (sigmas[i + 1] - sigmas[i])
        if on_step is not None:
            on_step(i, x, x0)
    return x


@torch.no_grad()
def sample_euler_ancestral(
    denoise: Denoiser, x: Tensor, schedule: Schedule, *,
    generator: NoiseSource | None = None, on_step: StepFn | None = None,
) -> Tensor:
    """Euler step to sigma_down, then fresh noise up to the next sigma (k-diffusion; one draw every step)."""
    sigmas, timesteps = schedule.sigmas, schedule.timesteps
    for i, t in enumerate(timesteps):
        x0 = denoise(x, sigmas[i], t)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1])
        x = x + to_d(x, sigmas[i], x0) * (sigma_down - sigmas[i])
        x = x + randn_like(x, generator) * sigma_up  # drawn on the last step too, as diffusers does
        if on_step is not None:
            on_step(i, x, x0)
    return x


@torch.no_grad()
def sample_heun(
    denoise: Denoiser, x: Tensor, schedule: Schedule, *,
    generator: NoiseSource | None = None, on_step: StepFn | None = None,
) -> Tensor:
    """Heun's second-order method (Karras et al. 2022, Algorithm 1); the step to sigma = 0 is plain Euler."""
    sigmas, timesteps = schedule.sigmas, schedule.timesteps
    for i, t in enumerate(timesteps):
        x0 = denoise(x, sigmas[i], t)
        d = to_d(x, sigmas[i], x0)
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0.0:
            x = x + d * dt
        else:
            x_pred = x + d * dt
            d_next = to_d(x_pred, sigmas[i + 1], denoise(x_pred, sigmas[i + 1], timesteps[i + 1]))
            x = x + (d + d_next) / 2 * dt
        if on_step is not None:
            on_step(i, x, x0)
    return x


def _lms_coefficient(sigmas: list[float], i: int, order: int, k: int) -> float:
    """Integral from sigmas[i] to sigmas[i+1] of the Lagrange basis through sigmas[i], ..., sigmas[i-order+1]."""
    a, b = sigmas[i], sigmas[i + 1]
    total = 0.0
    for node, weight in zip(_GAUSS_NODES, _GAUSS_WEIGHTS):
        tau = (b - a) / 2 * node + (a + b) / 2
        basis = 1.0
        for j in range(order):
            if j != k:
                basis *= (tau - sigmas[i - j]) / (sigmas[i - k] - sigmas[i - j])
        total += weight * basis
    return total * (b - a) / 2


@torch.no_grad()
def sample_lms(
    denoise: Denoiser, x: Tensor, schedule: Schedule, *,
    generator: NoiseSource | None = None, on_step: StepFn | None = None, order: int = 4,
) -> Tensor:
    """Linear multistep in sigma with up to `order` past derivatives (k-diffusion's LMS).

    diffusers integrates the Lagrange bases with scipy quad; they are polynomials of degree < 4, so a 4-point
    Gauss-Legendre rule gives the same numbers exactly. On an img2img slice the order warms up from 1 again
    (k-diffusion's rule, the only consistent one: there is no earlier derivative). diffusers' LMSDiscreteScheduler
    takes the order from its global step index instead, so its first sliced steps weight the one derivative
    it has with a higher-order coefficient; img2img + LMS differs from diffusers by design.
    """
    sigmas, timesteps = schedule.sigmas, schedule.timesteps
    derivatives: list[Tensor] = []  # newest last
    for i, t in enumerate(timesteps):
        x0 = denoise(x, sigmas[i], t)
        derivatives = [*derivatives[-(order - 1):], to_d(x, sigmas[i], x0)] if order > 1 else [to_d(x, sigmas[i], x0)]
        current = min(i + 1, order)
        for k in range(current):
            x = x + _lms_coefficient(sigmas, i, current, k) * derivatives[-1 - k]
        if on_step is not None:
            on_step(i, x, x0)
    return x
