"""The whole request through the running app (issue 24 section 3): `python app.py --tiny` served in-process,
called with gradio_client and raw HTTP. The gallery a client receives is the saved file, byte for byte, encoded
once; the saves run on the writer thread and are all on disk, whole, when the app closes; the request's
timing split is in the server log."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from sd2_app.api.timing import LINE_PREFIX, in_app
from tests.hosting_support import FAST
from tests.reliability_support import one_thread, serve  # noqa: F401

pytest.importorskip("gradio_client")
from gradio_client import Client  # noqa: E402

pytestmark = pytest.mark.slow  # served apps


@pytest.fixture(scope="module")
def saving_app(one_thread: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, object, Path]]:
    outputs = tmp_path_factory.mktemp("outputs")
    argv = ["--tiny", "--device", "cpu", "--outputs", str(outputs), "--queue-size", "8"]
    with serve(argv, tmp_path_factory.mktemp("app-cache")) as (url, demo):
        yield url, demo, outputs


def _saved(outputs: Path, count: int) -> list[Path]:
    deadline = time.monotonic() + 10  # app.py writes on a writer thread, after the answer
    while len(list(outputs.rglob("*.png"))) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return sorted(outputs.rglob("*.png"))


def test_the_gallery_is_the_saved_file_encoded_once(saving_app, monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    url, _, outputs = saving_app
    encodes: list[int] = []
    original = Image.SAVE["PNG"]
    monkeypatch.setitem(Image.SAVE, "PNG", lambda image, *args: encodes.append(image.width) or original(image, *args))
    client = Client(url, verbose=False, download_files=False)
    with caplog.at_level(logging.INFO, logger="sd2_app.api.timing"):
        started = time.perf_counter()
        preview, gallery, info = client.predict(prompt="once", seed=77, api_name="/txt2img", **{**FAST, "batch_size": 2})
        round_trip = time.perf_counter() - started
    assert encodes == [64, 64]  # the two images, once each: nothing for Gradio to encode again
    served = [httpx.get(f"{url}gradio_api/file={item['image']['path']}", timeout=30) for item in gallery]
    saved = _saved(outputs, 2)
    assert [path.name for path in saved] == ["00000-77-txt2img.png", "00001-78-txt2img.png"]  # each its seed
    assert [response.content for response in served] == [path.read_bytes() for path in saved]
    assert preview["path"] == gallery[0]["image"]["path"]  # the live preview ends on the same file
    assert [item["image"]["orig_name"] for item in gallery] == [path.name for path in saved]
    assert Image.open(saved[0]).info["parameters"].startswith("once\n") and "app " in info
    # The outputs folder itself is not served: only the copies in Gradio's cache are.
    assert httpx.get(f"{url}gradio_api/file={saved[0]}", timeout=30).status_code in (403, 404)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith(LINE_PREFIX)]
    assert len(lines) == 1
    phases = json.loads(lines[0][lines[0].index("{"):])
    assert list(phases) == ["queue", "validate", "gate", "load", "run", "mark", "encode", "save", "history",
                            "display", "deliver"]
    assert 0 < phases["run"] < in_app(phases) <= round_trip


def test_every_queued_save_is_on_disk_whole_when_the_app_closes(one_thread: None,
                                                                tmp_path_factory: pytest.TempPathFactory,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import sd2_app.api.saver as saver

    outputs = tmp_path_factory.mktemp("outputs")
    original = saver.save_new_png

    def slow_write(data: bytes, folder: Path, name: str) -> Path:
        time.sleep(0.5)  # a slow disk: the writes are still queued when the client has its images
        return original(data, folder, name)

    monkeypatch.setattr(saver, "save_new_png", slow_write)
    argv = ["--tiny", "--device", "cpu", "--outputs", str(outputs), "--queue-size", "8"]
    with serve(argv, tmp_path_factory.mktemp("app-cache")) as (url, _):
        client = Client(url, verbose=False)
        for seed in (1, 2):
            client.predict(prompt="queued", seed=seed, api_name="/txt2img", **{**FAST, "batch_size": 2})
        assert len(list(outputs.rglob("*.png"))) < 4  # not all written yet
    # serve() closed the app, and demo.close() waited for the writer: every file whole, no temporary file left
    files = sorted(path.name for path in outputs.rglob("*") if path.is_file())
    assert files == ["00000-1-txt2img.png", "00001-2-txt2img.png", "00002-2-txt2img.png", "00003-3-txt2img.png"]
    assert all(Image.open(path).info["parameters"].startswith("queued\n") for path in outputs.rglob("*.png"))


@pytest.fixture
def sha256_inputs(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every byte string `hashlib.sha256` hashes meanwhile, whoever hashes it (the app, Gradio)."""
    seen: list[bytes] = []
    real = hashlib.sha256

    class Counting:
        def __init__(self, data: bytes = b"", **kwargs: object) -> None:
            self._hash = real(**kwargs)
            self.update(data)

        def update(self, data: bytes) -> None:
            seen.append(bytes(data))
            self._hash.update(data)

        def __getattr__(self, name: str) -> object:  # hexdigest, digest, copy, block_size, ...
            return getattr(self._hash, name)

    monkeypatch.setattr(hashlib, "sha256", Counting)
    return seen


@pytest.fixture
def files_hashed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every file Gradio hashes meanwhile (`processing_utils.hash_file`, which reads in chunks)."""
    import gradio.processing_utils

    seen: list[str] = []
    real = gradio.processing_utils.hash_file
    monkeypatch.setattr(gradio.processing_utils, "hash_file",
                        lambda path, *args: seen.append(str(path)) or real(path, *args))
    return seen


def test_each_shown_png_is_hashed_once(saving_app, sha256_inputs: list[bytes], files_hashed: list[str]) -> None:
    """The gallery and the live preview's last frame are one file in Gradio's cache, named by the PNG's sha256:
    computed once per image, with its encode, and Gradio does not hash the file again."""
    url, _, outputs = saving_app
    client = Client(url, verbose=False, download_files=False)
    before = set(_saved(outputs, 0))
    client.predict(prompt="hashed once", seed=78, api_name="/txt2img", **{**FAST, "batch_size": 2})
    saved = [path for path in _saved(outputs, len(before) + 2) if path not in before]
    results = [path.read_bytes() for path in saved]
    assert len(results) == 2
    assert [sum(data == result for data in sha256_inputs) for result in results] == [1, 1]
    assert files_hashed == []


def test_a_history_refresh_hashes_no_png(saving_app, sha256_inputs: list[bytes], files_hashed: list[str]) -> None:
    """History shows each entry's PNG files in Gradio's cache under the names their digests (computed when they
    were encoded) give: refreshing it hashes none of them again, whole or as Gradio's file hash reads them in
    chunks, and shows the saved files, byte for byte."""
    url, _, outputs = saving_app
    client = Client(url, verbose=False, download_files=False)
    before = set(_saved(outputs, 0))
    _, gallery, _ = client.predict(prompt="refreshed", seed=79, api_name="/txt2img", **{**FAST, "batch_size": 2})
    saved = [path for path in _saved(outputs, len(before) + 2) if path not in before]
    pngs = [path.read_bytes() for path in saved]
    hashed_by_the_request = sum(data in pngs for data in sha256_inputs)
    for _ in range(3):
        history, _ = client.predict(api_name="/history")
        assert [item["image"]["path"] for item in history] == [item["image"]["path"] for item in gallery]
    assert hashed_by_the_request == 2 and sum(data in pngs for data in sha256_inputs) == 2 and files_hashed == []
    assert [_served(url, item["image"]) for item in history] == pngs


def test_an_xyz_plot_writes_the_timing_line_like_every_task(saving_app, caplog: pytest.LogCaptureFixture,
                                                            encode_levels: list[tuple[int, object]]) -> None:
    """...and each cell it shows as it runs is encoded once, fast (the gallery is sent whole at each new cell;
    Gradio encoded every cell of it again each time)."""
    from sd2_app.api.outputs import FAST_PNG_LEVEL

    url, _, _ = saving_app
    client = Client(url, verbose=False, download_files=False)
    with caplog.at_level(logging.INFO, logger="sd2_app.api.timing"):
        started = time.perf_counter()
        client.predict(prompt="plotted", x_type="sampler", x_picked=["Euler", "DDIM", "Euler a"], steps=2, seed=3,
                       width=64, height=64, api_name="/xyz_plot")
        round_trip = time.perf_counter() - started
    cells = [level for width, level in encode_levels if width == 64]
    assert {level for _, level in encode_levels} == {FAST_PNG_LEVEL}
    assert 3 <= len(cells) <= 6 and len(encode_levels) == len(cells) + 1  # cells (as shown, then kept), the grid
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith(LINE_PREFIX)]
    assert len(lines) == 1 and lines[0].startswith(f"{LINE_PREFIX} xyz_plot: ")
    phases = json.loads(lines[0][lines[0].index("{"):])
    assert list(phases) == ["queue", "load", "run", "total", "mark", "encode", "save", "history", "display",
                            "deliver"]
    assert 0 < phases["run"] < in_app(phases) <= round_trip


ASSETS = Path(__file__).resolve().parents[2] / "assets"
QUICK = {"steps": 2, "cfg_scale": 1.0}


def _asset(name: str, size: int, folder: Path) -> str:
    path = folder / f"{size}-{name}"
    Image.open(ASSETS / name).convert("RGB").resize((size, size)).save(path)
    return str(path)


def _served(url: str, item: dict) -> bytes:
    response = httpx.get(f"{url}gradio_api/file={item['path']}", timeout=30)
    assert response.status_code == 200
    return response.content


@pytest.fixture
def encode_levels(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, object]]:
    """(width, zlib level) of every PNG PIL encodes in the app (None: PIL's default, what Gradio uses)."""
    levels: list[tuple[int, object]] = []
    original = Image.SAVE["PNG"]

    def counting(image: Image.Image, *args: object) -> None:
        levels.append((image.width, image.encoderinfo.get("compress_level")))
        original(image, *args)

    monkeypatch.setitem(Image.SAVE, "PNG", counting)
    return levels


def test_masks_depth_maps_and_history_are_the_encoded_files(saving_app, tmp_path: Path,
                                                             encode_levels: list[tuple[int, object]]) -> None:
    """A mask or depth map is encoded once, fast, with the images, and the browser gets the saved file; the
    upscaler's "before" image is encoded once, fast; History shows the saved files and encodes nothing."""
    from gradio_client import handle_file

    from sd2_app.api.outputs import FAST_PNG_LEVEL

    url, _, outputs = saving_app
    client = Client(url, verbose=False, download_files=False)
    picture = _asset("landscape.png", 64, tmp_path)
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    mask.save(tmp_path / "mask.png")
    editor = {"background": handle_file(picture), "layers": [], "composite": None}
    cat = _asset("cat_128.png", 16, tmp_path)
    del encode_levels[:]  # the inputs written here
    _, gallery, _, mask_used = client.predict(image_and_mask=editor, mask=handle_file(str(tmp_path / "mask.png")),
                                              prompt="masked", seed=31, api_name="/inpaint", **QUICK)
    assert encode_levels == [(64, FAST_PNG_LEVEL), (64, FAST_PNG_LEVEL)]  # the image and the mask, once each
    mask_file = next(path for path in _saved(outputs, 0) if path.name.endswith("-31-inpaint-mask.png"))
    assert _served(url, mask_used) == mask_file.read_bytes()
    del encode_levels[:]
    _, gallery, _, depth_used = client.predict(image=handle_file(picture), prompt="deep", seed=32, strength=0.7,
                                               api_name="/depth", **QUICK)
    assert encode_levels == [(64, FAST_PNG_LEVEL), (64, FAST_PNG_LEVEL)]  # the image and the depth map
    depth_file = next(path for path in _saved(outputs, 0) if path.name.endswith("-32-depth-depth.png"))
    assert _served(url, depth_used) == depth_file.read_bytes()
    del encode_levels[:]
    _, gallery, _, before = client.predict(image=handle_file(cat), prompt="a cat",
                                           seed=33, api_name="/upscale", **QUICK)
    assert sorted(encode_levels) == [(64, FAST_PNG_LEVEL), (64, FAST_PNG_LEVEL)]  # the image and "before"
    assert Image.open(io.BytesIO(_served(url, before))).size == (64, 64)
    del encode_levels[:]
    history, _ = client.predict(api_name="/history")
    assert encode_levels == []
    newest = sorted(path for path in _saved(outputs, 0) if path.name.endswith("-33-upscale.png"))
    assert _served(url, history[0]["image"]) == newest[0].read_bytes()
    assert history[0]["image"]["orig_name"] == newest[0].name
