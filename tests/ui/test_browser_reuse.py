"""Settings from elsewhere, in a real Chromium (Playwright): generation parameters pasted into PNG info (as A1111
and Civitai copy them) or read from a PNG reach Text to image whole, their size included when they switch the
checkpoint; a checkpoint the visitor picks still sets its own size.

Uses test_browser.py's app and browser fixtures (tiny checkpoints). Screenshots go to tests/artifacts/. The sends
are queued events, so their answers get a busy machine's time (30 s); that no event of the page resets the size
after them is waited for as the page's calls to the app settling (`ServerCalls`), not for a fixed second.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from tests.ui.browser_calls import ServerCalls
from tests.ui.test_browser import ARTIFACTS, DESKTOP, _go, _open, _pick, browser, expect, url  # noqa: F401

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# What A1111 (and Civitai's "copy generation data") give: prompt, negative prompt, then the settings line. The
# model named is not the tab's default (SD 2.1 base), and its size is not that checkpoint's square.
PASTED = ("a lighthouse on a cliff, dramatic sky\n"
          "Negative prompt: blurry, lowres\n"
          "Steps: 30, Sampler: Euler a, Schedule type: Karras, CFG scale: 6, Seed: 1234, Size: 640x448, "
          "Model hash: abcdef12, Model: sd2-base, Version: v1.10.1")


def _txt2img_values(page) -> dict[str, str]:
    values = {name: page.locator(f"#txt2img-{name} input[type=number]").input_value()
              for name in ("steps", "width", "height")}
    values["seed"] = page.locator("#txt2img-seed input").input_value()
    values |= {name: page.locator(f"#txt2img-{name} textarea").input_value() for name in ("prompt", "negative")}
    values |= {name: page.locator(f"#txt2img-{name} input").input_value() for name in ("sampler", "checkpoint")}
    return values


def test_pasted_a1111_parameters_go_to_text_to_image(browser, url: str) -> None:
    page = _open(browser, url, DESKTOP)
    _go(page, "PNG info")
    page.locator("#pnginfo-text textarea").fill(PASTED)
    expect(page.locator("#pnginfo-text")).to_contain_text("paste a generation's parameters here")
    expect(page.get_by_text('"Model hash"')).to_be_visible(timeout=30_000)  # the fields, parsed on the server
    page.screenshot(path=str(ARTIFACTS / "reuse-pnginfo-pasted.png"))
    calls = ServerCalls(page)
    page.locator("#pnginfo-send").click()
    expect(page.get_by_role("tab", name="Text to image")).to_have_attribute("aria-selected", "true", timeout=30_000)
    expect(page.locator("#txt2img-prompt textarea")).to_have_value("a lighthouse on a cliff, dramatic sky")
    expect(page.locator("#txt2img-width input[type=number]")).to_have_value("640")
    calls.settle()  # a size reset by the checkpoint's change would have landed by now
    # The send and the few events its values start, each once: not events calling each other without end (the
    # hires fix's size line and label did, once a send set width and height together).
    assert calls.started < 20, calls.started
    assert _txt2img_values(page) == {
        "steps": "30", "width": "640", "height": "448", "seed": "1234",
        "prompt": "a lighthouse on a cliff, dramatic sky", "negative": "blurry, lowres", "sampler": "Euler a",
        "checkpoint": "SD 2.0 base (512)"}
    assert page.locator("#txt2img-schedule input").input_value() == "Karras"
    page.screenshot(path=str(ARTIFACTS / "reuse-txt2img-from-paste.png"))
    # A checkpoint the visitor picks sets its own square, as before.
    _pick(page, "txt2img-checkpoint", "SD 2.0 (768-v)")
    expect(page.locator("#txt2img-width input[type=number]")).to_have_value("768", timeout=30_000)
    expect(page.locator("#txt2img-height input[type=number]")).to_have_value("768")
    # A paste longer than the box takes is cut at its limit (the server refuses a longer text sent otherwise).
    _go(page, "PNG info")
    page.locator("#pnginfo-text textarea").fill("x" * 20_001)
    assert len(page.locator("#pnginfo-text textarea").input_value()) == 20_000
    page.context.close()


def test_a_png_made_with_another_checkpoint_sends_its_own_size(browser, url: str, tmp_path: Path) -> None:
    picture = tmp_path / "made-elsewhere.png"
    info = PngInfo()
    info.add_text("parameters", "a red barn\nSteps: 12, Sampler: Euler, CFG scale: 5, Seed: 77, Size: 448x640, "
                                "Model: sd2")
    Image.new("RGB", (448, 640), (180, 30, 30)).save(picture, pnginfo=info)
    page = _open(browser, url, DESKTOP)
    _go(page, "PNG info")
    page.locator("#pnginfo-image input[type=file]").set_input_files(str(picture))
    expect(page.locator("#pnginfo-text textarea")).to_have_value(
        "a red barn\nSteps: 12, Sampler: Euler, CFG scale: 5, Seed: 77, Size: 448x640, Model: sd2", timeout=30_000)
    calls = ServerCalls(page)
    page.locator("#pnginfo-send").click()
    expect(page.locator("#txt2img-checkpoint input")).to_have_value("SD 2.0 (768-v)", timeout=30_000)
    calls.settle()  # a size reset by the checkpoint's change would have landed by now
    values = _txt2img_values(page)
    assert (values["width"], values["height"], values["steps"], values["seed"]) == ("448", "640", "12", "77"), values
    page.context.close()


def test_read_parameters_after_a_reload_reads_the_visitors_last_result_of_the_tab(browser, url: str) -> None:
    """↙ with the prompt empty reads the tab's picked result; after a reload (no result on show) the visitor's
    newest result of that tab's task in History, as A1111 reads its last generation back from params.txt after
    a restart. Another tab's task, or another visitor, has none to read."""
    from tests.ui.browser_calls import run_and_wait

    page = _open(browser, url, DESKTOP)
    for name, value in (("width", 64), ("height", 64), ("steps", 2)):
        box = page.locator(f"#txt2img-{name} input[type=number]")
        box.fill(str(value))
        box.press("Enter")
    page.locator("#txt2img-seed input").fill("321")
    page.locator("#txt2img-prompt textarea").fill("a lighthouse read back after a reload")
    page.locator("#txt2img-negative textarea").fill("fog")
    run_and_wait(page, "txt2img")
    page.reload()
    page.wait_for_function("window.sd2AppReady === true")
    expect(page.locator("#txt2img-gallery img")).to_have_count(0)
    prompt = page.locator("#txt2img-prompt textarea")
    prompt.fill("")
    page.locator("#txt2img-read-parameters").click()
    expect(prompt).to_have_value("a lighthouse read back after a reload", timeout=30_000)
    expect(page.locator("#txt2img-negative textarea")).to_have_value("fog")
    assert _txt2img_values(page) | {"checkpoint": ""} == {
        "steps": "2", "width": "64", "height": "64", "seed": "321", "prompt": "a lighthouse read back after a reload",
        "negative": "fog", "sampler": "DPM++ 2M", "checkpoint": ""}
    nothing = ("Paste a generation's parameters into the prompt, or generate an image first: with the prompt empty, "
               "↙ reads the last result's.")
    _go(page, "Image to image")  # no image to image result yet
    page.locator("#img2img-read-parameters").click()
    expect(page.locator(".toast-body", has_text=nothing)).to_be_visible()
    page.context.close()
    stranger = _open(browser, url, DESKTOP)  # another visitor (a new browser context: no cookie)
    stranger.locator("#txt2img-prompt textarea").fill("")
    stranger.locator("#txt2img-read-parameters").click()
    expect(stranger.locator(".toast-body", has_text=nothing)).to_be_visible()
    expect(stranger.locator("#txt2img-seed input")).to_have_value("-1")
    stranger.context.close()
