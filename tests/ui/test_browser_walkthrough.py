"""Rough edges a first-time visitor met walking through every tab in a real Chromium (Playwright), each as the
visitor meets it: "Reuse last seed" before any result; PNG info's send of an image without parameters; a seed out of range; Image to image with one size box cleared. (The settings
staying put when a run starts needs the Styles box: test_prompt_styles_browser.py.)

Uses test_browser.py's app and browser fixtures (tiny checkpoints); each test opens its own page, so the order
does not matter. Screenshots go to tests/artifacts/.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from tests.ui.browser_calls import run_and_wait, shown_size
from tests.ui.test_browser import (ARTIFACTS, ASSETS, DESKTOP, _go, _open, _set_number, browser,  # noqa: F401
                                   expect, url)

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_reuse_last_seed_before_a_result_keeps_the_typed_seed_and_says_why(browser, url: str) -> None:
    page = _open(browser, url, DESKTOP)
    seed = page.locator("#txt2img-seed input")
    seed.fill("1234")
    seed.press("Tab")
    page.locator("#txt2img-reuse-seed").click()
    expect(page.locator(".toast-body", has_text="Generate an image first.")).to_be_visible(timeout=15_000)
    expect(seed).to_have_value("1234")  # was silently replaced by -1 (random)
    expect(page.locator("#txt2img-seed .error")).to_have_count(0)  # no "Error" badge over the seed box
    page.screenshot(path=str(ARTIFACTS / "walkthrough-reuse-seed-before-a-result.png"))
    # After a result the button does its job: the seed of that result.
    _set_number(page, "txt2img-width", 64)
    _set_number(page, "txt2img-height", 64)
    _set_number(page, "txt2img-steps", 1)
    seed.fill("-1")
    drawn = run_and_wait(page, "txt2img").split("Seed ", 1)[1].split(" ", 1)[0]
    page.locator("#txt2img-reuse-seed").click()
    expect(seed).to_have_value(drawn, timeout=15_000)
    page.context.close()


def test_reuse_and_send_take_the_seed_of_the_picked_image(browser, url: str) -> None:
    """Two images per prompt from seed 40 are seeds 40 and 41 (A1111's numbering); with the second picked, the
    text under the gallery is its own, and "Reuse last seed" and "Send to image to image" carry 41, as A1111's
    do; the line says both seeds."""
    page = _open(browser, url, DESKTOP)
    for elem_id, value in (("txt2img-width", 64), ("txt2img-height", 64), ("txt2img-steps", 1),
                           ("txt2img-batch-size", 2)):
        _set_number(page, elem_id, value)
    seed = page.locator("#txt2img-seed input")
    seed.fill("40")
    seed.press("Tab")
    assert run_and_wait(page, "txt2img").startswith("Seeds 40–41 · ")
    thumbnails = page.locator("#txt2img-gallery .thumbnail-item")
    expect(thumbnails).to_have_count(2)
    info = page.locator("#txt2img-info")
    expect(info).to_contain_text("Seed: 40,")  # the first image's text until another is picked
    thumbnails.nth(1).click()
    expect(info).to_contain_text("Seed: 41,")  # the picked image's parameters text, as A1111 shows it
    expect(info).to_contain_text("Batch pos: 1")
    assert info.inner_text().startswith("Seeds 40–41 · ")  # the result's line stays
    seed.fill("7")
    page.locator("#txt2img-reuse-seed").click()
    expect(seed).to_have_value("41", timeout=15_000)
    page.locator("#txt2img-send-img2img").click()
    expect(page.locator("#img2img-seed input")).to_have_value("41", timeout=15_000)
    page.screenshot(path=str(ARTIFACTS / "walkthrough-send-picked-seed.png"))
    page.context.close()


def test_png_info_send_of_an_image_without_parameters_says_what_to_do(browser, url: str) -> None:
    page = _open(browser, url, DESKTOP)
    _go(page, "PNG info")
    page.locator("#pnginfo-image input[type=file]").set_input_files(str(ASSETS / "landscape.png"))
    expect(page.locator("#pnginfo-text textarea")).to_have_value("This image carries no generation parameters.",
                                                                  timeout=30_000)
    page.locator("#pnginfo-send").click()
    # It said "Upload a PNG with parameters first." to a visitor who had just uploaded a PNG.
    said = ("There are no generation parameters to send: upload a PNG that carries them, or paste them into "
            "Parameters.")
    expect(page.locator(".toast-body", has_text=said)).to_be_visible(timeout=15_000)
    expect(page.get_by_role("tab", name="PNG info")).to_have_attribute("aria-selected", "true")
    page.screenshot(path=str(ARTIFACTS / "walkthrough-png-info-send-without-parameters.png"))
    page.context.close()


def test_a_seed_out_of_range_is_refused_naming_minus_one_as_the_box_does(browser, url: str) -> None:
    page = _open(browser, url, DESKTOP)
    expect(page.locator("#txt2img-seed label")).to_contain_text("Seed (-1 = random)")
    page.locator("#txt2img-seed input").fill("99999999999999")
    page.locator("#txt2img-run").click()
    # It said "between 0 and 4294967295", while the box itself offers -1.
    said = "Seed must be -1 (random) or between 0 and 4294967295, got 99999999999999."
    expect(page.locator("#txt2img-info")).to_have_text(said, timeout=30_000)
    # and under Stop, as every refusal is (the page script took a line starting "Seed " for a result's, and left it empty)
    expect(page.locator("#txt2img-run-status .run-status-text")).to_have_text(said)
    page.context.close()


def test_img2img_with_one_size_box_cleared_keeps_that_side_of_the_image(browser, url: str, tmp_path: Path) -> None:
    page = _open(browser, url, DESKTOP)
    _go(page, "Image to image")
    picture = tmp_path / "wide.png"
    Image.new("RGB", (192, 128), (200, 40, 40)).save(picture)
    page.locator("#img2img-image input[type=file]").set_input_files(str(picture))
    width, height = (page.locator(f"#img2img-{side} input[type=number]") for side in ("width", "height"))
    expect(width).to_have_value("624", timeout=30_000)  # the image's shape at 512x512 pixels
    width.fill("100")
    height.fill("")  # leaving the width box shows it as a run uses it: the server's rounding, halves up
    expect(width).to_have_value("104")
    height.press("Tab")
    _set_number(page, "img2img-steps", 2)
    page.locator("#img2img-run").click()
    image = page.locator("#img2img-gallery img").first
    image.wait_for(timeout=120_000)
    # The width as the box shows it and the image's own height; the typed width was once dropped without a word and
    # the run kept 192x128.
    assert shown_size(page, "#img2img-gallery img", (104, 128)) == (104, 128)
    expect(width).to_have_value("104")
    page.screenshot(path=str(ARTIFACTS / "walkthrough-img2img-one-size-box.png"))
    page.context.close()

