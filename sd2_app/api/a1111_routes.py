"""The A1111-compatible REST API (`/sdapi/v1/...`), served by the same server as the web UI.

Every generation goes through `Service.run`, so it has the UI's validation (and cost cap), metadata,
watermark and history, and it passes the Service's `GpuGate`, the one way to the GPU that the UI's jobs
take too (these routes are FastAPI routes beside Gradio and never enter Gradio's queue). Its GPU jobs are
counted with the web UI's and the MCP tools' in one place (`sd2_app.api.job_admission.JobAdmission`, the count
the UI's queue uses; a checkpoint load through /options counts while it loads): when the app has --queue-size
of them waiting or running, the next gets 503 with the message the web UI shows; when the client's network
address has the web UI's per-address number, 429. A job's place is
taken before its body is decoded and checked, so a refused call costs no decode. When the app closes
(`sd2_app.ui.lifecycle.AppBlocks.close`), the API takes no new job (503) and its jobs, waiting or running, stop
at their next step; their clients get a 503 that says so (`n_iter` batches already finished are saved, when
saving is on); a checkpoint load cannot stop midway, so the close waits for it. A client that disconnects (a
request timeout, Ctrl+C) stops its own job the same way (`sd2_app.api.a1111_disconnects`). `/progress` and `/interrupt`
see only the API's own jobs, and of those only the caller's (its network address's): a visitor of the web UI or
another API client is neither reported (their preview) nor stopped through them; /progress's `job_count` is all
the API's jobs (the queue's length, as Gradio's queue status says it). Where loading checkpoints by hand is off
(`model_admin`, decided by `sd2_app.webapp.api_model_admin`: public modes without --allow-model-admin, --auth or
--api-auth), /options may not change the shared current checkpoint (403); a call names its own with
`override_settings`. Optional HTTP basic auth guards every route (`sd2_app.api.a1111_auth`).

Shapes: A1111's modules/api/api.py (the routes) and modules/api/models.py; the mapping is in `a1111.py`.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Body, Depends, HTTPException, Request
from PIL import Image

from sd2_app.api import a1111
from sd2_app.api.a1111_auth import basic_auth
from sd2_app.api.a1111_catalog import catalog_routes, none_here_routes, png_info_routes
from sd2_app.api.a1111_disconnects import run_while_connected
from sd2_app.api.a1111_errors import A1111Route, errors_as_http
from sd2_app.api.a1111_extras import extras_routes
from sd2_app.api.a1111_system import system_routes
from sd2_app.api.job_admission import JobAdmission
from sd2_app.api.quick_reads import MAX_QUICK_REQUESTS_PER_ADDRESS, QuickReads
from sd2_app.api.batch_count import batch_requests
from sd2_app.api.checked import Checked, check
from sd2_app.api.gpu_call import GpuCall
from sd2_app.api.keeper import unlisted
from sd2_app.api.outputs import fast_png
from sd2_app.api.progress import enlarged
from sd2_app.api.requests import LATENT_FACTOR
from sd2_app.api.results import Result
from sd2_app.api.service import Service
from sd2_app.api.tasks import default_checkpoint
from sd2_app.checkpoints.catalog import checkpoint_named
from sd2_app.errors import Cancelled, InvalidRequest, shown

log = logging.getLogger(__name__)

PREFIX = "/sdapi/v1"
HISTORY_OWNER = unlisted("a1111-api")  # API jobs get their images in the reply: not kept in History
NO_MODEL_ADMIN_MESSAGE = ("Changing the server's current checkpoint is off on this server; name one per call with "
                          "override_settings.sd_model_checkpoint.")
NO_LOADING_BY_HAND_MESSAGE = ("Loading and unloading checkpoints by hand is turned off on this server; each job loads "
                              "the checkpoint it needs.")
CLOSING_MESSAGE = "The server is shutting down; try again when it is back."
STOPPED_AT_CLOSE_MESSAGE = "The server is shutting down and stopped this job; try again when it is back."


@dataclass
class _Tracked:
    """An API job waiting for or using the GPU: what /progress reports and /interrupt stops."""

    task: str
    n_iter: int
    address: str  # the client's network address (`ClientAddresses.of`): only it sees and stops the job
    started: float = field(default_factory=time.time)
    stop: threading.Event = field(default_factory=threading.Event)
    skip: threading.Event = field(default_factory=threading.Event)  # /skip: the running batch ends, the next starts
    iteration: int = 0
    step: int = 0
    steps: int = 0
    preview: Image.Image | None = None
    _shown: tuple[Image.Image, str] | None = None  # the last preview /progress encoded, and its base64 PNG

    def on_progress(self, done: int, total: int, preview: Image.Image | None) -> None:
        self.step, self.steps = done, total
        if preview is not None:
            self.preview = preview

    def preview_png(self) -> str | None:
        """The live preview (latent size) enlarged to the image's size and PNG-encoded as base64, once per new
        preview however often /progress is polled."""
        preview, shown = self.preview, self._shown
        if preview is None:
            return None
        if shown is None or shown[0] is not preview:
            data = fast_png(enlarged(preview, LATENT_FACTOR))  # one latent pixel per LATENT_FACTOR image pixels
            shown = self._shown = (preview, base64.b64encode(data).decode("ascii"))
        return shown[1]

    @property
    def progress(self) -> float:
        within = self.step / self.steps if self.steps else 0.0
        return min(1.0, (self.iteration + within) / max(1, self.n_iter))


class A1111Api:
    """State of the API (the current model, the API's jobs) and the handlers behind the routes."""

    def __init__(self, service: Service, *, auth: Sequence[tuple[str, str]] = (),
                 job_admission: JobAdmission | None = None, model_admin: bool = True) -> None:
        self.service = service
        self.auth = list(auth)
        self.model_admin = model_admin  # /options may change the current checkpoint (`webapp.api_model_admin`)
        self.job_admission = job_admission or JobAdmission()  # the web UI's (`Visitors.job_admission`) when it has one
        # /png-info's reads, bounded as the web UI's are; per address where the per-address job limit is on
        self.reads = QuickReads(self.job_admission.addresses,
                                MAX_QUICK_REQUESTS_PER_ADDRESS if self.job_admission.limit else 0)
        self.current = self._first_for("txt2img")  # A1111's "sd_model_checkpoint" option
        # ZeroGPU: the GPU exists only inside spaces.GPU calls, each asking for its own job's time (the request
        # checked once, before the call: sd2_app/api/checked.py), kept here where it may fork (api/gpu_call.py)
        self._gpu_call = GpuCall(service, service.run)
        self._jobs: list[_Tracked] = []  # oldest first
        self._loads = 0  # checkpoint loads through /options still running
        self._lock = threading.Lock()
        self._jobs_changed = threading.Condition(self._lock)  # a job or a load has ended
        self._closing = False  # set by `stop_everyone`: no new jobs

    # ---- models ----------------------------------------------------------------------------------
    def _first_for(self, task: str) -> str:
        """The task's default checkpoint (the task table), or the first that can do it ("" when none can)."""
        keys = [key for key, tasks in self.service.catalog.tasks.items() if task in tasks]
        return default_checkpoint(task, keys) if keys else ""

    def checkpoint_for(self, name: Any, task: str) -> str:
        """The checkpoint a job runs: the one `name` gives (`override_settings.sd_model_checkpoint`, read by
        `resolve`), else the current model, or the first that can do `task` when the current one cannot (a mask,
        an upscale: A1111 has one model for everything; we have one per task)."""
        if name is not None:
            return self.resolve(name)
        return self.current if task in self.service.catalog.tasks.get(self.current, ()) else self._first_for(task)

    def resolve(self, name: Any) -> str:
        """A checkpoint key from a key, a label or an A1111-style title ("name [hash]", the original file's
        name: `checkpoint_named`): the one reading of a checkpoint's name, for /options, override_settings and
        the upscaler."""
        key = checkpoint_named(str(name), self.service.registry)
        if key is not None and key in self.service.catalog.tasks:
            return key
        raise InvalidRequest(f"Unknown checkpoint {shown(str(name))}; choose one of: {', '.join(self.service.catalog.tasks)}.")

    def set_options(self, options: Mapping[str, Any], client: Request) -> None:
        """A new `sd_model_checkpoint` is loaded (`_load_by_hand`) and becomes the current checkpoint; refused with
        403 where visitors may not load checkpoints (`model_admin`). `client`: the HTTP request."""
        for name in options:
            if name != "sd_model_checkpoint":
                log.info("A1111 API: ignoring option %s", name)
        if options.get("sd_model_checkpoint"):
            key = self.resolve(options["sd_model_checkpoint"])
            if not self.model_admin:
                if key != self.current:
                    raise HTTPException(403, NO_MODEL_ADMIN_MESSAGE)
                return  # naming the current checkpoint changes nothing, and loads nothing by hand
            self._load_by_hand(key, client)
            self.current = key

    def unload_all(self) -> None:
        """/unload-checkpoint: every checkpoint is unloaded once no job uses it (the Models tab's "Unload all
        models"); the next job, or /reload-checkpoint, loads again. 403 without `model_admin`."""
        if not self.model_admin:
            raise HTTPException(403, NO_LOADING_BY_HAND_MESSAGE)
        log.info("A1111 API: unloaded %s", ", ".join(self.service.unload()) or "nothing (none was loaded)")

    def reload(self, client: Request) -> None:
        """/reload-checkpoint: the current checkpoint is loaded again (`_load_by_hand`). 403 without `model_admin`."""
        if not self.model_admin:
            raise HTTPException(403, NO_LOADING_BY_HAND_MESSAGE)
        self._load_by_hand(self.current, client)

    def _load_by_hand(self, key: str, client: Request) -> None:
        """Load `key` through the GPU gate, like a job: while it loads it holds a place of the client's network
        address (`_admit`), and the app's close waits for it (`wait_for_jobs`)."""
        address = self.job_admission.addresses.of(client)
        with self._lock:
            self._admit(address)
            self._loads += 1
        try:
            self.service.load(key)
        finally:
            with self._lock:
                self._loads -= 1
                self._jobs_changed.notify_all()
            self.job_admission.release(address)

    # ---- jobs ------------------------------------------------------------------------------------
    def _admit(self, address: str) -> None:
        """Hold a GPU place of the network address `address` (`JobAdmission.take`; give it back with `release`):
        refused with 503 while the app closes or when the app has --queue-size GPU jobs, 429 when the address
        has its share; web UI jobs count in both. Called with `_lock` held."""
        if self._closing:
            raise HTTPException(503, CLOSING_MESSAGE)
        refused = self.job_admission.take(address)
        if refused is not None:
            log.info("A1111 API: refused a job: %s", refused.message)
            raise HTTPException(503 if refused.busy else 429, refused.message)

    def _track(self, task: str, address: str, stop: threading.Event | None) -> _Tracked:
        """The job's place (`_admit`), held until `_untrack`. `task`: the route's, until the job is built; `stop`:
        the job's stop event (a new one when None)."""
        with self._lock:
            self._admit(address)
            tracked = _Tracked(task, 1, address, stop=stop if stop is not None else threading.Event())
            self._jobs.append(tracked)
        return tracked

    def _untrack(self, tracked: _Tracked, address: str) -> None:
        with self._lock:
            self._jobs.remove(tracked)
            self._jobs_changed.notify_all()
        self.job_admission.release(address)

    def run(self, task: str, make_job: Callable[[], a1111.Job], body: Mapping[str, Any],
            client: Request, stop: threading.Event | None = None) -> dict[str, Any]:
        """Build the job (`make_job`: decode and check the body) once it has its place (`_track`), check it whole
        (its batch count's limits and cost: `batch_count`), then run each batch through the Service; after
        /interrupt, the batches finished so far are returned with the stopped one's image so far (as A1111's
        Interrupt); a job the app's close stopped answers 503 (`STOPPED_AT_CLOSE_MESSAGE`). `client`: the HTTP
        request (its address); `stop`: set when the client has gone (`a1111_disconnects`), stops the job as
        /interrupt does."""
        address = self.job_admission.addresses.of(client)
        tracked = self._track(task, address, stop)
        results: list[Result] = []
        try:
            job = make_job()
            batches = batch_requests(check(self.service, job.request).request)
            tracked.task, tracked.n_iter = job.task, len(batches)
            for index, request in enumerate(batches):
                tracked.iteration = index
                try:
                    results.append(self._run_batch(check(self.service, request), tracked))
                except Cancelled:
                    if tracked.stop.is_set() or not tracked.skip.is_set():
                        break
                    # skipped before its first step: the batch has no image, and the next one runs
                tracked.skip.clear()
        finally:
            self._untrack(tracked, address)
        stopped = len(results) < len(batches) or results[-1].stopped_at is not None
        if stopped and self._closing:
            raise HTTPException(503, STOPPED_AT_CLOSE_MESSAGE)
        encoded = [data for result in results for data in result.png]  # each image's PNG, as the Service encoded it
        info = a1111.info_json(job, results, tracked.started)
        return {"images": [base64.b64encode(data).decode("ascii") for data in encoded] if job.send_images else [],
                "parameters": a1111.echo_parameters(body), "info": info}

    def _run_batch(self, checked: Checked, tracked: _Tracked) -> Result:
        """One batch of a job in the GPU call: with its progress and stop callbacks where the call runs here.
        Where it may run in a forked worker, its arguments are pickled, and the callbacks (bound to the
        lock-holding `_Tracked`) cannot go: there it runs without them (/progress shows no steps, /interrupt
        stops the job before its next batch)."""
        if not self._gpu_call.forks:
            return self._gpu_call.run(checked, tracked.on_progress, tracked.stop.is_set, owner=HISTORY_OWNER,
                                      keep_stopped=self._keeps_stopped, skip=tracked.skip)
        if tracked.stop.is_set():
            raise Cancelled
        return self._gpu_call.run(checked, owner=HISTORY_OWNER)

    def _keeps_stopped(self) -> bool:
        """Whether a job's batch that Stop ended after a sampling step keeps the image so far (`Service.run`):
        after /interrupt or the client's leaving, as A1111's Interrupt does; not after the app's close."""
        return not self._closing

    def _jobs_of(self, address: str) -> list[_Tracked]:
        """The API jobs of the network address `address`, oldest first. Called with `_lock` held."""
        return [job for job in self._jobs if job.address == address]

    def interrupt(self, address: str) -> bool:
        """Stop the oldest API job of the network address `address` (running, or next in turn); False when it
        has none."""
        with self._lock:
            jobs = self._jobs_of(address)
        if jobs:
            jobs[0].stop.set()
        return bool(jobs)

    def skip(self, address: str) -> bool:
        """A1111's /skip: the running batch of the oldest API job of `address` ends at its next step with its image
        so far, and the job goes on with its next batch; False when it has none."""
        with self._lock:
            jobs = self._jobs_of(address)
        if jobs:
            jobs[0].skip.set()
        return bool(jobs)

    def stop_everyone(self) -> int:
        """The app is closing: take no new job or load (503) and stop every job, waiting or running, at its next
        step; how many jobs and checkpoint loads there were (a load cannot stop midway: `wait_for_jobs` waits)."""
        with self._lock:
            self._closing = True
            jobs, loads = list(self._jobs), self._loads
        for job in jobs:
            job.stop.set()
        return len(jobs) + loads

    def wait_for_jobs(self, timeout: float) -> bool:
        """Wait until no job and no checkpoint load is left (after `stop_everyone`); False when some remain after
        `timeout` seconds."""
        with self._jobs_changed:
            return self._jobs_changed.wait_for(lambda: not self._jobs and not self._loads, timeout)

    def progress(self, address: str, skip_current_image: bool = False) -> dict[str, Any]:
        """The oldest API job of the network address `address`, and how many API jobs there are in all, read
        together (one snapshot: the count includes the job reported)."""
        with self._lock:
            count, jobs = len(self._jobs), self._jobs_of(address)
        if not jobs:
            return {"progress": 0.0, "eta_relative": 0.0, "state": _state(None, count), "current_image": None,
                    "textinfo": None, "current_task": None}
        job = jobs[0]
        elapsed = time.time() - job.started
        progress = job.progress
        eta = elapsed / progress - elapsed if progress > 0 else 0.0
        image = None if skip_current_image else job.preview_png()
        waiting = "Waiting for the GPU" if job.steps == 0 else f"Step {job.step}/{job.steps}"
        return {"progress": progress, "eta_relative": eta, "state": _state(job, count), "current_image": image,
                "textinfo": waiting, "current_task": None}


def _state(job: _Tracked | None, count: int) -> dict[str, Any]:
    """A1111's progress `state` (modules/shared_state.py `State.dict`)."""
    return {
        "skipped": bool(job and job.skip.is_set()), "interrupted": bool(job and job.stop.is_set()),
        "stopping_generation": False,
        "job": job.task if job else "", "job_count": count,
        "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(job.started)) if job else "0",
        "job_no": job.iteration if job else 0, "sampling_step": job.step if job else 0,
        "sampling_steps": job.steps if job else 0,
    }


def build_router(api: A1111Api) -> APIRouter:
    """The routes; app.py passes them to Gradio's FastAPI app (`launch(app_kwargs={"routes": ...})`)."""
    router = APIRouter(prefix=PREFIX, dependencies=[Depends(basic_auth(api.auth))], route_class=A1111Route)
    _generation_routes(router, api)
    extras_routes(router, api)
    _job_routes(router, api)
    catalog_routes(router, api)
    none_here_routes(router)
    system_routes(router, api)
    png_info_routes(router, api)
    return router


def _generation_routes(router: APIRouter, api: A1111Api) -> None:
    """/txt2img and /img2img (and inpaint): each a job through `A1111Api.run` (/extra-single-image: `a1111_extras`)."""
    names = api.service.samplers
    limits = api.service.limits
    styles = api.service.styles  # the host's prompt styles, which a request's `styles` names

    # Each job runs while its client is connected: one that disconnects stops its job (`a1111_disconnects`).
    @router.post("/txt2img")
    async def txt2img(client: Request, body: dict[str, Any] = Body(...)) -> dict[str, Any]:
        return await run_while_connected(client, lambda stop: errors_as_http(
            lambda: api.run("txt2img", lambda: a1111.txt2img_job(body, api.checkpoint_for, names(), limits, styles),
                            body, client, stop)))

    @router.post("/img2img")
    async def img2img(client: Request, body: dict[str, Any] = Body(...)) -> dict[str, Any]:
        return await run_while_connected(client, lambda stop: errors_as_http(
            lambda: api.run("img2img", lambda: a1111.img2img_job(body, api.checkpoint_for, names(), limits, styles),
                            body, client, stop)))


def _job_routes(router: APIRouter, api: A1111Api) -> None:
    """/progress, /interrupt and /skip of the caller's own API jobs, and /options (the current checkpoint)."""

    @router.get("/progress")
    def progress(client: Request, skip_current_image: bool = False) -> dict[str, Any]:
        return api.progress(api.job_admission.addresses.of(client), skip_current_image)

    @router.post("/interrupt")
    def interrupt(client: Request) -> dict[str, Any]:
        api.interrupt(api.job_admission.addresses.of(client))
        return {}

    @router.post("/skip")
    def skip(client: Request) -> dict[str, Any]:
        api.skip(api.job_admission.addresses.of(client))
        return {}

    @router.get("/options")
    def get_options() -> dict[str, Any]:
        return {"sd_model_checkpoint": api.current, "samples_format": "png", "sd_checkpoint_hash": None}

    @router.post("/options")
    def set_options(client: Request, body: dict[str, Any] = Body(...)) -> None:
        errors_as_http(lambda: api.set_options(body, client))
