"""What every sampler shares: the denoiser and callback types, the ODE derivative, ancestral splits, noise draws."""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

Denoiser = Callable[[Tensor, float, float], Tensor]  # denoise(x, sigma, t) -> x0, all (B, C, H, W) fp32
StepFn = Callable[[int, Tensor, Tensor], None]  # on_step(i, x after step i, x0 predicted at step i)


def to_d(x: Tensor, sigma: float, x0: Tensor) -> Tensor:
    """dx/dsigma of the probability-flow ODE, (x - x0) / sigma (Karras et al. 2022, eq. 4); equals eps."""
    return (x - x0) / sigma


def ancestral_step(sigma_from: float, sigma_to: float, eta: float = 1.0) -> tuple[float, float]:
    """(sigma_down, sigma_up): go deterministically to sigma_down, then add sigma_up noise to land on sigma_to."""
    if sigma_to == 0.0 or eta == 0.0:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * math.sqrt(sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2))
    return math.sqrt(sigma_to**2 - sigma_up**2), sigma_up


def randn_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """Unit noise shaped like x, drawn on the generator's device and moved (diffusers' randn_tensor), so seeds match."""
    if generator is None:
        return torch.randn(x.shape, device=x.device, dtype=x.dtype)
    noise = torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype)
    return noise.to(x.device)
