"""The X/Y/Z plot tab in a real Chromium (Playwright) at 1440x900, on `python app.py --tiny --styles STYLES.CSV`
served in-process: the Text to image tab's Hires fix group and the Styles axis, as a visitor uses them; an init
image hides the hires fix. Screenshots go to tests/artifacts/ for a person to look at.
"""

from __future__ import annotations

import io
from functools import partial
from pathlib import Path

import pytest
from PIL import Image

from sd2_app.api.plot_grid import draw_grid
from sd2_app.pipelines.metadata import parse_parameters
from tests.reliability_support import one_thread  # noqa: F401 (a fixture)
from tests.ui.test_browser import XYZ_CELLS, _go, _pick, _set_number, _shot, expect
from tests.ui.test_prompt_styles_browser import page  # noqa: F401 (a fixture: the styles app, oil and frame)

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_a_styles_plot_with_the_hires_fix_from_the_tab(page, tmp_path: Path) -> None:  # noqa: F811
    """Styles on X (the host's two styles picked), the hires fix on at 1.5x: two 96x96 cells labelled by their
    style; an init image then hides the hires fix and turns it off (an image-to-image plot has none)."""
    _go(page, "X/Y/Z plot")
    _pick(page, "xyz-x-type", "Styles")
    for name in ("oil", "frame"):
        _pick(page, "xyz-x-picked", name)
    page.keyboard.press("Escape")
    for elem_id, value in (("xyz-steps", 2), ("xyz-width", 64), ("xyz-height", 64)):
        _set_number(page, elem_id, value)
    page.locator("#xyz-hires-accordion button").first.click()
    page.locator("#xyz-hires input[type=checkbox]").check()
    _set_number(page, "xyz-hires-scale", 1.5)
    expect(page.locator("#xyz-hires-size")).to_have_text("Upscales from 64x64 to 96x96.")
    _shot(page, "xyz-hires-styles-settings")
    page.locator("#xyz-run").click()
    expect(page.locator("#xyz-files a").first).to_be_visible(timeout=180_000)
    expect(page.locator(XYZ_CELLS)).to_have_count(3)
    _shot(page, "xyz-hires-styles-result")
    captions = page.locator("#xyz-gallery .caption-label").all_inner_texts()
    assert [caption.split(" · ")[0] for caption in captions] == ["Grid", "Styles: oil", "Styles: frame"]
    sizes = page.locator(XYZ_CELLS).evaluate_all("imgs => imgs.map(i => [i.naturalWidth, i.naturalHeight])")
    assert sizes[1:] == [[96, 96], [96, 96]]
    init = tmp_path / "init.png"
    Image.new("RGB", (64, 64), (90, 120, 30)).save(init)
    expect(page.locator("#xyz-hires-accordion")).to_be_visible()
    page.get_by_role("button", name="Init image (optional").click()
    page.locator("#xyz-image input[type=file]").set_input_files(str(init))
    expect(page.locator("#xyz-hires-accordion")).to_be_hidden()
    _shot(page, "xyz-init-image-hides-hires")
    page.locator("#xyz-image button[aria-label='Remove Image']").first.click()  # text to image again:
    expect(page.locator("#xyz-hires-accordion")).to_be_visible()  # the fix is shown again, and off
    expect(page.locator("#xyz-hires input[type=checkbox]")).not_to_be_checked()


def test_values_typed_for_another_kind_do_not_replace_the_picked_samplers(page) -> None:  # noqa: F811
    """Typed values win over picked ones (an API caller's x_values), so the tab empties the hidden text box when a
    picked kind is chosen: Steps typed as "1, 2", then Sampler with Euler picked, runs one Euler cell (the stale
    "1, 2" would be read as samplers and refused)."""
    _go(page, "X/Y/Z plot")
    _pick(page, "xyz-x-type", "Steps")
    page.locator("#xyz-x-values textarea").fill("1, 2")
    _pick(page, "xyz-x-type", "Sampler")
    _pick(page, "xyz-x-picked", "Euler")
    page.keyboard.press("Escape")
    for elem_id, value in (("xyz-steps", 1), ("xyz-width", 64), ("xyz-height", 64)):
        _set_number(page, elem_id, value)
    page.locator("#xyz-run").click()
    expect(page.locator("#xyz-files a").first).to_be_visible(timeout=180_000)
    expect(page.locator("#xyz-gallery .caption-label")).to_have_count(2)  # the gallery may land after the files
    captions = page.locator("#xyz-gallery .caption-label").all_inner_texts()
    assert [caption.split(" · ")[0] for caption in captions] == ["Grid", "Euler"]


def _pixels(page, src: str) -> bytes:
    """The pixels of an image the page shows (fetched from the app by its URL), as the means of 8x8 blocks."""
    image = Image.open(io.BytesIO(page.request.get(src).body())).convert("RGB")
    return image.resize((image.width // 8, image.height // 8), Image.Resampling.BOX).tobytes()


def _distances(page, selector: str, sources: list[str]) -> list[float]:
    """The mean absolute difference of the 8x8 block means of the image at `selector` to each of `sources`.
    The image boxes show a lossy WebP of what they hold (Gradio's Image `format`), so an exact comparison cannot
    hold; the tiny model's cells of one seed differ by about 2 in these units, those of two seeds by about 35."""
    shown = _pixels(page, page.locator(selector).get_attribute("src"))
    return [sum(abs(a - b) for a, b in zip(shown, cell)) / len(shown) for cell in map(partial(_pixels, page), sources)]


def _expect_sent(page, prefix: str, prompt: str, seed: int | None, steps: int | None) -> None:
    expect(page.locator(f"#{prefix}-prompt textarea")).to_have_value(prompt, timeout=30_000)  # a queued event
    for elem_id, value in ((f"{prefix}-seed", seed), (f"{prefix}-steps", steps)):
        if value is not None:
            expect(page.locator(f"#{elem_id} input[type=number]")).to_have_value(str(value))


def test_a_picked_cell_is_sent_on_with_its_own_settings(page) -> None:  # noqa: F811
    """Seed 11, 12 on X and Steps 1, 2 on Y: each "Send to" carries the picked cell (not the grid, not another
    cell) with that cell's seed and steps, read from its own parameters text."""
    _go(page, "X/Y/Z plot")
    page.locator("#xyz-prompt textarea").fill("a red barn")
    _pick(page, "xyz-x-type", "Seed")
    page.locator("#xyz-x-values textarea").fill("11, 12")
    _pick(page, "xyz-y-type", "Steps")
    page.locator("#xyz-y-values textarea").fill("1, 2")
    for elem_id, value in (("xyz-steps", 3), ("xyz-width", 64), ("xyz-height", 64)):
        _set_number(page, elem_id, value)
    page.locator("#xyz-prompt textarea").scroll_into_view_if_needed()
    _shot(page, "xyz-axes-and-options")
    page.locator("#xyz-run").click()
    expect(page.locator("#xyz-files a").first).to_be_visible(timeout=180_000)
    expect(page.locator(XYZ_CELLS)).to_have_count(5)
    captions = page.locator("#xyz-gallery .caption-label").all_inner_texts()
    assert [caption.split(" · ")[0] for caption in captions] == [
        "Grid", "Seed: 11, Steps: 1", "Seed: 12, Steps: 1", "Seed: 11, Steps: 2", "Seed: 12, Steps: 2"]
    sources = page.locator(XYZ_CELLS).evaluate_all("imgs => imgs.map(i => i.src)")
    page.locator(XYZ_CELLS).nth(4).click()  # the cell of seed 12, 2 steps
    page.locator("#xyz-send-img2img").click()
    _expect_sent(page, "img2img", "a red barn", 12, 2)
    expect(page.locator("#img2img-image img")).to_be_visible()
    assert _distances(page, "#img2img-image img", sources[1:]) == pytest.approx([35, 2, 35, 2], abs=4)
    _shot(page, "xyz-send-img2img")
    _go(page, "X/Y/Z plot")
    page.locator("#xyz-send-upscale").click()
    _expect_sent(page, "upscale", "a red barn", None, None)
    assert _distances(page, "#upscale-image img", sources[1:]) == pytest.approx([35, 2, 35, 2], abs=4)
    _go(page, "X/Y/Z plot")
    page.locator(XYZ_CELLS).nth(2).click()  # another cell: seed 12, 1 step
    page.locator("#xyz-send-inpaint").click()
    _expect_sent(page, "inpaint", "a red barn", 12, 1)
    _go(page, "X/Y/Z plot")
    page.locator(XYZ_CELLS).nth(3).click()  # seed 11, 2 steps
    page.locator("#xyz-send-txt2img").click()
    _expect_sent(page, "txt2img", "a red barn", 11, 2)
    for elem_id in ("txt2img-width", "txt2img-height"):
        expect(page.locator(f"#{elem_id} input[type=number]")).to_have_value("64")


def _axis_shown(page, name: str) -> tuple[str, str | None, list[str] | None]:
    """An axis row as a visitor sees it: its type, its typed values (None: the box is hidden) and its picked values
    (None: the list is hidden)."""
    prefix = f"#xyz-{name.lower()}"
    kind = page.locator(f"{prefix}-type input").input_value()
    text = page.locator(f"{prefix}-values textarea")
    picked = page.locator(f"{prefix}-picked")
    return (kind, text.input_value() if text.is_visible() else None,
            picked.locator(".token").all_inner_texts() if picked.is_visible() else None)


def test_swapping_axes_trades_types_and_values_and_the_run_follows(page) -> None:  # noqa: F811
    """A1111's swap buttons: Samplers Euler, DDIM picked on X and Steps 1, 2, 3 typed on Y; "Swap X/Y axes" puts
    Steps and its values on X and the two samplers, in their list, on Y (nothing runs); "Swap X/Z axes" with Z
    at Nothing is refused in words and changes nothing. The run then draws 3 columns of steps by 2 rows of
    samplers: the grid of that size, its text naming the swapped axes, the cells in that order."""
    _go(page, "X/Y/Z plot")
    _pick(page, "xyz-x-type", "Sampler")  # the page may come from the tests above
    page.locator("#xyz-x-none").click()
    for name in ("Euler", "DDIM"):
        _pick(page, "xyz-x-picked", name)
    page.keyboard.press("Escape")
    _pick(page, "xyz-y-type", "Steps")
    page.locator("#xyz-y-values textarea").fill("1, 2, 3")
    shown, said = page.locator(XYZ_CELLS).count(), page.locator("#xyz-info").inner_text()
    page.locator("#xyz-swap-xy").click()
    expect(page.locator("#xyz-x-type input")).to_have_value("Steps")
    expect(page.locator("#xyz-y-picked .token")).to_have_count(2)
    assert [_axis_shown(page, name) for name in ("X", "Y")] == [("Steps", "1, 2, 3", None),
                                                               ("Sampler", None, ["Euler", "DDIM"])]
    expect(page.locator("#xyz-x-all")).to_be_hidden()
    expect(page.locator("#xyz-y-all")).to_be_visible()
    page.locator("#xyz-y-picked input").first.click()  # Y's list is the samplers' now
    listed = page.locator("#xyz-y-picked [role=listbox]")
    expect(listed.get_by_role("option", name="Euler a", exact=True)).to_be_visible()
    page.keyboard.press("Escape")
    page.locator("#xyz-swap-xz").click()
    expect(page.locator(".toast-body", has_text="Swap X/Z: the Z axis varies nothing, and the X axis must vary "
                                                "something; choose a Z type first.")).to_be_visible()
    assert _axis_shown(page, "X") == ("Steps", "1, 2, 3", None) and _axis_shown(page, "Z")[0] == "Nothing"
    expect(page.locator(XYZ_CELLS)).to_have_count(shown)  # a swap runs nothing
    assert page.locator("#xyz-info").inner_text() == said
    _shot(page, "xyz-swapped-axes")
    for elem_id, value in (("xyz-width", 64), ("xyz-height", 64)):
        _set_number(page, elem_id, value)
    page.locator("#xyz-run").click()
    expect(page.locator("#xyz-files a").first).to_be_visible(timeout=180_000)
    expect(page.locator("#xyz-gallery .caption-label")).to_have_count(7)
    captions = page.locator("#xyz-gallery .caption-label").all_inner_texts()
    assert [caption.split(" · ")[0] for caption in captions] == [
        "Grid", "Steps: 1, Euler", "Steps: 2, Euler", "Steps: 3, Euler", "Steps: 1, DDIM", "Steps: 2, DDIM",
        "Steps: 3, DDIM"]
    grid = Image.open(io.BytesIO(page.request.get(page.locator(XYZ_CELLS).first.get_attribute("src")).body()))
    text = parse_parameters(grid.info["parameters"])
    assert [text[key] for key in ("X Type", "X Values", "Y Type", "Y Values")] == ["Steps", "1, 2, 3", "Sampler",
                                                                                  "Euler, DDIM"]
    cell = Image.new("RGB", (64, 64))
    drawn = draw_grid([cell] * 6, 3, 2, ["Steps: 1", "Steps: 2", "Steps: 3"], ["Euler", "DDIM"])
    assert grid.size == drawn.size  # 3 columns by 2 rows, labelled so
