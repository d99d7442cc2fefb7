"""Event streams asked for a session or an event the queue does not know answer 404 before Gradio starts them.

Gradio's stream routes (GET /gradio_api/queue/data?session_hash=..., and GET /gradio_api/call/<api>/<event_id>)
start a streaming response and only then look the session up (gradio/routes.py, `queue_data_helper`); for a
session the queue has no messages for, the 404 they raise inside the started stream cannot be sent: the client
gets a connection closed mid-answer and the server log a traceback ("Caught handled exception, but response
already started"), for every such request of anybody. `UnknownStreamMiddleware` answers those requests 404 with
a message first. The session of a `/call` event is found as Gradio finds it (`stream_session`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

from gradio.route_utils import API_PREFIX
from starlette.responses import JSONResponse

from sd2_app.ui.visitors import ASGIApp, Message, Scope

QUEUE_DATA_PATH = f"{API_PREFIX}/queue/data"
CALL_PREFIX = f"{API_PREFIX}/call/"
UNKNOWN_STREAM_MESSAGE = "No events of this session or id are waiting to be read; join the queue first."

Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def call_stream_event(path: str) -> str | None:
    """The event id of a `/call` result stream's path (<api_name>/<event_id>, or v2/<api_name>/<event_id>, after
    CALL_PREFIX); None for any other path, a join's included."""
    parts = path.rstrip("/").split(CALL_PREFIX, 1)[1].split("/") if CALL_PREFIX in path else []
    return parts[-1] if len(parts) >= 2 else None


def stream_session(queue: Any, scope: Scope) -> str | None:
    """The session hash a GET to one of the stream routes reads (`queue`: gradio.queueing.Queue); None for any
    other request."""
    path = scope.get("path", "").rstrip("/")
    if scope.get("method") != "GET":
        return None
    if path.endswith(QUEUE_DATA_PATH):
        values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("session_hash", [""])
        return values[0]
    event_id = call_stream_event(path)
    if event_id is not None:
        event = queue.event_ids_to_events.get(event_id)
        if event is not None:
            return event.session_hash
        # as gradio/routes.py, `simple_predict_get`: the session still holding the id, else the id itself
        return next((key for key, ids in queue.pending_event_ids_session.items() if event_id in ids), event_id)
    return None


class UnknownStreamMiddleware:
    """ASGI middleware: a stream of a session the queue holds no messages for answers 404 (module docstring)."""

    def __init__(self, app: ASGIApp, queue: Any) -> None:
        self.app = app
        self.queue = queue

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            session_hash = stream_session(self.queue, scope)
            if session_hash is not None and session_hash not in self.queue.pending_messages_per_session:
                await JSONResponse({"detail": UNKNOWN_STREAM_MESSAGE}, status_code=404)(scope, receive, send)
                return
        await self.app(scope, receive, send)
