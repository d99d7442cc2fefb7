"""Text answers go out gzip-compressed to a client that accepts it: the page, its settings and the API lists.

Gradio compresses only answers to paths that end in a text file's name (its scripts and styles: gradio's
`BrotliMiddleware`, which decides by the path's extension). So the page (its HTML holds every component's
settings), GET /config and /gradio_api/info travelled uncompressed to every visitor at each page load (their
sizes, both ways: docs/PERFORMANCE.md, "What a page load sends"). `CompressMiddleware` hands every other path to
Starlette's `GZipMiddleware` (starlette/middleware/gzip.py), which gzips an answer of `MIN_BYTES` or more for a
client whose Accept-Encoding names gzip, leaves images, event streams, partial and already encoded answers as
they came, compresses large bodies on a worker thread (off the event loop every visitor shares) and says
`Vary: Accept-Encoding`. A path ending in a file's name stays Gradio's, which sends brotli where it can.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.middleware.gzip import GZipMiddleware

from sd2_app.ui.visitors import ASGIApp, Message, Scope

MIN_BYTES = 1024  # below this the header and the framing cost more than compression saves
LEVEL = 6  # zlib's default; Starlette's 9 takes much longer for little less (docs/PERFORMANCE.md)

Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class CompressMiddleware:
    """ASGI middleware: Starlette's gzip for paths without a file name's extension (module docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.gzip = GZipMiddleware(app, minimum_size=MIN_BYTES, compresslevel=LEVEL)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and "." not in scope.get("path", "").rsplit("/", 1)[-1]:
            await self.gzip(scope, receive, send)
        else:
            await self.app(scope, receive, send)
