"""Repo id or folder -> modules on a device and dtype: Hub resolution, strict safetensors loading, one loader per component.

The package's names below are read from their modules on first use (module `__getattr__`, PEP 562): importing a
torch-free module of the package (`hub`, `tokenizer`, `repo_attempts`) does not import `parts`, and with it
torch, as a front end that holds no models needs (sd2_app/serve/backend.py).
"""

from __future__ import annotations

from typing import Any

_FROM_PARTS = ("load_depth_estimator", "load_scheduler_config", "load_text_encoder", "load_unet", "load_vae",
               "read_model_index")

__all__ = [*_FROM_PARTS, "load_tokenizer", "resolve_repo"]


def __getattr__(name: str) -> Any:
    if name in _FROM_PARTS:
        from sd2_app.loading import parts  # torch: only when a network loader is asked for

        return getattr(parts, name)
    if name == "load_tokenizer":
        from sd2_app.loading.tokenizer import load_tokenizer

        return load_tokenizer
    if name == "resolve_repo":
        from sd2_app.loading.hub import resolve_repo

        return resolve_repo
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
