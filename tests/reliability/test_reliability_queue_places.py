"""Safe to host in public, the queue's places: a flood of cheap events from one address cannot fill the queue.

The app is `python app.py --host 0.0.0.0 --trusted-proxy-hops 1 --queue-size 8` served in-process on a free
loopback port (the tiny checkpoints), as behind a trusted reverse proxy: the test plays the proxy, appending
the client's address to X-Forwarded-For (uvicorn is told to trust no proxy of its own). The cheap event is
PNG info (`/png_info`, no GPU, at most 2 at once), held running by a gate the test opens, so the ones behind
it stay in the queue as long as the test needs.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client  # noqa: E402

from sd2_app.ui.hosting import MAX_OTHER_EVENTS_PER_ADDRESS, too_many_events_from_address_message  # noqa: E402
from tests.hosting_support import FAST, queue_join, served_behind_proxy  # noqa: E402
from tests.reliability_report import reliability, track_module  # noqa: E402,F401
from tests.reliability_support import one_thread  # noqa: E402,F401

AREA = "Hosting"
QUEUE_SIZE = 8


@pytest.fixture(scope="module")
def small_queue_app(one_thread: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, object]]:
    with served_behind_proxy(["--queue-size", str(QUEUE_SIZE)], tmp_path_factory) as served:
        yield served


def _uploaded_png(url: str, address: str) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "white").save(buffer, "PNG")
    response = httpx.post(f"{url}gradio_api/upload", files=[("files", ("a.png", buffer.getvalue(), "image/png"))],
                          headers={"X-Forwarded-For": address}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()[0]


def _png_info(url: str, address: str, path: str) -> httpx.Response:
    """A raw, cookieless PNG info join from `address` (through the trusted proxy the test plays)."""
    data = [{"path": path, "meta": {"_type": "gradio.FileData"}}]
    return httpx.post(f"{url}gradio_api/call/png_info", json={"data": data}, headers={"X-Forwarded-For": address},
                      timeout=30)


def test_cheap_events_of_one_address_cannot_fill_the_queue(small_queue_app, reliability) -> None:
    url, demo = small_queue_app
    service = demo.service  # type: ignore[attr-defined]
    Client(url, verbose=False).predict(prompt="warm", api_name="/txt2img", **FAST)  # models loaded
    gate, read = threading.Event(), service.read_parameters
    service.read_parameters = lambda path: (gate.wait(60), read(path))[1]  # PNG info runs until the gate opens
    try:
        path = _uploaded_png(url, "203.0.113.50")
        flood = [_png_info(url, "203.0.113.50", path) for _ in range(QUEUE_SIZE + 4)]
        job = queue_join(url, "203.0.113.51", prompt="mine", seed=5)
        other = _png_info(url, "203.0.113.51", path)
    finally:
        gate.set()
        del service.read_parameters
    statuses = [response.status_code for response in flood]
    assert job.status_code == 200 and "event_id" in job.json(), job.text
    assert statuses == [200] * MAX_OTHER_EVENTS_PER_ADDRESS + [400] * (QUEUE_SIZE + 4 - MAX_OTHER_EVENTS_PER_ADDRESS)
    assert flood[-1].json()["detail"] == too_many_events_from_address_message(MAX_OTHER_EVENTS_PER_ADDRESS)
    assert other.status_code == 200, other.text  # another address still gets its PNG info
    stream = httpx.get(f"{url}gradio_api/call/txt2img/{job.json()['event_id']}", timeout=120).text
    assert "event: complete" in stream, stream[-500:]
    reliability(AREA, f"{QUEUE_SIZE + 4} PNG-info calls held in the queue from one address, then a GPU job from "
                      f"another (--queue-size {QUEUE_SIZE}, raw HTTP, trusted proxy)",
                f"{MAX_OTHER_EVENTS_PER_ADDRESS} accepted, the rest refused at join, HTTP 400: "
                f"{flood[-1].json()['detail']}; the GPU job joins and completes; another address's PNG info joins")
