"""A local Ray cluster with the Serve deployment on tiny checkpoints (tests/serve/test_serve*.py)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def local_serve(tmp_path_factory: pytest.TempPathFactory, **settings: Any) -> Iterator[tuple[Any, Any]]:
    """(deployment handle, ServeConfig) of `load_config(None, tiny=True, device="cpu", **settings)` deployed on a
    Ray instance of this process's own; Serve and Ray are shut down after."""
    import ray
    from ray import serve

    from sd2_app.serve.config import load_config
    from sd2_app.serve.deployment import build_app
    from tests.reliability_support import link_tiny_cache

    cache = link_tiny_cache(tmp_path_factory.mktemp("serve-cache"))
    env = {"SD2APP_CACHE": str(cache), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    # address="local": a cluster of our own, never one another process on this machine started
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": env})
    config = load_config(None, tiny=True, device="cpu", **settings)
    try:
        handle = serve.run(build_app(config), name=config.app_name, route_prefix=None)
        yield handle, config
    finally:
        serve.shutdown()
        ray.shutdown()


def front_service(served: tuple[Any, Any], **options: Any) -> Any:  # -> Service
    """The front end's Service over `local_serve`'s deployment: validation here, jobs on the replicas."""
    from sd2_app.checkpoints.catalog import REGISTRY
    from sd2_app.serve.backend import remote_service

    handle, config = served
    return remote_service(handle, REGISTRY, config, **{"outputs_dir": None, "allowed_repos": (), **options})
