"""Noise schedules, written once for every sampler: betas, sigmas, spacing rules, Karras, img2img slicing.

Everything lives in k-diffusion's sigma space, `x = x0 + sigma * eps` with `sigma_t = sqrt((1 - abar_t) / abar_t)`.
diffusers builds its betas in fp32 torch and its sigma tables in numpy; we do the same so that a schedule holds
exactly the numbers the reference scheduler steps with. The result is plain Python floats, so the denoising loop
never waits on the GPU to read a sigma.
"""

from __future__ import annotations

import bisect
import functools
import json
import logging
import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from sd2_app.samplers.registry import AUTOMATIC, SAMPLERS, SCHEDULES, ScheduleKind
from sd2_app.samplers.schedule_types import SPACED_SIGMAS, SPACED_TIMESTEPS, SigmaRange

log = logging.getLogger(__name__)

SPACINGS = ("leading", "trailing", "linspace")


@dataclass(frozen=True)
class SchedulerConfig:
    """The training noise schedule of a checkpoint, read from its `scheduler/scheduler_config.json`."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"  # "linear" | "scaled_linear" (all SD2 repos) | "squaredcos_cap_v2"
    prediction_type: str = "epsilon"  # "epsilon" | "v_prediction" (sd2 768-v and the x4 upscaler)
    steps_offset: int = 0  # added to "leading" timesteps; 1 for SD2
    set_alpha_to_one: bool = True  # DDIM/PNDM: false lands the last step on abar_0 instead of 1
    clip_sample: bool = False  # stored for the x4 low-res DDPM; our samplers never clip x0 (SD2 configs say false)
    timestep_spacing: str | None = None  # None: each sampler's own default, as diffusers does
    trained_betas: tuple[float, ...] | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SchedulerConfig:
        """Take the keys we know; the hub's old spelling "velocity" means v_prediction (stable-diffusion-2 PR #3)."""
        known = {f.name for f in fields(cls)}
        ignored = sorted(k for k in d if k not in known and not k.startswith("_"))
        if ignored:
            log.debug("scheduler config: ignoring %s", ", ".join(ignored))
        kwargs = {k: v for k, v in d.items() if k in known and v is not None}
        if kwargs.get("prediction_type") == "velocity":
            kwargs["prediction_type"] = "v_prediction"
        if "trained_betas" in kwargs:
            kwargs["trained_betas"] = tuple(float(b) for b in kwargs["trained_betas"])
        config = cls(**kwargs)
        if config.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction_type {config.prediction_type!r} is not supported (epsilon, v_prediction)")
        if config.timestep_spacing is not None and config.timestep_spacing not in SPACINGS:
            raise ValueError(f"timestep_spacing {config.timestep_spacing!r} is not one of {SPACINGS}")
        return config

    @classmethod
    def from_json(cls, path: str | Path) -> SchedulerConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))


@dataclass(frozen=True)
class Schedule:
    """N steps: the model is evaluated at `sigmas[i]` with UNet timestep `timesteps[i]`, landing on `sigmas[i+1]`."""

    sigmas: list[float]  # N+1, descending; the last is 0 or sigma_min
    timesteps: list[float]  # N, the exact timestep diffusers feeds the UNet at sigmas[i]
    init_noise_sigma: float  # txt2img: x = init_noise_sigma * randn
    sigma_to_t: Callable[[float], float] = field(repr=False)  # fractional timestep of any sigma (DPM2 midpoints)
    start_index: int = 0  # index of the first step in the full schedule (img2img); DPM++ 2S pairs steps by it

    def __len__(self) -> int:
        return len(self.timesteps)


# ---------------------------------------------------------------------------------------------- training tables


def betas_for(config: SchedulerConfig) -> torch.Tensor:
    """(T,) fp32 betas, computed in fp32 torch like diffusers so abar matches it to the last bit."""
    T = config.num_train_timesteps
    if config.trained_betas is not None:
        return torch.tensor(config.trained_betas, dtype=torch.float32)
    if config.beta_schedule == "linear":
        return torch.linspace(config.beta_start, config.beta_end, T, dtype=torch.float32)
    if config.beta_schedule == "scaled_linear":  # LDM's "linear": linear in sqrt(beta)
        return torch.linspace(config.beta_start**0.5, config.beta_end**0.5, T, dtype=torch.float32) ** 2
    if config.beta_schedule == "squaredcos_cap_v2":  # Nichol & Dhariwal (2021) cosine schedule, beta <= 0.999

        def abar(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = [min(1 - abar((i + 1) / T) / abar(i / T), 0.999) for i in range(T)]
        return torch.tensor(betas, dtype=torch.float32)
    raise ValueError(f"beta_schedule {config.beta_schedule!r} is not supported")


@functools.lru_cache(maxsize=16)
def _train_tables(config: SchedulerConfig) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """(abar fp32 (T,), sigma fp32 (T,), log sigma as floats) for one config; configs are frozen, so cache.

    The cache is shared by every job in the process, so what it holds cannot change: read-only arrays.
    """
    alphas_cumprod = torch.cumprod(1.0 - betas_for(config), dim=0)  # (T,) fp32
    sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5  # fp32, ascending in t
    log_sigmas = np.log(sigmas.numpy())  # fp32, as diffusers' sigma_to_t uses
    abar_table, sigma_table = alphas_cumprod.numpy(), sigmas.numpy()
    abar_table.setflags(write=False)
    sigma_table.setflags(write=False)
    return abar_table, sigma_table, tuple(float(v) for v in log_sigmas)


def alphas_cumprod(config: SchedulerConfig) -> np.ndarray:
    """(T,) fp32 abar_t = prod(1 - beta)."""
    return _train_tables(config)[0]


def train_sigmas(config: SchedulerConfig) -> np.ndarray:
    """(T,) fp32 sigma_t = sqrt((1 - abar_t) / abar_t), ascending (sigma_0 ~ 0.029, sigma_999 ~ 14.6 for SD2)."""
    return _train_tables(config)[1]


def _sigma_to_t(log_sigmas: tuple[float, ...], sigma: float) -> float:
    """Fractional timestep of `sigma`: linear interpolation in log sigma between the two training neighbours."""
    log_sigma = math.log(max(sigma, 1e-10))
    low = min(max(bisect.bisect_right(log_sigmas, log_sigma) - 1, 0), len(log_sigmas) - 2)
    lo, hi = log_sigmas[low], log_sigmas[low + 1]
    w = min(max((lo - log_sigma) / (lo - hi), 0.0), 1.0)
    return (1 - w) * low + w * (low + 1)


def sigma_to_t_fn(config: SchedulerConfig) -> Callable[[float], float]:
    return functools.partial(_sigma_to_t, _train_tables(config)[2])


# ---------------------------------------------------------------------------------------------- spacing rules


def spaced_timesteps(config: SchedulerConfig, kind: ScheduleKind, steps: int) -> np.ndarray:
    """(N,) descending timesteps; float32 for the k-samplers, integer values for the VP schedulers."""
    T = config.num_train_timesteps
    spacing = "linspace" if kind.fixed_spacing else (config.timestep_spacing or kind.default_spacing)
    n = steps + 1 if kind.n_plus_one else steps
    if spacing == "linspace":
        if kind.integer_timesteps:
            t = np.linspace(0, T - 1, n).round()[::-1]
        else:
            t = np.linspace(0, T - 1, n, dtype=np.float32)[::-1]
    elif spacing == "leading":
        t = (np.arange(0, n) * (T // n)).round()[::-1] + config.steps_offset
    elif spacing == "trailing":
        t = np.round(np.arange(T, 0, -T / steps)) - 1
    else:
        raise ValueError(f"timestep_spacing {spacing!r} is not one of {SPACINGS}")
    if kind.n_plus_one and spacing != "trailing":
        t = t[:-1]
    return t.astype(np.float32 if not kind.integer_timesteps else np.int64).copy()


def _final_sigma(config: SchedulerConfig, kind: ScheduleKind) -> float:
    if kind.final == "zero":
        return 0.0
    if kind.final == "ddim":  # the step after t=1 lands on abar_0, or on the clean image when set_alpha_to_one
        return 0.0 if config.set_alpha_to_one else float(train_sigmas(config)[0])
    if kind.final == "sigma_min":  # DEIS cannot step to sigma = 0 (its coefficients take log sigma)
        return float(train_sigmas(config)[0])
    raise ValueError(f"unknown final sigma rule {kind.final!r}")


def build_schedule(config: SchedulerConfig, kind: ScheduleKind, steps: int, *, schedule: str = AUTOMATIC) -> Schedule:
    """The N-step schedule of one sampler family, number for number what diffusers' `set_timesteps` builds.

    `schedule` (one of SCHEDULES): the family's own spacing, or that schedule type's N steps placed by the family's
    ends and the training sigmas (`schedule_types`): its sigmas, each at the timestep sigma_to_t gives it (rounded
    for Karras where diffusers rounds; the VP schedulers keep the whole part, as diffusers' int64 timesteps do), or
    its timesteps (the VP schedulers' whole parts), each at its training sigma."""
    if not 1 <= steps <= config.num_train_timesteps:
        raise ValueError(f"steps must be in 1..{config.num_train_timesteps}, got {steps}")
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; known: {', '.join(SCHEDULES)}")
    sigma_table = train_sigmas(config)
    to_t = sigma_to_t_fn(config)
    timesteps = spaced_timesteps(config, kind, steps)
    sigmas = np.interp(timesteps, np.arange(len(sigma_table)), sigma_table)  # float64; exact table values at int t
    if schedule != AUTOMATIC:
        if kind.sigma_range == "spaced":
            lo, hi = float(sigmas[-1]), float(sigmas[0])
        else:
            lo, hi = float(sigma_table[0]), float(sigma_table[-1])
        sigma_range = SigmaRange(lo, hi, sigma_table)
        if schedule in SPACED_TIMESTEPS:
            timesteps = SPACED_TIMESTEPS[schedule](steps, sigma_range)
            if kind.integer_timesteps:  # each step at the sigma of the whole timestep the UNet is given
                timesteps = np.floor(timesteps)
            sigmas = sigma_range.t_to_sigma(timesteps)
        else:
            sigmas = SPACED_SIGMAS[schedule](steps, sigma_range)
            timesteps = np.array([to_t(float(s)) for s in sigmas])
        if schedule == "Karras" and kind.round_karras_t and config.beta_schedule != "squaredcos_cap_v2":
            timesteps = timesteps.round()
        if kind.integer_timesteps:
            timesteps = np.floor(timesteps)
    if kind.final == "sigma_min" and schedule != AUTOMATIC:
        final = float(sigmas[-1])  # DEIS repeats the last sigma of a spaced schedule
    else:
        final = _final_sigma(config, kind)
    sigmas32 = np.concatenate([sigmas, [final]]).astype(np.float32)
    sigma_list = [float(s) for s in sigmas32]
    t_list = [float(t) for t in np.asarray(timesteps, dtype=np.float32)]
    if kind.integer_timesteps:
        init = math.sqrt(1 + sigma_list[0] ** 2)  # x_vp starts as unit noise
    else:
        spacing = config.timestep_spacing or kind.default_spacing
        init = max(sigma_list) if spacing in ("linspace", "trailing") else math.sqrt(max(sigma_list) ** 2 + 1)
    return Schedule(sigmas=sigma_list, timesteps=t_list, init_noise_sigma=init, sigma_to_t=to_t)


def make_schedule(config: SchedulerConfig, sampler_name: str, steps: int, *, schedule: str = AUTOMATIC) -> Schedule:
    """The schedule `sampler_name` runs on for `steps` steps, configured from the checkpoint's scheduler config."""
    try:
        spec = SAMPLERS[sampler_name]
    except KeyError:
        raise ValueError(f"unknown sampler {sampler_name!r}; known: {', '.join(SAMPLERS)}") from None
    if schedule != AUTOMATIC and not spec.offers_schedules:
        raise ValueError(f"sampler {sampler_name!r} has no {schedule} sigma schedule")
    return build_schedule(config, spec.schedule, steps, schedule=schedule)


# ---------------------------------------------------------------------------------------------- img2img


def start_at(schedule: Schedule, strength: float) -> Schedule:
    """Keep the last `int(N * strength)` steps (diffusers' img2img rule).

    diffusers slices Heun/KDPM2 by `t_start * order` on their doubled timestep lists; that is the same cut as
    `t_start` on our one-entry-per-step schedule, so no order argument is needed.
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    n = len(schedule.timesteps)
    return keep_last(schedule, min(int(n * strength), n))


def keep_last(schedule: Schedule, count: int) -> Schedule:
    """Keep the last `count` steps (all of them when `count` is larger): the cut `start_at` makes, by count."""
    t_start = max(len(schedule.timesteps) - count, 0)
    return replace(
        schedule,
        sigmas=schedule.sigmas[t_start:],
        timesteps=schedule.timesteps[t_start:],
        start_index=schedule.start_index + t_start,
    )


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
    """Noise a clean latent to `sigma` (every diffusers `add_noise`, rewritten in sigma space)."""
    return x0 + sigma * noise
