"""The front end's side of Ray Serve: `ServeBackend` runs validated requests on the deployment's replicas.

`remote_service(handle, registry, config)`, a `Service(backend=ServeBackend(handle))`, keeps everything a
visitor touches where it is today (validation before any Ray round trip, seeds, saving with metadata, history,
the per-job limits of the queue), and only the pipeline runs remotely. Progress and previews stream back; Stop cancels the remote generator.

A replica that dies mid-job (a crash, a lost node) fails that job with a clear message; it is not retried,
since the same job may be what killed it. Serve replaces the replica and later requests run as usual. A job the
deployment turns away before any replica takes it, because as many as `max_queued_requests` already wait for
one (Serve's back pressure: ray/serve/_private/router.py, `BackPressureError`; several front ends can share the
deployment), is refused as busy: nothing ran; so is one while the deployment has no replica that runs (it failed
to deploy: ray/serve/exceptions.py, `DeploymentUnavailableError`). A Models-tab load ends as a job's load does:
the model's name for a checkpoint that cannot be loaded, a short message for a bug, never Ray's own error text.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

import ray
from ray import serve
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

from sd2_app.api.requests import Request
from sd2_app.checkpoints.catalog import CheckpointSpec
from sd2_app.checkpoints.components import Components
from sd2_app.api.results import ProgressFn, Result
from sd2_app.api.service import Service
from sd2_app.errors import Busy, Cancelled, InvalidRequest, LoadError
from sd2_app.loading.repo_attempts import load_tokenizer_only
from sd2_app.serve.config import ServeConfig

log = logging.getLogger(__name__)

WORKER_LOST = "The worker running this job stopped before it finished, so nothing was produced; please try again."
WORKERS_BUSY = ("The server is busy: its workers already have as many jobs as they take, running and waiting; "
                "try again in a minute.")
WORKERS_UNAVAILABLE = ("No worker is running to take this job (the workers failed to start), so nothing ran; the "
                       "operator has the details.")
_DONE = object()


class ServeBackend:
    """`Backend` over a Serve deployment handle (`serve.get_app_handle(name)`)."""

    def __init__(self, handle: Any, *, poll_s: float = 0.05) -> None:
        self._handle = handle
        self._poll_s = poll_s

    def produce(
        self, checked: Request, on_progress: ProgressFn | None = None, should_stop: Callable[[], bool] | None = None
    ) -> Result:
        key = checked.checkpoint
        stream = self._handle.options(multiplexed_model_id=key, stream=True).produce.remote(checked)
        events: queue.Queue[Any] = queue.Queue()

        def pump() -> None:  # the stream's blocking iteration, on its own thread so Stop is seen meanwhile
            try:
                for event in stream:
                    events.put(event)
            except BaseException as error:  # noqa: BLE001  # handed to the caller below
                events.put(error)
            events.put(_DONE)

        threading.Thread(target=pump, name="sd2-serve-stream", daemon=True).start()
        while True:
            try:
                event = events.get(timeout=self._poll_s)
            except queue.Empty:
                if should_stop is not None and should_stop():
                    stream.cancel()
                    raise Cancelled from None
                continue
            if event is _DONE:
                raise InvalidRequest(WORKER_LOST)
            if isinstance(event, BaseException):
                if should_stop is not None and should_stop():
                    raise Cancelled from None
                log.warning("serve job on %s failed: %r", key, event)
                raise _refusal_of(event) from None
            kind = event[0]
            if kind == "progress":
                if on_progress is not None:
                    on_progress(*event[1:])
                if should_stop is not None and should_stop():
                    stream.cancel()
                    raise Cancelled
            elif kind == "result":
                return event[1]
            elif kind == "stopped":
                raise Cancelled
            else:
                raise _failure_of(event)


def _refusal_of(error: BaseException) -> InvalidRequest:
    """What the user is told when a call to the deployment raised `error` (the log has it): nothing was produced."""
    if isinstance(error, BackPressureError):
        return Busy(WORKERS_BUSY)
    if isinstance(error, DeploymentUnavailableError):
        return Busy(WORKERS_UNAVAILABLE)
    return InvalidRequest(WORKER_LOST)


def _failure_of(event: tuple[Any, ...]) -> Exception:
    """The error a replica's "load_failed" or "refused" event stands for."""
    if event[0] == "load_failed":  # as a local load's LoadError: the UI says which model, the log why
        return LoadError(*event[1:])
    return InvalidRequest(event[1])  # "refused"


class ClusterModels:
    """The `ModelHost` of a front end whose models live on the replicas: status and loads go through Serve;
    jobs never run here (`Service.execute` hands them to `ServeBackend`)."""

    def __init__(self, handle: Any, registry: Mapping[str, CheckpointSpec]) -> None:
        self._handle = handle
        self._registry = dict(registry)

    @property
    def registry(self) -> Mapping[str, CheckpointSpec]:
        return self._registry

    def add_checkpoints(self, specs: Mapping[str, CheckpointSpec]) -> None:
        self._registry.update(specs)  # for the catalog; the replicas read their own settings

    def use(self, key: str) -> AbstractContextManager[Components]:
        raise RuntimeError("jobs run on the Serve replicas; the front end holds no models")

    def free_memory(self) -> None:
        raise RuntimeError("jobs run on the Serve replicas; the front end holds no models")

    def tokenizer(self, key: str) -> Any:
        """`key`'s tokenizer read here (a few small files; the token counter needs no replica)."""
        if key not in self._registry:
            raise InvalidRequest(f"Unknown checkpoint {key!r}.")
        return load_tokenizer_only(self._registry[key], self._registry)

    def report(self) -> tuple[Sequence[object], object]:
        """One replica's checkpoints and memory (Serve picks the replica), in one round trip."""
        answer = self._handle.status.remote().result(timeout_s=30)
        return answer["models"], answer["memory"]

    def load(self, key: str) -> object:
        """Load `key` on a replica chosen by Serve's multiplexed routing; that replica's loaded checkpoints. Raises
        what a job's load raises (`LoadError`, or `InvalidRequest` with a message for the user)."""
        try:
            answer = self._handle.options(multiplexed_model_id=key).warm.remote(key).result()
        except Exception as error:  # noqa: BLE001  # Ray's own errors: told in words, logged whole
            log.warning("serve load of %s failed: %r", key, error)
            raise _refusal_of(error) from None
        if answer[0] != "loaded":
            raise _failure_of(answer)
        return answer[1]

    def unload(self, key: str) -> bool:
        raise InvalidRequest("With Ray Serve the replicas unload checkpoints themselves (least recently used).")


def remote_service(handle: Any, registry: Mapping[str, CheckpointSpec], config: ServeConfig,
                   **service_options: Any) -> Service:
    """The front end's Service: validation, saving and history here; jobs on the deployment's replicas; its GPU
    queue runs as many jobs at once as the replicas can (`ServeConfig.total_concurrency`)."""
    return Service(ClusterModels(handle, registry), registry=registry, backend=ServeBackend(handle),
                   concurrency=config.total_concurrency, **service_options)


def connect(address: str, config: ServeConfig) -> Any:
    """Join the Ray cluster at `address` ("auto" or ray://host:10001) and return the deployment's handle."""
    if not ray.is_initialized():
        ray.init(address=address, namespace="serve", log_to_driver=False)
    return serve.get_app_handle(config.app_name)
