"""A gallery image over PIL's pixel limit (twice the app's `Image.MAX_IMAGE_PIXELS`, which the build sets to the
upload limit), as a big X/Y/Z grid is, through the running app with raw HTTP: the events that take the X/Y/Z
gallery (the run's end, "Send to") decoded every image of it first."""

from __future__ import annotations

import io
import json

import httpx
from PIL import Image

from sd2_app.ui.result_panel import too_large_to_send
from tests.reliability_support import one_thread, served_app  # noqa: F401

GRID = (3000, 3000)  # 9 Mpx: a 3x3 grid of 1024-pixel cells is more


def _gallery(client: httpx.Client, size: tuple[int, int]) -> list[dict]:
    picture = io.BytesIO()
    Image.new("RGB", size, (9, 90, 9)).save(picture, "PNG")
    path = client.post("gradio_api/upload", files={"files": ("grid.png", picture.getvalue(), "image/png")}).json()[0]
    return [{"image": {"path": path, "orig_name": "grid.png", "meta": {"_type": "gradio.FileData"}}, "caption": "Grid"}]


def test_a_grid_over_the_pixel_limit_ends_its_run_and_is_refused_in_words_when_sent(served_app) -> None:  # noqa: F811
    """The plot's end (`xyz_plot_ends`: Generate back, Stop off) answered HTTP 500 for a gallery holding a 9 Mpx
    grid, so the tab stayed "Running…"; its "Send to image to image" failed with Gradio's bare "Error". The end now
    takes the gallery as file paths, and the send says why the grid cannot go."""
    url, _ = served_app
    with httpx.Client(base_url=url, timeout=120) as client:
        fns = {d.get("api_name"): d["id"] for d in client.get("config").json()["dependencies"]}
        gallery = _gallery(client, GRID)
        ended = client.post("gradio_api/run/predict", json={"data": [gallery, "Seed 1", None, None],  # states: null
                                                            "fn_index": fns["xyz_plot_ends"], "session_hash": "big"})
        join = {"data": [gallery, None], "fn_index": fns["xyz_send_to_img2img"], "session_hash": "big"}
        assert client.post("gradio_api/queue/join", json=join).status_code == 200
        with client.stream("GET", "gradio_api/queue/data", params={"session_hash": "big"}) as stream:
            messages = [json.loads(line[5:]) for line in stream.iter_lines() if line.startswith("data:")]
    assert ended.status_code == 200, ended.text
    assert ended.json()["data"][:2] == [{"__type__": "update", "value": "Generate", "interactive": True},
                                        {"__type__": "update", "interactive": False}]
    done = next(m for m in messages if m["msg"] == "process_completed")
    assert done["output"]["error"] == too_large_to_send(2 * 2048 * 2048)  # the app's upload limit, 2048x2048
    assert too_large_to_send(2 * 2048 * 2048) == ("This image is too large to send on (over 8,388,608 pixels, as a "
                                                 "big X/Y/Z grid can be); pick one of its cells instead.")
