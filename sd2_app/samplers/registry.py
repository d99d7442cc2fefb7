"""The sampler table: user-facing names -> sampler function and the schedule rules it needs.

No torch here: the table names each sampler's function ("module:function" in this package), imported on first
use, so the catalog of names (`sd2_app.api.checks.catalog_of`) serves a front end that holds no models.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable


# A1111's "Schedule type" choices, in its order (modules/sd_schedulers.py names them so; its "DDIM" is left out,
# `schedule_types` says why): "Automatic" is the sampler's own spacing; each other places the sampler's N sigmas
# by the family's ends (`ScheduleKind.sigma_range`) and the training sigmas (`sd2_app.samplers.schedule_types`).
# Karras, Exponential and Beta are also diffusers' use_karras_sigmas, use_exponential_sigmas and use_beta_sigmas.
AUTOMATIC = "Automatic"
SCHEDULES = (AUTOMATIC, "Uniform", "Karras", "Exponential", "Polyexponential", "SGM Uniform", "KL Optimal",
             "Align Your Steps", "Simple", "Normal", "Beta")


@dataclass(frozen=True)
class ScheduleKind:
    """How one sampler family places its N steps (the rules differ per diffusers scheduler class)."""

    name: str
    default_spacing: str  # used when the config has no timestep_spacing
    n_plus_one: bool  # DPM-Solver/UniPC/DEIS space N+1 points and drop the last one
    integer_timesteps: bool  # VP schedulers index abar by int t; the k-samplers interpolate at float t
    final: str  # "zero" | "ddim" (abar_0 unless set_alpha_to_one) | "sigma_min" (DEIS: last sigma repeated)
    sigma_range: str = "spaced"  # the schedule types' ends: "spaced" (k-samplers: the spaced sigmas) | "train" (DPM)
    round_karras_t: bool = False  # KDPM2 and the DPM family round sigma_to_t(karras sigma) to an integer
    fixed_spacing: bool = False  # DPM singlestep has no timestep_spacing option: always linspace


# How each diffusers scheduler family places its steps (diffusers scheduling_*.py, set_timesteps).
K_DISCRETE = ScheduleKind("k-discrete", "linspace", n_plus_one=False, integer_timesteps=False, final="zero")
K_DPM2 = ScheduleKind("k-dpm2", "linspace", n_plus_one=False, integer_timesteps=False, final="zero",
                      round_karras_t=True)
DDIM = ScheduleKind("ddim", "leading", n_plus_one=False, integer_timesteps=True, final="ddim")
DDPM = ScheduleKind("ddpm", "leading", n_plus_one=False, integer_timesteps=True, final="zero")
DPM = ScheduleKind("dpm", "linspace", n_plus_one=True, integer_timesteps=True, final="zero",
                   sigma_range="train", round_karras_t=True)
DPM_SINGLESTEP = ScheduleKind("dpm-singlestep", "linspace", n_plus_one=True, integer_timesteps=True, final="zero",
                              sigma_range="train", round_karras_t=True, fixed_spacing=True)
DEIS = ScheduleKind("deis", "linspace", n_plus_one=True, integer_timesteps=True, final="sigma_min",
                    sigma_range="train", round_karras_t=True)


@dataclass(frozen=True)
class SamplerSpec:
    name: str  # what users pick, e.g. "DPM++ 2M"
    function: str  # "module:function" in sd2_app.samplers
    offers_schedules: bool  # the schedule types (`SCHEDULES`) besides its own spacing
    order: int  # UNet calls per step (Heun/DPM2: 2); the progress total is still len(schedule)
    is_stochastic: bool  # draws noise from the generator during sampling
    schedule: ScheduleKind

    @property
    def fn(self) -> Callable:
        """sample_xxx(denoise, x, schedule, *, generator=None, on_step=None) -> x"""
        module, name = self.function.split(":")
        return getattr(importlib.import_module(f"sd2_app.samplers.{module}"), name)


_SPECS = [
    SamplerSpec("Euler", "euler:sample_euler", True, 1, False, K_DISCRETE),
    SamplerSpec("Euler a", "euler:sample_euler_ancestral", True, 1, True, K_DISCRETE),
    SamplerSpec("Heun", "euler:sample_heun", True, 2, False, K_DISCRETE),
    SamplerSpec("LMS", "euler:sample_lms", True, 1, False, K_DISCRETE),
    SamplerSpec("DPM2", "dpm2:sample_dpm_2", True, 2, False, K_DPM2),
    SamplerSpec("DPM2 a", "dpm2:sample_dpm_2_ancestral", True, 2, True, K_DPM2),
    SamplerSpec("DDIM", "ddim:sample_ddim", False, 1, False, DDIM),
    SamplerSpec("DDPM", "ddim:sample_ddpm", False, 1, True, DDPM),
    SamplerSpec("PNDM", "ddim:sample_plms", False, 1, False, DDIM),
    SamplerSpec("DPM++ 2M", "dpmpp:sample_dpmpp_2m", True, 1, False, DPM),
    SamplerSpec("DPM++ 2M SDE", "dpmpp:sample_dpmpp_2m_sde", True, 1, True, DPM),
    SamplerSpec("DPM++ 2M SDE Heun", "dpmpp:sample_dpmpp_2m_sde_heun", True, 1, True, DPM),
    SamplerSpec("DPM++ 3M SDE", "dpmpp:sample_dpmpp_3m_sde", True, 1, True, DPM),
    SamplerSpec("DPM++ 2S", "dpmpp:sample_dpmpp_2s", True, 1, False, DPM_SINGLESTEP),
    SamplerSpec("UniPC", "unipc:sample_unipc", True, 1, False, DPM),
    SamplerSpec("DEIS", "deis:sample_deis", True, 1, False, DEIS),
]
SAMPLERS: dict[str, SamplerSpec] = {spec.name: spec for spec in _SPECS}
