"""An API client that cancels its job (gradio_client's `Job.cancel()`) stops the job's run at its next step.

gradio_client cancels a job by posting `{session_hash, fn_index, event_id}` to POST /gradio_api/cancel
(gradio_client/client.py, `Endpoint.make_cancel`; the POST /gradio_api/reset it sends as well does nothing in
Gradio 6). Gradio's route (gradio/routes.py, `cancel_event`) drops the event from the queue when it still waits,
and for a running one cancels its asyncio task (gradio/utils.py, `cancel_tasks`) and then closes its iterator. Our
runs are generators that Gradio steps on worker threads, which a task's cancel cannot stop: the route waited for
the handler's next yield (its next live preview, every few steps; a plot's next cell; a job waiting at the GPU
gate behind A1111 API jobs, until its place changed) before the run ended, and the job behind waited with it.

`CancelMiddleware` stands in front of that route: it sets the stop flag of the job the body names (the flag
`sd2_app.ui.hosting` gave it when it joined, which its run checks at every step and while it waits at the GPU
gate), then hands the same request on to Gradio's route. The run ends at its next step, as after Stop (what
Stop keeps, it keeps: an X/Y/Z plot's finished cells in History). Only the named job stops, found by its event
id as Gradio's route finds it (a random 128-bit value that only the client who joined has).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from gradio.route_utils import API_PREFIX

from sd2_app.ui.departures import stop_jobs_of
from sd2_app.ui.event_checks import Receive, Send, read_body, replaying
from sd2_app.ui.visitors import ASGIApp, Scope

log = logging.getLogger(__name__)

CANCEL_PATH = f"{API_PREFIX}/cancel"


def cancelled_event(data: bytes) -> str | None:
    """The event id a cancel request's body names; None when it names none as text (Gradio answers such a body
    itself: 422)."""
    try:
        body = json.loads(data)
    except (ValueError, RecursionError):
        return None
    event_id = body.get("event_id") if isinstance(body, dict) else None
    return event_id if isinstance(event_id, str) else None


class CancelMiddleware:
    """ASGI middleware: a POST to Gradio's cancel route first stops the job it names (module docstring); `queue`:
    the app's gradio.queueing.Queue."""

    def __init__(self, app: ASGIApp, queue: Any) -> None:
        self.app = app
        self.queue = queue

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or \
                not scope.get("path", "").rstrip("/").endswith(CANCEL_PATH):
            await self.app(scope, receive, send)
            return
        data = await read_body(receive)
        if data is None:
            return  # the client left
        event_id = cancelled_event(data)
        if event_id is not None and stop_jobs_of(self.queue, None, event_id):
            log.info("a client cancelled its job: stopping it at its next step")
        await self.app(scope, replaying(data, receive), send)
