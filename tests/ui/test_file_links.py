"""`linked_file`: what a link makes Gradio read, for every form of link a client may write (one decision, used
by the queue join check and the file-route check; tests/reliability/test_reliability_visitor_files.py and
test_reliability_public_requests.py send such links to the running app)."""

from __future__ import annotations

import pytest

from sd2_app.ui.file_links import linked_file
from sd2_app.ui.request_limits import is_remote_file

OURS = "/tmp/gradio/3f2a/cat.png"
TABLE = [
    # (link, the path on this server it names; None: another site's file, refused)
    (OURS, OURS),  # a path, as the browser sends an upload's: left to Gradio's own path check
    ("cat.png", "cat.png"),
    (f"/gradio_api/file={OURS}", OURS),  # relative, through the file route
    (f"http://127.0.0.1:7860/gradio_api/file={OURS}", OURS),  # absolute, to this host
    (f"https://my-space.hf.space/gradio_api/file={OURS}", OURS),  # another host's file route: still a path
    (f"HTTPS://my-space.hf.space/gradio_api/file={OURS}", OURS),
    ("http://127.0.0.1:7860/gradio_api/file=%2Ftmp%2Fgradio%2F3f2a%2Fcat.png", OURS),  # percent-encoded path
    (f"http://127.0.0.1:7860/gradio_api/file/{OURS}", OURS),  # the route's older form
    (f"/gradio_api/file/{OURS}", OURS),
    ("https://evil.example/cat.png", None),  # another site
    ("http://evil.example/cat.png", None),
    ("HtTpS://evil.example/cat.png", None),
    ("https://evil.example/cat.png?x=/gradio_api/file", None),  # the route's name without its "=" or "/"
    ("/gradio_api/file=https://evil.example/cat.png", None),  # the file route asked to fetch
    ("/gradio_api/file=https%3A%2F%2Fevil.example%2Fcat.png", None),
    ("/gradio_api/file=HTTP://evil.example/cat.png", None),
    ("/gradio_api/file/https://evil.example/cat.png", None),  # the older form asked to fetch
    ("http://127.0.0.1:7860/gradio_api/file=https://evil.example/cat.png", None),  # a URL inside our link
    ("http://127.0.0.1:7860/gradio_api/file=https%3A//evil.example/cat.png", None),
    ("http://127.0.0.1:7860/gradio_api/file/http://evil.example/cat.png", None),
    ("https://evil.example/file=/tmp/gradio/3f2a/cat.png", None),  # Gradio 3's route, no longer served
    ("//evil.example/cat.png", "//evil.example/cat.png"),  # scheme-relative: Gradio fetches nothing, a path
    ("https:\\\\evil.example\\cat.png", "https:\\\\evil.example\\cat.png"),  # backslashes: not a URL to Gradio
    (" https://evil.example/cat.png", " https://evil.example/cat.png"),  # Gradio's prefix test fails: a path
    ("/gradio_api/file=https%253A%252F%252Fevil.example", "https%3A%2F%2Fevil.example"),  # decoded once, a path
]


@pytest.mark.parametrize(("link", "names"), TABLE)
def test_each_form_of_link_names_exactly_this(link: str, names: str | None) -> None:
    assert linked_file(link) == names


@pytest.mark.parametrize(("path", "remote"), [
    ("/gradio_api/file=/tmp/gradio/3f2a/cat.png", False),
    ("/gradio_api/file=https://evil.example/big.iso", True),
    ("/gradio_api/file/https://evil.example/big.iso", True),
    ("/gradio_api/file/http://evil.example/big.iso", True),
    ("/gradio_api/upload", False),
    ("/sdapi/v1/txt2img", False),
])
def test_the_web_servers_file_route_check_asks_the_same_decision(path: str, remote: bool) -> None:
    assert is_remote_file(path) is remote
