"""The apps the hosting tests share: `python app.py --host 0.0.0.0` (bound to loopback), saving on, and the same
behind a trusted reverse proxy that the tests play (`served_behind_proxy`); app.py's app that takes one GPU job
(`one_place_app`, --queue-size 1); raw queue joins and the
cleanup of cookieless jobs; another site on the internet (`other_site`) and Gradio's downloads (`downloads`).

sd2's repos point at a private folder and a private repo id (unreachable), so a failed load can be checked
for what it shows a visitor.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from sd2_app.ui.hosting import stop_flag_of
from tests.reliability_support import noise_image, png_bytes, serve

FAST = {"width": 64, "height": 64, "steps": 2, "cfg_scale": 1.0, "sampler": "Euler", "batch_size": 1}
PRIVATE_FOLDER, PRIVATE_REPO = "/srv/private/models/sd21", "acme-internal/secret-finetune"


@pytest.fixture(scope="module")
def public_app(one_thread: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, object, Path]]:
    """The app in a public mode, saving to a temporary folder, with a private repo override for sd2."""
    import sd2_app.testing.tiny as tiny

    tiny_checkpoints = tiny.tiny_checkpoints

    def with_private_sd2(*args: object, **kwargs: object) -> dict:  # --tiny points every key at a tiny repo
        registry = tiny_checkpoints(*args, **kwargs)
        return {**registry, "sd2": replace(registry["sd2"], repos=(PRIVATE_FOLDER, PRIVATE_REPO))}

    outputs = tmp_path_factory.mktemp("outputs")
    argv = ["--tiny", "--device", "cpu", "--host", "0.0.0.0", "--outputs", str(outputs), "--queue-size", "8"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tiny, "tiny_checkpoints", with_private_sd2)
        with serve(argv, tmp_path_factory.mktemp("app-cache"), bind="127.0.0.1") as (url, demo):
            yield url, demo, outputs


_PARAMETERS: dict[str, list[tuple[str, object]]] = {}


@pytest.fixture(scope="module")
def one_place_app(one_thread: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, object]]:
    """app.py's app with --queue-size 1 (tiny checkpoints, no saving, served in-process): (url, the app)."""
    argv = ["--tiny", "--device", "cpu", "--no-save", "--queue-size", "1"]
    with serve(argv, tmp_path_factory.mktemp("app-cache")) as served:
        yield served


def txt2img_data(url: str, **values: object) -> list[object]:
    """The positional `data` of a raw /txt2img call: the API's defaults (from its description), then `values`."""
    return event_data(url, "/txt2img", **values)


def event_data(url: str, api_name: str, **values: object) -> list[object]:
    """The positional `data` of a raw call of `api_name` (/txt2img, /xyz_plot, ...): the API's defaults (from its
    description), then `FAST` settings, then `values`."""
    key = f"{url} {api_name}"
    if key not in _PARAMETERS:
        from gradio_client import Client

        info = Client(url, verbose=False).view_api(print_info=False, return_format="dict")
        _PARAMETERS[key] = [(p["parameter_name"], p.get("parameter_default"))
                            for p in info["named_endpoints"][api_name]["parameters"]]
    merged = {"prompt": "x", "seed": 1, **FAST, **values}
    return [merged.get(name, default) for name, default in _PARAMETERS[key]]




@contextmanager
def served_behind_proxy(argv: list[str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, object]]:
    """`python app.py --tiny --host 0.0.0.0 --no-save --trusted-proxy-hops 1 ARGV` served in-process on loopback,
    with a private Gradio cache folder. uvicorn is told to trust no proxy of its own (FORWARDED_ALLOW_IPS names an
    address that is not ours), so the address the app counts is the app's own reading of X-Forwarded-For, which
    the test writes as the proxy would. Yields (url, demo)."""
    # A --trusted-proxy-hops in `argv` comes later, so it wins over this one.
    argv = ["--tiny", "--device", "cpu", "--host", "0.0.0.0", "--no-save", "--trusted-proxy-hops", "1", *argv]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GRADIO_TEMP_DIR", str(tmp_path_factory.mktemp("gradio-cache")))
        patch.setenv("FORWARDED_ALLOW_IPS", "192.0.2.1")  # uvicorn: the loopback peer is no trusted proxy
        with serve(argv, tmp_path_factory.mktemp("app-cache"), bind="127.0.0.1") as (url, demo):
            yield url, demo


def queue_join(url: str, forwarded_for: str | None, **values: object) -> httpx.Response:
    """A raw queue join of /txt2img with no cookies, through a proxy that says the client is `forwarded_for`."""
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    return httpx.post(f"{url}gradio_api/call/txt2img", json={"data": txt2img_data(url, **values)}, headers=headers,
                      timeout=30)


def fn_index_of(url: str, api_name: str) -> int:
    """The event number of the app's event named `api_name` (its /config, read once per app)."""
    if url not in _FN_INDICES:
        dependencies = httpx.get(f"{url}config", timeout=30).json()["dependencies"]
        _FN_INDICES[url] = {d.get("api_name"): d["id"] for d in dependencies}
    return _FN_INDICES[url][api_name]


_FN_INDICES: dict[str, dict[str | None, int]] = {}  # each app URL's event numbers by name (`fn_index_of`)


def read_stream(client: httpx.Client, session_hash: str) -> list[dict]:
    """The messages of a session's event stream (`client`: an httpx.Client on the app's URL), read to its end."""
    messages = []
    with client.stream("GET", "gradio_api/queue/data", params={"session_hash": session_hash}) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:"):
                messages.append(json.loads(line[5:]))
                if messages[-1]["msg"] in ("close_stream", "unexpected_error"):
                    break
    return messages


def stop_queued_jobs(demo: object) -> None:
    """The test's cleanup: every job still in the queue gets its stop flag set (cookieless jobs have no Stop)."""
    queue = demo._queue  # type: ignore[attr-defined]
    for event in list(queue.event_ids_to_events.values()):
        flag = stop_flag_of(event.request)
        if flag is not None:
            flag.set()
    deadline = time.monotonic() + 120
    while queue.event_ids_to_events and time.monotonic() < deadline:
        time.sleep(0.2)


class CallsAtOnce:
    """`call` wrapped to count how many calls run at once (`running`, the most: `most`), each held by `hold()`
    (a sleep, an event's wait) before it calls through."""

    def __init__(self, call: Callable[..., object], hold: Callable[[], object]) -> None:
        self.call, self.hold = call, hold
        self.running = self.most = 0
        self._lock = threading.Lock()

    def __call__(self, *args: object, **kwargs: object) -> object:
        with self._lock:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            self.hold()
        finally:
            with self._lock:
                self.running -= 1
        return self.call(*args, **kwargs)


STEP_S = 0.1  # each sampler step of `slow_steps` sleeps this long first, so a run lasts long enough to leave


def slow_steps(monkeypatch: pytest.MonkeyPatch,
               hold: Callable[[str, int], object] | None = None) -> dict[str, list[int]]:
    """From now on each sampler step takes `STEP_S` longer, and then waits for `hold(prompt, step)` when given;
    the steps each prompt ran (a plot's cells, each prompt of its own), in order."""
    from sd2_app.api.service import Service

    steps: dict[str, list[int]] = defaultdict(list)
    run_on_gpu = Service.run_on_gpu

    def slow(service: Service, task: str, request: object, on_step: Callable, timings: dict) -> object:
        def step(done: int, total: int, latents: object) -> None:
            time.sleep(STEP_S)
            steps[request.prompt].append(done)  # type: ignore[attr-defined]
            if hold is not None:
                hold(request.prompt, done)  # type: ignore[attr-defined]
            on_step(done, total, latents)

        return run_on_gpu(service, task, request, step, timings)

    monkeypatch.setattr(Service, "run_on_gpu", slow)
    return steps


# A1111 API helpers (tests/reliability/test_reliability_api_hosting.py, tests/api/test_a1111_local_limits.py)
API_FAST = {"sampler_name": "Euler", "steps": 2, "cfg_scale": 1.0, "width": 64, "height": 64}


def api_job_count(url: str, auth: tuple[str, str] | None = None) -> int:
    """The A1111 API's jobs waiting or running (/progress's `job_count`)."""
    progress = httpx.get(f"{url}sdapi/v1/progress", params={"skip_current_image": True}, auth=auth, timeout=30)
    return progress.json()["state"]["job_count"]


def wait_for_api_jobs(url: str, done: Callable[[int], bool], auth: tuple[str, str] | None = None) -> int:
    """Wait (at most 60 s) until `done(job count)`; the count then."""
    deadline = time.monotonic() + 60
    while not done(api_job_count(url, auth)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return api_job_count(url, auth)


def interrupt_api_jobs(url: str, count: int, auth: tuple[str, str] | None = None,
                       forwarded_for: str | None = None) -> None:
    """/interrupt stops the caller's oldest API job: `count` times, each once the one before has left; the
    caller is the client at `forwarded_for` behind the test's proxy (`served_behind_proxy`), or the test itself."""
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    for _ in range(count):
        left = api_job_count(url, auth)
        if not left:
            return
        httpx.post(f"{url}sdapi/v1/interrupt", auth=auth, headers=headers, timeout=30)
        wait_for_api_jobs(url, lambda jobs: jobs < left, auth)


@pytest.fixture()
def other_site() -> Iterator[tuple[str, list[str]]]:
    """A site on the internet, played by a local server: (its URL, the paths it was asked for)."""
    asked: list[str] = []
    body = png_bytes(noise_image(64, 64))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802  # the name http.server calls
            asked.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://files.example:{server.server_address[1]}", asked
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture()
def downloads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """The URLs Gradio downloads from now on (its download stands in for the internet and writes a small PNG)."""
    from gradio import processing_utils

    links: list[str] = []

    async def download(link: str, cache_dir: str) -> str:
        links.append(link)
        path = tmp_path / f"download-{len(links)}.png"
        path.write_bytes(png_bytes(noise_image(64, 64)))
        return str(path)

    monkeypatch.setattr(processing_utils, "async_ssrf_protected_download", download)
    return links
