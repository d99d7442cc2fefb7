"""An image pasted anywhere on a tab goes into its image box, as A1111's javascript/dragdrop.js puts a pasted image
into the first empty image field of the page: in a real Chromium (Playwright), the paste event as the browser
sends it (a ClipboardEvent whose DataTransfer holds the image file), through the box's own upload (the server sets
Image to image's size from it)."""

from __future__ import annotations

import base64

import pytest

from tests.reliability_support import noise_image, png_bytes
from tests.ui.browser_calls import settled
from tests.ui.test_browser import DESKTOP, _go, _open, _paint_and_inpaint, browser, expect, url  # noqa: F401

pytestmark = [pytest.mark.browser, pytest.mark.slow]  # a real Chromium and a served app

# Paste `files` ([name, type, base64]) and `text` onto the focused element (the page's body when none); whether
# a handler took it.
PASTE = """([files, text]) => {
  const clipboard = new DataTransfer();
  for (const [name, type, data] of files) {
    clipboard.items.add(new File([Uint8Array.from(atob(data), (c) => c.charCodeAt(0))], name, { type }));
  }
  if (text) clipboard.setData("text/plain", text);
  const paste = new ClipboardEvent("paste", { clipboardData: clipboard, bubbles: true, cancelable: true });
  (document.activeElement || document.body).dispatchEvent(paste);
  return paste.defaultPrevented;
}"""


def _png(width: int, height: int) -> list[str]:
    return ["shot.png", "image/png", base64.b64encode(png_bytes(noise_image(width, height))).decode()]


def _paste(page, *files: list[str], text: str = "") -> bool:
    taken = page.evaluate(PASTE, [list(files), text])
    settled(page)
    return taken


def test_a_pasted_image_goes_into_the_first_empty_image_box_of_the_tab(browser, url) -> None:  # noqa: F811
    page = _open(browser, url, DESKTOP)
    try:
        assert not _paste(page, _png(200, 120))  # Text to image has no image box: the paste is left alone
        _go(page, "Image to image")
        page.evaluate("document.activeElement.blur()")
        assert not _paste(page, ["notes.txt", "text/plain", base64.b64encode(b"a cat").decode()])  # not an image
        expect(page.locator("#img2img-image img")).to_have_count(0)
        assert _paste(page, _png(200, 120))
        expect(page.locator("#img2img-image img")).to_have_count(1)
        assert page.locator("#img2img-image img").evaluate("img => [img.naturalWidth, img.naturalHeight]") == [200, 120]
        # the box's own upload ran: the server set the size from the image, at the checkpoint's resolution
        expect(page.locator("#img2img-width input")).to_have_value("664")
        expect(page.locator("#img2img-height input")).to_have_value("400")
        prompt = page.locator("#img2img-prompt textarea")
        prompt.click()
        assert not _paste(page, _png(96, 64), text="a red fox")  # typing: the text is the paste
        assert _paste(page, _png(96, 64))  # in the prompt, an image alone still goes to the image box (the only)
        expect(page.locator("#img2img-image img")).to_have_count(1)
        page.wait_for_function("document.querySelector('#img2img-image img').naturalWidth === 96")

        _go(page, "Depth to image")
        page.evaluate("document.activeElement.blur()")
        assert _paste(page, _png(64, 64))
        expect(page.locator("#depth-image img")).to_have_count(1)
        expect(page.locator("#depth-map img")).to_have_count(0)
        assert _paste(page, _png(72, 64))  # the first empty box: the depth map
        expect(page.locator("#depth-map img")).to_have_count(1)
        page.wait_for_function("document.querySelector('#depth-map img').naturalWidth === 72")

        _go(page, "Inpaint")
        # the editor set up first (its canvas drawn): a file it gets while it still starts is lost, under load
        page.locator("#inpaint-editor canvas").first.wait_for()
        settled(page)
        page.evaluate("document.activeElement.blur()")
        assert _paste(page, _png(128, 96))  # into the editor, as its own upload: the mask is painted on it
        assert _paint_and_inpaint(page) == [128, 96]  # the mask the run used has the pasted image's size
    finally:
        page.context.close()
