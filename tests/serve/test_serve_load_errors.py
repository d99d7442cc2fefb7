"""A checkpoint a replica cannot load reaches the front end as the `LoadError` a local load raises (the UI then
says which model could not be loaded), and another failure while it loads as a failed job, not as a lost worker. No Ray cluster: the replica class is driven
directly and the front end's `ServeBackend` reads its events through a stand-in handle."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest

from sd2_app.errors import InvalidRequest, LoadError
from tests.reliability_support import fast, txt2img

pytest.importorskip("ray.serve")


def _request():
    return replace(txt2img(seed=5), checkpoint="sd21", sampling=fast(5, steps=2))


class _FailingService:
    """A replica's Service whose job raises `error` (a part the job loads itself)."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def produce(self, *args: object) -> None:
        raise self.error


def _replica_events(lease_error: BaseException | None = None, job_error: BaseException | None = None) -> list[tuple]:
    """What `SD2Worker.produce` yields when its checkpoint lease raises `lease_error`, or its job `job_error`."""
    from sd2_app.serve.deployment import SD2Worker

    async def lease(key: str) -> None:
        if lease_error is not None:
            raise lease_error

    worker = object.__new__(SD2Worker.func_or_class)  # no Ray replica: only what `produce` reads
    worker.jobs, worker._lease, worker.service = [], lease, _FailingService(job_error or RuntimeError())
    worker._job_threads = ThreadPoolExecutor(1)

    async def collect() -> list[tuple]:
        return [event async for event in worker.produce(_request())]

    try:
        return asyncio.run(collect())
    finally:
        worker._job_threads.shutdown()


class _Stream(list):
    def cancel(self) -> None:
        pass


class _Handle:
    """`handle.options(...).produce.remote(request)` streaming `events`."""

    def __init__(self, events: list[tuple]) -> None:
        self.events = events
        self.produce = self

    def options(self, **options: object) -> _Handle:
        return self

    def remote(self, request: object) -> _Stream:
        return _Stream(self.events)


def test_a_checkpoint_the_replica_cannot_load_is_a_load_error_on_the_front_end() -> None:
    from sd2_app.serve.backend import ServeBackend

    events = _replica_events(LoadError("stabilityai/stable-diffusion-2-1", "unet/model.safetensors", "file missing"))
    assert events == [("load_failed", "stabilityai/stable-diffusion-2-1", "unet/model.safetensors", "file missing")]
    with pytest.raises(LoadError) as raised:
        ServeBackend(_Handle(events), poll_s=0.01).produce(_request())
    assert (raised.value.repo, raised.value.file, raised.value.reason) == (
        "stabilityai/stable-diffusion-2-1", "unet/model.safetensors", "file missing")
    assert str(raised.value) == "stabilityai/stable-diffusion-2-1: unet/model.safetensors: file missing"


def test_another_lease_failure_is_a_failed_job_not_a_load_error_or_a_lost_worker() -> None:
    """A bug while the replica loads the checkpoint is told as one while the job runs: the replica serves on."""
    from sd2_app.serve.backend import WORKER_LOST, ServeBackend

    failed = "The job failed on a worker (RuntimeError); the operator has the details."
    assert _replica_events(RuntimeError("not a load")) == [("refused", failed)]
    assert _replica_events(job_error=RuntimeError("a bug")) == [("refused", failed)]  # the same words
    with pytest.raises(InvalidRequest) as raised:
        ServeBackend(_Handle([("refused", failed)]), poll_s=0.01).produce(_request())
    assert str(raised.value) == failed != WORKER_LOST


def test_a_part_the_job_cannot_load_is_a_load_error_too() -> None:
    events = _replica_events(job_error=LoadError("Intel/dpt-hybrid-midas", None, "not in the cache"))
    assert events == [("load_failed", "Intel/dpt-hybrid-midas", None, "not in the cache")]
