"""Waiting in a browser test for the page's own calls to the app and their effects instead of for a fixed time.

`ServerCalls(page)` counts the page's calls to Gradio's API that answer in one response: the events that run
at once (`/gradio_api/run/...`, such as a `change` handler with queue=False) and the queue's joins. `settle()`
returns once none has been on its way, and nothing on the page has changed (no DOM mutation), for `quiet_ms`: an
event that a value set on the page starts (a size reset by a checkpoint's change, say) has then started, been
answered and landed, however slow the server is. A queued event shows itself while it runs (its status tracker's
timer changes the page every 0.1 s) and when it lands, so the page is not quiet until it has. (The queue's event
stream, `/gradio_api/queue/data`, stays open and is not counted.)

`settled(page)` is the check that nothing more happens: a test that asserts something did NOT come (a second
toast, a late update) waits for it, not for a guessed time, and fails past `timeout_s` if the page never settles.
"""

from __future__ import annotations

import time
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")  # Debian's (.ci/run installs it); the browser tests skip without it
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"  # screenshots (gitignored)
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]  # Chromium's flags for a test run, offline

COUNTED = ("/gradio_api/run/", "/gradio_api/queue/join")
# How many times the page has changed since this was first run (a MutationObserver on the whole document).
MUTATIONS = """() => {
  if (window.sd2Mutations === undefined) {
    window.sd2Mutations = 0;
    new MutationObserver((records) => { window.sd2Mutations += records.length; }).observe(
      document.documentElement, { subtree: true, childList: true, attributes: true, characterData: true });
  }
  return window.sd2Mutations;
}"""


class ServerCalls:
    """The page's calls to the app on their way (`pending`), counted from when this is made."""

    def __init__(self, page) -> None:
        self.page = page
        self._on_their_way: set[object] = set()  # a call that started before this was made is not counted
        self.started = 0
        page.on("request", self._started)
        page.on("requestfinished", self._ended)
        page.on("requestfailed", self._ended)
        page.evaluate(MUTATIONS)

    def close(self) -> None:
        """Stop counting (the page's listeners go)."""
        self.page.remove_listener("request", self._started)
        self.page.remove_listener("requestfinished", self._ended)
        self.page.remove_listener("requestfailed", self._ended)

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
        """Return once no counted call has been on its way, and the page has not changed, for `quiet_ms` (the
        page's events are dispatched while it waits: each look is 50 ms apart); AssertionError after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        quiet_since, seen = time.monotonic(), (self.started, self.page.evaluate(MUTATIONS))
        while time.monotonic() < deadline:
            self.page.wait_for_timeout(50)
            now = (self.started, self.page.evaluate(MUTATIONS))
            if self.pending or now != seen:
                quiet_since, seen = time.monotonic(), now
            elif time.monotonic() - quiet_since >= quiet_ms / 1000:
                return
        waiting = ", ".join(sorted(f"{request.method} {request.url} {request.post_data or ''}"[:300]
                                   for request in self._on_their_way))
        raise AssertionError(f"the page and its calls to the app did not settle in {timeout_s} s ({self.started} "
                             f"calls made; {self.pending} on their way: {waiting or 'none'})")


def settled(page, quiet_ms: int = 500, timeout_s: float = 60.0) -> None:
    """Return once the page's calls to the app (those started from now) have been answered and the page has not
    changed for `quiet_ms` (`ServerCalls.settle`): what was still to come has come."""
    calls = ServerCalls(page)
    try:
        calls.settle(quiet_ms, timeout_s)
    finally:
        calls.close()


# An image element's size as drawn from its file, once it has one: (0, 0) while the file is still coming.
NATURAL_SIZE = "img => (img.complete && img.naturalWidth) ? [img.naturalWidth, img.naturalHeight] : null"


def shown_size(page, selector: str, expected: tuple[int, int] | None = None,
               timeout_s: float = 15.0) -> tuple[int, int]:
    """The pixel size of the first image `selector` finds, read once its file has loaded. With `expected`, waits
    (up to `timeout_s`) for that size: a gallery that shows a new result swaps its image's file after the result's
    text has landed, and an earlier image (or none) can be read in between. Returns what it last read."""
    image = page.locator(selector).first
    image.wait_for()
    deadline = time.monotonic() + timeout_s
    while True:
        size = image.evaluate(NATURAL_SIZE)
        done = size is not None and (expected is None or tuple(size) == tuple(expected))
        if done or time.monotonic() > deadline:
            return tuple(size) if size is not None else (0, 0)
        page.wait_for_timeout(100)


def run_and_wait(page, prefix: str, start=None, timeout_s: float = 120.0) -> str:
    """Start the tab's run (`start()`, by default a click on its Generate) and return its result line once this
    run's result is there: a line other than the one on show before (an earlier run's, possibly with the same
    words in its prompt), starting with the result's seed, and Generate enabled again."""
    import re

    from playwright.sync_api import expect

    info = page.locator(f"#{prefix}-info")
    before = info.inner_text()
    (start or page.locator(f"#{prefix}-run").click)()
    if before.strip():  # the line says "Queued…" and the like on its way
        expect(info).not_to_have_text(before, timeout=timeout_s * 1000)
    expect(info).to_have_text(re.compile(r"^\s*Seeds? \d+"), timeout=timeout_s * 1000)
    expect(page.locator(f"#{prefix}-run")).to_be_enabled(timeout=30_000)
    return info.inner_text()


def seed_of(line: str) -> str:
    """The seed a result line (`run_and_wait`) starts with (the first image's, for several)."""
    import re

    found = re.match(r"\s*Seeds? (\d+)", line)
    assert found, line
    return found.group(1)


def drop_file(page, selector: str, path: str) -> None:
    """Drag the file at `path` from outside the page and drop it on the middle of `selector`'s first element, as the
    visitor's mouse would: Chromium's own drag events (the DevTools protocol's Input.dispatchDragEvent), trusted
    and carrying the file, not a script's synthetic DragEvent."""
    box = page.locator(selector).first.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    session = page.context.new_cdp_session(page)
    data = {"items": [], "files": [path], "dragOperationsMask": 1}  # 1: copy
    for kind in ("dragEnter", "dragOver", "drop"):
        session.send("Input.dispatchDragEvent", {"type": kind, "x": x, "y": y, "data": data})
    session.detach()


# Gradio's spinners, pulsing placeholders and progress bars animate at the screen's rate while an event runs, and
# a headless Chromium painting in software on a small CPU spends a good part of each test on them (about 8% of
# the machine's CPU over the send-to and layout tests). The tests read the page's state, not its motion: their
# pages show no CSS animation or transition. (Gradio ends its toasts and Svelte its transitions on timers, not
# on animation events, so nothing waits on an animation's end.)
STILL_PAGE = """document.addEventListener("DOMContentLoaded", () => {
  const style = document.createElement("style");
  style.textContent = "*, *::before, *::after { animation: none !important; transition: none !important; }";
  document.head.appendChild(style);
});"""


def still_context(browser, **options):
    """A new browser context (`options` as Playwright's `new_context` takes them) whose pages show no CSS
    animation or transition (STILL_PAGE)."""
    context = browser.new_context(**options)
    context.add_init_script(STILL_PAGE)
    return context
