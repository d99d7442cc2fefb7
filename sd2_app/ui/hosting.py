"""What a public deployment needs from the web layer: visitor ids, a per-visitor queue limit, Stop for queued jobs.

`Hosting` holds the operator's settings. `Visitors` knows who sent a request (`sd2_app.ui.visitors`) and
watches Gradio's queue: a visitor may have at most `max_jobs_per_visitor` GPU jobs queued or running (the
next join is refused at once with a message, before it takes a queue place), and every GPU job gets a stop
flag when it joins, so Stop reaches a job that is still waiting as well as the running one.

`install(demo, visitors)` hooks both into a built app at launch: the queue's `push` is wrapped (Gradio has no
per-session limit of its own; `gradio/queueing.py`, `Queue.push`), the visitor-cookie middleware is added to
the FastAPI app Gradio creates (through `launch(app_kwargs=...)`), and the direct REST routes that would skip
the queue stay closed (`api_open=False`; gradio_client and the browser always join the queue).
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any, TYPE_CHECKING

from starlette.middleware import Middleware

from sd2_app.ui.runner import GPU_QUEUE, RunFlag
from sd2_app.ui.visitors import VisitorCookies, VisitorMiddleware

if TYPE_CHECKING:
    import gradio as gr

log = logging.getLogger(__name__)

STOP_FLAG = "sd2_stop"  # attribute of the join request's Starlette `state` that holds the job's stop flag


@dataclass(frozen=True)
class Hosting:
    """The operator's settings for serving visitors (app.py's flags)."""

    max_jobs_per_visitor: int = 2  # GPU jobs one visitor may have queued or running at once
    model_admin: bool = True  # visitors may load and unload checkpoints (off by default in public modes)


def too_many_jobs_message(limit: int) -> str:
    return (f"You already have {limit} job{'s' if limit != 1 else ''} queued or running; wait for one to finish "
            "(or press Stop) before starting another.")


def stop_flag_of(request: Any) -> RunFlag | None:
    """The stop flag the queue gave this job when it joined (None for a call that did not join the queue)."""
    raw = getattr(request, "request", None) or request
    state = getattr(raw, "state", None)
    flag = getattr(state, STOP_FLAG, None) if state is not None else None
    return flag if isinstance(flag, RunFlag) else None


class Visitors:
    """Visitor ids, and the GPU jobs each visitor has in Gradio's queue (queued or running)."""

    def __init__(self, cookies: VisitorCookies | None = None, max_jobs: int = 2) -> None:
        self.cookies = cookies or VisitorCookies()
        self.max_jobs = max_jobs
        self._queue: Any = None  # gradio.queueing.Queue, once installed
        self._joining: Counter[str] = Counter()  # joins of each visitor that Gradio is still accepting

    def identify(self, request: Any) -> str:
        return self.cookies.identify(request)

    def _live_jobs(self, visitor: str) -> list[Any]:
        if self._queue is None:
            return []
        events = list(self._queue.event_ids_to_events.values())
        return [event for event in events
                if getattr(event.fn, "concurrency_id", None) == GPU_QUEUE and self.identify(event.request) == visitor]

    def jobs_of(self, visitor: str) -> int:
        return len(self._live_jobs(visitor)) + self._joining[visitor]

    def stop_waiting(self, visitor: str) -> int:
        """Set the stop flag of every GPU job of `visitor` in the queue; how many were not stopped yet."""
        stopped = 0
        for event in self._live_jobs(visitor):
            flag = stop_flag_of(event.request)
            if flag is not None and not flag.is_set():
                flag.set()
                stopped += 1
        return stopped

    def watch(self, queue: Any) -> None:
        """Wrap `queue.push`: refuse a visitor's job over the limit, give every GPU job a stop flag."""
        if getattr(queue.push, "sd2_watched", False):
            return
        self._queue = queue
        push = queue.push

        async def limited_push(body: Any, request: Any, username: Any) -> Any:
            fn = queue.blocks.fns.get(body.fn_index) if body.fn_index is not None else None
            if getattr(fn, "concurrency_id", None) != GPU_QUEUE:
                return await push(body, request, username)
            visitor = self.identify(request)
            if self.jobs_of(visitor) >= self.max_jobs:
                log.info("refused a job: visitor already has %d queued or running", self.max_jobs)
                return False, too_many_jobs_message(self.max_jobs), "error"
            setattr(request.state, STOP_FLAG, RunFlag())
            self._joining[visitor] += 1
            try:
                return await push(body, request, username)
            finally:
                self._joining[visitor] -= 1
                if self._joining[visitor] <= 0:
                    del self._joining[visitor]

        limited_push.sd2_watched = True  # type: ignore[attr-defined]
        queue.push = limited_push


def install(demo: gr.Blocks, visitors: Visitors) -> None:
    """Make every `demo.launch` serve visitor cookies, watch the queue and keep the direct routes closed."""
    demo.api_open = False
    launch = demo.launch

    @functools.wraps(launch)
    def launch_for_visitors(*args: Any, **kwargs: Any) -> Any:
        demo.api_open = False
        if getattr(demo, "_queue", None) is not None:
            visitors.watch(demo._queue)
        app_kwargs = dict(kwargs.pop("app_kwargs", None) or {})
        app_kwargs["middleware"] = [*app_kwargs.get("middleware", []),
                                    Middleware(VisitorMiddleware, cookies=visitors.cookies)]
        return launch(*args, app_kwargs=app_kwargs, **kwargs)

    demo.launch = launch_for_visitors
