"""The app's quick events (every event but a Generate run: token counts, PNG info, send-to, reuse seed, the
checks of an upload, a run's end ...) sent junk through raw HTTP, as any client can: by name on
/gradio_api/run/<name> (not queued) or /gradio_api/call/<name> (queued), private events included. Each answers a
message that says what was wrong (Gradio answered `{"error": null}`, or a Dropdown's whole message with the value
repeated in full), a direct call's with HTTP 400 (Gradio: 500, as for a fault), and the app keeps serving. In-process app on the tiny checkpoints.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from sd2_app.errors import MAX_SHOWN_CHARS
from sd2_app.ui.lifecycle import UNREADABLE_FILE_VALUE

JUNK = {"a number": 12345, "a huge text": "x" * 100_000}
COULD_NOT_USE = ("The values sent to {} could not be used: send what the page sends (/gradio_api/info lists the "
                 "app's public endpoints).")


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, object]]:
    from sd2_app.api.service import Service
    from sd2_app.checkpoints.catalog import tiny_registry
    from sd2_app.manager import ModelManager
    from sd2_app.testing.tiny import ensure_tiny_repos
    from sd2_app.ui import build_ui
    from tests.pipeline_fixtures import tiny_dir
    from tests.reliability_support import launched

    registry = tiny_registry(ensure_tiny_repos(tiny_dir()))
    service = Service(ModelManager("cpu", registry=registry, cache_dir=tmp_path_factory.mktemp("cache")),
                      outputs_dir=None)
    demo = build_ui(service)
    with launched(demo) as url:
        yield url, demo


def _answer(client: httpx.Client, url: str, fn: object, data: list[object],
            session: str | None = None) -> tuple[str, object]:
    """("ok", the outputs) or ("error", the message) of one raw call of the event `fn` with `data`, in `session`
    (a session hash, as the page sends) or in none."""
    name = fn.api_name  # type: ignore[attr-defined]
    if not fn.queue:  # type: ignore[attr-defined]
        sent = {"data": data} if session is None else {"data": data, "session_hash": session}
        answer = client.post(f"{url}gradio_api/run/{name}", json=sent)
        body = answer.json()
        if answer.status_code == 200:
            return "ok", body["data"]
        # a refusal (a message for the caller) is the caller's error, 400; only a fault (no message) is 500
        assert answer.status_code == (400 if isinstance(body["error"], str) else 500), (name, answer.status_code)
        return "error", body["error"]
    client.cookies.clear()  # each queued call a new visitor, as before: a visitor's jobs are counted until they end
    joined = client.post(f"{url}gradio_api/call/{name}", json={"data": data})
    assert joined.status_code == 200, (name, joined.text)
    stream = client.get(f"{url}gradio_api/call/{name}/{joined.json()['event_id']}").text
    event, payload = [line.split(": ", 1)[1] for line in stream.splitlines() if line.startswith(("event:", "data:"))][-2:]
    if event == "complete":
        return "ok", json.loads(payload)
    return "error", None if payload == "null" else json.loads(payload)["error"]


def _quick_events(demo: object) -> list[object]:
    from sd2_app.ui.raw_values import quick_event

    return [fn for fn in demo.fns.values() if quick_event(fn)]  # type: ignore[attr-defined]


def test_public_quick_events_name_what_was_wrong_with_junk(app) -> None:
    url, demo = app
    fns = {fn.api_name: fn for fn in _quick_events(demo)}
    with httpx.Client(timeout=60) as client:
        assert _answer(client, url, fns["count_tokens"], ["a cat", "x" * 100_000]) == (
            "error", f"Checkpoint: {'x' * MAX_SHOWN_CHARS!r}... is not one of the choices.")
        assert _answer(client, url, fns["load_model"], [{"a": [1]}]) == (
            "error", "Checkpoint: {'a': [1]} is not one of the choices.")
        assert _answer(client, url, fns["png_info"], [12345]) == ("error", UNREADABLE_FILE_VALUE)
        assert _answer(client, url, fns["history_select"], []) == ("error", COULD_NOT_USE.format("history_select"))
    counted = httpx.post(f"{url}gradio_api/run/count_tokens", json={"data": ["a cat", "sd2-base"]}, timeout=30)
    assert counted.status_code == 200 and counted.json()["data"][0].startswith("2/75"), counted.text


@pytest.mark.slow
def test_every_quick_event_answers_junk_in_words_and_the_app_keeps_serving(app) -> None:
    """Each quick event, each input sent a number, then a huge text: an answer, or a message of a few words
    (never null, never the huge text back). The unqueued ones are sent in one session, as the page sends them
    (a call in none makes Gradio copy every component's settings for it: tens of ms each here)."""
    url, demo = app
    unread = []
    with httpx.Client(timeout=60) as client:
        for fn in _quick_events(demo):
            for what, junk in JUNK.items():
                kind, said = _answer(client, url, fn, [junk] * len(fn.inputs), session="junk-sender")
                if kind == "error" and not (isinstance(said, str) and 10 < len(said) <= 300):
                    unread.append((fn.api_name, what, said if said is None else said[:100]))
    assert unread == []
    counted = httpx.post(f"{url}gradio_api/run/count_tokens", json={"data": ["a cat", "sd2-base"]}, timeout=30)
    assert counted.status_code == 200 and counted.json()["data"][0].startswith("2/75"), counted.text
