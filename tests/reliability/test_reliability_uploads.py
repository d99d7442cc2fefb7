"""Safe to host in public, what visitors send: inpaint editor layers, PNG info, disk, upload formats, every
field's rule through the API, and what errors show. Through the running app (see test_reliability_hosting.py).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from PIL import Image

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from sd2_app.api.requests import Txt2ImgRequest  # noqa: E402
from sd2_app.errors import InvalidRequest  # noqa: E402
from sd2_app.ui.hosting import MAX_OTHER_EVENTS_PER_ADDRESS  # noqa: E402
from tests.hosting_support import (FAST, PRIVATE_FOLDER, PRIVATE_REPO, CallsAtOnce, public_app,  # noqa: E402,F401
                                   txt2img_data)
from tests.reliability_report import reliability, track_module  # noqa: E402,F401
from tests.reliability_support import noise_image, one_thread, png_bytes, serve  # noqa: E402,F401

AREA = "Hosting"


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRss:
    """The highest resident set size of this process while the block runs (sampled every 5 ms)."""

    def __enter__(self) -> PeakRss:
        self.before = self.peak = _rss()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._done.wait(0.005):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        self.after = _rss()


# ---- 1. inpaint editor layers ---------------------------------------------------------------------------

def _inpaint(client: Client, value: dict) -> str:
    with pytest.raises(AppError) as caught:
        client.predict(image_and_mask=value, mask=None, prompt="x", api_name="/inpaint", checkpoint="sd2-inpainting",
                       steps=2, cfg_scale=1.0, sampler="Euler", seed=1)
    return str(caught.value)


def test_inpaint_editor_layers_are_capped_and_checked_before_decoding(public_app, reliability, tmp_path: Path) -> None:
    url, _, _ = public_app
    client = Client(url, verbose=False)
    small = tmp_path / "small.png"
    small.write_bytes(png_bytes(noise_image(64, 64)))
    huge = tmp_path / "huge.png"  # a 1-bit 2896x2896 PNG: 1 kB on the wire, 32 MiB once Gradio decodes it to RGBA
    huge.write_bytes(png_bytes(Image.new("1", (2896, 2896))))
    many = {"background": handle_file(str(small)), "layers": [handle_file(str(small))] * 5,
            "composite": handle_file(str(small))}
    assert _inpaint(client, many) == "The mask has 5 layers; paint on at most 4."
    reliability(AREA, "inpaint editor value with 5 layers", "refused: The mask has 5 layers; paint on at most 4.")

    bombs = {"background": handle_file(str(small)), "layers": [handle_file(str(huge))] * 4,
             "composite": handle_file(str(small))}
    _inpaint(client, bombs)  # warm-up: the first call sets up the endpoint
    with PeakRss() as rss:
        text = _inpaint(client, bombs)
    assert text == ("The uploaded image could not be read: it is 2896x2896 (8386816 pixels); the limit is "
                    "4194304 pixels."), text
    grew = (rss.peak - rss.before) / 2**20
    assert grew < 24, f"peak RSS grew {grew:.0f} MiB"  # decoding the four layers would take 128 MiB
    reliability(AREA, f"inpaint editor: 4 layers of a 2896x2896 1-bit PNG ({huge.stat().st_size} bytes each)",
                f"refused from the header before decoding: {text} Peak RSS +{grew:.1f} MiB, after "
                f"{(rss.after - rss.before) / 2**20:+.1f} MiB")


# ---- 4. PNG info --------------------------------------------------------------------------------------

def _png_with_text_and_broken_pixels(text: str) -> bytes:
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", text)
    data = bytearray(png_bytes(Image.new("RGB", (64, 64), "white"), pnginfo=info))
    start = data.index(b"IDAT") + 4
    data[start:start + 20] = b"\xff" * 20  # the pixel data no longer inflates: decoding it would fail
    return bytes(data)


def test_png_info_reads_text_chunks_without_decoding_and_has_its_own_limit(public_app, reliability, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from sd2_app.api.service import Service

    url, _, _ = public_app
    path = tmp_path / "params.png"
    path.write_bytes(_png_with_text_and_broken_pixels("a lighthouse\nSteps: 20, Sampler: Euler, Seed: 5"))
    client = Client(url, verbose=False)
    text, fields = client.predict(handle_file(str(path)), api_name="/png_info")
    assert text.startswith("a lighthouse\n") and fields["Seed"] == 5
    reliability(AREA, "PNG info of a PNG whose pixel data is corrupt",
                "parameters read from the text chunk (no pixel is decoded)")

    probe = CallsAtOnce(Service.read_parameters, lambda: time.sleep(0.5))
    monkeypatch.setattr(Service, "read_parameters", staticmethod(probe))
    calls = MAX_OTHER_EVENTS_PER_ADDRESS  # all from one address (loopback), which may have that many queued
    start = threading.Barrier(calls)
    with ThreadPoolExecutor(calls) as pool:
        outcomes = list(pool.map(lambda _: _png_info_outcome(url, path, start), range(calls)))
    assert probe.most == 2 and outcomes == ["read"] * calls, (probe.most, outcomes)
    reliability(AREA, f"{calls} PNG info calls at once (each read made to take 0.5 s)",
                f"at most {probe.most} ran at once (their own queue, beside the GPU's); all {outcomes.count('read')} read")


def test_png_info_reads_the_parameters_of_a_picture_too_large_to_open(public_app, reliability, tmp_path: Path) -> None:
    """A 4096x3072 PNG (an A1111 image upscaled x4) is over twice the app's PIL pixel limit (the upload limit):
    Gradio's image box opened it, so PIL refused it before its text was read."""
    from PIL.PngImagePlugin import PngInfo

    url, _, _ = public_app
    text = "a castle\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 1024x768"
    info = PngInfo()
    info.add_text("parameters", text)
    Image.new("RGB", (4096, 3072), (40, 90, 160)).save(tmp_path / "big.png", pnginfo=info, compress_level=1)
    (tmp_path / "not.png").write_bytes(b"GIF89a" + bytes(100))
    client = Client(url, verbose=False)
    read, fields = client.predict(handle_file(str(tmp_path / "big.png")), api_name="/png_info")
    assert (read, fields["Seed"], fields["Size"]) == (text, 5, "1024x768")
    with pytest.raises(AppError) as caught:
        client.predict(handle_file(str(tmp_path / "not.png")), api_name="/png_info")
    assert str(caught.value) == "The uploaded image could not be read: not a PNG, JPEG or WebP image."
    reliability(AREA, "PNG info of a 4096x3072 PNG with parameters (over twice the PIL pixel limit), and of a GIF",
                f"parameters read ({fields['Size']}, seed {fields['Seed']}); the GIF: {caught.value}")


def _png_info_outcome(url: str, path: Path, start: threading.Barrier) -> str:
    """One visitor's PNG info call through the queue (gradio_client: the direct route is closed)."""
    client = Client(url, verbose=False)
    start.wait()
    text, _ = client.predict(handle_file(str(path)), api_name="/png_info")
    return "read" if text.startswith("a lighthouse") else text


# ---- 5. disk ------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_gradio_cache_is_deleted_and_disk_use_is_reported(one_thread: None, reliability,
                                                          tmp_path_factory: pytest.TempPathFactory) -> None:
    argv = ["--tiny", "--device", "cpu", "--no-save", "--cache-minutes", "0.05"]  # files older than 3 s go
    with serve(argv, tmp_path_factory.mktemp("app-cache")) as (url, demo):
        assert demo.delete_cache == (3, 3)
        response = httpx.post(f"{url}gradio_api/upload", files=[("files", ("a.png", png_bytes(noise_image()),
                                                                           "image/png"))], timeout=30)
        uploaded = Path(response.json()[0])
        assert uploaded.is_file()
        deadline = time.monotonic() + 20
        while uploaded.exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not uploaded.exists()
        _, memory = Client(url, verbose=False).predict(api_name="/models_status")
        assert "**Disk**: results are not saved." in memory
    reliability(AREA, "an upload with --cache-minutes 0.05 (delete_cache=(3, 3))",
                "the cached file is gone within 20 s; the Models tab reports disk use")


def test_outputs_older_than_the_retention_are_deleted(one_thread: None, reliability, tmp_path: Path) -> None:
    from tests.reliability_support import make_service, txt2img

    service, _ = make_service(outputs=tmp_path, keep_outputs_days=1)
    old_day = tmp_path / "2020-01-01"
    old_day.mkdir()
    for n in range(4):
        old = old_day / f"{n:05d}-1-txt2img.png"
        old.write_bytes(png_bytes(noise_image(8, 8)))
        os.utime(old, (time.time() - 3 * 86400,) * 2)
    result = service.run(txt2img())
    assert not old_day.exists() and [p.exists() for p in result.saved] == [True]
    files, nbytes, days = service.disk_usage()
    assert files == 1 and nbytes == result.saved[0].stat().st_size and days == 1
    reliability(AREA, "4 saved results 3 days old, --keep-outputs-days 1, one new run",
                f"the old files and their day folder are deleted; disk use {files} file, {nbytes} bytes")


# ---- 10. image formats --------------------------------------------------------------------------------

EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\nshowpage\n"


def test_only_png_jpeg_webp_reach_pil(public_app, reliability, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import EpsImagePlugin

    opened: list[str] = []
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", lambda self: opened.append("eps"))
    url, _, _ = public_app
    client = Client(url, verbose=False)
    cases = [("EPS (PostScript)", "x.png", EPS), ("BMP", "x.bmp", png_bytes(noise_image(), "BMP")),
             ("TIFF", "x.tiff", png_bytes(noise_image(), "TIFF"))]
    for label, name, data in cases:
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(AppError) as caught:
            client.predict(image=handle_file(str(path)), prompt="x", api_name="/img2img", steps=2, seed=1)
        assert opened == [], label  # PIL's EPS plugin never saw the file
        assert str(caught.value) == "The uploaded image could not be read: not a PNG, JPEG or WebP image."
        reliability(AREA, f"{label} upload to img2img", f"refused by its magic bytes before PIL: {caught.value}")
    webp = tmp_path / "ok.webp"
    webp.write_bytes(png_bytes(noise_image(), "WEBP"))
    _, gallery, _ = client.predict(image=handle_file(str(webp)), prompt="x", api_name="/img2img", steps=2, seed=1,
                                   strength=1.0, cfg_scale=1.0, sampler="Euler")
    assert Image.open(gallery[0]["image"]).size == (64, 64)


# ---- 11. the API refuses what the service refuses ------------------------------------------------------

def _field_cases() -> list[tuple[str, dict, object]]:
    from tests.reliability.test_reliability_input import FIELD_CASES, _sampling

    base = _sampling()
    cases = []
    for case, changes, _ in FIELD_CASES:
        if "sampling" in changes:
            field, value = next((f, getattr(changes["sampling"], f)) for f in ("steps", "cfg_scale", "seed",
                                                                                "batch_size", "sampler")
                                if getattr(changes["sampling"], f) != getattr(base, f)
                                or str(getattr(changes["sampling"], f)) != str(getattr(base, f)))
        else:
            (field, value), = changes.items()
        cases.append((case, {field: value}, changes))
    return cases


def test_every_field_rule_holds_through_the_api(public_app, reliability) -> None:
    from sd2_app.api.service import Service
    from sd2_app.api.checks import Limits
    from tests.reliability.test_reliability_input import _sampling

    url, _, _ = public_app
    checker = Service(None, outputs_dir=None, limits=Limits(max_side=1024), allowed_repos=())
    client = Client(url, verbose=False)
    same = 0
    for case, api_values, changes in _field_cases():
        if case in ("guidance NaN", "guidance inf"):
            continue  # not JSON
        request = replace(Txt2ImgRequest("a cat", width=64, height=64, sampling=_sampling()), **changes)
        with pytest.raises(InvalidRequest) as expected:
            checker.validate(request)
        values = {**FAST, "prompt": "a cat", "seed": 1, "steps": 20, "cfg_scale": 7.5, **api_values}
        with pytest.raises(AppError) as caught:
            client.predict(api_name="/txt2img", **values)
        raw = httpx.post(f"{url}gradio_api/call/txt2img", json={"data": txt2img_data(url, **values)}, timeout=30)
        stream = httpx.get(f"{url}gradio_api/call/txt2img/{raw.json()['event_id']}", timeout=60).text
        if "sampler" in api_values or "checkpoint" in api_values:  # a dropdown refuses an unknown choice itself
            (field, value), = api_values.items()
            assert str(caught.value) == f"{field.capitalize()}: {value!r} is not one of the choices."
            assert str(caught.value) in stream.replace('\\"', '"'), (case, stream)
            continue
        assert str(caught.value) == str(expected.value), (case, str(caught.value))
        assert "event: error" in stream and str(expected.value) in stream.replace('\\"', '"'), (case, stream)
        same += 1
    reliability(AREA, "the Bad input table's text-to-image field rows through gradio_client and raw HTTP",
                f"{same} rows refused with the service's own message, both ways; unknown sampler and checkpoint by the "
                "dropdown check")


# ---- 12. information leaks ----------------------------------------------------------------------------

def test_load_errors_paths_and_tracebacks_stay_on_the_server(public_app, reliability, caplog: pytest.LogCaptureFixture,
                                                             capfd: pytest.CaptureFixture, tmp_path: Path) -> None:
    url, _, _ = public_app
    client = Client(url, verbose=False)
    capfd.readouterr()
    with caplog.at_level(logging.INFO):
        with pytest.raises(AppError) as caught:
            client.predict(prompt="x", checkpoint="sd2", api_name="/txt2img", **FAST)
        assert str(caught.value) == "The SD 2.0 (768-v) model could not be loaded; the operator has the details."
        table, _ = client.predict(api_name="/models_status")
        client.predict(prompt="saved", seed=31, api_name="/txt2img", **FAST)
        _, history = client.predict(api_name="/history")
        assert PRIVATE_FOLDER not in str(table) and PRIVATE_REPO not in str(table)
        bad = tmp_path / "bad.png"
        bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
        refused = 0
        for values in ({"sampler": "Euler z"}, {"steps": 0}, {"seed": 1.5}):
            with pytest.raises(AppError):
                client.predict(prompt="x", api_name="/txt2img", **{**FAST, **values})
            refused += 1
        with pytest.raises(AppError):
            client.predict(image=handle_file(str(bad)), prompt="x", api_name="/img2img", steps=2)
        refused += 1
    message = str(caught.value)
    assert message == "The SD 2.0 (768-v) model could not be loaded; the operator has the details."
    shown = message + str(table) + str(history)
    assert PRIVATE_FOLDER not in shown and PRIVATE_REPO not in shown and str(tmp_path.parent) not in str(history)
    sd2_row = next(row for row in table["data"] if row[0] == "sd2")
    assert sd2_row[-1] == "could not be loaded; the operator has the details"
    files = [row[5] for row in history["data"] if str(row[4]).startswith("saved")]
    assert files and re.fullmatch(r"\d{4}-\d\d-\d\d/\d{5}-31-txt2img\.png", files[0]), files
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert PRIVATE_FOLDER in logged  # the operator keeps the detail
    err = capfd.readouterr().err
    assert "Traceback" not in err, err[-2000:]
    refusals = [r for r in caplog.records if r.getMessage().startswith(("refused a request", "refused an upload"))]
    assert len(refusals) >= refused
    reliability(AREA, "a checkpoint whose --repo is a private folder and repo, unreachable",
                f"visitor sees: {message} Models tab error column: '{sd2_row[-1]}', repo hidden; the log names "
                "the folder")
    reliability(AREA, "History file column", f"day folder and file name only, e.g. {files[0]}")
    reliability(AREA, f"{refused} refused requests (bad dropdown value, steps 0, seed 1.5, unreadable upload)",
                f"{len(refusals)} one-line log records, 0 tracebacks on stderr")
