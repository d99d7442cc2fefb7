"""One image file size for every way a visitor sends an image (`sd2_app.byte_limits`): an upload, an inpaint
editor part and a base64 image of the A1111-compatible API all take a file of `MAX_IMAGE_FILE_BYTES` and all
refuse one byte more, against the running public app over raw HTTP.

The app is `python app.py --host 0.0.0.0 --trusted-proxy-hops 1 --api` served in-process on a free loopback
port (the tiny checkpoints; `tests.hosting_support.served_behind_proxy`).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator

import httpx
import pytest

from sd2_app.byte_limits import MAX_IMAGE_FILE_BYTES
from tests.hosting_support import served_behind_proxy
from tests.reliability_report import reliability, track_module  # noqa: F401
from tests.reliability_support import noise_image, one_thread, png_bytes  # noqa: F401

AREA = "Security"
CLIENT = "198.51.100.23"


@pytest.fixture(scope="module")
def app(one_thread: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, object]]:
    with served_behind_proxy(["--api"], tmp_path_factory) as served:
        yield served


def _padded_png(size: int) -> bytes:
    """A valid PNG of exactly `size` bytes (zeros after its end chunk, which PNG readers ignore)."""
    head = png_bytes(noise_image(16, 16))
    return head + b"\0" * (size - len(head))


def _statuses(url: str, editor: int, data: bytes) -> tuple[int, int, int]:
    """The HTTP statuses of `data` sent as an upload, as an inpaint editor part and to the API's /png-info."""
    with httpx.Client(base_url=url, headers={"X-Forwarded-For": CLIENT}, timeout=120) as client:
        upload = client.post("gradio_api/upload", files=[("files", ("image.png", data, "image/png"))])
        form = {"component_id": str(editor), "session_hash": "s", "fn_name": "accept_blobs", "data": "{}",
                "type": "background", "index": "null", "id": "size-check"}
        part = client.post("gradio_api/component_server", data=form, files={"blob": ("blob", data, "image/png")})
        text = "data:image/png;base64," + base64.b64encode(data).decode()
        info = client.post("sdapi/v1/png-info", json={"image": text})
    statuses = (upload.status_code, part.status_code, info.status_code)
    if info.status_code != 200:
        statuses = (*statuses[:2], info.status_code, info.json()["detail"])  # type: ignore[assignment]
    return statuses


def test_an_image_file_of_the_size_limit_is_taken_and_one_byte_more_refused_everywhere(app, reliability) -> None:
    url, demo = app
    config = httpx.get(f"{url}config", timeout=30).json()
    editor = next(c["id"] for c in config["components"] if c.get("type") == "imageeditor")
    store = demo.blocks[editor].blob_storage  # type: ignore[attr-defined]
    try:
        at_limit = _statuses(url, editor, _padded_png(MAX_IMAGE_FILE_BYTES))
        over = _statuses(url, editor, _padded_png(MAX_IMAGE_FILE_BYTES + 1))
    finally:
        store.pop("size-check", None)
    assert config["max_file_size"] == MAX_IMAGE_FILE_BYTES == 25 * 2**20
    assert at_limit == (200, 200, 200)
    assert over == (413, 413, 422, "image is larger than the 25 MiB limit.")
    reliability(AREA, f"an image file of {MAX_IMAGE_FILE_BYTES:,} bytes, then one byte more, as an upload, an inpaint "
                "editor part and a base64 data URL to /sdapi/v1/png-info (raw HTTP)",
                f"all three take the first; the second gets HTTP 413 / 413 / 422 '{over[3]}' (the API took up to "
                "25.5 MiB while the web UI took 25 MiB)")
