""""Notify me when a run ends" in a real Chromium (Playwright), as A1111's browser notification: a run that ends
while the page is in the background shows a notification naming the tab, with the result's info line and picture;
not while the visitor is looking, not with the switch off, and the switch says why it stays off where the browser
will not show notifications (on a phone it is not offered). The page's `Notification` is wrapped to record what is shown (the browser's own still
runs), and whether the page is in front is played by `document.hidden` and `document.hasFocus()`.
"""

from __future__ import annotations

import re

import pytest

from tests.ui.browser_calls import still_context
from tests.ui.test_browser import (DESKTOP, PHONE, _generate_txt2img, _shot, browser, expect, url)  # noqa: F401

pytestmark = [pytest.mark.browser, pytest.mark.slow]  # a real Chromium and a served app

RECORDED = """
window.sd2Notices = [];
window.sd2Away = false;
if ("Notification" in window) {
  const Shown = window.Notification;
  window.Notification = class extends Shown {
    constructor(title, options) { super(title, options); window.sd2Notices.push({ title, ...options }); }
  };
}
Object.defineProperty(Document.prototype, "hidden", { get: () => window.sd2Away, configurable: true });
Document.prototype.hasFocus = function () { return !window.sd2Away; };
"""


def _page(browser, url: str, permissions: list[str]):  # noqa: F811
    context = still_context(browser, viewport=DESKTOP, permissions=permissions)
    context.add_init_script(RECORDED)
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(url)
    page.wait_for_function("window.sd2AppReady === true")
    return page


def test_a_run_that_ends_in_the_background_notifies_when_the_switch_is_on(browser, url) -> None:  # noqa: F811
    page = _page(browser, url, ["notifications"])
    try:
        switch = page.locator("#notify-when-done")
        expect(switch).not_to_be_checked()
        _generate_txt2img(page, 64, 64, prompt="a quiet harbour")
        page.evaluate("window.sd2Away = true")
        _generate_txt2img(page, 64, 64, prompt="a quiet harbour")  # in the background, switch off
        page.evaluate("window.sd2Away = false")
        switch.check()
        expect(switch).to_be_checked()
        assert page.evaluate("localStorage.getItem('sd2-app-notify')") == "on"
        _generate_txt2img(page, 64, 64, prompt="a quiet harbour")  # switch on, the visitor looking
        assert page.evaluate("window.sd2Notices") == []
        page.evaluate("window.sd2Away = true")
        _generate_txt2img(page, 72, 64, prompt="a quiet harbour")
        page.wait_for_function("window.sd2Notices.length > 0")
        [notice] = page.evaluate("window.sd2Notices")
        info = page.locator("#txt2img-info").inner_text().split("\n")[0]
        assert re.match(r"Seed \d+ · ", info)
        picture = page.locator("#txt2img-gallery img").first.get_attribute("src")
        assert notice == {"title": f"{page.title()}: Text to image", "body": info, "icon": picture,
                          "tag": "sd2-app-txt2img"}
        page.reload()  # the switch is remembered in this browser
        page.wait_for_function("window.sd2AppReady === true")
        expect(page.locator("#notify-when-done")).to_be_checked()
        page.locator("#notify-when-done").uncheck()
        assert page.evaluate("localStorage.getItem('sd2-app-notify')") is None
        page.evaluate("window.sd2Away = true")
        _generate_txt2img(page, 64, 64, prompt="a quiet harbour")
        assert page.evaluate("window.sd2Notices") == []
        _shot(page, "notify-switch")
    finally:
        page.context.close()


def test_the_switch_stays_off_and_says_why_where_notifications_are_not_allowed(browser, url) -> None:  # noqa: F811
    page = _page(browser, url, [])
    try:
        page.evaluate("Notification.requestPermission = async () => 'denied'")  # the visitor answers "Block"
        page.locator("#notify-when-done").click()  # turned on, and back off
        expect(page.locator("#notify-when-done-note")).to_have_text(
            "Notifications are blocked for this page; allow them in the browser's settings for this site.")
        expect(page.locator("#notify-when-done")).not_to_be_checked()
        assert page.evaluate("localStorage.getItem('sd2-app-notify')") is None
        page.evaluate("delete window.Notification")  # a browser without notifications
        page.locator("#notify-when-done").click()  # turned on, and back off
        expect(page.locator("#notify-when-done-note")).to_have_text("This browser shows no notifications.")
        expect(page.locator("#notify-when-done")).not_to_be_checked()
        page.set_viewport_size(PHONE)  # phones' browsers show a page's notifications only through a service worker
        expect(page.locator("#notify-when-done")).to_be_hidden()
        expect(page.locator("#app-title")).to_be_visible()
    finally:
        page.context.close()
