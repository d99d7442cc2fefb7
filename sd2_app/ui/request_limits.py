"""What the web server refuses before Gradio or the A1111 API reads a request: bodies over a size, remote
fetches, and a route of Gradio's that the app does not use.

Request bodies. FastAPI reads a JSON body whole before a route sees it (and Gradio's queue join keeps the
parsed data with the queued event), and uvicorn sets no limit, so one request of some hundred MB would take
several times that in memory. `RequestLimitsMiddleware` refuses a body over `body_limit(path)` with 413 before
the route reads it: at once when its Content-Length says so, and as soon as the bytes received pass the limit
when the client sends it in chunks without a length. The limits follow what each route accepts at most: the
A1111 API two base64 images of the web UI's upload size (`sd2_app.byte_limits.MAX_BASE64_CHARS`: an init image
and a mask), the inpaint editor's parts one image of that size each (`sd2_app.ui.editor_blobs`), anything else
of Gradio's (queue joins, MCP messages, whose own limit is 4 MB) `MAX_BODY_BYTES`; Gradio's upload route has
its own limit and budget (`sd2_app.ui.upload_budget`). A limit per request does not bound many requests at once,
so one network address (`sd2_app.api.addresses`) may have at most `MAX_BODY_BYTES_IN_FLIGHT` of bodies over
`SMALL_BODY_BYTES` being received or handled at once (a chunked body counts as its route's limit; an A1111 API
call holds its share until its job ends); more get 429.

Remote fetches. Gradio's file route serves any public http(s) URL it is given (GET /gradio_api/file=<url>, and
its older form GET /gradio_api/file/<url>; gradio/route_utils.py, `secure_url_stream_response`: the server
fetches it and streams it back), which would make this server an open relay for anybody's downloads. The app
never links to other sites' files, so those forms of the route answer 403 (`sd2_app.ui.file_links`).

Screen recordings. Gradio's POST /gradio_api/process_recording (gradio/routes.py, `process_recording`) runs
ffmpeg, where installed, on any video a client posts, with the zoom effects it asks for: CPU time and a media
parser for anybody. It serves the recording button of Gradio's settings panel, a tool for an app's author, so
it answers 404 here.

Deep links. Gradio's GET /gradio_api/deep_link?session_hash=... (gradio/routes.py, `deep_link`) writes the named
session's settings of every component (about 400 KB with this app's) to a new file under Gradio's upload folder
for anybody who asks, a file for each different state, outside the upload budget. It serves `gr.DeepLinkButton`,
which the app does not have, so it answers 404 here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable

from gradio.route_utils import API_PREFIX
from starlette.requests import Request as StarletteRequest
from starlette.responses import PlainTextResponse

from sd2_app.api.a1111_routes import PREFIX as A1111_PREFIX
from sd2_app.api.addresses import ClientAddresses
from sd2_app.byte_limits import FORM_ROOM_BYTES, MAX_BASE64_CHARS, MAX_IMAGE_FILE_BYTES, MB
from sd2_app.ui.upload_budget import UPLOAD_PATH, declared_size
from sd2_app.ui.file_links import linked_file
from sd2_app.ui.visitors import ASGIApp, Message, Scope

MAX_BODY_BYTES = 4 * MB  # a queue join (prompts, settings, references to uploaded files) or an MCP message
MAX_API_BODY_BYTES = 2 * MAX_BASE64_CHARS + FORM_ROOM_BYTES  # an A1111 API call: an init image and a mask, and the rest
MAX_PART_BODY_BYTES = MAX_IMAGE_FILE_BYTES + FORM_ROOM_BYTES  # one inpaint editor part of the upload size, and its form
# Bodies one address may have in flight: a few A1111 API jobs with large images, or editor parts, at once.
MAX_BODY_BYTES_IN_FLIGHT = 256 * MB
SMALL_BODY_BYTES = 64 * 1024  # a queue join's prompts and settings: not counted
COMPONENT_SERVER_PATH = f"{API_PREFIX}/component_server"  # where the browser sends the editor's parts
REMOTE_FILE_MESSAGE = "This server serves only its own files; it does not fetch files from other sites."
RECORDING_PATH = f"{API_PREFIX}/process_recording"
NO_RECORDINGS_MESSAGE = "This server does not process screen recordings."
DEEP_LINK_PATH = f"{API_PREFIX}/deep_link"
NO_DEEP_LINKS_MESSAGE = "This server does not make deep links."

Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def body_limit(path: str) -> int | None:
    """The most bytes a request body to `path` may have; None for the upload route (its own middleware)."""
    if path.endswith(UPLOAD_PATH):
        return None
    if path.rstrip("/").endswith(COMPONENT_SERVER_PATH):
        return MAX_PART_BODY_BYTES
    return MAX_API_BODY_BYTES if path.startswith(A1111_PREFIX + "/") else MAX_BODY_BYTES


def too_large_message(limit: int) -> str:
    return f"This request's body is larger than this server accepts here ({limit:,} bytes)."


def too_much_in_flight_message(limit: int) -> str:
    return (f"Your network address is already sending or waiting on {limit // MB} MB of requests; try again when "
            "they are done.")


def is_remote_file(path: str) -> bool:
    """Whether a request for `path` (URL-decoded already) makes Gradio fetch another site's file: its file
    route, in either form, given a URL (`sd2_app.ui.file_links.linked_file`)."""
    return linked_file(path) is None


class RequestLimitsMiddleware:
    """ASGI middleware: bodies within `body_limit` and, per network address (`addresses` names it),
    `MAX_BODY_BYTES_IN_FLIGHT`; no remote fetches through the file route, no screen recordings, no deep links
    (module docstring)."""

    def __init__(self, app: ASGIApp, addresses: ClientAddresses) -> None:
        self.app = app
        self.addresses = addresses
        self._in_flight: Counter[str] = Counter()  # body bytes each address has being received or handled

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if is_remote_file(path):
            await PlainTextResponse(REMOTE_FILE_MESSAGE, status_code=403)(scope, receive, send)
            return
        closed = {RECORDING_PATH: NO_RECORDINGS_MESSAGE, DEEP_LINK_PATH: NO_DEEP_LINKS_MESSAGE}
        refused = next((message for route, message in closed.items() if path.rstrip("/").endswith(route)), None)
        if refused is not None:
            await PlainTextResponse(refused, status_code=404)(scope, receive, send)
            return
        request = StarletteRequest(scope)
        limit, declared = body_limit(path), declared_size(request)
        chunked = declared is None and "chunked" in request.headers.get("transfer-encoding", "").lower()
        if limit is None or (declared is None and not chunked):  # the upload route, or a request without a body
            await self.app(scope, receive, send)
            return
        if declared is not None and declared > limit:
            await PlainTextResponse(too_large_message(limit), status_code=413)(scope, receive, send)
            return
        size = limit if declared is None else declared
        address = self.addresses.of(request) if size > SMALL_BODY_BYTES else None
        if address is not None and self._in_flight[address] + size > MAX_BODY_BYTES_IN_FLIGHT:
            message = too_much_in_flight_message(MAX_BODY_BYTES_IN_FLIGHT)
            await PlainTextResponse(message, status_code=429)(scope, receive, send)
            return
        if address is not None:
            self._in_flight[address] += size
        try:
            if chunked:
                await self._counted(scope, receive, send, limit)
            else:  # uvicorn delivers no more than the declared length
                await self.app(scope, receive, send)
        finally:
            if address is not None:
                self._in_flight[address] -= size
                if self._in_flight[address] <= 0:
                    del self._in_flight[address]

    async def _counted(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        """A body without a length: count its bytes; past `limit` the app reads an end of body, and whatever it
        answers is replaced by the 413."""
        received = 0
        over = False

        async def counted_receive() -> Message:
            nonlocal received, over
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    over = True
                    return {"type": "http.request", "body": b"", "more_body": False}
            return message

        refusal = too_large_message(limit).encode()
        answered = False

        async def refusing_send(message: Message) -> None:
            nonlocal answered
            if not over:
                await send(message)
            elif not answered:
                answered = True
                await send({"type": "http.response.start", "status": 413,
                            "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                        (b"content-length", str(len(refusal)).encode())]})
                await send({"type": "http.response.body", "body": refusal})

        await self.app(scope, counted_receive, refusing_send)
