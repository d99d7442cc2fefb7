"""`sd2_app.ui.event_checks.DirectCallMiddleware` on a direct call's error answers, with a stand-in for Gradio's
route that answers as gradio/routes.py `predict` does with show_error=False: a refusal (`gr.Error`) 500 with its
message, a fault 500 with `{"error": null}`. Through the running app: tests/ui/test_quick_events_api.py."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest
from starlette.responses import JSONResponse

from sd2_app.ui.event_checks import DirectCallMiddleware, refusal_message

REFUSAL = {"error": "This endpoint takes 2 values; the request sent 1.", "duration": 10, "visible": True,
           "title": "Error"}
FAULT = {"error": None}


def _route(status: int, answer: dict):
    async def app(scope, receive, send) -> None:
        await receive()  # the body, as the route reads it
        await JSONResponse(answer, status_code=status)(scope, receive, send)
    return app


def _call(app, path: str = "/gradio_api/run/count_tokens") -> tuple[int, dict]:
    sent: list[dict] = []
    body = json.dumps({"data": ["a cat"], "session_hash": "page"}).encode()
    scope = {"type": "http", "method": "POST", "path": path, "query_string": b"",
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]}
    messages = iter([{"type": "http.request", "body": body, "more_body": False}])

    async def receive() -> dict:
        return next(messages, {"type": "http.disconnect"})

    async def send(message: dict) -> None:
        sent.append(message)

    fns = {0: SimpleNamespace(api_name="count_tokens")}
    asyncio.run(DirectCallMiddleware(app, fns)(scope, receive, send))
    return sent[0]["status"], json.loads(b"".join(m.get("body", b"") for m in sent[1:]))


@pytest.mark.parametrize(("status", "answer", "expected"), [
    (500, REFUSAL, 400),  # what the call sent was refused, in words: the caller's error
    (500, FAULT, 500),  # a fault: no message (show_error=False), stays 500
    (200, {"data": ["2/75"]}, 200),
    (422, {"detail": "field required"}, 422),
])
def test_a_refusal_in_words_answers_400_and_a_fault_stays_500(status: int, answer: dict, expected: int) -> None:
    assert _call(_route(status, answer)) == (expected, answer)


@pytest.mark.parametrize(("body", "message"), [
    (json.dumps(REFUSAL).encode(), REFUSAL["error"]), (b'{"error": null}', None), (b'{"error": ""}', None),
    (b'{"error": 12}', None), (b"not json", None), (b"[1]", None), (b"[" * 100_000, None)])
def test_the_refusal_message_is_read_from_gradios_error_answer(body: bytes, message: str | None) -> None:
    assert refusal_message(body) == message
