"""`sd2_app.ui.compression.CompressMiddleware` (Starlette's gzip for paths without a file name) on a small Starlette
app: which answers are gzipped and which go out as they came. The running app's page, settings and event streams: tests/ui/test_ui_api.py,
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

from sd2_app.ui.compression import MIN_BYTES, CompressMiddleware

LIST = {"names": [f"checkpoint {n}" for n in range(2_000)]}  # 35 KB of JSON, 5 KB gzipped
LONG = "<p>" + " ".join(f"component {n}" for n in range(20_000)) + "</p>"  # 280 KB: Starlette's thread


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

    routes = [Route("/list", listing), Route("/long", long), Route("/short", short), Route("/stream", stream),
              Route("/image", image), Route("/encoded", encoded), Route("/list.json", listing)]
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
    """A list compressed on the event loop, a long page on a worker thread: the same bytes, compressed."""
    headers, body = _raw(client, path, "gzip, deflate, br")
    assert (headers["content-encoding"], headers["vary"], int(headers["content-length"])) == ("gzip",
                                                                                               "Accept-Encoding",
                                                                                               len(body))
    assert gzip.decompress(body) == plain and len(body) * 5 < len(plain), (len(body), len(plain))


@pytest.mark.parametrize(("accept", "gzipped"), [(None, False), ("identity", False), ("gzip", True),
                                               ("br, gzip;q=0.5", True)])
def test_gzip_only_where_accept_encoding_takes_it(client: TestClient, accept: str | None, gzipped: bool) -> None:
    headers, _ = _raw(client, "/list", accept)
    assert (headers.get("content-encoding") == "gzip") is gzipped


@pytest.mark.parametrize("path", ["/short", "/stream", "/image", "/list.json"])
def test_short_event_stream_image_and_file_answers_go_out_as_they_came(client: TestClient, path: str) -> None:
    """Under `MIN_BYTES`, an event stream, an image, a path ending in a file name (Gradio's to compress): the bytes
    the route sent, no Content-Encoding."""
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
