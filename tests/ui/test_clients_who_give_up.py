"""API clients that give up a running job stop it, through the running app (`python app.py --tiny --no-save`,
served in-process, its A1111 API on as it is locally): gradio_client's `Job.cancel()` (`sd2_app.ui.cancels`), and
an A1111 API client that closes its connection (`sd2_app.api.a1111_disconnects`).

Each sampler step sleeps `STEP_S` first (`tests.hosting_support.slow_steps`), so a run lasts long enough to give
up; the step at which the client gives up waits (at most `HOLD_S`) until the job's stop is set, so the step at
which it stops is exact.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from urllib.parse import urlparse

import httpx
import pytest

from tests.batching_support import wait_until
from tests.hosting_support import API_FAST, FAST, slow_steps
from tests.reliability_support import one_thread, serve  # noqa: F401

pytestmark = pytest.mark.slow  # a served app
gradio_client = pytest.importorskip("gradio_client")

CANCEL_AT = 7  # the step during which the client gives up: 2 steps after a live preview, 3 before the next
HOLD_S = 10.0  # the longest a held step waits for the stop (the old code never set it)


@pytest.fixture(scope="module")
def app(one_thread: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, object]]:
    argv = ["--tiny", "--device", "cpu", "--no-save"]
    with serve(argv, tmp_path_factory.mktemp("app-cache")) as served:
        yield served


def _held_until(stopped: Callable[[], bool], prompt: str, at_step: int) -> Callable[[str, int], None]:
    """A `slow_steps` hold: step `at_step` of `prompt`'s run waits until `stopped()` (at most `HOLD_S`)."""

    def hold(step_prompt: str, step: int) -> None:
        deadline = time.monotonic() + HOLD_S
        while step_prompt == prompt and step == at_step and not stopped() and time.monotonic() < deadline:
            time.sleep(0.01)

    return hold


def _running_job_stopped(demo: object) -> bool:
    """Whether a web UI or gradio_client job's stop flag is set (the app's running jobs' flags)."""
    return any(flag.is_set() for flags in list(demo.flags._flags.values()) for flag in flags)  # type: ignore[attr-defined]


def _idle(demo: object) -> bool:
    return not demo._queue.event_ids_to_events and not demo.flags._flags  # type: ignore[attr-defined]


def test_a_gradio_client_job_cancelled_mid_run_stops_at_its_next_step(app, monkeypatch: pytest.MonkeyPatch) -> None:
    """`job.cancel()` at step 7 of a 40-step run, once the client has had progress updates: the run stops at that
    step's end and the next client's job, queued behind it, runs to its end. Gradio's cancel route waited for the
    run's next live preview (it ran 11 steps), and the job behind waited with it."""
    url, demo = app
    hold = _held_until(lambda: _running_job_stopped(demo), "cancelled", CANCEL_AT)
    steps = slow_steps(monkeypatch, hold)
    client, other = gradio_client.Client(url, verbose=False), gradio_client.Client(url, verbose=False)
    job = client.submit(prompt="cancelled", seed=1, api_name="/txt2img", **{**FAST, "steps": 40})
    wait_until(lambda: len(steps["cancelled"]) == CANCEL_AT, timeout=120)
    wait_until(lambda: bool(job.status().progress_data), timeout=HOLD_S)
    behind = other.submit(prompt="next", seed=2, api_name="/txt2img", **FAST)
    cancelled: list[bool] = []  # on a thread: Gradio's cancel route answers once the run has stopped
    canceller = threading.Thread(target=lambda: cancelled.append(job.cancel()))
    canceller.start()
    _, gallery, info = behind.result(timeout=120)
    canceller.join(30)
    assert {prompt: len(done) for prompt, done in steps.items()} == {"cancelled": CANCEL_AT, "next": 2}
    assert cancelled == [True] and len(gallery) == 1 and "**Seed** 2" in info
    wait_until(lambda: _idle(demo), timeout=60)
    assert demo.service.gate.waiting == 0  # type: ignore[attr-defined]


def _progress(url: str) -> dict:
    return httpx.get(f"{url}sdapi/v1/progress", params={"skip_current_image": True}, timeout=30).json()


def _txt2img_on_a_socket(url: str, body: dict) -> socket.socket:
    """A raw HTTP POST /sdapi/v1/txt2img of `body`, sent on a new connection left open (its answer unread)."""
    data = json.dumps(body).encode()
    connection = socket.create_connection(("127.0.0.1", urlparse(url).port), timeout=30)
    connection.sendall(b"POST /sdapi/v1/txt2img HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                       b"Content-Length: %d\r\n\r\n%s" % (len(data), data))
    return connection


def test_an_a1111_api_client_that_disconnects_stops_its_job(app, monkeypatch: pytest.MonkeyPatch) -> None:
    """A raw HTTP /sdapi/v1/txt2img of 40 steps whose client closes its connection at step 7 (once /progress has
    shown it running), with another request waiting behind it: the job stops at that step's end, /progress goes
    idle and the request behind runs. The job ran its 40 steps for nobody, and the one behind waited for them."""
    url, _ = app
    steps = slow_steps(monkeypatch, _held_until(lambda: _progress(url)["state"]["interrupted"], "left", CANCEL_AT))
    connection = _txt2img_on_a_socket(url, {**API_FAST, "prompt": "left", "seed": 1, "steps": 40})
    wait_until(lambda: len(steps["left"]) == CANCEL_AT and _progress(url)["state"]["sampling_step"] == CANCEL_AT - 1,
               timeout=120)
    answers: list[httpx.Response] = []
    behind = threading.Thread(target=lambda: answers.append(
        httpx.post(f"{url}sdapi/v1/txt2img", json={**API_FAST, "prompt": "behind", "seed": 2}, timeout=120)))
    behind.start()
    wait_until(lambda: _progress(url)["state"]["job_count"] == 2, timeout=HOLD_S)
    connection.close()
    behind.join(120)
    assert {prompt: len(done) for prompt, done in steps.items()} == {"left": CANCEL_AT, "behind": 2}
    assert answers[0].status_code == 200 and len(answers[0].json()["images"]) == 1
    assert json.loads(answers[0].json()["info"])["all_seeds"] == [2]
    wait_until(lambda: _progress(url)["state"]["job_count"] == 0, timeout=10)
    assert _progress(url)["textinfo"] is None
