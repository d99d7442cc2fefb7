"""MCP tool calls count under their caller's network address, not one the caller wrote.

Gradio's MCP server runs a queued tool through a gradio_client of its own, which joins the queue over HTTP from
this server itself (its local URL, loopback) with the headers of the MCP request copied (gradio/mcp.py,
`_prepare_tool_call_args` and `call_tool`). uvicorn trusts a loopback peer as a proxy (FORWARDED_ALLOW_IPS,
default 127.0.0.1 and ::1) and takes the client's address from X-Forwarded-For, so a copied header that the
caller wrote would name any address it likes, and every tool call could claim a new one past the per-address
job limit (`sd2_app.api.addresses`). `McpCallerMiddleware` sets the MCP request's X-Forwarded-For to the one
address the app reads for the caller (`ClientAddresses.host_of`), so the copy names the caller, read the same
way whether or not trusted proxies stand in front.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from gradio.route_utils import API_PREFIX
from starlette.requests import Request as StarletteRequest

from sd2_app.api.addresses import FORWARDED_FOR, ClientAddresses
from sd2_app.ui.visitors import ASGIApp, Message, Scope

MCP_PATH = f"{API_PREFIX}/mcp"  # the MCP server's routes (streamable HTTP and SSE) lie under it

Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class McpCallerMiddleware:
    """ASGI middleware: an MCP request's X-Forwarded-For is the caller's address alone (module docstring)."""

    def __init__(self, app: ASGIApp, addresses: ClientAddresses) -> None:
        self.app = app
        self.addresses = addresses

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and MCP_PATH in scope.get("path", ""):
            host = self.addresses.host_of(StarletteRequest(scope))
            headers = [(name, value) for name, value in scope.get("headers") or []
                       if name.decode("latin-1").lower() != FORWARDED_FOR]
            if host:
                headers.append((FORWARDED_FOR.encode("latin-1"), host.encode("latin-1")))
            scope = dict(scope, headers=headers)
        await self.app(scope, receive, send)
