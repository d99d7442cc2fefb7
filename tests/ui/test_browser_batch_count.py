"""Batch count in a real Chromium (Playwright), on the tiny checkpoints: A1111's Batch count sits beside Images per
prompt, and a run of 2 batches shows both batches' images in the one gallery (as a batch of 2 does: no grid image,
the gallery's columns follow the count). Screenshots go to tests/artifacts/.
"""

from __future__ import annotations

import pytest

from tests.ui.test_browser import DESKTOP, sync_api, _box, _go, _open, _set_number, _shot, browser, expect, url  # noqa: F401

pytestmark = [pytest.mark.browser, pytest.mark.slow]  # a real Chromium and a served app


# Whether the first element sits left of the second, their tops level (to 2 px).
ONE_ROW = """([first, second]) => {
  const a = document.querySelector(first).getBoundingClientRect();
  const b = document.querySelector(second).getBoundingClientRect();
  return a.x < b.x && Math.abs(a.y - b.y) < 2;
}"""


def test_batch_count_sits_beside_images_per_prompt_and_two_batches_fill_one_gallery(browser, url) -> None:  # noqa: F811
    page = _open(browser, url, DESKTOP)
    try:
        _go(page, "Text to image")
        expect(page.get_by_role("spinbutton", name="Batch count")).to_have_value("1")
        expect(page.get_by_role("spinbutton", name="Images per prompt")).to_have_value("1")
        # The row in the middle of the page, its layout settled (on a busy run the two were measured 44 px apart
        # just after the page opened), then measured.
        page.locator("#txt2img-batch-count").evaluate("(box) => box.scrollIntoView({block: 'center'})")
        try:
            page.wait_for_function(ONE_ROW, arg=["#txt2img-batch-count", "#txt2img-batch-size"], timeout=15_000)
        except sync_api.TimeoutError:
            pass  # the assertion below says how they are placed
        counted, sized = _box(page, "#txt2img-batch-count"), _box(page, "#txt2img-batch-size")
        assert abs(counted["y"] - sized["y"]) < 2 and counted["x"] < sized["x"]  # one row, Batch count first
        for name, value in (("width", 64), ("height", 64), ("steps", 2), ("seed", 31), ("batch-count", 2)):
            _set_number(page, f"txt2img-{name}", value)
        page.locator("#txt2img-run").click()
        images = page.locator("#txt2img-gallery .grid-container img")
        expect(images).to_have_count(2, timeout=120_000)
        expect(page.locator("#txt2img-run")).to_be_enabled(timeout=30_000)
        expect(page.locator("#txt2img-info")).to_contain_text("Seeds 31–32 · ")  # a batch count's seeds follow on
        _shot(page, "batch-count-two-batches")
    finally:
        page.context.close()
