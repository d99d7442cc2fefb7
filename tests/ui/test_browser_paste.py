"""An A1111 PNG through PNG info's "Send to text to image" in a real Chromium (Playwright): A1111's names for the
sampler and the checkpoint land on ours, and each setting we cannot reproduce is said in a toast. An A1111 PNG
dropped onto a prompt box, as A1111's drop onto the prompt reads it.

Uses test_browser.py's app and browser fixtures (tiny checkpoints); screenshots go to tests/artifacts/.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from sd2_app.pipelines.metadata import attach_parameters, save_png
from tests.ui.browser_calls import drop_file, settled
from tests.ui.test_browser import ARTIFACTS, _go, browser, expect, page, url  # noqa: F401

pytestmark = [pytest.mark.browser, pytest.mark.slow]

A1111_TEXT = ("a lighthouse, (stormy sea:1.2)\nNegative prompt:blurry\nSteps: 24, Sampler: PLMS, CFG scale: 6.5, "
              "Seed: 1234, Size: 512x512, Model hash: 88ecb78256, Model: v2-1_512-ema-pruned, Denoising strength: 0.4, "
              "Hires upscale: 1.5, Hires upscaler: R-ESRGAN 4x+, Version: v1.10.1\n")


def _send_png(page, picture: Path, text: str, color: tuple[int, int, int]) -> None:
    """A 64x64 PNG of `color` carrying `text`, read by PNG info and sent to text to image."""
    save_png(attach_parameters(Image.new("RGB", (64, 64), color), text), picture)
    _go(page, "PNG info")
    page.locator("#pnginfo-image input[type=file]").set_input_files(str(picture))
    expect(page.locator("#pnginfo-text textarea")).to_have_value(text)
    page.locator("#pnginfo-send").click()


def test_an_a1111_png_fills_text_to_image_and_says_what_it_could_not(page, tmp_path: Path) -> None:
    _send_png(page, tmp_path / "a1111.png", A1111_TEXT, (20, 60, 120))
    expect(page.locator(".toast-body", has_text="Hires upscaler 'R-ESRGAN 4x+' is not available here; Latent is "
                                                "used.")).to_be_visible(timeout=15_000)
    expect(page.locator("#txt2img-prompt textarea")).to_have_value("a lighthouse, (stormy sea:1.2)")
    expect(page.locator("#txt2img-negative textarea")).to_have_value("blurry")
    expect(page.locator("#txt2img-sampler input").first).to_have_value("PNDM")
    expect(page.locator("#txt2img-checkpoint input").first).to_have_value("SD 2.1 base (512)")
    expect(page.locator("#txt2img-steps input[type=number]")).to_have_value("24")
    expect(page.locator("#txt2img-seed input[type=number]")).to_have_value("1234")
    # The fix is on, and the closed group's header says so with its sizes (Size 512x512, Hires upscale 1.5).
    header = page.locator("#txt2img-hires-accordion").get_by_text("Hires fix", exact=False).first
    expect(header).to_have_text("Hires fix: on, 512x512 → 768x768")
    header.click()  # open the closed group
    expect(page.locator("#txt2img-hires input[type=checkbox]")).to_be_checked()
    expect(page.locator("#txt2img-hires-upscaler input").first).to_have_value("Latent")
    page.screenshot(path=str(ARTIFACTS / "paste-a1111-png.png"))


def test_an_image_s_parameters_are_parsed_once(page, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading a PNG parses its text into the fields; the text box's change that follows must not parse it again.
    A text pasted afterwards is still parsed (once)."""
    import sd2_app.api.service as service_module

    parsed: list[str] = []
    original = service_module.parse_parameters

    def counted(text: str) -> dict:
        parsed.append(text)
        return original(text)

    monkeypatch.setattr(service_module, "parse_parameters", counted)  # the app serves in this process
    text = A1111_TEXT.replace("Seed: 1234", "Seed: 5678")  # not the box's text already (another test's image)
    picture = tmp_path / "once.png"
    save_png(attach_parameters(Image.new("RGB", (64, 64), (90, 30, 10)), text), picture)
    _go(page, "PNG info")
    page.locator("#pnginfo-image input[type=file]").set_input_files(str(picture))
    box = page.locator("#pnginfo-text textarea")
    expect(box).to_have_value(text)
    fields = page.locator("[data-testid=json], .json-holder").first
    expect(fields).to_contain_text("5678")
    settled(page)  # any event still to come after the read (the box's change) has come and gone
    assert parsed == [text]
    pasted = A1111_TEXT.replace("Seed: 1234", "Seed: 4321")
    box.fill(pasted)
    expect(fields).to_contain_text("4321")
    assert parsed == [text, pasted]
    page.screenshot(path=str(ARTIFACTS / "pnginfo-parsed-once.png"))


def test_a_pasted_batch_size_that_is_not_whole_is_rounded_at_the_paste_and_said(page) -> None:
    """"Batch size: 2.5" reached the slider as it was and Generate was refused ("Batch size must be a whole number,
    got 2.5."); the send says what it sets instead, and Generate runs it."""
    _go(page, "PNG info")
    page.locator("#pnginfo-text textarea").fill("a tiled floor\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 11, "
                                                "Size: 64x64, Batch size: 2.5")
    expect(page.locator("[data-testid=json], .json-holder").first).to_contain_text("2.5")
    page.locator("#pnginfo-send").click()
    expect(page.locator(".toast-body", has_text="Batch size 2.5 cannot be set here (1 to 8, whole numbers); 3 is "
                                                "used.")).to_be_visible(timeout=15_000)
    expect(page.get_by_role("spinbutton", name="Images per prompt")).to_have_value("3")
    page.screenshot(path=str(ARTIFACTS / "paste-batch-size-rounded.png"))
    page.locator("#txt2img-run").click()
    expect(page.locator("#txt2img-info")).to_contain_text("Batch size: 3", timeout=120_000)
    expect(page.locator("#txt2img-gallery img")).to_have_count(3)


def test_a_ddim_eta_png_sets_the_eta_slider_which_shows_for_ddim_only(page, tmp_path: Path) -> None:
    """"Eta DDIM" of a PNG's parameters goes into text to image's Eta slider (it said "not supported here" when
    the tabs had no Eta control); Generate runs with it and the result's "Send to image to image" carries it;
    the slider shows while the sampler is DDIM, the one that takes eta."""
    text = "a lighthouse\nSteps: 3, Sampler: DDIM, CFG scale: 6.5, Seed: 99, Size: 64x64, Eta DDIM: 0.5\n"
    expect(page.locator(".toast-body")).to_have_count(0, timeout=30_000)  # a test before's toast (10 s) has gone
    _send_png(page, tmp_path / "eta.png", text, (10, 90, 40))
    expect(page.locator("#txt2img-sampler input").first).to_have_value("DDIM", timeout=15_000)
    page.locator("#txt2img-more-sampling").get_by_text("More sampling options").first.click()  # open the group
    eta = page.locator("#txt2img-eta input[type=number]")
    expect(eta).to_have_value("0.5")
    expect(page.locator("#txt2img-eta")).to_be_visible()
    settled(page)  # a warning about a setting would have come by now
    expect(page.locator(".toast-body")).to_have_count(0)  # nothing said: every setting was set
    page.screenshot(path=str(ARTIFACTS / "paste-eta-ddim.png"))
    page.locator("#txt2img-run").click()
    expect(page.locator("#txt2img-info")).to_contain_text(", Eta DDIM: 0.5", timeout=120_000)
    page.locator("#txt2img-send-img2img").click()
    expect(page.locator("#img2img-sampler input").first).to_have_value("DDIM", timeout=15_000)
    page.locator("#img2img-more-sampling").get_by_text("More sampling options").first.click()
    expect(page.locator("#img2img-eta input[type=number]")).to_have_value("0.5")
    _go(page, "Text to image")
    page.locator("#txt2img-sampler input").first.fill("Euler")
    page.locator("#txt2img-sampler input").first.press("Enter")
    expect(page.locator("#txt2img-eta")).to_be_hidden()


def test_send_clicked_before_the_fields_come_sends_the_text_shown(page, tmp_path: Path) -> None:
    """The text of a PNG shows, then its parse into Fields answers: Send clicked in between (as soon as the text
    is there, as a quick visitor or a loaded server makes it) sent the Fields still showing, those of the image
    read before (seen in CI: text to image kept the sampler of the image before). The send parses the text
    shown; here the parse's answer is held back until the send has landed."""
    held = []
    page.route("**/gradio_api/run/predict*",
               lambda route: held.append(route) if "a held lighthouse" in (route.request.post_data or "")
               else route.continue_())
    text = "a held lighthouse\nSteps: 3, Sampler: Heun, CFG scale: 6.5, Seed: 99, Size: 64x64\n"
    _send_png(page, tmp_path / "held.png", text, (10, 90, 41))
    expect(page.locator("#txt2img-prompt textarea")).to_have_value("a held lighthouse", timeout=30_000)
    expect(page.locator("#txt2img-sampler input").first).to_have_value("Heun")
    fields = page.locator("[data-testid=json], .json-holder").first
    assert len(held) == 1 and "a held lighthouse" not in fields.text_content()  # the parse: still unanswered
    held[0].continue_()
    page.unroute("**/gradio_api/run/predict*")
    expect(fields).to_contain_text("a held lighthouse")


def test_a_sent_variation_seed_shows_in_the_closed_extra_seed_options_header(page, tmp_path: Path) -> None:
    """A send that set a variation seed inside the closed "Extra seed options" showed nothing outside it, and the
    next Generate made a variation; its header now says what is on, as the Hires fix header does (2b763cf)."""
    text = ("a lighthouse\nSteps: 2, Sampler: Euler, Seed: 1234, Size: 64x64, Variation seed: 123, "
            "Variation seed strength: 0.3, Seed resize from: 96x64")
    _send_png(page, tmp_path / "variation.png", text, (40, 90, 20))
    header = page.locator("#txt2img-seed-extras").get_by_text("Extra seed options", exact=False).first
    expect(header).to_have_text("Extra seed options: variation seed 123 at 0.3, seed resize from 96x64",
                                timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / "paste-variation-seed.png"))
    header.click()  # open: the widgets hold what the header says
    expect(page.locator("#txt2img-variation-seed input[type=number]")).to_have_value("123")
    _send_png(page, tmp_path / "plain.png", text.split(", Variation seed:")[0], (40, 90, 21))
    expect(header).to_have_text("Extra seed options", timeout=30_000)  # all off again


# What the page did with the last file dragged over it (listened to after the page script's own listeners).
DRAG_OUTCOME = """() => window.addEventListener("dragover", (event) => {
  window.sd2LastDragover = { cancelled: event.defaultPrevented, effect: event.dataTransfer.dropEffect };
})"""


def test_an_image_dropped_onto_a_prompt_box_puts_its_parameters_there_as_a1111_does(page, tmp_path: Path) -> None:
    """A1111's drop onto the prompt: the PNG's parameters text goes into the tab's prompt box, whichever of its
    two boxes the image is dropped on, and ↙ then reads it into the settings. An image without parameters leaves
    the prompt as it is and says so; a file dropped where nothing takes it is refused by the page (the browser
    would otherwise open it, leaving the page)."""
    picture = tmp_path / "a1111.png"
    save_png(attach_parameters(Image.new("RGB", (64, 64), (20, 60, 120)), A1111_TEXT), picture)
    prompt = page.locator("#txt2img-prompt textarea")
    drop_file(page, "#txt2img-negative textarea", str(picture))
    expect(prompt).to_have_value(A1111_TEXT)
    expect(page.locator(".toast-body", has_text="The dropped image's parameters are in the prompt; ↙ beside Stop "
                                                "reads them into the settings.")).to_be_visible()
    page.locator("#txt2img-read-parameters").click()
    expect(prompt).to_have_value("a lighthouse, (stormy sea:1.2)")
    expect(page.locator("#txt2img-negative textarea")).to_have_value("blurry")
    expect(page.locator("#txt2img-steps input[type=number]")).to_have_value("24")
    expect(page.locator("#txt2img-seed input[type=number]")).to_have_value("1234")

    _go(page, "Inpaint")
    bare = tmp_path / "bare.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(bare)
    inpaint_prompt = page.locator("#inpaint-prompt textarea")
    inpaint_prompt.fill("a red door")
    drop_file(page, "#inpaint-prompt textarea", str(bare))
    expect(page.locator(".toast-body", has_text="This image carries no generation parameters.")).to_be_visible()
    settled(page)
    expect(inpaint_prompt).to_have_value("a red door")
    drop_file(page, "#inpaint-prompt textarea", str(picture))  # the reader took the first drop and emptied
    expect(inpaint_prompt).to_have_value(A1111_TEXT)

    page.evaluate(DRAG_OUTCOME)
    drop_file(page, "h1", str(picture))
    assert page.evaluate("window.sd2LastDragover") == {"cancelled": True, "effect": "none"}
    drop_file(page, "#inpaint-prompt textarea", str(picture))
    assert page.evaluate("window.sd2LastDragover") == {"cancelled": True, "effect": "copy"}


def test_an_image_dropped_onto_png_infos_text_box_is_read(page, tmp_path: Path) -> None:
    """PNG info's Parameters box, where a visitor looks for the text, refused a dropped image (only the image box
    took it); it now goes to the image box, which reads its parameters into the box (one it held is replaced)."""
    picture = tmp_path / "dropped.png"
    text = A1111_TEXT.replace("Seed: 1234", "Seed: 2468")
    save_png(attach_parameters(Image.new("RGB", (64, 64), (70, 20, 120)), text), picture)
    expect(page.locator(".toast-body")).to_have_count(0, timeout=30_000)  # the tests before's toasts (over the box)
    _go(page, "PNG info")
    first = tmp_path / "first.png"
    save_png(attach_parameters(Image.new("RGB", (64, 64), (7, 20, 120)), "a first image\nSteps: 2, Seed: 1"), first)
    page.locator("#pnginfo-image input[type=file]").set_input_files(str(first))  # the box already holds one
    expect(page.locator("#pnginfo-text textarea")).to_have_value("a first image\nSteps: 2, Seed: 1")
    drop_file(page, "#pnginfo-text textarea", str(picture))
    expect(page.locator("#pnginfo-text textarea")).to_have_value(text)
    expect(page.locator("#pnginfo-image img")).to_be_visible()
    expect(page.locator("[data-testid=json], .json-holder").first).to_contain_text("2468")
