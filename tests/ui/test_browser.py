"""The app in a real Chromium (Playwright): every tab, a painted inpainting mask, Stop, "send to".

Runs on the tiny checkpoints. Screenshots go to tests/artifacts/ (gitignored) for a person to look at.
Skipped when /usr/bin/chromium or the playwright package is missing.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

pytestmark = [pytest.mark.browser, pytest.mark.slow]  # a real Chromium and a served app: minutes on a small CPU
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
ASSETS = Path(__file__).resolve().parents[2] / "assets"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]

if not CHROMIUM.exists():
    pytest.skip("no /usr/bin/chromium", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from sd2_app.manager import ModelManager
    from sd2_app.checkpoints.catalog import tiny_registry
    from sd2_app.api.service import Service
    from sd2_app.testing.tiny import ensure_tiny_repos
    from sd2_app.ui import build_ui
    from tests.pipeline_fixtures import tiny_dir

    registry = tiny_registry(ensure_tiny_repos(tiny_dir()))
    manager = ModelManager("cpu", registry=registry, cache_dir=tmp_path_factory.mktemp("cache"))
    service = Service(manager, outputs_dir=None, preview_every=2)
    demo = build_ui(service)
    demo.queue(max_size=8, default_concurrency_limit=1)
    _, address, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=_free_port(),
                                quiet=True, show_error=False)
    try:
        yield address
    finally:
        demo.close()


@pytest.fixture(scope="module")
def page(url: str) -> Iterator[object]:
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        page.set_default_timeout(60_000)
        page.goto(url)
        page.get_by_role("tab", name="Text to image").wait_for()
        yield page
        browser.close()


def _shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _set_number(page, elem_id: str, value: int) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


# Each tab and an element that only it shows.
TABS = {"Text to image": "#txt2img-run", "Image to image": "#img2img-run", "Inpaint": "#inpaint-editor",
        "Outpaint": "#outpaint-left", "Upscale ×4": "#upscale-run", "Depth to image": "#depth-map",
        "X/Y/Z plot": "#xyz-x-type",
        "Models": "#models-status", "History": "#history-table", "PNG info": "#pnginfo-image"}


def test_every_tab_opens(page) -> None:
    for index, (name, marker) in enumerate(TABS.items()):
        page.get_by_role("tab", name=name).click()
        assert page.get_by_role("tab", name=name).get_attribute("aria-selected") == "true"
        page.locator(marker).wait_for(state="visible")
        time.sleep(0.3)
        _shot(page, f"tab-{index}-{name.split()[0].lower().replace('/', '')}")


def test_inpaint_with_a_painted_mask_then_send_to_img2img(page, tmp_path: Path) -> None:
    small = tmp_path / "landscape-64.png"
    Image.open(ASSETS / "landscape.png").convert("RGB").resize((64, 64)).save(small)
    page.get_by_role("tab", name="Inpaint").click()
    page.locator("#inpaint-editor input[type=file]").set_input_files(str(small))
    canvas = page.locator("#inpaint-editor canvas").first
    canvas.wait_for()
    time.sleep(1.0)
    box = canvas.bounding_box()
    assert box is not None and box["width"] > 100
    x0, y0 = box["x"] + box["width"] * 0.35, box["y"] + box["height"] * 0.4
    page.mouse.move(x0, y0)
    page.mouse.down()
    for k in range(1, 11):
        page.mouse.move(x0 + k * box["width"] * 0.03, y0 + k * box["height"] * 0.02)
    page.mouse.up()
    _shot(page, "inpaint-1-painted")
    page.locator("#inpaint-prompt textarea").fill("a white cat")
    _set_number(page, "inpaint-steps", 3)
    page.locator("#inpaint-run").click()
    result = page.locator("#inpaint-gallery img").first
    result.wait_for(timeout=120_000)
    page.locator("#inpaint-extra img").first.wait_for()
    _shot(page, "inpaint-2-result")
    assert "Seed" in page.locator("#inpaint-info").inner_text()

    page.locator("#inpaint-send-img2img").click()
    sync_api.expect(page.get_by_role("tab", name="Image to image")).to_have_attribute("aria-selected", "true")
    page.locator("#img2img-image img").first.wait_for()
    sync_api.expect(page.locator("#img2img-prompt textarea")).to_have_value("a white cat")
    _shot(page, "img2img-after-send")


def _natural_size(page, selector: str) -> tuple[int, int]:
    return tuple(page.locator(selector).first.evaluate("img => [img.naturalWidth, img.naturalHeight]"))


def test_outpaint_one_side(page, tmp_path: Path) -> None:
    small = tmp_path / "landscape-48.png"
    Image.open(ASSETS / "landscape.png").convert("RGB").resize((48, 48)).save(small)
    page.get_by_role("tab", name="Outpaint").click()
    page.locator("#outpaint-image input[type=file]").set_input_files(str(small))
    page.locator("#outpaint-image img").first.wait_for()
    _set_number(page, "outpaint-right", 16)
    page.locator("#outpaint-prompt textarea").fill("more of the landscape")
    _set_number(page, "outpaint-steps", 2)
    page.locator("#outpaint-run").click()
    page.locator("#outpaint-gallery img").first.wait_for(timeout=120_000)
    page.locator("#outpaint-extra img").first.wait_for()
    sync_api.expect(page.locator("#outpaint-info")).to_contain_text("Outpaint right: 16")
    _shot(page, "outpaint-result")
    assert _natural_size(page, "#outpaint-gallery img") == (64, 48)
    assert _natural_size(page, "#outpaint-extra img") == (64, 48)


def _pick(page, elem_id: str, option: str) -> None:
    page.locator(f"#{elem_id} input").first.click()
    page.get_by_role("option", name=option, exact=True).click()


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
    sync_api.expect(page.locator("#xyz-gallery img")).to_have_count(5)
    _shot(page, "xyz-plot-result")
    captions = page.locator("#xyz-gallery .caption-label").all_inner_texts()
    assert [c.split(" · ")[0] for c in captions] == ["Grid", "DDIM, CFG scale: 1", "Euler, CFG scale: 1",
                                                    "DDIM, CFG scale: 7.5", "Euler, CFG scale: 7.5"]
    width, height = _natural_size(page, "#xyz-gallery img")
    assert width > 2 * 64 and height > 2 * 64  # the grid with its label margins
    info = page.locator("#xyz-info").inner_text()
    assert 'X Values: "DDIM, Euler"' in info and "Sampler: DPM++ 2M" not in info
    files = page.locator("#xyz-files").inner_text().replace("\n", "")  # Gradio splits name and extension
    assert "xyz-plot-cells.csv" in files and "xyz-plot-cells.json" in files


def test_stop_interrupts_a_running_generation(page) -> None:
    page.get_by_role("tab", name="Text to image").click()
    # Large enough that the run lasts many seconds even on an idle machine, so Stop lands mid-run.
    _set_number(page, "txt2img-width", 384)
    _set_number(page, "txt2img-height", 384)
    _set_number(page, "txt2img-steps", 150)
    page.locator("#txt2img-run").click()
    page.locator("#txt2img-preview img").first.wait_for(timeout=60_000)  # a live preview arrived: it is running
    page.locator("#txt2img-gallery .progress-text, #txt2img-gallery .meta-text").first.wait_for(timeout=20_000)
    time.sleep(1.0)
    _shot(page, "txt2img-1-running")
    page.locator("#txt2img-stop").click()
    # Polls rather than sleeps: on a loaded machine the stop reply can take seconds to come back.
    sync_api.expect(page.locator("#txt2img-info")).to_contain_text("Stop", timeout=30_000)
    time.sleep(1.0)  # any update still in flight from the run lands now, and must not replace the message
    _shot(page, "txt2img-2-stopped")
    assert "Stop" in page.locator("#txt2img-info").inner_text()
    assert page.locator("#txt2img-gallery img").count() == 0


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
