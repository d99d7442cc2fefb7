"""Rough edges of the page in a real Chromium (Playwright), on `python app.py --tiny --styles STYLES.CSV` served
in-process: every "Send to" picks the prompt styles again where the tab has the Styles box (History's sends read
them from the PNG's prompts, as PNG info's send does; a result's sends carry the tab's pick), a paste of
something that is not an image into the inpaint editor is said, as an upload of one is, on a phone the results a
run scrolled into view stay there when it ends, and a token count that comes back late does not replace a newer
one. Screenshots go to tests/artifacts/.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator

import pytest

from tests.api.test_prompt_styles_app import served_with_styles
from tests.reliability_support import one_thread  # noqa: F401 (a fixture)
from tests.ui.browser_calls import ServerCalls, run_and_wait, settled, still_context
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
    context = still_context(browser, viewport=viewport)
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
    run_and_wait(page, "txt2img")


def _expect_sent(page, prefix: str, prompt: str, negative: str, styles: list[str]) -> None:
    expect(page.locator(f"#{prefix}-prompt textarea")).to_have_value(prompt, timeout=30_000)  # a queued event
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
        expect(page.locator(f"#{target}-prompt-tokens")).to_have_text("38/75", timeout=30_000)
        expect(page.locator(f"#{target}-negative-tokens")).to_have_text("10/75", timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / f"polish-history-send-{target}.png"))

    # A result made without styles: History's send leaves none picked (the prompts alone remake it).
    _go(page, "Text to image")
    while page.locator("#txt2img-styles .token-remove").count():
        page.locator("#txt2img-styles .token-remove").first.click()
    _generate(page, "a dog", "")
    expect(page.locator("#txt2img-info")).to_contain_text("a dog\nSteps: 2")
    _go(page, "History")
    # A send takes the image the gallery shows: the tab's refresh, which brings the (newest) dog, lands first.
    expect(page.locator("#history-table")).to_contain_text("a dog", timeout=30_000)
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
        _paste_is_refused_once(page, fill, paste, f"polish-inpaint-paste-{name}")
    page.evaluate(RED_PNG_TO_CLIPBOARD)
    paste.click()
    expect(page.locator("#inpaint-editor .empty.wrap")).to_have_count(0)  # the hint gave way to the image
    settled(page)  # a refusal of the pasted image would have come by now
    expect(page.locator(".toast-body")).to_have_count(0)
    page.screenshot(path=str(ARTIFACTS / "polish-inpaint-paste-image.png"))
    page.context.close()


def _paste_is_refused_once(page, fill: str, paste, shot: str) -> None:
    """Put something in the clipboard (`fill`, a script), press `paste`: NOT_AN_IMAGE is said, once."""
    page.evaluate(fill)
    paste.click()
    expect(page.locator(".toast-body").last).to_contain_text(NOT_AN_IMAGE, timeout=30_000)
    settled(page)  # a second refusal of the same paste would have arrived by now
    assert " ".join(page.locator(".toast-body").all_inner_texts()).count(NOT_AN_IMAGE) == 1
    page.screenshot(path=str(ARTIFACTS / f"{shot}.png"))
    for close in page.locator(".toast-body button").all():
        close.click()
    expect(page.locator(".toast-body")).to_have_count(0)


@pytest.mark.parametrize("tab,box,group", [
    ("Image to image", "img2img-image", None), ("Depth to image", "depth-image", None),
    ("Outpaint", "outpaint-image", None), ("Upscale ×4", "upscale-image", None),
    ("X/Y/Z plot", "xyz-image", "Init image (optional")])
def test_a_paste_that_is_not_an_image_is_said_in_an_image_box(browser, url: str, tab: str, box: str,
                                                              group: str | None) -> None:
    """An image box's "Paste from clipboard" ignored a clipboard without an image, without a word (and Gradio takes
    the box's file input away while the clipboard is its source): it is said as in the inpaint editor, once; an
    image pasted after fills the box with nothing said."""
    page = _open(browser, url)
    _go(page, tab)
    if group is not None:  # the box is in a closed group: open it
        page.get_by_text(group).first.click()
    paste = page.locator(f"#{box} button[aria-label='Paste from clipboard']")
    _paste_is_refused_once(page, "navigator.clipboard.writeText('a cat on a rock')", paste, f"polish-paste-{box}")
    page.evaluate(RED_PNG_TO_CLIPBOARD)
    paste.click()
    expect(page.locator(f"#{box} img")).to_have_count(1, timeout=30_000)
    settled(page)  # a refusal of the pasted image would have come by now
    expect(page.locator(".toast-body")).to_have_count(0)
    page.context.close()


def test_the_paste_check_wraps_the_clipboard_only_for_a_paste_button_s_click(browser, url: str) -> None:
    """The check wrapped navigator.clipboard.read for the whole page: any read within 2 s of a click in the editor
    (the page's own, another script's) was taken for the editor's paste and a clipboard of text refused there.
    Now the wrap lives only while a checked box's button's click is handled, and is gone after."""
    page = _open(browser, url)
    _go(page, "Inpaint")
    page.evaluate("navigator.clipboard.writeText('a cat on a rock')")
    page.locator("#inpaint-editor").click(position={"x": 200, "y": 200})  # in the editor, not its Paste button
    assert page.evaluate("navigator.clipboard.read().then((items) => items.length)") == 1
    settled(page)  # a refusal of what was read would have come by now
    expect(page.locator(".toast-body")).to_have_count(0)  # before: the editor's refusal of what was read
    page.locator("#inpaint-editor button[aria-label=Paste]").click()
    expect(page.locator(".toast-body").last).to_contain_text(NOT_AN_IMAGE, timeout=30_000)
    assert page.evaluate("Object.getOwnPropertyNames(navigator.clipboard)") == []  # the browser's read is back
    page.context.close()


# The page's reads of the results' place are counted, and the frames drawn, from now on; the test reads it with the
# browser's own method (its polling is not counted).
COUNT_READS = """() => {
  const read = Element.prototype.getBoundingClientRect, results = document.getElementById("txt2img-results");
  window.counted = { reads: 0, frames: 0 };
  window.resultsTop = () => Math.round(read.call(results).top);
  Element.prototype.getBoundingClientRect = function () {
    if (this === results) window.counted.reads += 1;
    return read.call(this);
  };
  const frame = () => { window.counted.frames += 1; requestAnimationFrame(frame); };
  requestAnimationFrame(frame);
}"""
RESULTS_TOP = "window.resultsTop()"
# The results' top 8 px under the screen's, give or take the pixel a fractional layout height rounds away.
IN_PLACE = f"Math.abs({RESULTS_TOP} - 8) <= 1"


def test_on_a_phone_the_results_stay_in_view_when_the_run_ends(browser, url: str) -> None:
    """Generate scrolls the results to 8 px (0.5rem) under the top of a phone's screen, and the run's buttons ride
    in a bar at its bottom. The scroll went 100 ms after the click: an answer that came later (a busy server, a
    slow network) moved the buttons out of the page after it, and the results' top ended under the screen's edge
    (-102 px here). When the run ended the buttons went back into the page above the results, which jumped down by
    their height (242 px here, with the Styles box; 96 px without). The page reads the results' place when Stop
    or the page's size changes (a handful of times a run), not in every frame drawn while the run is on."""
    page = _open(browser, url, PHONE)
    _go(page, "Text to image")
    for name, value in (("width", 64), ("height", 64), ("steps", 100)):  # seconds of run: Stop stays enabled
        _set_number(page, f"txt2img-{name}", value)
    page.evaluate("window.scrollTo(0, 0)")
    page.evaluate(COUNT_READS)
    page.route("**/gradio_api/queue/join*", lambda route: (time.sleep(1), route.continue_()))  # a slow answer
    page.locator("#txt2img-run").click()
    expect(page.locator("#txt2img-stop")).to_be_enabled()
    page.wait_for_function(IN_PLACE, timeout=30_000)  # the smooth scroll's end (before: -102)
    page.wait_for_timeout(500)
    assert (page.evaluate(IN_PLACE), page.locator("#txt2img-stop").is_enabled()) == (True, True)
    page.screenshot(path=str(ARTIFACTS / "polish-phone-running.png"))
    expect(page.locator("#txt2img-info")).to_contain_text("Seed ", timeout=120_000)
    expect(page.locator("#txt2img-stop")).to_be_disabled()
    page.wait_for_function(IN_PLACE, timeout=30_000)  # before: 250, for good (the buttons' 242 more)
    settled(page)  # the run's end has landed whole
    counted = page.evaluate("window.counted")
    assert counted["frames"] > 100 and counted["reads"] <= 8, counted  # before: a read a frame (reads ~ frames)
    page.screenshot(path=str(ARTIFACTS / "polish-phone-done.png"))
    page.unroute("**/gradio_api/queue/join*")
    page.context.close()


@pytest.fixture
def slow_counts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The texts counted, in order; counting "slow" takes 3 s (the app serves in this process)."""
    from sd2_app.api.service import Service

    counted: list[str] = []
    original = Service.count_tokens

    def count_tokens(self: Service, text: str, checkpoint: str, **options: bool) -> str:
        counted.append(text)
        if text == "slow":
            time.sleep(3)
        return original(self, text, checkpoint, **options)

    monkeypatch.setattr(Service, "count_tokens", count_tokens)
    return counted


def test_a_late_token_count_does_not_replace_a_newer_one(browser, url: str, slow_counts: list[str]) -> None:
    """A text pasted while the count of the one before is still on its way: that count came back last and stayed,
    the counter showing 4/75 beside a box of 18 tokens (the tiny tokenizer's counts)."""
    page = _open(browser, url)
    box, counter = page.locator("#txt2img-negative textarea"), page.locator("#txt2img-negative-tokens")
    expect(counter).to_have_text("0/75", timeout=30_000)
    calls = ServerCalls(page)
    box.fill("slow")
    deadline = time.monotonic() + 30
    while "slow" not in slow_counts:  # past the typing pause: the count of "slow" is on its way (3 s)
        assert time.monotonic() < deadline, slow_counts
        page.wait_for_timeout(50)
    box.fill("one two three four five")
    calls.settle()  # every count sent has been answered and has landed, the late one of "slow" too
    expect(counter).to_have_text("18/75")  # the late "4/75" stayed for good
    assert [text for text in slow_counts if text in ("slow", "one two three four five")] == [
        "slow", "one two three four five"]
    page.screenshot(path=str(ARTIFACTS / "polish-late-count.png"))
    page.context.close()


def test_a_counter_line_holds_its_place_before_its_first_count(browser, url: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The counter lines are there, blank, before their first count lands: an empty line took no room, and the
    two counts above Text to image's results then pushed them down by 45.5 px (on a phone, while Generate's scroll
    to the results was on its way, which then stopped short of them)."""
    from sd2_app.api.service import Service

    gate = threading.Event()
    original = Service.count_tokens

    def count_tokens(self: Service, text: str, checkpoint: str, **options: bool) -> str:
        gate.wait(30)  # the counts of the page's load wait here
        return original(self, text, checkpoint, **options)

    monkeypatch.setattr(Service, "count_tokens", count_tokens)
    page = _open(browser, url, PHONE)
    place = """() => [document.getElementById("txt2img-prompt-tokens").getBoundingClientRect().height,
                      document.getElementById("txt2img-results").getBoundingClientRect().top + window.scrollY]"""
    counter = page.locator("#txt2img-prompt-tokens [data-testid=markdown]")  # the line, not Gradio's timer by it
    expect(counter).to_have_text("\u00a0")  # not counted yet
    before = page.evaluate(place)
    assert before[0] > 10, before  # a line of text, not an empty box
    gate.set()
    expect(counter).to_have_text(re.compile(r"\b\d+/75\b"), timeout=30_000)
    expect(page.locator("#txt2img-negative-tokens")).to_have_text("0/75", timeout=30_000)
    assert page.evaluate(place) == before
    page.context.close()


def test_the_line_under_stop_leaves_out_gradios_timer(browser, url: str) -> None:
    """The line under Stop repeats the tab's info line; Gradio's status tracker sits in the same block (a child
    of it) and shows an event's timer there ("0.3s", e.g. while Stop's own event runs), which the line showed
    as if it were the info. A tracker child with a timer in it leaves the line as the info's own text says."""
    page = _open(browser, url)
    _go(page, "Text to image")
    assert page.locator("#txt2img-info > [data-testid=status-tracker]").count() == 1  # where Gradio puts it
    page.evaluate("""() => {
        const tracker = document.createElement("div");
        tracker.setAttribute("data-testid", "status-tracker");
        tracker.textContent = "0.3s";
        document.getElementById("txt2img-info").prepend(tracker);
    }""")
    line = page.locator("#txt2img-run-status .run-status-text")
    seen = set()
    for _ in range(6):  # the page script copies the info line every 250 ms
        page.wait_for_timeout(250)
        seen.add(line.text_content())
    assert seen == {""}, seen
    page.context.close()
