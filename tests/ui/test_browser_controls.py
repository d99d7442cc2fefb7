"""Controls a visitor presses or reads in a real Chromium (Playwright): Generate and Stop side by side on a phone
(stacked beside the prompts on a laptop), Image to image's size boxes (what fills them, and what their note says),
the hires fix's line with the size it upscales to, and the Models tab's "Unload all models…", which asks before
it unloads.

Uses test_browser.py's app and browser fixtures (tiny checkpoints); screenshots go to tests/artifacts/.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.ui.browser_calls import run_and_wait, settled, shown_size
from tests.ui.test_browser import (ARTIFACTS, DESKTOP, PHONE, _box, _go, _open, _pick, browser,  # noqa: F401
                                   expect, page, url)
from tests.ui.test_browser_polish import slow_counts  # noqa: F401 (a fixture: counting "slow" takes 3 s)

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.mark.parametrize("viewport", [PHONE, DESKTOP], ids=["phone", "desktop"])
def test_generate_and_stop_sit_in_one_row_on_a_phone_and_stacked_on_a_laptop(browser, url: str,
                                                                            viewport: dict[str, int]) -> None:
    page = _open(browser, url, viewport)
    for tab in ("txt2img", "img2img"):
        _go(page, "Text to image" if tab == "txt2img" else "Image to image")
        run, stop = _box(page, f"#{tab}-run"), _box(page, f"#{tab}-stop")
        if viewport is PHONE:
            # One row: the same top and height, Stop to the right of a Generate over twice its width.
            assert (run["y"], run["height"]) == (stop["y"], stop["height"]), (run, stop)
            assert run["x"] + run["width"] < stop["x"] and run["height"] < 50, (run, stop)
            assert stop["x"] + stop["width"] <= PHONE["width"], stop
            assert 2 < run["width"] / stop["width"] < 3.5, (run, stop)
        else:
            # Beside the prompts: Generate (tall) above Stop, which shares the column's width with ↙ (A1111's
            # "read generation parameters") at its right.
            read = _box(page, f"#{tab}-read-parameters")
            assert run["y"] + run["height"] < stop["y"] and read["y"] == stop["y"], (run, stop, read)
            assert run["x"] == stop["x"] and stop["x"] + stop["width"] < read["x"], (run, stop, read)
            assert read["x"] + read["width"] == run["x"] + run["width"] and read["width"] < stop["width"] / 2
            assert run["height"] > 80, run
    page.screenshot(path=str(ARTIFACTS / f"controls-run-buttons-{'phone' if viewport is PHONE else 'desktop'}.png"))
    page.context.close()


def _number(page, elem_id: str) -> str:
    return page.locator(f"#{elem_id} input[type=number]").input_value()


def test_img2img_size_boxes_are_set_from_the_image_as_their_note_says(page, tmp_path: Path) -> None:
    _go(page, "Image to image")
    expect(page.locator("#img2img-width [data-testid=block-info]")).to_have_text("Width")
    expect(page.locator("#img2img-height [data-testid=block-info]")).to_have_text("Height")
    expect(page.locator("#img2img-size-note")).to_have_text(
        "A new image (or checkpoint) sets width and height: the image's shape at the checkpoint's resolution "
        "(square until there is an image); an image sent here keeps its own size. Clear both to keep the image's "
        "own size, one to keep that side.")
    picture = tmp_path / "wide.png"
    Image.new("RGB", (192, 128), (200, 40, 40)).save(picture)
    page.locator("#img2img-image input[type=file]").set_input_files(str(picture))
    # 3:2 at the tiny "SD 2.1 base" checkpoint's 512x512 pixels, sides multiples of 8 (api/resize_modes.py).
    expect(page.locator("#img2img-width input[type=number]")).to_have_value("624")
    expect(page.locator("#img2img-height input[type=number]")).to_have_value("416")
    page.screenshot(path=str(ARTIFACTS / "controls-img2img-size.png"))
    _pick(page, "img2img-checkpoint", "SD 2.0 (768-v)")  # a new checkpoint: its 768x768 pixels
    expect(page.locator("#img2img-width input[type=number]")).to_have_value("944")
    expect(page.locator("#img2img-height input[type=number]")).to_have_value("624")
    # Cleared boxes: the run keeps the image's own size.
    for side in ("width", "height"):
        page.locator(f"#img2img-{side} input[type=number]").fill("")
    page.locator("#img2img-steps input[type=number]").fill("2")
    page.locator("#img2img-prompt textarea").fill("a red square")
    run_and_wait(page, "img2img")
    assert shown_size(page, "#img2img-gallery img", (192, 128)) == (192, 128)


UPSCALE_NOTE = ("At most 12 steps fit this server's job limit for this 512x512 image with these settings (Steps is "
                "lowered to 12 when it is higher).")


def test_a_512_result_sent_to_upscale_gets_the_steps_the_job_limit_allows(page, tmp_path: Path) -> None:
    """The default job cap (6,553,600) over one step of a 512x512 input with guidance (2 x 262,144): 12 steps.
    A 512 result sent with its 20 steps comes to Upscale at 12, with the note; a small image leaves the steps
    alone and hides the note; an uploaded 512 image brings the tab's 50 down to 12 again."""
    _go(page, "Text to image")
    for box, value in (("txt2img-width", 512), ("txt2img-height", 512), ("txt2img-steps", 20)):
        page.locator(f"#{box} input[type=number]").fill(str(value))
        page.locator(f"#{box} input[type=number]").press("Enter")
    page.locator("#txt2img-prompt textarea").fill("a wide valley")
    page.locator("#txt2img-run").click()
    page.locator("#txt2img-gallery img").first.wait_for(timeout=180_000)
    expect(page.locator("#txt2img-run")).to_be_enabled(timeout=30_000)
    page.locator("#txt2img-send-upscale").click()
    expect(page.get_by_role("tab", name="Upscale ×4")).to_have_attribute("aria-selected", "true", timeout=30_000)
    steps, note = page.locator("#upscale-steps input[type=number]"), page.locator("#upscale-steps-note")
    expect(steps).to_have_value("12", timeout=30_000)
    expect(note).to_have_text(UPSCALE_NOTE, timeout=10_000)
    note.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "controls-upscale-steps-fit.png"))
    small, large = tmp_path / "small.png", tmp_path / "large.png"
    Image.new("RGB", (128, 128), (40, 90, 200)).save(small)
    Image.new("RGB", (512, 512), (40, 90, 200)).save(large)
    steps.fill("50")
    steps.press("Enter")
    page.locator("#upscale-image button[aria-label='Remove Image']").first.click()
    page.locator("#upscale-image input[type=file]").set_input_files(str(small))
    expect(note).to_be_hidden(timeout=30_000)
    expect(steps).to_have_value("50")
    page.locator("#upscale-image button[aria-label='Remove Image']").first.click()
    page.locator("#upscale-image input[type=file]").set_input_files(str(large))
    expect(steps).to_have_value("12", timeout=30_000)
    expect(note).to_have_text(UPSCALE_NOTE, timeout=10_000)


def test_unload_all_sits_apart_from_load_and_asks_first(page) -> None:
    _go(page, "Models")
    ask = page.locator("#models-unload-all")
    expect(ask).to_have_text("Unload all models…")
    assert "stop" not in (ask.get_attribute("class") or "").split()  # plain style, not the red danger one
    load_box, ask_box = _box(page, "#models-load"), _box(page, "#models-unload-all")
    assert ask_box["y"] > _box(page, "#models-status")["y"] > load_box["y"] + load_box["height"], (load_box, ask_box)
    page.locator("#models-load").click()  # something to unload (the dropdown's first checkpoint)
    first = page.locator("#models-status tr", has_text="sd2-base")
    expect(first).to_contain_text("on the device", timeout=60_000)
    # A click only asks; Cancel leaves the models loaded.
    ask.click()
    expect(page.locator("#models-unload-all-question")).to_have_text(
        "Unload every loaded model? Jobs still run afterwards, but each first loads its model again, which takes "
        "a while.")
    expect(ask).to_be_hidden()
    page.screenshot(path=str(ARTIFACTS / "controls-models-unload-all-asks.png"))
    page.locator("#models-unload-all-cancel").click()
    expect(page.locator("#models-unload-all-confirm")).to_be_hidden()
    expect(ask).to_be_visible()
    settled(page)  # an unload Cancel had started would have answered by now
    expect(first).to_contain_text("on the device")
    # Yes unloads everything and puts the plain button back.
    ask.click()
    page.locator("#models-unload-all-yes").click()
    expect(page.locator("#models-status")).not_to_contain_text("on the device", timeout=60_000)
    expect(ask).to_be_visible()
    expect(page.locator("#models-unload-all-confirm")).to_be_hidden()
    page.screenshot(path=str(ARTIFACTS / "controls-models.png"))


def test_unload_says_whether_the_checkpoint_was_loaded(browser, url: str) -> None:
    """It said "… is unloaded." of a checkpoint that was never loaded."""
    page = _open(browser, url, DESKTOP)
    _go(page, "Models")
    toasts = page.locator(".toast-body")
    row = page.locator("#models-status [role=row]", has_text="sd2-base")  # the dropdown's first checkpoint
    page.locator("#models-unload").click()  # whatever an earlier test left loaded
    expect(row).to_contain_text("not loaded", timeout=60_000)
    expect(toasts.last).to_contain_text("SD 2.0 base (512)", timeout=30_000)
    page.locator("#models-unload").click()
    expect(toasts.filter(has_text="SD 2.0 base (512) was not loaded; nothing to unload.")).to_have_count(1,
                                                                                                   timeout=30_000)
    page.locator("#models-load").click()
    expect(row).to_contain_text("on the device", timeout=60_000)
    page.locator("#models-unload").click()
    expect(toasts.filter(has_text="SD 2.0 base (512) is unloaded.")).not_to_have_count(0, timeout=30_000)
    expect(row).to_contain_text("not loaded", timeout=60_000)
    page.context.close()


def test_send_to_image_to_image_carries_tiling(browser, url: str, tmp_path: Path) -> None:
    """Text to image's Tiling goes along (Image to image's stayed as it was); a result of a tab without Tiling
    (Outpaint) sends it off; History's send reads it from the PNG's "Tiling: True"."""
    page = _open(browser, url, DESKTOP)
    tiling = page.locator("#img2img-tiling input[type=checkbox]")
    _go(page, "Image to image")
    tiling.check()
    picture = tmp_path / "small.png"
    Image.new("RGB", (48, 48), (20, 120, 40)).save(picture)
    _go(page, "Outpaint")
    page.locator("#outpaint-image input[type=file]").set_input_files(str(picture))
    page.locator("#outpaint-image img").first.wait_for()
    for side, value in (("left", 0), ("right", 0), ("up", 0), ("down", 16), ("steps", 2)):
        _number_into(page, f"outpaint-{side}", value)
    page.locator("#outpaint-run").click()
    expect(page.locator("#outpaint-info")).to_contain_text("Outpaint down: 16", timeout=120_000)
    _sent_to_img2img(page, "#outpaint-send-img2img")
    expect(tiling).not_to_be_checked()
    _go(page, "Text to image")
    page.locator("#txt2img-tiling input[type=checkbox]").check()
    for name, value in (("width", 64), ("height", 64), ("steps", 2)):
        _number_into(page, f"txt2img-{name}", value)
    page.locator("#txt2img-prompt textarea").fill("a seamless tile")
    page.locator("#txt2img-run").click()
    expect(page.locator("#txt2img-info")).to_contain_text("Tiling: True", timeout=120_000)
    _sent_to_img2img(page, "#txt2img-send-img2img")
    expect(tiling).to_be_checked()
    tiling.uncheck()
    _go(page, "History")  # its first image: the tiled one just made
    _sent_to_img2img(page, "#history-send-img2img")
    expect(page.locator("#img2img-prompt textarea")).to_have_value("a seamless tile")
    expect(tiling).to_be_checked()
    page.screenshot(path=str(ARTIFACTS / "controls-tiling-sent.png"))
    page.context.close()


def _sent_to_img2img(page, button: str) -> None:
    page.locator(button).click()
    expect(page.get_by_role("tab", name="Image to image")).to_have_attribute("aria-selected", "true", timeout=30_000)
    page.locator("#img2img-image img").first.wait_for()


def test_a_token_count_on_its_way_leaves_the_last_count_shown(browser, url: str, slow_counts: list[str]) -> None:
    """While a count was on its way the counter's text was Gradio's timer and the count ("1.5s" then "0/75"): the
    tracker was only transparent, so its timer was read out and copied with the count."""
    page = _open(browser, url, DESKTOP)
    box, counter = page.locator("#txt2img-negative textarea"), page.locator("#txt2img-negative-tokens")
    deadline = time.monotonic() + 60
    while counter.inner_text() != "0/75":  # the first count, on the page's load
        assert time.monotonic() < deadline, counter.inner_text()
        page.wait_for_timeout(100)
    box.fill("slow")
    while "slow" not in slow_counts:  # past the typing pause: the count of "slow" is on its way (3 s)
        assert time.monotonic() < deadline, slow_counts
        page.wait_for_timeout(50)
    shown = []
    for _ in range(10):  # a second of the count on its way
        shown.append(counter.inner_text())
        page.wait_for_timeout(100)
    assert shown == ["0/75"] * 10
    expect(counter).to_have_text("4/75", timeout=30_000)  # the tiny tokenizer's count of the new text
    page.context.close()


TOO_WIDE = ("The extended image would be 1156x1156; each side may be at most 1024 pixels. Extend less or start from a "
            "smaller image.")


def test_a_long_refusal_under_stop_does_not_move_the_settings(browser, url: str, tmp_path: Path) -> None:
    """At 1000 px, the narrowest laptop layout, Outpaint's refusal of a 900x900 image (128 px a side) wrapped to six
    lines under Stop and pushed the settings 24.6 px down. The line keeps three lines' room and cuts the rest."""
    big = tmp_path / "big.png"
    Image.new("RGB", (900, 900), (10, 90, 30)).save(big)
    page = _open(browser, url, {"width": 1000, "height": 900})
    _go(page, "Outpaint")
    page.locator("#outpaint-image input[type=file]").set_input_files(str(big))
    page.locator("#outpaint-image img").first.wait_for()
    expect(page.locator("#outpaint-negative-tokens")).to_contain_text("/75", timeout=60_000)
    settled(page)  # the upload's checks and the token counts have landed: the layout is the idle one
    line = page.locator("#outpaint-run-status .run-status-text")
    before = (_box(page, "#outpaint-settings")["y"], _box(page, "#outpaint-run-status")["height"])
    page.locator("#outpaint-run").click()
    expect(page.locator("#outpaint-info")).to_have_text(TOO_WIDE, timeout=90_000)
    expect(line).to_have_text(TOO_WIDE)  # the whole text (read out by the live region); three lines shown
    page.screenshot(path=str(ARTIFACTS / "controls-long-refusal.png"))
    assert (_box(page, "#outpaint-settings")["y"], _box(page, "#outpaint-run-status")["height"]) == before
    assert line.evaluate("e => e.scrollHeight > e.clientHeight")  # more than the three lines shown: cut
    page.context.close()


def _number_into(page, elem_id: str, value: float) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def test_the_hires_fix_says_what_size_it_upscales_to(browser, url: str) -> None:
    """As in A1111: the line under "Use hires fix" follows the first pass's size and the upscale settings, and says
    what to change when the target is over the server's limit (the tiny app's 1024 pixels a side)."""
    page = _open(browser, url, DESKTOP)
    page.locator("#txt2img-hires-accordion").get_by_text("Hires fix").first.click()
    note = page.locator("#txt2img-hires-size")
    expect(note).to_have_text("Upscales from 512x512 to 1024x1024.")
    _number_into(page, "txt2img-width", 768)
    expect(note).to_have_text("Upscales from 768x512 to 1536x1024. That is over this server's 1024 pixels per side: "
                              "lower the upscale or the size.")
    _number_into(page, "txt2img-hires-scale", 1.25)
    expect(note).to_have_text("Upscales from 768x512 to 960x640.")
    _number_into(page, "txt2img-hires-width", 1000)  # one side given: the other keeps the first pass's shape
    expect(note).to_have_text("Upscales from 768x512 to 1000x664.")
    page.locator("#txt2img-hires-accordion").scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "controls-hires-size.png"))
    page.context.close()


def test_a_refused_img2img_upload_is_said_once_and_the_box_empties(browser, url: str, tmp_path: Path) -> None:
    """Image to image reads each new image for its size; an unreadable or oversized upload is refused there, in
    one message (not also by a second check of the same upload), and the size boxes go back to the square."""
    fake = tmp_path / "not-an-image.png"
    fake.write_bytes(b"this is text, not a picture")
    oversized = tmp_path / "oversized.png"
    Image.new("RGB", (2056, 2048), (10, 120, 60)).save(oversized)  # 8 columns over the 2048x2048 limit
    page = _open(browser, url, DESKTOP)
    _go(page, "Image to image")
    expect(page.locator("#img2img-width input[type=number]")).to_have_value("512")
    for picture, message in ((fake, "The uploaded image could not be read: not a PNG, JPEG or WebP image."),
                             (oversized, "This image is 2056x2048; images up to 2048x2048 pixels")):
        page.locator("#img2img-image input[type=file]").set_input_files(str(picture))
        toast = page.locator(".toast-body").last
        expect(toast).to_contain_text(message, timeout=30_000)
        settled(page)  # a second refusal of the same upload would have arrived by now
        shown = " ".join(page.locator(".toast-body").all_inner_texts())
        assert shown.count(message) == 1, shown
        expect(page.locator("#img2img-image img")).to_have_count(0)  # the box is empty again
        assert (_number(page, "img2img-width"), _number(page, "img2img-height")) == ("512", "512")
        page.screenshot(path=str(ARTIFACTS / f"controls-img2img-refused-{picture.stem}.png"))
        for close in page.locator(".toast-body button").all():
            close.click()
        expect(page.locator(".toast-body")).to_have_count(0)
    page.context.close()


@pytest.mark.parametrize("prefix, tab", [("txt2img", "Text to image"), ("xyz", "X/Y/Z plot")])
def test_a_picked_checkpoint_sets_its_size_where_there_are_size_sliders(browser, url: str, prefix: str,
                                                                        tab: str) -> None:
    """Picking the 768-v checkpoint sets 768x768 (the plot's cells too, not a 768-v model at 512); a base model
    puts 512x512 back."""
    page = _open(browser, url, DESKTOP)
    _go(page, tab)
    assert (_number(page, f"{prefix}-width"), _number(page, f"{prefix}-height")) == ("512", "512")
    _pick(page, f"{prefix}-checkpoint", "SD 2.0 (768-v)")
    expect(page.locator(f"#{prefix}-width input[type=number]")).to_have_value("768")
    expect(page.locator(f"#{prefix}-height input[type=number]")).to_have_value("768")
    _pick(page, f"{prefix}-checkpoint", "SD 2.1 base (512)")
    expect(page.locator(f"#{prefix}-width input[type=number]")).to_have_value("512")
    expect(page.locator(f"#{prefix}-height input[type=number]")).to_have_value("512")
    page.context.close()


def test_an_oversized_image_in_the_inpaint_editor_is_said_and_the_editor_keeps_working(browser, url: str,
                                                                                      tmp_path: Path) -> None:
    """The editor's upload check says why; the editor is left as it is (emptied by the server, Gradio's editor froze
    on an endless spinner, and Generate then asked for an image the visitor had uploaded): Generate refuses the
    image again in the same words."""
    oversized = tmp_path / "oversized.png"
    Image.new("RGB", (2056, 2048), (10, 120, 60)).save(oversized)  # 8 columns over the 2048x2048 limit
    message = "The uploaded image could not be read: it is 2056x2048 (4210688 pixels); the limit is 4194304 pixels."
    page = _open(browser, url, DESKTOP)
    _go(page, "Inpaint")
    expect(page.locator("#inpaint-editor canvas").first).to_be_visible()  # the editor's code has loaded
    page.locator("#inpaint-editor input[type=file]").set_input_files(str(oversized))
    expect(page.locator(".toast-body").last).to_contain_text(message, timeout=60_000)
    for close in page.locator(".toast-body button").all():
        close.click()
    page.locator("#inpaint-prompt textarea").fill("a cat")
    canvas = _box(page, "#inpaint-editor canvas")
    middle = (canvas["x"] + canvas["width"] / 2, canvas["y"] + canvas["height"] / 2)
    page.mouse.move(middle[0] - 60, middle[1])
    page.mouse.down()
    page.mouse.move(middle[0] + 60, middle[1], steps=4)
    page.mouse.up()
    page.locator("#inpaint-run").click()
    expect(page.locator(".toast-body").last).to_contain_text(message, timeout=60_000)
    expect(page.locator("#inpaint-run")).to_be_enabled(timeout=30_000)
    assert "Upload an image" not in page.locator("#inpaint-info").inner_text()
    page.screenshot(path=str(ARTIFACTS / "controls-inpaint-oversized.png"))
    page.context.close()


def test_a_file_the_inpaint_editor_cannot_open_is_said_as_image_to_image_says_it(browser, url: str,
                                                                                tmp_path: Path) -> None:
    """Gradio's editor opens an upload in the page and shows nothing for a file the browser cannot decode; the
    visitor reads the message Image to image gives for the same file, once, and the editor takes an image after."""
    fake = tmp_path / "not-an-image.png"
    fake.write_bytes(b"this is text, not a picture")
    message = "The uploaded image could not be read: not a PNG, JPEG or WebP image."
    page = _open(browser, url, DESKTOP)
    _go(page, "Inpaint")
    page.locator("#inpaint-editor input[type=file]").set_input_files(str(fake))
    expect(page.locator(".toast-body").last).to_contain_text(message, timeout=30_000)
    settled(page)  # a second refusal of the same upload would have arrived by now
    shown = " ".join(page.locator(".toast-body").all_inner_texts())
    assert shown.count(message) == 1, shown
    page.screenshot(path=str(ARTIFACTS / "controls-inpaint-not-an-image.png"))
    for close in page.locator(".toast-body button").all():
        close.click()
    picture = tmp_path / "real.png"
    Image.new("RGB", (64, 48), (200, 40, 40)).save(picture)
    page.locator("#inpaint-editor input[type=file]").set_input_files(str(picture))
    settled(page)  # the editor's upload check has answered
    expect(page.locator(".toast-body")).to_have_count(0)  # an image the editor opens is not refused
    expect(page.locator("#inpaint-editor .empty.wrap")).to_have_count(0)  # the upload hint gave way to the image
    page.context.close()


def test_on_a_phone_stop_stays_in_view_while_a_run_scrolls_to_the_results(browser, url: str) -> None:
    """Generate scrolls a phone's page down to the results; while the run is on, Stop (with the run's state line)
    is within the screen, and pressing it there stops the run; afterwards the buttons are back under the prompts."""
    page = _open(browser, url, PHONE)
    _go(page, "Text to image")
    for name, value in (("width", 512), ("height", 512), ("steps", 150)):  # long enough to press Stop mid-run
        box = page.locator(f"#txt2img-{name} input[type=number]")
        box.fill(str(value))
        box.press("Enter")
    run, stop, info = page.locator("#txt2img-run"), page.locator("#txt2img-stop"), page.locator("#txt2img-info")
    run.click()
    expect(info).to_contain_text(re.compile(r"Step \d+/150"), timeout=60_000)
    page.wait_for_function("window.scrollY > 300", timeout=10_000)  # the page goes down to the results (a smooth
    # scroll: the first step can show before it ends, as CI saw once at scrollY 270)
    stop_box = _box(page, "#txt2img-stop")
    assert 0 <= stop_box["y"] and stop_box["y"] + stop_box["height"] <= PHONE["height"], stop_box
    assert 0 <= stop_box["x"] and stop_box["x"] + stop_box["width"] <= PHONE["width"], stop_box
    status = _box(page, "#txt2img-run-status .run-status-text")
    assert 0 <= status["y"] and status["y"] + status["height"] <= PHONE["height"], status  # the step count too
    assert page.locator("#txt2img-results").bounding_box()["y"] < PHONE["height"]  # the results stay in view
    page.screenshot(path=str(ARTIFACTS / "controls-phone-running.png"))
    page.mouse.click(stop_box["x"] + stop_box["width"] / 2, stop_box["y"] + stop_box["height"] / 2)  # no scrolling
    # Stop mid-sampling keeps the image so far (as A1111's Interrupt), and the info line says where it stopped
    expect(info).to_contain_text(re.compile(r"Stopped at step \d+/150; kept the image so far\."), timeout=30_000)
    expect(stop).to_be_disabled()
    prompt, run_box = _box(page, "#txt2img-prompt"), _box(page, "#txt2img-run")
    assert prompt["y"] < run_box["y"] < prompt["y"] + 400, (prompt, run_box)  # back in the page, under the prompts
    page.screenshot(path=str(ARTIFACTS / "controls-phone-stopped.png"))
    page.context.close()


def test_inpaint_has_a1111s_mask_mode_and_masked_content_radios_which_read_parameters_sets(page) -> None:
    """Inpaint had no "Mask mode" or "Masked content" (the A1111 API's inpainting_mask_invert and inpainting_fill
    only): A1111's radios, their labels, choices in its order and defaults ("Inpaint masked", "original"), beside
    the mask settings; ↙ sets them from a pasted text's "Mask mode" and "Masked content"."""
    _go(page, "Inpaint")
    mode, radio = page.locator("#inpaint-mask-mode"), page.locator("#inpaint-masked-content")
    expect(mode.locator("[data-testid=block-info]")).to_have_text("Mask mode")
    expect(mode.locator("label")).to_have_text(["Inpaint masked", "Inpaint not masked"])
    expect(mode.get_by_label("Inpaint masked", exact=True)).to_be_checked()
    expect(radio.locator("[data-testid=block-info]")).to_have_text("Masked content")
    expect(radio.locator("label")).to_have_text(["fill", "original", "latent noise", "latent nothing"])
    expect(radio.get_by_label("original", exact=True)).to_be_checked()
    mode.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "controls-inpaint-masked-content.png"))
    page.locator("#inpaint-prompt textarea").fill("a cat\nSteps: 2, Sampler: Euler, Seed: 7, Mask mode: Inpaint "
                                                  "not masked, Masked content: latent noise")
    page.locator("#inpaint-read-parameters").click()
    expect(radio.get_by_label("latent noise", exact=True)).to_be_checked(timeout=30_000)
    expect(mode.get_by_label("Inpaint not masked", exact=True)).to_be_checked()
    expect(page.locator("#inpaint-prompt textarea")).to_have_value("a cat")


def test_a1111s_swap_button_swaps_width_and_height(page) -> None:
    """⇅ beside the width and height (Text to image and the X/Y/Z plot's sliders, Image to image's boxes) swaps
    their values, as A1111's "Switch width/height" does, a side just typed included (pressing ⇅ leaves the focus in
    its box: the answer to leaving the box would put the old value back after the swap). ↙ has its tooltip too."""
    for tab, prefix in (("Text to image", "txt2img"), ("X/Y/Z plot", "xyz"), ("Image to image", "img2img")):
        _go(page, tab)
        _number_into(page, f"{prefix}-width", 320)
        _number_into(page, f"{prefix}-height", 448)
        swap = page.locator(f"#{prefix}-swap-size")
        expect(swap).to_have_text("⇅")
        swap.hover()  # its tooltip and accessible name, as ↙'s
        expect(swap).to_have_attribute("title", "Swap width and height")
        expect(swap).to_have_attribute("aria-label", "Swap width and height")
        swap.click()
        expect(page.locator(f"#{prefix}-width input[type=number]")).to_have_value("448")
        expect(page.locator(f"#{prefix}-height input[type=number]")).to_have_value("320")
    read = page.locator("#img2img-read-parameters")
    read.hover()
    expect(read).to_have_attribute("title", "Read generation parameters from the prompt, or from the last result if "
                                            "the prompt is empty")


def test_on_a_phone_the_swap_button_sits_in_the_size_blocks_corner(browser, url) -> None:  # noqa: F811
    """At 390 px ⇅ is in the top right corner of the width and height block, on their labels' line (it was alone on
    a line under the block), clear of the number boxes, and still swaps."""
    page = _open(browser, url, PHONE)
    try:
        for tab, prefix in (("Text to image", "txt2img"), ("Image to image", "img2img")):
            _go(page, tab)
            swap = page.locator(f"#{prefix}-swap-size")
            swap.scroll_into_view_if_needed()
            button, width, height = (_box(page, f"#{prefix}-{name}") for name in ("swap-size", "width", "height"))
            assert width["y"] <= button["y"] < width["y"] + 24, (button, width)  # on the labels' line
            assert height["x"] + height["width"] - button["width"] - 16 <= button["x"], (button, height)  # its right
            number = _box(page, f"#{prefix}-height input[type=number]")
            assert button["y"] + button["height"] <= number["y"], (button, number)  # above the height's box
            page.screenshot(path=str(ARTIFACTS / f"phone-swap-size-{prefix}.png"))
            _number_into(page, f"{prefix}-width", 320)
            swap.click()
            expect(page.locator(f"#{prefix}-height input[type=number]")).to_have_value("320")
    finally:
        page.context.close()


def test_ctrl_up_and_down_edit_the_attention_as_a1111s_edit_attention(page) -> None:
    """Ctrl+Up / Ctrl+Down in a prompt box weight the selected text, the weighted group around the caret or the
    word there by 0.1 each press ("fox" -> "(fox:1.1)"; back at 1 the parentheses go), and the run reads the
    edited prompt (its parameters text has it)."""
    _go(page, "Text to image")
    prompt = page.locator("#txt2img-prompt textarea")
    prompt.fill("a red fox in snow")
    prompt.evaluate("box => box.setSelectionRange(6, 9)")  # "fox"
    seen = []
    for key in ("ArrowUp", "ArrowUp", "ArrowDown", "ArrowDown", "ArrowDown"):
        prompt.press(f"Control+{key}")
        seen.append(prompt.input_value())
    assert seen == ["a red (fox:1.1) in snow", "a red (fox:1.2) in snow", "a red (fox:1.1) in snow",
                    "a red fox in snow", "a red (fox:0.9) in snow"]
    assert prompt.evaluate("box => box.value.slice(box.selectionStart, box.selectionEnd)") == "fox"
    prompt.evaluate("box => box.setSelectionRange(3, 3)")  # the caret in "red", nothing selected
    prompt.press("Control+ArrowUp")
    expect(prompt).to_have_value("a (red:1.1) (fox:0.9) in snow")
    prompt.evaluate("box => box.setSelectionRange(14, 14)")  # inside "(fox:0.9)": its weight
    prompt.press("Control+ArrowUp")
    expect(prompt).to_have_value("a (red:1.1) fox in snow")
    for name, value in (("width", 64), ("height", 64), ("steps", 2)):
        _number_into(page, f"txt2img-{name}", value)
    run_and_wait(page, "txt2img")
    expect(page.locator("#txt2img-info")).to_contain_text("a (red:1.1) fox in snow")
