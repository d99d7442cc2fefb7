"""Repo id or folder -> modules on a device and dtype: Hub resolution, strict safetensors loading, one loader per component.

The package's names below are read from their modules on first use (module `__getattr__`, PEP 562): importing a
torch-free module of the package (`hub`, `tokenizer`, `repo_attempts`) does not import `parts`, and with it
torch, as a front end that holds no models needs (sd2_app/serve/backend.py).
"""

from __future__ import annotations

import importlib
from typing import Any

# Each exported name and the module of this package that defines it.
_HOMES = {
    **dict.fromkeys(("load_depth_estimator", "load_scheduler_config", "load_text_encoder", "load_unet", "load_vae",
                     "read_model_index"), "parts"),
    "load_tokenizer": "tokenizer",
    "resolve_repo": "hub",
}

__all__ = list(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
