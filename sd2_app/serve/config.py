"""The Serve deployment's settings, read from one TOML file (deploy/serve.toml) with documented defaults.

Plain Python, no Ray: the front end reads the same file to size its queue. The TOML parser is the standard
library's `tomllib` (Python 3.11+); on Python 3.10 (ZeroGPU Spaces) it is the `tomli` package it came from,
which requirements-serve.txt installs there. It is imported only when a file is read, so app.py starts on 3.10
without it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from sd2_app.api.batching import MAX_IMAGES
from sd2_app.checkpoints.allowlist import ENV_ALLOWED_REPOS, allowed_repos, is_repo_id
from sd2_app.checkpoints.catalog import ENV_REPO_PREFIX, ENV_REVISION_PREFIX, parse_assignments
from sd2_app.compute_flags import DTYPES, SPEED_MODES
from sd2_app.errors import InvalidRequest


@dataclass(frozen=True)
class ServeConfig:
    """One replica = one ModelManager + Service on `num_gpus` GPUs; Serve routes and scales the replicas.

    Autoscaling follows Ray Serve's `autoscaling_config`: between `min_replicas` and `max_replicas`, aiming at
    `target_ongoing_requests` per replica. A replica runs `max_ongoing_requests` jobs at once (1: the GPU runs
    one job at a time, as the local app does) and Serve queues at most `max_queued_requests` more per caller.

    `batch_users` puts a `Batcher` at each replica's GPU gate (sd2_app/api/batching.py, as app.py's --batch-users
    does locally): requests that reach one replica together run as one UNet batch. A batch holds up to
    `MAX_IMAGES` requests, and a replica only has the `max_ongoing_requests` it was given to batch, so `_check`
    asks for at least that many (Ray Serve warns likewise when `@serve.batch`'s max_batch_size exceeds
    max_ongoing_requests: ray/serve/batching.py, `_warn_if_max_batch_size_exceeds_max_ongoing_requests`).

    `repos`, `revisions`, `tiny` and `allowed_repos` are the deployment's checkpoint sources, decided here only:
    the front end (`app.py --serve`, whose tokenizers come from them) and every replica (whose weights do) build
    their registries from them (`checkpoint_sources`), so the two cannot disagree.
    """

    app_name: str = "sd2"
    min_replicas: int = 1
    max_replicas: int = 1
    initial_replicas: int | None = None  # None: min_replicas
    target_ongoing_requests: float = 1.0
    max_ongoing_requests: int = 1
    max_queued_requests: int = 16
    num_gpus: float = 1.0  # per replica; fractions share a GPU (each replica then loads its own weights)
    num_cpus: float = 1.0
    max_models_per_replica: int = 2  # checkpoints a replica keeps loaded (Serve's multiplexing)
    device: str | None = None  # None: cuda when the replica has a GPU, else cpu
    dtype: str | None = None  # None: float16 on CUDA, float32 on CPU
    speed: str = "default"
    tiny: bool = False  # tiny random-weight checkpoints (tests, `--tiny`)
    preload: tuple[str, ...] = ()
    repos: tuple[str, ...] = ()  # KEY=REPO[,REPO] overrides, as app.py's --repo
    revisions: tuple[str, ...] = ()  # KEY=REV pins, as app.py's --revision
    allowed_repos: tuple[str, ...] = ()  # owner/name Hub repos users may pick, as $SD2APP_ALLOWED_REPOS
    checkpoints_dir: str = "checkpoints"  # single-file checkpoints, as app.py's --checkpoints-dir
    embeddings_dir: str = "embeddings"  # textual-inversion embeddings, as app.py's --embeddings-dir
    lora_dir: str = "loras"  # LoRAs, as app.py's --lora-dir
    batch_users: bool = False  # batching across users on each replica (needs max_ongoing_requests >= MAX_IMAGES)

    def checkpoint_sources(self) -> dict[str, Any]:
        """The `EngineSettings` fields (sd2_app/api/engine_settings.py) these settings decide for the front end
        and for each replica alike: which checkpoints exist and where their files come from."""
        return {"repos": self.repos, "revisions": self.revisions, "tiny": self.tiny,
                "allowed_repos": self.allowed_repos, "checkpoints_dir": self.checkpoints_dir}

    @property
    def total_concurrency(self) -> int:
        """Jobs the whole deployment runs at once at its largest: the front end's GPU-queue concurrency."""
        return max(1, self.max_replicas * self.max_ongoing_requests)

    def deployment_options(self) -> dict[str, Any]:
        """Keyword arguments of Ray Serve's `Deployment.options` for these settings."""
        options: dict[str, Any] = {
            "ray_actor_options": {"num_gpus": self.num_gpus, "num_cpus": self.num_cpus},
            "max_ongoing_requests": self.max_ongoing_requests,
            "max_queued_requests": self.max_queued_requests,
        }
        if self.min_replicas == self.max_replicas:
            options["num_replicas"] = self.min_replicas
        else:
            options["autoscaling_config"] = {
                "min_replicas": self.min_replicas,
                "max_replicas": self.max_replicas,
                "initial_replicas": self.initial_replicas or self.min_replicas,
                "target_ongoing_requests": self.target_ongoing_requests,
            }
        return options


def process_sources(env: Mapping[str, str] | None = None) -> list[str]:
    """The environment variables set here that choose checkpoint sources for the one process reading them
    (`SD2APP_REPO_<KEY>`, `SD2APP_REVISION_<KEY>`: sd2_app/checkpoints/catalog.py, `apply_overrides`;
    `SD2APP_ALLOWED_REPOS`: sd2_app/checkpoints/allowlist.py). A Serve deployment takes its sources from its
    settings only, so the front end (app_flags) and each replica (serve/replica.py) refuse to start with them."""
    env = os.environ if env is None else env
    return sorted(name for name, value in env.items() if name.startswith(ENV_REVISION_PREFIX)  # "" unpins
                  or (name.startswith(ENV_REPO_PREFIX) and value.strip())  # "" is ignored there
                  or (name == ENV_ALLOWED_REPOS and allowed_repos(env)))


_LISTS = ("preload", "repos", "revisions", "allowed_repos")  # settings that are lists of strings


def _check(config: ServeConfig) -> ServeConfig:
    if not 1 <= config.min_replicas <= config.max_replicas:
        raise InvalidRequest("serve config: need 1 <= min_replicas <= max_replicas")
    if config.max_ongoing_requests < 1 or config.max_models_per_replica < 1 or config.max_queued_requests < 0:
        raise InvalidRequest("serve config: max_ongoing_requests and max_models_per_replica must be >= 1")
    if config.num_gpus < 0 or config.num_cpus <= 0:
        raise InvalidRequest("serve config: num_gpus must be >= 0 and num_cpus > 0")
    # app.py's --speed and --dtype choices: a wrong name is refused here, not in every replica's constructor
    if config.speed not in SPEED_MODES:
        raise InvalidRequest(f"serve config: speed must be one of {', '.join(SPEED_MODES)}, not {config.speed!r}")
    if config.dtype is not None and config.dtype not in DTYPES:
        raise InvalidRequest(f"serve config: dtype must be one of {', '.join(DTYPES)} or unset, not {config.dtype!r}")
    for name in ("repos", "revisions"):  # the syntax and the keys of app.py's --repo and --revision
        try:
            parse_assignments(getattr(config, name))
        except InvalidRequest as error:
            raise InvalidRequest(f"serve config: {name}: {error}") from None
    bad = [repo for repo in config.allowed_repos if not is_repo_id(repo)]
    if bad:
        raise InvalidRequest(f"serve config: allowed_repos takes owner/name Hub repo ids, not {bad[0]!r}")
    if config.batch_users and config.max_ongoing_requests < MAX_IMAGES:
        raise InvalidRequest(
            f"serve config: batch_users needs max_ongoing_requests >= {MAX_IMAGES} (a batch holds up to {MAX_IMAGES} "
            f"requests and a replica batches only the requests it runs at once; it has {config.max_ongoing_requests})"
        )
    return config


def _serve_table(path: Path) -> dict[str, Any]:
    """The `[serve]` table of a TOML file."""
    try:
        import tomllib  # novermin (the fallback below serves 3.10; tests/test_python_versions.py)
    except ModuleNotFoundError:  # Python 3.10: tomllib is the standard library's copy of tomli (PEP 680)
        import tomli as tomllib
    with open(path, "rb") as handle:
        table = tomllib.load(handle).get("serve", {})
    if not isinstance(table, dict):
        raise InvalidRequest(f"serve config {path}: [serve] must be a table")
    return table


def load_config(path: str | Path | None = None, **overrides: Any) -> ServeConfig:
    """Defaults, then the file's `[serve]` table (if a path is given), then `overrides` (e.g. tiny=True)."""
    known = {f.name for f in fields(ServeConfig)}
    values: dict[str, Any] = {}
    if path is not None:
        table = _serve_table(Path(path))
        unknown = sorted(set(table) - known)
        if unknown:
            raise InvalidRequest(f"serve config {path}: unknown setting(s) {', '.join(unknown)}")
        values.update(table)
    values.update({k: v for k, v in overrides.items() if v is not None})
    for name in _LISTS:
        if name in values:
            if isinstance(values[name], str) or not all(isinstance(item, str) for item in values[name]):
                raise InvalidRequest(f"serve config: {name} must be a list of strings, not {values[name]!r}")
            values[name] = tuple(values[name])
    return _check(replace(ServeConfig(), **values))
