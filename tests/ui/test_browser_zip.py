"""A result's "Zip" button in a real Chromium (Playwright), as A1111's Zip: the page downloads one zip of every
image the gallery shows, each the very PNG file the gallery serves (its parameters text in it); with no result
yet, a toast says so and nothing downloads; another visitor's page that sends the same call gets nothing."""

from __future__ import annotations

import io
import json
import zipfile

import pytest
from PIL import Image

from sd2_app.ui.zip_results import NOT_IN_HISTORY
from tests.ui.browser_calls import run_and_wait, settled
from tests.ui.test_browser import DESKTOP, _open, _set_number, _shot, browser, expect, url  # noqa: F401

pytestmark = [pytest.mark.browser, pytest.mark.slow]  # a real Chromium and a served app


def test_zip_downloads_every_image_of_the_result_as_the_gallery_serves_it(browser, url) -> None:  # noqa: F811
    page = _open(browser, url, DESKTOP)
    try:
        downloads: list[object] = []
        page.on("download", lambda download: downloads.append(download))
        page.locator("#txt2img-zip").click()
        expect(page.locator(".toast-body", has_text="No images to zip yet: generate first.")).to_be_visible()
        for name, value in (("width", 64), ("height", 72), ("steps", 2), ("batch-size", 3)):
            _set_number(page, f"txt2img-{name}", value)
        page.locator("#txt2img-prompt textarea").fill("three small boats")
        run_and_wait(page, "txt2img")
        expect(page.locator("#txt2img-gallery .thumbnail-item img")).to_have_count(3)
        assert downloads == []
        with page.expect_request(lambda r: "/gradio_api/queue/join" in r.url) as joined:
            with page.expect_download() as zipped:
                page.locator("#txt2img-zip").click()
        zip_join = joined.value.post_data_json  # the page's call of the Zip event, its gallery in it
        assert zipped.value.suggested_filename == "txt2img-images.zip"
        served = [page.request.get(img.get_attribute("src")).body()
                  for img in page.locator("#txt2img-gallery .thumbnail-item img").all()]
        with zipfile.ZipFile(zipped.value.path()) as archive:
            names = archive.namelist()
            assert [name[:3] for name in names] == ["01-", "02-", "03-"] and all(n.endswith(".png") for n in names)
            files = [archive.read(name) for name in names]
        assert files == served  # the gallery's own files, in its order
        texts = [Image.open(io.BytesIO(data)).info["parameters"] for data in files]
        assert all(text.startswith("three small boats\n") and "Size: 64x72" in text for text in texts)
        assert len({text for text in texts}) == 3  # each image's own seed
        expect(page.locator("#txt2img-zip")).to_have_text("Zip")
        page.locator("#txt2img-zip").hover()
        expect(page.locator("#txt2img-zip")).to_have_attribute(
            "title", "Download every image of this result in one zip file")
        _shot(page, "zip-button")
        _another_visitor_cannot_zip_these(browser, url, zip_join)
    finally:
        page.context.close()


def _another_visitor_cannot_zip_these(browser, url: str, zip_join: dict) -> None:  # noqa: F811
    """Another visitor's page sends the first one's Zip call as it was (their files, by their URLs): refused,
    nothing downloads; the files are not among this visitor's results."""
    other = _open(browser, url, DESKTOP)
    try:
        downloads: list[object] = []
        other.on("download", lambda download: downloads.append(download))

        def as_the_first_visitor(route) -> None:
            body = route.request.post_data_json
            if body.get("fn_index") == zip_join["fn_index"]:
                body["data"] = zip_join["data"]
            route.continue_(post_data=json.dumps(body))

        other.route("**/gradio_api/queue/join*", as_the_first_visitor)
        other.locator("#txt2img-zip").click()
        expect(other.locator(".toast-body", has_text=NOT_IN_HISTORY)).to_be_visible()
        settled(other)
        assert downloads == []
    finally:
        other.context.close()
