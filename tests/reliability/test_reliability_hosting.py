"""Safe to host in public, queue and access: job cost, jobs per visitor, Stop, closed routes, admin endpoints,
visitor identity, run history, launch settings and output files, through the running app.

Every test goes through `python app.py` as served in-process (webapp.build + webapp.launch_settings on a free
loopback port, the tiny checkpoints): gradio_client, raw HTTP, or both, in a public mode (`--host 0.0.0.0`,
bound to loopback for the test) with saving on, so the public defaults are what is tested.
"""

from __future__ import annotations

import time

import httpx
import pytest
from PIL import Image

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from sd2_app.ui.hosting import OTHER_EVENT_PLACES, gradio_max_size  # noqa: E402
from tests.hosting_support import FAST, public_app, txt2img_data  # noqa: E402,F401
from tests.reliability_report import reliability, track_module  # noqa: E402,F401
from tests.reliability_support import noise_image, one_thread, png_bytes  # noqa: E402,F401

AREA = "Hosting"
SLOW = {**FAST, "steps": 150}  # about 10 s on the tiny checkpoints: long enough to queue others behind it


# ---- 2. cost of one job ---------------------------------------------------------------------------------

def test_job_cost_cap_through_the_app(public_app, reliability) -> None:
    url, _, _ = public_app
    client = Client(url, verbose=False)
    with pytest.raises(AppError) as caught:
        client.predict(prompt="x", api_name="/txt2img", **{**FAST, "width": 512, "height": 512, "steps": 150,
                                                           "sampler": "Heun", "cfg_scale": 7.5, "batch_size": 8})
    assert str(caught.value) == (
        "This job is too large for this server: it costs 19,660,800 UNet evaluations x latent pixels and the limit "
        "is 6,553,600. Lower the steps, the images per prompt, the width and height or the hires fix (at most 50 "
        "steps fit with the other settings unchanged).")
    reliability(AREA, "txt2img 8 images x 150 Heun steps at 512x512, guidance 7.5 (served app)", f"refused: {caught.value}")
    with pytest.raises(AppError) as caught:
        client.predict(prompt="x", x_type="sampler", x_picked=["Euler", "Euler a", "Heun", "LMS", "DPM2", "DPM2 a",
                                                               "DDIM", "DDPM", "PNDM", "DPM++ 2M", "DPM++ 2M SDE",
                                                               "UniPC"],
                       steps=150, cfg_scale=7.5, width=512, height=512, seed=1, api_name="/xyz_plot")
    assert str(caught.value).startswith("This job is too large for this server: it costs 18,432,000 UNet ")
    assert "Lower the number of cells, the steps or the size" in str(caught.value)
    reliability(AREA, "X/Y/Z plot of 12 samplers x 150 steps at 512x512 (each cell alone fits; served app)",
                f"refused: {caught.value}")


# ---- 3. fairness: jobs per visitor; 9. Stop reaches queued jobs ----------------------------------------

def _post_join(url: str, cookies: dict, **values: object) -> httpx.Response:
    return httpx.post(f"{url}gradio_api/call/txt2img", json={"data": txt2img_data(url, **values)}, cookies=cookies, timeout=30)


def test_per_visitor_job_limit_and_stop_of_queued_jobs(public_app, reliability) -> None:
    url, _, _ = public_app
    client = Client(url, verbose=False)
    Client(url, verbose=False).predict(prompt="warm", api_name="/txt2img", **FAST)  # models loaded
    running = client.submit(prompt="first", seed=11, api_name="/txt2img", **SLOW)
    queued = client.submit(prompt="second", seed=12, api_name="/txt2img", **SLOW)
    time.sleep(1.0)
    third = _post_join(url, client.cookies, prompt="third", seed=13, **SLOW)
    assert third.status_code == 400, third.text
    assert third.json()["detail"] == ("You already have 2 jobs queued or running; wait for one to finish (or press "
                                      "Stop) before starting another.")
    reliability(AREA, "a third job from a visitor with 2 queued or running (default --max-jobs-per-session 2)",
                f"refused at join, HTTP {third.status_code}: {third.json()['detail']}")
    other = _post_join(url, {}, prompt="someone else", seed=14, **FAST)  # another visitor still gets a place
    assert other.status_code == 200 and "event_id" in other.json()

    # A stranger who copies the visitor's session hash stops nothing; the visitor's Stop ends both jobs.
    stranger = httpx.post(f"{url}gradio_api/run/txt2img_stop", json={"data": [], "session_hash": client.session_hash},
                          timeout=30)
    assert stranger.json()["data"][0] == "Nothing to stop.", stranger.text
    stopped = client.predict(api_name="/txt2img_stop")
    assert (stopped if isinstance(stopped, str) else stopped[0]).startswith("Stopped"), stopped
    started = time.perf_counter()
    outcomes = [_outcome(job) for job in (running, queued)]
    deadline = time.monotonic() + 120
    while demo_queue_busy(public_app[1]) and time.monotonic() < deadline:
        time.sleep(0.2)
    seconds = time.perf_counter() - started
    _, history = client.predict(api_name="/history")
    ran = {str(row[4]).split("\n")[0]: str(row[4]) for row in history["data"]}
    # The running one keeps its image so far when it had begun sampling, as A1111's Interrupt does; the queued one
    # never runs. Under load the two submits may reach the queue in either order, so either may be the running one.
    kept = [prompt for prompt in ("first", "second") if prompt in ran]
    assert len(kept) <= 1 and all(", Stopped at step: " in ran[prompt] for prompt in kept), (ran, outcomes)
    assert all(o.startswith("Stopped") or o == "cancelled" or "; kept the image so far." in o for o in outcomes)
    assert sum("; kept the image so far." in o for o in outcomes) <= len(kept), (ran, outcomes)
    reliability(AREA, "Stop (API /txt2img_stop) with one job running and one queued",
                f"both end within {seconds:.1f} s: the running one "
                f"{'with its image so far, in History' if kept else 'before sampling began'}, the queued one never "
                "runs; Stop sent with another visitor's session hash: 'Nothing to stop.'")


def _outcome(job: object) -> str:
    import concurrent.futures

    try:
        return job.result(timeout=120)[2]  # type: ignore[attr-defined]
    except concurrent.futures.CancelledError:
        return "cancelled"


def demo_queue_busy(demo: object) -> bool:
    return bool(demo._queue.event_ids_to_events)  # type: ignore[attr-defined]


# ---- 6. the direct route; 8. run history ----------------------------------------------------------------

def test_direct_routes_are_closed_and_run_history_is_off(public_app, reliability) -> None:
    url, _, _ = public_app
    direct = [httpx.post(f"{url}gradio_api/run/txt2img", json={"data": txt2img_data(url)}, timeout=30) for _ in range(5)]
    assert {r.status_code for r in direct} == {404}
    assert direct[0].json()["detail"] == ("This API endpoint does not accept direct HTTP POST requests. Please join "
                                          "the queue to use this API.")
    reliability(AREA, "5 direct POSTs to /gradio_api/run/txt2img (api_open=False)",
                f"0 accepted, 5 answered {direct[0].status_code}: {direct[0].json()['detail']}")
    config = httpx.get(f"{url}config", timeout=30).json()
    runs = httpx.get(f"{url}gradio_api/runs", timeout=30)
    assert config["run_history"] is False and runs.status_code == 404
    reliability(AREA, "Gradio's run history (run_history=False)", f"config says off; /gradio_api/runs answers "
                f"{runs.status_code}")


def test_launch_settings_of_a_public_deployment(public_app, reliability) -> None:
    import app
    from sd2_app import webapp

    _, demo, _ = public_app
    args = app.parse_args(["--host", "0.0.0.0"])
    settings = webapp.launch_settings(args)
    assert demo.api_open is False and demo.delete_cache == (600, 3600)  # type: ignore[attr-defined]
    assert settings["run_history"] is False and settings["auth"] is None and settings["show_error"] is False
    assert args.max_jobs_per_session == 2 and args.max_job_cost == 6_553_600 and args.keep_outputs_days is None
    assert args.max_jobs_per_address == 6 and args.max_upload_mb_per_address == 1024 and args.trusted_proxy_hops == 0
    assert settings["state_session_capacity"] == 5000 and args.max_sessions_per_address == 100
    assert demo.state_holder.by_address.limit == 100  # type: ignore[attr-defined]
    assert args.queue_size == 16  # the served app's own, --queue-size 8: the GPU jobs' bound and Gradio's
    assert demo.flags.visitors.job_admission.queue_size == 8  # type: ignore[attr-defined]
    assert demo._queue.max_size == gradio_max_size(8) == 8 + OTHER_EVENT_PLACES  # type: ignore[attr-defined]
    assert webapp.launch_settings(app.parse_args(["--auth", "ops:pw"]))["auth"] == ("ops", "pw")
    reliability(AREA, "launch settings (python app.py --host 0.0.0.0)",
                f"queue: api_open=False, 16 GPU jobs waiting or running (--queue-size; web UI, MCP and A1111 API together) "
                f"and {OTHER_EVENT_PLACES} other events (Gradio's max_size {gradio_max_size(16)}), max 2 jobs per visitor (--max-jobs-per-session), 6 per network "
                "address (--max-jobs-per-address; X-Forwarded-For ignored: --trusted-proxy-hops 0); uploads 1024 MB "
                "per address per cache age (--max-upload-mb-per-address); 5000 sessions kept (--max-sessions), 100 of "
                "one address (--max-sessions-per-address); cost cap "
                "6,553,600 (--max-job-cost); launch: run_history=False (--run-history), delete_cache=(600, 3600) "
                "(--cache-minutes 60), auth=None (--auth USER:PASSWORD), show_error=False; loading/unloading by "
                "visitors off (--allow-model-admin); outputs kept until deleted (--keep-outputs-days; 1 on Spaces)")


# ---- 7. admin endpoints --------------------------------------------------------------------------------

def test_loading_and_unloading_are_off_in_public_modes(public_app, reliability) -> None:
    url, _, _ = public_app
    client = Client(url, verbose=False)
    endpoints = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert {"/load_model", "/unload_model", "/unload_all"}.isdisjoint(endpoints) and "/models_status" in endpoints
    for name in ("unload_all", "load_model"):
        response = httpx.post(f"{url}gradio_api/call/{name}", json={"data": ["sd2"]}, timeout=30)
        assert response.status_code != 200, response.text
    table, _ = client.predict(api_name="/models_status")
    assert {row[0] for row in table["data"]} >= {"sd21-base", "sd2"}
    reliability(AREA, "/load_model, /unload_model, /unload_all with --host 0.0.0.0 (no --allow-model-admin/--auth)",
                "no such endpoints; the Models tab shows the state read-only")


def test_model_admin_follows_the_mode_and_the_flags() -> None:
    """The app's decisions (`sd2_app.webapp`): visitors may load checkpoints locally, or in public modes with
    --allow-model-admin or --auth; the A1111 API's /options also with --api-auth."""
    import app
    from sd2_app.api.a1111_auth import parse_auth
    from sd2_app.webapp import api_model_admin, model_admin

    def admin(argv: list[str]) -> tuple[bool, bool]:
        args = app.parse_args(argv)
        return model_admin(args), api_model_admin(model_admin(args), parse_auth(args.api_auth))

    assert admin([]) == admin(["--host", "127.0.0.1"]) == (True, True)
    assert admin(["--host", "0.0.0.0"]) == admin(["--share"]) == (False, False)
    assert admin(["--host", "0.0.0.0", "--allow-model-admin"]) == admin(["--share", "--auth", "me:secret"]) == (True, True)
    assert admin(["--host", "0.0.0.0", "--api", "--api-auth", "me:secret"]) == (False, True)


# ---- 9. session identity ------------------------------------------------------------------------------

def test_history_is_bound_to_the_server_issued_visitor(public_app, reliability) -> None:
    url, _, _ = public_app
    owner = Client(url, verbose=False)
    owner.predict(prompt="my private prompt", seed=21, api_name="/txt2img", **FAST)
    _, mine = owner.predict(api_name="/history")
    assert any(str(row[4]).startswith("my private prompt") for row in mine["data"])
    copier = Client(url, verbose=False)
    copier.session_hash = owner.session_hash  # the value Gradio's session hash used to be trusted for
    _, theirs = copier.predict(api_name="/history")
    raw = httpx.post(f"{url}gradio_api/run/history", json={"data": [], "session_hash": owner.session_hash},
                     timeout=30).json()
    leaked = [row for row in theirs["data"] + raw.get("data", [{}, {"data": []}])[1]["data"]
              if "my private prompt" in str(row)]
    assert leaked == []
    reliability(AREA, "History asked with another visitor's session hash (gradio_client and raw HTTP)",
                f"0 of their entries returned (they see {len(mine['data'])} of their own); history follows the signed "
                "sd2_visitor cookie")


# ---- 13. outputs past 99999 ---------------------------------------------------------------------------

def test_output_numbers_past_99999_lose_nothing(public_app, reliability) -> None:
    from datetime import datetime

    url, _, outputs = public_app
    day = outputs / datetime.now().strftime("%Y-%m-%d")
    day.mkdir(exist_ok=True)
    (day / "99999-41-txt2img.png").write_bytes(png_bytes(noise_image(8, 8)))
    client = Client(url, verbose=False)
    for _ in range(3):
        client.predict(prompt="numbered", seed=41, api_name="/txt2img", **FAST)
    deadline = time.monotonic() + 10  # app.py saves on a writer thread, after the answer
    while len(list(day.glob("*-41-txt2img.png"))) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    names = sorted(p.name for p in day.glob("*-41-txt2img.png"))
    assert names == ["100000-41-txt2img.png", "100001-41-txt2img.png", "100002-41-txt2img.png",
                     "99999-41-txt2img.png"], names
    assert not list(day.glob(".*"))  # no temporary file left behind
    assert all(Image.open(day / n).info.get("parameters", "").startswith("numbered") for n in names[:3])
    reliability(AREA, "three same-seed runs after 99999-41-txt2img.png (served app, saving on)",
                f"{len(names)} files: {', '.join(names)}; none overwritten, no temporary file left")
