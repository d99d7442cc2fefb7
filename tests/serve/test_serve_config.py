"""The Serve settings file and the deploy manifests, without starting Ray."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sd2_app.errors import InvalidRequest
from sd2_app.serve.config import ServeConfig, load_config

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_are_one_gpu_replica_running_one_job() -> None:
    config = load_config()
    assert config == ServeConfig()
    assert config.deployment_options() == {
        "ray_actor_options": {"num_gpus": 1.0, "num_cpus": 1.0},
        "max_ongoing_requests": 1,
        "max_queued_requests": 16,
        "num_replicas": 1,
    }
    assert config.total_concurrency == 1


def test_the_shipped_file_autoscales_from_one_to_four_replicas() -> None:
    config = load_config(ROOT / "deploy" / "serve.toml")
    options = config.deployment_options()
    assert "num_replicas" not in options
    assert options["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 4, "initial_replicas": 1,
                                             "target_ongoing_requests": 1.0}
    assert config.total_concurrency == 4  # the front end's GPU queue runs four jobs at once


def test_overrides_win_and_bad_settings_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "serve.toml"
    path.write_text("[serve]\nmax_replicas = 3\nnum_gpus = 0.5\n")
    assert load_config(path, tiny=True).tiny and load_config(path).num_gpus == 0.5
    path.write_text("[serve]\nmax_replica = 3\n")
    with pytest.raises(InvalidRequest, match="unknown setting\\(s\\) max_replica"):
        load_config(path)
    with pytest.raises(InvalidRequest, match="min_replicas <= max_replicas"):
        load_config(None, min_replicas=3, max_replicas=2)
    path.write_text('[serve]\ndtype = "fp16"\n')
    with pytest.raises(InvalidRequest) as refused:
        load_config(path)
    assert str(refused.value) == "serve config: dtype must be one of float16, bfloat16, float32 or unset, not 'fp16'"
    with pytest.raises(InvalidRequest) as refused:
        load_config(None, speed="fast")
    assert str(refused.value) == "serve config: speed must be one of default, compile, eager, not 'fast'"
    assert load_config(None, speed="eager", dtype="bfloat16").dtype == "bfloat16"
    path.write_text("serve = 3\n")
    with pytest.raises(InvalidRequest, match=r"serve\.toml: \[serve\] must be a table"):
        load_config(path)


def test_the_kuberay_manifest_matches_the_settings_and_the_code() -> None:
    yaml = pytest.importorskip("yaml")
    service, web, _ = yaml.safe_load_all((ROOT / "deploy" / "kuberay" / "rayservice.yaml").read_text())
    assert (service["apiVersion"], service["kind"]) == ("ray.io/v1", "RayService")
    (application,) = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"]
    module, name = application["import_path"].split(":")
    assert (module, name) == ("sd2_app.serve.deployment", "app_builder")
    config_path = Path(application["args"]["config"])
    assert config_path.relative_to("/home/ray/sd2-app") == Path("deploy/serve.toml")  # the image's layout
    config = load_config(ROOT / config_path.relative_to("/home/ray/sd2-app"))
    assert application["name"] == config.app_name
    cluster = service["spec"]["rayClusterConfig"]
    (gpus,) = cluster["workerGroupSpecs"]
    assert gpus["maxReplicas"] == config.max_replicas  # one GPU pod per replica at most
    assert gpus["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert cluster["rayVersion"] in (ROOT / "deploy" / "Dockerfile").read_text()
    command = web["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[command.index("--serve") + 1] == f"ray://{service['metadata']['name']}-head-svc:10001"


def test_the_app_builder_makes_the_deployment_from_the_file() -> None:
    pytest.importorskip("ray")
    from ray.serve import Application

    from sd2_app.serve.deployment import app_builder

    application = app_builder({"config": str(ROOT / "deploy" / "serve.toml"), "tiny": True})
    assert isinstance(application, Application)
    deployment = application._bound_deployment  # what serve.run would deploy
    config = deployment.init_args[0]
    assert config.tiny and config.max_replicas == 4
    assert deployment.ray_actor_options == {"num_gpus": 1.0, "num_cpus": 1.0}
    assert deployment.max_ongoing_requests == 1


def test_batch_users_needs_a_batch_worth_of_ongoing_requests(tmp_path: Path) -> None:
    assert load_config().batch_users is False and load_config(ROOT / "deploy" / "serve.toml").batch_users is False
    with pytest.raises(InvalidRequest) as refused:
        load_config(None, batch_users=True)
    assert str(refused.value) == (
        "serve config: batch_users needs max_ongoing_requests >= 8 (a batch holds up to 8 requests and a replica "
        "batches only the requests it runs at once; it has 1)")
    path = tmp_path / "serve.toml"
    path.write_text("[serve]\nbatch_users = true\nmax_ongoing_requests = 8\nmin_replicas = 1\nmax_replicas = 3\n")
    config = load_config(path)
    assert config.batch_users and config.deployment_options()["max_ongoing_requests"] == 8
    assert config.total_concurrency == 24  # the front end's queue lets a batch through to every replica
    assert config.deployment_options()["autoscaling_config"]["target_ongoing_requests"] == 1.0


@pytest.mark.parametrize("batch_users", [False, True])
def test_a_replicas_service_has_a_batcher_iff_batch_users(batch_users: bool) -> None:
    from sd2_app.api.batching import MAX_IMAGES, Batcher
    from sd2_app.serve.replica import build_service

    config = load_config(None, tiny=True, device="cpu", batch_users=batch_users, max_ongoing_requests=MAX_IMAGES)
    service = build_service(config)
    assert isinstance(service.batcher, Batcher) if batch_users else service.batcher is None
    assert service.gate is not None and (service.batcher is None or service.batcher._gate is service.gate)


def test_the_app_refuses_batch_users_with_serve() -> None:
    """The front end runs no job with --serve: its own batcher could never batch. `python app.py` answers at once
    (the flags are parsed before Gradio or torch is imported)."""
    from sd2_app.app_flags import parse_args

    run = subprocess.run([sys.executable, "app.py", "--serve", "auto", "--batch-users"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.splitlines()[-1] == (
        "app.py: error: --batch-users batches the jobs this process runs; with --serve they run on the replicas: "
        "set batch_users = true in the deployment's settings (--serve-config, deploy/serve.toml)")
    assert parse_args(["--serve", "auto"]).batch_users is False
    assert parse_args(["--batch-users"]).batch_users is True
