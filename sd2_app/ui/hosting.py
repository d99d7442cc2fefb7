"""What a public deployment needs from the web layer: visitor ids, the queue's bounds, Stop for queued jobs.

`Hosting` holds the operator's settings. `Visitors` knows who sent a request (`sd2_app.ui.visitors`) and
from which network address (`sd2_app.api.addresses`), and watches Gradio's queue. Its GPU jobs (the web UI's and
the MCP tools') are counted with the A1111 API's in one place (`Visitors.job_admission`,
`sd2_app.api.job_admission`): the app takes at most `queue_size` of them waiting or running (--queue-size), one
address at most `max_jobs_per_address` (a client that drops its cookies is a new visitor on every request, but
not a new address), and one visitor at most `max_jobs_per_visitor`; the next join is refused at once with a
message, before it takes a queue place (`sd2_app.ui.join_refusals`: how each kind of client reads it). Every GPU
job gets a stop flag when it joins, so Stop reaches a job that is still waiting as well as the running one.

The queue's other events (image checks, "Send to", PNG info: quick, no GPU) have places of their own: at most
`OTHER_EVENT_PLACES` of them waiting or running, and `MAX_OTHER_EVENTS_PER_ADDRESS` of one address, so a flood
of cheap calls cannot take the GPU jobs' places, and GPU jobs filling theirs do not turn cheap calls away.
Gradio's own bound (`queue(max_size=...)`, which counts waiting events of every kind: gradio/queueing.py,
`Queue.push`) is `gradio_max_size`, the two together, so it is never the one that refuses.

`for_visitors(demo, visitors, hosting, app_kwargs)` is what each launch of the app needs (the app's own
`launch`, `sd2_app.ui.lifecycle.AppBlocks.launch`, calls it): the queue's `push` is wrapped (Gradio has no
per-session limit of its own; `gradio/queueing.py`, `Queue.push`), the request-limits, stream-limit, MCP caller,
visitor-cookie and upload-budget middlewares are added to the FastAPI app Gradio creates (through
`launch(app_kwargs=...)`; body sizes: `sd2_app.ui.request_limits`; open streams per address:
`sd2_app.ui.stream_limits`; uploads per address: `sd2_app.ui.upload_budget`), the app's own files in
Gradio's cache are swept on `delete_cache`'s schedule (`sd2_app.ui.cache_files`), and the direct REST routes that
would skip the queue stay closed (`api_open=False`; gradio_client and the browser always join the queue). An
event that names a file by another site's URL is refused at join (`sd2_app.ui.uploads.local_file_references`).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from functools import partial
from typing import Any, TYPE_CHECKING

from fastapi.exceptions import RequestValidationError
from starlette.middleware import Middleware

from sd2_app.app_flags import (DEFAULT_CACHE_MINUTES, DEFAULT_MAX_JOBS_PER_ADDRESS, DEFAULT_MAX_JOBS_PER_VISITOR,
                               DEFAULT_MAX_SESSIONS, DEFAULT_MAX_SESSIONS_PER_ADDRESS, DEFAULT_UPLOAD_MB_PER_ADDRESS)
from sd2_app.api.job_admission import DEFAULT_QUEUE_SIZE, JobAdmission, Refusal
from sd2_app.api.addresses import ClientAddresses, starlette_request
from sd2_app.api.quick_reads import MAX_QUICK_REQUESTS_PER_ADDRESS, too_many_quick_requests_message
from sd2_app.ui.cache_files import sweeping_lifespan
from sd2_app.ui.compression import CompressMiddleware
from sd2_app.ui.event_checks import DirectCallMiddleware, unknown_event_message
from sd2_app.ui.light_sessions import light_sessions_lifespan
from sd2_app.ui.join_refusals import MAX_SESSION_HASH_CHARS, SESSION_HASH_REFUSAL, JoinRefusals
from sd2_app.ui.mcp_addresses import McpCallerMiddleware
from sd2_app.ui.request_limits import RequestLimitsMiddleware
from sd2_app.ui.runner import GPU_QUEUE, Page, RunFlag
from sd2_app.ui.session_addresses import AddressBoundStateHolder, RequestAddressMiddleware
from sd2_app.ui.session_messages import keep_live_sessions
from sd2_app.ui.stream_checks import UnknownStreamMiddleware
from sd2_app.ui.stream_limits import StreamLimitMiddleware, stream_limit
from sd2_app.byte_limits import MB
from sd2_app.errors import shown
from sd2_app.ui.upload_budget import UploadBudget, UploadBudgetMiddleware
from sd2_app.ui.validation_errors import validation_error_answer
from sd2_app.ui.uploads import local_file_references
from sd2_app.ui.visitors import VisitorCookies, VisitorMiddleware

if TYPE_CHECKING:
    import gradio as gr

log = logging.getLogger(__name__)

STOP_FLAG = "sd2_stop"  # attribute of the join request's Starlette `state` that holds the job's stop flag
# Queued events other than GPU jobs from one network address, waiting or running (the A1111 API's PNG info reads
# have the same bound). Off with the per-address job limit (`max_jobs_per_address` 0).
MAX_OTHER_EVENTS_PER_ADDRESS = MAX_QUICK_REQUESTS_PER_ADDRESS
# Queued events other than GPU jobs from everyone, waiting or running, whatever --queue-size: a burst of many
# visitors' image checks and "Send to" clicks, each well under a second.
OTHER_EVENT_PLACES = 64


@dataclass(frozen=True)
class Hosting:
    """The operator's settings for serving visitors (app.py's flags)."""

    queue_size: int = DEFAULT_QUEUE_SIZE  # GPU jobs waiting or running, web UI, MCP and A1111 API together
    max_jobs_per_visitor: int = DEFAULT_MAX_JOBS_PER_VISITOR  # GPU jobs one visitor may have queued or running
    max_jobs_per_address: int = DEFAULT_MAX_JOBS_PER_ADDRESS  # the same for one network address; 0: no limit
    max_upload_mb_per_address: int = DEFAULT_UPLOAD_MB_PER_ADDRESS  # per cache age; 0: no budget
    trusted_proxy_hops: int = 0  # trusted reverse proxies in front, appending to X-Forwarded-For (`addresses`)
    model_admin: bool = True  # visitors may load and unload checkpoints (off by default in public modes)
    max_sessions: int = DEFAULT_MAX_SESSIONS  # sessions kept with nothing waiting or running (`session_messages`)
    max_sessions_per_address: int = DEFAULT_MAX_SESSIONS_PER_ADDRESS  # of them one address's; 0: no limit


def too_many_jobs_message(limit: int) -> str:
    return (f"You already have {limit} job{'s' if limit != 1 else ''} queued or running; wait for one to finish "
            "(or press Stop) before starting another.")


OTHER_EVENTS_BUSY_MESSAGE = "The server is busy with other visitors' requests; try again in a moment."


def gradio_max_size(queue_size: int) -> int:
    """Gradio's `queue(max_size=...)` for an app whose GPU jobs are bounded by `queue_size`: their places and
    the other events', so Gradio's own "Queue is full" (counting every kind of waiting event) is never reached
    while `Visitors.watch` bounds each kind."""
    return queue_size + OTHER_EVENT_PLACES


def stop_flag_of(request: Any) -> RunFlag | None:
    """The stop flag the queue gave this job when it joined (None for a call that did not join the queue)."""
    state = getattr(starlette_request(request), "state", None)
    flag = getattr(state, STOP_FLAG, None) if state is not None else None
    return flag if isinstance(flag, RunFlag) else None


class Visitors:
    """Visitor ids, and the GPU jobs each visitor has in Gradio's queue (queued or running); `job_admission` is the
    count of GPU jobs the A1111 API shares (`sd2_app.api.job_admission`): the app's bound `queue_size` and the
    per-address limit."""

    def __init__(self, cookies: VisitorCookies | None = None, max_jobs: int = DEFAULT_MAX_JOBS_PER_VISITOR,
                 max_jobs_per_address: int = DEFAULT_MAX_JOBS_PER_ADDRESS,
                 addresses: ClientAddresses | None = None, queue_size: int = DEFAULT_QUEUE_SIZE) -> None:
        self.cookies = cookies or VisitorCookies()
        self.max_jobs = max_jobs
        self.job_admission = JobAdmission(addresses, max_jobs_per_address, queue_size, queued=self._queued_by_address)
        self._queue: Any = None  # gradio.queueing.Queue, once installed
        self._joining: Counter[str] = Counter()  # joins of each visitor that Gradio is still accepting
        self._joining_others_from: Counter[str] = Counter()  # joins of other events per network address
        self._refusals = JoinRefusals()  # refused joins completed for gradio_client and MCP callers

    @property
    def addresses(self) -> ClientAddresses:
        return self.job_admission.addresses

    def identify(self, request: Any) -> str:
        return self.cookies.identify(request)

    def _events(self, gpu: bool = True) -> list[Any]:
        """The GPU jobs (`gpu`) or the other events in the queue, waiting or running."""
        if self._queue is None:
            return []
        events = list(self._queue.event_ids_to_events.values())
        return [event for event in events if (getattr(event.fn, "concurrency_id", None) == GPU_QUEUE) == gpu]

    def _live_jobs(self, visitor: str) -> list[Any]:
        return [event for event in self._events() if self.identify(event.request) == visitor]

    def jobs_of(self, visitor: str) -> int:
        return len(self._live_jobs(visitor)) + self._joining[visitor]

    def _queued_by_address(self) -> Counter[str]:
        """GPU jobs in Gradio's queue, waiting or running, per network address (`ClientAddresses.of`)."""
        return Counter(self.addresses.of(event.request) for event in self._events())

    def other_events_by_address(self) -> Counter[str]:
        """Queued events other than GPU jobs waiting or running (or joining), per network address."""
        live = Counter(self.addresses.of(event.request) for event in self._events(gpu=False))
        return live + self._joining_others_from

    def _other_refusal(self, address: str) -> str | None:
        """Why an event other than a GPU job from `address` may not join now: the address has its share
        (with the per-address job limit on), or everyone's other events fill their places; None when it may."""
        others = self.other_events_by_address()
        if self.job_admission.limit and others[address] >= MAX_OTHER_EVENTS_PER_ADDRESS:
            return too_many_quick_requests_message(MAX_OTHER_EVENTS_PER_ADDRESS)
        if others.total() >= OTHER_EVENT_PLACES:
            return OTHER_EVENTS_BUSY_MESSAGE
        return None

    def _visitor_refusal(self, visitor: str) -> str | None:
        return too_many_jobs_message(self.max_jobs) if self.jobs_of(visitor) >= self.max_jobs else None

    def admit(self, visitor: str, address: str) -> str | None:
        """A new GPU job of `visitor` from the network address `address`: None when it may join the queue, with a
        place of the address held (`JobAdmission.take`: the app's bound and the address's limit, checked and held
        at once, as API jobs arrive meanwhile; give it back with `job_admission.release` once the job is in the
        queue), else why not (nothing held)."""
        refused = self._visitor_refusal(visitor) or self.job_admission.take(address)
        return refused.message if isinstance(refused, Refusal) else refused

    def stop_waiting(self, visitor: str, page: Page) -> int:
        """Set the stop flag of every GPU job of `visitor` in the queue that runs `page` (`RunFlag.page`); how many
        were not stopped yet."""
        stopped = 0
        for event in self._live_jobs(visitor):
            flag = stop_flag_of(event.request)
            if flag is not None and flag.page == page and not flag.is_set():
                flag.set()
                stopped += 1
        return stopped

    def watch(self, queue: Any) -> None:
        """Wrap `queue.push`: refuse an event under a session hash over `MAX_SESSION_HASH_CHARS` (Gradio keeps
        the hash until the event's stream is read), of an event number the app does not have, or that names a file
        by another site's URL, a GPU job over the app's bound or its visitor's or address's limit, and another event
        over its places; give every GPU job a stop flag."""
        if getattr(queue.push, "sd2_watched", False):
            return
        self._queue = queue
        push = queue.push

        async def other_push(body: Any, request: Any, username: Any) -> Any:
            address = self.addresses.of(request)
            refused = self._other_refusal(address)
            if refused is not None:
                log.info("refused an event: %s", refused)
                return await self._refusals.refuse(queue, body, request, username, refused)
            self._joining_others_from[address] += 1
            try:
                return await push(body, request, username)
            finally:
                _count_down(self._joining_others_from, address)

        async def limited_push(body: Any, request: Any, username: Any) -> Any:
            if len(body.session_hash or "") > MAX_SESSION_HASH_CHARS:
                log.info("refused an event: a session hash of %d characters", len(body.session_hash))
                return False, SESSION_HASH_REFUSAL, "error"
            if body.fn_index is not None and body.fn_index not in queue.blocks.fns:  # Gradio: KeyError, HTTP 500
                log.info("refused an event: no event numbered %s", shown(body.fn_index))
                return False, unknown_event_message(body.fn_index), "error"
            remote = local_file_references(body.data)  # before Gradio could download a URL (`uploads`)
            if remote is not None:
                log.info("refused an event: a file given by URL")
                return await self._refusals.refuse(queue, body, request, username, remote)
            fn = queue.blocks.fns.get(body.fn_index) if body.fn_index is not None else None
            if getattr(fn, "concurrency_id", None) != GPU_QUEUE:
                return await other_push(body, request, username)
            visitor, address = self.identify(request), self.addresses.of(request)
            refused = self.admit(visitor, address)
            if refused is not None:
                log.info("refused a job: %s", refused)
                return await self._refusals.refuse(queue, body, request, username, refused)
            setattr(request.state, STOP_FLAG, RunFlag(page=(body.session_hash, body.fn_index)))
            self._joining[visitor] += 1
            try:
                return await push(body, request, username)
            finally:
                _count_down(self._joining, visitor)
                self.job_admission.release(address)  # pushed: the job now counts in Gradio's queue

        limited_push.sd2_watched = True  # type: ignore[attr-defined]
        queue.push = limited_push


def _count_down(counter: Counter[str], key: str) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]  # a key per visitor or address that has left: none stays behind


def for_visitors(demo: gr.Blocks, visitors: Visitors, hosting: Hosting,
                 app_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Ready `demo` for a launch that serves visitors: close the direct REST routes, watch the queue and keep its
    finished sessions' streams bounded (`sd2_app.ui.session_messages`); returns the `app_kwargs` for Gradio's
    `launch`, with the compression (`sd2_app.ui.compression`), request-limits (`sd2_app.ui.request_limits`),
    stream-limit (`sd2_app.ui.stream_limits`), MCP caller (`sd2_app.ui.mcp_addresses`), request-address,
    visitor-cookie, upload-budget, unknown-stream (`sd2_app.ui.stream_checks`) and direct-call
    (`sd2_app.ui.event_checks`) middlewares, the sweep of the app's cached files on `delete_cache`'s schedule and
    sessions that copy no component settings ahead (`sd2_app.ui.light_sessions`), at most `max_sessions_per_address`
    of one address (`sd2_app.ui.session_addresses`), added to the caller's."""
    demo.api_open = False
    visitors.watch(demo._queue)  # every Blocks has its queue (gradio/blocks.py, Blocks.__init__)
    keep_live_sessions(demo._queue, hosting.max_sessions)
    app_kwargs = dict(app_kwargs or {})
    cache = getattr(demo, "delete_cache", None)
    window_s = cache[1] if cache else DEFAULT_CACHE_MINUTES * 60
    budget = UploadBudget(hosting.max_upload_mb_per_address * MB, window_s=window_s)
    app_kwargs["middleware"] = [*app_kwargs.get("middleware", []),
                                Middleware(CompressMiddleware),
                                Middleware(RequestLimitsMiddleware, addresses=visitors.addresses),
                                Middleware(StreamLimitMiddleware, addresses=visitors.addresses,
                                           limit=stream_limit(hosting.max_sessions_per_address)),
                                Middleware(McpCallerMiddleware, addresses=visitors.addresses),
                                Middleware(RequestAddressMiddleware, addresses=visitors.addresses),
                                Middleware(VisitorMiddleware, cookies=visitors.cookies),
                                Middleware(UploadBudgetMiddleware, budget=budget, addresses=visitors.addresses),
                                Middleware(UnknownStreamMiddleware, queue=demo._queue),
                                Middleware(DirectCallMiddleware, fns=demo.fns)]
    # a 422's echo of a body's 1e400 or NaN (`sd2_app.ui.validation_errors`)
    app_kwargs["exception_handlers"] = {**app_kwargs.get("exception_handlers", {}),
                                        RequestValidationError: validation_error_answer}
    # a new session costs what it uses, and one address's new sessions push out only its own
    holder = partial(AddressBoundStateHolder, hosting.max_sessions_per_address)
    lifespan = light_sessions_lifespan(app_kwargs.get("lifespan"), holder)
    app_kwargs["lifespan"] = sweeping_lifespan(cache[0], cache[1], lifespan) if cache else lifespan
    return app_kwargs
