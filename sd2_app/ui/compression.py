"""Text answers go out gzip-compressed to a client that accepts it: the page, its settings and the API lists.

Gradio compresses only answers to paths that end in a text file's name (its scripts and styles: gradio's
`BrotliMiddleware`, which decides by the path's extension). So the page (its HTML holds every component's
settings), GET /config and /gradio_api/info travelled uncompressed to every visitor at each page load (their
sizes, both ways: docs/PERFORMANCE.md, "What a page load sends"). `CompressMiddleware` gzips an answer to a
path whose last part has no extension (a file's path is Gradio's to compress, or an image's, which compression
does not shrink) when the request's Accept-Encoding takes gzip and the answer is text of a `COMPRESSED_TYPES`
type, not encoded already, sent in one piece of `MIN_BYTES` to `MAX_BYTES`. Streams (the queue's event
streams) go out as they come. An answer over `THREAD_BYTES` is compressed on a worker thread (zlib lets go of
the GIL while it works), so the server's event loop, which every other visitor's requests and streams share,
does not wait for it; the upper bound keeps each compression short. A compressed answer says
`Vary: Accept-Encoding`, so a cache keeps both forms apart.
"""

from __future__ import annotations

import gzip
from collections.abc import Awaitable, Callable
from functools import partial

import anyio
from starlette.datastructures import Headers, MutableHeaders

from sd2_app.ui.visitors import ASGIApp, Message, Scope

COMPRESSED_TYPES = ("text/html", "text/css", "text/plain", "text/javascript", "application/javascript",
                    "application/json")
MIN_BYTES = 1024  # below this the header and the framing cost more than compression saves
MAX_BYTES = 4 * 2**20  # the longest answer compressed: the page is well below; an A1111 API image list may not be
LEVEL = 6  # zlib's default; level 9 takes much longer for little less (docs/PERFORMANCE.md)
THREAD_BYTES = 64 * 1024  # longer answers are compressed off the event loop

Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def accepts_gzip(scope: Scope) -> bool:
    """Whether the request's Accept-Encoding takes gzip: named, or as "*", with a quality above 0 (RFC 9110,
    12.5.3; gzip's own entry comes before "*")."""
    qualities = {}
    for coding in Headers(scope=scope).get("accept-encoding", "").split(","):
        name, *params = coding.split(";")
        qualities[name.strip().lower()] = _quality(params)
    return qualities.get("gzip", qualities.get("*", 0.0)) > 0


def _quality(params: list[str]) -> float:
    """The q= of a coding's parameters; 1 when it has none, 0 when it cannot be read."""
    for param in params:
        key, _, value = param.partition("=")
        if key.strip().lower() == "q":
            try:
                return float(value)
            except ValueError:
                return 0.0
    return 1.0


def compressible(start: Message) -> bool:
    """Whether an answer that starts with `start` (its status and headers) is one this middleware compresses."""
    headers = Headers(raw=start.get("headers") or [])
    content_type = headers.get("content-type", "").split(";")[0].strip().lower()
    return (content_type in COMPRESSED_TYPES and "content-encoding" not in headers
            and start.get("status", 200) not in (204, 206, 304))


class CompressMiddleware:
    """ASGI middleware: gzip the text answers of clients that accept it (module docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or "." in scope.get("path", "").rsplit("/", 1)[-1] or not accepts_gzip(scope):
            await self.app(scope, receive, send)
            return
        held: Message | None = None  # the start of an answer that may be compressed, until its body comes
        passing = False

        async def compressing_send(message: Message) -> None:
            nonlocal held, passing
            if passing:
                await send(message)
            elif message["type"] == "http.response.start":
                if compressible(message):
                    held = message
                else:
                    passing = True
                    await send(message)
            elif held is not None:
                start, held, passing = held, None, True
                body = message.get("body", b"")
                whole = message["type"] == "http.response.body" and not message.get("more_body", False)
                if whole and MIN_BYTES <= len(body) <= MAX_BYTES:
                    body = await _gzipped(body)
                    headers = MutableHeaders(raw=list(start.get("headers") or []))
                    headers["content-encoding"] = "gzip"
                    headers["content-length"] = str(len(body))
                    headers.add_vary_header("Accept-Encoding")
                    start = {**start, "headers": headers.raw}
                    message = {**message, "body": body}
                await send(start)
                await send(message)
            else:
                await send(message)

        await self.app(scope, receive, compressing_send)


async def _gzipped(body: bytes) -> bytes:
    """`body` gzip-compressed at `LEVEL`, on a worker thread when it is over `THREAD_BYTES`."""
    compress = partial(gzip.compress, body, compresslevel=LEVEL, mtime=0)
    return await anyio.to_thread.run_sync(compress) if len(body) > THREAD_BYTES else compress()
