"""`EngineSettings`: everything one ModelManager + Service is built from (`sd2_app.api.engine.build_service`),
and the parts of the build that need no torch (the registry, the Service's options, `ready`).

Plain values: app.py (`sd2_app.webapp`), the CLI (`sd2_app.cli`) and a Ray Serve replica (`sd2_app.serve.replica`)
each turn their own flags or config into one of these. No field has a default, so each of them says every
setting, and a new one cannot be forgotten by one of them. app.py's front end to a Serve deployment, which holds
no models and imports no torch, makes its Service from them with this module alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sd2_app.api import batching, tasks
from sd2_app.api.checks import Limits
from sd2_app.checkpoints.catalog import REGISTRY, CheckpointSpec, apply_overrides, parse_assignments
from sd2_app.checkpoints.files import CheckpointFiles
from sd2_app.loading.embeddings import EmbeddingLibrary
from sd2_app.loading.loras import LoraLibrary
from sd2_app.prompt_styles import load_styles

if TYPE_CHECKING:
    from sd2_app.api.service import Service


@dataclass(frozen=True, kw_only=True)
class EngineSettings:
    """One ModelManager and the Service over it."""

    # The ModelManager: where and how it computes.
    device: str | None  # "cuda", "cuda:1", "cpu"; None: cuda when available, else cpu
    dtype: str | None  # a --dtype name (sd2_app.compute_flags.DTYPES); None: float16 on CUDA, float32 on CPU
    speed: str  # a --speed mode (sd2_app.compute_flags.SPEED_MODES)
    zerogpu: bool  # on ZeroGPU the speed mode means the per-call switches (sd2_app.accel.per_call.options_for_host)
    # The ModelManager: which checkpoints it knows and loads at start.
    repos: tuple[str, ...]  # KEY=REPO[,REPO] overrides (--repo)
    revisions: tuple[str, ...]  # KEY=REV pins (--revision)
    tiny: bool  # tiny random-weight checkpoints instead (sd2_app.testing.tiny)
    cache_dir: Path | None  # tiny repos and file hashes; None: $SD2APP_CACHE (sd2_app.manager.default_cache_dir)
    preload: tuple[str, ...]  # checkpoint keys loaded before the first job
    allowed_repos: tuple[str, ...] | None  # Hub repos users may pick; None: $SD2APP_ALLOWED_REPOS (allowlist.py)
    checkpoints_dir: str | Path | None  # single-file checkpoints (sd2_app/checkpoints/files.py); None: none
    # The Service: what it accepts, how it keeps results, how its jobs meet the GPU.
    limits: Limits
    outputs_dir: str | Path | None  # None: results are not saved
    keep_outputs_days: float | None  # saved results older than this are deleted; None: kept
    watermark: bool  # the invisible watermark in every kept result
    save_in_background: bool  # results written on a writer thread after the request returns
    history_size: int  # history entries each owner keeps
    embeddings_dir: str | Path  # textual-inversion embeddings (.safetensors)
    lora_dir: str | Path  # LoRAs (.safetensors, A1111's layout)
    styles_file: str | Path | None  # the host's prompt styles (A1111's styles.csv, sd2_app.prompt_styles); None: none
    batch_users: bool  # batching across users at the GPU gate (sd2_app.api.batching)
    # Import every pipeline now, in the building thread (sd2_app.api.tasks.import_pipelines): for a Service whose
    # jobs (or token counts) start on several threads, where lazy imports could meet in Python's import locks.
    import_pipelines: bool


def registry_of(settings: EngineSettings) -> dict[str, CheckpointSpec]:
    """The checkpoint registry with the environment's overrides, then `settings.repos` and `.revisions`."""
    return apply_overrides(repos=parse_assignments(list(settings.repos)),
                           revisions=parse_assignments(list(settings.revisions)))


def service_options(settings: EngineSettings) -> dict[str, Any]:
    """The Service's keyword arguments for what it accepts and how it keeps results (not where jobs run)."""
    return dict(allowed_repos=settings.allowed_repos,
                checkpoint_files=CheckpointFiles.scan(settings.checkpoints_dir, REGISTRY),
                limits=settings.limits, outputs_dir=settings.outputs_dir,
                keep_outputs_days=settings.keep_outputs_days, watermark=settings.watermark,
                save_in_background=settings.save_in_background, history_size=settings.history_size,
                embeddings=EmbeddingLibrary.scan(settings.embeddings_dir), loras=LoraLibrary.scan(settings.lora_dir),
                styles=load_styles(settings.styles_file))


def ready(service: Service, settings: EngineSettings) -> Service:
    """`service` made ready to take jobs, as `settings` say: batching on (before any UI reads the queue's size),
    the pipelines imported (they import torch). For one `engine.build_service` made, or app.py's Serve front end."""
    if settings.batch_users:
        batching.enable(service)
    if settings.import_pipelines:
        tasks.import_pipelines()
    return service
