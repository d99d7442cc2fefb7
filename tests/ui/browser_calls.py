"""Waiting in a browser test for the page's own calls to the app instead of for a fixed time.

`ServerCalls(page)` counts the page's calls to Gradio's API that answer in one response: the events that run
at once (`/gradio_api/run/...`, such as a `change` handler with queue=False) and the queue's joins. `settle()`
returns once none has been on its way for `quiet_ms`: an event that a value set on the page starts (a size reset
by a checkpoint's change, say) has then started, been answered and landed, however slow the server is. (The
queue's event stream, `/gradio_api/queue/data`, stays open and is not counted: wait for what a queued event
shows with `expect`.)
"""

from __future__ import annotations

import time

COUNTED = ("/gradio_api/run/", "/gradio_api/queue/join")


class ServerCalls:
    """The page's calls to the app on their way (`pending`), counted from when this is made."""

    def __init__(self, page) -> None:
        self.page = page
        self._on_their_way: set[object] = set()  # a call that started before this was made is not counted
        self.started = 0
        page.on("request", self._started)
        page.on("requestfinished", self._ended)
        page.on("requestfailed", self._ended)

    @property
    def pending(self) -> int:
        return len(self._on_their_way)

    def _started(self, request) -> None:
        if any(part in request.url for part in COUNTED):
            self._on_their_way.add(request)
            self.started += 1

    def _ended(self, request) -> None:
        self._on_their_way.discard(request)

    def settle(self, quiet_ms: int = 500, timeout_s: float = 60.0) -> None:
        """Return once no counted call has been on its way for `quiet_ms` (the page's events are dispatched while
        it waits); AssertionError after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        quiet_since, started = time.monotonic(), self.started
        while time.monotonic() < deadline:
            self.page.wait_for_timeout(50)
            if self.pending or self.started != started:
                quiet_since, started = time.monotonic(), self.started
            elif time.monotonic() - quiet_since >= quiet_ms / 1000:
                return
        raise AssertionError(f"the page's calls to the app did not settle in {timeout_s} s ({self.pending} on "
                             "their way)")
