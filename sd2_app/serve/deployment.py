"""The Ray Serve deployment: each replica holds one ModelManager + Service and streams a job's events back.

A request names its checkpoint as Serve's multiplexed model id (Ray Serve docs, "Model Multiplexing"), so the
router sends it to a replica that already has that checkpoint loaded. `@serve.multiplexed` keeps at most
`max_models_per_replica` checkpoints per replica; when it evicts one it calls `CheckpointLease.__del__`, which
hands the checkpoint back to our manager (offloaded to host memory; the manager's own budget drops it later)
rather than around it.

`produce` is a generator deployment method: it yields `("progress", done, total, preview)` while the job runs,
then one `("result", Result)`, `("refused", message)` or `("stopped",)`; a checkpoint it cannot load ends it
with `("load_failed", ...)`, and a bug while loading or running with a refusal that says so (`failed_here`).
When the caller cancels the stream (Stop), Serve cancels the generator; the job's stop flag is set and the
replica waits for the running step to end before it takes the next request.

Concurrency (Ray Serve 2.x, ray/serve/_private/replica.py): a replica runs up to `max_ongoing_requests` calls
at once, its async methods (`produce`) as tasks on one event loop, its sync ones on a thread pool of that size.
The loop's default executor is sized from `num_cpus` (`_configure_user_code_threadpool`: num_cpus + 4 threads),
not from `max_ongoing_requests`, so the jobs' blocking work runs on an executor of the replica's own with one
thread per ongoing request: with `batch_users` every request a replica accepts reaches its `Batcher` at once and
can join a batch.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any

from ray import serve

from sd2_app.api.requests import Request
from sd2_app.errors import Cancelled, InvalidRequest, LoadError
from sd2_app.serve.config import ServeConfig, load_config

if TYPE_CHECKING:
    from sd2_app.manager import ModelManager

log = logging.getLogger(__name__)

# ("progress", done, total, preview) | ("result", Result) | ("refused", msg) | ("stopped",)
# | ("load_failed", repo, file, reason): a checkpoint this replica could not load (`LoadError`'s fields)
# | ("loaded", keys): `warm`'s answer, the checkpoints the replica holds
Event = tuple[Any, ...]


class CheckpointLease:
    """What Serve's multiplexing caches for one checkpoint: loading it loads it in our manager, evicting it
    offloads it there (Serve calls `__del__` on eviction)."""

    def __init__(self, manager: ModelManager, key: str) -> None:
        self.manager, self.key = manager, key
        self._held = True
        manager.load(key)

    def __del__(self) -> None:
        if getattr(self, "_held", False):
            self._held = False
            self.manager.offload(self.key)


def load_failed(error: LoadError) -> Event:
    """The event that carries `error` to the front end (`ServeBackend.produce` raises it again there)."""
    return ("load_failed", error.repo, error.file, error.reason)


def failed_here(error: BaseException) -> Event:
    """The refusal that tells the front end a job failed on this replica by a bug (the log has the traceback):
    the replica still serves, so it is no lost worker."""
    return ("refused", f"The job failed on a worker ({type(error).__name__}); the operator has the details.")


@serve.deployment(name="SD2Worker")
class SD2Worker:
    """One replica: a ModelManager + Service on its GPU (or CPU), driven through `produce`."""

    def __init__(self, config: ServeConfig) -> None:
        # The models' code (torch) is imported here, in the replica's process only: the process that deploys the
        # application (`python -m sd2_app.serve`, Serve's controller reading `app_builder`) never runs it.
        from sd2_app.serve.replica import build_service

        self.config = config
        self.service = build_service(config)
        self.loads: list[str] = []  # checkpoint keys in the order this replica loaded them
        self.jobs: list[dict[str, Any]] = []  # one record per job: key, start/end (time.time()), outcome, steps
        self._job_threads = concurrent.futures.ThreadPoolExecutor(config.max_ongoing_requests, "sd2-job")

        @serve.multiplexed(max_num_models_per_replica=config.max_models_per_replica)
        async def lease(key: str) -> CheckpointLease:
            self.loads.append(key)
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(None, CheckpointLease, self.service.manager, key)

        self._lease = lease

    async def produce(self, checked: Request):  # -> AsyncIterator[Event]
        """Run one validated request here, yielding its progress events and then its outcome."""
        key = serve.get_multiplexed_model_id() or checked.checkpoint
        if (failed := await self._leased(key)) is not None:
            yield failed
            return
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event] = asyncio.Queue()
        stop = threading.Event()
        record: dict[str, Any] = {"key": key, "start": time.time(), "end": None, "outcome": None, "steps": 0}
        self.jobs = self.jobs[-99:] + [record]

        def put(event: Event) -> None:
            record["outcome"] = event[0]
            if event[0] == "progress":
                record["steps"] = event[1]
            loop.call_soon_threadsafe(events.put_nowait, event)

        def work() -> None:
            try:
                result = self.service.produce(checked, lambda d, t, p: put(("progress", d, t, p)), stop.is_set)
                put(("result", result))
            except Cancelled:
                put(("stopped",))
            except InvalidRequest as error:
                put(("refused", str(error)))
            except LoadError as error:  # a part the job loads itself (the depth estimator, a VAE)
                log.warning("replica %s could not load a part of %s: %s", os.getpid(), key, error)
                put(load_failed(error))
            except BaseException as error:  # a bug: the caller gets a short message, the log the traceback
                log.exception("job failed on replica %s", os.getpid())
                put(failed_here(error))

        job = loop.run_in_executor(self._job_threads, work)
        try:
            while True:
                event = await events.get()
                yield event
                if event[0] != "progress":
                    break
        finally:
            stop.set()  # the caller cancelled (Stop, disconnect) or the job ended: stop at the next step
            await asyncio.shield(job)
            record["end"] = time.time()

    async def _leased(self, key: str) -> Event | None:
        """Hold `key` here (loading it if needed): None, or the event that says why it could not be loaded."""
        try:
            await self._lease(key)
        except LoadError as error:  # the front end tells the visitor as the local app does; the log has why
            log.warning("replica %s could not load %s: %s", os.getpid(), key, error)
            return load_failed(error)
        except Exception as error:  # a bug while loading: as one while running (`failed_here`)
            log.exception("loading %s failed on replica %s", key, os.getpid())
            return failed_here(error)
        return None

    async def warm(self, key: str) -> Event:
        """Load `key` on the replica the router picks (the multiplexed id of the call): `("loaded", keys)` with its
        loaded keys, or the event `produce` would end with when it cannot (`load_failed`, or a refusal)."""
        failed = await self._leased(serve.get_multiplexed_model_id() or key)
        return failed if failed is not None else ("loaded", self.loaded())

    def loaded(self) -> list[str]:
        """Checkpoints on this replica's device (evicted ones may still wait in host memory)."""
        return self.service.manager.loaded_keys("device")

    def stats(self) -> dict[str, Any]:
        """This replica's process id, the checkpoints it loaded (in order), its recent jobs and, with
        `batch_users`, how many requests each group its `Batcher` ran held ({requests: groups}) and how many are in
        it now (None without)."""
        batcher = self.service.batcher
        groups = dict(batcher.group_sizes) if batcher is not None else None
        return {"pid": os.getpid(), "loads": list(self.loads), "loaded": self.loaded(), "jobs": list(self.jobs),
                "batch_groups": groups, "batch_in_flight": batcher.in_flight if batcher is not None else None}

    def status(self) -> dict[str, Any]:
        """This replica's checkpoints and memory together (`ClusterModels.report`: one round trip)."""
        return self.service.status()


def build_app(config: ServeConfig) -> Any:  # -> serve.Application
    """The Serve application for `config` (pass it to `serve.run`)."""
    return SD2Worker.options(**config.deployment_options()).bind(config)


def app_builder(args: dict[str, Any]) -> Any:  # -> serve.Application
    """Ray Serve's application-builder entry (`import_path: sd2_app.serve.deployment:app_builder` in a Serve
    config or KubeRay's serveConfigV2); `args` may name `config` (a TOML file) and set `tiny`."""
    return build_app(load_config(args.get("config"), tiny=args.get("tiny")))
