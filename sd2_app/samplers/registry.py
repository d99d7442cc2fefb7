"""The sampler table: user-facing names -> sampler function and the schedule rules it needs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from sd2_app.samplers import ddim, deis, dpm2, dpmpp, euler, unipc
from sd2_app.samplers.schedules import Schedule, ScheduleKind, SchedulerConfig, build_schedule

# How each diffusers scheduler family places its steps (diffusers scheduling_*.py, set_timesteps).
K_DISCRETE = ScheduleKind("k-discrete", "linspace", n_plus_one=False, integer_timesteps=False, final="zero")
K_DPM2 = ScheduleKind("k-dpm2", "linspace", n_plus_one=False, integer_timesteps=False, final="zero",
                      round_karras_t=True)
DDIM = ScheduleKind("ddim", "leading", n_plus_one=False, integer_timesteps=True, final="ddim")
DDPM = ScheduleKind("ddpm", "leading", n_plus_one=False, integer_timesteps=True, final="zero")
DPM = ScheduleKind("dpm", "linspace", n_plus_one=True, integer_timesteps=True, final="zero",
                   karras_range="train", round_karras_t=True)
DPM_SINGLESTEP = ScheduleKind("dpm-singlestep", "linspace", n_plus_one=True, integer_timesteps=True, final="zero",
                              karras_range="train", round_karras_t=True, fixed_spacing=True)
DEIS = ScheduleKind("deis", "linspace", n_plus_one=True, integer_timesteps=True, final="sigma_min",
                    karras_range="train", round_karras_t=True)


@dataclass(frozen=True)
class SamplerSpec:
    name: str  # what users pick, e.g. "DPM++ 2M"
    fn: Callable  # sample_xxx(denoise, x, schedule, *, generator=None, on_step=None) -> x
    supports_karras: bool
    order: int  # UNet calls per step (Heun/DPM2: 2); the progress total is still len(schedule)
    is_stochastic: bool  # draws noise from the generator during sampling
    schedule: ScheduleKind


_SPECS = [
    SamplerSpec("Euler", euler.sample_euler, True, 1, False, K_DISCRETE),
    SamplerSpec("Euler a", euler.sample_euler_ancestral, True, 1, True, K_DISCRETE),
    SamplerSpec("Heun", euler.sample_heun, True, 2, False, K_DISCRETE),
    SamplerSpec("LMS", euler.sample_lms, True, 1, False, K_DISCRETE),
    SamplerSpec("DPM2", dpm2.sample_dpm_2, True, 2, False, K_DPM2),
    SamplerSpec("DPM2 a", dpm2.sample_dpm_2_ancestral, True, 2, True, K_DPM2),
    SamplerSpec("DDIM", ddim.sample_ddim, False, 1, False, DDIM),
    SamplerSpec("DDPM", ddim.sample_ddpm, False, 1, True, DDPM),
    SamplerSpec("PNDM", ddim.sample_plms, False, 1, False, DDIM),
    SamplerSpec("DPM++ 2M", dpmpp.sample_dpmpp_2m, True, 1, False, DPM),
    SamplerSpec("DPM++ 2M SDE", dpmpp.sample_dpmpp_2m_sde, True, 1, True, DPM),
    SamplerSpec("DPM++ 2S", dpmpp.sample_dpmpp_2s, True, 1, False, DPM_SINGLESTEP),
    SamplerSpec("UniPC", unipc.sample_unipc, True, 1, False, DPM),
    SamplerSpec("DEIS", deis.sample_deis, True, 1, False, DEIS),
]
SAMPLERS: dict[str, SamplerSpec] = {spec.name: spec for spec in _SPECS}


def make_schedule(config: SchedulerConfig, sampler_name: str, steps: int, *, use_karras: bool = False) -> Schedule:
    """The schedule `sampler_name` runs on for `steps` steps, configured from the checkpoint's scheduler config."""
    try:
        spec = SAMPLERS[sampler_name]
    except KeyError:
        raise ValueError(f"unknown sampler {sampler_name!r}; known: {', '.join(SAMPLERS)}") from None
    if use_karras and not spec.supports_karras:
        raise ValueError(f"sampler {sampler_name!r} has no Karras sigma schedule")
    return build_schedule(config, spec.schedule, steps, use_karras=use_karras)
