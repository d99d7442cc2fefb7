"""Direct calls: of an event the app does not have, 404 with a message; naming no session, a session of their own.

Gradio's direct route POST /gradio_api/run/<api_name> (also /run/<api_name>/ and the older /api/<api_name>) looks
the event up by the body's `fn_index`, else by the name (gradio/route_utils.py, `get_fn`): an unknown number
raised KeyError and an unknown name FnIndexInferError, both HTTP 500 with a traceback in the log.
`DirectCallMiddleware` reads such a request's body (at most `sd2_app.ui.request_limits.MAX_BODY_BYTES`, which
that middleware enforces first) and refuses an event the app lacks. It hands the body on as it came, or, when
it names no session hash, with one made for the call alone (`sd2_app.ui.light_sessions.one_call_session`:
Gradio otherwise made a session state of every component's settings for each such call). Queue joins are
checked where they are pushed (`sd2_app.ui.hosting`).

The route answers every exception HTTP 500 (gradio/routes.py, `predict`): the app's refusals of what a call sent
(a `gr.Error` with its message for the caller) as well as faults. With `show_error=False` (the app's launch
setting) only a `gr.Error` carries a message in that answer (gradio/utils.py, `error_payload`; a fault's is
null), so `answered_as_refusal` makes such an answer HTTP 400, the same body, and leaves a fault's at 500.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from gradio.route_utils import API_PREFIX
from starlette.responses import JSONResponse

from sd2_app.errors import shown
from sd2_app.ui.light_sessions import one_call_session
from sd2_app.ui.visitors import ASGIApp, Message, Scope

RUN_PREFIXES = (f"{API_PREFIX}/run/", f"{API_PREFIX}/api/")

Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def unknown_event_message(event: object) -> str:
    return f"This app has no event {shown(event)}; /gradio_api/info lists the app's endpoints."


def run_api_name(scope: Scope) -> str | None:
    """The <api_name> of a POST to the direct route; None for any other request."""
    path = scope.get("path", "")
    if scope.get("method") != "POST":
        return None
    for prefix in RUN_PREFIXES:
        if prefix in path:
            return path.split(prefix, 1)[1].strip("/")
    return None


def missing_event(fns: dict[int, Any], api_name: str, body: Any) -> object | None:
    """The event number or name a direct call's `body` (parsed JSON) names that the app does not have (`fns`: its
    events by number), None when it has it or the body is not Gradio's to judge (Gradio answers 422 for those)."""
    fn_index = body.get("fn_index") if isinstance(body, dict) else None
    if isinstance(fn_index, int) and not isinstance(fn_index, bool):
        return None if fn_index in fns else fn_index
    if fn_index is None and isinstance(body, dict):
        return None if any(fn.api_name == api_name for fn in fns.values()) else api_name
    return None


class DirectCallMiddleware:
    """ASGI middleware: a direct call of an event the app lacks answers 404, one that names no session gets one of
    its own (module docstring); `fns`: the app's events by number (gradio.Blocks.fns)."""

    def __init__(self, app: ASGIApp, fns: dict[int, Any]) -> None:
        self.app = app
        self.fns = fns

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        api_name = run_api_name(scope) if scope["type"] == "http" else None
        if api_name is None:
            await self.app(scope, receive, send)
            return
        data = await read_body(receive)
        if data is None:
            return  # the client left
        try:
            body = json.loads(data)
        except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth: Gradio's answer (400)
            await self.app(scope, replaying(data, receive), send)
            return
        missing = missing_event(self.fns, api_name, body)
        if missing is not None:
            await JSONResponse({"detail": unknown_event_message(missing)}, status_code=404)(scope, receive, send)
            return
        if isinstance(body, dict) and body.get("session_hash") is None:
            data = one_call_session(data, body)
            scope = dict(scope, headers=[*without_length(scope), (b"content-length", str(len(data)).encode())])
        await self.app(scope, replaying(data, receive), answered_as_refusal(send))


def answered_as_refusal(send: Send) -> Send:
    """`send` for the direct route: a 500 whose JSON body names an error message (a `gr.Error`: what the call sent
    was refused) goes out as 400 with that body; any other answer as it is (module docstring)."""
    held: Message | None = None

    async def send_refusals_as_400(message: Message) -> None:
        nonlocal held
        if message["type"] == "http.response.start" and message.get("status") == 500:
            held = message  # sent with the body, once it says what the error was
            return
        if held is not None and message["type"] == "http.response.body":
            start, held = held, None
            if refusal_message(message.get("body", b"")) is not None and not message.get("more_body", False):
                start = dict(start, status=400)
            await send(start)
        await send(message)

    return send_refusals_as_400


def refusal_message(body: bytes) -> str | None:
    """The message of Gradio's error answer `body` (`{"error": ...}`), None for a fault's (null) or anything else."""
    try:
        answer = json.loads(body)
    except (ValueError, RecursionError):
        return None
    message = answer.get("error") if isinstance(answer, dict) else None
    return message if isinstance(message, str) and message else None


def without_length(scope: Scope) -> list[tuple[bytes, bytes]]:
    """The request's headers but its Content-Length (for a body the middleware replaced)."""
    return [(name, value) for name, value in scope.get("headers") or [] if name.lower() != b"content-length"]


async def read_body(receive: Receive) -> bytes | None:
    """A request's whole body, read from `receive` (bounded by `sd2_app.ui.request_limits`, an outer middleware);
    None when the client left before sending it all."""
    chunks, more = [], True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    return b"".join(chunks)


def replaying(data: bytes, receive: Receive) -> Receive:
    """`receive` for the app behind a middleware that has read the body `data`: the body first, then what
    `receive` gets (the client's disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": data, "more_body": False}
        return await receive()

    return replay
