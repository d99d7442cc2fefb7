"""Safe to host in public, what a visitor cannot make the server keep: queue places and uploads from one
network address whatever its cookies, the sessions one address may hold, and the app's own files in Gradio's
cache, through the running app.

The app is `python app.py --host 0.0.0.0 --trusted-proxy-hops 1 --max-jobs-per-address 3
--max-upload-mb-per-address 1 --max-sessions 20 --max-sessions-per-address 5` served in-process on a free loopback
port (the tiny checkpoints), as behind a trusted reverse proxy: the test plays the proxy, appending the client's
address to X-Forwarded-For. uvicorn is told to trust no proxy of its own (FORWARDED_ALLOW_IPS names an address that
is not ours), so the address the app counts is the app's own reading of the header. The cache test has its own
app with `--cache-minutes 0.05`. Gradio's cache folder is a private one, so the 3 s cache age touches no other
app's files.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client  # noqa: E402

from sd2_app.api.job_admission import too_many_jobs_from_address_message  # noqa: E402
from sd2_app.ui.cache_files import results_folder  # noqa: E402
from sd2_app.ui.shown_files import cached_file  # noqa: E402
from tests.hosting_support import (FAST, event_data, fn_index_of, queue_join, read_stream,  # noqa: E402
                                   served_behind_proxy, stop_queued_jobs)
from tests.reliability_report import reliability, track_module  # noqa: E402,F401
from tests.reliability_support import one_thread  # noqa: E402,F401

AREA = "Hosting"
SLOW = {**FAST, "steps": 150}  # about 10 s on the tiny checkpoints: long enough to queue others behind it
ADDRESS_LIMIT = 3
SESSIONS = 20
SESSIONS_PER_ADDRESS = 5


@pytest.fixture(scope="module")
def proxied_app(one_thread: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, object]]:
    with served_behind_proxy(["--max-jobs-per-address", str(ADDRESS_LIMIT), "--max-upload-mb-per-address", "1",
                              "--max-sessions", str(SESSIONS), "--max-sessions-per-address", str(SESSIONS_PER_ADDRESS)],
                             tmp_path_factory) as served:
        yield served


@pytest.fixture()
def short_cache_app(one_thread: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, object]]:
    with served_behind_proxy(["--cache-minutes", "0.05"], tmp_path_factory) as served:
        yield served


@pytest.fixture()
def direct_app(one_thread: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, object]]:
    """No trusted proxy (--trusted-proxy-hops 0, the default off a Space): clients connect directly."""
    with served_behind_proxy(["--trusted-proxy-hops", "0", "--max-jobs-per-address", "2"], tmp_path_factory) as served:
        yield served


def test_jobs_per_address_bound_a_client_without_cookies(proxied_app, reliability) -> None:
    url, demo = proxied_app
    Client(url, verbose=False).predict(prompt="warm", api_name="/txt2img", **FAST)  # models loaded
    try:
        joined = [queue_join(url, "203.0.113.7", prompt=f"job {n}", seed=n, **SLOW) for n in range(ADDRESS_LIMIT)]
        assert [r.status_code for r in joined] == [200] * ADDRESS_LIMIT, [r.text for r in joined]
        over = queue_join(url, "203.0.113.7", prompt="one more", seed=9, **SLOW)
        assert over.status_code == 400, over.text
        assert over.json()["detail"] == ("Your network address already has 3 jobs queued or running; wait for one "
                                         "to finish before starting another.")
        # A client that writes its own X-Forwarded-For entry first: the proxy still appends the real address.
        spoofed = queue_join(url, "198.51.100.99, 203.0.113.7", prompt="spoofed", seed=10, **SLOW)
        assert spoofed.status_code == 400 and spoofed.json()["detail"] == over.json()["detail"], spoofed.text
        # IPv6: another address in the same /64 is the same client.
        v6 = [queue_join(url, f"2001:db8:1:2::{n}", prompt="v6", seed=n, **SLOW) for n in range(1, ADDRESS_LIMIT + 2)]
        assert [r.status_code for r in v6] == [200] * ADDRESS_LIMIT + [400], [r.text for r in v6]
        other = queue_join(url, "203.0.113.8", prompt="someone else", seed=11, **FAST)
        assert other.status_code == 200 and "event_id" in other.json(), other.text
    finally:
        stop_queued_jobs(demo)
    reliability(AREA, f"a client sending no cookies, {ADDRESS_LIMIT + 1} jobs from one address "
                      f"(--max-jobs-per-address {ADDRESS_LIMIT}, behind a trusted proxy: --trusted-proxy-hops 1)",
                f"{ADDRESS_LIMIT} accepted; the next refused at join, HTTP {over.status_code}: {over.json()['detail']}; "
                "the same with a client-written first X-Forwarded-For entry, and for a 4th address in the same "
                "IPv6 /64; another address still joins")


def _upload(url: str, forwarded_for: str, size: int, name: str = "a.png") -> httpx.Response:
    return httpx.post(f"{url}gradio_api/upload", files=[("files", (name, b"\0" * size, "image/png"))],
                      headers={"X-Forwarded-For": forwarded_for}, timeout=30)


def _uploaded_files() -> int:
    return sum(1 for path in Path(os.environ["GRADIO_TEMP_DIR"]).rglob("*") if path.is_file())


def test_without_a_trusted_proxy_a_written_x_forwarded_for_changes_nothing(direct_app, reliability) -> None:
    url, demo = direct_app
    Client(url, verbose=False).predict(prompt="warm", api_name="/txt2img", **FAST)
    try:
        joined = [queue_join(url, forwarded, prompt="direct", seed=n, **SLOW)
                  for n, forwarded in enumerate(("203.0.113.1", "203.0.113.2", "203.0.113.3"))]
    finally:
        stop_queued_jobs(demo)
    assert [r.status_code for r in joined] == [200, 200, 400], [r.text for r in joined]
    assert joined[2].json()["detail"] == too_many_jobs_from_address_message(2)
    reliability(AREA, "a direct client (no trusted proxy) writing a new X-Forwarded-For on each of 3 cookieless "
                      "jobs (--max-jobs-per-address 2)",
                f"the header is ignored: 2 accepted, the 3rd refused, HTTP 400: {joined[2].json()['detail']}")


def test_uploads_per_address_are_bounded(proxied_app, reliability) -> None:
    url, _ = proxied_app
    before = _uploaded_files()
    accepted = [_upload(url, "203.0.113.20", 300_000, f"{n}.png") for n in range(3)]  # 3 x 300 kB of 1 MB
    assert [r.status_code for r in accepted] == [200] * 3, [r.text for r in accepted]
    over = _upload(url, "203.0.113.20", 300_000)
    assert over.status_code == 429 and over.text == (
        "Your network address has reached this server's upload limit (1 MB or 2,000 uploads per 60 minutes); "
        "try again later."), over.text
    spoofed = _upload(url, "198.51.100.5, 203.0.113.20", 300_000)
    assert spoofed.status_code == 429 and spoofed.text == over.text
    other = _upload(url, "203.0.113.21", 300_000)
    assert other.status_code == 200, other.text
    unsized = httpx.post(f"{url}gradio_api/upload", content=iter([b"--x\r\n"]), timeout=30,
                         headers={"Content-Type": "multipart/form-data; boundary=x", "X-Forwarded-For": "203.0.113.22"})
    assert unsized.status_code == 411 and unsized.text == "An upload must state its size (one Content-Length header)."
    assert _uploaded_files() == before + 4  # the refused ones wrote nothing
    reliability(AREA, "uploads of 300 kB from one address with --max-upload-mb-per-address 1 (raw HTTP, "
                      "trusted proxy)",
                f"3 accepted; the 4th refused, HTTP {over.status_code}: {over.text} The same with a client-written "
                "first X-Forwarded-For entry; another address still uploads; an upload without Content-Length: "
                f"HTTP {unsized.status_code}; refused uploads write no file")


def test_upload_ids_cannot_grow_gradios_progress_table(proxied_app, reliability) -> None:
    import gc

    from gradio.route_utils import FileUploadProgress

    url, _ = proxied_app
    ids = [f"{n}-" + "x" * 2000 for n in range(40)]
    for upload_id in ids:
        response = httpx.post(f"{url}gradio_api/upload", params={"upload_id": upload_id}, timeout=30,
                              files=[("files", ("a.png", b"\0" * 10, "image/png"))],
                              headers={"X-Forwarded-For": "203.0.113.30"})
        assert response.status_code == 200, response.text
    with warnings.catch_warnings():  # isinstance on every live object touches torch's deprecated aliases
        warnings.simplefilter("ignore")
        tables = [obj for obj in gc.get_objects() if isinstance(obj, FileUploadProgress)]
    keys = {key for table in tables for key in (*table._statuses, *table._signals)}
    assert keys and all(len(key) == 4 for key in keys) and not keys & set(ids), sorted(keys)[:5]
    # The client that uploaded reads its own upload's progress by the id it chose.
    with httpx.stream("GET", f"{url}gradio_api/upload_progress", params={"upload_id": ids[0]}, timeout=30,
                      headers={"X-Forwarded-For": "203.0.113.30"}) as progress:
        first = next(progress.iter_lines())
    assert progress.status_code == 200 and first == 'data: {"msg": "done"}', first
    reliability(AREA, "40 uploads, each naming a new 2,000-character upload_id (raw HTTP)",
                f"Gradio's progress table holds {len(keys)} ids of 4 hex digits (at most 65,536 ever), none of "
                "the clients'; the uploader still reads its upload's progress by its own id")


def test_new_sessions_cannot_grow_the_servers_memory_without_bound(proxied_app, reliability) -> None:
    url, demo = proxied_app
    config = httpx.get(f"{url}config", timeout=30).json()
    status = next(i for i, d in enumerate(config["dependencies"]) if d.get("api_name") == "models_status")
    hashes = [f"script-session-{n}" for n in range(3 * SESSIONS)]
    for n, session_hash in enumerate(hashes):  # scripts that start a new session with every call (cheap CPU
        # event), each from an address of its own: the per-address bound never applies, the store's does
        joined = httpx.post(f"{url}gradio_api/queue/join", timeout=30, headers={"X-Forwarded-For": f"192.0.2.{n}"},
                            json={"data": [], "fn_index": status, "session_hash": session_hash, "event_data": None,
                                  "trigger_id": None})
        assert joined.status_code == 200, joined.text
    deadline = time.monotonic() + 30
    holder = demo.state_holder  # type: ignore[attr-defined]
    while hashes[-1] not in holder.session_data and time.monotonic() < deadline:
        time.sleep(0.1)
    kept = list(holder.session_data)
    assert len(kept) <= SESSIONS and hashes[-1] in kept and hashes[0] not in kept, (len(kept), kept[:3])
    reliability(AREA, f"{len(hashes)} calls, each with a new session id, from {len(hashes)} addresses "
                      f"(--max-sessions {SESSIONS}; raw HTTP)",
                f"the server keeps {len(kept)} sessions' state, the most recent ones (Gradio would keep 10,000, "
                "each with a copy of every component's config)")


def _page_event(url: str, forwarded_for: str, session_hash: str, api_name: str, data: list | None = None,
                **values: object) -> list[dict]:
    """A page's event: a queue join of `api_name` under `session_hash` by the client at `forwarded_for` (its
    `data`, else the API's defaults and `values`), its stream read to the end."""
    with httpx.Client(base_url=url, timeout=120, headers={"X-Forwarded-For": forwarded_for}) as client:
        join = {"data": event_data(url, f"/{api_name}", **values) if data is None else data,
                "fn_index": fn_index_of(url, api_name), "session_hash": session_hash}
        assert client.post("gradio_api/queue/join", json=join).status_code == 200
        return read_stream(client, session_hash)


def _reused_seed(url: str, forwarded_for: str, session_hash: str) -> object:
    """What the page's "Reuse last seed" puts in the seed box (its last result's seed, read from the session's
    state), or the warning it shows instead."""
    messages = _page_event(url, forwarded_for, session_hash, "txt2img_reuse_seed", data=[None, None])
    done = next(message for message in messages if message["msg"] == "process_completed")
    warnings = [message["log"] for message in messages if message["msg"] == "log"]
    return warnings[0] if warnings else done["output"]["data"][0]


@pytest.mark.slow
def test_new_sessions_from_one_address_push_out_only_that_addresss_own(proxied_app, reliability) -> None:
    """A visitor has a result (its page's session state holds the seed "Reuse last seed" reads); a script at
    another address then opens --max-sessions + 1 sessions under new hashes. Gradio kept the least recently used
    sessions of everyone together, so the visitor's state was pushed out: "Generate an image first." The script's
    address keeps at most --max-sessions-per-address sessions, its own least recently used going first: a
    neighbour behind the same address loses theirs, the visitor elsewhere keeps theirs."""
    url, demo = proxied_app
    visitor, script = "203.0.113.40", "198.51.100.66"
    _page_event(url, visitor, "visitor-page", "txt2img", prompt="mine", seed=4242)
    _page_event(url, script, "neighbour-page", "txt2img", prompt="the neighbour's", seed=77)
    hashes = [f"flood-{n}" for n in range(SESSIONS + 1)]
    for session_hash in hashes:
        assert _page_event(url, script, session_hash, "models_status", data=[])[-1]["msg"] == "close_stream"
    holder = demo.state_holder  # type: ignore[attr-defined]
    kept = [session_hash for session_hash in holder.session_data if session_hash.startswith("flood-")]
    pages = [page for page in ("visitor-page", "neighbour-page") if page in holder.session_data]
    seeds = _reused_seed(url, visitor, "visitor-page"), _reused_seed(url, script, "neighbour-page")
    assert seeds == (4242, "Generate an image first."), seeds
    assert pages == ["visitor-page"] and kept == hashes[-SESSIONS_PER_ADDRESS:], (pages, kept)
    reliability(AREA, f"a visitor has a result; a script at another address then opens {len(hashes)} sessions "
                      f"under new hashes (--max-sessions {SESSIONS}, --max-sessions-per-address "
                      f"{SESSIONS_PER_ADDRESS}; raw HTTP, trusted proxy)",
                f"the script's address keeps its {len(kept)} newest sessions; the visitor's Reuse last seed still "
                "gives 4242, a neighbour behind the script's address lost theirs (Gradio pushed out the "
                "least recently used of everyone's: the visitor's state was gone)")


def test_open_streams_per_address_are_bounded(proxied_app, reliability) -> None:
    """A script opens heartbeat streams (a page holds one while it is open) for made-up sessions from one address:
    Gradio answered every one and held it open. The address may hold two per session it may keep."""
    import asyncio

    from sd2_app.ui.stream_limits import stream_limit, too_many_streams_message

    url, _ = proxied_app
    limit = stream_limit(SESSIONS_PER_ADDRESS)

    async def scenario() -> tuple[list[int], tuple[int, str], httpx.Response, int, int]:
        async with httpx.AsyncClient(base_url=url, timeout=30, limits=httpx.Limits(max_connections=None)) as client:
            def heartbeat(address: str, n: int):
                return client.stream("GET", f"gradio_api/heartbeat/made-up-{n}", headers={"X-Forwarded-For": address})
            opened = [heartbeat("203.0.113.60", n) for n in range(limit)]
            held = [await stream.__aenter__() for stream in opened]
            async with heartbeat("203.0.113.60", limit) as over:  # read only when refused: a stream never ends
                over_text = (await over.aread()).decode() if over.status_code != 200 else ""
            config = await client.get("config", headers={"X-Forwarded-For": "203.0.113.60"})
            async with heartbeat("203.0.113.61", 0) as other:
                elsewhere = other.status_code
            await opened[0].__aexit__(None, None, None)  # one page closes: its place is free
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                async with heartbeat("203.0.113.60", limit) as again:
                    if again.status_code == 200:
                        break
                await asyncio.sleep(0.1)
            for stream in opened[1:]:
                await stream.__aexit__(None, None, None)
        return [answer.status_code for answer in held], (over.status_code, over_text), config, elsewhere, again.status_code

    held, over, config, elsewhere, again = asyncio.run(scenario())
    assert held == [200] * limit
    assert over == (429, too_many_streams_message(limit)), over
    assert config.status_code == 200 and elsewhere == 200 and again == 200
    reliability(AREA, f"{limit + 1} heartbeat streams for made-up sessions held open from one address "
                      f"(--max-sessions-per-address {SESSIONS_PER_ADDRESS}; raw HTTP, trusted proxy)",
                f"{limit} open (two per session the address may keep); the next refused, HTTP {over[0]}: "
                f"{over[1]} The page's other requests and another address's streams go through; when one "
                "stream closes, the next is accepted (Gradio held every one open)")


def test_history_memory_is_bounded_in_bytes_not_only_in_entries(proxied_app, reliability) -> None:
    from sd2_app.api.keeper import entry_bytes

    url, demo = proxied_app
    keeper = demo.service.keeper  # type: ignore[attr-defined]
    client = Client(url, verbose=False)
    client.predict(prompt="sizing", seed=40, api_name="/txt2img", **FAST)
    one = entry_bytes(keeper.history()[0])  # a 64x64 result: its pixels and its PNG
    others = sum(map(entry_bytes, keeper.history())) - one  # earlier tests' visitors' results, which stay
    before, keeper.history_max_bytes = keeper.history_max_bytes, others + int(2.5 * one)
    try:
        for seed in (41, 42, 43, 44):
            client.predict(prompt=f"bounded {seed}", seed=seed, api_name="/txt2img", **FAST)
        _, table = client.predict(api_name="/history")
        held = sum(map(entry_bytes, keeper.history())) - others
        keeper.history_max_bytes = 1  # smaller than any result: the newest still stays
        client.predict(prompt="alone", seed=45, api_name="/txt2img", **FAST)
        _, alone = client.predict(api_name="/history")
    finally:
        keeper.history_max_bytes = before
    assert [row[2] for row in table["data"]] == [44, 43], table["data"]
    assert held <= 2.5 * one and len(keeper.history()) == 1
    assert [row[2] for row in alone["data"]] == [45]
    reliability(AREA, "five results with the history's image memory set to 2.5 results (served app)",
                f"History keeps the newest 2 ({held:,} of {int(2.5 * one):,} bytes); with a limit smaller than one "
                "result it keeps the newest alone (default limit: 1 GiB of pixels and PNGs, besides 50 entries "
                "per visitor)")


def test_the_apps_cached_files_go_even_when_gradio_never_saw_them(short_cache_app, reliability) -> None:
    url, demo = short_cache_app
    assert demo.delete_cache == (3, 3)  # type: ignore[attr-defined]
    client = Client(url, verbose=False)
    client.predict(prompt="shown", seed=31, api_name="/txt2img", **FAST)
    # What a job leaves when it is stopped, or its client leaves, after its PNG was written and before the
    # output reached Gradio: a file in Gradio's cache that no Gradio output ever named.
    orphan = Path(cached_file(b"an image no output ever named", "31-txt2img-0.png"))
    assert orphan.is_file() and results_folder() in orphan.parents
    shown = [path for path in results_folder().rglob("*") if path.is_file() and path != orphan]
    assert shown, "the job's result and previews are files in the app's cache folder"
    deadline = time.monotonic() + 30
    while any(results_folder().iterdir()) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = list(results_folder().rglob("*"))
    assert not orphan.exists() and left == [], left
    reliability(AREA, "a result PNG written to Gradio's cache but never returned to Gradio (job stopped or client "
                      "gone), with --cache-minutes 0.05 (3 s)",
                f"deleted with the {len(shown)} files the job showed and their folders, within 30 s; Gradio's "
                "delete_cache alone deletes only the files it returned")
