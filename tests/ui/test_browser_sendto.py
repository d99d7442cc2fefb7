"""A1111's habits in a real Chromium (Playwright): ↙ beside Stop reads generation parameters from the prompt box
(or, with the prompt empty, from the tab's last result), and "Send to" loops a result back into its own tab or on
to Outpaint and Depth, with its prompt and seed.

Uses test_browser.py's app and browser fixtures (tiny checkpoints); screenshots go to tests/artifacts/.
"""

from __future__ import annotations

import json
import re

import httpx
import pytest

from tests.ui.browser_calls import run_and_wait, seed_of, settled, shown_size
from tests.ui.test_browser import (  # noqa: F401
    ARTIFACTS, PHONE, _box, _go, _open, _paint_and_inpaint, _set_number, browser, expect, page, url)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# The reviewer's paste (docs: review F1), as A1111 copies a generation's parameters.
A1111_TEXT = ("a (red:1.3) fox in a [forest:city:0.5], masterpiece\nNegative prompt: blurry, lowres\n"
              "Steps: 7, Sampler: Euler a, Schedule type: Karras, CFG scale: 6, Seed: 1234, Size: 576x448, "
              "Model: v2-1_768-ema-pruned, Version: v1.10.1")
PROMPT, NEGATIVE = "a (red:1.3) fox in a [forest:city:0.5], masterpiece", "blurry, lowres"
IN_PROMPT = "The prompt holds generation parameters (\"Steps: …\"); use ↙ beside Stop to read them into the settings."
NOT_PARAMETERS = ("The prompt holds no generation parameters (a last line such as \"Steps: 20, Sampler: Euler a, "
                  "Seed: 1\", or a \"Negative prompt:\" line); nothing was changed.")


def _value(page, elem_id: str, kind: str = "input[type=number]"):
    return page.locator(f"#{elem_id} {kind}").first


def _expect_read(page, steps: str, seed: str, width: str, height: str) -> None:
    """Text to image holds the reviewer's paste, read into its fields, with these steps, seed and size."""
    expect(page.locator("#txt2img-prompt textarea")).to_have_value(PROMPT, timeout=30_000)
    expect(page.locator("#txt2img-negative textarea")).to_have_value(NEGATIVE)
    expect(_value(page, "txt2img-sampler", "input")).to_have_value("Euler a")
    expect(_value(page, "txt2img-schedule", "input")).to_have_value("Karras")
    expect(_value(page, "txt2img-steps")).to_have_value(steps)
    expect(page.get_by_role("spinbutton", name="Guidance scale (CFG)")).to_have_value("6")
    expect(_value(page, "txt2img-seed")).to_have_value(seed)
    expect(_value(page, "txt2img-width")).to_have_value(width)
    expect(_value(page, "txt2img-height")).to_have_value(height)
    expect(_value(page, "txt2img-checkpoint", "input")).to_have_value("SD 2.1 (768-v)")


def test_read_parameters_from_the_prompt_and_from_the_last_result(page) -> None:
    """The reviewer's A1111 text pasted into Prompt ran as the prompt, with nothing said. Now the result says the
    prompt holds parameters, ↙ reads them into every field, and ↙ with the prompt empty reads the last result's;
    a plain prompt is left as it is."""
    _go(page, "Text to image")
    for name, value in (("width", 64), ("height", 64), ("steps", 2)):
        _set_number(page, f"txt2img-{name}", value)
    box = page.locator("#txt2img-prompt textarea")
    box.fill(A1111_TEXT)
    # The paste's own count (the tiny tokenizer's: 191/225), not the empty box's 0/75, which passed at once.
    expect(page.locator("#txt2img-prompt-tokens")).to_have_text(re.compile(r"^\s*[1-9]\d*/\d+\s*$"), timeout=30_000)
    page.locator("#txt2img-run").click()  # as it is: run, and told
    expect(page.locator("#txt2img-info")).to_contain_text(IN_PROMPT, timeout=120_000)
    page.locator("#txt2img-read-parameters").click()
    _expect_read(page, "7", "1234", "576", "448")
    page.screenshot(path=str(ARTIFACTS / "read-parameters-pasted.png"))
    for name, value in (("width", 64), ("height", 64), ("steps", 2)):
        _set_number(page, f"txt2img-{name}", value)
    assert seed_of(run_and_wait(page, "txt2img")) == "1234"  # not the first run's line, whose prompt said it too
    assert IN_PROMPT not in page.locator("#txt2img-info").inner_text()
    _set_number(page, "txt2img-seed", 5)
    _set_number(page, "txt2img-steps", 9)
    box.fill("")
    page.locator("#txt2img-negative textarea").fill("")
    page.locator("#txt2img-read-parameters").click()  # the prompt is empty: the last result's parameters
    _expect_read(page, "2", "1234", "64", "64")
    box.fill("a plain prompt")
    page.locator("#txt2img-read-parameters").click()
    expect(page.locator(".toast-body", has_text=NOT_PARAMETERS)).to_be_visible(timeout=15_000)
    expect(box).to_have_value("a plain prompt")
    expect(_value(page, "txt2img-steps")).to_have_value("2")
    expect(page.locator("#txt2img-negative textarea")).to_have_value(NEGATIVE)


def _run(page, prefix: str) -> str:
    """Generate on the tab at 2 steps; the new result's seed."""
    _set_number(page, f"{prefix}-steps", 2)
    return seed_of(run_and_wait(page, prefix))


def _sent(page, button: str, tab: str, prefix: str, prompt: str, seed: str) -> None:
    """`button` sends to `tab`, which then holds the prompt and seed."""
    page.locator(button).click()
    expect(page.get_by_role("tab", name=tab)).to_have_attribute("aria-selected", "true", timeout=30_000)
    expect(page.locator(f"#{prefix}-prompt textarea")).to_have_value(prompt)
    expect(_value(page, f"{prefix}-seed")).to_have_value(seed)


def _calls_of(page, url: str, api_name: str) -> list[str]:
    """The page's queued calls of the event `api_name`, from now on (a list that grows as they come)."""
    fn_index = next(d["id"] for d in httpx.get(f"{url}config").json()["dependencies"] if d["api_name"] == api_name)
    calls: list[str] = []

    def seen(request) -> None:
        joined = "/gradio_api/queue/join" in request.url
        if joined and json.loads(request.post_data or "{}").get("fn_index") == fn_index:
            calls.append(api_name)

    page.on("request", seen)
    return calls


def test_send_to_loops_into_the_same_tab_and_on_to_outpaint_and_depth(page, url: str) -> None:
    """Image to image's result replaces its own input, Inpaint's goes back into its editor, and Text to image,
    Image to image and History send to Outpaint and Depth, each with the image, prompt and seed. Into Image to
    image the image keeps its own size (review F15), set once."""
    _go(page, "Text to image")
    for name, value in (("width", 64), ("height", 72)):
        _set_number(page, f"txt2img-{name}", value)
    page.locator("#txt2img-prompt textarea").fill("a lighthouse")
    seed = _run(page, "txt2img")
    _sent(page, "#txt2img-send-outpaint", "Outpaint", "outpaint", "a lighthouse", seed)
    assert shown_size(page, "#outpaint-image img", (64, 72)) == (64, 72)
    _go(page, "Text to image")
    sizing = _calls_of(page, url, "img2img_default_size")
    _sent(page, "#txt2img-send-img2img", "Image to image", "img2img", "a lighthouse", seed)
    # The sizes are the image's own, as A1111's send sets them (they were its shape at the checkpoint's 512,
    # 480x544), and stay so once the tab's default-size event, which the image's change runs, has come and gone
    # (here twice: this send first draws the tab, and the drawn box changes again).
    expect(_value(page, "img2img-width")).to_have_value("64")
    expect(_value(page, "img2img-height")).to_have_value("72")
    settled(page)
    assert sizing[:1] == ["img2img_default_size"]  # it ran after the send
    assert (_value(page, "img2img-width").input_value(), _value(page, "img2img-height").input_value()) == ("64", "72")
    seed = _run(page, "img2img")
    _sent(page, "#img2img-send-img2img", "Image to image", "img2img", "a lighthouse", seed)
    expect(page.locator("#img2img-image img").first).to_have_js_property("naturalWidth", 64)
    assert shown_size(page, "#img2img-image img", (64, 72)) == (64, 72)
    _go(page, "Image to image")
    _sent(page, "#img2img-send-depth", "Depth to image", "depth", "a lighthouse", seed)
    assert shown_size(page, "#depth-image img", (64, 72)) == (64, 72)
    _go(page, "Image to image")
    _sent(page, "#img2img-send-inpaint", "Inpaint", "inpaint", "a lighthouse", seed)
    _set_number(page, "inpaint-steps", 2)
    assert _paint_and_inpaint(page) == [64, 72]
    seed = seed_of(page.locator("#inpaint-info").inner_text())  # the run `_paint_and_inpaint` waited for
    _sent(page, "#inpaint-send-inpaint", "Inpaint", "inpaint", "a lighthouse", seed)
    tracker = page.locator("#inpaint-editor [data-testid=status-tracker]").first
    expect(tracker).to_have_class(re.compile(r"\bhide\b"), timeout=5_000)
    expect(page.locator("#inpaint-editor .empty.wrap")).to_have_count(0, timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / "sendto-inpaint-loop-sent.png"))
    page.locator("#inpaint-run").click()  # the sent image comes without the strokes painted before
    expect(page.locator("#inpaint-info")).to_have_text("The mask is empty: paint over the area to repaint (white = "
                                                       "repaint).", timeout=60_000)
    page.screenshot(path=str(ARTIFACTS / "sendto-inpaint-loop.png"))
    _go(page, "History")
    page.locator("#history-refresh").click()
    page.locator("#history-gallery img").first.wait_for(timeout=30_000)
    _sent(page, "#history-send-depth", "Depth to image", "depth", "a lighthouse", seed)  # the newest: inpaint's


def test_on_a_phone_send_to_buttons_wrap_whole_and_read_sits_beside_stop(browser, url: str) -> None:
    """At 390 px the five "Send to" buttons (and a result's Zip after them) wrap as whole one-line buttons inside
    the results column, and ↙ is on Generate and Stop's line."""
    page = _open(browser, url, PHONE)
    for prefix, tab in (("txt2img", "Text to image"), ("img2img", "Image to image"), ("history", "History")):
        _go(page, tab)
        row = _box(page, f"#{prefix}-send-row")
        buttons = page.locator(f"#{prefix}-send-row button")
        count = 5 if prefix == "history" else 6
        expect(buttons).to_have_count(count)
        expect(buttons.nth(count - 1)).to_have_text("Depth" if prefix == "history" else "Zip")
        for index in range(count):
            box = buttons.nth(index).bounding_box()
            assert box is not None and box["height"] < 32, (prefix, index, box)  # one line of text
            assert row["x"] <= box["x"] and box["x"] + box["width"] <= row["x"] + row["width"] + 1, (prefix, box)
        page.locator(f"#{prefix}-send-row").scroll_into_view_if_needed()
        page.screenshot(path=str(ARTIFACTS / f"phone-send-row-{prefix}.png"))
    _go(page, "Text to image")
    stop, read = _box(page, "#txt2img-stop"), _box(page, "#txt2img-read-parameters")
    assert abs(stop["y"] - read["y"]) < 2 and read["x"] >= stop["x"] + stop["width"], (stop, read)
    assert read["x"] + read["width"] <= PHONE["width"]
    page.context.close()
