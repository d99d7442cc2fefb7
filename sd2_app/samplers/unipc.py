"""UniPC (Zhao et al. 2023), bh2 variant predicting x0, order 2, in sigma space.

Each model call first corrects the previous step (UniC) with the new x0 prediction, then predicts the next
point (UniP). The model is evaluated on the uncorrected point, which is why the corrector costs no extra call.
With lambda = -log(sigma), the VP update x_t = (sigma_t/sigma_s) x - alpha_t phi1 m - ... becomes
x_t = r x - phi1 m - ... with r = sigma_t / sigma_s and phi1 = e^{-h} - 1 = r - 1.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sd2_app.samplers.base import Denoiser, NoiseSource, StepFn
from sd2_app.samplers.schedules import Schedule

SOLVER_ORDER = 2


def _b_vector(hh: float, phi1: float, order: int) -> list[float]:
    """Right-hand side b_j = g_j * j! / B(h) of the bh2 order conditions, j = 1..order."""
    g, factorial, b = phi1 / hh - 1.0, 1.0, []
    for j in range(1, order + 1):
        b.append(g * factorial / phi1)
        factorial *= j + 1
        g = g / hh - 1.0 / factorial
    return b


def _update(x: Tensor, x0s: list[Tensor], sigmas: list[float], sigma_t: float, rhos: list[float],
            x0_t: Tensor | None = None) -> Tensor:
    """One UniP (x0_t None) or UniC step from sigmas[-1] to sigma_t; x0s and sigmas are the history, newest last."""
    sigma_s = sigmas[-1]
    if sigma_t == 0.0:  # h = inf: the first-order step lands on x0
        return x0s[-1]
    ratio = sigma_t / sigma_s
    h = math.log(sigma_s / sigma_t)
    phi1 = math.expm1(-h)  # also B(h) for bh2
    m0 = x0s[-1]
    terms = [rhos[k - 1] * (x0s[-1 - k] - m0) / (math.log(sigma_s / sigmas[-1 - k]) / h) for k in range(1, len(x0s))]
    if x0_t is not None:
        terms.append(rhos[-1] * (x0_t - m0))
    if not terms:  # first order: no zeros tensor to add
        return ratio * x - phi1 * m0
    correction = terms[0]
    for term in terms[1:]:
        correction = correction + term
    return ratio * x - phi1 * m0 - phi1 * correction


def _corrector_rhos(sigmas: list[float], sigma_t: float, order: int) -> list[float]:
    if order == 1:
        return [0.5]
    sigma_s = sigmas[-1]
    h = math.log(sigma_s / sigma_t)
    rks = [math.log(sigma_s / sigmas[-1 - k]) / h for k in range(1, order)] + [1.0]
    R = torch.tensor([[r ** (j - 1) for r in rks] for j in range(1, order + 1)], dtype=torch.float64)
    b = torch.tensor(_b_vector(-h, math.expm1(-h), order), dtype=torch.float64)
    return torch.linalg.solve(R, b).tolist()  # CPU float64: no GPU sync


@torch.no_grad()
def sample_unipc(
    denoise: Denoiser, x: Tensor, schedule: Schedule, *,
    generator: NoiseSource | None = None, on_step: StepFn | None = None,
) -> Tensor:
    """UniPC-bh2 with diffusers' defaults: order 2, warm-up from order 1, first order on the last step."""
    sigmas, timesteps = schedule.sigmas, schedule.timesteps
    n = len(timesteps)
    x0s: list[Tensor] = []  # model x0 predictions, newest last
    x_prev, order_prev = x, 1
    for i, t in enumerate(timesteps):
        x0 = denoise(x, sigmas[i], t)
        if i > 0:  # UniC: redo the step sigmas[i-1] -> sigmas[i] with the new prediction
            history = sigmas[max(i - order_prev, 0):i]
            rhos = _corrector_rhos(history, sigmas[i], order_prev)
            x = _update(x_prev, x0s[-order_prev:], history, sigmas[i], rhos, x0_t=x0)
        x0s = [*x0s[-(SOLVER_ORDER - 1):], x0]
        order = min(SOLVER_ORDER, n - i, i + 1)
        x_prev, order_prev = x, order
        x = _update(x, x0s[-order:], sigmas[i - order + 1:i + 1], sigmas[i + 1], [0.5] * (order - 1))
        if on_step is not None:
            on_step(i, x, x0)
    return x
