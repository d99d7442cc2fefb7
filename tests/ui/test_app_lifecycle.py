"""The app's life (sd2_app/ui/lifecycle.py): each app owns its job threads and stop flags, and closing it stops
the jobs, ends the threads and then waits for the results still being written; `python app.py` does that on
SIGTERM, so a result the visitor already has is on disk, whole, when the process exits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from PIL import Image
from starlette.middleware import Middleware

from sd2_app.errors import Cancelled
from sd2_app.ui import build_ui
from sd2_app.ui.hosting import Hosting
from sd2_app.ui.lifecycle import AppBlocks
from sd2_app.ui.runner import stream
from sd2_app.ui.visitors import COOKIE
from tests.hosting_support import FAST
from tests.reliability_support import free_port
from tests.ui_doubles import fake_service

ROOT = Path(__file__).resolve().parents[2]


def test_each_app_owns_its_job_threads_and_close_ends_them_before_it_flushes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    service = fake_service(None)
    demo, other = build_ui(service), build_ui(service)
    assert isinstance(demo, AppBlocks) and demo.flags.threads is not other.flags.threads  # no process-wide pool
    events: list[str] = []
    started = threading.Event()

    def job(on_progress, should_stop):  # a job that runs until it is stopped, as the Service's does
        started.set()
        try:
            while not should_stop():
                time.sleep(0.01)
            raise Cancelled("stopped")
        finally:
            events.append(f"job ended on {threading.current_thread().name.split('_')[0]}")

    def flush_saves(timeout: float | None = None) -> bool:
        events.append(f"flush {timeout:.0f} s")
        return True

    monkeypatch.setattr(service, "flush_saves", flush_saves)
    flag = demo.flags.arm("visitor")
    run = stream(job, flag, demo.flags.threads)
    assert started.wait(10)
    demo.close()  # never launched: still stops the job, ends the threads and flushes
    assert flag.is_set() and events == ["job ended on sd2-run", "flush 60 s"]
    with pytest.raises(Cancelled):
        list(run)
    with pytest.raises(RuntimeError):  # a closed app takes no more jobs
        demo.flags.threads.submit(job, None, lambda: True)
    assert other.flags.threads.submit(lambda: "runs").result(timeout=10) == "runs"  # the other app is untouched
    other.close()


def test_the_app_serves_visitors_through_its_own_launch_with_nothing_patched_on_it() -> None:
    """The hosting parts of a launch (visitor cookie, queue limits, closed REST routes) come from
    `AppBlocks.launch`, a method of the class, not from a function stored on the instance."""
    demo = build_ui(fake_service(None), hosting=Hosting(max_jobs_per_visitor=1))
    assert "launch" not in vars(demo) and type(demo).launch is AppBlocks.launch
    demo.queue(max_size=4, api_open=True)  # a launcher that opens the direct routes still gets them closed
    seen: list[str] = []

    class CallersMiddleware:  # the caller's own app_kwargs middleware stays, next to the app's
        def __init__(self, app):
            self.app = app

        async def __call__(self, scope, receive, send):  # a pure ASGI middleware
            if scope["type"] == "http":
                seen.append(scope["path"])
            await self.app(scope, receive, send)

    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(), quiet=True,
                            app_kwargs={"middleware": [Middleware(CallersMiddleware)]})
    try:
        response = httpx.get(url, timeout=30)
        assert response.status_code == 200 and COOKIE in response.cookies  # the visitor middleware is in place
        assert "/" in seen
        assert demo.api_open is False and getattr(demo._queue.push, "sd2_watched", False)
        assert "launch" not in vars(demo)
    finally:
        demo.close()



def test_the_app_starts_when_its_own_page_answers_late(monkeypatch: pytest.MonkeyPatch) -> None:
    """Gradio's launch asks its own page once with a 3 s timeout and refused to start when no answer came (on a
    loaded CI machine it did: "When localhost is not accessible, a shareable link must be created"). Here every
    such probe finds no answer; the app starts all the same and serves its page."""
    import gradio.networking

    probes: list[str] = []

    def no_answer(url: str) -> bool:
        probes.append(url)
        return False

    monkeypatch.setattr(gradio.networking, "url_ok", no_answer)
    demo = build_ui(fake_service(None))
    demo.queue(max_size=4)
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(), quiet=True)
    try:
        assert httpx.get(url, timeout=30).status_code == 200
        assert probes == []
    finally:
        demo.close()

# `python app.py` with a slow disk: each file takes 6 s to write (longer than Gradio waits for its server to stop),
# so the results are still queued for the writer when the client has them, when SIGTERM arrives and when the app's
# close begins.
SLOW_DISK_APP = """
import runpy, sys, time
import sd2_app.api.saver as saver
original = saver.save_new_png
def slow_write(data, folder, name):
    time.sleep(6.0)
    return original(data, folder, name)
saver.save_new_png = slow_write
sys.argv = ["app.py", *sys.argv[1:]]
runpy.run_path("app.py", run_name="__main__")
"""


def _wait_for(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"the app did not come up:\n{log.read_text()}")


@contextmanager
def _app_process(tmp_path: Path, outputs: Path) -> Iterator[tuple[subprocess.Popen, str, Path]]:
    """`python app.py --tiny` (on the slow disk above) on a free port, saving to `outputs`: (process, url, log)."""
    from tests.reliability_support import link_tiny_cache

    cache, log = link_tiny_cache(tmp_path / "cache"), tmp_path / "app.log"
    port = free_port()
    env = {**os.environ, "SD2APP_CACHE": str(cache), "GRADIO_ANALYTICS_ENABLED": "False"}
    argv = ["--tiny", "--device", "cpu", "--port", str(port), "--outputs", str(outputs)]
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, "-c", SLOW_DISK_APP, *argv], cwd=ROOT, env=env, stdout=out,
                                   stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/"
        _wait_for(url, process, log)
        yield process, url, log
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.slow
def test_sigterm_ends_the_app_with_every_result_on_disk_whole(tmp_path: Path) -> None:
    from gradio_client import Client

    outputs = tmp_path / "outputs"
    with _app_process(tmp_path, outputs) as (process, url, log):
        client = Client(url, verbose=False, download_files=False)
        client.predict(prompt="kept", seed=5, api_name="/txt2img", **{**FAST, "batch_size": 2})
        written_before = sorted(outputs.rglob("*.png"))
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 0, log.read_text()
    # The app's close waited for the writer (not only Python's exit, which would also drain its queue).
    assert f"waiting for 1 result(s) still being written to {outputs}" in log.read_text()
    assert "Traceback" not in log.read_text()
    assert written_before == []  # nothing was on disk yet when the app was told to stop
    files = sorted(path.name for path in outputs.rglob("*") if path.is_file())
    assert files == ["00000-5-txt2img.png", "00001-6-txt2img.png"], log.read_text()  # no temporary file left
    for path in outputs.rglob("*.png"):
        with Image.open(path) as image:
            image.load()  # the whole PNG: a truncated file raises here
            assert image.size == (64, 64) and image.info["parameters"].startswith("kept\n")


@pytest.mark.slow
def test_sigterm_stops_a_running_job_instead_of_finishing_it(tmp_path: Path) -> None:
    """A 150-step 512x512 job (minutes on this CPU) is stopped at its next step: the app exits soon after
    SIGTERM, cleanly, with nothing saved for it."""
    from gradio_client import Client

    outputs = tmp_path / "outputs"
    with _app_process(tmp_path, outputs) as (process, url, log):
        client = Client(url, verbose=False, download_files=False)
        job = client.submit(prompt="long", seed=1, api_name="/txt2img",
                            **{**FAST, "width": 512, "height": 512, "steps": 150, "cfg_scale": 7.0})
        deadline = time.monotonic() + 120
        while not job.status().progress_data and time.monotonic() < deadline:  # sampling has begun
            time.sleep(0.2)
        assert job.status().progress_data, log.read_text()
        process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        assert process.wait(timeout=120) == 0, log.read_text()
        took = time.monotonic() - signalled
    assert took < 45, log.read_text()  # the whole job would take minutes
    assert not list(outputs.rglob("*.png")) and "Traceback" not in log.read_text()


@pytest.mark.slow
def test_sigterm_stops_the_a1111_apis_running_and_waiting_jobs(tmp_path: Path) -> None:
    """The A1111 API's jobs run on the server's request threads, beside Gradio's queue: the app's close stops
    them too. A 512x512 job of 150 steps (minutes on this CPU) that is sampling and one waiting behind it both
    answer 503 soon after SIGTERM, the app exits cleanly and nothing is saved for them."""
    from concurrent.futures import ThreadPoolExecutor

    from sd2_app.api.a1111_routes import STOPPED_AT_CLOSE_MESSAGE

    outputs = tmp_path / "outputs"
    body = {"prompt": "long", "sampler_name": "Euler", "steps": 150, "cfg_scale": 7.0, "width": 512, "height": 512}
    with _app_process(tmp_path, outputs) as (process, url, log), ThreadPoolExecutor(2) as pool:
        def progress() -> dict:
            return httpx.get(f"{url}sdapi/v1/progress", params={"skip_current_image": True}, timeout=30).json()

        def wait_until(done) -> None:
            deadline = time.monotonic() + 120
            while not done(progress()["state"]) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert done(progress()["state"]), log.read_text()

        running = pool.submit(httpx.post, f"{url}sdapi/v1/txt2img", json={**body, "seed": 1}, timeout=300)
        wait_until(lambda state: state["sampling_step"] > 0)  # sampling has begun
        waiting = pool.submit(httpx.post, f"{url}sdapi/v1/txt2img", json={**body, "seed": 2}, timeout=300)
        wait_until(lambda state: state["job_count"] == 2)
        process.send_signal(signal.SIGTERM)
        answers = [running.result(timeout=120), waiting.result(timeout=120)]  # the jobs would take minutes
        assert process.wait(timeout=120) == 0, log.read_text()
    assert [answer.status_code for answer in answers] == [503, 503], [answer.text[:200] for answer in answers]
    assert {answer.json()["detail"] for answer in answers} == {STOPPED_AT_CLOSE_MESSAGE}  # stopped, not finished
    assert "closing: stopping 2 job(s)" in log.read_text()  # the app's close stopped both, before the exit
    assert not list(outputs.rglob("*")) and "Traceback" not in log.read_text()


@pytest.mark.slow
def test_close_stops_an_api_job_in_its_second_batch_and_saves_the_first(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """`AppBlocks.close()` on the app app.py builds, called while an A1111 API job (`n_iter` 2) samples its second
    batch: the job ends with a 503, a job sent once close has begun (before Gradio closes its server) is refused
    with a 503, the server has shut down when close returns (its open requests, the job's among them, were
    answered; Gradio waits at most 5 s for them and then goes on), and the finished first batch is on disk, whole,
    with no other file."""
    from concurrent.futures import ThreadPoolExecutor

    import gradio as gr

    from sd2_app.api.a1111_routes import CLOSING_MESSAGE, STOPPED_AT_CLOSE_MESSAGE
    from tests.reliability_support import serve

    outputs, cache = tmp_path / "outputs", tmp_path / "cache"
    cache.mkdir()
    body = {"prompt": "two batches", "seed": 3, "n_iter": 2, "sampler_name": "Euler", "steps": 150, "cfg_scale": 1.0,
            "width": 64, "height": 64}
    late: list[httpx.Response] = []
    gradio_close = gr.Blocks.close

    def close_after_a_late_job(self: gr.Blocks, verbose: bool = True) -> None:  # Gradio's part of AppBlocks.close
        if not late:
            late.append(httpx.post(f"{url}sdapi/v1/txt2img", json={**body, "n_iter": 1}, timeout=30))
        gradio_close(self, verbose)

    monkeypatch.setattr(gr.Blocks, "close", close_after_a_late_job)
    with serve(["--tiny", "--device", "cpu", "--outputs", str(outputs)], cache) as (url, demo), \
            ThreadPoolExecutor(1) as pool:
        job = pool.submit(httpx.post, f"{url}sdapi/v1/txt2img", json=body, timeout=300)
        deadline = time.monotonic() + 120
        state: dict = {}
        while not (state.get("job_no") == 1 and state.get("sampling_step", 0) > 0) and time.monotonic() < deadline:
            time.sleep(0.05)
            progress = httpx.get(f"{url}sdapi/v1/progress", params={"skip_current_image": True}, timeout=30)
            state = progress.json()["state"]
        assert state["job_no"] == 1 and state["sampling_step"] > 0, state  # the second batch is sampling
        server = demo.server  # type: ignore[attr-defined]
        demo.close()
        server_ended = not server.thread.is_alive()
        answer = job.result(timeout=60)
    assert answer.status_code == 503 and answer.json()["detail"] == STOPPED_AT_CLOSE_MESSAGE, answer.text[:200]
    assert late[0].status_code == 503 and late[0].json()["detail"] == CLOSING_MESSAGE, late[0].text[:200]
    assert server_ended  # every request was answered: the server's thread ended rather than Gradio timing out
    files = sorted(path.name for path in outputs.rglob("*") if path.is_file())
    assert files == ["00000-3-txt2img.png"], files  # the first batch's seed; nothing of the second
    with Image.open(next(outputs.rglob("*.png"))) as image:
        image.load()  # the whole PNG: a truncated file raises here
        assert image.size == (64, 64) and image.info["parameters"].startswith("two batches\n")


@pytest.mark.slow
def test_close_waits_for_a_checkpoint_load_through_the_apis_options(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint load through the A1111 API's POST /options cannot stop midway: `AppBlocks.close()` waits for it
    before it flushes the saves and returns. The load is held until close has passed Gradio's server close (which
    waits at most 5 s for the open request) and the job threads, then takes half a second more."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.reliability_support import serve

    cache = tmp_path / "cache"
    cache.mkdir()
    events: list[str] = []
    loading, go_on = threading.Event(), threading.Event()
    with serve(["--tiny", "--device", "cpu", "--no-save"], cache) as (url, demo), ThreadPoolExecutor(1) as pool:
        manager, service, threads = demo.service.manager, demo.service, demo.flags.threads  # type: ignore[attr-defined]
        load, flush_saves, close_threads = manager.load, service.flush_saves, threads.close

        def slow_load(key: str, *args: object, **kwargs: object) -> object:
            loading.set()
            assert go_on.wait(120)
            time.sleep(0.5)
            status = load(key, *args, **kwargs)
            events.append(f"loaded {key}")
            return status

        def close_threads_then_let_the_load_go() -> None:
            close_threads()
            go_on.set()

        monkeypatch.setattr(manager, "load", slow_load)
        monkeypatch.setattr(service, "flush_saves", lambda timeout=None: events.append("flush") or flush_saves(timeout))
        monkeypatch.setattr(threads, "close", close_threads_then_let_the_load_go)
        answer = pool.submit(httpx.post, f"{url}sdapi/v1/options", json={"sd_model_checkpoint": "sd2"}, timeout=120)
        assert loading.wait(60)
        demo.close()
        events.append("closed")
        assert events == ["loaded sd2", "flush", "closed"], events
        assert answer.result(timeout=60).status_code == 200
