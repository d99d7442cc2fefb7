"""Repo id or folder -> modules on a device and dtype: Hub resolution, strict safetensors loading, one loader per component."""

from sd2_app.loading.parts import (
    load_depth_estimator,
    load_scheduler_config,
    load_text_encoder,
    load_tokenizer,
    load_unet,
    load_vae,
    read_model_index,
)
from sd2_app.loading.hub import resolve_repo

__all__ = [
    "load_depth_estimator",
    "load_scheduler_config",
    "load_text_encoder",
    "load_tokenizer",
    "load_unet",
    "load_vae",
    "read_model_index",
    "resolve_repo",
]
