"""Batch count in a real Chromium (Playwright), on the tiny checkpoints: A1111's Batch count sits beside Images per
prompt, and a run of 2 batches shows both batches' images in the one gallery (as a batch of 2 does: no grid image,
the gallery's columns follow the count). Screenshots go to tests/artifacts/.
"""

from __future__ import annotations

import pytest

from tests.ui.test_browser import DESKTOP, _box, _go, _open, _set_number, _shot, browser, expect, url  # noqa: F401

pytestmark = [pytest.mark.browser, pytest.mark.slow]  # a real Chromium and a served app


def test_batch_count_sits_beside_images_per_prompt_and_two_batches_fill_one_gallery(browser, url) -> None:  # noqa: F811
    page = _open(browser, url, DESKTOP)
    try:
        _go(page, "Text to image")
        expect(page.get_by_role("spinbutton", name="Batch count")).to_have_value("1")
        expect(page.get_by_role("spinbutton", name="Images per prompt")).to_have_value("1")
        counted, sized = _box(page, "#txt2img-batch-count"), _box(page, "#txt2img-batch-size")
        assert abs(counted["y"] - sized["y"]) < 2 and counted["x"] < sized["x"]  # one row, Batch count first
        for name, value in (("width", 64), ("height", 64), ("steps", 2), ("seed", 31), ("batch-count", 2)):
            _set_number(page, f"txt2img-{name}", value)
        page.locator("#txt2img-run").click()
        images = page.locator("#txt2img-gallery .grid-container img")
        expect(images).to_have_count(2, timeout=120_000)
        expect(page.locator("#txt2img-run")).to_be_enabled(timeout=30_000)
        expect(page.locator("#txt2img-info")).to_contain_text("Seed 31")
        _shot(page, "batch-count-two-batches")
    finally:
        page.context.close()
