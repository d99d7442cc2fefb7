"""The upload budget per network address, without a server (through the served app:
tests/reliability/test_reliability_addresses.py, `test_uploads_per_address_are_bounded`)."""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qsl

from sd2_app.api.addresses import ClientAddresses
from sd2_app.ui.upload_budget import (MAX_UPLOAD_REQUEST_BYTES, MB, PROGRESS_ID_HEX, PROGRESS_PATH, UPLOAD_PATH,
                                      UploadBudget, UploadBudgetMiddleware, upload_limit_message)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_address_gets_its_bytes_again_when_its_window_ends() -> None:
    clock = Clock()
    budget = UploadBudget(10 * MB, window_s=3600, clock=clock)
    assert budget.charge("203.0.113.7", 6 * MB) is None
    assert budget.charge("203.0.113.7", 5 * MB) == upload_limit_message(10 * MB, 2000, 3600)
    assert budget.charge("203.0.113.7", 4 * MB) is None  # the refused 5 MB were not counted: 10 MB in all
    assert budget.charge("203.0.113.8", 10 * MB) is None  # another address has its own budget
    clock.now += 3599
    assert budget.charge("203.0.113.7", 1) is not None
    clock.now += 1
    assert budget.charge("203.0.113.7", 10 * MB) is None
    assert upload_limit_message(10 * MB, 2000, 3600) == (
        "Your network address has reached this server's upload limit (10 MB or 2,000 uploads per 60 minutes); "
        "try again later.")


def test_requests_are_counted_and_finished_windows_are_forgotten() -> None:
    clock = Clock()
    budget = UploadBudget(10 * MB, window_s=60, max_requests=3, clock=clock)
    assert [budget.charge("203.0.113.7", 1) for _ in range(4)] == [None] * 3 + [upload_limit_message(10 * MB, 3, 60)]
    for n in range(1000):  # a thousand addresses, one upload each
        budget.charge(f"198.51.{n // 256}.{n % 256}", 1)
    assert budget.addresses() == 1001
    clock.now += 61
    budget.charge("203.0.113.9", 1)
    assert budget.addresses() == 1  # memory follows the addresses of the running window
    assert UploadBudget(0, window_s=60, max_requests=1).charge("x", 10**12) is None  # 0: no budget


def _call(middleware: UploadBudgetMiddleware, headers: list[tuple[bytes, bytes]], path: str = UPLOAD_PATH,
          method: str = "POST", query: bytes = b"") -> tuple[int, bytes]:
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": headers, "client": ("203.0.113.7", 5000),
             "query_string": query}
    asyncio.run(middleware(scope, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def _gradio(seen: list[dict]):
    async def gradio(scope, receive, send) -> None:
        seen.append(scope)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"gradio"})

    return gradio


def test_upload_ids_reach_gradio_as_short_keyed_hashes() -> None:
    seen: list[dict] = []
    middleware = UploadBudgetMiddleware(_gradio(seen), UploadBudget(MB, window_s=60, max_requests=3), ClientAddresses())
    long_id = "x" * 5000
    assert _call(middleware, [(b"content-length", b"10")], query=f"upload_id={long_id}&a=1".encode())[0] == 200
    assert _call(middleware, [], path=PROGRESS_PATH, method="GET", query=f"upload_id={long_id}".encode())[0] == 200
    sent = [dict(parse_qsl(scope["query_string"].decode())) for scope in seen]
    assert sent[0]["upload_id"] == sent[1]["upload_id"] == middleware.progress_id("203.0.113.7", long_id)
    assert len(sent[0]["upload_id"]) == PROGRESS_ID_HEX == 4 and sent[0]["a"] == "1"  # other parameters kept
    assert middleware.progress_id("203.0.113.8", long_id) != sent[0]["upload_id"]  # another address, another id
    assert len({middleware.progress_id("a", str(n)) for n in range(200_000)}) <= 16 ** 4
    # Progress questions count as requests of the address's budget.
    assert _call(middleware, [], path=PROGRESS_PATH, method="GET", query=b"upload_id=1")[0] == 200
    assert _call(middleware, [], path=PROGRESS_PATH, method="GET", query=b"upload_id=2")[0] == 429


def test_the_middleware_refuses_before_gradio_reads_anything() -> None:
    middleware = UploadBudgetMiddleware(_gradio([]), UploadBudget(1 * MB, window_s=60), ClientAddresses())
    assert _call(middleware, [(b"content-length", b"1000")]) == (200, b"gradio")
    assert _call(middleware, []) == (411, b"An upload must state its size (one Content-Length header).")
    assert _call(middleware, [(b"content-length", b"10"), (b"content-length", b"10")])[0] == 411
    assert _call(middleware, [(b"content-length", b"-5")])[0] == 411
    too_large = _call(middleware, [(b"content-length", str(MAX_UPLOAD_REQUEST_BYTES + 1).encode())])
    assert too_large == (413, b"One upload may be at most 130 MB.")
    assert _call(middleware, [(b"content-length", str(MB).encode())])[0] == 429  # 1000 bytes + 1 MB > 1 MB
    assert _call(middleware, [], path="/gradio_api/queue/join") == (200, b"gradio")  # other routes untouched
    assert _call(middleware, [], method="GET") == (200, b"gradio")
