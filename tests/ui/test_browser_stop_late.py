"""Stop while the run's progress is still on its way to the page, in a real Chromium (Playwright), on the tiny
checkpoints: the page applies a cancelled run's updates until its event stream ends, so an update sent before Stop
but arriving after Stop's answer ("Starting…", "Step 3/150") stayed in the info line (seen in CI, under load).

Here the app's event stream is made late on purpose: `LateStream` holds the stream's message that says
"Starting…" (and so everything after it) for `LATE_S` seconds, and Stop is pressed while it is held.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterator

import pytest
from starlette.middleware import Middleware

from tests.ui.test_browser import DESKTOP, _open, _set_number, _shot, browser, expect  # noqa: F401
from tests.ui.browser_calls import settled

pytestmark = [pytest.mark.browser, pytest.mark.slow]  # a real Chromium and a served app

LATE_S = 3.0
STARTING_MESSAGE = ("Starting…".encode(), b"Starting\\u2026")  # the line as the stream's JSON may write it


class LateStream:
    """ASGI middleware: the first message of Gradio's event stream (`/gradio_api/queue/data`) that holds the run's
    "Starting…" is sent `LATE_S` seconds late; `held` is set while it waits, `sent` once it has gone."""

    held = threading.Event()
    sent = threading.Event()

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not scope.get("path", "").endswith("/queue/data"):
            await self.app(scope, receive, send)
            return

        async def late_send(message) -> None:
            body = message.get("body", b"") if message["type"] == "http.response.body" else b""
            if not LateStream.held.is_set() and any(text in body for text in STARTING_MESSAGE):
                LateStream.held.set()
                await asyncio.sleep(LATE_S)
                LateStream.sent.set()
            await send(message)

        await self.app(scope, receive, late_send)


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from sd2_app.api.service import Service
    from sd2_app.checkpoints.catalog import tiny_registry
    from sd2_app.manager import ModelManager
    from sd2_app.testing.tiny import ensure_tiny_repos
    from sd2_app.ui import build_ui
    from tests.pipeline_fixtures import tiny_dir
    from tests.reliability_support import launched

    registry = tiny_registry(ensure_tiny_repos(tiny_dir()))
    manager = ModelManager("cpu", registry=registry, cache_dir=tmp_path_factory.mktemp("cache"))
    service = Service(manager, outputs_dir=None, preview_every=2)
    with launched(build_ui(service), app_kwargs={"middleware": [Middleware(LateStream)]}) as address:
        yield address


def _wait_for(event: threading.Event, page, timeout_s: float) -> None:
    """Wait for `event` while the page's own events go on being dispatched."""
    for _ in range(int(timeout_s * 10)):
        if event.is_set():
            return
        page.wait_for_timeout(100)
    raise AssertionError(f"waited {timeout_s} s")


def test_a_late_starting_line_does_not_outlast_stop(browser, url: str) -> None:  # noqa: F811
    """Stop's message is what the info line ends with after a stopped run, whatever of the run came later, and
    only for that run."""
    page = _open(browser, url, DESKTOP)
    info = page.locator("#txt2img-info")
    try:
        for name, value in (("width", 512), ("height", 512), ("steps", 150)):  # seconds of run: Stop lands mid-run
            _set_number(page, f"txt2img-{name}", value)
        page.locator("#txt2img-run").click()
        _wait_for(LateStream.held, page, 60)
        expect(info).to_have_text("Queued…")  # the run has started; the page has not heard of it yet
        with page.expect_response(lambda answer: answer.url.endswith("/reset"), timeout=60_000):
            page.locator("#txt2img-stop").click()  # the page cancels the run's event: /cancel, then /reset
            expect(info).to_have_text(re.compile(r"^\s*Stopped"))  # Stop's own answer
            _wait_for(LateStream.sent, page, 30)
        settled(page)  # the late updates, the stream's end and what runs after the cancel have all landed
        _shot(page, "stop-outlasts-a-late-starting-line")
        assert info.text_content().strip().startswith("Stopped"), info.text_content()
        # The next run is not that run: its own line stays at its end.
        for name, value in (("width", 64), ("height", 64), ("steps", 2)):
            _set_number(page, f"txt2img-{name}", value)
        page.locator("#txt2img-run").click()
        expect(info).to_contain_text("Steps: 2", timeout=60_000)
        settled(page)
        assert "Stopped" not in info.text_content(), info.text_content()
    finally:
        page.context.close()
