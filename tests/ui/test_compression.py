"""`sd2_app.ui.compression.CompressMiddleware` on a small Starlette app: which answers are gzipped and which go
out as they came. The running app's page, settings and event streams: tests/ui/test_ui_api.py,
`test_the_page_and_its_settings_come_compressed_and_event_streams_do_not`."""

from __future__ import annotations

import gzip
import json

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from sd2_app.ui.compression import MAX_BYTES, MIN_BYTES, THREAD_BYTES, CompressMiddleware

LIST = {"names": [f"checkpoint {n}" for n in range(2_000)]}  # 35 KB of JSON, 5 KB gzipped
LONG = "<p>" + " ".join(f"component {n}" for n in range(THREAD_BYTES // 8)) + "</p>"  # over THREAD_BYTES


def _app() -> Starlette:
    async def listing(request):
        return JSONResponse(LIST)

    async def long(request):
        return Response(LONG, media_type="text/html")

    async def short(request):
        return JSONResponse({"ok": True})

    async def stream(request):
        async def events():
            for n in range(3):
                yield f"data: {'x' * 2000} {n}\n\n"
        return StreamingResponse(events(), media_type="text/event-stream")

    async def image(request):
        return Response(b"\x89PNG" + b"\0" * 50_000, media_type="image/png")

    async def encoded(request):
        return Response(b"y" * 50_000, media_type="text/plain", headers={"content-encoding": "br"})

    async def huge(request):
        return Response(b"z" * (MAX_BYTES + 1), media_type="text/plain")

    routes = [Route("/list", listing), Route("/long", long), Route("/short", short), Route("/stream", stream),
              Route("/image", image), Route("/encoded", encoded), Route("/huge", huge), Route("/list.json", listing)]
    return Starlette(routes=routes, middleware=[Middleware(CompressMiddleware)])


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(_app())


def _raw(client: TestClient, path: str, accept: str | None) -> tuple[dict[str, str], bytes]:
    """The answer's headers and its body as sent (not decoded), for the Accept-Encoding `accept` (None: none)."""
    headers = {"accept-encoding": accept if accept is not None else ""}
    with client.stream("GET", path, headers=headers) as answer:
        return dict(answer.headers), b"".join(answer.iter_raw())


@pytest.mark.parametrize(("path", "plain"), [("/list", json.dumps(LIST, separators=(",", ":")).encode()),
                                             ("/long", LONG.encode())])
def test_a_text_answer_is_gzipped_for_a_client_that_takes_gzip(client: TestClient, path: str, plain: bytes) -> None:
    """A list on the event loop, a page over `THREAD_BYTES` on a worker thread: the same bytes, compressed."""
    headers, body = _raw(client, path, "gzip, deflate, br")
    assert (headers["content-encoding"], headers["vary"], int(headers["content-length"])) == ("gzip",
                                                                                               "Accept-Encoding",
                                                                                               len(body))
    assert gzip.decompress(body) == plain and len(body) * 5 < len(plain), (len(body), len(plain))


@pytest.mark.parametrize(("accept", "gzipped"), [
    (None, False), ("identity", False), ("gzip;q=0", False), ("gzip; q=0.000", False), ("*", True),
    ("br, gzip;q=0.5", True), ("*;q=0", False), ("gzip;q=0, *", False), ("GZIP", True), ("gzip;q=x", False),
])
def test_gzip_only_where_accept_encoding_takes_it(client: TestClient, accept: str | None, gzipped: bool) -> None:
    headers, _ = _raw(client, "/list", accept)
    assert (headers.get("content-encoding") == "gzip") is gzipped


@pytest.mark.parametrize("path", ["/short", "/stream", "/image", "/huge", "/list.json"])
def test_short_streamed_image_oversized_and_file_answers_go_out_as_they_came(client: TestClient, path: str) -> None:
    """Under `MIN_BYTES`, a stream, an image, over `MAX_BYTES`, a path ending in a file name (Gradio's to
    compress): the bytes the route sent, no Content-Encoding."""
    headers, body = _raw(client, path, "gzip")
    direct = client.get(path, headers={"accept-encoding": ""}).content
    assert "content-encoding" not in headers and "vary" not in headers and body == direct
    if path == "/stream":
        assert body.count(b"data: ") == 3
    if path == "/short":
        assert len(body) < MIN_BYTES


def test_an_answer_encoded_already_is_left_alone(client: TestClient) -> None:
    headers, body = _raw(client, "/encoded", "gzip")
    assert headers["content-encoding"] == "br" and body == b"y" * 50_000
