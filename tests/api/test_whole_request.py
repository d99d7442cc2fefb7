"""The whole request around the pipeline (issue 24 section 3): one PNG encode per image, saving on a writer
thread, the timing split and its log line, latent-size previews. Through the running app: tests/ui/test_whole_request_app.py."""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pytest
from PIL import Image

from sd2_app.api.requests import Sampling, Txt2ImgRequest
from sd2_app.api.timing import LINE_PREFIX, PHASES, in_app
from sd2_app.pipelines.metadata import read_png_parameters
from tests.ui_doubles import fake_service

KEPT = {"validate", "gate", "load", "run", "mark", "encode", "save", "history"}


def _txt(seed: int = 1, batch: int = 1, steps: int = 2) -> Txt2ImgRequest:
    return Txt2ImgRequest("a cat", width=64, height=64, sampling=Sampling(steps=steps, seed=seed, batch_size=batch))


@pytest.fixture
def png_encodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every PNG PIL encodes from here on (the plugin's save function, whatever called it), by image width."""
    encodes: list[int] = []
    original = Image.SAVE["PNG"]

    def counting(image: Image.Image, fp: object, filename: object, *args: object) -> None:
        encodes.append(image.width)
        original(image, fp, filename, *args)

    monkeypatch.setitem(Image.SAVE, "PNG", counting)
    return encodes


def test_each_image_is_encoded_once_and_saved_as_those_bytes(tmp_path: Path, png_encodes: list[int]) -> None:
    service = fake_service(tmp_path)
    result = service.run(_txt(seed=5, batch=2))
    assert len(png_encodes) == 2 and len(result.png) == 2 and len(result.saved) == 2
    assert [path.read_bytes() for path in result.saved] == result.png
    assert read_png_parameters(result.saved[1]) == result.images[1].info["parameters"]
    assert [path.name for path in result.saved] == ["00000-5-txt2img.png", "00001-6-txt2img.png"]  # each its seed


def test_a_batch_is_encoded_on_threads_to_the_same_bytes_in_order() -> None:
    from sd2_app.pipelines.metadata import encode_png, encode_pngs

    result = fake_service(None).run(_txt(seed=11, batch=4))
    assert [read_png_parameters(Image.open(io.BytesIO(data))) for data in result.png] == [
        image.info["parameters"] for image in result.images]
    assert encode_pngs(result.images) == result.png == [encode_png(image) for image in result.images]


def test_background_saves_of_concurrent_requests_get_distinct_numbers_past_99999(tmp_path: Path) -> None:
    service = fake_service(tmp_path, save_in_background=True)
    day = tmp_path / datetime.now().strftime("%Y-%m-%d")
    day.mkdir()
    (day / "99999-7-txt2img.png").write_bytes(b"an earlier result")
    results = []

    def run(seed: int) -> None:
        results.append(service.run(_txt(seed=seed, batch=2)))

    threads = [threading.Thread(target=run, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert service.flush_saves(timeout=30)
    names = sorted(path.name for path in day.iterdir())
    assert [name.split("-")[0] for name in names] == ["100000", "100001", "100002", "100003", "100004", "100005",
                                                      "100006", "100007", "99999"]
    for result in results:  # each result's files hold its own bytes, under the names it was given
        assert [path.read_bytes() for path in result.saved] == result.png
        numbers = [int(path.name.split("-")[0]) for path in result.saved]
        assert numbers[1] == numbers[0] + 1 and result.saved[0].name.endswith(f"-{result.seed}-txt2img.png")
    assert not list(tmp_path.rglob("*.tmp")) and not list(day.glob(".*"))


def test_the_timing_split_is_logged_and_its_phases_fit_in_the_request(caplog: pytest.LogCaptureFixture) -> None:
    service = fake_service(None, step_delay_s=0.01)
    started = time.perf_counter()
    with caplog.at_level(logging.INFO, logger="sd2_app.api.timing"):
        result = service.run(_txt(steps=4), on_progress=lambda done, total, preview: None)
    wall = time.perf_counter() - started
    assert set(result.timings) == KEPT - {"save"} | {"preview"} and set(result.timings) <= set(PHASES)
    assert all(seconds >= 0 for seconds in result.timings.values())
    assert result.timings["run"] >= 4 * 0.01 and result.timings["preview"] <= result.timings["run"]
    assert in_app(result.timings) <= wall
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith(LINE_PREFIX)]
    assert len(lines) == 1 and lines[0].startswith(f"{LINE_PREFIX} txt2img: ")
    assert json.loads(lines[0][lines[0].index("{"):]) == pytest.approx(result.timings, abs=1e-6)


def test_a_caller_with_its_own_phases_gets_them_back_and_writes_the_line(caplog: pytest.LogCaptureFixture) -> None:
    service = fake_service(None)
    mine = {"queue": 0.25}
    with caplog.at_level(logging.INFO, logger="sd2_app.api.timing"):
        result = service.run(_txt(), timings=mine)
    assert result.timings is mine and list(mine)[:2] == ["queue", "validate"] and mine["queue"] == 0.25
    assert not [r for r in caplog.records if r.getMessage().startswith(LINE_PREFIX)]


def test_a_folder_that_cannot_be_made_still_warns_with_background_saves(tmp_path: Path) -> None:
    blocker = tmp_path / "outputs"
    blocker.write_text("a file where the folder should be")
    result = fake_service(blocker, save_in_background=True).run(_txt())
    assert result.saved == [] and len(result.images) == 1
    assert result.warnings == ["The images could not be saved to the outputs folder (Not a directory)."]


def test_a_failed_background_write_goes_to_the_server_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    import sd2_app.api.saver as saver

    def full_disk(data: bytes, folder: Path, name: str) -> Path:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(saver, "save_new_png", full_disk)
    service = fake_service(tmp_path, save_in_background=True)
    with caplog.at_level(logging.WARNING, logger="sd2_app.api.saver"):
        result = service.run(_txt(seed=3))
        assert service.flush_saves(timeout=30)
    assert result.warnings == [] and len(result.saved) == 1 and not result.saved[0].exists()
    assert [r.getMessage() for r in caplog.records] == [
        f"could not save 00000-3-txt2img.png to {result.saved[0].parent}: [Errno 28] No space left on device"]


def test_previews_are_latent_size() -> None:
    import torch

    from sd2_app.api.progress import latent_preview

    assert latent_preview(torch.randn(2, 4, 8, 6)).size == (6, 8)  # the first image only, 1 pixel per latent


def test_the_ui_shows_the_encoded_files_and_enlarged_fast_previews(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from sd2_app.ui.shown_files import shown_files, shown_preview

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    result = fake_service(tmp_path / "outputs").run(_txt(seed=9, batch=2))
    files = shown_files(result)
    assert [Path(f).read_bytes() for f in files] == result.png
    assert [Path(f).name for f in files] == [p.name for p in result.saved]
    # In the app's folder of Gradio's cache: served as they are, and swept by age (`sd2_app.ui.cache_files`).
    assert all(Path(f).parent.parent == tmp_path / "gradio" / "sd2-app" for f in files)
    assert shown_files(result) == files  # a second call writes nothing new
    assert len(list((tmp_path / "gradio" / "sd2-app").rglob("*"))) == 4  # two folders, two files, no temporaries
    preview = Image.open(shown_preview(Image.new("RGB", (12, 8), (1, 2, 3))))
    assert preview.size == (252, 168) and preview.getpixel((251, 167)) == (1, 2, 3)  # 21x, nearest
    unsaved = replace(result, png=[], saved=[])
    assert shown_files(unsaved) == unsaved.images  # nothing encoded: Gradio encodes the images
