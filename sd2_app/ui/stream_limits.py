"""The event streams one network address may hold open at once.

Some of Gradio's routes answer with a stream that stays open for as long as the client keeps it: the page's
heartbeat (GET /gradio_api/heartbeat/<session>, open while the tab is; gradio/routes.py, `heartbeat`), the
queue's event stream (GET /gradio_api/queue/data), a queued call's result stream (GET /gradio_api/call/<api>/<id>)
and the MCP server's SSE session (GET /gradio_api/mcp/sse, a server session per connection; gradio/mcp.py,
`launch_mcp_on_sse`). Each holds a socket, a file descriptor and tasks while it is open, and nothing in Gradio
bounds how many one client opens: heartbeats for made-up session ids are answered as often as they are asked for.

`StreamLimitMiddleware` lets one network address (`sd2_app.api.addresses`) have at most `limit` of them open;
the next answers 429 with a message before Gradio starts it, and every other request still goes through. The
limit follows the sessions one address may keep (--max-sessions-per-address): each session's page holds its
heartbeat and its event stream (`STREAMS_PER_SESSION`); off where that bound is (0, locally by default). A
queued call's stream lasts as long as its job, which the per-address job limits bound.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable

from gradio.route_utils import API_PREFIX
from starlette.requests import Request as StarletteRequest
from starlette.responses import PlainTextResponse

from sd2_app.api.addresses import ClientAddresses
from sd2_app.ui.stream_checks import QUEUE_DATA_PATH, call_stream_event
from sd2_app.ui.visitors import ASGIApp, Message, Scope

Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

STREAMS_PER_SESSION = 2  # a page's heartbeat and its queue event stream
HEARTBEAT = f"{API_PREFIX}/heartbeat/"
MCP_SSE = f"{API_PREFIX}/mcp/sse"


def stream_limit(max_sessions_per_address: int) -> int:
    """The streams one address may hold open for the sessions it may keep; 0: no limit."""
    return STREAMS_PER_SESSION * max(max_sessions_per_address, 0)


def too_many_streams_message(limit: int) -> str:
    return (f"Your network address already has {limit:,} of this server's connections open (each open page holds "
            "one or two); close some of this app's pages or tabs and try again.")


def is_stream(scope: Scope) -> bool:
    """Whether a request asks for one of the streams that stay open (module docstring)."""
    if scope.get("type") != "http" or scope.get("method") != "GET":
        return False
    path = scope.get("path", "").rstrip("/")
    return HEARTBEAT in path or path.endswith((QUEUE_DATA_PATH, MCP_SSE)) or call_stream_event(path) is not None


class StreamLimitMiddleware:
    """ASGI middleware: at most `limit` open streams per network address (`addresses` names it); 0: no limit."""

    def __init__(self, app: ASGIApp, addresses: ClientAddresses, limit: int) -> None:
        self.app = app
        self.addresses = addresses
        self.limit = limit
        self._open: Counter[str] = Counter()  # streams each address has open

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.limit <= 0 or not is_stream(scope):
            await self.app(scope, receive, send)
            return
        address = self.addresses.of(StarletteRequest(scope))
        if self._open[address] >= self.limit:
            await PlainTextResponse(too_many_streams_message(self.limit), status_code=429)(scope, receive, send)
            return
        self._open[address] += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self._open[address] -= 1
            if self._open[address] <= 0:
                del self._open[address]
