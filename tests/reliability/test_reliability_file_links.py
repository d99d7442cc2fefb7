"""Links to files sent to the running public app over raw HTTP: the forms that would make Gradio fetch another
site's file are refused (`sd2_app.ui.file_links.linked_file` decides for both checks), and a link to one of the
app's own files still works.

The app is `python app.py --host 0.0.0.0 --trusted-proxy-hops 1` served in-process on a free loopback port
(the tiny checkpoints; `tests.hosting_support.served_behind_proxy`). Another site is a local server, and the
address check Gradio makes before a fetch (the host must resolve to a public address) is told it does.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from sd2_app.ui.request_limits import REMOTE_FILE_MESSAGE
from sd2_app.ui.uploads import REMOTE_FILE_REFUSAL
from tests.hosting_support import downloads, other_site, served_behind_proxy  # noqa: F401
from tests.reliability_report import reliability, track_module  # noqa: F401
from tests.reliability_support import one_thread, png_bytes  # noqa: F401
from tests.reliability_support import noise_image

AREA = "Security"
MALLORY = "203.0.113.66"


@pytest.fixture(scope="module")
def app(one_thread: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, object]]:
    with served_behind_proxy([], tmp_path_factory) as served:
        yield served


def _png_info(url: str, path: str) -> tuple[int, str]:
    """A raw queue join of PNG info for the file value {'path': `path`}, and the event's result: (the join's
    status, its refusal or the text the event returned)."""
    image = {"path": path, "meta": {"_type": "gradio.FileData"}}
    with httpx.Client(base_url=url, headers={"X-Forwarded-For": MALLORY}, timeout=60) as client:
        joined = client.post("gradio_api/call/png_info", json={"data": [image]})
        if joined.status_code != 200:
            return joined.status_code, joined.json()["detail"]
        stream = client.get(f"gradio_api/call/png_info/{joined.json()['event_id']}").text
    last = [line[len("data: "):] for line in stream.splitlines() if line.startswith("data: ")][-1]
    return joined.status_code, json.dumps(json.loads(last))


def test_the_older_file_route_fetches_no_other_site(app, other_site, reliability,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from gradio import route_utils

    async def public(host: str) -> str:  # what Gradio's check answers for a host on the internet
        return "127.0.0.1"

    monkeypatch.setattr(route_utils.safehttpx, "async_validate_url", public)
    url, _ = app
    site, asked = other_site
    answers = [httpx.get(f"{url}gradio_api/file/{link}", headers={"X-Forwarded-For": MALLORY}, timeout=30)
               for link in (f"{site}/big.iso", f"{site.replace('http:', 'http%3A')}/big.iso")]
    assert [(answer.status_code, answer.text) for answer in answers] == [(403, REMOTE_FILE_MESSAGE)] * 2
    assert asked == []
    reliability(AREA, "GET /gradio_api/file/http://<another site>/big.iso (the file route's older form; Gradio "
                "fetched and relayed it)", f"HTTP 403: {REMOTE_FILE_MESSAGE} The site got 0 requests")


def test_a_url_inside_a_link_to_our_file_route_is_refused_and_our_own_file_is_read(app, reliability,
                                                                                   downloads: list[str]) -> None:
    url, _ = app
    uploaded = httpx.post(f"{url}gradio_api/upload", headers={"X-Forwarded-For": MALLORY}, timeout=30,
                          files=[("files", ("mine.png", png_bytes(noise_image(64, 64)), "image/png"))])
    assert uploaded.status_code == 200, uploaded.text
    own = uploaded.json()[0]
    nested = [f"{url}gradio_api/file=https://files.example/huge.png",
              f"{url}gradio_api/file=https%3A%2F%2Ffiles.example%2Fhuge.png",
              f"{url}gradio_api/file/https://files.example/huge.png"]
    refused = [_png_info(url, link) for link in nested]
    mine = _png_info(url, f"{url}gradio_api/file={own}")
    assert refused == [(400, REMOTE_FILE_REFUSAL)] * 3 and downloads == []
    assert mine == (200, '["This image carries no generation parameters.", {}]') and downloads == []
    reliability(AREA, "a queue join whose image is a link to this app's file route with another site's URL after "
                "it ({'path': 'http://<app>/gradio_api/file=https://<another site>/huge.png'}, percent-encoded, "
                "the route's older form); then a link to a file uploaded to the app",
                f"refused at join, HTTP 400: {REMOTE_FILE_REFUSAL} Downloads: 0 (the join check let the first two "
                "in; the event's own check refused them); the app's own file is read (PNG info answers)")
