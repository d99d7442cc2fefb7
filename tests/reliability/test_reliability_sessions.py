"""Queue joins through the running app with raw HTTP: what Gradio's queue keeps per session hash, for joins under
new session hashes, read or never read, while another visitor's job runs (`sd2_app.ui.session_messages`); joins of
an event number the app does not have; streams of sessions and events the queue does not know.

The app is `python app.py --tiny --max-sessions 20` served in-process on a free loopback port.
"""

from __future__ import annotations

import json
import threading
import time
import tracemalloc
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from gradio.blocks import BlocksConfig
from gradio.state_holder import SessionState

from sd2_app.api.service import Service
from sd2_app.ui.event_checks import unknown_event_message
from sd2_app.ui.request_limits import NO_DEEP_LINKS_MESSAGE
from sd2_app.ui.stream_checks import UNKNOWN_STREAM_MESSAGE
from sd2_app.ui.visitors import COOKIE as VISITOR_COOKIE
from tests.hosting_support import API_FAST, CallsAtOnce, event_data, fn_index_of, read_stream, slow_steps, txt2img_data
from tests.reliability_report import reliability, track_module  # noqa: F401
from tests.reliability_support import one_thread, serve  # noqa: F401

pytestmark = pytest.mark.slow  # about a hundred new sessions, each a copy of every component's settings

AREA = "Hosting"
SESSIONS = 20


@pytest.fixture(scope="module")
def app(one_thread: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, object]]:
    argv = ["--tiny", "--device", "cpu", "--no-save", "--max-sessions", str(SESSIONS)]
    with serve(argv, tmp_path_factory.mktemp("app-cache")) as served:
        yield served


def _visitor(url: str, fn_index: int, seen: list[dict]) -> None:
    """A browser's txt2img: the join, then its event stream read to the end into `seen`."""
    with httpx.Client(base_url=url, timeout=300) as client:
        join = {"data": txt2img_data(url, prompt="the visitor's"), "fn_index": fn_index, "session_hash": "visitor"}
        assert client.post("gradio_api/queue/join", json=join).status_code == 200
        seen.extend(read_stream(client, "visitor"))


def test_sessions_of_finished_events_stay_bounded_and_a_running_one_is_kept(app, reliability,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Gradio kept an entry for every session hash that ever joined (its pending event ids), and after 2,000
    joins under new hashes dropped the oldest session's messages even while its job ran: the visitor's stream
    ended with '404: Not Found' (seen with the LRU's 2,000 lowered to 50)."""
    url, demo = app
    queue = demo._queue  # type: ignore[attr-defined]
    fn_index = {d.get("api_name"): d["id"] for d in httpx.get(f"{url}config", timeout=30).json()["dependencies"]}
    release = threading.Event()
    held = CallsAtOnce(Service.run_on_gpu, lambda: release.wait(120))
    monkeypatch.setattr(Service, "run_on_gpu", lambda service, *args, **kwargs: held(service, *args, **kwargs))
    seen: list[dict] = []
    visitor = threading.Thread(target=_visitor, args=(url, fn_index["txt2img"], seen))
    visitor.start()
    flood = 4 * SESSIONS
    try:
        deadline = time.monotonic() + 60
        while held.running < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        with httpx.Client(base_url=url, timeout=60) as client:
            for n in range(flood):  # PNG info without an image: a quick queued event; every other stream read
                join = {"data": [None], "fn_index": fn_index["png_info"], "session_hash": f"new-{n}"}
                assert client.post("gradio_api/queue/join", json=join).status_code == 200
                if n % 2:
                    assert read_stream(client, f"new-{n}")[-1]["msg"] == "close_stream"
        kept = (len(queue.pending_messages_per_session), len(queue.pending_event_ids_session))
    finally:
        release.set()
        visitor.join(120)
    assert [message["msg"] for message in seen][-2:] == ["process_completed", "close_stream"], seen[-2:]
    assert seen[-2]["success"] is True
    assert kept[0] <= SESSIONS + 1 and kept[1] <= 2 * SESSIONS + 1, kept
    reliability(AREA, f"{flood} queue joins under new session hashes (half their streams read, half never), "
                      f"--max-sessions {SESSIONS}, while another visitor's job runs (raw HTTP)",
                f"Gradio's queue keeps {kept[0]} sessions' message queues and {kept[1]} sessions' event ids; the "
                "visitor's stream ends with its result. (Gradio kept every session hash's event ids for good, and "
                "2,000 new sessions pushed out a running job's messages: its stream ended with 404: Not Found)")


def test_a_join_of_an_event_number_the_app_lacks_is_refused_in_words(app, reliability) -> None:
    url, _ = app
    answers = [httpx.post(f"{url}gradio_api/queue/join", json={"data": [], "fn_index": fn_index, "session_hash": "s"},
                          timeout=30) for fn_index in (10**30, 99999, -1)]
    assert [(answer.status_code, answer.json()["detail"]) for answer in answers] == [
        (400, unknown_event_message(10**30)), (400, unknown_event_message(99999)), (400, unknown_event_message(-1))]
    direct = [httpx.post(f"{url}gradio_api/run/{name}", json=body, timeout=30)
              for name, body in (("predict", {"data": [], "fn_index": 99999}), ("no_such_api", {"data": []}))]
    assert [(answer.status_code, answer.json()["detail"]) for answer in direct] == [
        (404, unknown_event_message(99999)), (404, unknown_event_message("no_such_api"))]
    counted = httpx.post(f"{url}gradio_api/run/count_tokens", json={"data": ["a cat", "sd2-base"]}, timeout=30)
    assert counted.status_code == 200 and counted.json()["data"][0].startswith("2/75"), counted.text
    reliability(AREA, "queue joins of event numbers the app does not have (10**30, 99999, -1), direct calls "
                      "(/gradio_api/run/...) of event 99999 and of an API name it lacks (raw HTTP)",
                f"joins: HTTP 400: {answers[1].json()['detail']} direct calls: HTTP 404, the same or "
                f"{direct[1].json()['detail']} (were HTTP 500 with a KeyError or FnIndexInferError traceback in the "
                "log); a known direct call still answers")


def test_a_direct_call_nested_past_the_parsers_depth_is_refused_as_other_routes_do(app, reliability) -> None:
    """A body of 100,000 nested arrays to the direct route: HTTP 400 as the queue join and the A1111 API answer it
    (the event check's own parse raised RecursionError: HTTP 500 with a traceback in the log per request)."""
    url, _ = app
    nested = "[" * 100_000
    answers = [httpx.post(f"{url}{path}", content=body, headers={"content-type": "application/json"}, timeout=30)
               for path in ("gradio_api/run/predict", "gradio_api/run/txt2img", "gradio_api/queue/join")
               for body in (nested, '{"data": ' + nested + "]" * 100_000 + "}")]
    assert [(answer.status_code, answer.json()) for answer in answers] == [
        (400, {"detail": "There was an error parsing the body"})] * 6
    counted = httpx.post(f"{url}gradio_api/run/count_tokens", json={"data": ["a cat", "sd2-base"]}, timeout=30)
    assert counted.status_code == 200 and counted.json()["data"][0].startswith("2/75"), counted.text
    reliability(AREA, "direct calls (/gradio_api/run/predict, /txt2img) and a queue join whose body is 100,000 "
                      "nested arrays, bare or as data (raw HTTP)",
                f"HTTP 400: {answers[0].json()['detail']} (the direct calls were HTTP 500 with a RecursionError "
                "traceback in the log); a known direct call still answers")


def test_a_body_of_the_wrong_shape_holding_1e400_or_nan_gets_a_422(app, reliability) -> None:
    """fn_index 1e400 or NaN (JSON as Python reads it) to the direct route and the queue join: FastAPI's 422, the
    number written as text (its answer could not be written: HTTP 500 with a traceback in the log)."""
    url, _ = app
    answers = [httpx.post(f"{url}{path}", content='{"data": [], "fn_index": %s, "session_hash": "s"}' % number,
                          headers={"content-type": "application/json"}, timeout=30)
               for path in ("gradio_api/run/txt2img", "gradio_api/queue/join") for number in ("1e400", "NaN")]
    assert [answer.status_code for answer in answers] == [422] * 4
    assert [answer.json()["detail"][0]["input"] for answer in answers] == ["inf", "nan"] * 2
    reliability(AREA, "a direct call and a queue join whose fn_index is 1e400 or NaN (raw HTTP)",
                f"HTTP 422: {answers[0].json()['detail'][0]['msg']}, the input written as 'inf' / 'nan' (were HTTP "
                "500: FastAPI's answer echoed a number strict JSON cannot hold; a traceback in the log per request)")


def test_a_stream_of_an_unknown_session_or_event_answers_404_in_words(app, reliability) -> None:
    url, _ = app
    with httpx.Client(base_url=url, timeout=30) as client:
        answers = [client.get("gradio_api/queue/data", params={"session_hash": "nobody-joined"}),
                   client.get("gradio_api/call/png_info/0123456789abcdef"),
                   client.get("gradio_api/call/v2/png_info/0123456789abcdef")]
        join = {"data": [None], "fn_index": fn_index_of(url, "png_info"), "session_hash": "joined"}
        assert client.post("gradio_api/queue/join", json=join).status_code == 200
        read = read_stream(client, "joined")
        called = client.post("gradio_api/call/png_info", json={"data": [None]}).json()["event_id"]
        result = client.get(f"gradio_api/call/png_info/{called}").text
    assert [(answer.status_code, answer.json()) for answer in answers] == [
        (404, {"detail": UNKNOWN_STREAM_MESSAGE})] * 3
    assert read[-1]["msg"] == "close_stream"  # a joined session's stream is read as before, and a call's result
    assert result.startswith("event: complete\ndata: ") and result.count("event: ") == 1, result
    reliability(AREA, "GET /gradio_api/queue/data for a session that never joined, and /gradio_api/call/<api>/<id> "
                      "for an unknown event id (raw HTTP)",
                f"HTTP 404: {UNKNOWN_STREAM_MESSAGE} (Gradio started the stream and raised its 404 inside it: the "
                "client's connection closed mid-answer, the log got a traceback for each request)")


def _visitor_client(url: str) -> httpx.Client:
    """A client holding a visitor cookie of its own (a browser, or gradio_client)."""
    client = httpx.Client(base_url=url, timeout=120)
    client.get("config")
    assert client.cookies.get(VISITOR_COOKIE), client.cookies
    return client


def _join(client: httpx.Client, session_hash: str, api_name: str, **values: object) -> None:
    fn_index = fn_index_of(str(client.base_url), api_name)
    join = {"data": event_data(str(client.base_url), f"/{api_name}", **values), "fn_index": fn_index,
            "session_hash": session_hash}
    assert client.post("gradio_api/queue/join", json=join).status_code == 200


def _read(client: httpx.Client, session_hash: str, seen: list[dict], leave: Callable[[], bool] | None = None,
          left: list[int] | None = None) -> threading.Thread:
    """A thread reading the session's event stream into `seen`: to its end, or, with `leave`, until `leave()`
    says the visitor goes (the connection is closed then; `left` gets `leave`'s count)."""

    def read() -> None:
        with client.stream("GET", "gradio_api/queue/data", params={"session_hash": session_hash}) as stream:
            for line in stream.iter_lines():
                if line.startswith("data:"):
                    seen.append(json.loads(line[5:]))
                if leave is not None and (count := leave()):
                    (left if left is not None else []).append(count)
                    return
                if seen and seen[-1]["msg"] in ("close_stream", "unexpected_error"):
                    return

    thread = threading.Thread(target=read)
    thread.start()
    return thread


def _wait(condition: Callable[[], object], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert condition()


def _completed(seen: list[dict]) -> bool:
    return [m["msg"] for m in seen][-2:] == ["process_completed", "close_stream"] and seen[-2]["success"] is True


def test_a_visitor_who_leaves_stops_their_run_at_once_and_nobody_elses(app, reliability,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The page of a 40-step run closes after its 7th step: the run stops at its next step (it ran to the next
    live preview and a step more, 11 steps) and the jobs behind it start; the same visitor's other tab and another
    visitor keep theirs; a job whose page closed while it waited never runs."""
    url, demo = app
    steps = slow_steps(monkeypatch)
    leaver, other = _visitor_client(url), _visitor_client(url)
    streams: dict[str, list[dict]] = defaultdict(list)
    left: list[int] = []
    _join(leaver, "tab-1", "txt2img", prompt="leaving", steps=40)
    reading = [_read(leaver, "tab-1", streams["tab-1"], lambda: len(steps["leaving"]) >= 7 and len(steps["leaving"]),
                     left)]
    _wait(lambda: steps["leaving"])
    _join(leaver, "tab-2", "txt2img", prompt="other tab", steps=3)  # the same visitor's other tab
    _join(other, "gone-early", "txt2img", prompt="left while queued", steps=3)
    _read(other, "gone-early", streams["gone-early"], lambda: bool(streams["gone-early"])).join(60)
    _join(other, "waiting", "txt2img", prompt="waiting", steps=3)
    reading += [_read(leaver, "tab-2", streams["tab-2"]), _read(other, "waiting", streams["waiting"])]
    for thread in reading:
        thread.join(120)
    ran = {prompt: len(done) for prompt, done in steps.items()}
    assert left == [7] and ran == {"leaving": 8, "other tab": 3, "waiting": 3}, (left, ran)
    assert _completed(streams["tab-2"]) and _completed(streams["waiting"]), (streams["tab-2"][-2:],
                                                                            streams["waiting"][-2:])
    _wait(lambda: not demo._queue.event_ids_to_events and not demo.flags._flags)  # type: ignore[attr-defined]
    reliability(AREA, "a visitor's page closes (its event stream, raw HTTP) after step 7 of a 40-step run, while "
                      "the visitor's other tab, another visitor and a job whose page closed while it waited are queued",
                f"the run stops after {ran['leaving']} steps and the queued jobs start: the other tab's and the other "
                "visitor's run their 3 steps to the end, the job that left while it waited never runs (Gradio "
                "closed a run only when it next yielded: after 11 steps, at its next live preview)")


def test_a_plot_whose_visitor_leaves_stops_and_keeps_its_finished_cells(app, reliability,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A 3-cell X/Y/Z plot (Prompt S/R: cat, dog, fox; 20 steps a cell) whose page closes at the 6th step of its
    2nd cell stops at the next step (it ran to the cell's next live preview, step 10); the visitor's History keeps the
    finished cell and its grid, as after Stop."""
    url, demo = app
    steps = slow_steps(monkeypatch)
    visitor = _visitor_client(url)
    seen: list[dict] = []
    left: list[int] = []
    _join(visitor, "plotting", "xyz_plot", prompt="a cat", steps=20, x_type="prompt_sr", x_values="cat, dog, fox")
    _read(visitor, "plotting", seen, lambda: len(steps["a dog"]) >= 6 and len(steps["a dog"]), left).join(120)
    _wait(lambda: not demo._queue.event_ids_to_events and not demo.flags._flags)  # type: ignore[attr-defined]
    ran = {prompt: len(done) for prompt, done in steps.items()}
    history = visitor.post("gradio_api/run/history", json={"data": []}).json()["data"][1]["data"]
    assert left == [6] and ran == {"a cat": 20, "a dog": 7}, (left, ran)
    assert [(row[1], row[3]) for row in history[:1]] == [("xyz_plot", 2)], history  # the grid and the cat
    reliability(AREA, "an X/Y/Z plot's page closes (raw HTTP) at step 6 of its 2nd cell (3 cells of 20 steps)",
                f"the plot stops after {ran['a dog']} steps of that cell, and the visitor's History keeps the grid "
                "and the finished cell (the plot ran on to the cell's next live preview, 10 steps)")


def test_an_api_caller_who_disconnects_stops_its_run(app, reliability, monkeypatch: pytest.MonkeyPatch) -> None:
    """A caller of the /call route (curl, a script) whose connection closes while it reads the run's stream (GET
    /gradio_api/call/txt2img/<event_id>) after step 7 of 40: the run stops at its next step (it ran to step 11)."""
    url, demo = app
    steps = slow_steps(monkeypatch)
    left: list[int] = []
    with httpx.Client(base_url=url, timeout=120) as client:
        joined = client.post("gradio_api/call/txt2img", json={"data": txt2img_data(url, prompt="called", steps=40)})
        with client.stream("GET", f"gradio_api/call/txt2img/{joined.json()['event_id']}"):
            _wait(lambda: len(steps["called"]) >= 7)  # the stream sends only previews and the result: not read
            left.append(len(steps["called"]))
    _wait(lambda: not demo._queue.event_ids_to_events and not demo.flags._flags)  # type: ignore[attr-defined]
    assert (left, len(steps["called"])) == ([7], 8)
    reliability(AREA, "an API caller's connection closes (GET /gradio_api/call/txt2img/<event_id>, raw HTTP) after "
                      "step 7 of a 40-step run",
                "the run stops after 8 steps (it ran on to the next live preview and a step more: 11)")


def test_a_new_session_hash_costs_only_what_its_events_change(app, reliability) -> None:
    """Joins of PNG info under 10 new session hashes (raw HTTP): each session holds the settings of the 3
    components its event touched, where Gradio's session state computed all of the app's (a copy of every
    component's settings per new hash, which any client can name with every request); every component's
    settings are still there when asked for. Gradio's deep-link route, which wrote them all to a new file for
    anybody, answers 404."""
    url, demo = app
    sessions = demo.server_app.state_holder.session_data  # type: ignore[attr-defined]
    everything = [dict(config) for config in SessionState(demo).components]
    fn_index = fn_index_of(url, "png_info")
    tracemalloc.start()
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            for n in range(10):
                join = {"data": [None], "fn_index": fn_index, "session_hash": f"light-{n}"}
                assert client.post("gradio_api/queue/join", json=join).status_code == 200
                assert read_stream(client, f"light-{n}")[-1]["msg"] == "close_stream"
        grown = tracemalloc.get_traced_memory()[0] / 10
    finally:
        tracemalloc.stop()
    held = sorted({len(sessions[f"light-{n}"].config_values) for n in range(10)})
    links = Path(demo.server_app.uploaded_file_dir) / "deep_links"  # type: ignore[attr-defined]
    before = sorted(links.glob("*/state.json"))
    link = httpx.get(f"{url}gradio_api/deep_link", params={"session_hash": "light-0"}, timeout=30)
    linked = list(sessions["light-0"].components)  # what the deep-link route would write
    assert held == [3] and len(everything) > 400, (held, len(everything))
    assert grown < 150_000, grown  # Gradio's copy alone: about 750 KB
    assert sorted(config["id"] for config in linked) == sorted(config["id"] for config in everything)
    assert (link.status_code, link.text) == (404, NO_DEEP_LINKS_MESSAGE)
    assert sorted(links.glob("*/state.json")) == before
    reliability(AREA, "queue joins of PNG info under 10 new session hashes (raw HTTP)",
                f"each new session holds the settings of {held[0]} components (Gradio's session state computed "
                f"all {len(everything)}: about 750 KB per new hash); memory grew {grown / 1000:.0f} KB per join, "
                "stream read); GET /gradio_api/deep_link answers HTTP 404: "
                f"{NO_DEEP_LINKS_MESSAGE} (it wrote the session's settings of every component, about 400 KB, to a new "
                "file)")


def test_a_direct_call_naming_no_session_keeps_none_and_copies_no_settings(app, reliability,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """10 direct calls of the token count that name no session hash (raw HTTP, as curl sends them): each answers,
    computes the settings of at most a few components (Gradio made a session state of its own per such call,
    outside the store: the settings of every component), and the store of sessions is as it was, none kept and
    none pushed out (`sd2_app.ui.light_sessions.one_call_session`)."""
    url, demo = app
    sessions = demo.server_app.state_holder.session_data  # type: ignore[attr-defined]
    every = len(list(SessionState(demo).components))
    computed = []
    config_for_block = BlocksConfig.config_for_block

    def counted(*args: object, **kwargs: object) -> object:
        computed.append(args[0])
        return config_for_block(*args, **kwargs)

    monkeypatch.setattr(BlocksConfig, "config_for_block", staticmethod(counted))
    before = list(sessions)
    with httpx.Client(base_url=url, timeout=30) as client:
        answers = [client.post("gradio_api/run/count_tokens", json={"data": [f"a cat {n}", "sd2-base"]})
                   for n in range(10)]
    monkeypatch.undo()
    assert [(answer.status_code, answer.json()["data"][0][:4]) for answer in answers] == [(200, "3/75")] * 10
    assert len(computed) <= 10 * 3 and every > 400, (len(computed), every)
    assert list(sessions) == before
    reliability(AREA, "10 direct calls (/gradio_api/run/count_tokens) that name no session hash (raw HTTP)",
                f"each answers; {len(computed) / 10:.0f} components' settings computed per call (Gradio made a "
                f"session state of its own for each: all {every}); the store of sessions as it was, none kept, "
                "none pushed out")


def test_a_job_waiting_at_the_gpu_gate_leaves_with_its_visitor(app, reliability, monkeypatch: pytest.MonkeyPatch) -> None:
    """A web UI job waits at the GPU gate behind an A1111 API job (its line says "Queued: 1 job ahead of
    yours…", and it yields nothing more until its place changes); its page closes: it leaves the gate at once and
    never runs a step (it waited for the API job, then ran a step before Gradio closed it)."""
    url, demo = app
    steps = slow_steps(monkeypatch)
    api = threading.Thread(target=httpx.post, args=(f"{url}sdapi/v1/txt2img",),
                           kwargs={"json": {**API_FAST, "prompt": "api job", "steps": 30}, "timeout": 120})
    api.start()
    _wait(lambda: steps["api job"])
    visitor, seen = _visitor_client(url), []
    _join(visitor, "gated", "txt2img", prompt="gated", steps=3)
    queued = "Queued: 1 job ahead of yours…"
    _read(visitor, "gated", seen, lambda: any(queued in json.dumps(m, ensure_ascii=False) for m in seen)).join(60)
    api.join(120)
    _wait(lambda: not demo._queue.event_ids_to_events and not demo.flags._flags)  # type: ignore[attr-defined]
    assert (len(steps["api job"]), len(steps["gated"])) == (30, 0)
    reliability(AREA, "a web UI job waiting at the GPU gate behind an A1111 API job loses its page (raw HTTP)",
                "it leaves the gate at once and runs no step; the API job runs its 30 (it waited for the API job, "
                "then ran a step)")
