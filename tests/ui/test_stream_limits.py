"""`sd2_app.ui.stream_limits`: which requests are streams that stay open, and the middleware's count of them per
network address, on a stand-in app whose streams stay open until the test ends them. Through the running app:
tests/reliability/test_reliability_addresses.py, `test_open_streams_per_address_are_bounded`."""

from __future__ import annotations

import asyncio

import pytest

from sd2_app.api.addresses import ClientAddresses
from sd2_app.ui.stream_limits import StreamLimitMiddleware, is_stream, stream_limit, too_many_streams_message


@pytest.mark.parametrize(("method", "path", "stream"), [
    ("GET", "/gradio_api/heartbeat/abc123", True),
    ("GET", "/gradio_api/queue/data", True),
    ("GET", "/proxied/root/gradio_api/queue/data", True),  # an app served under a root path
    ("GET", "/gradio_api/call/txt2img/0a1b2c", True),
    ("GET", "/gradio_api/call/v2/txt2img/0a1b2c", True),
    ("GET", "/gradio_api/mcp/sse", True),
    ("POST", "/gradio_api/call/txt2img", False),  # a join answers at once
    ("POST", "/gradio_api/queue/join", False),
    ("GET", "/gradio_api/call/txt2img", False),
    ("GET", "/config", False),
    ("GET", "/", False),
    ("POST", "/gradio_api/mcp/messages/", False),
    ("GET", "/sdapi/v1/progress", False),
])
def test_the_streams_that_stay_open_are_told_from_other_requests(method: str, path: str, stream: bool) -> None:
    assert is_stream({"type": "http", "method": method, "path": path}) is stream


def test_the_limit_follows_the_sessions_an_address_may_keep() -> None:
    assert stream_limit(100) == 200 and stream_limit(5) == 10
    assert stream_limit(0) == 0  # no session bound (locally): no stream bound


class _OpenStreams:
    """A stand-in for Gradio: each request answers 200 at once and, for a stream, stays open until `end()`."""

    def __init__(self) -> None:
        self.ended = asyncio.Event()
        self.answered: list[str] = []

    async def __call__(self, scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        self.answered.append(scope["path"])
        if is_stream(scope):
            await self.ended.wait()
        await send({"type": "http.response.body", "body": b""})

    def end(self) -> None:
        self.ended.set()


def _scope(path: str, peer: str) -> dict:
    return {"type": "http", "method": "GET", "path": path, "headers": [], "client": (peer, 50000),
            "query_string": b""}


async def _ask(app, path: str, peer: str) -> tuple[int, bytes]:
    """The status and body a request from `peer` gets (a stream's once it ends)."""
    sent: list[dict] = []

    async def receive() -> dict:
        await asyncio.sleep(3600)  # the client never disconnects on its own
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    await app(_scope(path, peer), receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


async def _held(app, inner: _OpenStreams, paths: list[str], peer: str) -> list[asyncio.Task]:
    """Requests for `paths` from `peer`, each answered and, for a stream, held open (waited for, 5 s at most)."""
    answered = len(inner.answered) + len(paths)
    tasks = [asyncio.create_task(_ask(app, path, peer)) for path in paths]
    for _ in range(500):
        if len(inner.answered) >= answered:
            break
        await asyncio.sleep(0.01)
    assert inner.answered[-len(paths):] == paths
    return tasks


def test_an_address_holds_at_most_limit_streams_and_others_are_unaffected() -> None:
    async def scenario() -> None:
        inner = _OpenStreams()
        app = StreamLimitMiddleware(inner, ClientAddresses(), limit=3)
        held = await _held(app, inner, [f"/gradio_api/heartbeat/s{n}" for n in range(3)], "203.0.113.7")
        over = await asyncio.wait_for(_ask(app, "/gradio_api/queue/data", "203.0.113.7"), 5)  # not held open
        assert over == (429, too_many_streams_message(3).encode())
        assert over[1] == (b"Your network address already has 3 of this server's connections open (each open page "
                           b"holds one or two); close some of this app's pages or tabs and try again.")
        assert await _ask(app, "/config", "203.0.113.7") == (200, b"")  # other requests go through
        other = await _held(app, inner, ["/gradio_api/heartbeat/other"], "203.0.113.8")  # another address
        inner.end()  # the streams end (the tabs close): their places are free again
        assert [await task for task in (*held, *other)] == [(200, b"")] * 4
        assert not app._open  # no count stays behind
        inner.ended.clear()
        again = await _held(app, inner, ["/gradio_api/heartbeat/s9"], "203.0.113.7")
        inner.end()
        assert await again[0] == (200, b"")

    asyncio.run(scenario())


def test_no_limit_lets_every_stream_through() -> None:
    async def scenario() -> None:
        inner = _OpenStreams()
        app = StreamLimitMiddleware(inner, ClientAddresses(), limit=0)
        held = await _held(app, inner, [f"/gradio_api/heartbeat/s{n}" for n in range(50)], "127.0.0.1")
        inner.end()
        await asyncio.gather(*held)

    asyncio.run(scenario())
