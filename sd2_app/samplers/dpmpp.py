"""DPM-Solver++ (Lu et al. 2022): 2M, 2M SDE (midpoint and Heun), 3M SDE and the single-step 2S, in sigma space.

In sigma space lambda = -log(sigma), so e^{-h} is just the sigma ratio of the step and the solvers reduce to
k-diffusion's form: x_next = r * x + (1 - r) * D with r = sigma_next / sigma and D a corrected x0 estimate.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sd2_app.samplers.base import Denoiser, NoiseSource, StepFn, randn_like
from sd2_app.samplers.schedules import Schedule


@torch.no_grad()
def sample_dpmpp_2m(
    denoise: Denoiser, x: Tensor, schedule: Schedule, *,
    generator: NoiseSource | None = None, on_step: StepFn | None = None,
) -> Tensor:
    """DPM-Solver++(2M), midpoint form; first order on the first step and on the final step to sigma = 0."""
    sigmas, timesteps = schedule.sigmas, schedule.timesteps
    x0_prev: Tensor | None = None
    for i, t in enumerate(timesteps):
        x0 = denoise(x, sigmas[i], t)
        ratio = sigmas[i + 1] / sigmas[i]  # e^{-h}
        if x0_prev is None or sigmas[i + 1] == 0.0:
            target = x0
        else:
            r = math.log(sigmas[i - 1] / sigmas[i]) / math.log(sigmas[i] / sigmas[i + 1])  # h_last / h
            target = x0 + (x0 - x0_prev) / (2 * r)
        x = ratio * x + (1 - ratio) * target
        x0_prev = x0
        if on_step is not None:
            on_step(i, x, x0)
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(
    denoise: Denoiser, x: Tensor, schedule: Schedule, *,
    generator: NoiseSource | None = None, on_step: StepFn | None = None,
) -> Tensor:
    """SDE-DPM-Solver++(2M), midpoint form (diffusers' "sde-dpmsolver++"); one noise draw every step."""
    return _sample_dpmpp_sde(denoise, x, schedule, generator, on_step, max_order=2, heun=False)


@torch.no_grad()
def sample_dpmpp_2m_sde_heun(
    denoise: Denoiser, x: Tensor, schedule: Schedule, *,
    generator: NoiseSource | None = None, on_step: StepFn | None = None,
) -> Tensor:
    """SDE-DPM-Solver++(2M), Heun form (diffusers' solver_type "heun"): the second-order term's exact
    exponential-integrator weight instead of the midpoint's 1/2."""
    return _sample_dpmpp_sde(denoise, x, schedule, generator, on_step, max_order=2, heun=True)


@torch.no_grad()
def sample_dpmpp_3m_sde(
    denoise: Denoiser, x: Tensor, schedule: Schedule, *,
    generator: NoiseSource | None = None, on_step: StepFn | None = None,
) -> Tensor:
    """SDE-DPM-Solver++(3M) (diffusers' "sde-dpmsolver++" at solver_order 3)."""
    return _sample_dpmpp_sde(denoise, x, schedule, generator, on_step, max_order=3, heun=False)


def _sde_orders(schedule: Schedule, max_order: int) -> list[int]:
    """Each step's order in diffusers' multistep scheduler (`step`): first on the first step run and on the step
    to sigma = 0; second on the next, and on the last but one where the whole schedule (an img2img slice's
    included) is under 15 steps (lower_order_final); else `max_order`."""
    steps = len(schedule.timesteps)
    whole = schedule.start_index + steps
    orders = []
    for i in range(steps):
        if i == 0 or schedule.sigmas[i + 1] == 0.0:
            orders.append(1)
        elif max_order == 2 or i == 1 or (i == steps - 2 and whole < 15):
            orders.append(2)
        else:
            orders.append(3)
    return orders


def _sample_dpmpp_sde(denoise: Denoiser, x: Tensor, schedule: Schedule, generator: NoiseSource | None,
                      on_step: StepFn | None, *, max_order: int, heun: bool) -> Tensor:
    """SDE-DPM-Solver++ of `max_order` (2 or 3) in sigma space, where e^{-h} is the step's sigma ratio; one noise
    draw every step, before the update, the last step included (as diffusers' `step`)."""
    sigmas, timesteps = schedule.sigmas, schedule.timesteps
    x0s: list[Tensor] = []  # the model's x0 estimates, the latest last
    for i, (t, order) in enumerate(zip(timesteps, _sde_orders(schedule, max_order))):
        x0 = denoise(x, sigmas[i], t)
        x0s = [*x0s[-2:], x0]
        noise = randn_like(x, generator)
        ratio = sigmas[i + 1] / sigmas[i]  # e^{-h}
        decay = 1 - ratio**2  # 1 - e^{-2h}
        x = ratio**2 * x + decay * x0 + noise * (sigmas[i + 1] * math.sqrt(decay))
        if order > 1:
            h = math.log(sigmas[i] / sigmas[i + 1])
            r0 = math.log(sigmas[i - 1] / sigmas[i]) / h
            d1 = (x0 - x0s[-2]) / r0
            weight = decay / (-2 * h) + 1  # the exact weight of the first difference (diffusers' heun, 3M)
            if order == 2:
                x = x + (weight if heun else 0.5 * decay) * d1
            else:
                r1 = math.log(sigmas[i - 2] / sigmas[i - 1]) / h
                d1_prev = (x0s[-2] - x0s[-3]) / r1
                d2 = (d1 - d1_prev) / (r0 + r1)
                x = x + weight * (d1 + r0 * d2) + ((decay - 2 * h) / (2 * h) ** 2 - 0.5) * d2
        if on_step is not None:
            on_step(i, x, x0)
    return x


def _singlestep_orders(steps: int) -> list[int]:
    """diffusers' order list for order 2 with lower_order_final: pairs (1, 2), the tail ends on order 1."""
    if steps % 2 == 0:
        return [1, 2] * (steps // 2 - 1) + [1, 1]
    return [1, 2] * (steps // 2) + [1]


@torch.no_grad()
def sample_dpmpp_2s(
    denoise: Denoiser, x: Tensor, schedule: Schedule, *,
    generator: NoiseSource | None = None, on_step: StepFn | None = None,
) -> Tensor:
    """DPM-Solver++(2S), single-step: a first-order step to the next sigma only to evaluate the model there,
    then a second-order step over both intervals from the remembered start (diffusers' singlestep scheduler).

    Steps are paired by their index in the full schedule, so an img2img slice keeps diffusers' pairing.
    """
    sigmas, timesteps = schedule.sigmas, schedule.timesteps
    orders = _singlestep_orders(schedule.start_index + len(timesteps))[schedule.start_index:]
    x_start, x0_start = x, None
    for i, t in enumerate(timesteps):
        x0 = denoise(x, sigmas[i], t)
        if i == 0 or orders[i] == 1:
            x_start, x0_start = x, x0
            ratio = sigmas[i + 1] / sigmas[i]
            x = ratio * x + (1 - ratio) * x0
        else:  # from sigmas[i-1] over two intervals, with the model at sigmas[i-1] and sigmas[i]
            ratio = sigmas[i + 1] / sigmas[i - 1]
            r = math.log(sigmas[i - 1] / sigmas[i]) / math.log(sigmas[i - 1] / sigmas[i + 1])
            target = x0_start + (x0 - x0_start) / (2 * r)
            x = ratio * x_start + (1 - ratio) * target
        if on_step is not None:
            on_step(i, x, x0)
    return x
