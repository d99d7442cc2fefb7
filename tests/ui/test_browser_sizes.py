"""Width and height typed off the multiples of 8 show the size a run uses (sd2_app/ui/size_boxes.py), in a real
Chromium: Image to image's number boxes after a run and when left, Text to image's sliders when their number box
is left. The rounding is the service's (`task_checks.image_side`: 100 -> 104).

Uses test_browser.py's app and browser fixtures (tiny checkpoints).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from tests.ui.browser_calls import run_and_wait, shown_size
from tests.ui.test_browser import _go, browser, expect, page, url  # noqa: F401

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_img2img_sizes_typed_off_the_multiples_of_8_show_the_size_the_run_used(page, tmp_path: Path) -> None:
    _go(page, "Image to image")
    picture = tmp_path / "wide.png"
    Image.new("RGB", (96, 64), (200, 40, 40)).save(picture)
    page.locator("#img2img-image input[type=file]").set_input_files(str(picture))
    width, height = (page.locator(f"#img2img-{side} input[type=number]") for side in ("width", "height"))
    expect(width).to_have_value("624")  # the image's size check has set the boxes (3:2 at 512x512 pixels)
    width.fill("100")
    height.fill("70")
    page.locator("#img2img-steps input[type=number]").fill("2")
    page.locator("#img2img-prompt textarea").fill("a red square")
    run_and_wait(page, "img2img")
    assert shown_size(page, "#img2img-gallery img", (104, 72)) == (104, 72)
    expect(width).to_have_value("104")
    expect(height).to_have_value("72")
    width.fill("99")
    height.fill("")  # empty: the image's own height, left empty
    page.locator("#img2img-prompt textarea").click()  # leaving the box shows the side a run would use
    expect(width).to_have_value("96")
    expect(height).to_have_value("")


def test_txt2img_size_typed_off_step_shows_the_size_a_run_uses_when_left(page) -> None:
    _go(page, "Text to image")
    width = page.locator("#txt2img-width input[type=number]")
    width.fill("100")
    width.press("Tab")
    expect(width).to_have_value("104")
    height = page.locator("#txt2img-height input[type=number]")
    height.fill("99")
    height.press("Tab")
    expect(height).to_have_value("96")
