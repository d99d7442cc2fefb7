"""What one Serve replica holds: its ModelManager and Service (sd2_app/serve/deployment.py's `SD2Worker` makes
them in the replica's process)."""

from __future__ import annotations

import torch

from sd2_app.accel import options_for
from sd2_app.api import batching
from sd2_app.api.service import Service
from sd2_app.checkpoints.catalog import apply_overrides, parse_assignments
from sd2_app.loading.embeddings import EmbeddingLibrary
from sd2_app.manager import ModelManager
from sd2_app.serve.config import ServeConfig


def build_service(config: ServeConfig) -> Service:
    """One replica's ModelManager + Service (with a `Batcher` at its GPU gate when `config.batch_users`)."""
    registry = apply_overrides(repos=parse_assignments(list(config.repos)), revisions={})
    dtype = getattr(torch, config.dtype) if config.dtype else None
    manager = ModelManager(config.device, dtype, registry=registry, tiny=config.tiny, preload=config.preload,
                           accel=options_for(config.speed))
    # Nothing is saved or marked here: the front end's Service watermarks and saves what comes back.
    service = Service(manager, outputs_dir=None, history_size=1,
                      embeddings=EmbeddingLibrary.scan(config.embeddings_dir))
    if config.batch_users:
        batching.enable(service)
    return service
