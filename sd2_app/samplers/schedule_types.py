"""A1111's "Schedule types": where a sampler's N sigmas go, besides the sampler's own spacing ("Automatic").

Each function gives the N sigmas (or timesteps) the model is evaluated at, descending, without the final one: the
sampler family appends its own (`schedules.build_schedule`: 0 for most, the last sigma again for DEIS). The
definitions are A1111's (modules/sd_schedulers.py, the `schedulers` list; Karras, Exponential and Polyexponential
are k-diffusion's `get_sigmas_*`), computed in float64. As there, A1111's own types span the training range;
Karras, Exponential and Beta span the family's ends (`ScheduleKind.sigma_range`) as diffusers' do, which are the
training range's at the default spacing of two steps or more:

- Uniform: N timesteps evenly spaced from the last to 0 (k-diffusion `DiscreteSchedule.get_sigmas`); Normal: the
  same, between the timesteps of the training range's ends (`normal_scheduler`), which are the last and 0; SGM
  Uniform: N of N + 1 timesteps evenly spaced from the last to 0, the last left out (`sgm_uniform`); Simple: every
  (T / N)-th timestep from the last (`simple_scheduler`). Each is evaluated at its training sigma, interpolated in
  log sigma (k-diffusion `t_to_sigma`), with that timestep; for the samplers that give the UNet whole timesteps
  (the DPM family, DEIS), at the sigma of the timestep's whole part.
- Karras: evenly spaced in sigma^(1/7) (Karras et al. 2022, eq. 5); Exponential: evenly in log sigma;
  Polyexponential: log sigma along a ramp^rho, rho 1 (A1111's `default_rho`), which spaces as Exponential does.
- KL Optimal: evenly spaced in arctan(sigma) (Sabour et al. 2024, "Align Your Steps", the KL-optimal schedule);
  A1111 spaces N + 1 points from the top to sigma_min and ends at sigma_min, we take its first N and the family's
  final sigma, so the image ends as clean as with every other schedule type.
- Align Your Steps: NVIDIA's optimised 10-step sigmas for SD 1.x/2.x's noise schedule, interpolated to N steps
  in log sigma (research.nvidia.com/labs/toronto-ai/AlignYourSteps/howto.html; A1111 uses the SD 1.5 list for
  every model but SDXL). On a checkpoint whose training sigmas do not end where the list does (the x4 upscaler's
  schedule) the list's log sigmas are stretched onto its range, keeping their shape.
- Beta: at a Beta(0.6, 0.6) distribution's quantiles (Lee et al. 2024, "Beta Sampling is All You Need").

A1111's "DDIM" schedule type is not offered: it makes a number of steps other than the one asked for (31 for 30),
which a request's progress, cost and prompt schedule are counted in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from sd2_app.samplers.beta_quantiles import beta_spacing

KARRAS_RHO = 7.0  # Karras et al. (2022), eq. 5
POLYEXPONENTIAL_RHO = 1.0  # A1111's default_rho for Polyexponential
BETA_ALPHA = BETA_BETA = 0.6  # the Beta schedule's distribution: diffusers' `_convert_to_beta` and A1111's defaults
# Align Your Steps for SD 1.x/2.x (their shared noise schedule), from sigma_max to sigma_min, as NVIDIA publishes it
ALIGN_YOUR_STEPS = (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029)


@dataclass(frozen=True)
class SigmaRange:
    """What a schedule type places its sigmas by: the sampler family's ends and the checkpoint's training sigmas."""

    low: float  # the family's smallest sigma (`ScheduleKind.sigma_range`): Karras, Exponential and Beta end there
    high: float  # and its largest
    train: np.ndarray  # (T,) fp32 training sigmas, ascending in t

    def t_to_sigma(self, t: np.ndarray) -> np.ndarray:
        """Sigmas at fractional timesteps, interpolated linearly in log sigma (k-diffusion `t_to_sigma`)."""
        log_sigmas = np.log(self.train.astype(np.float64))
        return np.exp(np.interp(t, np.arange(len(log_sigmas)), log_sigmas))


def sigmas_karras(steps: int, sigma_min: float, sigma_max: float, rho: float = KARRAS_RHO) -> np.ndarray:
    """(N,) sigmas evenly spaced in sigma^(1/rho) (Karras et al. 2022, eq. 5)."""
    ramp = np.linspace(0, 1, steps)
    max_inv, min_inv = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return (max_inv + ramp * (min_inv - max_inv)) ** rho


def sigmas_exponential(steps: int, sigma_min: float, sigma_max: float) -> np.ndarray:
    """(N,) sigmas evenly spaced in log sigma (k-diffusion's `get_sigmas_exponential`, diffusers'
    `_convert_to_exponential`)."""
    return np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), steps))


def sigmas_polyexponential(steps: int, sigma_min: float, sigma_max: float,
                           rho: float = POLYEXPONENTIAL_RHO) -> np.ndarray:
    """(N,) sigmas with log sigma from the top along linspace(1, 0, N) ** rho (k-diffusion's
    `get_sigmas_polyexponential`)."""
    ramp = np.linspace(1, 0, steps) ** rho
    return np.exp(ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min))


def sigmas_beta(steps: int, sigma_min: float, sigma_max: float, alpha: float = BETA_ALPHA,
                beta: float = BETA_BETA) -> np.ndarray:
    """(N,) sigmas at the beta distribution's quantiles of 1 - linspace(0, 1, N), scaled from [0, 1] onto
    [sigma_min, sigma_max] (Lee et al. 2024; diffusers' `_convert_to_beta`)."""
    return np.array([sigma_min + q * (sigma_max - sigma_min) for q in beta_spacing(steps, alpha, beta)])


def sigmas_kl_optimal(steps: int, sigma_min: float, sigma_max: float) -> np.ndarray:
    """(N,) sigmas evenly spaced in arctan(sigma): the first N of N + 1 from sigma_max to sigma_min."""
    fraction = np.arange(steps) / steps
    return np.tan(fraction * math.atan(sigma_min) + (1 - fraction) * math.atan(sigma_max))


def sigmas_align_your_steps(steps: int, sigma_range: SigmaRange) -> np.ndarray:
    """(N,) Align Your Steps sigmas: the published ones, log-linearly interpolated to N (at N = 11, the list)."""
    log_list = np.log(np.array(ALIGN_YOUR_STEPS))
    train_low, train_high = float(sigma_range.train[0]), float(sigma_range.train[-1])
    if (round(train_high, 3), round(train_low, 3)) != (ALIGN_YOUR_STEPS[0], ALIGN_YOUR_STEPS[-1]):
        top, bottom = math.log(train_high), math.log(train_low)
        log_list = bottom + (log_list - log_list[-1]) / (log_list[0] - log_list[-1]) * (top - bottom)
    return np.exp(np.interp(np.linspace(0, 1, steps), np.linspace(0, 1, len(log_list)), log_list[::-1]))[::-1]


def timesteps_uniform(steps: int, sigma_range: SigmaRange) -> np.ndarray:
    """(N,) timesteps evenly spaced from the last to 0."""
    return np.linspace(len(sigma_range.train) - 1, 0, steps)


def timesteps_sgm_uniform(steps: int, sigma_range: SigmaRange) -> np.ndarray:
    """(N,) timesteps: N + 1 evenly spaced from the last to 0, the last of them left out."""
    return np.linspace(len(sigma_range.train) - 1, 0, steps + 1)[:-1]


def timesteps_simple(steps: int, sigma_range: SigmaRange) -> np.ndarray:
    """(N,) every (T / N)-th timestep from the last."""
    last, stride = len(sigma_range.train) - 1, len(sigma_range.train) / steps
    return np.array([float(last - int(i * stride)) for i in range(steps)])


SigmaSpacing = Callable[[int, SigmaRange], np.ndarray]  # (steps, range) -> (N,) sigmas, or timesteps


def _between_ends(spacing: Callable[[int, float, float], np.ndarray]) -> SigmaSpacing:
    return lambda steps, sigma_range: spacing(steps, sigma_range.low, sigma_range.high)


def _over_training_range(spacing: Callable[[int, float, float], np.ndarray]) -> SigmaSpacing:
    return lambda steps, sigma_range: spacing(steps, float(sigma_range.train[0]), float(sigma_range.train[-1]))


# The schedule types that place sigmas: label -> (N,) sigmas; each is evaluated at the timestep of its sigma.
SPACED_SIGMAS: dict[str, SigmaSpacing] = {
    "Karras": _between_ends(sigmas_karras),
    "Exponential": _between_ends(sigmas_exponential),
    "Polyexponential": _over_training_range(sigmas_polyexponential),
    "KL Optimal": _over_training_range(sigmas_kl_optimal),
    "Align Your Steps": sigmas_align_your_steps,
    "Beta": _between_ends(sigmas_beta),
}
# The schedule types that place timesteps: label -> (N,) timesteps, evaluated there at the training sigma
# (`SigmaRange.t_to_sigma`), as A1111's model wrapper reads its sigma back as that timestep.
SPACED_TIMESTEPS: dict[str, SigmaSpacing] = {
    "Uniform": timesteps_uniform,
    "SGM Uniform": timesteps_sgm_uniform,
    "Simple": timesteps_simple,
    "Normal": timesteps_uniform,
}
