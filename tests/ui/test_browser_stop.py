"""Stop in a real Chromium (Playwright), on the tiny checkpoints: a tab's Stop stops that tab's run, as A1111's
Interrupt stops the current run, and the visitor's job queued from another tab of the page still runs.
Screenshots go to tests/artifacts/.
"""

from __future__ import annotations

import re

import pytest

from tests.ui.test_browser import DESKTOP, _go, _open, _pick, _set_number, _shot, browser, expect, url  # noqa: F401

pytestmark = [pytest.mark.browser, pytest.mark.slow]  # a real Chromium and a served app


def test_a_tabs_stop_leaves_the_plot_queued_from_another_tab_to_run(browser, url) -> None:  # noqa: F811
    """The review's F11, repro A: Text to image runs 150 steps, an X/Y/Z plot waits behind it, Stop on Text to
    image: that run stops and the plot runs to its end (the old Stop stopped every job of the visitor, and the plot
    said "Stopped before sampling began.")."""
    page = _open(browser, url, DESKTOP)
    try:
        for name, value in (("width", 512), ("height", 512), ("steps", 150)):  # seconds of run: Stop lands mid-run
            _set_number(page, f"txt2img-{name}", value)
        page.locator("#txt2img-run").click()
        expect(page.locator("#txt2img-info")).to_contain_text(re.compile(r"Step \d+/150"), timeout=60_000)
        _go(page, "X/Y/Z plot")
        page.locator("#xyz-x-none").click()
        expect(page.locator("#xyz-x-picked .token")).to_have_count(0)
        _pick(page, "xyz-x-picked", "Euler")
        page.keyboard.press("Escape")
        for name, value in (("steps", 2), ("width", 64), ("height", 64)):
            _set_number(page, f"xyz-{name}", value)
        page.locator("#xyz-run").click()
        expect(page.locator("#xyz-stop")).to_be_enabled()
        _go(page, "Text to image")
        page.locator("#txt2img-stop").click()
        expect(page.locator("#txt2img-info")).to_contain_text(re.compile(r"Stopped (after|at step) \d+/150"),
                                                                timeout=30_000)
        _go(page, "X/Y/Z plot")
        expect(page.locator("#xyz-files a").first).to_be_visible(timeout=180_000)
        expect(page.locator("#xyz-gallery .thumbnail-small")).to_have_count(2)  # the grid and its one cell
        expect(page.locator("#xyz-info")).not_to_contain_text("Stopped")
        _shot(page, "stop-leaves-the-queued-plot")
    finally:
        page.context.close()


def test_stop_mid_run_shows_and_keeps_the_image_so_far(browser, url) -> None:  # noqa: F811
    """The review's F6: Stop after some of 150 steps shows the image decoded from the last step's x0 estimate, saying
    where it stopped, with its parameters text marked, and History has it (the old Stop showed nothing and kept
    nothing)."""
    page = _open(browser, url, DESKTOP)
    try:
        for name, value in (("width", 512), ("height", 512), ("steps", 150)):  # seconds of run: Stop lands mid-run
            _set_number(page, f"txt2img-{name}", value)
        page.locator("#txt2img-prompt textarea").first.fill("a lighthouse stopped early")
        page.locator("#txt2img-run").click()
        expect(page.locator("#txt2img-info")).to_contain_text(re.compile(r"Step \d+/150"), timeout=60_000)
        page.locator("#txt2img-stop").click()
        expect(page.locator("#txt2img-gallery img")).to_have_count(1, timeout=60_000)
        info = page.locator("#txt2img-info")
        expect(info).to_contain_text(re.compile(r"Stopped at step (\d+)/150; kept the image so far\."))
        step = re.search(r"Stopped at step (\d+)/150", info.inner_text()).group(1)
        expect(info).to_contain_text("Steps: 150,")
        expect(info).to_contain_text(f"Stopped at step: {step}")
        size = page.locator("#txt2img-gallery img").first.evaluate("img => [img.naturalWidth, img.naturalHeight]")
        assert size == [512, 512]
        _shot(page, "stop-keeps-the-image-so-far")
        _go(page, "History")  # kept like any result: the visitor's History has it, its text marked
        page.locator("#history-refresh").click()
        expect(page.locator("#history-gallery img")).to_have_count(1, timeout=30_000)
        expect(page.locator("#history-table")).to_contain_text("a lighthouse stopped early")
        expect(page.locator("#history-table")).to_contain_text(f"Stopped at step: {step}")
    finally:
        page.context.close()


def test_esc_stops_the_run_which_the_page_title_follows_as_in_a1111(browser, url) -> None:  # noqa: F811
    """Esc in the tab's prompt box, or with nothing focused, presses the tab's Stop while its run is on (the
    placeholder says so); Esc in a dropdown closes the dropdown and the run goes on. While the run is on, the
    page's title starts with its progress ("[12%] "), and is plain again when it ends."""
    page = _open(browser, url, DESKTOP)
    try:
        plain = page.title()
        assert not plain.startswith("[")
        prompt = page.locator("#txt2img-prompt textarea")
        expect(prompt).to_have_attribute(
            "placeholder", "What to draw (Ctrl+Enter generates, Esc stops)")
        for name, value in (("width", 512), ("height", 512), ("steps", 150)):  # seconds of run: Esc lands mid-run
            _set_number(page, f"txt2img-{name}", value)
        info = page.locator("#txt2img-info")
        for focus in ("prompt", "nothing"):
            page.locator("#txt2img-run").click()
            expect(info).to_contain_text(re.compile(r"Step \d+/150"), timeout=60_000)
            expect(page).to_have_title(re.compile(r"^\[\d{1,2}%\] " + re.escape(plain) + "$"))
            if focus == "prompt":
                prompt.click()
            else:
                sampler = page.locator("#txt2img-sampler input").first
                sampler.click()
                page.keyboard.press("Escape")  # the dropdown's: the run goes on
                seen = int(re.search(r"Step (\d+)/150", info.inner_text()).group(1))
                expect(info).to_contain_text(re.compile(rf"Step (?!{seen}/)\d+/150"), timeout=30_000)
                expect(page.locator("#txt2img-stop")).to_be_enabled()
                page.evaluate("document.activeElement.blur()")
            page.keyboard.press("Escape")
            expect(info).to_contain_text(re.compile(r"Stopped at step \d+/150"), timeout=30_000)
            expect(page.locator("#txt2img-stop")).to_be_disabled()
            expect(page).to_have_title(plain)
    finally:
        page.context.close()


def test_skip_ends_the_running_batch_and_the_run_goes_on_as_a1111s_skip(browser, url) -> None:  # noqa: F811
    """Skip shows beside Stop only while a run is on; pressed (or Alt+Enter in the prompt) it ends the running
    batch at its next step with its image so far, and the next batch runs: both skipped batches' images are the
    result, each said, and the run ends as any run does (not stopped)."""
    page = _open(browser, url, DESKTOP)
    try:
        skip, stop = page.locator("#txt2img-skip"), page.locator("#txt2img-stop")
        expect(skip).to_be_hidden()
        for name, value in (("width", 512), ("height", 512), ("steps", 150), ("batch-count", 2)):
            _set_number(page, f"txt2img-{name}", value)
        info = page.locator("#txt2img-info")
        page.locator("#txt2img-run").click()
        expect(info).to_contain_text(re.compile(r"Batch 1/2, step \d+/150"), timeout=60_000)
        expect(skip).to_be_visible()
        _shot(page, "skip-beside-stop")
        skip.click()
        expect(page.locator(".toast-body", has_text="Skipping: the batch (or plot cell) being made ends at its next step")).to_be_visible()
        expect(info).to_contain_text(re.compile(r"Batch 2/2, step \d+/150"), timeout=60_000)
        page.locator("#txt2img-prompt textarea").press("Alt+Enter")
        expect(page.locator("#txt2img-gallery img")).to_have_count(2, timeout=60_000)
        expect(stop).to_be_disabled()
        expect(skip).to_be_hidden()
        for batch in (1, 2):
            expect(info).to_contain_text(re.compile(rf"Skipped batch {batch}/2 at step \d+/150; kept its image so far\."))
        expect(info).not_to_contain_text("Stopped in batch")
    finally:
        page.context.close()


def test_skip_in_an_x_y_z_plot_ends_the_running_cell_and_the_plot_goes_on(browser, url) -> None:  # noqa: F811
    """As A1111's Skip in its X/Y/Z plot: the running cell ends at its next step with its image so far (in the
    grid and among the cells, said in the result) and the next cell runs; the plot is not stopped."""
    page = _open(browser, url, DESKTOP)
    try:
        _go(page, "X/Y/Z plot")
        _pick(page, "xyz-x-type", "Steps")
        page.locator("#xyz-x-values textarea, #xyz-x-values input").first.fill("150, 2")
        for name, value in (("width", 512), ("height", 512)):  # seconds of run: Skip lands in the first cell
            _set_number(page, f"xyz-{name}", value)
        info = page.locator("#xyz-info")
        page.locator("#xyz-run").click()
        expect(info).to_contain_text(re.compile(r"step \d+/152"), timeout=60_000)
        page.locator("#xyz-skip").click()
        expect(page.locator("#xyz-files a").first).to_be_visible(timeout=180_000)
        expect(page.locator("#xyz-gallery .thumbnail-small")).to_have_count(3)  # the grid and both cells
        expect(info).to_contain_text(
            re.compile(r'Skipped the cell "Steps: 150" at step \d+/150; kept its image so far\.'))
        expect(info).not_to_contain_text("Stopped:")
        expect(page.locator("#xyz-skip")).to_be_hidden()
        _shot(page, "xyz-skip")
    finally:
        page.context.close()


def test_generate_right_after_stop_keeps_its_own_run_on_show(browser, url) -> None:  # noqa: F811
    """Stop gave Generate back at once, before the page had cancelled the stopped run's event; a Generate clicked
    then was taken by that cancel: about 2 s later its buttons were reset (Generate on, Stop off) and the stopped
    run's kept image showed, while the new run went on unseen. Generate now comes back at the stopped run's end."""
    page = _open(browser, url, DESKTOP)
    run, stop, info = page.locator("#txt2img-run"), page.locator("#txt2img-stop"), page.locator("#txt2img-info")
    try:
        for name, value in (("width", 512), ("height", 512), ("steps", 150)):  # seconds of run: Stop lands mid-run
            _set_number(page, f"txt2img-{name}", value)
        run.click()
        expect(info).to_contain_text(re.compile(r"Step \d+/150"), timeout=60_000)
        stop.click()
        expect(run).to_be_enabled(timeout=30_000)
        run.click()  # as soon as it can be
        expect(info).to_have_text(re.compile(r"^\s*Step (\d+)/150\s*$"), timeout=60_000)  # the new run's steps
        page.wait_for_timeout(3_000)  # past when the old cancel reset the buttons
        expect(stop).to_be_enabled()
        expect(run).to_be_disabled()
        expect(info).to_have_text(re.compile(r"^\s*Step (\d+)/150\s*$"))
        _shot(page, "generate-right-after-stop")
        stop.click()
        expect(info).to_contain_text("Stopped", timeout=30_000)
    finally:
        page.context.close()
