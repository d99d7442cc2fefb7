"""Rough edges of the page in a real Chromium (Playwright), on `python app.py --tiny --styles STYLES.CSV` served
in-process: every "Send to" picks the prompt styles again where the tab has the Styles box (History's sends read
them from the PNG's prompts, as PNG info's send does; a result's sends carry the tab's pick), a paste of
something that is not an image into the inpaint editor is said, as an upload of one is, and on a phone the results
a run scrolled into view stay there when it ends. Screenshots go to tests/artifacts/.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.api.test_prompt_styles_app import served_with_styles
from tests.reliability_support import one_thread  # noqa: F401 (a fixture)
from tests.ui.test_browser import ARGS, ARTIFACTS, CHROMIUM, DESKTOP, PHONE, _go, _set_number, expect, sync_api
from tests.ui.test_prompt_styles_browser import STYLES_CSV, _pick

pytestmark = [pytest.mark.browser, pytest.mark.slow]

NOT_AN_IMAGE = "The uploaded image could not be read: not a PNG, JPEG or WebP image."


@pytest.fixture(scope="module")
def url(one_thread: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    ARTIFACTS.mkdir(exist_ok=True)
    with served_with_styles(tmp_path_factory, csv=STYLES_CSV) as served:
        yield served


@pytest.fixture(scope="module")
def browser(url: str) -> Iterator[object]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield browser
        browser.close()


def _open(browser, url: str, viewport: dict[str, int] = DESKTOP):
    context = browser.new_context(viewport=viewport)
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=url)
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(url, wait_until="load")
    page.wait_for_function("window.sd2AppReady === true")
    return page


def _generate(page, prompt: str, negative: str) -> None:
    """A 64x64, 2-step text to image run with the styles picked now."""
    _go(page, "Text to image")
    page.locator("#txt2img-prompt textarea").fill(prompt)
    page.locator("#txt2img-negative textarea").fill(negative)
    for name, value in (("width", 64), ("height", 64), ("steps", 2)):
        _set_number(page, f"txt2img-{name}", value)
    page.locator("#txt2img-run").click()
    expect(page.locator("#txt2img-info")).to_contain_text("Seed ", timeout=120_000)


def _expect_sent(page, prefix: str, prompt: str, negative: str, styles: list[str]) -> None:
    expect(page.locator(f"#{prefix}-prompt textarea")).to_have_value(prompt)
    expect(page.locator(f"#{prefix}-negative textarea")).to_have_value(negative)
    expect(page.locator(f"#{prefix}-styles .token")).to_have_text(styles)


def test_every_send_picks_the_styles_again(browser, url: str) -> None:
    page = _open(browser, url)
    _go(page, "Text to image")
    _pick(page, "txt2img", "oil")
    _pick(page, "txt2img", "frame")
    _generate(page, "a cat", "ugly")
    expect(page.locator("#txt2img-info")).to_contain_text("a picture of a cat, oil painting, thick brush, framed\n"
                                                          "Negative prompt: ugly, photo\n")
    for target in ("img2img", "inpaint", "upscale"):
        _go(page, "History")
        page.locator("#history-send-" + target).click()
        _expect_sent(page, target, "a cat", "ugly", ["oil", "frame"])
        # the counters count the styled prompts, as Generate will run them (the tiny tokenizer's counts)
        expect(page.locator(f"#{target}-prompt-tokens")).to_have_text("38/75")
        expect(page.locator(f"#{target}-negative-tokens")).to_have_text("10/75")
        page.screenshot(path=str(ARTIFACTS / f"polish-history-send-{target}.png"))

    # A result made without styles: History's send leaves none picked (the prompts alone remake it).
    _go(page, "Text to image")
    while page.locator("#txt2img-styles .token-remove").count():
        page.locator("#txt2img-styles .token-remove").first.click()
    _generate(page, "a dog", "")
    expect(page.locator("#txt2img-info")).to_contain_text("a dog\nSteps: 2")
    _go(page, "History")
    page.locator("#history-send-img2img").click()
    _expect_sent(page, "img2img", "a dog", "", [])

    # A result's own "Send to" carries the tab's pick with the prompts it copies.
    _go(page, "Text to image")
    _pick(page, "txt2img", "frame")
    page.locator("#txt2img-prompt textarea").click()  # the picker's list closes
    page.locator("#txt2img-send-inpaint").click()
    _expect_sent(page, "inpaint", "a dog", "", ["frame"])
    page.screenshot(path=str(ARTIFACTS / "polish-result-send-inpaint.png"))
    page.context.close()


RED_PNG_TO_CLIPBOARD = """async () => {
  const canvas = document.createElement("canvas");
  canvas.width = 64; canvas.height = 48;
  const paint = canvas.getContext("2d");
  paint.fillStyle = "red"; paint.fillRect(0, 0, 64, 48);
  const blob = await new Promise((done) => canvas.toBlob(done, "image/png"));
  await navigator.clipboard.write([new ClipboardItem({"image/png": blob})]);
}"""


def test_a_paste_that_is_not_an_image_is_said_in_the_inpaint_editor(browser, url: str) -> None:
    """The editor's Paste button ignored a clipboard without an image, without a word; it is said in the words an
    upload of a file that is not an image gets, once, and an image pasted after opens with nothing said."""
    page = _open(browser, url)
    _go(page, "Inpaint")
    paste = page.locator("#inpaint-editor button[aria-label=Paste]")
    for name, fill in (("text", "navigator.clipboard.writeText('a cat on a rock')"),
                       ("nothing", "navigator.clipboard.write([])")):
        page.evaluate(fill)
        paste.click()
        expect(page.locator(".toast-body").last).to_contain_text(NOT_AN_IMAGE, timeout=30_000)
        page.wait_for_timeout(1500)  # a second refusal of the same paste would have arrived by now
        assert " ".join(page.locator(".toast-body").all_inner_texts()).count(NOT_AN_IMAGE) == 1
        page.screenshot(path=str(ARTIFACTS / f"polish-inpaint-paste-{name}.png"))
        for close in page.locator(".toast-body button").all():
            close.click()
        expect(page.locator(".toast-body")).to_have_count(0)
    page.evaluate(RED_PNG_TO_CLIPBOARD)
    paste.click()
    expect(page.locator("#inpaint-editor .empty.wrap")).to_have_count(0)  # the hint gave way to the image
    page.wait_for_timeout(2000)
    expect(page.locator(".toast-body")).to_have_count(0)
    page.screenshot(path=str(ARTIFACTS / "polish-inpaint-paste-image.png"))
    page.context.close()


RESULTS_TOP = "Math.round(document.getElementById('txt2img-results').getBoundingClientRect().top)"


def test_on_a_phone_the_results_stay_in_view_when_the_run_ends(browser, url: str) -> None:
    """Generate scrolls the results to 8 px (0.5rem) under the top of a phone's screen (they went to 0: their label
    touched the edge), and the run's buttons ride at its bottom; when the run ended they went back into the page
    above the results, which jumped down by their height (242 px here, with the Styles box; 96 px without)."""
    page = _open(browser, url, PHONE)
    _go(page, "Text to image")
    for name, value in (("width", 64), ("height", 64), ("steps", 4)):
        _set_number(page, f"txt2img-{name}", value)
    page.evaluate("window.scrollTo(0, 0)")
    page.locator("#txt2img-run").click()
    page.wait_for_function(f"{RESULTS_TOP} === 8", timeout=10_000)  # scrolled to the results, smoothly
    assert page.locator("#txt2img-stop").is_enabled()  # still running: the buttons are in the bar
    page.screenshot(path=str(ARTIFACTS / "polish-phone-running.png"))
    expect(page.locator("#txt2img-info")).to_contain_text("Seed ", timeout=120_000)
    expect(page.locator("#txt2img-stop")).to_be_disabled()
    page.wait_for_timeout(500)
    assert page.evaluate(RESULTS_TOP) == 8
    page.screenshot(path=str(ARTIFACTS / "polish-phone-done.png"))
    page.context.close()
