"""What one Serve replica holds: its ModelManager and Service (sd2_app/serve/deployment.py's `SD2Worker` makes
them in the replica's process)."""

from __future__ import annotations

from sd2_app.api.checks import Limits
from sd2_app.api.engine import build_service as build_engine
from sd2_app.api.engine_settings import EngineSettings
from sd2_app.api.service import Service
from sd2_app.errors import InvalidRequest
from sd2_app.serve.config import ServeConfig, process_sources

ENVIRONMENT_SOURCES = ("serve replica: {names} in its environment would choose checkpoints for this replica only "
                       "(not the front end's tokenizers, not the other replicas): set repos, revisions or "
                       "allowed_repos in the deployment's settings (deploy/serve.toml) instead")


def engine_settings(config: ServeConfig) -> EngineSettings:
    """A replica's ModelManager + Service. It runs requests the front end validated (`Service.produce`, no
    `validate`, no keeping): the front end's Service checks the limits, watermarks, saves and keeps history.
    Its checkpoints are the deployment's (`ServeConfig.checkpoint_sources`), never its environment's."""
    variables = process_sources()
    if variables:
        raise InvalidRequest(ENVIRONMENT_SOURCES.format(names=", ".join(variables)))
    return EngineSettings(
        device=config.device, dtype=config.dtype, speed=config.speed, zerogpu=False,  # Ray nodes are no Spaces
        **config.checkpoint_sources(),  # the front end's registry comes from the same (sd2_app.webapp)
        cache_dir=None, preload=config.preload,
        limits=Limits(), outputs_dir=None, keep_outputs_days=None, watermark=False, save_in_background=False,
        history_size=1, embeddings_dir=config.embeddings_dir, lora_dir=config.lora_dir,
        styles_file=None,  # the front end applies styles
        batch_users=config.batch_users,
        # its jobs start on `max_ongoing_requests` threads (SD2Worker's executor)
        import_pipelines=True,
    )


def build_service(config: ServeConfig) -> Service:
    """One replica's ModelManager + Service (with a `Batcher` at its GPU gate when `config.batch_users`)."""
    return build_engine(engine_settings(config))
