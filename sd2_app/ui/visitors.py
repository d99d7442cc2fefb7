"""Who a request comes from, as far as the server can tell: a visitor id the server issued in a signed cookie.

Gradio's `session_hash` is chosen by the client and travels in request bodies and query strings, so anyone
who copies one could read that session's History or stop its jobs. Instead, `VisitorCookies` issues every
browser (and every API client that keeps cookies, such as gradio_client) a random id signed with a key that
exists only in this server process, in an HttpOnly cookie. History, Stop and the per-visitor queue limit use
that id; a request without a valid cookie gets a fresh id of its own, so it reaches nobody's results, and
since nobody can present that id again, its results are not kept in History (`sd2_app.api.keeper.unlisted`).

`VisitorMiddleware` is a plain ASGI middleware: it passes a valid cookie through, and otherwise adds a new
id's Set-Cookie header to the response. The request itself stays without one: an id counts from the first
request that presents it, so a client that drops cookies is a one-off visitor on every request.
The cookie is `SameSite=None; Secure` over HTTPS (a Hugging Face Space runs inside an iframe of another
site) and `SameSite=Lax` over plain HTTP.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from sd2_app.api.addresses import starlette_request
from sd2_app.api.keeper import unlisted

COOKIE = "sd2_visitor"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]


class VisitorCookies:
    """Issues and checks signed visitor ids; the key is random per server process."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key or secrets.token_bytes(32)

    def _signature(self, visitor: str) -> str:
        return hmac.new(self._key, visitor.encode(), hashlib.sha256).hexdigest()[:32]

    def issue(self) -> str:
        """A new cookie value: a random id and its signature."""
        visitor = secrets.token_urlsafe(18)
        return f"{visitor}.{self._signature(visitor)}"

    def verify(self, value: str | None) -> str | None:
        """The visitor id in a cookie value this server issued, else None."""
        if not value or value.count(".") != 1:
            return None
        visitor, signature = value.split(".")
        return visitor if hmac.compare_digest(signature, self._signature(visitor)) else None

    def identify(self, request: Any) -> str:
        """The visitor id of a gr.Request or a Starlette request; an unguessable one-off id when it has none."""
        return self.verify(_cookie_of(request)) or unlisted("anonymous-" + secrets.token_urlsafe(18))


def _cookie_of(request: Any) -> str | None:
    raw = starlette_request(request)
    try:
        value = raw.cookies[COOKIE]
    except (AttributeError, KeyError, TypeError):
        return None
    return value if isinstance(value, str) else None


def _cookie_header(headers: list[tuple[bytes, bytes]]) -> str:
    return "; ".join(value.decode("latin-1") for name, value in headers if name == b"cookie")


def _value_in(cookie_header: str) -> str | None:
    for part in cookie_header.split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE:
            return value
    return None


def _is_https(scope: Scope) -> bool:
    forwarded = dict(scope.get("headers") or []).get(b"x-forwarded-proto", b"").decode("latin-1")
    return scope.get("scheme") == "https" or forwarded.split(",")[0].strip() == "https"


class VisitorMiddleware:
    """ASGI middleware: every HTTP request carries a valid visitor cookie; new ones are set on the response."""

    def __init__(self, app: ASGIApp, cookies: VisitorCookies) -> None:
        self.app = app
        self.cookies = cookies

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.cookies.verify(_value_in(_cookie_header(list(scope.get("headers") or [])))) is not None:
            await self.app(scope, receive, send)
            return
        value = self.cookies.issue()
        attributes = "Path=/; HttpOnly; " + ("SameSite=None; Secure" if _is_https(scope) else "SameSite=Lax")

        async def send_with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = [*message.get("headers", []),
                                      (b"set-cookie", f"{COOKIE}={value}; {attributes}".encode("latin-1"))]
            await send(message)

        await self.app(scope, receive, send_with_cookie)
