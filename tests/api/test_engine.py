"""The one engine builder (sd2_app/api/engine.py): app.py, the CLI and a Serve replica each make their ModelManager
and Service through `build_service`, with the settings each states (`engine_settings`), and get what they said."""

from __future__ import annotations

import subprocess
import sys
import threading
from dataclasses import MISSING, fields
from pathlib import Path

import pytest
import torch

from sd2_app.api import engine, tasks
from sd2_app.api.checks import Limits
from sd2_app.api.cost import DEFAULT_MAX_JOB_COST
from sd2_app.api.engine_settings import EngineSettings
from tests.reliability_support import linked_tiny_cache

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[EngineSettings]:
    """The settings of every manager `engine.build_service` makes while the test runs (tiny repos in tmp_path)."""
    made: list[EngineSettings] = []
    build_manager = engine.build_manager

    def recording(settings: EngineSettings):  # -> ModelManager
        made.append(settings)
        return build_manager(settings)

    monkeypatch.setattr(engine, "build_manager", recording)
    linked_tiny_cache(monkeypatch, tmp_path)
    return made


def test_the_app_builds_its_service_through_the_engine(built: list[EngineSettings], tmp_path: Path) -> None:
    import app
    from sd2_app import webapp

    args = app.parse_args(["--tiny", "--device", "cpu", "--dtype", "float32", "--outputs", str(tmp_path / "out"),
                           "--no-watermark", "--max-side", "768", "--max-job-cost", "0", "--keep-outputs-days", "2",
                           "--batch-users"])
    service = webapp.local_service(webapp.engine_settings(args))  # what webapp.build makes without --serve
    [settings] = built
    assert (settings.speed, settings.zerogpu, settings.preload, settings.cache_dir) == ("default", False, (), None)
    assert (service.manager.device, service.manager.dtype) == (torch.device("cpu"), torch.float32)
    assert service.limits == Limits(max_side=768, max_job_cost=None)  # --max-job-cost 0: no cap
    assert service.keeper.outputs_dir == tmp_path / "out" and service.keeper.keep_days == 2.0
    assert service.keeper.watermark is False and service.keeper.history_size == 50
    assert settings.save_in_background and service.keeper._writer._thread is not None  # a writer thread
    assert service.batcher is not None and settings.import_pipelines
    service.keeper.flush(5)
    # The --serve front end runs no job here: the same Service settings, no pipelines (they import torch); its
    # checkpoint sources are the deployment's (tests/serve/test_serve_sources.py).
    serving = app.parse_args(["--serve", "auto", "--no-watermark", "--max-side", "768", "--tiny"])
    config = webapp.serve_config(serving)
    front = webapp.engine_settings(serving, config)
    assert not front.import_pipelines and not front.batch_users
    assert (front.repos, front.revisions, front.tiny, front.allowed_repos) == ((), (), True, ())
    assert config is not None and config.tiny  # --tiny reaches the front end as the deployment's setting
    assert settings.allowed_repos is None  # without --serve: $SD2APP_ALLOWED_REPOS
    assert (front.watermark, front.limits.max_side, front.save_in_background) == (False, 768, True)


def test_the_cli_builds_its_service_through_the_engine(built: list[EngineSettings], tmp_path: Path) -> None:
    from sd2_app import cli
    from sd2_app.__main__ import build_parser

    args = build_parser().parse_args(["txt2img", "--prompt", "x", "--tiny", "--device", "cpu", "--speed", "eager",
                                      "--model-dir", str(tmp_path), "--embeddings-dir", str(tmp_path / "none")])
    service = cli.make_service(args)
    [settings] = built
    assert (settings.speed, settings.zerogpu, settings.cache_dir, settings.preload) == ("eager", False, tmp_path, ())
    assert (service.manager.device, service.manager.dtype) == (torch.device("cpu"), torch.float32)
    assert service.limits == Limits() and service.limits.max_job_cost == DEFAULT_MAX_JOB_COST  # the app's defaults
    assert service.keeper.outputs_dir is None  # the CLI writes its own PNGs to --out
    assert service.keeper.watermark is True and not settings.save_in_background and service.batcher is None
    assert not settings.import_pipelines  # one job, on this thread


def test_a_replica_builds_its_service_through_the_engine(built: list[EngineSettings]) -> None:
    from sd2_app.api.batching import MAX_IMAGES
    from sd2_app.serve.config import load_config
    from sd2_app.serve.replica import build_service

    config = load_config(None, tiny=True, device="cpu", dtype="float32", speed="eager", batch_users=True,
                         max_ongoing_requests=MAX_IMAGES, repos=("sd21-base=some/mirror",))
    service = build_service(config)
    [settings] = built
    assert (settings.speed, settings.zerogpu, settings.repos, settings.revisions) == (
        "eager", False, ("sd21-base=some/mirror",), ())
    assert (service.manager.device, service.manager.dtype) == (torch.device("cpu"), torch.float32)
    # It runs what the front end validated and keeps nothing: no saving, no mark, a one-entry history.
    assert service.keeper.outputs_dir is None and service.keeper.watermark is False
    assert service.keeper.history_size == 1 and service.limits == Limits()
    assert service.batcher is not None and service.concurrency == MAX_IMAGES


def test_a_replica_imports_the_pipelines_in_its_building_thread(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    """A replica starts its jobs on `max_ongoing_requests` threads: lazily, the first jobs' pipeline imports could
    meet in Python's import locks, which app.py avoids by importing them at start (`tasks.import_pipelines`)."""
    from sd2_app.serve.config import load_config
    from sd2_app.serve.replica import build_service

    threads: list[threading.Thread] = []
    monkeypatch.setattr(tasks, "import_pipelines", lambda: threads.append(threading.current_thread()))
    linked_tiny_cache(monkeypatch, tmp_path)
    build_service(load_config(None, tiny=True, device="cpu", max_ongoing_requests=4))
    assert threads == [threading.current_thread()]


def test_every_setting_is_stated_by_each_caller() -> None:
    """No defaults: a setting added later must be stated by app.py, the CLI and the replica alike."""
    assert all(f.default is MISSING and f.default_factory is MISSING for f in fields(EngineSettings))
    with pytest.raises(TypeError, match="missing"):
        EngineSettings(device=None)  # type: ignore[call-arg]


def test_importing_the_web_app_leaves_torch_for_its_build() -> None:
    """On a ZeroGPU Space `spaces` must be imported before torch: `webapp.build` does it first, so importing the
    web app (and the settings) must not import torch yet."""
    probe = ("import sys\nfrom sd2_app import webapp\nfrom sd2_app.api import engine_settings\n"
             "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "False"
