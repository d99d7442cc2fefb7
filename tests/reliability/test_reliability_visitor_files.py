"""What visitors send as files, against the running public app over raw HTTP: the inpaint editor's parts
endpoint flooded with empty parts under new ids, one image file size for every route an image takes, links that
would make Gradio fetch another site's file, and PNG text chunks that inflate to a megabyte of parameters.

The app is `python app.py --host 0.0.0.0 --trusted-proxy-hops 1 --api` served in-process on a free loopback
port (the tiny checkpoints; `tests.hosting_support.served_behind_proxy`).
"""

from __future__ import annotations

import base64
import io
import json
import zlib
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from gradio_client import Client
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from sd2_app.app_flags import DEFAULT_MAX_SESSIONS
from sd2_app.byte_limits import MAX_IMAGE_FILE_BYTES
from sd2_app.pipelines.metadata import MAX_PARAMETERS_CHARS, MAX_PNG_CHUNKS
from sd2_app.ui.join_refusals import MAX_SESSION_HASH_CHARS, MAX_UNREAD_REFUSALS, SESSION_HASH_REFUSAL
from sd2_app.ui.editor_blobs import ENTRY_OVERHEAD_BYTES, MAX_PART_ID_CHARS, MAX_PENDING_BYTES, MAX_PENDING_IDS
from sd2_app.ui.pnginfo import MAX_PASTED_CHARS
from sd2_app.ui.uploads import REMOTE_FILE_REFUSAL
from tests.hosting_support import downloads, served_behind_proxy  # noqa: F401
from tests.reliability_report import reliability, track_module  # noqa: F401
from tests.reliability_support import noise_image, one_thread, png_bytes  # noqa: F401

AREA = "Security"
# The floods below fill the store's id limit through HTTP. The app's limit is MAX_PENDING_IDS (asserted before
# each flood); during the flood the store counts to FLOOD_IDS instead, the same trimming at a sixty-fourth of
# the requests (each is a whole multipart request on a small CPU).
FLOOD_IDS = 64
MALLORY = "203.0.113.66"
SETTINGS = ", Steps: 2, Sampler: Euler"


@pytest.fixture(scope="module")
def app(one_thread: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, object]]:
    with served_behind_proxy(["--api"], tmp_path_factory) as served:
        yield served


def _png_info(url: str, path: str) -> tuple[int, str]:
    """A raw queue join of PNG info for the file value {'path': `path`}: (the join's status, its refusal or the
    text the web UI shows)."""
    image = {"path": path, "meta": {"_type": "gradio.FileData"}}
    with httpx.Client(base_url=url, headers={"X-Forwarded-For": MALLORY}, timeout=120) as client:
        joined = client.post("gradio_api/call/png_info", json={"data": [image]})
        if joined.status_code != 200:
            return joined.status_code, joined.json()["detail"]
        stream = client.get(f"gradio_api/call/png_info/{joined.json()['event_id']}").text
    last = json.loads([line[len("data: "):] for line in stream.splitlines() if line.startswith("data: ")][-1])
    return joined.status_code, last[0] if isinstance(last, list) else json.dumps(last)


def _upload(url: str, data: bytes) -> str:
    """`data` uploaded as a PNG: its path on the server."""
    uploaded = httpx.post(f"{url}gradio_api/upload", headers={"X-Forwarded-For": MALLORY}, timeout=120,
                          files=[("files", ("image.png", data, "image/png"))])
    assert uploaded.status_code == 200, uploaded.text
    return uploaded.json()[0]


def _editor(url: str, demo: object) -> tuple[int, object]:
    """The inpaint editor's component id and its store of pending parts."""
    config = httpx.get(f"{url}config", timeout=30).json()
    editor_id = next(c["id"] for c in config["components"] if c.get("type") == "imageeditor")
    return editor_id, demo.blocks[editor_id].blob_storage  # type: ignore[attr-defined]


@contextmanager
def _id_limit(store: object, limit: int) -> Iterator[None]:
    """The app's store of editor parts, its id limit (the app's own, MAX_PENDING_IDS) set to `limit` meanwhile."""
    assert store.max_ids == MAX_PENDING_IDS  # type: ignore[attr-defined]
    store.max_ids = limit  # type: ignore[attr-defined]
    try:
        yield
    finally:
        store.max_ids = MAX_PENDING_IDS  # type: ignore[attr-defined]


def _part(client: httpx.Client, editor: int, part_id: str, kind: str, blob: bytes, index: str = "null") -> int:
    """One part as the browser sends it ahead of a job (gradio's ImageEditor.accept_blobs); the HTTP status."""
    form = {"component_id": str(editor), "session_hash": "s", "fn_name": "accept_blobs", "data": "{}",
            "type": kind, "index": index, "id": part_id}
    answer = client.post("gradio_api/component_server", data=form, files={"blob": ("blob", blob, "image/png")})
    return answer.status_code


def test_a_flood_of_empty_parts_under_new_ids_keeps_the_newest_ids_only(app, reliability) -> None:
    url, demo = app
    editor, store = _editor(url, demo)
    sent = FLOOD_IDS + 50
    with httpx.Client(base_url=url, headers={"X-Forwarded-For": MALLORY}, timeout=60) as client:
        long_id = _part(client, editor, "x" * (MAX_PART_ID_CHARS + 1), "background", b"")
        try:
            with _id_limit(store, FLOOD_IDS):
                answers = [_part(client, editor, f"flood-{n}", "background", b"") for n in range(sent)]
            kept = sorted(int(key.split("-")[1]) for key in store if key.startswith("flood-"))
            others = [key for key in store if not key.startswith("flood-")]
            held = store.held_bytes()
        finally:
            store.clear()
    assert answers == [200] * sent and not store and store.held_bytes() == 0
    # the oldest 50 are the ones dropped; each id kept counts its entry
    assert (kept, held) == (list(range(sent - FLOOD_IDS, sent)), FLOOD_IDS * ENTRY_OVERHEAD_BYTES)
    assert long_id == 422 and others == []
    reliability(AREA, f"{sent:,} empty editor parts under new ids (component_server accept_blobs, raw HTTP; the "
                f"store's id limit, {MAX_PENDING_IDS:,} in the app, set to {FLOOD_IDS} for the flood), and one "
                f"under an id of {MAX_PART_ID_CHARS + 1} characters",
                f"HTTP 422 for the long id; the newest {len(kept):,} ids kept, counted {held:,} bytes, the oldest "
                f"{sent - len(kept)} dropped (Gradio kept every id for good, and empty parts counted "
                "nothing towards the byte limit)")


@pytest.mark.parametrize("index", ["\u00b2", "0" * 5000 + "3", "64", "-1"],
                         ids=["superscript-2", "5000-digits", "64", "-1"])
def test_an_editor_layer_number_other_than_0_to_63_is_refused_in_words(app, reliability, index: str) -> None:
    """A superscript digit passes str.isdigit and a number of 5,000 digits is too long for int(): both were
    HTTP 500 with a traceback in the log."""
    url, demo = app
    editor, store = _editor(url, demo)
    with httpx.Client(base_url=url, timeout=60) as client:
        form = {"component_id": str(editor), "session_hash": "s", "fn_name": "accept_blobs", "data": "{}",
                "type": "layer", "index": index, "id": "odd-layer"}
        answer = client.post("gradio_api/component_server", data=form, files={"blob": ("blob", b"x", "image/png")})
    assert (answer.status_code, answer.json()) == (422, {"detail": "An editor layer is numbered 0 to 63."})
    assert "odd-layer" not in store  # type: ignore[operator]
    reliability(AREA, f"an editor layer numbered {index[:12]!r} ({len(index):,} characters; component_server)",
                "HTTP 422: An editor layer is numbered 0 to 63. (a superscript digit or 5,000 digits: HTTP 500)")


def test_one_edit_holds_at_most_the_stores_bytes(app, reliability) -> None:
    """The store keeps its newest id whole; an id's parts beyond the byte limit are refused, not kept."""
    url, demo = app
    editor, store = _editor(url, demo)
    blob = b"\0" * MAX_IMAGE_FILE_BYTES
    fit = (MAX_PENDING_BYTES - ENTRY_OVERHEAD_BYTES) // MAX_IMAGE_FILE_BYTES
    with httpx.Client(base_url=url, headers={"X-Forwarded-For": MALLORY}, timeout=120) as client:
        try:
            kinds = [("background", "null"), ("composite", "null")] + [("layer", str(n)) for n in range(fit)]
            answers = []
            for kind, index in kinds:
                form = {"component_id": str(editor), "session_hash": "s", "fn_name": "accept_blobs",
                        "data": "{}", "type": kind, "index": index, "id": "big"}
                answers.append(client.post("gradio_api/component_server", data=form,
                                           files={"blob": ("blob", blob, "image/png")}))
            held = store.held_bytes()
        finally:
            store.pop("big", None)
    refusal = {"detail": f"An edit's parts may be at most {MAX_PENDING_BYTES // 2**20} MB in all."}
    assert [answer.status_code for answer in answers] == [200] * fit + [413] * 2
    assert answers[-1].json() == refusal and held == fit * MAX_IMAGE_FILE_BYTES + ENTRY_OVERHEAD_BYTES
    reliability(AREA, f"{len(kinds)} editor parts of {MAX_IMAGE_FILE_BYTES // 2**20} MiB under one id (background, "
                f"composite, layers 0 to {fit - 1}; raw HTTP)",
                f"the first {fit} are kept, {held:,} bytes; the rest get HTTP 413: {refusal['detail']} (the store "
                "kept its newest id whole: one id held every part, up to 66 of them)")


def test_the_editor_still_takes_a_jobs_parts_after_a_flood(app, reliability) -> None:
    """After a flood, the browser's flow: background, a painted layer and the composite under one id, then the
    inpaint job naming that id; the job uses them and the id leaves the store."""
    url, demo = app
    editor, store = _editor(url, demo)
    background = noise_image(64, 64)
    layer = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    layer.paste((255, 255, 255, 255), (16, 16, 48, 48))
    with httpx.Client(base_url=url, headers={"X-Forwarded-For": MALLORY}, timeout=60) as client:
        with _id_limit(store, FLOOD_IDS):
            flood = [_part(client, editor, f"before-{n}", "composite", b"") for n in range(FLOOD_IDS)]
            sent = [_part(client, editor, "legit", "background", png_bytes(background)),
                    _part(client, editor, "legit", "layer", png_bytes(layer), index="0"),
                    _part(client, editor, "legit", "composite", png_bytes(background))]
    assert flood == [200] * FLOOD_IDS and sent == [200] * 3 and "legit" in store
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
                f"the job) right after {FLOOD_IDS:,} empty parts under new ids filled the store's id limit (set to "
                f"{FLOOD_IDS} for the test; {MAX_PENDING_IDS:,} in the app)",
                f"the job returns a {sizes[0][0]}x{sizes[0][1]} image made from the parts; their id leaves the store")


def _padded_png(size: int) -> bytes:
    """A valid PNG of exactly `size` bytes (zeros after its end chunk, which PNG readers ignore)."""
    head = png_bytes(noise_image(16, 16))
    return head + b"\0" * (size - len(head))


def _statuses(url: str, editor: int, data: bytes) -> tuple[int, int, int]:
    """The HTTP statuses of `data` sent as an upload, as an inpaint editor part and to the API's /png-info."""
    with httpx.Client(base_url=url, headers={"X-Forwarded-For": MALLORY}, timeout=120) as client:
        upload = client.post("gradio_api/upload", files=[("files", ("image.png", data, "image/png"))])
        part = _part(client, editor, "size-check", "background", data)
        text = "data:image/png;base64," + base64.b64encode(data).decode()
        info = client.post("sdapi/v1/png-info", json={"image": text})
    statuses = (upload.status_code, part, info.status_code)
    if info.status_code != 200:
        statuses = (*statuses[:2], info.status_code, info.json()["detail"])  # type: ignore[assignment]
    return statuses


def test_an_image_file_of_the_size_limit_is_taken_and_one_byte_more_refused_everywhere(app, reliability) -> None:
    url, demo = app
    editor, store = _editor(url, demo)
    try:
        at_limit = _statuses(url, editor, _padded_png(MAX_IMAGE_FILE_BYTES))
        over = _statuses(url, editor, _padded_png(MAX_IMAGE_FILE_BYTES + 1))
    finally:
        store.pop("size-check", None)
    assert httpx.get(f"{url}config", timeout=30).json()["max_file_size"] == MAX_IMAGE_FILE_BYTES == 25 * 2**20
    assert at_limit == (200, 200, 200)
    assert over == (413, 413, 422, "image is larger than the 25 MiB limit.")
    reliability(AREA, f"an image file of {MAX_IMAGE_FILE_BYTES:,} bytes, then one byte more, as an upload, an inpaint "
                "editor part and a base64 data URL to /sdapi/v1/png-info (raw HTTP)",
                f"all three take the first; the second gets HTTP 413 / 413 / 422 '{over[3]}' (the API took up to "
                "25.5 MiB while the web UI took 25 MiB)")


def test_a_url_inside_a_link_to_our_file_route_is_refused_and_our_own_file_is_read(app, reliability,
                                                                                   downloads: list[str]) -> None:
    url, _ = app
    own = _upload(url, png_bytes(noise_image(64, 64)))
    nested = [f"{url}gradio_api/file=https://files.example/huge.png",
              f"{url}gradio_api/file=https%3A%2F%2Ffiles.example%2Fhuge.png",
              f"{url}gradio_api/file/https://files.example/huge.png"]
    refused = [_png_info(url, link) for link in nested]
    mine = _png_info(url, f"{url}gradio_api/file={own}")
    assert refused == [(400, REMOTE_FILE_REFUSAL)] * 3 and downloads == []
    assert mine == (200, "This image carries no generation parameters.") and downloads == []
    reliability(AREA, "a queue join whose image is a link to this app's file route with another site's URL after "
                "it ({'path': 'http://<app>/gradio_api/file=https://<another site>/huge.png'}, percent-encoded, "
                "the route's older form); then a link to a file uploaded to the app",
                f"refused at join, HTTP 400: {REMOTE_FILE_REFUSAL} Downloads: 0 (the join check let the first two "
                "in; the event's own check refused them); the app's own file is read (PNG info answers)")


def _png(text: str) -> bytes:
    """A 16x16 PNG whose parameters are `text`, in a zTXt chunk (zlib-compressed)."""
    info = PngInfo()
    info.add_text("parameters", text, zip=True)
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buffer, "PNG", pnginfo=info)
    return buffer.getvalue()


def _settings_line(chars: int) -> str:
    """A settings line of exactly `chars` characters, of quoted values with escaped quotes (slow to read)."""
    filler = 'a: "\\", ' * (chars // 8)
    return (filler + "x" * chars)[:chars - len(SETTINGS)] + SETTINGS


def _join(client: httpx.Client, fn_index: int, session_hash: str, data: list, user: str = "api") -> httpx.Response:
    body = {"data": data, "fn_index": fn_index, "session_hash": session_hash, "event_data": None, "trigger_id": None}
    return client.post("gradio_api/queue/join", json=body, headers={"x-gradio-user": user})


def test_joins_nobody_reads_leave_bounded_memory(app, reliability) -> None:
    """Gradio keeps an event's id and its session's messages, under the session hash the caller chose, until the
    event stream is read: 300 quick joins with 1 MB hashes grew the app by 550 MB, 1,000 refused gradio_client
    joins (completed with their message on the stream) by about 700 MB. Now a hash over 64 characters is refused
    first, and only the newest unread refusals are kept."""
    url, demo = app
    queue = demo._queue  # type: ignore[attr-defined]
    config = httpx.get(f"{url}config", timeout=30).json()
    fn_index = {d.get("api_name"): d["id"] for d in config["dependencies"]}
    remote = [{"path": "https://example.com/x.png", "meta": {"_type": "gradio.FileData"}}]  # refused: a URL
    flood = MAX_UNREAD_REFUSALS + 50
    with httpx.Client(base_url=url, timeout=60, headers={"X-Forwarded-For": MALLORY}) as client:
        long_hashes = [_join(client, fn_index["models_status"], "s" * (1 << 20), [], user="app"),
                       _join(client, fn_index["txt2img"], "s" * (MAX_SESSION_HASH_CHARS + 1), remote)]
        statuses = {_join(client, fn_index["txt2img"], f"flood-{i}", remote).status_code for i in range(flood)}
        read = _join(client, fn_index["txt2img"], "reader", remote)
        stream = client.get("gradio_api/queue/data", params={"session_hash": "reader"}).text
    refusal = (400, {"detail": SESSION_HASH_REFUSAL})
    assert [(answer.status_code, answer.json()) for answer in long_hashes] == [refusal, refusal]
    assert statuses == {200} and read.status_code == 200
    assert REMOTE_FILE_REFUSAL in stream  # the newest refusal still reaches its reader
    unread = [key for key in queue.pending_event_ids_session if key.startswith("flood-")]
    # the newest are kept, within the refusals' own bound and the sessions Gradio's queue keeps (`--max-sessions`)
    assert len(unread) == min(MAX_UNREAD_REFUSALS, DEFAULT_MAX_SESSIONS) - 1 and "flood-0" not in queue.pending_messages_per_session
    assert not any(len(key) > MAX_SESSION_HASH_CHARS for key in queue.pending_event_ids_session)
    reliability(AREA, f"joins under a 1 MB session hash, and {flood:,} refused gradio_client joins (a file by URL) "
                "nobody reads", f"the long hashes: HTTP 400, {SESSION_HASH_REFUSAL} {len(unread):,} unread refusals "
                "kept (300 joins with 1 MB hashes grew the app by 550 MB, 1,000 refused ones by about 700 MB)")


def test_a_parameters_text_over_the_limit_is_not_read(app, reliability) -> None:
    url, _ = app
    bomb = _png(_settings_line(1 << 20))
    fits = _png(_settings_line(MAX_PARAMETERS_CHARS))
    api = [httpx.post(f"{url}sdapi/v1/png-info", json={"image": base64.b64encode(data).decode()},
                      headers={"X-Forwarded-For": MALLORY}, timeout=300) for data in (bomb, fits)]
    assert [answer.status_code for answer in api] == [200, 200]
    refused, read = (answer.json() for answer in api)
    assert refused == {"info": "", "items": {}, "parameters": {}}
    assert len(read["info"]) == MAX_PARAMETERS_CHARS and read["parameters"]["Steps"] == 2
    shown = [_png_info(url, _upload(url, data)) for data in (bomb, fits)]
    assert shown[0] == (200, "This image carries no generation parameters.")
    assert shown[1][0] == 200 and len(shown[1][1]) == MAX_PARAMETERS_CHARS
    assert MAX_PASTED_CHARS == MAX_PARAMETERS_CHARS
    reliability(AREA, f"a PNG of {len(bomb):,} bytes whose zTXt parameters inflate to {1 << 20:,} characters of "
                "quoted settings, to POST /sdapi/v1/png-info and the web UI's PNG info (raw HTTP); then one of "
                f"{MAX_PARAMETERS_CHARS:,} characters",
                "the first is read as an image without parameters (API: info ''; web UI: 'This image carries no "
                "generation parameters.'), nothing parsed; the second is read whole (the paste box's limit). "
                "The server had parsed the megabyte and sent it back twice")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")


def _text_after_chunks(count: int) -> bytes:
    """A PNG whose parameters come after `count` empty private chunks (PNG spec 5.4: ancillary, safe to copy)."""
    head = png_bytes(noise_image(16, 16))
    after_header = 8 + 25  # the signature and IHDR
    parameters = _chunk(b"tEXt", b"parameters\0a cat" + SETTINGS.encode())
    return head[:after_header] + _chunk(b"prVt", b"") * count + parameters + head[after_header:]


def test_a_png_of_many_chunks_is_walked_only_so_far(app, reliability) -> None:
    url, _ = app
    answers = [httpx.post(f"{url}sdapi/v1/png-info", headers={"X-Forwarded-For": MALLORY}, timeout=120,
                          json={"image": base64.b64encode(_text_after_chunks(count)).decode()}).json()["info"]
               for count in (MAX_PNG_CHUNKS - 2, MAX_PNG_CHUNKS)]
    assert answers == ["a cat" + SETTINGS, ""]
    reliability(AREA, f"POST /sdapi/v1/png-info of a PNG whose parameters follow {MAX_PNG_CHUNKS - 2:,}, then "
                f"{MAX_PNG_CHUNKS:,} empty chunks (a 25 MiB PNG of empty chunks has 2.2 million)",
                "the first is read; the second is an image without parameters: the server reads at most "
                f"{MAX_PNG_CHUNKS:,} chunk headers before it gives up")
