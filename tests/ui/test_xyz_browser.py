"""The X/Y/Z plot tab in a real Chromium (Playwright) at 1440x900, on `python app.py --tiny --styles STYLES.CSV`
served in-process: the Text to image tab's Hires fix group and the Styles axis, as a visitor uses them; an init
image hides the hires fix. Screenshots go to tests/artifacts/ for a person to look at.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from tests.reliability_support import one_thread  # noqa: F401 (a fixture)
from tests.ui.test_browser import _go, _pick, _set_number, _shot, expect
from tests.ui.test_prompt_styles_browser import page  # noqa: F401 (a fixture: the styles app, oil and frame)

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_a_styles_plot_with_the_hires_fix_from_the_tab(page, tmp_path: Path) -> None:  # noqa: F811
    """Styles on X (the host's two styles picked), the hires fix on at 1.5x: two 96x96 cells labelled by their
    style; an init image then hides the hires fix and turns it off (an image-to-image plot has none)."""
    _go(page, "X/Y/Z plot")
    _pick(page, "xyz-x-type", "Styles")
    for name in ("oil", "frame"):
        _pick(page, "xyz-x-picked", name)
    page.keyboard.press("Escape")
    for elem_id, value in (("xyz-steps", 2), ("xyz-width", 64), ("xyz-height", 64)):
        _set_number(page, elem_id, value)
    page.locator("#xyz-hires-accordion button").first.click()
    page.locator("#xyz-hires input[type=checkbox]").check()
    _set_number(page, "xyz-hires-scale", 1.5)
    expect(page.locator("#xyz-hires-size")).to_have_text("Upscales from 64x64 to 96x96.")
    _shot(page, "xyz-hires-styles-settings")
    page.locator("#xyz-run").click()
    expect(page.locator("#xyz-files a").first).to_be_visible(timeout=180_000)
    expect(page.locator("#xyz-gallery img")).to_have_count(3)
    _shot(page, "xyz-hires-styles-result")
    captions = page.locator("#xyz-gallery .caption-label").all_inner_texts()
    assert [caption.split(" · ")[0] for caption in captions] == ["Grid", "Styles: oil", "Styles: frame"]
    sizes = page.locator("#xyz-gallery img").evaluate_all("imgs => imgs.map(i => [i.naturalWidth, i.naturalHeight])")
    assert sizes[1:] == [[96, 96], [96, 96]]
    init = tmp_path / "init.png"
    Image.new("RGB", (64, 64), (90, 120, 30)).save(init)
    expect(page.locator("#xyz-hires-accordion")).to_be_visible()
    page.get_by_role("button", name="Init image (optional").click()
    page.locator("#xyz-image input[type=file]").set_input_files(str(init))
    expect(page.locator("#xyz-hires-accordion")).to_be_hidden()
    _shot(page, "xyz-init-image-hides-hires")
    page.locator("#xyz-image button[aria-label='Remove Image']").first.click()  # text to image again:
    expect(page.locator("#xyz-hires-accordion")).to_be_visible()  # the fix is shown again, and off
    expect(page.locator("#xyz-hires input[type=checkbox]")).not_to_be_checked()


def test_values_typed_for_another_kind_do_not_replace_the_picked_samplers(page) -> None:  # noqa: F811
    """Typed values win over picked ones (an API caller's x_values), so the tab empties the hidden text box when a
    picked kind is chosen: Steps typed as "1, 2", then Sampler with Euler picked, runs one Euler cell (the stale
    "1, 2" would be read as samplers and refused)."""
    _go(page, "X/Y/Z plot")
    _pick(page, "xyz-x-type", "Steps")
    page.locator("#xyz-x-values textarea").fill("1, 2")
    _pick(page, "xyz-x-type", "Sampler")
    _pick(page, "xyz-x-picked", "Euler")
    page.keyboard.press("Escape")
    for elem_id, value in (("xyz-steps", 1), ("xyz-width", 64), ("xyz-height", 64)):
        _set_number(page, elem_id, value)
    page.locator("#xyz-run").click()
    expect(page.locator("#xyz-files a").first).to_be_visible(timeout=180_000)
    captions = page.locator("#xyz-gallery .caption-label").all_inner_texts()
    assert [caption.split(" · ")[0] for caption in captions] == ["Grid", "Euler"]
