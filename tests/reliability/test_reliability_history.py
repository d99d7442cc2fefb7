"""Safe to host in public, History: no client, with or without cookies, can push a visitor's results out of it.

The app is `python app.py --host 0.0.0.0 --outputs <tmp>` served in-process on a free loopback port (the tiny
checkpoints). Visitors are gradio_client Clients (each keeps its own server-issued cookie); a script without
cookies joins the queue over raw HTTP. The history's bounds are lowered on the running app's keeper so that a
few 64x64 results reach them (`sd2_app.api.keeper`).
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client  # noqa: E402

from sd2_app.api.keeper import entry_bytes  # noqa: E402
from tests.hosting_support import FAST, public_app, queue_join  # noqa: E402,F401
from tests.reliability_report import reliability, track_module  # noqa: E402,F401
from tests.reliability_support import one_thread  # noqa: E402,F401

AREA = "Hosting"


def _cookieless_txt2img(url: str, seed: int) -> None:
    """One finished txt2img job of a script that sends no cookies (a new visitor id on every request)."""
    joined = queue_join(url, None, prompt="flood", seed=seed)
    assert joined.status_code == 200 and "set-cookie" in joined.headers, joined.text
    stream = httpx.get(f"{url}gradio_api/call/txt2img/{joined.json()['event_id']}", timeout=120).text
    assert "event: complete" in stream, stream[-500:]


def _seeds(client: Client) -> list[int]:
    _, table = client.predict(api_name="/history")
    return [row[2] for row in table["data"]]


def _saved(outputs: Path) -> int:
    return len(list(outputs.glob("*/*.png")))


def test_results_nobody_can_view_take_no_history_place(public_app, reliability) -> None:
    url, demo, outputs = public_app
    keeper = demo.service.keeper  # type: ignore[attr-defined]
    visitor = Client(url, verbose=False)
    visitor.predict(prompt="mine", seed=1, api_name="/txt2img", **FAST)
    one = entry_bytes(keeper.history()[0])
    saved, entries = _saved(outputs), len(keeper.history())
    before, keeper.history_max_bytes = keeper.history_max_bytes, sum(map(entry_bytes, keeper.history())) + one // 2
    try:
        for seed in (101, 102, 103):
            _cookieless_txt2img(url, seed)
        seeds = _seeds(visitor)
    finally:
        keeper.history_max_bytes = before
    assert seeds == [1], seeds  # the three cookieless results took no place of it
    assert len(keeper.history()) == entries and _saved(outputs) == saved + 3  # not listed, but saved
    reliability(AREA, "3 txt2img jobs of a script without cookies, History's memory set to hold one more result "
                      "than it has (served app, saving on)",
                f"the visitor's only result stays in their History ({seeds}); the script's results are saved "
                f"({_saved(outputs) - saved} files) and take no History place (none listed)")


def test_one_visitors_flood_never_pushes_out_anothers_results(public_app, reliability) -> None:
    url, demo, _ = public_app
    keeper = demo.service.keeper  # type: ignore[attr-defined]
    quiet, flooder = Client(url, verbose=False), Client(url, verbose=False)
    quiet.predict(prompt="quiet", seed=7, api_name="/txt2img", **FAST)
    one = entry_bytes(keeper.history()[0])
    others = sum(map(entry_bytes, keeper.history())) - one  # earlier tests' visitors: one entry each
    bound = others + int(3.5 * one)
    before, keeper.history_max_bytes = keeper.history_max_bytes, bound
    try:
        for seed in (201, 202, 203, 204, 205):
            flooder.predict(prompt="flood", seed=seed, api_name="/txt2img", **FAST)
        by_bytes = _seeds(quiet), _seeds(flooder), sum(map(entry_bytes, keeper.history()))
        keeper.history_max_bytes, size_before, keeper.history_size = before, keeper.history_size, 3
        for seed in (206, 207, 208, 209):
            flooder.predict(prompt="flood", seed=seed, api_name="/txt2img", **FAST)
        by_count = _seeds(quiet), _seeds(flooder)
    finally:
        keeper.history_max_bytes, keeper.history_size = before, size_before
    assert by_bytes[:2] == ([7], [205, 204]) and by_bytes[2] <= bound, by_bytes
    assert by_count == ([7], [209, 208, 207]), by_count
    reliability(AREA, "one visitor (cookies kept) makes 5 results with History's memory set to 3.5 results, then "
                      "4 more with 3 entries per visitor (served app)",
                f"another visitor's only result stays ({by_count[0]}); the flooding visitor keeps its newest "
                f"{by_bytes[1]} within {by_bytes[2]:,} of {bound:,} bytes, then its newest {by_count[1]} "
                "(default: 50 entries per visitor, 1 GiB in all)")
