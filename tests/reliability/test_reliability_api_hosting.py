"""The A1111-compatible API hosted in public, through the running app with raw HTTP: its GPU jobs count towards
the web UI's per-address job limit, one count for both front ends (`sd2_app.api.job_admission`).

The app is `python app.py --host 0.0.0.0 --trusted-proxy-hops 1 --api --api-auth USER:PASS
--max-jobs-per-address 3` served in-process on a free loopback port (the tiny checkpoints), behind a trusted
reverse proxy that the test plays, appending the client's address to X-Forwarded-For
(`tests.hosting_support.served_behind_proxy`). Jobs of 150 steps (seconds each) hold their places while the
test looks; /interrupt and the queue's stop flags end them.
"""

from __future__ import annotations

import base64
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import httpx
import pytest

from sd2_app.api.job_admission import too_many_jobs_from_address_message
from sd2_app.api.quick_reads import (MAX_QUICK_REQUESTS_PER_ADDRESS, PNG_INFO_CONCURRENCY, QUICK_READ_PLACES,
                                     reads_busy_message, too_many_quick_requests_message)
from tests.hosting_support import (API_FAST, FAST, CallsAtOnce, api_job_count, interrupt_api_jobs, queue_join,
                                   served_behind_proxy, stop_queued_jobs, wait_for_api_jobs)
from tests.reliability_report import reliability, track_module  # noqa: F401
from tests.reliability_support import noise_image, one_thread, png_bytes  # noqa: F401

pytestmark = pytest.mark.slow  # a served app and jobs held for seconds

AREA = "Hosting"
ADDRESS_LIMIT = 3
AUTH = ("krita", "s3cret")
API_SLOW = {**API_FAST, "steps": 150}
UI_SLOW = {**FAST, "steps": 150}
REFUSED = too_many_jobs_from_address_message(ADDRESS_LIMIT)


@pytest.fixture(scope="module")
def api_app(one_thread: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, object]]:
    argv = ["--api", "--api-auth", ":".join(AUTH), "--max-jobs-per-address", str(ADDRESS_LIMIT)]
    with served_behind_proxy(argv, tmp_path_factory) as (url, demo):
        warm = _txt2img(url, "203.0.113.250", 0, **API_FAST)  # the model is loaded before the tests count
        assert warm.status_code == 200, warm.text
        yield url, demo


def _txt2img(url: str, forwarded_for: str, seed: int, **fields: object) -> httpx.Response:
    """POST /sdapi/v1/txt2img through the proxy that says the client is `forwarded_for`."""
    return httpx.post(f"{url}sdapi/v1/txt2img", json={"prompt": f"api {seed}", "seed": seed, **fields}, auth=AUTH,
                      headers={"X-Forwarded-For": forwarded_for}, timeout=300)


def _first_answers(futures: list[Future[httpx.Response]], count: int) -> list[httpx.Response]:
    """The responses back once `count` have come (refusals come at once; an accepted job waits or runs), or
    those back after 30 s."""
    deadline = time.monotonic() + 30
    while sum(future.done() for future in futures) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return [future.result() for future in futures if future.done()]


def test_api_auth_lets_its_users_change_the_current_checkpoint_in_public(api_app, reliability) -> None:
    """--api-auth in a public mode (no --allow-model-admin, no --auth): the Models tab stays read-only for
    visitors, but the API's users, the only ones who reach it, may switch the shared current checkpoint."""
    url, demo = api_app
    options = f"{url}sdapi/v1/options"
    before = httpx.get(options, auth=AUTH, timeout=30).json()["sd_model_checkpoint"]
    try:
        switched = httpx.post(options, json={"sd_model_checkpoint": "sd2-base"}, auth=AUTH, timeout=120)
        now = httpx.get(options, auth=AUTH, timeout=30).json()["sd_model_checkpoint"]
    finally:
        httpx.post(options, json={"sd_model_checkpoint": before}, auth=AUTH, timeout=120)
    assert (switched.status_code, before, now) == (200, "sd21-base", "sd2-base"), switched.text
    assert demo.hosting.model_admin is False  # type: ignore[attr-defined]  # the web UI's own rule
    reliability(AREA, "POST /sdapi/v1/options {'sd_model_checkpoint': 'sd2-base'} with --api-auth's credentials in "
                "a public mode (no --allow-model-admin, no --auth)",
                f"HTTP 200: the current checkpoint is {now} (it was {before}); the web UI's Models tab stays read-only")


def test_api_jobs_from_one_address_stop_at_the_per_address_limit(api_app, reliability) -> None:
    url, demo = api_app
    visitors = demo.flags.visitors  # type: ignore[attr-defined]
    sent = 2 * ADDRESS_LIMIT
    with ThreadPoolExecutor(sent + 1) as pool:
        futures = [pool.submit(_txt2img, url, "203.0.113.7", seed, **API_SLOW) for seed in range(sent)]
        try:
            refused = _first_answers(futures, sent - ADDRESS_LIMIT)
            assert [r.status_code for r in refused] == [429] * (sent - ADDRESS_LIMIT), [r.text[:200] for r in refused]
            assert {r.json()["detail"] for r in refused} == {REFUSED}
            assert visitors.job_admission.count("203.0.113.7") == api_job_count(url, AUTH) == ADDRESS_LIMIT
            ui = queue_join(url, "203.0.113.7", prompt="ui", seed=20, **UI_SLOW)  # the web UI counts them too
            assert ui.status_code == 400 and ui.json()["detail"] == REFUSED, ui.text
            # A client that writes its own X-Forwarded-For entry first: the proxy still appends the real address.
            spoofed = _txt2img(url, "198.51.100.99, 203.0.113.7", 21, **API_FAST)
            assert spoofed.status_code == 429 and spoofed.json()["detail"] == REFUSED, spoofed.text
            load = httpx.post(f"{url}sdapi/v1/options", json={"sd_model_checkpoint": "sd2"}, auth=AUTH,
                              headers={"X-Forwarded-For": "203.0.113.7"}, timeout=30)  # a model load counts too
            assert load.status_code == 429 and load.json()["detail"] == REFUSED, load.text
            other = pool.submit(_txt2img, url, "203.0.113.8", 22, **API_FAST)  # another address: accepted
            wait_for_api_jobs(url, lambda jobs: jobs == ADDRESS_LIMIT + 1, AUTH)
        finally:
            interrupt_api_jobs(url, ADDRESS_LIMIT, AUTH, "203.0.113.7")
        answers = Counter(future.result().status_code for future in futures)
        other_answer = other.result(timeout=120)
    assert answers == {200: ADDRESS_LIMIT, 429: sent - ADDRESS_LIMIT}
    assert other_answer.status_code == 200 and len(other_answer.json()["images"]) == 1, other_answer.text
    assert visitors.job_admission.count("203.0.113.7") == visitors.job_admission.count("203.0.113.8") == 0
    reliability(AREA, f"{sent} concurrent A1111 API txt2img calls (raw HTTP) from one address, "
                      f"--max-jobs-per-address {ADDRESS_LIMIT}, behind a trusted proxy (--trusted-proxy-hops 1)",
                f"{ADDRESS_LIMIT} accepted, {sent - ADDRESS_LIMIT} refused at once, HTTP 429: {REFUSED} The web "
                "UI's queue refuses that address too while they run (HTTP 400, the same message), and so does "
                "/options for a checkpoint load (HTTP 429); the same with a client-written first X-Forwarded-For "
                "entry; another address's API call runs")


def test_web_ui_and_api_jobs_of_one_address_share_one_limit(api_app, reliability) -> None:
    url, demo = api_app
    visitors = demo.flags.visitors  # type: ignore[attr-defined]
    ui_jobs = ADDRESS_LIMIT - 1
    try:
        joined = [queue_join(url, "203.0.113.9", prompt=f"ui {n}", seed=n, **UI_SLOW) for n in range(ui_jobs)]
        assert [r.status_code for r in joined] == [200] * ui_jobs, [r.text for r in joined]
        with ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(_txt2img, url, "203.0.113.9", seed, **API_SLOW) for seed in range(3)]
            try:
                refused = _first_answers(futures, 2)
                assert [r.status_code for r in refused] == [429, 429], [r.text[:200] for r in refused]
                assert {r.json()["detail"] for r in refused} == {REFUSED}
                assert visitors.job_admission.count("203.0.113.9") == ADDRESS_LIMIT and api_job_count(url, AUTH) == 1
                over = queue_join(url, "203.0.113.9", prompt="ui over", seed=9, **UI_SLOW)
                assert over.status_code == 400 and over.json()["detail"] == REFUSED, over.text
            finally:
                interrupt_api_jobs(url, 1, AUTH, "203.0.113.9")
            answers = sorted(future.result().status_code for future in futures)
    finally:
        stop_queued_jobs(demo)
    assert answers == [200, 429, 429] and visitors.job_admission.count("203.0.113.9") == 0
    reliability(AREA, f"{ui_jobs} web UI jobs (cookieless queue joins) and then 3 concurrent A1111 API calls from one "
                      f"address, --max-jobs-per-address {ADDRESS_LIMIT}",
                f"one count for both: 1 API call accepted, 2 refused, HTTP 429: {REFUSED} A further web UI job is "
                "refused at join, HTTP 400, the same message")


def _png_info(url: str, forwarded_for: str, image: str) -> httpx.Response:
    return httpx.post(f"{url}sdapi/v1/png-info", json={"image": image}, auth=AUTH,
                      headers={"X-Forwarded-For": forwarded_for}, timeout=60)


def _held_reads(demo: object) -> int:
    """PNG info reads of the A1111 API waiting or running (`sd2_app.api.quick_reads.QuickReads`)."""
    api = next(front for front in demo._outside if hasattr(front, "reads"))  # type: ignore[attr-defined]
    return api.reads.waiting_or_running()


def test_api_png_info_reads_are_bounded_as_the_web_ui_s(api_app, reliability, monkeypatch: pytest.MonkeyPatch) -> None:
    """/png-info decodes up to 25 MiB per call on the API's worker threads, with no bound of its own: 8 calls at
    once ran 8 reads at once, and more only waited for threads. Now at most 2 run at once, 8 wait or run in all
    (503 past that) and one address has at most 4 of them (429)."""
    from sd2_app.api.service import Service

    url, demo = api_app
    release = threading.Event()
    probe = CallsAtOnce(Service.read_parameters, lambda: release.wait(30))
    monkeypatch.setattr(Service, "read_parameters", staticmethod(probe))
    image = base64.b64encode(png_bytes(noise_image(16, 16))).decode()
    callers = ["198.51.100.1"] * MAX_QUICK_REQUESTS_PER_ADDRESS + ["198.51.100.2"] * MAX_QUICK_REQUESTS_PER_ADDRESS
    with ThreadPoolExecutor(len(callers)) as pool:
        futures = [pool.submit(_png_info, url, caller, image) for caller in callers]
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and (probe.running, _held_reads(demo)) != (PNG_INFO_CONCURRENCY, len(callers)):
                time.sleep(0.05)
            over = [_png_info(url, caller, image) for caller in ("198.51.100.1", "198.51.100.3")]
            at_once = probe.most
        finally:
            release.set()
        answers = [future.result() for future in futures]
    assert [(r.status_code, r.json()["detail"]) for r in over] == [
        (429, too_many_quick_requests_message(MAX_QUICK_REQUESTS_PER_ADDRESS)),
        (503, reads_busy_message(QUICK_READ_PLACES))]
    assert at_once == PNG_INFO_CONCURRENCY and [r.status_code for r in answers] == [200] * len(callers)
    assert {r.json()["info"] for r in answers} == {""} and _held_reads(demo) == 0
    assert _png_info(url, "198.51.100.3", image).status_code == 200  # the places are free again
    reliability(AREA, f"{len(callers)} POST /sdapi/v1/png-info calls held at once from two addresses, then one more "
                      "from the first and one from a third (raw HTTP, trusted proxy)",
                f"at most {at_once} read at once and all {len(callers)} answer 200; the extra ones are refused at "
                f"once: HTTP 429: {over[0].json()['detail']} / HTTP 503: {over[1].json()['detail']} (each call "
                "decoded up to 25 MiB on its own worker thread, as many at once as were sent)")
