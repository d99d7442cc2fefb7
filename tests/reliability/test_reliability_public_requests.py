"""A public app attacked over raw HTTP: oversized bodies, files named by other sites' URLs, the A1111 API's
/progress, /interrupt and /options used on other clients' jobs and on the shared checkpoint.

The app is `python app.py --host 0.0.0.0 --trusted-proxy-hops 1 --api` (no --allow-model-admin) served
in-process on a free loopback port (the tiny checkpoints), behind a trusted reverse proxy that the test plays
(`tests.hosting_support.served_behind_proxy`), so each client's address is the X-Forwarded-For entry it gets.
Where the attack needs another site (a URL to fetch), a local HTTP server stands in for it and the address
check that Gradio makes (the host must resolve to a public address) is told it does.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from sd2_app.api.a1111_routes import NO_LOADING_BY_HAND_MESSAGE, NO_MODEL_ADMIN_MESSAGE
from sd2_app.api.job_admission import too_many_jobs_from_address_message
from sd2_app.ui.editor_blobs import MAX_PENDING_BYTES
from sd2_app.ui.lifecycle import UNREADABLE_FILE_VALUE
from sd2_app.ui.request_limits import (MAX_API_BODY_BYTES, MAX_BODY_BYTES, MAX_BODY_BYTES_IN_FLIGHT,
                                       NO_RECORDINGS_MESSAGE, REMOTE_FILE_MESSAGE, too_large_message,
                                       too_much_in_flight_message)
from sd2_app.ui.uploads import REMOTE_FILE_REFUSAL
from tests.a1111_support import a1111_error_body
from tests.hosting_support import (API_FAST, api_job_count, downloads, other_site,  # noqa: F401
                                  served_behind_proxy, wait_for_api_jobs)
from tests.reliability_report import reliability, track_module  # noqa: F401
from tests.reliability_support import noise_image, one_thread, png_bytes  # noqa: F401

AREA = "Security"
ALICE, MALLORY = "198.51.100.10", "203.0.113.66"


@pytest.fixture(scope="module")
def app(one_thread: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, object]]:
    with served_behind_proxy(["--api"], tmp_path_factory) as (url, demo):
        warm = _api(url, "txt2img", ALICE, prompt="warm", **API_FAST)  # the model is loaded before the tests
        assert warm.status_code == 200, warm.text
        yield url, demo


def _api(url: str, route: str, address: str, method: str = "POST", **fields: object) -> httpx.Response:
    """An A1111 API call from the client at `address` (the X-Forwarded-For entry the proxy appends)."""
    return httpx.request(method, f"{url}sdapi/v1/{route}", json=fields if method == "POST" else None,
                         headers={"X-Forwarded-For": address}, timeout=300)


def test_request_bodies_over_the_route_limit_are_refused_unread(app, reliability) -> None:
    url, _ = app
    api_body = b'{"prompt": "' + b"a" * MAX_API_BODY_BYTES + b'"}'
    refused = httpx.post(f"{url}sdapi/v1/txt2img", content=api_body, timeout=120,
                         headers={"Content-Type": "application/json", "X-Forwarded-For": ALICE})
    assert (refused.status_code, refused.text) == (413, too_large_message(MAX_API_BODY_BYTES))
    join_body = b'{"data": ["' + b"a" * MAX_BODY_BYTES + b'"], "fn_index": 0, "session_hash": "s1"}'
    joined = httpx.post(f"{url}gradio_api/queue/join", content=join_body, timeout=120,
                        headers={"Content-Type": "application/json", "X-Forwarded-For": ALICE})
    assert (joined.status_code, joined.text) == (413, too_large_message(MAX_BODY_BYTES))

    def chunks() -> Iterator[bytes]:  # no Content-Length: the body arrives chunked
        yield b'{"data": ["'
        for _ in range(MAX_BODY_BYTES // 2**20 + 1):
            yield b"a" * 2**20
        yield b'"], "fn_index": 0, "session_hash": "s2"}'

    chunked = httpx.post(f"{url}gradio_api/queue/join", content=chunks(), timeout=120,
                         headers={"Content-Type": "application/json", "X-Forwarded-For": ALICE})
    assert (chunked.status_code, chunked.text) == (413, too_large_message(MAX_BODY_BYTES))
    served = _api(url, "txt2img", ALICE, prompt="after", **API_FAST)
    assert served.status_code == 200 and len(served.json()["images"]) == 1
    reliability(AREA, f"bodies of {len(api_body):,} bytes to /sdapi/v1/txt2img and {len(join_body):,} bytes to "
                "the queue join, with Content-Length and chunked (raw HTTP)",
                f"HTTP 413 before the body is read: {refused.text} / {joined.text}; the next API call runs")


def test_one_address_has_a_bounded_amount_of_bodies_in_flight(app, reliability) -> None:
    """Bodies sent slowly (each within its route's limit) hold their bytes while they arrive: one address may
    have `MAX_BODY_BYTES_IN_FLIGHT` of them; the next is refused at once, another address is not."""
    url, _ = app
    size = MAX_API_BODY_BYTES - 2**20
    held = MAX_BODY_BYTES_IN_FLIGHT // size
    go_on = threading.Event()

    def slow_body() -> Iterator[bytes]:
        yield b'{"prompt": "'
        go_on.wait(60)
        yield b"a" * (size - len(b'{"prompt": "') - 2) + b'"}'

    def post(address: str, content: object) -> httpx.Response:
        return httpx.post(f"{url}sdapi/v1/txt2img", content=content, timeout=120,
                          headers={"Content-Type": "application/json", "Content-Length": str(size),
                                   "X-Forwarded-For": address})

    refusable = b'{"steps": 0' + b" " * (size - 12) + b"}"  # a whole body of `size` bytes, refused at once
    with ThreadPoolExecutor(held) as pool:
        slow = [pool.submit(post, MALLORY, slow_body()) for _ in range(held)]
        try:
            time.sleep(1.0)  # their headers are in: their sizes are counted
            refused = post(MALLORY, refusable)
            other = httpx.post(f"{url}sdapi/v1/txt2img", json={"prompt": "x", "steps": 0},
                               headers={"X-Forwarded-For": ALICE}, timeout=60)
        finally:
            go_on.set()
        answers = [future.result().status_code for future in slow]
    after = post(MALLORY, refusable)
    message = too_much_in_flight_message(MAX_BODY_BYTES_IN_FLIGHT)
    assert (refused.status_code, refused.text) == (429, message)
    assert other.status_code == 422 and answers == [422] * held and after.status_code == 422
    reliability(AREA, f"{held} A1111 API bodies of {size:,} bytes sent slowly from one address, then one more "
                "(raw HTTP)", f"the next is refused at once, HTTP 429: {message} Another address is served; once "
                "they are in, the address sends again")


def _upload_budget(demo: object) -> object:
    """The app's UploadBudgetMiddleware (found in the running app's middleware stack: it holds the key)."""
    from sd2_app.ui.upload_budget import UploadBudgetMiddleware

    node = demo.app.middleware_stack  # type: ignore[attr-defined]
    while not isinstance(node, UploadBudgetMiddleware):
        node = node.app
    return node


def test_an_upload_id_that_meets_anothers_short_id_reads_no_progress(app, reliability, tmp_path: Path) -> None:
    """Upload ids reach Gradio as 4 hex digits: when another caller's id meets the same 4 digits, that caller is
    not told the upload's progress (its file name, or its end, which Gradio answers once and forgets)."""
    url, demo = app
    short_id = _upload_budget(demo).progress_id  # type: ignore[attr-defined]
    clash = next(f"m-{n}" for n in range(10**6) if short_id(MALLORY, f"m-{n}") == short_id(ALICE, "alice-1"))
    uploaded = httpx.post(f"{url}gradio_api/upload", params={"upload_id": "alice-1"}, timeout=30,
                          files={"files": ("alice-passport.png", png_bytes(noise_image(64, 64)), "image/png")},
                          headers={"X-Forwarded-For": ALICE})
    assert uploaded.status_code == 200
    guessed = httpx.get(f"{url}gradio_api/upload_progress", params={"upload_id": clash}, timeout=30,
                        headers={"X-Forwarded-For": MALLORY})
    own = httpx.get(f"{url}gradio_api/upload_progress", params={"upload_id": "alice-1"}, timeout=30,
                    headers={"X-Forwarded-For": ALICE})
    assert (guessed.status_code, guessed.text) == (404, "Upload not found")
    assert own.status_code == 200 and own.text.strip() == 'data: {"msg": "done"}'
    reliability(AREA, "a progress question with an upload id that meets another address's upload on Gradio's "
                "4-digit id (found with the server's key; 1 in 65,536 for a guess)",
                f"HTTP 404: {guessed.text} (Gradio would stream that upload's progress and file name, and forget "
                "it); the uploader still reads its own: done")


def test_the_file_route_fetches_no_other_site(app, other_site, reliability, monkeypatch: pytest.MonkeyPatch) -> None:
    from gradio import route_utils

    async def public(host: str) -> str:  # what Gradio's check answers for a host on the internet
        return "127.0.0.1"

    monkeypatch.setattr(route_utils.safehttpx, "async_validate_url", public)
    url, _ = app
    site, asked = other_site
    encoded = site.replace("http:", "https%3A")
    links = [f"file={site}/big.iso", f"file={encoded}/big.iso", f"file/{site}/big.iso", f"file/{encoded}/big.iso"]
    answers = [httpx.get(f"{url}gradio_api/{link}", headers={"X-Forwarded-For": MALLORY}, timeout=30) for link in links]
    assert [(answer.status_code, answer.text) for answer in answers] == [(403, REMOTE_FILE_MESSAGE)] * 4
    assert asked == []
    reliability(AREA, "GET /gradio_api/file=http://<another site>/big.iso, and the route's older form "
                "/gradio_api/file/http://<another site>/big.iso, also percent-encoded (Gradio would fetch and relay "
                "it; the older form it did)", f"HTTP 403: {REMOTE_FILE_MESSAGE} The site got 0 requests")


def test_a_file_named_by_url_in_a_queue_join_is_refused_before_any_download(app, reliability,
                                                                          downloads: list[str]) -> None:
    url, _ = app
    image = {"path": "https://files.example/huge.png", "meta": {"_type": "gradio.FileData"}}
    joined = httpx.post(f"{url}gradio_api/call/png_info", json={"data": [image]},
                        headers={"X-Forwarded-For": MALLORY}, timeout=30)
    assert (joined.status_code, joined.json()) == (400, {"detail": REMOTE_FILE_REFUSAL})
    time.sleep(0.5)  # a join that had been queued would run its download meanwhile
    assert downloads == []
    reliability(AREA, "a queue join whose image is {'path': 'https://<another site>/huge.png'} (Gradio would "
                "download it whole, past the upload limit and budget)",
                f"refused at join, HTTP 400: {REMOTE_FILE_REFUSAL} Downloads: 0")


def test_a_file_named_by_url_in_an_unqueued_event_is_refused_before_any_download(app, reliability,
                                                                              downloads: list[str]) -> None:
    """Events outside the queue (a run's end, which reads the gallery) are served on /gradio_api/run/predict
    without a join: their values are checked where every event's are (`AppBlocks.preprocess_data`)."""
    url, demo = app
    ends = next(index for index, fn in demo.fns.items() if fn.api_name == "txt2img_ends")
    image = {"image": {"path": "https://files.example/huge.png", "meta": {"_type": "gradio.FileData"}},
             "caption": None}
    answer = httpx.post(f"{url}gradio_api/run/predict", timeout=30,
                        json={"fn_index": ends, "data": [[image], "", None, None], "session_hash": "mallory"})
    assert answer.status_code >= 400 and REMOTE_FILE_REFUSAL in answer.text, answer.text
    assert downloads == []
    reliability(AREA, "an unqueued event (POST /gradio_api/run/predict, a run's end reading the gallery) whose "
                "gallery item is {'path': 'https://<another site>/huge.png'}",
                f"refused, HTTP {answer.status_code}: {REMOTE_FILE_REFUSAL} Downloads: 0")


def _event_error(url: str, name: str, data: list[object]) -> str:
    """A raw queue call of `name` with `data` (positional values): the error its event stream ends with."""
    joined = httpx.post(f"{url}gradio_api/call/{name}", json={"data": data}, headers={"X-Forwarded-For": MALLORY},
                        timeout=60)
    assert joined.status_code == 200, joined.text
    stream = httpx.get(f"{url}gradio_api/call/{name}/{joined.json()['event_id']}", timeout=120).text
    assert stream.startswith("event: error\ndata: "), stream[:300]
    return json.loads(stream.splitlines()[1].removeprefix("data: "))["error"]


def test_calls_short_of_values_or_with_unreadable_files_are_refused_in_one_line(
        app, reliability, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture) -> None:
    """Gradio's own refusals of such calls said `{"error": null}` and printed a traceback; the short one also
    printed every value it got, so 3 MB sent were 3 MB more in the host's log on every call."""
    url, demo = app
    needed = len(next(fn for fn in demo.fns.values() if fn.api_name == "txt2img").inputs)
    capfd.readouterr()
    with caplog.at_level(logging.INFO):
        short = _event_error(url, "txt2img", ["sd21-base", "y" * 3_000_000])
        files = [_event_error(url, "png_info", [value]) for value in (
            {"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}}, {"path": 5}, "a string", [1, 2, 3])]
    assert short == (f"This endpoint takes {needed} values, in the order its API page lists them; the request "
                     "sent 2.")
    assert files == [UNREADABLE_FILE_VALUE] * 4
    printed = capfd.readouterr()
    assert "Traceback" not in printed.err and len(printed.err) + len(printed.out) < 10_000, printed.err[-2000:]
    logged = [record.getMessage() for record in caplog.records if record.getMessage().startswith("refused an event")]
    assert logged == [f"refused an event: 2 of its {needed} values sent"] + [
        f"refused an event: a file value it cannot take ({kind})"
        for kind in ("InvalidPathError", "ValidationError", "ValidationError", "ValidationError")], logged
    served = _api(url, "txt2img", ALICE, prompt="after", **API_FAST)
    assert served.status_code == 200
    reliability(AREA, "raw queue calls of /txt2img with 2 of its values (a 3 MB prompt) and of /png_info with "
                "an image value of /etc/passwd, {'path': 5}, a string or a list (Gradio answered {\"error\": null} and "
                "logged a traceback, the short call with every value it got)",
                f"the event ends with \"{short}\" / \"{UNREADABLE_FILE_VALUE}\"; one log line each, nothing printed")


def test_screen_recordings_are_not_processed(app, reliability, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from gradio import routes

    ran: list[tuple[object, ...]] = []

    async def ffmpeg(*args: object) -> object:  # stands in for ffmpeg, which Spaces' images carry
        ran.append(args)
        raise RuntimeError("ffmpeg ran")

    monkeypatch.setattr(routes, "process_video_with_ffmpeg", ffmpeg)
    monkeypatch.setattr(shutil, "which", lambda name, *args, **kwargs: f"/usr/bin/{name}")
    url, _ = app
    answer = httpx.post(f"{url}gradio_api/process_recording", files={"video": ("rec.mp4", b"\0" * 4096, "video/mp4")},
                        data={"zoom_effects": '[{"boundingBox": {"topLeft": [0, 0], "bottomRight": [1, 1]}}]'},
                        headers={"X-Forwarded-For": MALLORY}, timeout=30)
    assert (answer.status_code, answer.text, ran) == (404, NO_RECORDINGS_MESSAGE, [])
    reliability(AREA, "POST /gradio_api/process_recording with a video and zoom effects (Gradio runs ffmpeg on it "
                "where ffmpeg is installed)", f"HTTP 404: {NO_RECORDINGS_MESSAGE} ffmpeg never runs")


def _editor_part(url: str, editor: int, part_id: str, kind: str, index: str, blob: bytes) -> httpx.Response:
    """What the browser sends the inpaint editor ahead of a job: one part (gradio's ImageEditor.accept_blobs)."""
    form = {"component_id": str(editor), "session_hash": "s", "fn_name": "accept_blobs", "data": "{}",
            "type": kind, "index": index, "id": part_id}
    return httpx.post(f"{url}gradio_api/component_server", data=form, files={"blob": ("blob", blob, "image/png")},
                      headers={"X-Forwarded-For": MALLORY}, timeout=60)


def test_the_inpaint_editors_pending_parts_are_checked_and_bounded(app, reliability) -> None:
    url, demo = app
    config = httpx.get(f"{url}config", timeout=30).json()
    editor_id = next(c["id"] for c in config["components"] if c.get("type") == "imageeditor")
    store = demo.blocks[editor_id].blob_storage  # type: ignore[attr-defined]
    far = _editor_part(url, editor_id, "far", "layer", str(10**6), b"x")  # Gradio grows a list to the index
    odd = _editor_part(url, editor_id, "odd", "thumbnail", "null", b"x")
    assert (far.status_code, far.json()) == (422, {"detail": "An editor layer is numbered 0 to 63."})
    assert (odd.status_code, odd.json()) == (422, {"detail": "An editor part is the background, a layer or the "
                                                             "composite."})
    assert "far" not in store and "odd" not in store
    part = 10 * 2**20
    sent = MAX_PENDING_BYTES // part + 4
    try:
        answers = [_editor_part(url, editor_id, f"flood-{n}", "background", "null", bytes([n]) * part).status_code
                   for n in range(sent)]
        kept = sorted(int(key.split("-")[1]) for key in store)
        held = store.held_bytes()
    finally:
        for key in list(store):
            store.pop(key)
    assert answers == [200] * sent and held <= MAX_PENDING_BYTES
    assert kept == list(range(sent - MAX_PENDING_BYTES // part, sent))  # the newest parts, as many as fit
    reliability(AREA, f"the inpaint editor's parts endpoint (component_server accept_blobs): layer {10**6}, a part "
                f"named 'thumbnail', then {sent} backgrounds of 10 MiB under new ids (raw HTTP)",
                f"HTTP 422: {far.json()['detail']} / {odd.json()['detail']} (nothing stored); of the flood the "
                f"newest {len(kept)} are kept, {held:,} bytes (limit {MAX_PENDING_BYTES:,}; Gradio kept every part "
                "for good and grew a layer list to any index)")


def test_the_shared_checkpoint_stays_unless_visitors_may_load_models(app, reliability) -> None:
    url, demo = app
    before = _api(url, "options", MALLORY, method="GET").json()["sd_model_checkpoint"]
    switched = _api(url, "options", MALLORY, sd_model_checkpoint="sd21")
    same = _api(url, "options", MALLORY, sd_model_checkpoint=before)
    after = _api(url, "options", ALICE, method="GET").json()["sd_model_checkpoint"]
    assert (switched.status_code, switched.json()) == (403, a1111_error_body(403, NO_MODEL_ADMIN_MESSAGE))
    assert same.status_code == 200 and before == after == "sd21-base"
    own = _api(url, "txt2img", MALLORY, prompt="own", override_settings={"sd_model_checkpoint": "sd2-base"},
               **API_FAST)
    assert own.status_code == 200 and '"sd_model_name": "sd2-base"' in own.json()["info"]
    loaded = _loaded(demo)
    by_hand = [_api(url, route, MALLORY) for route in ("unload-checkpoint", "reload-checkpoint")]
    assert [(r.status_code, r.json()) for r in by_hand] == [(403, a1111_error_body(403, NO_LOADING_BY_HAND_MESSAGE))] * 2
    assert "sd2-base" in loaded and _loaded(demo) == loaded  # nobody's checkpoint was unloaded
    reliability(AREA, "POST /sdapi/v1/options {'sd_model_checkpoint': 'sd21'}, /unload-checkpoint and "
                "/reload-checkpoint in a public mode without --allow-model-admin/--auth/--api-auth",
                f"HTTP 403: {NO_MODEL_ADMIN_MESSAGE} Everyone's current checkpoint stays {after}; a call's own "
                f"override_settings still picks its checkpoint. Unload and reload: HTTP 403: "
                f"{NO_LOADING_BY_HAND_MESSAGE} (the loaded checkpoints stay)")


def _loaded(demo: object) -> list[str]:
    return [row.key for row in demo.service.status()["models"] if row.location != "none"]  # type: ignore[attr-defined]


@pytest.mark.slow
def test_progress_interrupt_and_skip_reach_only_the_callers_own_api_jobs(app, reliability) -> None:
    url, _ = app
    with ThreadPoolExecutor(1) as pool:
        alice = pool.submit(_api, url, "txt2img", ALICE, prompt="alice", **{**API_FAST, "steps": 150})
        try:
            wait_for_api_jobs(url, lambda jobs: jobs == 1)
            deadline = time.monotonic() + 60
            while _api(url, "progress", ALICE, method="GET").json()["state"]["sampling_step"] < 2:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            seen = _api(url, "progress", MALLORY, method="GET").json()
            assert _api(url, "interrupt", MALLORY).status_code == 200
            assert _api(url, "skip", MALLORY).status_code == 200
            time.sleep(1.0)
            own = _api(url, "progress", ALICE, method="GET").json()
            assert seen["state"]["job_count"] == 1 and seen["current_image"] is None
            assert (seen["progress"], seen["textinfo"], seen["state"]["sampling_step"]) == (0.0, None, 0)
            assert own["state"]["interrupted"] is False and own["state"]["sampling_step"] > 2
            assert own["state"]["skipped"] is False
        finally:
            assert _api(url, "interrupt", ALICE).status_code == 200
        result = alice.result(timeout=120)
    kept = json.loads(result.json()["info"])["infotexts"]  # the image so far, as A1111's interrupt returns it
    assert result.status_code == 200 and len(result.json()["images"]) == 1 and ", Stopped at step: " in kept[0]
    assert api_job_count(url) == 0
    reliability("Hosting", "another client's /sdapi/v1/progress, /sdapi/v1/interrupt and /sdapi/v1/skip while an "
                "API job of 150 steps runs (raw HTTP, two addresses)",
                f"it sees job_count {seen['state']['job_count']} and no step, progress or preview; its interrupt "
                f"and skip stop nothing (the job was at step {own['state']['sampling_step']} a second later); the owner's "
                "interrupt stops it, and its answer holds the image so far")


@pytest.fixture(scope="module")
def mcp_app(one_thread: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`python app.py --host 0.0.0.0 --mcp --max-jobs-per-address 2`, no proxy in front (uvicorn trusts only a
    loopback peer, 127.0.0.1, as one: its default); yields the MCP endpoint's URL."""
    pytest.importorskip("mcp")
    from tests.reliability_support import serve

    argv = ["--tiny", "--device", "cpu", "--host", "0.0.0.0", "--no-save", "--mcp", "--max-jobs-per-address", "2"]
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("FORWARDED_ALLOW_IPS", raising=False)
        patch.setenv("GRADIO_TEMP_DIR", str(tmp_path_factory.mktemp("gradio-cache")))
        with serve(argv, tmp_path_factory.mktemp("app-cache"), bind="127.0.0.1") as (url, _):
            yield url + "gradio_api/mcp/"


def _mcp_txt2img(url: str, forwarded_for: str, seed: int) -> tuple[bool, str]:
    """One MCP tools/call of txt2img (150 steps) from 127.0.0.2, a peer uvicorn does not trust as a proxy: a
    client on the internet that writes its own X-Forwarded-For. (isError, its text or "image")."""
    import asyncio

    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async def main() -> tuple[bool, str]:
        transport = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
        async with httpx.AsyncClient(transport=transport, headers={"X-Forwarded-For": forwarded_for},
                                     timeout=httpx.Timeout(60, read=300)) as http:
            async with streamable_http_client(url, http_client=http) as (read, write, _), \
                    ClientSession(read, write) as session:
                await session.initialize()
                result = await session.call_tool("txt2img", {"prompt": f"mcp {seed}", "width": 64, "height": 64,
                                                             "steps": 150, "guidance_scale": 1.0,
                                                             "sampler": "Euler", "seed": seed})
                return result.isError, result.content[0].text if result.isError else "image"

    return asyncio.run(main())


@pytest.mark.slow
def test_mcp_calls_count_under_the_callers_address_whatever_it_writes(mcp_app, reliability) -> None:
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda n: _mcp_txt2img(mcp_app, f"10.9.{n}.1", n), range(4)))
    refused = [text for error, text in answers if error]
    assert sum(not error for error, _ in answers) == 2 and len(refused) == 2, answers
    assert refused == [too_many_jobs_from_address_message(2)] * 2  # the reason, not a bare 400 (ui/join_refusals.py)
    reliability("Hosting", "4 concurrent MCP txt2img calls from one address, each writing its own X-Forwarded-For "
                "(--mcp, --max-jobs-per-address 2, no proxy in front; Gradio's MCP server joins the queue from "
                "loopback with the caller's headers)",
                "2 ran, 2 refused at join (the MCP client reads the per-address limit's message); each call counts "
                "under the caller's own address")
