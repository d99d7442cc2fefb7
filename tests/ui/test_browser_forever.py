"""Generate's right-click menu in a real Chromium (Playwright): A1111's "Generate forever" runs the tab again each
time its run ends with a result, until "Cancel generate forever", Stop (or Esc), a run refused, or a run that never
starts (the server out of reach); Esc with the menu open closes only the menu.
"""

from __future__ import annotations

import re

import pytest

from tests.ui.browser_calls import settled
from tests.ui.test_browser import DESKTOP, _open, _set_number, _shot, browser, expect, url  # noqa: F401

pytestmark = [pytest.mark.browser, pytest.mark.slow]  # a real Chromium and a served app

# Each end of a Text to image run: its Stop disabled again after a run enabled it.
COUNT_RUNS = """() => {
  window.sd2Runs = 0;
  new MutationObserver((changes) => changes.forEach((change) => {
    if (change.target.id === "txt2img-stop" && change.oldValue === null && change.target.disabled) window.sd2Runs++;
  })).observe(document.body, { attributes: true, attributeFilter: ["disabled"], attributeOldValue: true, subtree: true });
}"""


def _menu(page, item: str) -> None:
    page.locator("#txt2img-run").click(button="right")
    page.get_by_role("menuitem", name=item).click()
    expect(page.locator(".run-menu")).to_have_count(0)


def _runs(page) -> int:
    return page.evaluate("window.sd2Runs")


def test_generate_forever_repeats_until_cancelled_stopped_or_refused(browser, url) -> None:  # noqa: F811
    page = _open(browser, url, DESKTOP)
    try:
        for name, value in (("width", 64), ("height", 64), ("steps", 2)):
            _set_number(page, f"txt2img-{name}", value)
        page.evaluate(COUNT_RUNS)
        run, stop, info = page.locator("#txt2img-run"), page.locator("#txt2img-stop"), page.locator("#txt2img-info")
        page.locator("#txt2img-run").click(button="right")
        expect(page.get_by_role("menuitem")).to_have_text("Generate forever")
        _shot(page, "generate-forever-menu")
        page.keyboard.press("Escape")  # closes the menu only
        expect(page.locator(".run-menu")).to_have_count(0)
        assert _runs(page) == 0 and stop.is_disabled()

        _menu(page, "Generate forever")  # idle: the first run starts at once
        expect(run).to_have_attribute("data-forever", "on")
        expect(run).to_have_attribute("title", "Generating forever: right-click to cancel; Stop cancels it too")
        _shot(page, "generating-forever")
        page.wait_for_function("window.sd2Runs >= 3", timeout=180_000)
        expect(info).to_contain_text("Seed")
        _menu(page, "Cancel generate forever")
        expect(run).not_to_have_attribute("data-forever", "on")
        expect(stop).to_be_disabled(timeout=60_000)
        settled(page)
        ended = _runs(page)
        settled(page)
        assert _runs(page) == ended and stop.is_disabled()

        _set_number(page, "txt2img-steps", 150)  # a run long enough to be stopped
        _set_number(page, "txt2img-width", 512)
        _set_number(page, "txt2img-height", 512)
        _menu(page, "Generate forever")
        expect(stop).to_be_enabled(timeout=60_000)
        page.evaluate("document.activeElement.blur()")
        page.keyboard.press("Escape")  # presses Stop, which ends generating forever
        expect(run).not_to_have_attribute("data-forever", "on")
        expect(info).to_contain_text("Stopped", timeout=60_000)
        settled(page)
        stopped = _runs(page)
        settled(page)
        assert _runs(page) == stopped == ended + 1 and stop.is_disabled()

        _set_number(page, "txt2img-steps", 2)
        page.locator("#txt2img-prompt textarea").fill("fox " * 700)  # over the 2,000 characters a prompt may have
        _menu(page, "Generate forever")
        # refused at the queue's door ("Not started; ...", the toast says why) or by the run's own check
        expect(info).to_have_text(re.compile(r"Not started; the message at the top says why\.|Prompt is 2800 "
                                             r"characters long; the limit is 2000\."), timeout=60_000)
        expect(run).not_to_have_attribute("data-forever", "on")
        settled(page)
        refused = _runs(page)
        settled(page)
        assert _runs(page) == refused and stop.is_disabled()

        page.locator("#txt2img-prompt textarea").fill("a fox")
        page.route("**/gradio_api/**", lambda route: route.abort())  # the server cannot be reached any more
        _menu(page, "Generate forever")
        expect(run).to_have_attribute("data-forever", "on")
        expect(run).not_to_have_attribute("data-forever", "on", timeout=20_000)  # no run ever started: it ends
        assert _runs(page) == refused and stop.is_disabled()
    finally:
        page.context.close()
