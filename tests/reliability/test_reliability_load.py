"""The served app under load and under hostile uploads: app.py's own build and launch settings, in-process.

20 gradio_client clients send 5 text-to-image requests each at once (64x64, 2 steps, --queue-size 8): every
request completes with its own prompt and seed, or is refused at join with the app's busy message (gradio_client
raises it as the event's error, `sd2_app.ui.join_refusals`); nothing else happens, and the server answers afterwards. Uploads that PIL cannot or must not decode are refused in words.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from sd2_app.api.job_admission import server_busy_message  # noqa: E402
from tests.reliability_report import reliability, track_module  # noqa: E402,F401
from tests.reliability_support import noise_image, one_thread, png_bytes, served_app  # noqa: E402,F401

pytestmark = pytest.mark.slow  # a served app under 100 requests and hostile uploads

AREA = "Load"
CLIENTS, REQUESTS = 20, 5
FAST = {"width": 64, "height": 64, "steps": 2, "cfg_scale": 1.0, "sampler": "Euler", "batch_size": 1}
BUSY = server_busy_message(8)  # served_app's --queue-size


def _client_session(url: str, index: int) -> list[tuple[str, int, str]]:
    """One client's 5 requests in a row: (outcome, seed, detail) each."""
    # 20 clients fetch the app's config at once: on a busy machine that takes longer than httpx's 5 s default.
    # Each client from its own network address (uvicorn takes a loopback peer's X-Forwarded-For), as 20 visitors
    # are (with a per-address limit, more than --max-jobs-per-address at once from one address would be refused).
    client = Client(url, verbose=False, httpx_kwargs={"timeout": 120},
                    headers={"X-Forwarded-For": f"198.51.100.{index + 1}"})
    outcomes: list[tuple[str, int, str]] = []
    for request in range(REQUESTS):
        seed = 1000 + 10 * index + request
        prompt = f"client {index} request {request}"
        try:
            _, gallery, info = client.predict(prompt=prompt, seed=seed, api_name="/txt2img", **FAST)
        except AppError as error:  # a refused join, its message as the event's error (`sd2_app.ui.join_refusals`)
            outcomes.append(("busy" if error.message == BUSY else "error", seed, str(error.message)[:200]))
            continue
        image = Image.open(gallery[0]["image"])
        parameters = image.info.get("parameters", "")
        mine = parameters.startswith(prompt + "\n") and f"Seed: {seed}," in parameters and f"**Seed** {seed}" in info
        outcomes.append(("completed" if mine and image.size == (64, 64) else "mixed up", seed, parameters[:80]))
    return outcomes


def test_twenty_clients_times_five_requests(served_app, reliability) -> None:
    url, _ = served_app
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        sessions = list(pool.map(lambda i: _client_session(url, i), range(CLIENTS), timeout=300))
    seconds = time.perf_counter() - started
    outcomes = [outcome for session in sessions for outcome, _, _ in session]
    completed, full = outcomes.count("completed"), outcomes.count("busy")
    assert len(outcomes) == CLIENTS * REQUESTS and completed + full == len(outcomes), sorted(set(outcomes))
    assert completed >= 8  # at least a queue's worth got through
    seeds = [seed for session in sessions for outcome, seed, _ in session if outcome == "completed"]
    assert len(seeds) == len(set(seeds))
    # Still serving: a fresh client gets its image, and the page loads.
    _, gallery, _ = Client(url, verbose=False).predict(prompt="after the storm", seed=7, api_name="/txt2img", **FAST)
    assert "Seed: 7," in Image.open(gallery[0]["image"]).info["parameters"]
    assert httpx.get(url, timeout=30).status_code == 200
    reliability(AREA, f"{CLIENTS} gradio_client clients x {REQUESTS} requests at once (64x64, 2 steps, "
                      "--queue-size 8)",
                f"{completed} completed with their own prompt and seed, {full} refused at join with: {BUSY}; "
                f"0 lost or mixed up, in {seconds:.0f} s; the server answers afterwards")


def _upload(url: str, path: Path) -> str:
    with pytest.raises(AppError) as caught:
        Client(url, verbose=False).predict(image=handle_file(str(path)), prompt="x", api_name="/img2img", **{
            k: v for k, v in FAST.items() if k not in ("width", "height")})
    return str(caught.value)


UNREADABLE = "The uploaded image could not be read: "


def test_hostile_uploads_are_refused_and_the_app_keeps_serving(served_app, reliability, tmp_path: Path) -> None:
    url, _ = served_app
    good = png_bytes(noise_image(64, 64))
    # Gradio opens uploads itself (it decodes PNGs to read their EXIF): what PIL cannot open or decode is
    # refused there (sd2_app.ui.uploads turns it into words); the rest reaches validation.
    cases = [
        ("upload: decompression bomb 2500x2500 PNG (over the 2048x2048 cap)", png_bytes(Image.new("1", (2500, 2500))),
         "An init image is 2500x2500; images up to 2048x2048 pixels (or the same area in another shape) are accepted."),
        ("upload: 1x1 image", png_bytes(Image.new("RGB", (1, 1))),
         "An init image is 1x1; each side needs at least 8 pixels."),
        ("upload: truncated JPEG", _half(png_bytes(noise_image(64, 64), "JPEG")), "An init image could not be read ("),
        ("upload: decompression bomb 20000x20000 PNG (past PIL's cap, which webapp.build ties to the upload limit)",
         png_bytes(Image.new("1", (20000, 20000))), UNREADABLE + "it is far larger than 2048x2048 pixels."),
        ("upload: truncated PNG", _half(good), UNREADABLE + "the file is corrupt or truncated."),
        ("upload: garbage bytes named .png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 2000,
         UNREADABLE + "not a PNG, JPEG or WebP image."),
    ]
    for case, data, message in cases:
        path = tmp_path / "upload.png"
        path.write_bytes(data)
        text = _upload(url, path)
        assert text.startswith(message), text
        assert "Traceback" not in text and "/tmp" not in text and "Error:" not in text
        reliability("Bad input", f"served app, {case}, {len(data) // 1024} kB", f"refused: {text[:110]}")

    _, gallery, _ = Client(url, verbose=False).predict(prompt="still here", seed=3, api_name="/txt2img", **FAST)
    assert Image.open(gallery[0]["image"]).size == (64, 64)
    reliability("Bad input", "served app, after those uploads", "the next request gets its 64x64 image")


def _half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def test_unknown_names_through_the_api(served_app, reliability) -> None:
    url, _ = served_app
    client = Client(url, verbose=False)
    for field, value in (("sampler", "Euler z"), ("checkpoint", "someone/custom-repo")):
        with pytest.raises(AppError) as caught:
            client.predict(prompt="x", seed=1, api_name="/txt2img", **{**FAST, field: value})
        assert str(caught.value) == f"{field.capitalize()}: '{value}' is not one of the choices."
        reliability("Bad input", f"served app API: unknown {field} {value!r}",
                    f"refused by the dropdown check: {str(caught.value)[:90]}")


def test_uploads_over_the_file_size_cap_are_refused(served_app, reliability, tmp_path: Path) -> None:
    url, _ = served_app
    data = png_bytes(noise_image(64, 64)) + b"\0" * (26 * 2**20)  # a valid PNG padded to 26 MiB
    path = tmp_path / "huge.png"
    path.write_bytes(data)
    client = Client(url, verbose=False)
    assert client.config["max_file_size"] == 25 * 2**20
    # A raw POST to the upload route, as a hostile client would send it (gradio_client also checks first).
    response = httpx.post(client.upload_url, files=[("files", ("huge.png", data, "image/png"))], timeout=60)
    assert response.status_code == 413, response.text
    with pytest.raises(ValueError, match="exceeds the maximum file size of 26214400 bytes"):
        client.predict(image=handle_file(str(path)), prompt="x", api_name="/img2img", steps=2)
    reliability("Security", "upload of 26 MiB (max_file_size 25 MiB)",
                f"the upload route answers {response.status_code}: {response.text[:80]}")
