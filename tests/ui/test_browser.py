"""The app in a real Chromium (Playwright), as a visitor uses it: layout at 1440x900 and 390x844, whole results,
"send to" (into the inpainting editor too), honest Generate/Stop states, Ctrl+Enter, readable errors.

Runs on the tiny checkpoints. Screenshots go to tests/artifacts/ (gitignored) for a person to look at.
Skipped when /usr/bin/chromium or the playwright package is missing.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from tests.ui.browser_calls import ARGS, ARTIFACTS, CHROMIUM, run_and_wait, settled, shown_size, still_context

pytestmark = [pytest.mark.browser, pytest.mark.slow]  # a real Chromium and a served app: minutes on a small CPU
ASSETS = Path(__file__).resolve().parents[2] / "assets"
DESKTOP = {"width": 1440, "height": 900}
PHONE = {"width": 390, "height": 844}
# An X/Y/Z plot's grid and cells, one image each: the gallery opens on the grid, so it also holds the large image
# on show and (hidden) the grid view's thumbnails.
XYZ_CELLS = "#xyz-gallery .thumbnail-small img"

if not CHROMIUM.exists():
    pytest.skip("no /usr/bin/chromium", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from sd2_app.manager import ModelManager
    from sd2_app.checkpoints.catalog import tiny_registry
    from sd2_app.api.service import Service
    from sd2_app.testing.tiny import ensure_tiny_repos
    from sd2_app.ui import build_ui
    from tests.pipeline_fixtures import tiny_dir
    from tests.reliability_support import launched

    registry = tiny_registry(ensure_tiny_repos(tiny_dir()))
    manager = ModelManager("cpu", registry=registry, cache_dir=tmp_path_factory.mktemp("cache"))
    service = Service(manager, outputs_dir=None, preview_every=2)
    with launched(build_ui(service)) as address:
        yield address


@pytest.fixture(scope="module")
def browser(url: str) -> Iterator[object]:
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield browser
        browser.close()


def _open(browser, url: str, viewport: dict[str, int], theme: str = "light"):
    page = still_context(browser, viewport=viewport).new_page()
    page.set_default_timeout(60_000)
    page.goto(f"{url}?__theme={theme}")
    page.get_by_role("tab", name="Text to image").wait_for()
    page.wait_for_function("window.sd2AppReady === true")  # the page script (styles, shortcuts) has run
    return page


@pytest.fixture(scope="module")
def page(browser, url: str) -> Iterator[object]:
    page = _open(browser, url, DESKTOP)
    yield page
    page.context.close()


def _shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def _set_number(page, elem_id: str, value: int) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def _go(page, name: str) -> None:
    """Open a tab as a visitor would: its button in the tab bar (on a phone, possibly in the second row)."""
    tab = page.get_by_role("tab", name=name)
    button = tab if tab.count() else page.locator(".tabs .overflow-dropdown button", has_text=name)
    expect(button.first).to_be_visible()
    button.first.click()
    if tab.count():
        expect(tab.first).to_have_attribute("aria-selected", "true")
    else:  # picked from the overflow menu
        settled(page)


def _box(page, selector: str) -> dict[str, float]:
    box = page.locator(selector).first.bounding_box()
    assert box is not None, selector
    return box


# Each tab and its primary action (what a visitor came to press).
TABS = {"Text to image": "#txt2img-run", "Image to image": "#img2img-run", "Inpaint": "#inpaint-run",
        "Outpaint": "#outpaint-run", "Upscale ×4": "#upscale-run", "Depth to image": "#depth-run",
        "X/Y/Z plot": "#xyz-run",
        "Models": "#models-load", "History": "#history-refresh", "PNG info": "#pnginfo-image"}


def test_every_tab_shows_its_primary_action_without_scrolling(browser, url: str) -> None:
    for theme in ("light", "dark"):
        page = _open(browser, url, DESKTOP, theme)
        for index, (name, action) in enumerate(TABS.items()):
            _go(page, name)
            expect(page.locator(action)).to_be_visible()
            box = _box(page, action)
            assert box["y"] >= 0 and box["y"] + box["height"] <= DESKTOP["height"], (name, box)
            _shot(page, f"desktop-{theme}-{index}-{name.split()[0].lower().replace('/', '')}")
        page.context.close()


def test_on_a_phone_every_tab_is_reachable_and_generate_is_near_the_top(browser, url: str) -> None:
    page = _open(browser, url, PHONE)
    assert page.locator(".tabs .overflow-menu > button").first.is_hidden()  # no "More tabs" menu to find
    for index, (name, action) in enumerate(TABS.items()):
        _go(page, name)
        expect(page.locator(action)).to_be_visible()
        assert _box(page, action)["y"] < 1000, name  # page coordinates: at most a short scroll
        page.screenshot(path=str(ARTIFACTS / f"phone-{index}-{name.split()[0].lower().replace('/', '')}.png"),
                        full_page=True)
    _go(page, "Inpaint")
    # The label's text ends before the editor's toolbar (zoom, undo, clear) starts on the same line.
    label_end = page.locator("#inpaint-editor [data-testid=block-label]").first.evaluate(
        "(label) => { const r = document.createRange(); r.selectNodeContents(label); return r.getBoundingClientRect().right; }")
    toolbar = _box(page, "#inpaint-editor .top-panel")
    assert label_end <= toolbar["x"], (label_end, toolbar)
    # The empty canvas's hint wraps between the tool column and the editor's right edge.
    hint, tools, editor = (_box(page, f"#inpaint-editor {part}") for part in (".empty.wrap p", ".toolbar-wrap", ""))
    assert hint["x"] >= tools["x"] + tools["width"] and hint["x"] + hint["width"] <= editor["x"] + editor["width"], \
        (hint, tools, editor)
    page.context.close()


def _generate_txt2img(page, width: int, height: int, *, prompt: str = "a red fox", shortcut: bool = False) -> None:
    """A text to image run with this prompt and size at 2 steps (by Ctrl+Enter in the prompt with `shortcut`,
    which first adds a new line to it), whatever the tab held before."""
    _go(page, "Text to image")
    _set_number(page, "txt2img-width", width)
    _set_number(page, "txt2img-height", height)
    _set_number(page, "txt2img-steps", 2)
    box = page.locator("#txt2img-prompt textarea")
    box.fill(prompt)
    if shortcut:
        box.press("Enter")  # a new line, not a run
        expect(box).to_have_value(prompt + "\n")
        assert page.locator("#txt2img-run").is_enabled()
    # The token counter's first count and the first run both import the pipelines lazily; started together
    # they can meet in Python's import lock, so the count goes first here.
    expect(page.locator("#txt2img-prompt-tokens")).to_contain_text("/75", timeout=30_000)
    run_and_wait(page, "txt2img", start=(lambda: box.press("Control+Enter")) if shortcut else None)
    page.locator("#txt2img-gallery img").first.wait_for(timeout=120_000)
    settled(page)  # the result has landed and the page stopped moving: a click next hits what it aims at


def test_ctrl_enter_generates_and_the_whole_result_is_shown_in_view(page) -> None:
    _generate_txt2img(page, 64, 72, shortcut=True)
    _shot(page, "txt2img-result")
    image = page.locator("#txt2img-gallery img").first
    fit = image.evaluate("(img) => [getComputedStyle(img).objectFit, img.naturalWidth, img.naturalHeight]")
    assert fit == ["contain", 64, 72]  # the whole 64x72 image, letterboxed rather than cropped
    shown, gallery = image.bounding_box(), _box(page, "#txt2img-gallery")
    assert shown is not None and shown["height"] > 200  # one image fills the box (the grid follows the batch)
    assert gallery["y"] <= shown["y"] and shown["y"] + shown["height"] <= gallery["y"] + gallery["height"] + 1
    assert shown["y"] + shown["height"] <= DESKTOP["height"]  # in view without scrolling
    assert "Seed" in page.locator("#txt2img-info").inner_text()


def test_send_to_inpaint_fills_the_editor_even_after_an_upload(page, tmp_path: Path) -> None:
    """The sequence that froze Gradio's editor: upload in Inpaint, generate elsewhere, "Send to inpaint"."""
    small = tmp_path / "landscape-64.png"
    Image.open(ASSETS / "landscape.png").convert("RGB").resize((64, 64)).save(small)
    _go(page, "Inpaint")
    page.locator("#inpaint-editor input[type=file]").set_input_files(str(small))
    page.locator("#inpaint-editor canvas").first.wait_for()
    settled(page)  # the upload's checks have answered
    _generate_txt2img(page, 64, 72, prompt="a lighthouse on a cliff")  # this test's own prompt and settings
    page.locator("#txt2img-send-inpaint").click()
    # The send is queued (so its errors show): on a busy machine its answer can take a while.
    expect(page.get_by_role("tab", name="Inpaint")).to_have_attribute("aria-selected", "true", timeout=30_000)
    expect(page.locator("#inpaint-prompt textarea")).to_have_value("a lighthouse on a cliff")
    expect(page.locator("#inpaint-steps input[type=number]")).to_have_value("2")  # the settings came along
    tracker = page.locator("#inpaint-editor [data-testid=status-tracker]").first
    expect(tracker).to_have_class(re.compile(r"\bhide\b"), timeout=5_000)  # no endless spinner over the canvas
    _shot(page, "inpaint-1-sent")
    # The mask the run used has the sent image's size (64x72), not the uploaded one's (64x64).
    assert _paint_and_inpaint(page) == [64, 72]
    page.locator("#inpaint-send-img2img").click()
    expect(page.get_by_role("tab", name="Image to image")).to_have_attribute("aria-selected", "true", timeout=30_000)
    page.locator("#img2img-image img").first.wait_for()
    _shot(page, "img2img-after-send")


def _paint_and_inpaint(page) -> list[int]:
    """Once the editor holds an image (its placeholder gone, and still gone a moment later): a stroke across
    it, Generate, and the size of the mask the run used."""
    page.locator("#inpaint-editor canvas").first.wait_for()  # the editor is drawn (a send may draw its tab)
    empty = page.locator("#inpaint-editor .empty.wrap")
    expect(empty).to_have_count(0, timeout=30_000)
    settled(page)  # the editor could empty itself again once drawn (a fresh page's first send did)
    expect(empty).to_have_count(0)
    # The editor's Undo turns on once a stroke is on the mask layer. A stroke made while the editor still sets up
    # its sent image can be lost (the page then says "The mask is empty"): as a visitor would, paint once more.
    undo = page.locator("#inpaint-editor").get_by_role("button", name="Undo")
    for attempt in range(2):
        # in view: a stroke above the screen's top (the page scrolled down to the settings) paints nothing
        page.locator("#inpaint-editor canvas").first.scroll_into_view_if_needed()
        canvas = _box(page, "#inpaint-editor canvas")
        x0, y0 = canvas["x"] + canvas["width"] * 0.4, canvas["y"] + canvas["height"] * 0.4
        page.mouse.move(x0, y0)
        page.mouse.down()
        for k in range(1, 5):  # each move redraws the editor's canvas (in software here): a few long segments
            page.mouse.move(x0 + k * 15, y0 + k * 10)
        page.mouse.up()
        try:
            expect(undo).to_be_enabled(timeout=5_000)
            break
        except AssertionError:
            if attempt:
                raise
    _shot(page, "inpaint-1-painted")
    try:
        run_and_wait(page, "inpaint")
    finally:
        _shot(page, "inpaint-2-result")
    return list(shown_size(page, "#inpaint-extra img"))


def test_an_image_in_the_inpaint_editor_is_not_sent_again_by_events_elsewhere(browser, url: str,
                                                                                 tmp_path: Path) -> None:
    """An image in the inpaint editor goes to the server when a run needs it (and once to its upload check), not
    at each event of the page: Gradio's page reads the editor again at every status message of any event once an
    event has shown progress on the editor or on a block around it (the sends' tab switch), and each read uploaded
    the editor's image anew (hundreds of uploads per page, spending the visitor's upload budget)."""
    small = tmp_path / "landscape-64.png"
    Image.open(ASSETS / "landscape.png").convert("RGB").resize((64, 64)).save(small)
    page = _open(browser, url, DESKTOP)
    uploads: list[str] = []
    page.on("request", lambda request: uploads.append(request.url)
            if request.method == "POST" and request.url.split("?")[0].endswith("/gradio_api/upload") else None)
    try:
        _go(page, "Inpaint")
        page.locator("#inpaint-editor input[type=file]").set_input_files(str(small))
        page.locator("#inpaint-editor canvas").first.wait_for()
        settled(page)
        assert len(uploads) == 1  # the file, to the editor's upload check (`uploads.file_check`)
        _generate_txt2img(page, 64, 72, prompt="a harbour at night")  # a run with previews, numbers, a prompt
        assert len(uploads) == 1  # nothing of the editor's was sent by them
        page.locator("#txt2img-send-inpaint").click()
        expect(page.get_by_role("tab", name="Inpaint")).to_have_attribute("aria-selected", "true", timeout=30_000)
        expect(page.locator("#inpaint-prompt textarea")).to_have_value("a harbour at night")
        settled(page)
        sent = len(uploads)  # the tab switch reads every widget once: the editor's background and composite
        assert sent <= 1 + 2, uploads
        page.locator("#inpaint-prompt textarea").fill("a harbour at dawn")  # its token count is an event
        _set_number(page, "inpaint-steps", 3)
        expect(page.locator("#inpaint-prompt-tokens")).to_contain_text("/75")
        settled(page)
        assert len(uploads) == sent, uploads[sent:]
    finally:
        page.context.close()


def test_send_to_inpaint_fills_the_editor_of_a_page_that_never_opened_inpaint(browser, url: str) -> None:
    """A fresh visitor's first "Send to inpaint": the Inpaint tab (and its editor) is first drawn by that send."""
    page = _open(browser, url, DESKTOP)
    try:
        _generate_txt2img(page, 64, 72, prompt="a boat at dawn")
        page.locator("#txt2img-send-inpaint").click()
        expect(page.get_by_role("tab", name="Inpaint")).to_have_attribute("aria-selected", "true", timeout=30_000)
        expect(page.locator("#inpaint-prompt textarea")).to_have_value("a boat at dawn")
        assert _paint_and_inpaint(page) == [64, 72]
        expect(page.locator("#inpaint-info")).to_contain_text("Size: 64x72")
    finally:
        page.context.close()


def test_send_before_any_result_says_so(page) -> None:
    _go(page, "Depth to image")
    page.locator("#depth-send-inpaint").click()
    expect(page.locator(".toast-body", has_text="Generate an image first.")).to_be_visible(timeout=15_000)
    expect(page.get_by_role("tab", name="Depth to image")).to_have_attribute("aria-selected", "true")


def test_send_during_a_run_says_to_wait_for_it(page) -> None:
    """Generate empties the tab's gallery (nothing old passes for new), so a send during the run found no image:
    it said "Generate an image first." to a visitor who just had."""
    from sd2_app.ui.result_panel import STILL_RUNNING

    _go(page, "Text to image")
    # A run of seconds, still on when the send answers, whatever size an earlier test left (150 steps at 64x72
    # took under a second, and the send found its finished image).
    for name, value in (("width", 512), ("height", 512), ("steps", 150)):
        _set_number(page, f"txt2img-{name}", value)
    page.locator("#txt2img-run").click()
    expect(page.locator("#txt2img-stop")).to_be_enabled()
    page.locator("#txt2img-send-inpaint").click()
    expect(page.locator(".toast-body", has_text=STILL_RUNNING)).to_be_visible(timeout=15_000)
    expect(page.get_by_role("tab", name="Text to image")).to_have_attribute("aria-selected", "true")
    # the run goes on (its steps count on), then Stop ends it
    expect(page.locator("#txt2img-info")).to_contain_text(re.compile(r"Step \d+/150"), timeout=60_000)
    expect(page.locator("#txt2img-stop")).to_be_enabled()
    page.locator("#txt2img-stop").click()
    expect(page.locator("#txt2img-run")).to_be_enabled(timeout=60_000)


def test_a_failed_run_says_why_and_leaves_no_error_badge(page) -> None:
    _go(page, "Upscale ×4")
    page.locator("#upscale-prompt textarea").fill("a cat")
    page.locator("#upscale-run").click()
    expect(page.locator(".toast-body", has_text=re.compile(r"Upload .* first\."))).to_be_visible(timeout=30_000)
    # The toast fades; the info line keeps the reason.
    expect(page.locator("#upscale-info")).to_have_text("Upload an image to upscale first.")
    in_view = page.locator("#upscale-run-status .run-status-text")  # under the buttons
    expect(in_view).to_have_text("Upload an image to upscale first.")
    expect(page.locator("#upscale-run")).to_be_enabled(timeout=10_000)  # a failed run gives Generate back
    expect(page.locator("#upscale-stop")).to_be_disabled()
    # The message was the toast; the results carry no lasting "Error" badge (the run's end resets them).
    expect(page.locator("#upscale-gallery .clear-status")).to_have_count(0)


def test_outpaint_works_out_of_the_box_then_on_one_side(page, tmp_path: Path) -> None:
    small = tmp_path / "landscape-48.png"
    Image.open(ASSETS / "landscape.png").convert("RGB").resize((48, 48)).save(small)
    page.get_by_role("tab", name="Outpaint").click()
    page.locator("#outpaint-image input[type=file]").set_input_files(str(small))
    page.locator("#outpaint-image img").first.wait_for()
    for side in ("left", "right", "up", "down"):  # A1111's outpainting default (requests.OUTPAINT_MARGIN)
        expect(page.locator(f"#outpaint-{side} input[type=number]")).to_have_value("128")
    page.locator("#outpaint-prompt textarea").fill("more of the landscape")
    _set_number(page, "outpaint-steps", 2)
    page.locator("#outpaint-run").click()  # the first Generate, no slider touched
    expect(page.locator("#outpaint-info")).to_contain_text("Outpaint left: 128", timeout=120_000)
    assert shown_size(page, "#outpaint-gallery img", (48 + 256, 48 + 256)) == (48 + 256, 48 + 256)
    for side in ("left", "up", "down"):
        _set_number(page, f"outpaint-{side}", 0)
    _set_number(page, "outpaint-right", 16)
    page.locator("#outpaint-run").click()
    expect(page.locator("#outpaint-info")).to_contain_text("Outpaint right: 16", timeout=120_000)
    page.locator("#outpaint-extra img").first.wait_for()
    _shot(page, "outpaint-result")
    assert shown_size(page, "#outpaint-gallery img", (64, 48)) == (64, 48)
    assert shown_size(page, "#outpaint-extra img", (64, 48)) == (64, 48)


def _pick(page, elem_id: str, option: str) -> None:
    """Pick `option` in the dropdown `elem_id`, in its own list: the list of a dropdown just picked in fades out for
    200 ms (Gradio's Dropdown options, a Svelte fly transition) and another axis type's list offers the same names."""
    page.locator(f"#{elem_id} input").first.click()
    page.locator(f"#{elem_id} [role=listbox]").get_by_role("option", name=option, exact=True).click()


def test_xy_plot_2x2(page) -> None:
    page.get_by_role("tab", name="X/Y/Z plot").click()
    page.locator("#xyz-x-none").click()  # select none, then pick two samplers: DDIM first
    sync_api.expect(page.locator("#xyz-x-picked .token")).to_have_count(0)
    _pick(page, "xyz-x-picked", "DDIM")
    _pick(page, "xyz-x-picked", "Euler")
    page.keyboard.press("Escape")
    _pick(page, "xyz-y-type", "CFG scale")
    page.locator("#xyz-y-values textarea, #xyz-y-values input").first.fill("1, 7.5")
    _set_number(page, "xyz-steps", 2)
    _set_number(page, "xyz-width", 64)
    _set_number(page, "xyz-height", 64)
    page.locator("#xyz-run").click()
    sync_api.expect(page.locator("#xyz-files a").first).to_be_visible(timeout=180_000)
    # The gallery opens on the grid, large, as A1111 shows a plot's result; the grid and cells are thumbnails below.
    picked = page.locator("#xyz-gallery .thumbnail-small.selected")
    sync_api.expect(picked).to_have_attribute("aria-label", "Thumbnail 1 of 5")
    sync_api.expect(page.locator("#xyz-gallery .thumbnail-small")).to_have_count(5)
    shown = page.locator("#xyz-gallery .media-button img")
    sync_api.expect(shown).to_be_visible()
    assert _box(page, "#xyz-gallery .media-button img")["width"] > 300  # a thumbnail among 5 cells is ~130 px
    _shot(page, "xyz-plot-result")
    captions = page.locator("#xyz-gallery .caption-label").all_text_contents()
    assert [c.split(" · ")[0] for c in captions] == ["Grid", "DDIM, CFG scale: 1", "Euler, CFG scale: 1",
                                                    "DDIM, CFG scale: 7.5", "Euler, CFG scale: 7.5"]
    width, height = shown_size(page, "#xyz-gallery .media-button img")
    assert width > 2 * 64 and height > 2 * 64  # the grid with its label margins
    info = page.locator("#xyz-info").inner_text()
    assert 'X Values: "DDIM, Euler"' in info and "Sampler: DPM++ 2M" not in info
    files = page.locator("#xyz-files").inner_text().replace("\n", "")  # Gradio splits name and extension
    assert "xyz-plot-cells.csv" in files and "xyz-plot-cells.json" in files


def test_xyz_plot_over_a1111s_hires_upscaler_and_prompt_order(page) -> None:
    """A hires axis picks its values from the upscalers; Prompt order takes typed terms; the warning says the
    hires fix was turned on."""
    page.get_by_role("tab", name="X/Y/Z plot").click()
    _pick(page, "xyz-x-type", "Hires upscaler")
    page.keyboard.press("Escape")
    sync_api.expect(page.locator("#xyz-x-picked .token")).to_have_count(0)  # the type's change emptied the values
    sync_api.expect(page.get_by_role("option")).to_have_count(0)
    page.locator("#xyz-x-picked input").first.click()
    assert page.get_by_role("option").all_inner_texts() == ["Latent", "Latent (nearest-exact)", "Lanczos", "SD2 x4"]
    page.get_by_role("option", name="Lanczos", exact=True).click()
    page.get_by_role("option", name="Latent (nearest-exact)", exact=True).click()
    page.keyboard.press("Escape")
    _pick(page, "xyz-y-type", "Prompt order")
    page.locator("#xyz-y-values textarea, #xyz-y-values input").first.fill("fox, cat")
    page.locator("#xyz-prompt textarea").first.fill("a fox and a cat")
    for elem_id, value in (("xyz-steps", 2), ("xyz-width", 64), ("xyz-height", 64)):
        _set_number(page, elem_id, value)
    page.locator("#xyz-run").click()
    last = page.locator("#xyz-gallery .caption-label").nth(4)  # the last cell (another plot may be on show first)
    sync_api.expect(last).to_contain_text("Hires upscaler: Latent (nearest-exact), cat, fox", timeout=180_000)
    sync_api.expect(page.locator("#xyz-files a").first).to_be_visible(timeout=60_000)
    sync_api.expect(page.locator(XYZ_CELLS)).to_have_count(5)
    _shot(page, "xyz-plot-new-axes")
    captions = page.locator("#xyz-gallery .caption-label").all_inner_texts()
    assert [c.split(" · ")[0] for c in captions] == [
        "Grid", "Hires upscaler: Lanczos, fox, cat", "Hires upscaler: Latent (nearest-exact), fox, cat",
        "Hires upscaler: Lanczos, cat, fox", "Hires upscaler: Latent (nearest-exact), cat, fox"]
    info = page.locator("#xyz-info").inner_text()
    assert "The hires fix was off; the Hires upscaler axis turns it on" in info
    assert 'Y Type: Prompt order, Y Values: "fox, cat"' in info
    cell = page.locator(XYZ_CELLS).nth(1)  # a cell: the hires fix's 2x of 64x64
    assert cell.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [128, 128]


def test_generate_and_stop_say_what_is_happening(page) -> None:
    _generate_txt2img(page, 64, 64)  # a result on show, which the next run must take away
    run, stop, info = page.locator("#txt2img-run"), page.locator("#txt2img-stop"), page.locator("#txt2img-info")
    expect(stop).to_be_disabled()  # nothing to stop while idle
    # Large enough that the run lasts many seconds even on an idle machine, so Stop lands mid-run.
    _set_number(page, "txt2img-width", 512)
    _set_number(page, "txt2img-height", 512)
    _set_number(page, "txt2img-steps", 150)
    run.click()
    expect(run).to_be_disabled()
    expect(run).to_have_text("Running…")
    expect(stop).to_be_enabled()
    assert page.locator("#txt2img-gallery img").count() == 0  # the last run's result is gone, not passed off
    _shot(page, "txt2img-1-running")
    expect(info).to_contain_text(re.compile(r"Step \d+/150"), timeout=60_000)
    status = page.locator("#txt2img-run-status .run-status-text")  # under the buttons, in view: the run's state
    expect(status).to_have_text(re.compile(r"^(Step \d+/150|Stopping at the next step…)$"))
    stop.click()  # at once: on an idle machine the whole run takes only seconds
    expect(info).to_contain_text(re.compile(r"Stopped at step \d+/150; kept the image so far\."), timeout=30_000)
    # The info line is under the results, below the fold of a laptop screen: the line under the buttons the
    # visitor just pressed says it too, in view.
    expect(status).to_have_text(re.compile(r"^Stopped at step \d+/150; kept the image so far\.$"))
    expect(info).to_contain_text(status.inner_text())  # the same count (the info box may show Gradio's timer too)
    box = _box(page, "#txt2img-run-status .run-status-text")
    assert box["height"] > 10 and 0 <= box["y"] and box["y"] + box["height"] <= DESKTOP["height"], box
    stop_box = _box(page, "#txt2img-stop")
    assert 0 <= box["y"] - (stop_box["y"] + stop_box["height"]) < 40, (box, stop_box)  # right under Stop
    _shot(page, "txt2img-2-stopped")
    expect(run).to_be_enabled()
    expect(run).to_have_text("Generate")
    expect(stop).to_be_disabled()
    settled(page)  # any update still in flight from the run has landed, and must not have replaced it
    expect(info).to_contain_text(re.compile(r"Stopped at step \d+/150; kept the image so far\."))
    _shot(page, "txt2img-3-stopped-later")
    _set_number(page, "txt2img-steps", 2)
    _set_number(page, "txt2img-width", 64)
    _set_number(page, "txt2img-height", 64)
    run.click()  # a new run: the last Stop's message goes
    expect(status).not_to_have_text(re.compile("Stopped"))
    page.locator("#txt2img-gallery img").first.wait_for(timeout=120_000)
    expect(info).to_contain_text("Seed")
    expect(status).to_have_text("")  # a finished result is told under the image, not here


@pytest.mark.slow
def test_hires_fix_run_shows_the_upscaled_image_and_its_parameters(page) -> None:
    page.get_by_role("tab", name="Text to image").click()
    _set_number(page, "txt2img-width", 64)
    _set_number(page, "txt2img-height", 64)
    _set_number(page, "txt2img-steps", 3)
    page.locator("#txt2img-hires-accordion").get_by_role("button", name="Hires fix").first.click()
    page.locator("#txt2img-hires input[type=checkbox]").check()
    _set_number(page, "txt2img-hires-scale", 1.5)
    _set_number(page, "txt2img-hires-steps", 4)
    _shot(page, "txt2img-hires-1-settings")
    page.locator("#txt2img-run").click()
    sync_api.expect(page.locator("#txt2img-info")).to_contain_text("Hires upscaler: Latent", timeout=120_000)
    image = page.locator("#txt2img-gallery img").first
    image.wait_for()
    _shot(page, "txt2img-hires-2-result")
    info = page.locator("#txt2img-info").inner_text()
    assert "Size: 64x64" in info and "Hires upscale: 1.5" in info and "Hires steps: 4" in info
    assert "Denoising strength: 0.5" in info
    assert image.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [96, 96]
    page.locator("#txt2img-hires input[type=checkbox]").uncheck()  # later tests expect the plain tab


def test_history_shows_whole_thumbnails_and_its_table_fits_the_page(page) -> None:
    _generate_txt2img(page, 64, 72)
    _go(page, "History")
    page.locator("#history-refresh").click()
    thumb = page.locator("#history-gallery img").first
    thumb.wait_for(timeout=30_000)
    _shot(page, "history")
    gallery, box = _box(page, "#history-gallery"), thumb.bounding_box()
    assert box is not None and box["width"] <= gallery["width"] / 5  # a thumbnail, not a page-wide square
    assert box["y"] + box["height"] <= gallery["y"] + gallery["height"]  # whole, inside the gallery's box
    assert thumb.evaluate("(img) => getComputedStyle(img).objectFit") == "contain"  # not cropped
    files = _box(page, "#history-table th:last-child")
    assert files["x"] + files["width"] <= DESKTOP["width"]  # the last column ("Files") is on the page
    expect(page.locator("#history-table th:last-child")).to_contain_text("Files")
