"""The token counter, the embeddings list and the LoRAs list in a real Chromium (Playwright), on the tiny checkpoints.

Screenshots go to tests/artifacts/ (gitignored). Skipped when /usr/bin/chromium or playwright is missing.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.ui.browser_calls import ARGS, ARTIFACTS, CHROMIUM, still_context

pytestmark = [pytest.mark.browser, pytest.mark.slow]

if not CHROMIUM.exists():
    pytest.skip("no /usr/bin/chromium", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def lora_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.lora_support import write_test_loras

    return write_test_loras(tmp_path_factory.mktemp("loras"))


@pytest.fixture(scope="module")
def embedding_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("embeddings")
    save_file({"emb_params": torch.zeros(2, 32)}, str(folder / "tiny-style.safetensors"))
    (folder / "old-style.pt").write_bytes(b"pickle")
    return folder


@pytest.fixture(scope="module")
def page(embedding_folder: Path, lora_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from sd2_app.api.service import Service
    from sd2_app.api.watched_folder import WatchedFolder
    from sd2_app.checkpoints.catalog import tiny_registry
    from sd2_app.loading.embeddings import EmbeddingLibrary
    from sd2_app.loading.loras import LoraLibrary
    from sd2_app.manager import ModelManager
    from sd2_app.testing.tiny import ensure_tiny_repos
    from sd2_app.ui import build_ui
    from tests.pipeline_fixtures import tiny_dir
    from tests.reliability_support import launched

    registry = tiny_registry(ensure_tiny_repos(tiny_dir()))
    manager = ModelManager("cpu", registry=registry, cache_dir=tmp_path_factory.mktemp("cache"))
    service = Service(manager, outputs_dir=None, embeddings=EmbeddingLibrary.scan(embedding_folder),
                      loras=LoraLibrary.scan(lora_folder))
    demo = build_ui(service)
    ARTIFACTS.mkdir(exist_ok=True)
    with launched(demo) as address, pytest.MonkeyPatch.context() as patch:
        patch.setattr(WatchedFolder, "recheck_s", 0)  # the folders looked at on every use: a new file is seen at once
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
            page = still_context(browser, viewport={"width": 1400, "height": 1000}).new_page()
            page.set_default_timeout(60_000)
            page.goto(address)
            page.get_by_role("tab", name="Text to image").wait_for()
            yield page
            browser.close()


def _counter(page, elem_id: str) -> object:
    return page.locator(f"#{elem_id}")


def test_counter_follows_typing(page) -> None:
    sync_api.expect(_counter(page, "txt2img-prompt-tokens")).to_have_text(re.compile(r"\b\d+/75\b"))  # on load
    prompt = page.locator("#txt2img-prompt textarea")
    prompt.fill("")
    prompt.press_sequentially("a " * 10, delay=10)  # keystrokes: the count is sent once typing pauses
    sync_api.expect(_counter(page, "txt2img-prompt-tokens")).to_have_text("10/75")
    prompt.fill("a " * 93)
    sync_api.expect(_counter(page, "txt2img-prompt-tokens")).to_have_text("93/150")
    negative = page.locator("#txt2img-negative textarea")
    negative.fill("(blurry:1.3) tiny-style")
    sync_api.expect(_counter(page, "txt2img-negative-tokens")).to_have_text("8/75")  # "blurry": 6, + 2 vectors
    page.screenshot(path=str(ARTIFACTS / "prompts-counter.png"), full_page=False)


def test_embedding_click_inserts_its_name(page) -> None:
    prompt = page.locator("#txt2img-prompt textarea")
    prompt.fill("a cat")
    page.locator("#txt2img-embeddings").get_by_text("Embeddings (1)").click()
    page.locator("#txt2img-embeddings-list").get_by_text("tiny-style").click()
    sync_api.expect(prompt).to_have_value("a cat, tiny-style")
    sync_api.expect(_counter(page, "txt2img-prompt-tokens")).to_have_text("5/75")  # a, cat, ",", 2 vectors
    sync_api.expect(page.locator("#txt2img-embeddings-refused")).to_contain_text("old-style.pt")
    page.screenshot(path=str(ARTIFACTS / "prompts-embeddings.png"), full_page=False)


def test_counter_counts_the_longest_prompt_of_an_edited_one(page) -> None:
    prompt = page.locator("#txt2img-prompt textarea")
    prompt.fill("[a:" + "a " * 93 + ":0.5] a")  # the longer step: 94 tokens "a"
    sync_api.expect(_counter(page, "txt2img-prompt-tokens")).to_have_text("94/150")
    prompt.fill("[a|a a a a a] a")  # the longer alternative: 6
    sync_api.expect(_counter(page, "txt2img-prompt-tokens")).to_have_text("6/75")
    page.screenshot(path=str(ARTIFACTS / "prompts-editing-counter.png"), full_page=False)


def test_lora_click_adds_its_tag_and_a_second_click_takes_it_out(page) -> None:
    prompt = page.locator("#img2img-prompt textarea")
    page.get_by_role("tab", name="Image to image").click()
    prompt.fill("a cat")
    sync_api.expect(_counter(page, "img2img-prompt-tokens")).to_have_text("2/75")
    page.locator("#img2img-loras").get_by_text("LoRAs (2)").click()
    listing = page.locator("#img2img-loras-list")
    sync_api.expect(listing.get_by_role("button")).to_have_text(["tiny-detail", "upscaler-detail"])
    listing.get_by_text("tiny-detail").click()
    sync_api.expect(prompt).to_have_value("a cat <lora:tiny-detail:1>")
    refused = page.locator("#img2img-loras-refused")
    sync_api.expect(refused).to_contain_text("old-detail.pt: a pickle file, which this app never opens")
    sync_api.expect(refused).to_contain_text("sd15-detail.safetensors: a LoRA for SD 1.x")
    page.screenshot(path=str(ARTIFACTS / "prompts-loras.png"), full_page=False)
    listing.get_by_text("tiny-detail").click()
    sync_api.expect(prompt).to_have_value("a cat")
    page.get_by_role("tab", name="Upscale ×4").click()
    page.locator("#upscale-embeddings").wait_for()
    assert page.locator("#upscale-loras").count() == 0  # LoRAs are made for the SD 2 models, not the x4 upscaler


def test_a_lora_put_in_the_folder_is_listed_when_the_list_is_opened_again(page, lora_folder: Path) -> None:
    """A file copied into the LoRA folder while the page is open: closing and opening the list shows it, with
    the count, and a click adds its tag, as after A1111's Refresh."""
    prompt = page.locator("#txt2img-prompt textarea")
    page.get_by_role("tab", name="Text to image").click()
    prompt.fill("a cat")
    loras, listing = page.locator("#txt2img-loras"), page.locator("#txt2img-loras-list")
    loras.get_by_text("LoRAs (2)").click()
    sync_api.expect(listing.get_by_role("button")).to_have_text(["tiny-detail", "upscaler-detail"])
    shutil.copy(lora_folder / "tiny-detail.safetensors", lora_folder / "tiny-new.safetensors")
    try:
        loras.get_by_text("LoRAs (2)").click()  # closed
        loras.get_by_text("LoRAs (2)").click()  # open again: the folder as it is now
        sync_api.expect(loras.get_by_text("LoRAs (3)")).to_be_visible()
        sync_api.expect(listing.get_by_role("button")).to_have_text(["tiny-detail", "tiny-new", "upscaler-detail"])
        listing.get_by_text("tiny-new").click()
        sync_api.expect(prompt).to_have_value("a cat <lora:tiny-new:1>")
        page.screenshot(path=str(ARTIFACTS / "prompts-loras-refreshed.png"), full_page=False)
    finally:
        (lora_folder / "tiny-new.safetensors").unlink()
        loras.get_by_text("LoRAs (3)").click()


def test_an_embedding_put_in_the_folder_is_listed_when_the_list_is_opened_again(page, embedding_folder: Path) -> None:
    """As for LoRAs: a file written into the embeddings folder while the page is open is listed, with the count,
    when the list is opened again, and a click adds its name to the prompt."""
    prompt = page.locator("#img2img-prompt textarea")
    page.get_by_role("tab", name="Image to image").click()
    prompt.fill("a cat")
    embeddings, listing = page.locator("#img2img-embeddings"), page.locator("#img2img-embeddings-list")
    embeddings.get_by_text("Embeddings (1)").click()
    sync_api.expect(listing.get_by_role("button")).to_have_text(["tiny-style"])
    save_file({"emb_params": torch.zeros(3, 32)}, str(embedding_folder / "tiny-new.safetensors"))
    try:
        embeddings.get_by_text("Embeddings (1)").click()  # closed
        embeddings.get_by_text("Embeddings (1)").click()  # open again: the folder as it is now
        sync_api.expect(embeddings.get_by_text("Embeddings (2)")).to_be_visible()
        sync_api.expect(listing.get_by_role("button")).to_have_text(["tiny-new", "tiny-style"])
        listing.get_by_text("tiny-new").click()
        sync_api.expect(prompt).to_have_value("a cat, tiny-new")
    finally:
        (embedding_folder / "tiny-new.safetensors").unlink()
        embeddings.get_by_text("Embeddings (2)").click()
