"""What a visitor sees before doing anything, in a real Chromium (Playwright): Image to image's size boxes
before and after an upload, and every tab on a 390 px phone without sideways scrolling (the tables' columns
inside their box, headers one short row).

Uses test_browser.py's app and browser fixtures (tiny checkpoints); each test opens its own page, so the order
does not matter. Screenshots go to tests/artifacts/.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from tests.ui.browser_calls import settled, still_context
from tests.ui.test_browser import (ARTIFACTS, DESKTOP, PHONE, TABS, _go, _open, browser,  # noqa: F401
                                   expect, sync_api, url)

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _size_boxes(page) -> tuple[str, str]:
    return tuple(page.locator(f"#img2img-{side} input[type=number]").input_value() for side in ("width", "height"))


def test_opening_the_page_puts_nothing_in_the_queue(browser, url: str) -> None:
    """The page fills its fields on load without a queued event (img2img's size boxes are set by the page), so a
    full queue or an address's limit on waiting events cannot refuse a visitor's first view."""
    context = still_context(browser, viewport=DESKTOP)
    page = context.new_page()
    joined: list[str] = []
    page.on("request", lambda request: joined.append(request.post_data or "") if "/queue/join" in request.url
            else None)
    page.goto(url)
    page.wait_for_function("window.sd2AppReady === true")
    _go(page, "Image to image")
    expect(page.locator("#img2img-width input[type=number]")).to_have_value("512")
    settled(page)  # whatever the load started has been sent and answered
    assert joined == []
    context.close()


def test_img2img_size_boxes_show_the_checkpoint_size_before_an_upload_and_the_images_after(
        browser, url: str, tmp_path: Path) -> None:
    page = _open(browser, url, DESKTOP)
    _go(page, "Image to image")
    # Before an upload: the default checkpoint's (tiny "SD 2.1 base") 512x512, set on the page's load.
    expect(page.locator("#img2img-width input[type=number]")).to_have_value("512")
    assert _size_boxes(page) == ("512", "512")
    assert page.locator("#img2img-width input:invalid, #img2img-height input:invalid").count() == 0
    page.screenshot(path=str(ARTIFACTS / "fit-img2img-size-before-upload.png"))
    # A run without an image still says what is missing.
    page.locator("#img2img-prompt textarea").fill("a blue square")
    page.locator("#img2img-run").click()
    expect(page.locator("#img2img-info")).to_have_text("Upload an init image first.", timeout=30_000)
    expect(page.locator("#img2img-run")).to_be_enabled(timeout=10_000)
    # A 320x200 upload: its 8:5 shape at the checkpoint's 512x512 pixels, sides multiples of 8 (api/resize_modes.py).
    picture = tmp_path / "wide-320x200.png"
    Image.new("RGB", (320, 200), (30, 90, 200)).save(picture)
    page.locator("#img2img-image input[type=file]").set_input_files(str(picture))
    expect(page.locator("#img2img-width input[type=number]")).to_have_value("648")
    expect(page.locator("#img2img-height input[type=number]")).to_have_value("408")
    # The server still refuses a size out of bounds, in words.
    box = page.locator("#img2img-width input[type=number]")
    box.fill("5000")
    box.press("Enter")
    page.locator("#img2img-run").click()
    expect(page.locator("#img2img-info")).to_have_text("Width must be between 64 and 1024, got 5000.",
                                                       timeout=30_000)
    # The image removed: back to the checkpoint's square.
    page.locator("#img2img-image button[aria-label='Remove Image']").first.click()
    expect(page.locator("#img2img-width input[type=number]")).to_have_value("512")
    expect(page.locator("#img2img-height input[type=number]")).to_have_value("512")
    page.context.close()


def _columns(page, elem_id: str) -> dict[str, object]:
    """The table's scrolling box, and its header cells that are drawn (name, left, right, height)."""
    return page.evaluate("""(id) => {
        const box = document.querySelector(`#${id} .virtual-table-viewport`).getBoundingClientRect();
        const heads = [...document.querySelectorAll(`#${id} thead th`)].filter((th) => th.offsetParent !== null)
            .map((th) => { const r = th.getBoundingClientRect(); return [th.innerText.trim(), r.left, r.right, r.height]; });
        return {left: box.left, right: box.right, heads};
    }""", elem_id)


def _assert_stacked(page, upper: str, lower: str) -> None:
    """`lower` is under `upper`, both the whole width of the phone's column."""
    top, under = (page.locator(f"#{elem_id}").bounding_box() for elem_id in (upper, lower))
    assert top and under and under["y"] >= top["y"] + top["height"], (upper, top, lower, under)
    assert under["width"] == top["width"] > PHONE["width"] * 0.8, (upper, top, lower, under)


# The columns each table keeps on a phone (ui/models.py PHONE_COLUMNS, ui/history.py HISTORY_PHONE_COLUMNS).
PHONE_TABLES = {"Models": ("models-status", ["Name", "Loaded", "Size", "Last error"]),
                "History": ("history-table", ["Task", "Parameters"])}


def test_on_a_phone_no_tab_scrolls_sideways_and_the_tables_fit_their_box(browser, url: str) -> None:
    page = _open(browser, url, PHONE)
    for index, name in enumerate(TABS):
        _go(page, name)
        widths = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        assert widths[0] <= widths[1] == PHONE["width"], (name, widths)
        page.screenshot(path=str(ARTIFACTS / f"fit-phone-{index}-{name.split()[0].lower().replace('/', '')}.png"),
                        full_page=True)
        if name in PHONE_TABLES:
            elem_id, shown = PHONE_TABLES[name]
            table = _columns(page, elem_id)
            assert [head[0] for head in table["heads"]] == shown, (name, table)
            for head, left, right, height in table["heads"]:
                # In the box, not behind its right edge; one or two short lines, not a letter per line.
                assert table["left"] - 1 <= left < right <= table["right"] + 1 and height < 60, (name, head, table)
        if name == "X/Y/Z plot":
            # An axis's values list runs the whole width under its type.
            _assert_stacked(page, "xyz-x-type", "xyz-x-picked")
        if name in SEED_ROWS:  # "Schedule type" under the sampler list (beside it, a word or two a line)
            _assert_stacked(page, f"{SEED_ROWS[name]}-sampler", f"{SEED_ROWS[name]}-schedule")
    page.context.close()
    wide = _open(browser, url, DESKTOP)  # a laptop keeps every column
    for name, (elem_id, _) in PHONE_TABLES.items():
        _go(wide, name)
        assert len(_columns(wide, elem_id)["heads"]) == {"Models": 9, "History": 6}[name], name
    wide.context.close()


# Each generating tab and the prefix of its elements' ids.
SEED_ROWS = {"Text to image": "txt2img", "Image to image": "img2img", "Inpaint": "inpaint", "Outpaint": "outpaint",
             "Upscale ×4": "upscale", "Depth to image": "depth", "X/Y/Z plot": "xyz"}


# Whether the button (second selector) is right of the seed box (first) with their bottom edges level (to 2 px).
BESIDE_AND_LEVEL = """([seedSelector, buttonSelector]) => {
  const seed = document.querySelector(seedSelector).getBoundingClientRect();
  const button = document.querySelector(buttonSelector).getBoundingClientRect();
  return button.x > seed.x + seed.width && Math.abs(button.bottom - seed.bottom) <= 2;
}"""


def test_the_seed_buttons_line_up_with_the_seed_box(browser, url: str) -> None:
    page = _open(browser, url, DESKTOP)
    for name, prefix in SEED_ROWS.items():
        _go(page, name)
        # The row in the middle of the page, the buttons in view too (scrolled just into view at the page's bottom
        # edge, the seed box measured 89 px high, 45 px short of the buttons' bottom, on a busy machine).
        page.locator(f"#{prefix}-seed").evaluate("(box) => box.scrollIntoView({block: 'center'})")
        for button in ("random-seed", "reuse-seed"):
            try:  # the page's layout as it settles (a tab drawn a moment ago may still be laying out)
                page.wait_for_function(BESIDE_AND_LEVEL, arg=[f"#{prefix}-seed", f"#{prefix}-{button}"], timeout=15_000)
            except sync_api.TimeoutError:
                pass  # the assertions below say how it is placed
            seed = page.locator(f"#{prefix}-seed").bounding_box()
            box = page.locator(f"#{prefix}-{button}").bounding_box()
            assert seed and box and box["x"] > seed["x"] + seed["width"], (name, button, seed, box)  # beside it
            # Level with the box's bottom edge, to 2 px (fractional layout: 1.6 px apart was seen on a busy run).
            assert abs((box["y"] + box["height"]) - (seed["y"] + seed["height"])) <= 2, (name, button, seed, box)
    page.locator("#xyz-seed").locator("..").locator("..").screenshot(path=str(ARTIFACTS / "fit-seed-row.png"))
    page.context.close()


def _tab_places(page) -> dict[str, tuple[int, int]]:
    return {name: (round(x), round(y)) for name, x, y in page.evaluate(
        "[...document.querySelectorAll('.tabs [role=tab]')].map((t) => { const r = t.getBoundingClientRect();"
        " return [t.innerText.trim(), r.x, r.y]; })")}


def test_on_a_phone_the_tabs_stay_where_they_are_when_one_is_picked(browser, url: str) -> None:
    """All ten tab buttons in rows, in their order; picking one in a lower row marks it there, and no tab moves
    under the visitor's finger."""
    page = _open(browser, url, PHONE)
    places = _tab_places(page)
    assert list(places) == list(TABS) and len({y for _, y in places.values()}) == 3, places
    for name in ("Models", "Upscale ×4", "PNG info", "Text to image"):
        page.get_by_role("tab", name=name).click()
        expect(page.get_by_role("tab", name=name)).to_have_attribute("aria-selected", "true")
        assert _tab_places(page) == places, name
    page.screenshot(path=str(ARTIFACTS / "fit-phone-tabs.png"), clip={"x": 0, "y": 0, "width": 390, "height": 240})
    page.context.close()


def test_on_a_small_laptop_the_tables_show_every_column(browser, url: str) -> None:
    """At 1024 px the tables keep all their columns inside their box, History's files column too."""
    page = _open(browser, url, {"width": 1024, "height": 768})
    for name, (elem_id, _) in PHONE_TABLES.items():
        _go(page, name)
        table = _columns(page, elem_id)
        assert len(table["heads"]) == {"Models": 9, "History": 6}[name], (name, table)
        for head, left, right, _height in table["heads"]:
            assert table["left"] - 1 <= left < right <= table["right"] + 1, (name, head, table)
    page.context.close()


# The Models table's columns from a tablet to a wide screen (ui/models.py TABLET_COLUMNS, LAPTOP_COLUMNS).
MODELS_COLUMNS = {768: ["Name", "Loaded", "Device", "Repository", "Size", "Shared parts", "Last error"],
                  900: ["Name", "Loaded", "Device", "Repository", "Size", "Shared parts", "Last error"],
                  1024: ["Checkpoint", "Name", "Loaded", "Device", "Repository", "Revision", "Size", "Shared parts",
                         "Last error"],
                  1440: ["Checkpoint", "Name", "Loaded", "Device", "Repository", "Revision", "Size", "Shared parts",
                         "Last error"]}


def test_from_a_tablet_to_a_wide_screen_the_models_table_fits_with_a_model_loaded(browser, url: str) -> None:
    """With a model loaded (its repository path filled in), the Models table's columns stay in its box, nothing
    to scroll sideways, and their headers are one or two short lines, not a letter a line."""
    page = _open(browser, url, DESKTOP)
    _go(page, "Models")
    page.locator("#models-load").click()  # the dropdown's first checkpoint
    expect(page.locator("#models-status")).to_contain_text("on the device", timeout=60_000)
    page.context.close()
    for width, shown in MODELS_COLUMNS.items():
        page = _open(browser, url, {"width": width, "height": 900})
        _go(page, "Models")
        expect(page.locator("#models-status")).to_contain_text("on the device")
        table = _columns(page, "models-status")
        scroll = page.locator("#models-status .virtual-table-viewport").evaluate(
            "(box) => [box.scrollWidth, box.clientWidth]")
        page.screenshot(path=str(ARTIFACTS / f"fit-models-{width}.png"), full_page=True)
        assert [head[0] for head in table["heads"]] == shown, (width, table)
        assert scroll[0] <= scroll[1], (width, scroll)
        for head, left, right, height in table["heads"]:
            assert table["left"] - 1 <= left < right <= table["right"] + 1 and height < 60, (width, head, table)
        page.context.close()
