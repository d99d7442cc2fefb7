"""Prompt styles in a real Chromium (Playwright), on `python app.py --tiny --styles STYLES.CSV` served in-process:
the Styles picker sits under Generate on the prompt tabs; picking a style changes the prompt the run uses; PNG
info's "Send to text to image" picks the styles found in a pasted prompt; with the picker under Stop, the settings
stay put on a laptop when the run line under Stop fills in. Screenshots go to tests/artifacts/.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from sd2_app.pipelines.metadata import attach_parameters, save_png
from tests.api.test_prompt_styles_app import served_with_styles
from tests.reliability_support import one_thread  # noqa: F401 (a fixture)
from tests.ui.browser_calls import settled, still_context
from tests.ui.test_browser import ARGS, ARTIFACTS, CHROMIUM, DESKTOP, _go, _set_number, expect, sync_api

pytestmark = [pytest.mark.browser, pytest.mark.slow]

STYLES_CSV = ("name,prompt,negative_prompt\n"
              "oil,\"oil painting, thick brush\",photo\n"
              "frame,\"a picture of {prompt}, framed\",\n")


@pytest.fixture(scope="module")
def page(one_thread: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    ARTIFACTS.mkdir(exist_ok=True)
    with served_with_styles(tmp_path_factory, csv=STYLES_CSV) as url, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        page = still_context(browser, viewport=DESKTOP).new_page()
        page.set_default_timeout(60_000)
        page.goto(url, wait_until="load")
        page.wait_for_function("window.sd2AppReady === true")
        yield page
        browser.close()


def _pick(page, prefix: str, name: str) -> None:
    """Pick a style as a visitor does: type its name in the picker, then Enter."""
    box = page.locator(f"#{prefix}-styles input").first
    box.click()
    box.fill(name)
    page.locator(f"#{prefix}-styles [role=listbox]").get_by_role("option", name=name, exact=True).wait_for()
    box.press("Enter")
    expect(page.locator(f"#{prefix}-styles .token", has_text=name)).to_be_visible()


def test_the_styles_picker_is_on_the_prompt_tabs(page) -> None:
    for tab, prefix in (("Text to image", "txt2img"), ("Image to image", "img2img"), ("Inpaint", "inpaint"),
                        ("Depth to image", "depth")):
        _go(page, tab)
        picker, run = page.locator(f"#{prefix}-styles"), page.locator(f"#{prefix}-run")
        expect(picker).to_be_visible()
        box, button = picker.bounding_box(), run.bounding_box()
        assert box is not None and button is not None and box["y"] > button["y"]  # under Generate, as in A1111
    _go(page, "X/Y/Z plot")
    assert page.locator("#xyz-styles").count() == 0  # the plot's cells take their prompts from the plot
    _go(page, "Text to image")


def test_picking_a_style_changes_the_prompt_that_runs(page) -> None:
    _go(page, "Text to image")
    page.locator("#txt2img-prompt textarea").fill("a cat")
    page.locator("#txt2img-negative textarea").fill("ugly")
    _set_number(page, "txt2img-width", 64)
    _set_number(page, "txt2img-height", 64)
    _set_number(page, "txt2img-steps", 2)
    _pick(page, "txt2img", "oil")
    _pick(page, "txt2img", "frame")
    page.locator("#txt2img-prompt textarea").click()  # the picker's list closes
    # the counters count the expanded prompts, as A1111's do (the tiny tokenizer: 2 tokens for "a cat")
    expect(page.locator("#txt2img-prompt-tokens")).to_have_text("38/75")
    expect(page.locator("#txt2img-negative-tokens")).to_have_text("10/75")
    page.screenshot(path=str(ARTIFACTS / "styles-picked.png"))
    page.locator("#txt2img-run").click()
    page.locator("#txt2img-gallery img").first.wait_for(timeout=120_000)
    expect(page.locator("#txt2img-info")).to_contain_text(
        "a picture of a cat, oil painting, thick brush, framed\nNegative prompt: ugly, photo\n")
    expect(page.locator("#txt2img-prompt textarea")).to_have_value("a cat")  # the box keeps what was written
    page.screenshot(path=str(ARTIFACTS / "styles-result.png"))


def test_png_info_send_picks_the_styles_found_in_the_prompt(page, tmp_path: Path) -> None:
    text = "a picture of a dog, framed\nSteps: 3, Sampler: Euler, CFG scale: 7, Seed: 9, Size: 64x64\n"
    picture = tmp_path / "styled.png"
    save_png(attach_parameters(Image.new("RGB", (64, 64), (20, 60, 120)), text), picture)
    _go(page, "Text to image")
    expect(page.locator("#txt2img-styles .token")).to_have_text(["oil", "frame"])  # the last test's pick
    _go(page, "PNG info")
    page.locator("#pnginfo-image input[type=file]").set_input_files(str(picture))
    expect(page.locator("#pnginfo-text textarea")).to_have_value(text)
    page.locator("#pnginfo-send").click()
    expect(page.locator("#txt2img-prompt textarea")).to_have_value("a dog")
    expect(page.locator("#txt2img-negative textarea")).to_have_value("")
    expect(page.locator("#txt2img-styles .token")).to_have_text(["frame"])
    page.screenshot(path=str(ARTIFACTS / "styles-pasted.png"))


def test_on_a_laptop_the_settings_stay_put_when_the_run_line_fills_in(page) -> None:
    """The Styles picker makes the run column taller than the prompts: the state line under Stop, filled in while
    a run is on ("Step 3/25"), after Stop or a refusal, pushed the picker and the whole settings column 23 px down
    under the visitor's pointer, and back up when it emptied. The line is the page script's copy of the info
    line's first line (static/app.js); here the info line says what a run's step says."""
    _go(page, "Text to image")
    settings, picker = page.locator("#txt2img-settings"), page.locator("#txt2img-styles")
    settled(page)  # the page as it settles (the token counters fill in after the load)
    line, info = page.locator("#txt2img-run-status .run-status-text"), page.locator("#txt2img-info")
    expect(line).to_have_text("")
    before = [settings.bounding_box()["y"], picker.bounding_box()["y"]]
    info.evaluate("(element) => { element.innerText = 'Step 3/25'; }")
    expect(line).to_have_text("Step 3/25")
    during = [settings.bounding_box()["y"], picker.bounding_box()["y"]]
    page.screenshot(path=str(ARTIFACTS / "styles-run-line-filled.png"))
    long = ("Schedule type Exponential is not available for the DDIM sampler; pick Automatic, or pick a sampler "
            "that offers it.")  # a refusal that wraps to more lines than the run column's width holds
    info.evaluate(f"(element) => {{ element.innerText = {long!r}; }}")
    expect(line).to_have_text(long)
    refused = [settings.bounding_box()["y"], picker.bounding_box()["y"]]
    info.evaluate("(element) => { element.innerText = ''; }")
    expect(line).to_have_text("")
    assert during == before and refused == before
