"""How much one network address may upload into Gradio's cache folder within one cache age.

Gradio's upload route (POST /gradio_api/upload; gradio/routes.py, `upload_file`) takes up to 1000 files of
`max_file_size` each in one request (gradio/route_utils.py, `upload_fn`) and writes them into its cache
folder, where they stay until `delete_cache` removes them by age. Nothing there bounds what one client sends
within that age, so one script could fill the disk long before the first file is deleted. Each upload, and
each question about an upload's progress (GET /gradio_api/upload_progress), may also name an `upload_id`, a
client-chosen string that Gradio keeps an entry for (`FileUploadProgress`: its `_signals` entries are never
removed), so memory would grow with every new id.

`UploadBudgetMiddleware` stands in front of that route. A request must say its size (Content-Length; the
server reads no more than that), at most `MAX_UPLOAD_REQUEST_BYTES`; and each network address
(`sd2_app.api.addresses`) may send at most `max_bytes` in at most `UPLOADS_PER_WINDOW` requests per window of
one cache age (a progress question counts as a request of no bytes). A refused request gets a plain-text
message, as Gradio's own upload errors, and Gradio never sees it. Files are deleted after the cache age (on a
schedule of at most that age), so what one address holds on disk stays within a few windows' budget. Every
`upload_id` Gradio sees is replaced by a short keyed hash of the address and the id (`PROGRESS_ID_HEX`
digits): the same client still reads its own upload's progress, and Gradio's progress entries can never be
more than `16 ** PROGRESS_ID_HEX`, whatever ids clients send. Two callers' ids may meet on one short id (1 in
65,536 for a guess), and Gradio's progress stream tells a file's original name and ends the entry; so a progress
question is answered only by the caller whose upload last used that short id (the others get Gradio's own
"Upload not found", 404), told apart by a longer part of the same keyed hash.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode

from gradio.route_utils import API_PREFIX
from starlette.requests import Request as StarletteRequest
from starlette.responses import PlainTextResponse

from sd2_app.api.addresses import ClientAddresses
from sd2_app.byte_limits import MAX_UPLOAD_REQUEST_BYTES, MB
from sd2_app.ui.visitors import ASGIApp, Message, Scope

UPLOAD_PATH = f"{API_PREFIX}/upload"
PROGRESS_PATH = f"{API_PREFIX}/upload_progress"
UPLOAD_ID = "upload_id"  # the query parameter both routes read
PROGRESS_ID_HEX = 4  # hex digits of the upload ids Gradio sees: at most 65,536 progress entries
CALLER_HEX = 16  # hex digits that tell apart the callers whose ids meet on one short id
UPLOADS_PER_WINDOW = 2000  # upload requests per address per cache age
NOT_FOUND = "Upload not found"  # Gradio's answer about an upload id it does not track (gradio/routes.py)

Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def upload_limit_message(max_bytes: int, max_requests: int, window_s: float) -> str:
    return (f"Your network address has reached this server's upload limit ({max_bytes // MB:,} MB or "
            f"{max_requests:,} uploads per {window_s / 60:g} minutes); try again later.")


@dataclass
class _Spent:
    start: float  # when this address's current window began
    bytes: int = 0
    requests: int = 0


class UploadBudget:
    """Bytes and requests each address has uploaded in its current window (one cache age long)."""

    def __init__(self, max_bytes: int, window_s: float, max_requests: int = UPLOADS_PER_WINDOW,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_bytes = max_bytes
        self.window_s = window_s
        self.max_requests = max_requests
        self._clock = clock
        self._spent: dict[str, _Spent] = {}
        self._next_forget = clock() + window_s

    def charge(self, address: str, size: int) -> str | None:
        """Count an upload of `size` bytes from `address`; the refusal message when it is over the budget (then
        nothing is counted). A budget of 0 bytes is no budget."""
        if self.max_bytes <= 0:
            return None
        now = self._clock()
        self._forget_finished(now)
        spent = self._spent.get(address)
        if spent is None or now - spent.start >= self.window_s:
            spent = self._spent[address] = _Spent(now)
        if spent.requests >= self.max_requests or spent.bytes + size > self.max_bytes:
            return upload_limit_message(self.max_bytes, self.max_requests, self.window_s)
        spent.bytes += size
        spent.requests += 1
        return None

    def addresses(self) -> int:
        """How many addresses are remembered (those whose window is running, and some just finished)."""
        return len(self._spent)

    def _forget_finished(self, now: float) -> None:
        """Once per window, drop the addresses whose window has ended: memory follows the active addresses."""
        if now < self._next_forget:
            return
        self._spent = {address: spent for address, spent in self._spent.items() if now - spent.start < self.window_s}
        self._next_forget = now + self.window_s


def declared_size(request: StarletteRequest) -> int | None:
    """The body size the request's one Content-Length header states; None without one (or with several)."""
    values = request.headers.getlist("content-length")
    if len(values) != 1 or not values[0].strip().isdigit():
        return None
    return int(values[0])


class UploadBudgetMiddleware:
    """ASGI middleware: Gradio's upload route within `MAX_UPLOAD_REQUEST_BYTES` a request and `budget` an
    address (`addresses` names it), upload ids bounded (module docstring); every other request passes untouched."""

    def __init__(self, app: ASGIApp, budget: UploadBudget,
                 addresses: ClientAddresses) -> None:
        self.app = app
        self.budget = budget
        self.addresses = addresses
        self._key = secrets.token_bytes(32)  # per server process: clients cannot aim at another's progress id
        self._uploader: dict[str, str] = {}  # short id -> the caller whose upload last used it (at most 16**4)

    def _hashed(self, address: str, upload_id: str) -> tuple[str, str]:
        """(the upload id Gradio sees, the caller's mark) for `upload_id` from `address`."""
        digest = hmac.new(self._key, f"{address}\n{upload_id}".encode("utf-8", "surrogateescape"), hashlib.sha256)
        text = digest.hexdigest()
        return text[:PROGRESS_ID_HEX], text[PROGRESS_ID_HEX:PROGRESS_ID_HEX + CALLER_HEX]

    def progress_id(self, address: str, upload_id: str) -> str:
        """The upload id Gradio sees for `upload_id` from `address`."""
        return self._hashed(address, upload_id)[0]

    def _with_bounded_upload_id(self, scope: Scope, address: str, upload: bool) -> Scope | None:
        """`scope` with every upload id replaced by its short id (an upload becomes its short ids' uploader);
        None for a progress question about a short id that another caller's upload uses."""
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        if not any(name == UPLOAD_ID for name, _ in query):
            return scope
        bounded = []
        for name, value in query:
            if name == UPLOAD_ID:
                value, caller = self._hashed(address, value)
                if upload:
                    self._uploader[value] = caller
                elif self._uploader.get(value, caller) != caller:
                    return None
            bounded.append((name, value))
        return dict(scope, query_string=urlencode(bounded).encode("latin-1"))

    def refusal(self, request: StarletteRequest, address: str) -> PlainTextResponse | None:
        """Why an upload from `address` may not reach Gradio (a response to send instead), or None."""
        size = declared_size(request)
        if size is None:
            return PlainTextResponse("An upload must state its size (one Content-Length header).", status_code=411)
        if size > MAX_UPLOAD_REQUEST_BYTES:
            return PlainTextResponse(f"One upload may be at most {MAX_UPLOAD_REQUEST_BYTES // MB} MB.",
                                     status_code=413)
        return self._over_budget(address, size)

    def _over_budget(self, address: str, size: int) -> PlainTextResponse | None:
        message = self.budget.charge(address, size)
        return None if message is None else PlainTextResponse(message, status_code=429)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, method = scope.get("path", ""), scope.get("method")
        upload = scope["type"] == "http" and method == "POST" and path.endswith(UPLOAD_PATH)
        progress = scope["type"] == "http" and method == "GET" and path.endswith(PROGRESS_PATH)
        if upload or progress:
            request = StarletteRequest(scope)
            address = self.addresses.of(request)
            refused = self.refusal(request, address) if upload else self._over_budget(address, 0)
            if refused is not None:
                await refused(scope, receive, send)
                return
            bounded = self._with_bounded_upload_id(scope, address, upload)
            if bounded is None:
                await PlainTextResponse(NOT_FOUND, status_code=404)(scope, receive, send)
                return
            scope = bounded
        await self.app(scope, receive, send)
