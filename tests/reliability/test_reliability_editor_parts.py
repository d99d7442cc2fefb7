"""The inpaint editor's parts endpoint (POST /gradio_api/component_server, `accept_blobs`) flooded over raw HTTP
with empty parts under new ids, then used as the browser uses it, against the running public app.

The app is `python app.py --host 0.0.0.0 --trusted-proxy-hops 1` served in-process on a free loopback port
(the tiny checkpoints; `tests.hosting_support.served_behind_proxy`).
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from gradio_client import Client
from PIL import Image

from sd2_app.ui.editor_blobs import ENTRY_OVERHEAD_BYTES, MAX_PART_ID_CHARS, MAX_PENDING_IDS
from tests.hosting_support import served_behind_proxy
from tests.reliability_report import reliability, track_module  # noqa: F401
from tests.reliability_support import noise_image, one_thread, png_bytes  # noqa: F401

AREA = "Security"
MALLORY = "203.0.113.66"


@pytest.fixture(scope="module")
def app(one_thread: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, object]]:
    with served_behind_proxy([], tmp_path_factory) as served:
        yield served


def _editor(url: str, demo: object) -> tuple[int, object]:
    """The inpaint editor's component id and its store of pending parts."""
    config = httpx.get(f"{url}config", timeout=30).json()
    editor_id = next(c["id"] for c in config["components"] if c.get("type") == "imageeditor")
    return editor_id, demo.blocks[editor_id].blob_storage  # type: ignore[attr-defined]


def _part(client: httpx.Client, editor: int, part_id: str, kind: str, blob: bytes, index: str = "null") -> int:
    """One part as the browser sends it ahead of a job (gradio's ImageEditor.accept_blobs); the HTTP status."""
    form = {"component_id": str(editor), "session_hash": "s", "fn_name": "accept_blobs", "data": "{}",
            "type": kind, "index": index, "id": part_id}
    answer = client.post("gradio_api/component_server", data=form, files={"blob": ("blob", blob, "image/png")})
    return answer.status_code


def test_a_flood_of_empty_parts_under_new_ids_keeps_the_newest_ids_only(app, reliability) -> None:
    url, demo = app
    editor, store = _editor(url, demo)
    sent = MAX_PENDING_IDS + 200
    with httpx.Client(base_url=url, headers={"X-Forwarded-For": MALLORY}, timeout=60) as client:
        long_id = _part(client, editor, "x" * (MAX_PART_ID_CHARS + 1), "background", b"")
        try:
            answers = [_part(client, editor, f"flood-{n}", "background", b"") for n in range(sent)]
            kept = sorted(int(key.split("-")[1]) for key in store if key.startswith("flood-"))
            others = [key for key in store if not key.startswith("flood-")]
            held = store.held_bytes()
        finally:
            for key in list(store):
                store.pop(key)
    assert answers == [200] * sent
    assert kept == list(range(sent - MAX_PENDING_IDS, sent))  # the oldest 200 are the ones dropped
    assert held == MAX_PENDING_IDS * ENTRY_OVERHEAD_BYTES
    assert long_id == 422 and others == []
    reliability(AREA, f"{sent:,} empty editor parts under new ids (component_server accept_blobs, raw HTTP), and "
                f"one under an id of {MAX_PART_ID_CHARS + 1} characters",
                f"HTTP 422 for the long id; the newest {len(kept):,} ids kept, counted {held:,} bytes, the oldest "
                f"{sent - len(kept)} dropped (Gradio kept every id for good, and empty parts counted "
                "nothing towards the byte limit)")


def test_the_editor_still_takes_a_jobs_parts_after_a_flood(app, reliability) -> None:
    """After a flood, the browser's flow: background, a painted layer and the composite under one id, then the
    inpaint job naming that id; the job uses them and the id leaves the store."""
    url, demo = app
    editor, store = _editor(url, demo)
    background = noise_image(64, 64)
    layer = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    layer.paste((255, 255, 255, 255), (16, 16, 48, 48))
    with httpx.Client(base_url=url, headers={"X-Forwarded-For": MALLORY}, timeout=60) as client:
        flood = [_part(client, editor, f"before-{n}", "composite", b"") for n in range(MAX_PENDING_IDS)]
        sent = [_part(client, editor, "legit", "background", png_bytes(background)),
                _part(client, editor, "legit", "layer", png_bytes(layer), index="0"),
                _part(client, editor, "legit", "composite", png_bytes(background))]
    assert flood == [200] * MAX_PENDING_IDS and sent == [200] * 3 and "legit" in store
    try:
        _, gallery, _, _ = Client(url, verbose=False).predict(
            image_and_mask={"background": None, "layers": [], "composite": None, "id": "legit"}, prompt="a cat",
            steps=2, seed=1, api_name="/inpaint")
    finally:
        for key in [key for key in store if key.startswith("before-")]:
            store.pop(key)
    sizes = [Image.open(item["image"]).size for item in gallery]
    assert sizes == [(64, 64)] and "legit" not in store
    reliability(AREA, f"the browser's inpaint flow (background, a painted layer, the composite under one id, then "
                f"the job) right after {MAX_PENDING_IDS:,} empty parts under new ids",
                f"the job returns a {sizes[0][0]}x{sizes[0][1]} image made from the parts; their id leaves the store")
