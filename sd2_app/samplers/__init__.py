"""Samplers in k-diffusion's sigma space: schedules, the eps/v denoiser wrapper and one module per family.

Contract (docs/DESIGN.md "Samplers"): `schedule = make_schedule(config, name, steps, schedule=...)`,
`denoise = make_denoiser(model_fn, config.prediction_type)`, then
`SAMPLERS[name].fn(denoise, x, schedule, generator=g, on_step=cb)`; the final latent is
`x / sqrt(1 + schedule.sigmas[-1] ** 2)`.

The package's names below are read from their modules on first use (module `__getattr__`, PEP 562): the sampler
table (`registry`) imports no torch, so the catalog of sampler names serves a front end that holds no models.
"""

from __future__ import annotations

import importlib
from typing import Any

# Each exported name and the module of this package that defines it.
_HOMES = {
    "Denoiser": "base", "StepFn": "base",
    "make_denoiser": "denoiser",
    "SAMPLERS": "registry", "SamplerSpec": "registry",
    **dict.fromkeys(("Schedule", "SchedulerConfig", "add_noise", "keep_last", "make_schedule", "start_at"),
                   "schedules"),
}

__all__ = list(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
