"""The one place a ModelManager and its Service are put together, from `EngineSettings`.

app.py (`sd2_app.webapp`), the CLI (`sd2_app.cli`) and each Ray Serve replica (`sd2_app.serve.replica`) describe
what they need as `EngineSettings` (sd2_app/api/engine_settings.py) and call `build_service`; app.py's front end
to a Serve deployment makes its Service from the same settings without this module (it holds no models).

This module imports torch and the manager: a caller imports it only when it runs (after `spaces` on a ZeroGPU
Space, which must come before torch).

It lives in `api/`, beside the Service it builds, rather than in `manager/`: the manager knows nothing of the
Service, the batcher or the embeddings, and stays so.
"""

from __future__ import annotations

import torch

from sd2_app.accel.per_call import options_for_host
from sd2_app.api.engine_settings import EngineSettings, ready, registry_of, service_options
from sd2_app.api.service import Service
from sd2_app.manager import ModelManager


def build_manager(settings: EngineSettings) -> ModelManager:
    dtype = getattr(torch, settings.dtype) if settings.dtype else None
    return ModelManager(settings.device, dtype, registry=registry_of(settings), tiny=settings.tiny,
                        cache_dir=settings.cache_dir, preload=settings.preload,
                        accel=options_for_host(settings.speed, zerogpu=settings.zerogpu))


def build_service(settings: EngineSettings) -> Service:
    """A ModelManager and the Service over it, as `settings` say."""
    return ready(Service(build_manager(settings), **service_options(settings)), settings)
