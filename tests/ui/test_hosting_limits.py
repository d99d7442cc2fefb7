"""The per-address job limit and the sweep of the app's cached files, without a server (the served app's
tests are in tests/reliability/test_reliability_addresses.py)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
from starlette.requests import Request as StarletteRequest

import app
from sd2_app import webapp
from sd2_app.api.addresses import ClientAddresses, network_key
from sd2_app.ui.cache_files import results_folder, sweep, sweeping_lifespan
from sd2_app.app_flags import DEFAULT_MAX_SESSIONS, DEFAULT_MAX_SESSIONS_PER_ADDRESS
from sd2_app.api.job_admission import Refusal, server_busy_message, too_many_jobs_from_address_message
from sd2_app.ui.hosting import (DEFAULT_MAX_JOBS_PER_ADDRESS, GPU_QUEUE, OTHER_EVENT_PLACES, OTHER_EVENTS_BUSY_MESSAGE,
                                Visitors, gradio_max_size, too_many_jobs_message)
from sd2_app.ui.shown_files import cached_file
from sd2_app.ui.visitors import COOKIE


def _request(peer: str | None, *forwarded_for: str, cookie: str | None = None) -> StarletteRequest:
    headers = [(b"x-forwarded-for", value.encode()) for value in forwarded_for]
    if cookie:
        headers.append((b"cookie", f"{COOKIE}={cookie}".encode()))
    scope = {"type": "http", "method": "POST", "path": "/", "headers": headers,
             "client": (peer, 51000) if peer else None}
    return StarletteRequest(scope)


@pytest.mark.parametrize(("host", "key"), [
    ("203.0.113.7", "203.0.113.7"),
    ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),  # the same /64: the same client
    ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
    ("::ffff:203.0.113.7", "203.0.113.7"),  # IPv4 mapped into IPv6
    ("[2001:db8::1]", "2001:db8::/64"),
    ("not-an-address", None),
    ("", None),
    (None, None),
])
def test_network_key_counts_ipv4_addresses_and_ipv6_networks(host: str | None, key: str | None) -> None:
    assert network_key(host) == key


def test_the_address_is_the_peer_unless_trusted_proxies_stand_in_front() -> None:
    direct, proxied = ClientAddresses(), ClientAddresses(trusted_hops=1)
    request = _request("10.0.0.2", "198.51.100.1, 203.0.113.7")
    assert direct.of(request) == "10.0.0.2"  # a direct client writes what it likes into the header
    assert proxied.of(request) == "203.0.113.7"  # the entry the proxy appended, never the client's first one
    two_hops = ClientAddresses(trusted_hops=2)  # a load balancer, then a proxy: "client, balancer"
    assert two_hops.of(_request("10.0.0.2", "198.51.100.1, 203.0.113.7, 10.1.0.5")) == "203.0.113.7"
    assert two_hops.of(_request("10.0.0.2", "203.0.113.7")) == "203.0.113.7"  # fewer entries: all the proxies'
    assert proxied.of(_request("10.0.0.2", "198.51.100.1", "203.0.113.9")) == "203.0.113.9"  # two headers: one list
    assert proxied.of(_request("10.0.0.2", "203.0.113.7:4711")) == "203.0.113.7"
    assert proxied.of(_request("10.0.0.2", "[2001:db8::5]:4711")) == "2001:db8::/64"
    assert proxied.of(_request("10.0.0.2", "198.51.100.1, garbage")) == "10.0.0.2"  # unusable: the proxy's
    assert proxied.of(_request("10.0.0.2")) == "10.0.0.2"  # no header: the proxy's address, shared
    assert direct.of(_request(None)) == "unknown"
    assert proxied.of(SimpleNamespace(request=request)) == "203.0.113.7"  # a gr.Request wraps the Starlette one


class _FakeQueue:
    """The part of gradio.queueing.Queue that `Visitors` reads: its events, each with fn and request."""

    def __init__(self) -> None:
        self.event_ids_to_events: dict[str, SimpleNamespace] = {}

    def add(self, request: StarletteRequest, concurrency_id: str = GPU_QUEUE) -> None:
        fn = SimpleNamespace(concurrency_id=concurrency_id)
        self.event_ids_to_events[str(len(self.event_ids_to_events))] = SimpleNamespace(fn=fn, request=request)


def _visitors(max_jobs: int, per_address: int, queue_size: int = 100) -> tuple[Visitors, _FakeQueue]:
    visitors = Visitors(max_jobs=max_jobs, max_jobs_per_address=per_address,
                        addresses=ClientAddresses(trusted_hops=1), queue_size=queue_size)
    queue = _FakeQueue()
    visitors._queue = queue
    return visitors, queue


def test_jobs_per_address_count_every_visitor_of_the_address() -> None:
    visitors, queue = _visitors(max_jobs=2, per_address=3)
    for _ in range(3):  # three cookieless jobs: three visitors, one address
        queue.add(_request("10.0.0.2", "203.0.113.7"))
    queue.add(_request("10.0.0.2", "203.0.113.7"), concurrency_id="cpu")  # not a GPU job: not counted
    assert visitors.job_admission.count("203.0.113.7") == 3
    assert visitors.admit("a-new-visitor", "203.0.113.7") == too_many_jobs_from_address_message(3)
    assert visitors.job_admission.count("203.0.113.7") == 3  # a refused job holds no place
    assert visitors.admit("a-new-visitor", "203.0.113.8") is None
    assert visitors.job_admission.count("203.0.113.8") == 1  # an admitted one holds its address's place
    visitors.job_admission.release("203.0.113.8")
    assert too_many_jobs_from_address_message(3) == ("Your network address already has 3 jobs queued or running; "
                                                     "wait for one to finish before starting another.")
    assert too_many_jobs_from_address_message(1).startswith("Your network address already has 1 job queued")


def test_the_a1111_apis_jobs_and_the_queues_share_one_count_per_address() -> None:
    """The API holds places in `Visitors.job_admission` (its jobs never enter Gradio's queue); the UI's refusal
    counts them, and the API's `take` counts the UI's queued jobs."""
    visitors, queue = _visitors(max_jobs=2, per_address=3)
    jobs = visitors.job_admission
    for _ in range(2):
        queue.add(_request("10.0.0.2", "203.0.113.7"))  # two web UI jobs
    assert jobs.take("203.0.113.7") is None  # the third, an API job
    assert jobs.count("203.0.113.7") == 3
    assert visitors.admit("a-new-visitor", "203.0.113.7") == too_many_jobs_from_address_message(3)
    assert jobs.take("203.0.113.7") == (too_many_jobs_from_address_message(3), False)  # a fourth API job
    assert jobs.take("203.0.113.8") is None  # another address
    jobs.release("203.0.113.7")
    assert jobs.count("203.0.113.7") == 2
    assert visitors.admit("a-new-visitor", "203.0.113.7") is None and jobs.count("203.0.113.7") == 3
    assert jobs.take("203.0.113.7").message == too_many_jobs_from_address_message(3)  # the UI job's place counts
    jobs.release("203.0.113.7")
    jobs.release("203.0.113.8")
    assert jobs._held == {}  # no key left behind


def test_other_events_count_per_address_apart_from_gpu_jobs() -> None:
    visitors, queue = _visitors(max_jobs=2, per_address=3)
    queue.add(_request("10.0.0.2", "203.0.113.7"))
    for concurrency_id in ("png_info", "png_info", "140623533208448"):  # PNG info twice, an image check
        queue.add(_request("10.0.0.2", "203.0.113.7"), concurrency_id=concurrency_id)
    queue.add(_request("10.0.0.2", "203.0.113.8"), concurrency_id="png_info")
    others = visitors.other_events_by_address()  # what `_other_refusal` reads
    assert (others["203.0.113.7"], visitors.job_admission.count("203.0.113.7")) == (3, 1)
    assert others["203.0.113.8"] == 1 and others["203.0.113.9"] == 0


def test_the_apps_bound_counts_the_gpu_jobs_of_every_front_end_and_address_together() -> None:
    """--queue-size: the web UI's (and MCP's) jobs in Gradio's queue and the places held by API jobs and joining
    UI jobs, of every address, are one count; an address at its own limit hears about that first."""
    visitors, queue = _visitors(max_jobs=2, per_address=2, queue_size=3)
    jobs = visitors.job_admission
    queue.add(_request("10.0.0.2", "203.0.113.7"))  # a web UI job
    queue.add(_request("10.0.0.2", "203.0.113.8"), concurrency_id="png_info")  # not a GPU job: not counted
    assert jobs.take("203.0.113.8") is None  # an API job of another address
    assert visitors.admit("a-new-visitor", "203.0.113.9") is None  # a third address's UI job, joining
    busy = Refusal(server_busy_message(3), busy=True)
    assert jobs.total() == 3 and jobs.take("203.0.113.10") == busy  # an API job: the app is full
    assert visitors.admit("another-visitor", "203.0.113.11") == busy.message  # a UI job: the same message
    assert jobs.take("203.0.113.7") == busy  # the address has 1 of its 2: the app's bound refuses
    queue.add(_request("10.0.0.2", "203.0.113.7"))
    assert jobs.take("203.0.113.7") == Refusal(too_many_jobs_from_address_message(2), busy=False)
    jobs.release("203.0.113.9")  # the joining UI job is in the queue now (or left): one place free
    queue.event_ids_to_events.pop("0")
    assert jobs.total() == 2 and visitors.admit("another-visitor", "203.0.113.11") is None
    jobs.release("203.0.113.8")
    jobs.release("203.0.113.11")
    assert jobs._held == {}
    assert server_busy_message(3) == ("The server is busy: 3 jobs already waiting or running, as many as it takes "
                                      "at once; try again in a minute.")
    assert server_busy_message(1).startswith("The server is busy: 1 job already waiting")


def test_other_events_have_places_of_their_own_apart_from_the_gpu_jobs() -> None:
    """GPU jobs filling --queue-size do not turn cheap events away, and cheap events take no GPU job's place:
    they have `OTHER_EVENT_PLACES` of their own, and Gradio's own bound is both together."""
    visitors, queue = _visitors(max_jobs=2, per_address=0, queue_size=2)
    pushed: list[object] = []

    async def gradio_push(body: object, request: object, username: object) -> tuple[bool, str, str]:
        pushed.append(body)
        return True, "event-id", "success"

    queue.push = gradio_push
    queue.blocks = SimpleNamespace(fns={0: SimpleNamespace(concurrency_id=GPU_QUEUE),
                                        1: SimpleNamespace(concurrency_id="png_info")})
    visitors.watch(queue)
    gpu, cheap = (SimpleNamespace(fn_index=0, data=[], session_hash="pagehash01"),
                  SimpleNamespace(fn_index=1, data=[], session_hash="pagehash01"))
    for address in ("203.0.113.7", "203.0.113.8"):
        queue.add(_request("10.0.0.2", address))  # the GPU jobs' places are full
    assert asyncio.run(queue.push(gpu, _request("10.0.0.2", "203.0.113.9"), None)) == (
        False, server_busy_message(2), "error")
    assert asyncio.run(queue.push(cheap, _request("10.0.0.2", "203.0.113.9"), None))[0] is True
    for index in range(OTHER_EVENT_PLACES):  # every other event's place taken, from many addresses
        queue.add(_request("10.0.0.2", f"198.51.100.{index}"), concurrency_id="png_info")
    assert asyncio.run(queue.push(cheap, _request("10.0.0.2", "203.0.113.9"), None)) == (
        False, OTHER_EVENTS_BUSY_MESSAGE, "error")
    assert visitors.job_admission.total() == 2 and pushed == [cheap]
    assert gradio_max_size(2) == 2 + OTHER_EVENT_PLACES


def test_the_visitor_limit_speaks_first_and_zero_turns_the_address_limit_off() -> None:
    visitors, queue = _visitors(max_jobs=2, per_address=0)
    cookie = visitors.cookies.issue()
    for _ in range(2):
        queue.add(_request("10.0.0.2", "203.0.113.7", cookie=cookie))
    visitor = visitors.cookies.verify(cookie)
    assert visitors.admit(visitor, "203.0.113.7") == too_many_jobs_message(2)
    assert visitors.job_admission.count("203.0.113.7") == 2  # refused by the visitor limit: no address place held
    for _ in range(50):
        queue.add(_request("10.0.0.2", "203.0.113.7"))
    assert visitors.admit("a-new-visitor", "203.0.113.7") is None
    visitors.job_admission.release("203.0.113.7")
    assert visitors.job_admission._held == {}


def test_the_watched_queue_admits_gpu_jobs_through_visitors_admit() -> None:
    """The queue's push (`Visitors.watch`) refuses what `admit` refuses, before Gradio's push; an admitted job
    holds its address's place until Gradio has queued it, then counts in the queue instead."""
    visitors, queue = _visitors(max_jobs=2, per_address=1)
    pushed: list[int] = []

    async def gradio_push(body: object, request: object, username: object) -> tuple[bool, str]:
        pushed.append(visitors.job_admission.count("203.0.113.7"))  # the place is held while Gradio accepts it
        return True, "event-id"

    queue.push = gradio_push
    queue.blocks = SimpleNamespace(fns={0: SimpleNamespace(concurrency_id=GPU_QUEUE)})
    visitors.watch(queue)
    body = SimpleNamespace(fn_index=0, data=[], session_hash="pagehash01")
    assert asyncio.run(queue.push(body, _request("10.0.0.2", "203.0.113.7"), None)) == (True, "event-id")
    assert pushed == [1] and visitors.job_admission._held == {}
    queue.add(_request("10.0.0.2", "203.0.113.7"))  # Gradio's queue now has it
    refused = asyncio.run(queue.push(body, _request("10.0.0.2", "203.0.113.7"), None))
    assert refused == (False, too_many_jobs_from_address_message(1), "error") and pushed == [1]


def test_the_address_flags_and_their_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SPACE_ID", "SD2APP_TRUSTED_PROXY_HOPS", "SD2APP_MAX_JOBS_PER_ADDRESS", "GRADIO_SERVER_NAME"):
        monkeypatch.delenv(name, raising=False)
    args = app.parse_args([])
    assert args.max_jobs_per_address == 0 and args.trusted_proxy_hops == 0  # loopback: no per-address limit
    for public in (["--host", "0.0.0.0"], ["--share"]):  # public modes: the default limit
        assert app.parse_args(public).max_jobs_per_address == DEFAULT_MAX_JOBS_PER_ADDRESS == 6, public
    assert app.parse_args(["--max-jobs-per-address", "3"]).max_jobs_per_address == 3  # an explicit value wins
    assert app.parse_args(["--host", "0.0.0.0", "--max-jobs-per-address", "0"]).max_jobs_per_address == 0
    assert app.parse_args(["--max-jobs-per-address", "0", "--trusted-proxy-hops", "2"]).trusted_proxy_hops == 2
    monkeypatch.setenv("SPACE_ID", "someone/sd2")  # a Space: Hugging Face's proxy stands in front
    assert app.parse_args([]).trusted_proxy_hops == 1
    assert app.parse_args(["--trusted-proxy-hops", "0"]).trusted_proxy_hops == 0
    monkeypatch.setenv("SD2APP_MAX_JOBS_PER_ADDRESS", "9")  # the variable is an explicit value too
    assert app.parse_args([]).max_jobs_per_address == app.parse_args(["--host", "::"]).max_jobs_per_address == 9
    for refused in (["--trusted-proxy-hops", "-1"], ["--queue-size", "0"]):
        with pytest.raises(SystemExit):
            app.parse_args(refused)
    assert webapp.launch_settings(args)["state_session_capacity"] == args.max_sessions == DEFAULT_MAX_SESSIONS == 5000


def test_the_sessions_per_address_flag_and_its_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SPACE_ID", "SD2APP_MAX_SESSIONS_PER_ADDRESS", "GRADIO_SERVER_NAME"):
        monkeypatch.delenv(name, raising=False)
    assert app.parse_args([]).max_sessions_per_address == 0  # loopback: every client is the operator's
    for public in (["--host", "0.0.0.0"], ["--share"]):
        assert app.parse_args(public).max_sessions_per_address == DEFAULT_MAX_SESSIONS_PER_ADDRESS == 100, public
    assert app.parse_args(["--max-sessions-per-address", "7"]).max_sessions_per_address == 7
    assert app.parse_args(["--host", "::", "--max-sessions-per-address", "0"]).max_sessions_per_address == 0
    monkeypatch.setenv("SD2APP_MAX_SESSIONS_PER_ADDRESS", "9")
    assert app.parse_args([]).max_sessions_per_address == app.parse_args(["--share"]).max_sessions_per_address == 9
    with pytest.raises(SystemExit):
        app.parse_args(["--max-sessions-per-address", "-1"])


def test_the_built_app_limits_jobs_per_address_in_public_modes_only(monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Path) -> None:
    """What `webapp.build` gives the queue's watch and the A1111 API (one `JobAdmission`) for each mode's default."""
    from PIL import Image

    from tests.reliability_support import linked_tiny_cache

    for name in ("SPACE_ID", "SD2APP_MAX_JOBS_PER_ADDRESS", "GRADIO_SERVER_NAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # the build sets it
    linked_tiny_cache(monkeypatch, tmp_path)
    cases = {(): 0, ("--host", "0.0.0.0"): DEFAULT_MAX_JOBS_PER_ADDRESS, ("--max-jobs-per-address", "2"): 2}
    for extra, limit in cases.items():
        args = app.parse_args(["--tiny", "--device", "cpu", "--no-save", "--queue-size", "5", *extra])
        demo = webapp.build(args)
        try:
            assert demo.hosting.max_jobs_per_address == demo.flags.visitors.job_admission.limit == limit, extra
            assert demo.hosting.max_sessions_per_address == (100 if "0.0.0.0" in extra else 0), extra
            assert demo.flags.visitors.job_admission.queue_size == 5  # --queue-size: the GPU jobs' one bound
            assert demo._queue.max_size == gradio_max_size(5)  # Gradio's: GPU jobs' and other events' places
        finally:
            demo.close()


def test_a_queue_size_below_the_gpu_queues_concurrency_is_warned_about(monkeypatch: pytest.MonkeyPatch,
                                                                       tmp_path: Path, caplog) -> None:
    """With --serve the GPU queue runs the replicas' total at once; a --queue-size below it caps that, said at
    start (a local service runs one job at once: never below --queue-size, which takes 1 or more)."""
    from PIL import Image

    from tests.reliability_support import linked_tiny_cache

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # the build sets it
    linked_tiny_cache(monkeypatch, tmp_path)
    local_service = webapp.local_service

    def four_at_once(settings: object) -> object:
        service = local_service(settings)
        service.concurrency = 4  # as a deployment of 4 replicas' places
        return service

    monkeypatch.setattr(webapp, "local_service", four_at_once)
    for size in ("3", "4"):
        webapp.build(app.parse_args(["--tiny", "--device", "cpu", "--no-save", "--queue-size", size])).close()
    warnings = [record.getMessage() for record in caplog.records if "--queue-size" in record.getMessage()]
    assert warnings == ["--queue-size 3 is below the 4 jobs the GPU queue can run at once: at most 3 will run"]


def test_sweep_deletes_old_files_and_then_their_empty_folders(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    old = Path(cached_file(b"old image", "1-txt2img-0.png"))
    assert old.parent.parent == results_folder() == tmp_path / "sd2-app"
    stray = results_folder() / ".half-written.tmp"
    stray.write_bytes(b"x")
    gradios_own = tmp_path / "abc" / "upload.png"  # a file of Gradio's, outside the app's folder
    gradios_own.parent.mkdir()
    gradios_own.write_bytes(b"x")
    now = time.time()
    assert sweep(results_folder(), age=60, now=now) == 0  # nothing is a minute old yet
    assert sweep(results_folder(), age=60, now=now + 61) == 2  # the image and the stray temporary file
    assert not old.exists() and not stray.exists() and not old.parent.exists()  # and the folder left empty
    assert gradios_own.is_file() and results_folder().is_dir()
    newer = Path(cached_file(b"newer image", "2-txt2img-0.png"))
    # At the real time, the file 0.3 s old: it goes, and its folder, emptied just now, is new. (An age of 0 made
    # that a race: the kernel stamps a folder's change with a clock a tick coarser than time.time().)
    time.sleep(0.3)
    assert sweep(results_folder(), age=0.2) == 1
    assert not newer.exists() and newer.parent.is_dir()
    time.sleep(0.01)
    assert sweep(results_folder(), age=0) == 0 and not newer.parent.exists()  # it goes at the next sweep
    assert sweep(tmp_path / "missing", age=60) == 0


def test_a_file_written_again_into_a_swept_folder_is_whole(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    first = Path(cached_file(b"same bytes", "a.png"))
    sweep(results_folder(), age=0, now=time.time() + 1)
    assert not first.parent.exists()
    again = Path(cached_file(b"same bytes", "a.png"))
    assert again == first and again.read_bytes() == b"same bytes"
    assert [p.name for p in again.parent.iterdir()] == ["a.png"]  # no temporary file left
    assert os.stat(again).st_ctime > time.time() - 60


def test_the_sweeping_lifespan_sweeps_on_its_schedule_and_ends_with_the_server(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    orphan = Path(cached_file(b"never returned to gradio", "b.png"))
    entered: list[str] = []

    @asynccontextmanager
    async def inner(app_: object) -> AsyncIterator[dict]:
        entered.append("in")
        yield {"state": 1}
        entered.append("out")

    async def run() -> object:
        async with sweeping_lifespan(0.05, 0, inner)(object()) as state:
            deadline = time.monotonic() + 5
            while orphan.exists() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        return state

    assert asyncio.run(run()) == {"state": 1}
    assert not orphan.exists() and entered == ["in", "out"]
