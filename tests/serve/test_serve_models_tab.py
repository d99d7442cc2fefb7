"""The Models tab's Load through Ray Serve (`ClusterModels.load`, the replica's `SD2Worker.warm`) and a deployment
that failed to deploy, as the user reads them: the model's name for a checkpoint a replica cannot load, a short
message for a bug there, and words of our own (never Ray's error text) when the deployment cannot take the call.
No Ray cluster: the replica class is driven directly and the front end talks to a stand-in handle; the Load
button's API (`/load_model`) is called with gradio_client on the app built around that front end.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sd2_app.errors import Busy, InvalidRequest, LoadError

pytest.importorskip("ray.serve")

from ray.serve._private.common import DeploymentID  # noqa: E402
from ray.serve.exceptions import DeploymentUnavailableError  # noqa: E402

from sd2_app.serve.backend import WORKER_LOST, WORKERS_UNAVAILABLE, ClusterModels, ServeBackend  # noqa: E402
from tests.serve.test_serve_load_errors import _Handle, _request  # noqa: E402

KEY = "sd21-base"
BUG = "The job failed on a worker (RuntimeError); the operator has the details."
UNAVAILABLE = DeploymentUnavailableError(DeploymentID(name="SD2Worker", app_name="sd2"))


def _warm(lease_error: BaseException | None = None) -> tuple:
    """What `SD2Worker.warm` answers when its checkpoint lease raises `lease_error` (loads fine without)."""
    from sd2_app.serve.deployment import SD2Worker

    async def lease(key: str) -> None:
        if lease_error is not None:
            raise lease_error

    class _Manager:
        def loaded_keys(self, tier: str) -> list[str]:
            return [KEY]

    worker = object.__new__(SD2Worker.func_or_class)  # no Ray replica: only what `warm` reads
    worker._lease, worker.service = lease, type("S", (), {"manager": _Manager()})()
    return asyncio.run(worker.warm(KEY))


class _WarmHandle:
    """`handle.options(multiplexed_model_id=key).warm.remote(key).result()` answering `answer` or raising it."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.warm = self

    def options(self, **options: object) -> _WarmHandle:
        return self

    def remote(self, key: str) -> _WarmHandle:
        return self

    def result(self, timeout_s: float | None = None) -> Any:
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer


def test_a_replica_answers_a_load_with_what_happened() -> None:
    assert _warm() == ("loaded", [KEY])
    assert _warm(LoadError("stabilityai/stable-diffusion-2-1-base", "unet/model.safetensors", "missing")) == (
        "load_failed", "stabilityai/stable-diffusion-2-1-base", "unet/model.safetensors", "missing")
    assert _warm(RuntimeError("a bug")) == ("refused", BUG)  # the replica serves on; its log has the traceback


def test_the_front_raises_a_load_as_a_local_load_does() -> None:
    from sd2_app.checkpoints.catalog import REGISTRY

    assert ClusterModels(_WarmHandle(("loaded", [KEY])), REGISTRY).load(KEY) == [KEY]
    with pytest.raises(LoadError):
        ClusterModels(_WarmHandle(_warm(LoadError("repo", None, "missing"))), REGISTRY).load(KEY)
    with pytest.raises(InvalidRequest, match=r"^The job failed on a worker \(RuntimeError\)"):
        ClusterModels(_WarmHandle(_warm(RuntimeError("a bug"))), REGISTRY).load(KEY)
    with pytest.raises(Busy) as unavailable:
        ClusterModels(_WarmHandle(UNAVAILABLE), REGISTRY).load(KEY)
    assert str(unavailable.value) == WORKERS_UNAVAILABLE
    with pytest.raises(InvalidRequest) as lost:
        ClusterModels(_WarmHandle(RuntimeError("ray::SD2Worker.warm() (pid=1) Traceback ...")), REGISTRY).load(KEY)
    assert str(lost.value) == WORKER_LOST


def test_a_job_while_the_deployment_failed_to_deploy_is_said_in_words() -> None:
    """Not "the worker stopped before it finished": no worker ever took the job."""
    with pytest.raises(Busy) as raised:
        ServeBackend(_Handle([UNAVAILABLE]), poll_s=0.01).produce(_request())
    assert str(raised.value) == WORKERS_UNAVAILABLE != WORKER_LOST


@pytest.mark.slow
@pytest.mark.parametrize("answer, message", [(_warm(RuntimeError("a bug")), BUG),
                                             (UNAVAILABLE, WORKERS_UNAVAILABLE)], ids=["bug", "unavailable"])
def test_the_models_tab_load_through_serve_says_what_went_wrong(answer: Any, message: str) -> None:
    gradio_client = pytest.importorskip("gradio_client")
    from sd2_app.checkpoints.catalog import REGISTRY
    from sd2_app.serve.backend import remote_service
    from sd2_app.serve.config import load_config
    from sd2_app.ui import build_ui
    from tests.reliability_support import launched
    from tests.serve.test_cluster_models import CountingHandle

    handle = CountingHandle()  # the tab's status view
    handle.options, handle.warm = _WarmHandle(answer).options, _WarmHandle(answer)  # type: ignore[attr-defined]
    service = remote_service(handle, REGISTRY, load_config(None, tiny=True), outputs_dir=None, allowed_repos=())
    with launched(build_ui(service)) as url:
        with pytest.raises(gradio_client.exceptions.AppError) as raised:
            gradio_client.Client(url, verbose=False).predict(checkpoint=KEY, api_name="/load_model")
    assert raised.value.message == message
