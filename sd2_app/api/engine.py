"""The one place a ModelManager and its Service are put together, from `EngineSettings`.

app.py (`sd2_app.webapp.build`), the CLI (`sd2_app.cli`) and each Ray Serve replica (`sd2_app.serve.replica`)
describe what they need as `EngineSettings` and call `build_service`; app.py's front end to a Serve deployment
makes its Service from the same settings (`registry_of`, `service_options`, `ready`).

This module imports torch and the manager: a caller imports it only when it runs (after `spaces` on a ZeroGPU
Space, which must come before torch).

It lives in `api/`, beside the Service it builds, rather than in `manager/`: the manager knows nothing of the
Service, the batcher or the embeddings, and stays so.
"""

from __future__ import annotations

from typing import Any

import torch

from sd2_app.accel.per_call import options_for_host
from sd2_app.api import batching, tasks
from sd2_app.api.engine_settings import EngineSettings
from sd2_app.api.service import Service
from sd2_app.checkpoints.catalog import CheckpointSpec, apply_overrides, parse_assignments
from sd2_app.loading.embeddings import EmbeddingLibrary
from sd2_app.manager import ModelManager


def registry_of(settings: EngineSettings) -> dict[str, CheckpointSpec]:
    """The checkpoint registry with the environment's overrides, then `settings.repos` and `.revisions`."""
    return apply_overrides(repos=parse_assignments(list(settings.repos)),
                           revisions=parse_assignments(list(settings.revisions)))


def service_options(settings: EngineSettings) -> dict[str, Any]:
    """The Service's keyword arguments for what it accepts and how it keeps results (not where jobs run)."""
    return dict(limits=settings.limits, outputs_dir=settings.outputs_dir, keep_outputs_days=settings.keep_outputs_days,
                watermark=settings.watermark, save_in_background=settings.save_in_background,
                history_size=settings.history_size, embeddings=EmbeddingLibrary.scan(settings.embeddings_dir))


def build_manager(settings: EngineSettings) -> ModelManager:
    dtype = getattr(torch, settings.dtype) if settings.dtype else None
    return ModelManager(settings.device, dtype, registry=registry_of(settings), tiny=settings.tiny,
                        cache_dir=settings.cache_dir, preload=settings.preload,
                        accel=options_for_host(settings.speed, zerogpu=settings.zerogpu))


def build_service(settings: EngineSettings) -> Service:
    """A ModelManager and the Service over it, as `settings` say."""
    return ready(Service(build_manager(settings), **service_options(settings)), settings)


def ready(service: Service, settings: EngineSettings) -> Service:
    """`service` made ready to take jobs, as `settings` say: batching on (before any UI reads the queue's size),
    the pipelines imported. For one `build_service` made, or app.py's front end to a Serve deployment."""
    if settings.batch_users:
        batching.enable(service)
    if settings.import_pipelines:
        tasks.import_pipelines()
    return service
