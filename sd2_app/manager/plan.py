"""What one checkpoint folder is made of: which parts are shareable modules, which files define them.

The manager asks this module for a `Plan` (identities and size estimates, no weights read), makes room,
then calls `load_part` for the parts it does not hold yet and `load_extras` for the small per-checkpoint
pieces (tokenizer, scheduler configs, model_index values).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from sd2_app.errors import LoadError
from sd2_app.manager.identity import HashCache, component_identity
from sd2_app.manager.memory import safetensors_bytes
from sd2_app.checkpoints.catalog import CheckpointSpec
from sd2_app.samplers.schedules import SchedulerConfig

if TYPE_CHECKING:
    from transformers import CLIPTokenizer, DPTForDepthEstimation, DPTImageProcessor

    # what Components receives for a part: the module, or (model, processor) for depth
    PartValue = nn.Module | tuple[DPTForDepthEstimation, DPTImageProcessor]

# Modules that live on the device, may be shared between checkpoints, and are loaded in this order.
MODULE_PARTS = ("text_encoder", "vae", "unet", "depth_estimator")
DEFAULT_MAX_NOISE_LEVEL = 350  # x4 upscaler, when model_index.json lacks it


def subfolders(spec: CheckpointSpec) -> list[str]:
    """The repo subfolders a checkpoint needs, from the tasks it serves."""
    names = ["unet", "vae", "text_encoder", "tokenizer", "scheduler"]
    if "upscale" in spec.tasks:
        names.append("low_res_scheduler")
    if "depth" in spec.tasks:
        names += ["depth_estimator", "feature_extractor"]
    return names


@dataclass(frozen=True)
class PartPlan:
    """One shareable module of a checkpoint, known by content before it is loaded."""

    name: str  # "unet", "vae", "text_encoder", "depth_estimator"
    identity: str  # sha256 over its defining files' hashes
    files: tuple[str, ...]  # repo-relative paths that define it
    estimate: int  # bytes once loaded in the manager's dtype (from the safetensors header)


@dataclass(frozen=True)
class Plan:
    repo: str  # what the registry listed (repo id or folder)
    folder: Path  # local folder in Hub layout
    parts: tuple[PartPlan, ...] = field(default_factory=tuple)
    model_hash: str = ""  # a single-file checkpoint's A1111 short hash (its sha256's first 10 hex digits); "" else


def _listing(folder: Path) -> list[str]:
    return [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]


def make_plan(
    spec: CheckpointSpec,
    repo: str,
    folder: Path,
    dtype: torch.dtype,
    hashes: HashCache,
    *,
    is_hub: bool,
) -> Plan:
    """Identify every module part of the checkpoint in `folder` (hashes files, reads headers only).

    Raises LoadError for missing weights or a weight file whose header is not safetensors.
    """
    from sd2_app.loading.hub import choose_weights

    listing = _listing(folder)
    wanted = [name for name in MODULE_PARTS if name in subfolders(spec)]
    parts = []
    for name in wanted:
        weights = choose_weights(listing, name, repo)
        files = [f"{name}/config.json", weights]
        if name == "depth_estimator":
            files.append("feature_extractor/preprocessor_config.json")  # the processor travels with the model
        identity = component_identity(
            folder, files, hashes, repo=repo if is_hub else None, revision=spec.revision if is_hub else None
        )
        try:
            estimate = safetensors_bytes(folder / weights, dtype)
        except ValueError as e:
            raise LoadError(repo, weights, f"corrupt: {e}") from e
        parts.append(PartPlan(name, identity, tuple(files), estimate))
    return Plan(repo, folder, tuple(parts))


def load_part(name: str, folder: Path, device: torch.device, dtype: torch.dtype) -> tuple[nn.Module, PartValue]:
    """Load one module part onto `device`: returns (the module to move and measure, the value to hand out)."""
    from sd2_app import loading

    if name == "unet":
        module = loading.load_unet(folder, device, dtype)
        return module, module
    if name == "vae":
        module = loading.load_vae(folder, device, dtype)
        return module, module
    if name == "text_encoder":
        module = loading.load_text_encoder(folder, device, dtype)
        return module, module
    if name == "depth_estimator":
        model, processor = loading.load_depth_estimator(folder, device, dtype)
        return model, (model, processor)
    raise ValueError(f"unknown part {name!r}")


@dataclass(frozen=True)
class Extras:
    """The small host-side pieces of one checkpoint (never shared, never moved)."""

    tokenizer: CLIPTokenizer
    scheduler_config: SchedulerConfig
    low_res_scheduler_config: SchedulerConfig | None = None  # x4 upscaler only
    max_noise_level: int = DEFAULT_MAX_NOISE_LEVEL


def load_extras(spec: CheckpointSpec, folder: Path) -> Extras:
    from sd2_app import loading

    low_res = None
    if "low_res_scheduler" in subfolders(spec):
        low_res = loading.load_scheduler_config(folder, subfolder="low_res_scheduler")
    index = loading.read_model_index(folder)
    return Extras(
        tokenizer=loading.load_tokenizer(folder),
        scheduler_config=loading.load_scheduler_config(folder),
        low_res_scheduler_config=low_res,
        max_noise_level=int(index.get("max_noise_level", DEFAULT_MAX_NOISE_LEVEL)),
    )
