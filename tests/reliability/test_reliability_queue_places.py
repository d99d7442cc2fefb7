"""Safe to host in public, the queue's places: a flood of cheap events from one address cannot fill the queue,
and --queue-size bounds the GPU jobs of every front end together while cheap events keep places of their own.

The apps are `python app.py --host 0.0.0.0 --trusted-proxy-hops 1 --queue-size 8` (and `--queue-size 2 --api
--mcp`) served in-process on a free loopback port (the tiny checkpoints), as behind a trusted reverse proxy: the
test plays the proxy, appending the client's address to X-Forwarded-For (uvicorn is told to trust no proxy of
its own). The cheap event is PNG info (`/png_info`, no GPU, at most 2 at once), held running by a gate the test
opens, so the ones behind it stay in the queue as long as the test needs. GPU jobs of 150 steps (seconds each)
hold their places while the test looks; the queue's stop flags and /interrupt end them.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from PIL import Image

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client  # noqa: E402

from sd2_app.api.job_admission import server_busy_message  # noqa: E402
from sd2_app.api.quick_reads import too_many_quick_requests_message  # noqa: E402
from sd2_app.ui.hosting import MAX_OTHER_EVENTS_PER_ADDRESS, OTHER_EVENT_PLACES, OTHER_EVENTS_BUSY_MESSAGE  # noqa: E402
from tests.hosting_support import (API_FAST, FAST, api_job_count, interrupt_api_jobs, queue_join,  # noqa: E402
                                   served_behind_proxy, stop_queued_jobs, wait_for_api_jobs)
from tests.reliability_report import reliability, track_module  # noqa: E402,F401
from tests.reliability_support import one_thread  # noqa: E402,F401

AREA = "Hosting"
QUEUE_SIZE = 8
BOUND = 2  # --queue-size of the full app
UI_SLOW, API_SLOW = {**FAST, "steps": 150}, {**API_FAST, "steps": 150}
BUSY = server_busy_message(BOUND)


@pytest.fixture(scope="module")
def small_queue_app(one_thread: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, object]]:
    with served_behind_proxy(["--queue-size", str(QUEUE_SIZE)], tmp_path_factory) as served:
        yield served


@pytest.fixture(scope="module")
def full_app(one_thread: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, object]]:
    argv = ["--queue-size", str(BOUND), "--api", "--mcp"]
    with served_behind_proxy(argv, tmp_path_factory) as (url, demo):
        Client(url, verbose=False).predict(prompt="warm", api_name="/txt2img", **FAST)  # models loaded
        yield url, demo


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
    assert flood[-1].json()["detail"] == too_many_quick_requests_message(MAX_OTHER_EVENTS_PER_ADDRESS)
    assert other.status_code == 200, other.text  # another address still gets its PNG info
    stream = httpx.get(f"{url}gradio_api/call/txt2img/{job.json()['event_id']}", timeout=120).text
    assert "event: complete" in stream, stream[-500:]
    reliability(AREA, f"{QUEUE_SIZE + 4} PNG-info calls held in the queue from one address, then a GPU job from "
                      f"another (--queue-size {QUEUE_SIZE}, raw HTTP, trusted proxy)",
                f"{MAX_OTHER_EVENTS_PER_ADDRESS} accepted, the rest refused at join, HTTP 400: "
                f"{flood[-1].json()['detail']}; the GPU job joins and completes; another address's PNG info joins")


def test_cheap_events_of_many_addresses_stop_at_their_own_places(small_queue_app, reliability) -> None:
    """Every address at its share of PNG-info calls fills the other events' places: the next is refused with the
    busy message for them, and a GPU job still joins (they take none of its places)."""
    url, demo = small_queue_app
    service = demo.service  # type: ignore[attr-defined]
    addresses = [f"198.51.100.{index}" for index in range(OTHER_EVENT_PLACES // MAX_OTHER_EVENTS_PER_ADDRESS + 1)]
    gate, read = threading.Event(), service.read_parameters
    service.read_parameters = lambda path: (gate.wait(60), read(path))[1]  # PNG info runs until the gate opens
    try:
        path = _uploaded_png(url, addresses[0])
        held = [_png_info(url, address, path) for address in addresses[:-1] for _ in range(MAX_OTHER_EVENTS_PER_ADDRESS)]
        refused = _png_info(url, addresses[-1], path)
        job = queue_join(url, addresses[-1], prompt="mine", seed=6)
    finally:
        gate.set()
        del service.read_parameters
    assert [response.status_code for response in held] == [200] * OTHER_EVENT_PLACES, held[-1].text
    assert (refused.status_code, refused.json().get("detail")) == (400, OTHER_EVENTS_BUSY_MESSAGE), refused.text
    assert job.status_code == 200 and _completes(url, "txt2img", job), job.text
    reliability(AREA, f"{OTHER_EVENT_PLACES} PNG-info calls held in the queue from {len(addresses) - 1} addresses "
                      f"({MAX_OTHER_EVENTS_PER_ADDRESS} each), then one more and a GPU job from another (--queue-size "
                      f"{QUEUE_SIZE}, raw HTTP, trusted proxy)",
                f"all {OTHER_EVENT_PLACES} accepted; the next refused at join, HTTP 400: {refused.json()['detail']}; "
                "the GPU job joins and completes")


def _api_txt2img(url: str, address: str, seed: int, **fields: object) -> httpx.Response:
    return httpx.post(f"{url}sdapi/v1/txt2img", json={"prompt": f"api {seed}", "seed": seed, **fields},
                      headers={"X-Forwarded-For": address}, timeout=300)


def _mcp_txt2img(url: str) -> object:
    """One call of the MCP tool txt2img (the `mcp` package's client); its result."""
    import asyncio

    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async def main() -> object:
        async with streamable_http_client(f"{url}gradio_api/mcp/") as (read, write, _), \
                ClientSession(read, write) as session:
            await session.initialize()
            return await session.call_tool("txt2img", {"prompt": "mcp", "width": 64, "height": 64, "steps": 2,
                                                       "guidance_scale": 1.0, "sampler": "Euler", "seed": 3})

    return asyncio.run(main())


def _completes(url: str, name: str, joined: httpx.Response) -> bool:
    stream = httpx.get(f"{url}gradio_api/call/{name}/{joined.json()['event_id']}", timeout=120).text
    return "event: complete" in stream


@pytest.mark.slow
def test_one_ui_job_and_one_api_job_fill_a_queue_size_of_two(full_app, reliability) -> None:
    """--queue-size 2 counts the web UI's, the MCP tools' and the A1111 API's GPU jobs together: a UI job and an
    API job fill it, and the next from any front end (and any address) hears the same message; PNG info and a
    History refresh still work."""
    url, demo = full_app
    with ThreadPoolExecutor(2) as pool:
        ui = queue_join(url, "203.0.113.60", prompt="ui", seed=1, **UI_SLOW)
        api = pool.submit(_api_txt2img, url, "203.0.113.61", 2, **API_SLOW)
        try:
            assert ui.status_code == 200, ui.text
            assert wait_for_api_jobs(url, lambda count: count == 1) == 1
            third_ui = queue_join(url, "203.0.113.62", prompt="third", seed=3, **FAST)
            third_api = _api_txt2img(url, "203.0.113.63", 4, **API_FAST)
            mcp = _mcp_txt2img(url)
            still = api_job_count(url), len(demo._queue.event_ids_to_events)  # type: ignore[attr-defined]
            path = _uploaded_png(url, "203.0.113.64")
            png_info = _png_info(url, "203.0.113.64", path)
            history = Client(url, verbose=False).predict(api_name="/history")
        finally:
            stop_queued_jobs(demo)
            interrupt_api_jobs(url, api_job_count(url), forwarded_for="203.0.113.61")
        assert api.result(timeout=120).status_code == 200  # interrupted: the steps done so far
    assert (third_ui.status_code, third_ui.json().get("detail")) == (400, BUSY), third_ui.text
    assert still == (1, 1)  # the refused jobs took no place: the API's one job, the queue's one (the UI's)
    assert (third_api.status_code, third_api.json().get("detail")) == (503, BUSY), third_api.text
    # The MCP server joins the queue through gradio_client, which reads the refusal as the event's error
    # (`sd2_app.ui.join_refusals`).
    assert mcp.isError and mcp.content[0].text == BUSY, mcp  # type: ignore[attr-defined]
    assert png_info.status_code == 200 and _completes(url, "png_info", png_info), png_info.text
    assert len(history) == 2  # the History tab's gallery and table
    reliability(AREA, f"a web UI job and an A1111 API job running or waiting, then one more each from the web UI, "
                      f"the API and MCP (--queue-size {BOUND}, raw HTTP and the mcp client)",
                f"web UI refused at join, HTTP 400, and the API HTTP 503, both with: {BUSY}; the MCP tool call is an "
                f"error with the same message; PNG info joins and completes, History refreshes")


@pytest.mark.slow
def test_gpu_jobs_filling_the_queue_size_leave_cheap_events_their_places(full_app, reliability) -> None:
    """Two web UI jobs (one running, one waiting) fill --queue-size 2; the third is refused with the app's message
    (it takes no waiting place), and PNG info calls from one address join up to that address's share however
    full the GPU jobs' places are."""
    url, demo = full_app
    path = _uploaded_png(url, "203.0.113.70")
    try:
        joins = [queue_join(url, f"203.0.113.{71 + index}", prompt="ui", seed=index, **UI_SLOW) for index in range(3)]
        cheap = [_png_info(url, "203.0.113.70", path) for _ in range(MAX_OTHER_EVENTS_PER_ADDRESS)]
    finally:
        stop_queued_jobs(demo)
    assert [response.status_code for response in cheap] == [200] * MAX_OTHER_EVENTS_PER_ADDRESS, cheap[-1].text
    assert [response.status_code for response in joins] == [200, 200, 400], joins[-1].text
    assert joins[-1].json()["detail"] == BUSY
    assert all(_completes(url, "png_info", response) for response in cheap)
    reliability(AREA, f"3 web UI jobs, then {MAX_OTHER_EVENTS_PER_ADDRESS} PNG-info calls (--queue-size {BOUND}, raw "
                      "HTTP)", f"2 jobs join, the third is refused: {BUSY}; all {MAX_OTHER_EVENTS_PER_ADDRESS} PNG-info "
                               "calls join and complete")
