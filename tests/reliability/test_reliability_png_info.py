"""PNG info of a visitor's PNG whose compressed text chunk inflates to a megabyte of parameters, against the
running public app over raw HTTP: the A1111 API's /sdapi/v1/png-info and the web UI's PNG info read at most
`MAX_PARAMETERS_CHARS` of text (the paste box's limit too), so a request of a few KB no longer makes the server
parse (and send back twice) a megabyte.

The app is `python app.py --host 0.0.0.0 --trusted-proxy-hops 1 --api` served in-process on a free loopback
port (the tiny checkpoints; `tests.hosting_support.served_behind_proxy`).
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from sd2_app.pipelines.metadata import MAX_PARAMETERS_CHARS
from sd2_app.ui.pnginfo import MAX_PASTED_CHARS
from tests.hosting_support import served_behind_proxy
from tests.reliability_report import reliability, track_module  # noqa: F401
from tests.reliability_support import one_thread  # noqa: F401

AREA = "Security"
MALLORY = "203.0.113.66"
SETTINGS = ", Steps: 2, Sampler: Euler"


@pytest.fixture(scope="module")
def app(one_thread: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, object]]:
    with served_behind_proxy(["--api"], tmp_path_factory) as served:
        yield served


def _png(text: str) -> bytes:
    """A 16x16 PNG whose parameters are `text`, in a zTXt chunk (zlib-compressed)."""
    info = PngInfo()
    info.add_text("parameters", text, zip=True)
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buffer, "PNG", pnginfo=info)
    return buffer.getvalue()


def _settings_line(chars: int) -> str:
    """A settings line of exactly `chars` characters, of quoted values with escaped quotes (slow to read)."""
    filler = 'a: "\\", ' * (chars // 8)
    return (filler + "x" * chars)[:chars - len(SETTINGS)] + SETTINGS


def _web_ui(url: str, data: bytes) -> str:
    """The web UI's PNG info for `data` uploaded: the text it shows."""
    with httpx.Client(base_url=url, headers={"X-Forwarded-For": MALLORY}, timeout=120) as client:
        path = client.post("gradio_api/upload", files=[("files", ("p.png", data, "image/png"))]).json()[0]
        image = {"path": path, "meta": {"_type": "gradio.FileData"}}
        event = client.post("gradio_api/call/png_info", json={"data": [image]}).json()["event_id"]
        stream = client.get(f"gradio_api/call/png_info/{event}").text
    return json.loads([line[6:] for line in stream.splitlines() if line.startswith("data: ")][-1])[0]


def test_a_parameters_text_over_the_limit_is_not_read(app, reliability) -> None:
    url, _ = app
    bomb = _png(_settings_line(1 << 20))
    fits = _png(_settings_line(MAX_PARAMETERS_CHARS))
    api = [httpx.post(f"{url}sdapi/v1/png-info", json={"image": base64.b64encode(data).decode()},
                      headers={"X-Forwarded-For": MALLORY}, timeout=300) for data in (bomb, fits)]
    assert [answer.status_code for answer in api] == [200, 200]
    refused, read = (answer.json() for answer in api)
    assert refused == {"info": "", "items": {}, "parameters": {}}
    assert len(read["info"]) == MAX_PARAMETERS_CHARS and read["parameters"]["Steps"] == 2
    shown = [_web_ui(url, data) for data in (bomb, fits)]
    assert shown[0] == "This image carries no generation parameters." and len(shown[1]) == MAX_PARAMETERS_CHARS
    assert MAX_PASTED_CHARS == MAX_PARAMETERS_CHARS
    reliability(AREA, f"a PNG of {len(bomb):,} bytes whose zTXt parameters inflate to {1 << 20:,} characters of "
                "quoted settings, to POST /sdapi/v1/png-info and the web UI's PNG info (raw HTTP); then one of "
                f"{MAX_PARAMETERS_CHARS:,} characters",
                "the first is read as an image without parameters (API: info ''; web UI: 'This image carries no "
                "generation parameters.'), nothing parsed; the second is read whole (the paste box's limit). "
                "The server had parsed the megabyte and sent it back twice")
