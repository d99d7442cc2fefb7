"""A full app, in a real Chromium (Playwright), as a visitor meets it: app.py's app with --queue-size 1 (the tiny
checkpoints, served in-process), its one GPU place held as an A1111 API job holds it (`JobAdmission.take`).

Generate is refused at join with the app's busy message (the toast), and the line under the buttons stops
saying "Queued…"; once the place is free the same click runs. Screenshots go to tests/artifacts/.
"""

from __future__ import annotations

import pytest

from sd2_app.api.job_admission import server_busy_message
from sd2_app.ui.run_events import NOT_STARTED
from tests.hosting_support import one_place_app  # noqa: F401
from tests.reliability_support import one_thread  # noqa: F401
from tests.ui.test_browser import ARGS, ARTIFACTS, CHROMIUM, DESKTOP, _open, expect, sync_api

pytestmark = [pytest.mark.browser, pytest.mark.slow]  # a real Chromium and a served app


def test_generate_on_a_full_app_says_the_server_is_busy(one_place_app) -> None:
    url, demo = one_place_app
    jobs = demo.flags.visitors.job_admission  # type: ignore[attr-defined]
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = _open(browser, url, DESKTOP)
            for name, value in (("width", 64), ("height", 64), ("steps", 2)):
                page.locator(f"#txt2img-{name} input[type=number]").fill(str(value))
            assert jobs.take("203.0.113.90") is None  # the app's one place, held as an API job holds it
            try:
                page.locator("#txt2img-run").click()
                expect(page.locator(".toast-body", has_text=server_busy_message(1))).to_be_visible(timeout=30_000)
                expect(page.locator("#txt2img-run-status .run-status-text")).to_have_text(NOT_STARTED)
                expect(page.locator("#txt2img-run")).to_be_enabled(timeout=10_000)
                page.screenshot(path=str(ARTIFACTS / "busy-txt2img.png"))
            finally:
                jobs.release("203.0.113.90")
            page.locator("#txt2img-run").click()  # the place is free: the run goes through
            expect(page.locator("#txt2img-info")).to_contain_text("Seed", timeout=120_000)
        finally:
            browser.close()
